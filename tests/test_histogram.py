"""ActivationHistogram: bin-edge rule, merging, comparison, range policies, bad input."""

from __future__ import annotations

import doctest
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kldiv.histogram as histogram_module
from kldiv.errors import HistogramError, HistogramRangeError, KldivError, NonFiniteError
from kldiv.histogram import GROWTH_POLICIES, ActivationHistogram, absmax, bin_edges


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_docstring_examples():
    result = doctest.testmod(histogram_module, verbose=False)
    assert result.attempted > 0 and result.failed == 0


def test_import_kldiv_does_not_load_numba():
    """Neither importing kldiv nor a fill with KLDIV_KERNELS=numpy loads Numba."""
    code = (
        "import sys, kldiv, numpy as np\n"
        "h = kldiv.ActivationHistogram(1.0, 8)\n"
        "h.fill(np.ones(4))\n"
        "assert 'numba' not in sys.modules, 'numba imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True,
                   env={**os.environ, "KLDIV_KERNELS": "numpy"})


# --------------------------------------------------------------------------- bin-edge rule
@settings(max_examples=200)
@given(
    amax=st.floats(1e-300, 1e300, allow_nan=False, allow_infinity=False),
    num_bins=st.sampled_from([1, 2, 3, 7, 100, 2048, 4099]),
)
def test_edges_agree_with_the_index_expression(amax, num_bins):
    edges = bin_edges(amax, num_bins)
    assert edges.dtype == np.float64 and edges.shape == (num_bins + 1,)
    assert edges[0] == 0.0 and edges[-1] == amax
    assert np.all(np.diff(edges) > 0)
    nominal = amax * (np.arange(num_bins + 1) / num_bins)
    assert np.all(np.abs(edges - nominal) <= 8 * np.spacing(nominal))
    inv_w = num_bins / amax
    k = np.arange(1, num_bins)
    inner = edges[1:-1]
    # the smallest value the expression puts in bin k is exactly edges[k]
    assert np.all(np.minimum(np.floor(inner * inv_w), num_bins - 1) == k)
    assert np.all(np.floor(np.nextafter(inner, 0) * inv_w) == k - 1)


def test_to_numpy_matches_np_histogram(implementation):
    x = _rng().standard_normal((32, 17)).astype(np.float32) * 3
    h = ActivationHistogram.from_values(x)
    counts, edges = h.to_numpy()
    ref, ref_edges = np.histogram(np.abs(x.astype(np.float64)), bins=edges)
    np.testing.assert_array_equal(counts, ref)
    np.testing.assert_array_equal(edges, h.edges)
    assert h.amax == float(np.abs(x).max()) and h.total == x.size
    assert h.bin_width == h.amax / 2048 and h.num_bins == 2048


def test_last_bin_is_closed_and_amax_zero_goes_to_bin_zero():
    h = ActivationHistogram(4.0, 4).fill(np.array([0.0, 1.0, 2.0, 3.0, 4.0, -4.0]))
    assert h.counts.tolist() == [1, 1, 1, 3]
    z = ActivationHistogram.from_values(np.zeros((2, 3), np.float16))
    assert z.amax == 0.0 and z.counts[0] == 6 and z.total == 6
    assert np.all(z.edges == 0)


def test_read_only_views():
    h = ActivationHistogram(1.0, 4, counts=[1, 2, 3, 4])
    with pytest.raises(ValueError):
        h.counts[0] = 5
    with pytest.raises(ValueError):
        h.edges[0] = 5
    with pytest.raises(AttributeError):
        h.amax = 3.0  # type: ignore[misc]
    counts, edges = h.to_numpy()
    counts[0] = 99  # copies: the histogram does not change
    assert h.counts[0] == 1


def test_pickle_and_copy_roundtrip():
    import copy
    import pickle

    h = ActivationHistogram.from_values(np.arange(10.0), num_bins=8)
    for clone in (pickle.loads(pickle.dumps(h)), copy.deepcopy(h), h.copy()):
        assert clone == h and clone is not h
        clone.fill(np.ones(3))
        assert clone != h  # independent counts


# --------------------------------------------------------------------------- merge / compare
def test_merge_add_iadd_sum():
    rng = _rng(1)
    batches = [rng.standard_normal(1000) for _ in range(4)]
    parts = [ActivationHistogram(5.0).fill(b, overflow="clip") for b in batches]
    whole = ActivationHistogram(5.0).fill(np.concatenate(batches), overflow="clip")
    assert sum(parts) == whole
    assert parts[0] + parts[1] + parts[2] + parts[3] == whole
    acc = ActivationHistogram(5.0)
    before = parts[0].copy()
    for p in parts:
        acc += p
    assert acc == whole and parts[0] == before  # += on acc does not touch the operands


