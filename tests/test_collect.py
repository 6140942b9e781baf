"""HistogramCollector: same counts as ActivationHistogram filled by hand, files, merging, NaN."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kldiv.collect import HistogramCollector
from kldiv.errors import HistogramError, HistogramRangeError, NonFiniteError
from kldiv.histogram import ActivationHistogram
from tests._kernels_env import using


def _batches(seed: int, n: int, scales: list[float]) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "a": (rng.standard_normal((3, 50)) * scales[i % len(scales)]).astype(np.float32),
            "relu": np.maximum(rng.standard_normal(40), 0).astype(np.float16),
            "zero": np.zeros(5, np.float32),
        }
        for i in range(n)
    ]


def _by_hand(batches, name, policy, num_bins):
    """The reference: ActivationHistogram's own growth, batch by batch, NumPy fills."""
    with using("numpy"):
        h = ActivationHistogram.from_values(batches[0][name], num_bins=num_bins, growth=policy)
        for b in batches[1:]:
            h.fill(b[name])
    return h


@settings(max_examples=25)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 6),
    scales=st.lists(st.floats(0.01, 100), min_size=1, max_size=4),
    policy=st.sampled_from(["pow2", "append"]),
    num_bins=st.sampled_from([16, 128, 2048]),
)
def test_matches_histograms_filled_by_hand(seed, n, scales, policy, num_bins):
    batches = _batches(seed, n, scales)
    c = HistogramCollector(num_bins, policy)
    for i, b in enumerate(batches):
        c.observe(b, batch=i)
    assert c.names == ["a", "relu", "zero"] and c.batches == n
    for name in c:
        assert c[name] == _by_hand(batches, name, policy, num_bins), name
        everything = np.concatenate([b[name].ravel().astype(np.float64) for b in batches])
        assert c.absmax(name) == np.abs(everything).max()
    assert c["zero"].amax == 0.0 and c["zero"].counts[0] == 5 * n


def test_global_policy_and_merging_shards():
    batches = _batches(1, 6, [1, 5, 0.5])
    names = ["a", "relu", "zero"]
    ranges = {n: max(float(np.abs(b[n]).max()) for b in batches) for n in names}
    whole = HistogramCollector(64, "global", ranges=ranges)
    s1 = HistogramCollector(64, "global", ranges=ranges)
    s2 = HistogramCollector(64, "global", ranges=ranges)
    for i, b in enumerate(batches):
        whole.observe(b)
        (s1 if i % 2 else s2).observe(b)
    merged = s1 + s2
    for n in names:
        assert merged[n] == whole[n]
        assert merged.absmax(n) == whole.absmax(n)
    assert merged.batches == 6
    with pytest.raises(HistogramRangeError, match="exceed.*first pass must cover every batch"):
        whole.observe({"a": np.array([ranges["a"] * 2], np.float32)})
    assert all(whole[n].growth == "fixed" for n in names)
    with pytest.raises(HistogramError, match="needs ranges"):
        HistogramCollector(64, "global")


def test_pow2_shards_merge_when_ranges_grow_to_each_other():
    a = HistogramCollector(8)
    b = HistogramCollector(8)
    a.observe({"t": np.array([1.0, 0.1])})
    b.observe({"t": np.array([4.0, 3.0])})
    m = a + b
    assert m["t"].amax == 4.0
    assert m["t"] == ActivationHistogram(1.0, 8).fill([1.0, 0.1]).grow_to(4.0) + b["t"]
    c = HistogramCollector(8)
    c.observe({"t": np.array([3.0])})
    with pytest.raises(HistogramRangeError, match="'t'.*global"):
        a + c


def test_nonfinite_names_tensor_and_batch():
    c = HistogramCollector(16)
    c.observe({"ok": np.ones(3)})
    bad = np.array([1.0, np.nan, np.inf, 2.0], np.float32)
    with pytest.raises(NonFiniteError, match=r"tensor 'conv\(3\)', batch 7.*NaN: 1, \+Inf: 1") as e:
        c.observe({"conv(3)": bad}, batch=7)
    assert e.value.n_nan == 1 and e.value.where == "tensor 'conv(3)', batch 7"
    d = HistogramCollector(16, nonfinite="drop")
    d.observe({"t": bad})
    assert d["t"].total == 2 and d.absmax("t") == 2.0


