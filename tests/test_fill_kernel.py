"""The Numba fill kernel against the NumPy reference (and np.histogram), bin for bin.

Every test runs on every compiled build offered (conftest's ``kernel_build``), called as
:class:`kldiv._kernels.Kernels` is called by :mod:`kldiv.histogram`: arrays and plain numbers.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kldiv._kernels import Kernels
from kldiv.histogram import FillStats, bin_edges, fill_counts_reference

fill = pytest.importorskip("kldiv._kernels.fill")
from kldiv._kernels import wrappers  # noqa: E402

DTYPES = [np.float16, np.float32, np.float64]
BUILD: Kernels | None = None


# each test runs on each build in turn: conftest's kernel_build sets BUILD (module scope)
pytestmark = pytest.mark.usefixtures("kernel_build")


def fill_counts(values, amax, num_bins, *, clip):
    assert BUILD is not None
    return FillStats(*BUILD.fill_counts(values, amax, num_bins, clip))


def _same(values: np.ndarray, amax: float, num_bins: int, clip: bool = False) -> np.ndarray:
    """Fill with both implementations, assert every output agrees, return the counts."""
    ref = fill_counts_reference(values, amax, num_bins, clip=clip)
    got = fill_counts(values, amax, num_bins, clip=clip)
    np.testing.assert_array_equal(got.counts, ref.counts)
    assert got.counts.dtype == np.int64
    assert (got.n_nonfinite, got.n_over) == (ref.n_nonfinite, ref.n_over)
    assert got.max_over == ref.max_over
    assert got.max_abs == ref.max_abs  # the collector's exact max|x| (MinMax), same pass
    finite = np.abs(values[np.isfinite(values)].astype(np.float64))
    assert got.max_abs == (float(finite.max()) if finite.size else 0.0)
    return got.counts


def _oracle(values: np.ndarray, amax: float, num_bins: int) -> np.ndarray:
    """np.histogram with the edge array: the documented edge rule, computed independently."""
    a = np.abs(values.astype(np.float64)).ravel()
    a = a[np.isfinite(a) & (a <= amax)]
    if amax == 0:
        out = np.zeros(num_bins, np.int64)
        out[0] = a.size
        return out
    counts, _ = np.histogram(a, bins=bin_edges(amax, num_bins))
    return counts


@st.composite
def arrays_and_range(draw):
    dtype = draw(st.sampled_from(DTYPES))
    width = np.dtype(dtype).itemsize * 8
    elements = st.floats(
        width=width, allow_nan=True, allow_infinity=True, allow_subnormal=True
    ) | st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5])
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=12))
    values = draw(hnp.arrays(dtype, shape, elements=elements))
    finite = np.abs(values[np.isfinite(values)].astype(np.float64))
    data_max = float(finite.max()) if finite.size else 0.0
    choice = draw(st.sampled_from(["data", "smaller", "larger", "zero", "edge"]))
    if choice == "data":
        amax = data_max
    elif choice == "smaller":
        amax = data_max * draw(st.floats(0.01, 1.0))
    elif choice == "larger":
        amax = data_max * draw(st.floats(1.0, 8.0)) + draw(st.sampled_from([0.0, 1e-3, 1.0]))
    elif choice == "edge" and finite.size:
        amax = float(draw(st.sampled_from(sorted(finite.tolist()))))
    else:
        amax = 0.0
    if not np.isfinite(amax):
        amax = data_max  # data_max * factor overflowed (values near 1.8e308)
    if amax != 0.0 and amax < 1e-300:
        amax = 0.0  # too small for float64 bins (rejected by design, tested elsewhere)
    num_bins = draw(st.sampled_from([1, 2, 3, 7, 128, 2048]))
    # view variants: reversed, strided, transposed
    view = draw(st.sampled_from(["as-is", "reversed", "step", "transpose"]))
    if values.ndim and view == "reversed":
        values = values[::-1]
    elif values.ndim and view == "step":
        values = values[::2]
    elif values.ndim > 1 and view == "transpose":
        values = values.T
    return values, amax, num_bins, draw(st.booleans())


@settings(max_examples=300)
@given(arrays_and_range())
def test_kernel_equals_reference_and_edge_rule(case):
    values, amax, num_bins, clip = case
    counts = _same(values, amax, num_bins, clip)
    expected = _oracle(values, amax, num_bins)
    if clip:
        a = np.abs(values.astype(np.float64))
        expected[-1] += int(np.count_nonzero(np.isfinite(a) & (a > amax)))
    np.testing.assert_array_equal(counts, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_bins", [1, 5, 2048])
@pytest.mark.parametrize("amax", [1.0, 0.3, 6.0, 1e38, 255.0 / 256.0])
def test_values_exactly_on_edges(dtype, num_bins, amax):
    edges = bin_edges(amax, num_bins)
    just_below = np.nextafter(edges[1:], 0.0)
    values = np.concatenate([edges, just_below, -edges])
    counts = _same(values, amax, num_bins)
    np.testing.assert_array_equal(counts, _oracle(values, amax, num_bins))
    # float64: edge k opens bin k, the float just below it closes bin k-1, amax closes the last
    expected = np.zeros(num_bins, np.int64)
    expected[:] += 2  # +edge[k] and -edge[k] for k < num_bins
    expected[-1] += 2  # +-amax
    expected[:] += 1  # just below edge k+1 is in bin k
    np.testing.assert_array_equal(counts, expected)
    # the same through narrower dtypes (values rounded to the dtype, then binned exactly)
    with np.errstate(over="ignore"):
        narrow = values.astype(dtype)
    narrow = narrow[np.isfinite(narrow)]
    _same(narrow, amax, num_bins)


@pytest.mark.parametrize("dtype", DTYPES)
def test_special_inputs(dtype):
    info = np.finfo(dtype)
    big = 1e38 if dtype != np.float16 else 6e4
    cases = [
        np.zeros(0, dtype),
        np.zeros((3, 0, 2), dtype),
        np.zeros(1000, dtype),
        np.array([info.smallest_subnormal, -info.smallest_subnormal, info.tiny], dtype),
        np.array([big, -big, 0, 1], dtype),
        np.array([np.nan, np.inf, -np.inf, 1.0, -2.0], dtype),
        np.array(3.5, dtype),  # 0-d
    ]
    for values in cases:
        finite = np.abs(values[np.isfinite(values)].astype(np.float64))
        for amax in {float(finite.max()) if finite.size else 0.0, 0.0, 1.0}:
            if 0 < amax < 1e-300:
                continue  # too small for float64 bins: rejected by design (test_histogram)
            for clip in (False, True):
                _same(values, amax, 2048, clip)


@pytest.mark.parametrize("dtype", DTYPES)
def test_parallel_chunks_and_layouts(dtype):
    """Large enough to use several chunks; dense C/F/permuted/reversed views and strided ones."""
    rng = np.random.default_rng(1)
    base = (rng.standard_normal((40, 50, 60)) * 10).astype(dtype)
    base[0, 0, :5] = 0
    amax = float(np.abs(base.astype(np.float64)).max())
    views = {
        "C": base,
        "F": np.asfortranarray(base),
        "transposed": base.transpose(2, 0, 1),
        "reversed": base[::-1, :, ::-1],
        "strided": base[:, ::3, 1::2],
        "column": base[:, 7, :],
    }
    whole = _same(base, amax, 2048)
    for name, view in views.items():
        counts = _same(view, amax, 2048)
        assert counts.sum() == view.size, name
        if view.size == base.size:
            np.testing.assert_array_equal(counts, whole, err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("n", [4095, 4096, 4097, 200_003])
def test_specials_across_code_blocks_and_chunks(dtype, clip, n):
    """NaN, +-Inf, over-range, -0 and denormals at block ends, chunk ends and the odd tail.

    The float32/float64 kernel works in blocks of bin codes with a spill code for anything
    outside [0, amax]; every position where a block, a 4-wide counting step or a thread's
    chunk starts or ends must still give the reference's counts, over/non-finite tallies and
    maxima.
    """
    rng = np.random.default_rng(n)
    values = (rng.standard_normal(n) * 3).astype(dtype)
    values[rng.random(n) < 0.3] = 0  # runs of one bin, as after a ReLU
    tiny = np.finfo(dtype).smallest_subnormal
    block = fill._CODE_BLOCK
    spots = sorted({0, 1, 3, n - 1, n - 2, n // 2, n // 2 - 1, n // 2 + 1, block - 1, block,
                    block + 1, 2 * block - 3} & set(range(n)))
    specials = [np.nan, np.inf, -np.inf, 50.0, -60.0, -0.0, tiny, -tiny]
    for k, at in enumerate(spots):
        values[at] = specials[k % len(specials)]
    for amax in (4.0, float(np.abs(values[np.isfinite(values)]).astype(np.float64).max())):
        _same(values, amax, 2048, clip)
        _same(values, amax, 7, clip)


def test_dense_view_shares_memory_or_refuses():
    x = np.arange(24.0).reshape(2, 3, 4)
    for dense in (x, x.T, x[::-1], np.asfortranarray(x), x[:, ::-1, :]):
        flat = wrappers.dense_view(dense)
        assert flat is not None and flat.ndim == 1 and np.shares_memory(flat, dense)
        assert sorted(flat.tolist()) == sorted(dense.ravel().tolist())
    assert wrappers.dense_view(x[:, ::2]) is None
    assert wrappers.dense_view(x[..., 1:]) is None


def test_strided_input_is_fed_in_bounded_blocks(monkeypatch):
    monkeypatch.setattr(wrappers, "BLOCK_ELEMENTS", 1000)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 200)).astype(np.float32)[:, ::3]
    blocks = list(wrappers.blocks(x))
    assert len(blocks) > 10 and max(b.size for b in blocks) <= 1000
    _same(x, 2.5, 2048, clip=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_absmax_stats(dtype):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(200_001) * 7).astype(dtype)
    x[5] = np.nan
    x[-1] = -np.inf
    assert BUILD is not None
    mx, bad = BUILD.absmax(x[::-1])
    finite = np.abs(x[np.isfinite(x)].astype(np.float64))
    assert (mx, bad) == (float(finite.max()), 2)
    assert BUILD.absmax(np.zeros(10, dtype)) == (0.0, 0)


def test_f16_table_is_exact():
    bits = np.arange(1 << 15, dtype=np.uint16)
    assert np.array_equal(
        wrappers.F16_ABS_TABLE, bits.view(np.float16).astype(np.float64), equal_nan=True
    )


@pytest.mark.parametrize("backend_fill", ["numba", "reference"])
def test_no_full_size_temporaries(backend_fill):
    """Filling a 32 MiB array allocates far less than the array (no |x| / mask / copy)."""
    x = np.random.default_rng(4).standard_normal(8 << 20, dtype=np.float32)
    strided = x.reshape(-1, 8)[:, ::2]
    _same(x[:1000], 1.0, 2048)  # compile / warm up outside the measurement
    for values in (x, strided):
        tracemalloc.start()
        try:
            if backend_fill == "numba":
                fill_counts(values, 4.0, 2048, clip=True)
            else:
                fill_counts_reference(values, 4.0, 2048, clip=True)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 12 << 20, (
            f"peak {peak / 2**20:.1f} MiB for a {values.nbytes / 2**20} MiB input"
        )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", [1, 3, 8])
def test_large_fills_run_in_chunks_on_threads(monkeypatch, dtype, n_threads):
    """From SERIAL_BELOW elements on, the input is cut into one chunk per thread and the
    partial results are added: the same counts, tallies and maxima as the reference, with
    NaN, over-range values and the largest value in different chunks.
    """
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(3 * wrappers.SERIAL_BELOW + 11) * 0.5).astype(dtype)
    x[[3, -2]] = np.nan
    x[[5, x.size // 2 + 9]] = 7.0  # over the range: clipped, counted, largest kept
    chunks: list[int] = []
    real = wrappers._in_chunks

    def spy(run, arrays, rest):
        parts = real(run, arrays, rest)
        chunks.append(len(parts))
        return parts

    from kldiv._kernels import _threads

    monkeypatch.setattr(wrappers, "threads", lambda: n_threads)
    monkeypatch.setattr(_threads, "threads", lambda: n_threads)
    monkeypatch.setattr(wrappers, "_in_chunks", spy)
    monkeypatch.setattr(_threads, "_POOL", None)  # sized for the patched thread count
    got = _same(x, 3.0, 2048, clip=True)
    assert chunks == [n_threads] and got.sum() == x.size - 2
    assert BUILD is not None and BUILD.absmax(x) == (7.0, 2)
    monkeypatch.setattr(_threads, "_POOL", None)


def test_fills_from_several_threads_at_once():
    """The kernels release the GIL and share nothing: fills called from several Python threads
    at once (large ones chunked on the kernel pool too) give each caller the reference's answer.
    """
    from concurrent.futures import ThreadPoolExecutor

    assert BUILD is not None
    rng = np.random.default_rng(9)
    inputs = [(rng.standard_normal(n) * s).astype(dt) for n, s, dt in
              [(5_000, 1.0, np.float32), (wrappers.SERIAL_BELOW + 7, 3.0, np.float32),
               (70_000, 0.5, np.float16), (2 * wrappers.SERIAL_BELOW, 2.0, np.float64)] * 3]
    want = [fill_counts_reference(x, 4.0, 2048, clip=True).counts for x in inputs]
    build = BUILD
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: build.fill_counts(x, 4.0, 2048, True)[0], inputs))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