def test_merge_rejects_different_ranges():
    a, b, c = ActivationHistogram(1.0, 8), ActivationHistogram(2.0, 8), ActivationHistogram(1.0, 4)
    for other in (b, c):
        with pytest.raises(HistogramRangeError, match="grow"):
            a + other
        with pytest.raises(ValueError):
            a += other
    with pytest.raises(TypeError):
        a + 1.5  # type: ignore[operator]


def test_equality_and_allclose():
    a = ActivationHistogram(1.0, 4, counts=[10**6, 5, 0, 1])
    b = ActivationHistogram(1.0, 4, counts=[10**6 + 1, 5, 0, 1])
    assert a == a.copy() and a != b
    assert not a.allclose(b) and a.allclose(b, rtol=1e-5)
    assert a != ActivationHistogram(1.0 + 1e-12, 4, counts=a.counts)
    assert a.allclose(ActivationHistogram(1.0 + 1e-12, 4, counts=a.counts), rtol=1e-9)
    assert not a.allclose(ActivationHistogram(1.0, 5))
    assert a != "histogram"


# --------------------------------------------------------------------------- construction
def test_from_counts_validation():
    h = ActivationHistogram.from_counts(np.array([1.0, 2.0, 0.0]), 3.0)
    assert h.counts.dtype == np.int64 and h.counts.tolist() == [1, 2, 0]
    bad = [
        [[1, 2], [3, 4]],  # 2-D
        [],  # empty
        [1, -2, 3],  # negative
        [1.5, 2.0],  # fractional
        [np.nan, 1.0],  # non-finite
        [True, False],  # bool
        ["1", "2"],  # strings
    ]
    for counts in bad:
        with pytest.raises(HistogramError) as err:
            ActivationHistogram.from_counts(counts, 1.0)
        assert isinstance(err.value, ValueError) and isinstance(err.value, KldivError)
    with pytest.raises(HistogramError, match="num_bins"):
        ActivationHistogram(1.0, 3, counts=[1, 2])


@pytest.mark.parametrize("amax", [-1.0, math.inf, math.nan, "x", 1e-310])
def test_bad_amax(amax):
    with pytest.raises(HistogramError, match="amax"):
        ActivationHistogram(amax)


@pytest.mark.parametrize("num_bins", [0, -3, 2.5, True])
def test_bad_num_bins(num_bins):
    with pytest.raises(HistogramError, match="num_bins"):
        ActivationHistogram(1.0, num_bins)


def test_integer_and_nd_inputs(implementation):
    x = np.arange(-50, 50, dtype=np.int16).reshape(10, 10)
    h = ActivationHistogram.from_values(x, num_bins=50)
    ref = ActivationHistogram.from_values(x.astype(np.float64), num_bins=50)
    assert h == ref and h.amax == 50.0


@pytest.mark.parametrize("values", [np.array([1 + 2j]), np.array(["a"]), np.array([object()])])
def test_bad_dtypes(values):
    with pytest.raises(HistogramError, match="dtype"):
        ActivationHistogram(1.0).fill(values)


def test_bad_option_names():
    h = ActivationHistogram(1.0)
    for kwargs in ({"nonfinite": "ignore"}, {"overflow": "wrap"}):
        with pytest.raises(HistogramError, match="is not one of"):
            h.fill(np.ones(3), **kwargs)
    with pytest.raises(HistogramError, match="growth='grow' is not one of"):
        ActivationHistogram(1.0, growth="grow")  # type: ignore[arg-type]
    for gone in ("range_policy", "backend"):  # growth is the histogram's; one knob picks fills
        with pytest.raises(TypeError, match=gone):
            h.fill(np.ones(3), **{gone: "pow2"})