def test_save_load_roundtrip_without_pickle(tmp_path):
    c = HistogramCollector(32, "append")
    c.observe({"x": np.array([0.5, 1.0]), "name with: colon [1]": np.array([2.0])})
    c.observe({"x": np.array([3.0, 7.0]), "name with: colon [1]": np.array([1.0])})
    assert c["x"].num_bins > 32  # append grew one of them
    c.meta["model_sha256"] = "abc"
    path = c.save(tmp_path / "h.npz", meta={"note": "hi"})
    loaded = HistogramCollector.load(path)
    assert loaded.names == c.names and loaded.batches == 2
    for n in c:
        assert loaded[n] == c[n] and loaded.absmax(n) == c.absmax(n)
        assert loaded[n].growth == c[n].growth == "append"  # later batches grow as before
    loaded.observe({"x": np.array([20.0])})
    assert loaded["x"].amax >= 20.0
    assert loaded.meta == {"model_sha256": "abc", "note": "hi"}
    assert loaded.range_policy == "append"
    # the documented layout, read with plain numpy and no pickle
    with np.load(path, allow_pickle=False) as z:
        assert str(z["format"]) == "kldiv-histograms" and int(z["version"]) == 2
        assert z["counts"].dtype == np.int64 and z["counts"].shape[0] == 2
        t = list(z["names"]).index("x")
        k = int(z["num_bins"][t])
        assert ActivationHistogram.from_counts(z["counts"][t, :k], float(z["amax"][t])) == c["x"]
        assert json.loads(str(z["meta"]))["note"] == "hi"
    with pytest.raises(FileExistsError):
        c.save(path)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz: histogram file not found"):
        HistogramCollector.load(tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(HistogramError, match="junk.npz"):
        HistogramCollector.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", a=np.ones(3))
    with pytest.raises(HistogramError, match="other.npz: no format='kldiv-histograms' entry"):
        HistogramCollector.load(tmp_path / "other.npz")
    with pytest.raises(HistogramError, match="observe"):
        HistogramCollector().save(tmp_path / "empty.npz")


def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    import kldiv.collect as collect_module

    monkeypatch.setattr(collect_module, "_fill_pool", lambda: None)


@pytest.mark.parametrize("policy", ["pow2", "append"])
def test_threaded_batch_fill_equals_one_thread(policy: str, monkeypatch: pytest.MonkeyPatch):
    """A batch's tensors fill on several threads: every histogram, absmax and the names'
    order (the batch's) are those of filling them one after another on one thread.
    """
    import kldiv.collect as collect_module

    if collect_module._fill_pool() is None:
        pytest.skip("one CPU: batches fill on the calling thread only")
    rng = np.random.default_rng(5)
    sizes = [17, 1 << 18, 5, 1 << 16, 3000, 1 << 20, 1, 40_000] * 3
    batches = [{f"t{k}_{n}": (rng.standard_normal(n) * (1 + b + k % 3)).astype(np.float32)
                for k, n in enumerate(sizes)} for b in range(3)]
    threaded = HistogramCollector(256, policy)
    for b in batches:
        threaded.observe(b)
    _one_thread(monkeypatch)
    serial = HistogramCollector(256, policy)
    for b in batches:
        serial.observe(b)
    assert threaded.names == serial.names == list(batches[0])
    for name in serial.names:
        assert threaded[name] == serial[name], name
        assert threaded.absmax(name) == serial.absmax(name), name


def test_threaded_batch_fill_raises_the_first_failing_tensor_in_batch_order():
    """Two tensors hold NaN: the error names the earlier one in the batch, whichever thread
    met its NaN first (the later one is small, so it is usually met first).
    """
    import kldiv.collect as collect_module

    if collect_module._fill_pool() is None:
        pytest.skip("one CPU: batches fill on the calling thread only")
    big = np.ones(1 << 21, np.float32)
    big[-1] = np.nan
    small = np.array([np.nan, 1.0], np.float32)
    batch = {"a": np.ones(4, np.float32), "big": big, "small": small}
    for _ in range(5):
        with pytest.raises(NonFiniteError, match="'big', batch 0"):
            HistogramCollector(64).observe(batch)
    dropped = HistogramCollector(64, nonfinite="drop")
    dropped.observe(batch)
    assert list(dropped.dropped) == ["a", "big", "small"]
    assert dropped.dropped == {"a": 0, "big": 1, "small": 1}


def test_threaded_fill_names_the_earliest_tensor_even_when_filled_last():
    """Tensors are filled largest first; the error still names the earliest failing tensor in
    the batch's order (here the smallest, filled last).
    """
    import kldiv.collect as collect_module

    if collect_module._fill_pool() is None:
        pytest.skip("one CPU: batches fill on the calling thread only")
    rng = np.random.default_rng(2)
    batch = {f"t{k}": rng.standard_normal(1000 * (k + 1)).astype(np.float32) for k in range(8)}
    batch["t0"][3] = np.nan
    batch["t7"][5] = np.inf
    for _ in range(5):
        with pytest.raises(NonFiniteError, match="'t0', batch 0"):
            HistogramCollector(64).observe(batch)


@pytest.mark.parametrize("policy", ["pow2", "append"])
def test_dropped_counts_come_from_the_fill(policy: str):
    """``nonfinite='drop'``: the skipped NaN/±Inf are counted exactly per tensor, across
    batches, in batches that grow the range (a refill) and in float16 too; the counts equal a
    fill of the finite values alone.
    """
    rng = np.random.default_rng(4)
    batches, bad = [], {"a": 0, "h": 0}
    for b in range(4):
        a = rng.standard_normal(5000).astype(np.float32) * (1 + 3 * b)  # grows: refills
        h = rng.standard_normal(3000).astype(np.float16)
        for arr, name in ((a, "a"), (h, "h")):
            k = int(rng.integers(0, 20))
            idx = rng.choice(arr.size, k, replace=False)
            arr[idx[: k // 2]] = np.nan
            arr[idx[k // 2:]] = np.inf if b % 2 else -np.inf
            bad[name] += k
        batches.append({"a": a, "h": h})
    dropped = HistogramCollector(256, policy, nonfinite="drop")
    clean = HistogramCollector(256, policy)
    for b in batches:
        dropped.observe(b)
        clean.observe({n: v[np.isfinite(v)] for n, v in b.items()})
    assert dropped.dropped == bad
    for name in bad:
        assert dropped[name] == clean[name]
