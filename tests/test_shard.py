"""Exact sharding: merged shards equal the one-process "pow2" collector, bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kldiv.collect import HistogramCollector
from kldiv.errors import HistogramError, HistogramRangeError
from kldiv.histogram import ActivationHistogram, clamp_edge, count_at_least
from kldiv.shard import ShardCollector, collect_in_shards, merge_shards, shard_bases


def _one_process(batches, num_bins):
    c = HistogramCollector(num_bins, "pow2")
    for i, b in enumerate(batches):
        c.observe(b, batch=i)
    return c


def _assert_same(merged, whole):
    assert merged.names == whole.names
    assert merged.batches == whole.batches
    for n in whole:
        assert merged[n] == whole[n], (n, merged[n], whole[n])
        assert merged.absmax(n) == whole.absmax(n), n


def _edge_batches(seed, n, num_bins, dtype):
    """Saturated activations and pixels at 1.0: values exactly on R0 * 2**k, and ranges that
    double in some shards before batches that sit on the old edge."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        grow = rng.choice([1.0, 1.0, 1.0, 1.5, 2.0, 3.0, 5.0, 0.25])
        px = np.clip(rng.random(64) * grow, 0.0, None).astype(dtype)
        px[: rng.integers(0, 5)] = 1.0  # pixels at exactly 1.0 (range edge at level 0)
        if i == 0:
            px[0] = 1.0
            px = np.minimum(px, 1.0).astype(dtype)
        relu6 = np.clip(rng.standard_normal(50) * 4, 0, 6).astype(dtype)  # saturated at 6
        relu6[: rng.integers(0, 3)] = rng.choice([6.0, 12.0, 3.0])
        sym = (rng.standard_normal(40) * grow).astype(dtype)
        sym[: rng.integers(0, 3)] = -float(np.abs(sym).max())  # negative values on the edge
        out.append({"px": px, "relu6": relu6, "sym": sym})
    return out


SPLITS = [[], [1], [2], [3, 5], [4, 4, 7], [1, 2, 3, 4, 5, 6, 7], [7], [2, 2, 2]]


@pytest.mark.parametrize("bounds", SPLITS)
@pytest.mark.parametrize("num_bins", [16, 2048, 7])
def test_every_split_is_bit_identical_on_edge_data(bounds, num_bins):
    for seed in range(6):
        batches = _edge_batches(seed, 8, num_bins, np.float32)
        _assert_same(collect_in_shards(batches, bounds, num_bins=num_bins),
                     _one_process(batches, num_bins))