# --------------------------------------------------------------------------- empty / non-finite
def test_empty_input(implementation):
    h = ActivationHistogram(1.0, 8)
    with pytest.raises(HistogramError, match="no values: the tensor is empty"):
        h.fill(np.zeros((0, 3), np.float32), where="conv1 batch 3")
    assert h.fill(np.zeros(0), allow_empty=True) == ActivationHistogram(1.0, 8)
    with pytest.raises(HistogramError, match="empty"):
        ActivationHistogram.from_values([])
    with pytest.raises(HistogramError, match="empty"):
        absmax(np.zeros(0))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_nonfinite_raise_and_drop(implementation, dtype):
    x = np.ones((4, 5), dtype)
    x[1, 2] = np.nan
    x[2, 0] = np.inf
    x[3, 3] = -np.inf
    x[3, 4] = np.nan
    h = ActivationHistogram(2.0, 16)
    with pytest.raises(NonFiniteError) as err:
        h.fill(x, where="relu_3")
    e = err.value
    assert (e.n_nan, e.n_posinf, e.n_neginf, e.first_index) == (2, 1, 1, (1, 2))
    assert "relu_3" in str(e) and "nonfinite='drop'" in str(e) and "NaN: 2" in str(e)
    assert h.total == 0  # unchanged on error
    h.fill(x, nonfinite="drop")
    assert h.total == 16 and h.counts[8] == 16
    with pytest.raises(NonFiniteError):
        absmax(x)
    assert absmax(x, nonfinite="drop") == 1.0
    with pytest.raises(NonFiniteError):
        ActivationHistogram.from_values(x)
    assert ActivationHistogram.from_values(x, nonfinite="drop").total == 16


# --------------------------------------------------------------------------- range policies
def test_fixed_overflow_raise_or_clip(implementation):
    h = ActivationHistogram(1.0, 4).fill(np.array([0.1, 0.2]))
    before = h.copy()
    with pytest.raises(HistogramRangeError, match="exceed the histogram range") as err:
        h.fill(np.array([0.5, 3.0, -7.0]))
    assert "2 value(s)" in str(err.value) and "7.0" in str(err.value)
    assert h == before
    h.fill(np.array([0.5, 3.0, -7.0]), overflow="clip")
    assert h.counts.tolist() == [2, 0, 1, 2]
    with pytest.raises(HistogramRangeError, match="growth='pow2'"):
        h.fill(np.array([9.0]))


def test_global_policy_two_passes(implementation):
    rng = _rng(2)
    batches = [rng.standard_normal((8, 100)).astype(np.float32) * s for s in (1, 3, 2)]
    amax = max(absmax(b) for b in batches)  # pass 1
    h = ActivationHistogram(amax)  # fixed range
    for b in batches:  # pass 2
        h.fill(b)
    assert h == ActivationHistogram.from_values(np.concatenate(batches))


def test_pow2_growth_merges_pairs_exactly(implementation):
    rng = _rng(3)
    a0 = 1.0  # a fixed start range that no value hits exactly
    first = rng.uniform(-0.99, 0.99, 5000)
    later = rng.uniform(-3.7, 3.7, 5000)  # needs two doublings: 1 -> 2 -> 4
    h = ActivationHistogram(a0, growth="pow2").fill(first)
    h.fill(later)
    assert h.amax == 4.0 and h.num_bins == 2048 and h.total == 10000
    # doubling is exact in float64 and the index scales by 1/2: merging == refilling
    assert h == ActivationHistogram(4.0).fill(np.concatenate([first, later]))
    assert h.counts[1024:].sum() == np.count_nonzero(np.abs(later) >= 2.0)


def test_pow2_keeps_the_old_closed_edge_in_its_bin():
    """A value exactly at the old amax was in the old last bin; after merging it stays in the
    merged bin below the new edge, one bin lower than a refill would put it (documented)."""
    h = ActivationHistogram.from_values(np.array([0.5, 1.0]), num_bins=8, growth="pow2")
    h.fill(np.array([1.5]))
    assert h.amax == 2.0
    assert h.counts.tolist() == [0, 0, 1, 1, 0, 0, 1, 0]
    refill = ActivationHistogram.from_values(np.array([0.5, 1.0, 1.5]), amax=2.0, num_bins=8)
    assert refill.counts.tolist() == [0, 0, 1, 0, 1, 0, 1, 0]