def test_the_clamp_correction_is_needed():
    """Without moving the clamped values, a naive merge differs by exactly those counts."""
    n = 16
    b0 = {"px": np.array([1.0, 0.5], np.float32)}             # R0 = 1.0
    b1 = {"px": np.array([1.5, 0.2], np.float32)}             # one-process range doubles to 2
    b2 = {"px": np.array([1.0, 1.0, 1.0, 0.3], np.float32)}   # on the old edge
    whole = _one_process([b0, b1, b2], n)
    merged = collect_in_shards([b0, b1, b2], [2], num_bins=n)
    _assert_same(merged, whole)
    assert whole["px"].counts[n // 2] == 3  # 1.0 at range 2: bin 8 (not clamped)
    # naive: shard [b2] filled from R0 = 1.0 clamps the three 1.0s, then is only added
    first = ShardCollector({}, n)
    first.observe(b0, batch=0)
    s1, s2 = ShardCollector(shard_bases(first.result()), n), ShardCollector(
        shard_bases(first.result()), n)
    s1.observe(b1, batch=1)
    s2.observe(b2, batch=2)
    naive = first + s1 + s2
    assert naive["px"] != whole["px"]
    diff = naive["px"].counts - whole["px"].counts
    assert diff[n // 2 - 1] == 3 and diff[n // 2] == -3 and np.count_nonzero(diff) == 2
    # records say exactly that: batch 2 filled at range 1.0, three values clamped
    rec = s2.result(first=2).records["px"]
    assert rec.tolist() == [[2.0, 1.0, 3.0]]


@st.composite
def _batch_lists(draw):
    n = draw(st.integers(1, 7))
    num_bins = draw(st.sampled_from([1, 2, 3, 8, 100, 2048]))
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    bases = [1.0, 6.0, 0.1, 3.0e-3] + ([] if dtype == np.float16 else [1e4])
    base = float(draw(st.sampled_from(bases)))
    batches = []
    for i in range(n):
        kind = draw(st.sampled_from(["normal", "edges", "zeros", "empty", "ulps"]))
        if kind == "empty" and i > 0:
            x = np.zeros(0, dtype)
        elif kind == "zeros":
            x = np.zeros(int(rng.integers(1, 20)), dtype)
        elif kind == "edges":
            k = rng.integers(-2, 4, size=12)
            x = (base * np.ldexp(1.0, k) * rng.choice([-1, 1], size=12)).astype(dtype)
        elif kind == "ulps":
            v = base * 2.0 ** int(rng.integers(0, 3))
            x = np.array([v, np.nextafter(v, 0), -np.nextafter(v, np.inf), v / 2], dtype)
        else:
            x = (rng.standard_normal(int(rng.integers(1, 60))) * base
                 * 2.0 ** rng.integers(-1, 3)).astype(dtype)
        batches.append({"t": x, "late": x * 0 if i < n // 2 else x})
    bounds = draw(st.lists(st.integers(1, n), max_size=4))
    return batches, bounds, num_bins


@settings(max_examples=150, deadline=None)
@given(_batch_lists())
def test_hypothesis_any_split_any_data(case):
    batches, bounds, num_bins = case
    whole = _one_process(batches, num_bins)
    merged = collect_in_shards(batches, bounds, num_bins=num_bins)
    _assert_same(merged, whole)


def test_tensor_first_nonzero_in_a_later_shard_is_refilled_from_its_range():
    rng = np.random.default_rng(3)
    batches = [{"t": np.zeros(4, np.float32)}, {"t": np.zeros(0, np.float32)}]
    batches += [{"t": (rng.standard_normal(30) * s).astype(np.float32)} for s in (1, 3, 0.5, 9)]
    batches[3]["t"][0] = batches[2]["t"].__abs__().max()  # on the first shard's edge
    calls = []

    def fill(part, base, first):
        calls.append((first, dict(base)))
        c = ShardCollector(base, 32)
        for i, acts in enumerate(part):
            c.observe(acts, batch=first + i)
        return c.result(first=first)

    merged = collect_in_shards(batches, [3, 5], num_bins=32, fill=fill)
    _assert_same(merged, _one_process(batches, 32))
    # the shards after the anchoring one ran twice, the second time from its range
    anchor = float(np.abs(batches[2]["t"]).max())
    assert [f for f, _ in calls] == [0, 1, 3, 5, 3, 5]
    assert calls[-1][1]["t"] == anchor and calls[-2][1]["t"] == anchor


def test_shard_filled_from_another_first_batch_is_an_error():
    c0 = ShardCollector({}, 16)
    c0.observe({"t": np.array([2.0, 1.0])}, batch=0)
    wrong = ShardCollector({"t": 3.0}, 16)
    wrong.observe({"t": np.array([2.5])}, batch=1)
    with pytest.raises(HistogramRangeError, match=r"'t'.*shard 1 \(batches 1-1\).*3\.0.*2\.0"):
        merge_shards([c0.result(), wrong.result(first=1)])
    zero0 = ShardCollector({}, 16)
    zero0.observe({"t": np.zeros(3)}, batch=0)
    with pytest.raises(HistogramRangeError, match="set no range"):
        merge_shards([zero0.result(), wrong.result(first=1)])


def test_clamp_edge_and_count_at_least():
    for amax in [1.0, 6.0, 0.1, 3.0e-7, 12345.678, 1e300]:
        for n in [1, 7, 2048]:
            e = clamp_edge(amax, n)
            inv = n / amax
            if math.isinf(e):
                assert math.floor(amax * inv) < n
            else:
                assert e <= amax and math.floor(e * inv) >= n
                assert math.floor(math.nextafter(e, 0) * inv) < n
    assert clamp_edge(0.0, 8) == math.inf
    x = np.array([1.0, -1.0, 0.99999994, np.nan, np.inf, -np.inf, 2.0], np.float32)
    assert count_at_least(x, 1.0) == 3
    assert count_at_least(x, np.nextafter(1.0, 0)) == 3  # threshold rounds up to 1.0f
    assert count_at_least(x.astype(np.float16), 1.0) == 4  # 0.99999994 is 1.0 in float16
    assert count_at_least(np.array([3, -4, 1]), 3.0) == 2
    assert count_at_least(x[::2], 1.0) == 2
    with pytest.raises(HistogramError, match="> 0"):
        count_at_least(x, 0.0)


def test_merged_histograms_match_filled_by_hand_ranges():
    """The merged range is the one-process range: first batch's absmax times 2**k."""
    batches = _edge_batches(11, 8, 64, np.float32)
    merged = collect_in_shards(batches, [2, 6], num_bins=64)
    for name in merged:
        h = ActivationHistogram.from_values(batches[0][name], num_bins=64, growth="pow2")
        for b in batches[1:]:
            h.fill(b[name])
        assert merged[name] == h