def test_grow_to_pow2_and_append_counts():
    counts = np.arange(1, 9)
    h = ActivationHistogram(1.0, 8, counts=counts).grow_to(3.0, policy="pow2")
    assert h.amax == 4.0 and h.counts.tolist() == [10, 26, 0, 0, 0, 0, 0, 0]
    h = ActivationHistogram(1.0, 8, counts=counts).grow_to(1.3, policy="append")
    assert h.num_bins == 11 and h.amax == 11 * 0.125
    assert h.counts.tolist() == [*counts.tolist(), 0, 0, 0]
    same = ActivationHistogram(1.0, 8, counts=counts)
    assert same.grow_to(0.5) == ActivationHistogram(1.0, 8, counts=counts)  # never shrinks
    with pytest.raises(HistogramError, match="append growth"):
        ActivationHistogram(1.0, 8, counts=counts).grow_to(1e9, policy="append")
    odd = ActivationHistogram(1.0, 5, counts=[1, 2, 3, 4, 5]).grow_to(2.0, policy="pow2")
    assert odd.counts.tolist() == [3, 7, 5, 0, 0]


@pytest.mark.parametrize("policy", ["pow2", "append"])
def test_all_zero_first_batch_then_growth(policy, implementation):
    fixed = ActivationHistogram.from_values(np.zeros(100, np.float32))
    with pytest.raises(HistogramRangeError):
        fixed.fill(np.array([0.0, 2.0]))  # fixed: does not grow
    h = ActivationHistogram.from_values(np.zeros(100, np.float32), growth=policy)
    assert h.amax == 0.0 and h.growth == policy
    h.fill(np.array([0.0, 2.0, -1.0]))
    assert h.amax == 2.0 and h.num_bins == 2048
    assert h.counts[0] == 101 and h.counts[-1] == 1 and h.counts[1024] == 1 and h.total == 103


def test_append_growth(implementation):
    rng = _rng(4)
    first = rng.uniform(-1, 1, 4000)
    h = ActivationHistogram.from_values(first, num_bins=2048, growth="append")
    width = h.bin_width
    later = rng.uniform(-2.5, 2.5, 4000)
    h.fill(later)
    expected_bins = math.ceil(float(np.abs(later).max()) / width)
    assert h.num_bins in (expected_bins, expected_bins + 1)
    assert h.amax >= float(np.abs(later).max()) and h.total == 8000
    assert math.isclose(h.bin_width, width, rel_tol=1e-12)


@pytest.mark.peers
def test_append_matches_modelopt():
    """The "append" policy mirrors ModelOpt's HistogramCalibrator.collect (torch path)."""
    torch = pytest.importorskip("torch")
    hc = pytest.importorskip("modelopt.torch.quantization.calib.histogram")
    rng = _rng(5)
    batches = [rng.standard_normal(20000).astype(np.float32) * s for s in (1.0, 2.5, 1.5, 4.0)]
    calib = hc.HistogramCalibrator(num_bins=2048)
    ours = None
    for b in batches:
        calib.collect(torch.from_numpy(b))
        if ours is None:
            ours = ActivationHistogram.from_values(b, growth="append")
        else:
            ours.fill(b)
    theirs = calib._calib_hist.numpy()
    assert ours.num_bins == theirs.size
    assert math.isclose(ours.amax, float(calib._calib_bin_edges[-1]), rel_tol=1e-5)
    assert ours.total == int(theirs.sum())
    # torch.histc bins in float32: allow a few values to sit one bin over
    assert np.abs(ours.counts - theirs).sum() <= 1e-3 * ours.total


@pytest.mark.parametrize("growth", GROWTH_POLICIES)
def test_growth_is_set_once_and_kept(growth):
    """The growth policy is the histogram's: kept by copy, +, from_counts; not part of ==."""
    h = ActivationHistogram(1.0, 16, growth=growth)
    h.fill(np.array([0.25, 0.5]))
    assert h.total == 2 and h.growth == growth
    assert h.copy().growth == growth and (h + h).growth == growth
    assert ActivationHistogram.from_counts(h.counts, 1.0, growth=growth).growth == growth
    assert h == ActivationHistogram(1.0, 16).fill(np.array([0.25, 0.5]))
    if growth == "fixed":
        with pytest.raises(HistogramRangeError):
            h.fill(np.array([3.0]))
    else:
        h.fill(np.array([3.0]))
        assert h.amax >= 3.0 and h.total == 3


def test_grow_to_defaults_to_the_histograms_growth():
    counts = np.arange(1, 9)
    appended = ActivationHistogram(1.0, 8, counts=counts, growth="append").grow_to(1.3)
    assert appended.num_bins == 11
    doubled = ActivationHistogram(1.0, 8, counts=counts).grow_to(1.3)  # fixed: pow2 when asked
    assert doubled.amax == 2.0 and doubled.num_bins == 8 and doubled.growth == "fixed"
