"""Numba histogram fill: the fast twin of the NumPy reference in :mod:`kldiv.histogram`.

Contract (identical to :func:`kldiv.histogram.fill_counts_reference`): for every finite value
``a = |float64(x)|`` with ``a <= amax``, the bin is ``min(int(a * (num_bins / amax)),
num_bins - 1)`` computed in float64 (the bin-edge rule of :mod:`kldiv.histogram`, whose
edges are derived from this very expression, so the two always agree). With ``amax == 0``
everything lands in bin 0. Values with ``a > amax`` are counted as *over* (and their largest
value kept, for range growth); with ``clip`` they also go into the last bin. NaN and ±Inf are
counted as *non-finite* and never binned.

How it is fast without changing the answer
    The input is split into one chunk per thread (``prange``); each chunk fills a private
    partial histogram; the partials are added at the end (no atomics, no shared writes).
    float16 arrays are read as their uint16 bits and decoded exactly to float64 in the loop,
    so no float32/float64 copy of the tensor is ever made. Non-contiguous arrays are fed in
    bounded blocks by the Python wrapper (at most :data:`BLOCK_ELEMENTS` copied at a time).
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
from numba import types
from numba.extending import overload

from ._jit import jit

__all__ = ["BLOCK_ELEMENTS", "FillResult", "absmax_stats", "dense_view", "fill_counts"]

#: Elements copied at a time when the input is not one dense block of memory.
BLOCK_ELEMENTS = 1 << 20
#: Below this many elements the kernel runs as a single chunk (no partial histograms).
_SERIAL_BELOW = 1 << 16


class FillResult(NamedTuple):
    """What one fill saw, besides the counts."""

    counts: np.ndarray  # int64, shape (num_bins,)
    n_nonfinite: int  # NaN, +Inf, -Inf (never binned)
    n_over: int  # finite values with |x| > amax
    max_over: float  # largest finite |x| above amax (0.0 when none)


# --------------------------------------------------------------------------- decoding
def _abs_f64(v):  # pragma: no cover - replaced by the overload below inside kernels
    raise NotImplementedError


@overload(_abs_f64, jit_options={"cache": True})
def _abs_f64_impl(v):
    """|v| as float64; uint16 means 'the bits of a float16' and is decoded exactly."""
    if isinstance(v, types.Integer) and v.bitwidth == 16 and not v.signed:

        def decode(v):
            bits = np.int64(v) & 0x7FFF
            exp = bits >> 10
            mant = bits & 0x3FF
            if exp == 0x1F:  # Inf (mant == 0) or NaN
                return np.inf if mant == 0 else np.nan
            if exp == 0:  # zero or subnormal: mant * 2**-24
                return np.float64(mant) * 5.9604644775390625e-08
            return np.float64(mant + 1024) * (2.0 ** (exp - 25))

        return decode

    def plain(v):
        return abs(np.float64(v))

    return plain


# --------------------------------------------------------------------------- kernels
@jit(parallel=True)
def _fill_kernel(x, amax, num_bins, clip, n_chunks):  # pragma: no cover - compiled
    n = x.size
    last = num_bins - 1
    inv_w = num_bins / amax if amax > 0.0 else 0.0
    partial = np.zeros((n_chunks, num_bins), np.int64)
    stats = np.zeros((n_chunks, 2), np.int64)  # nonfinite, over
    maxes = np.zeros(n_chunks, np.float64)  # largest finite |x| above amax
    step = (n + n_chunks - 1) // n_chunks
    for c in numba.prange(n_chunks):
        h = partial[c]
        n_nonfinite = 0
        n_over = 0
        mx = 0.0
        for i in range(c * step, min(n, c * step + step)):
            a = _abs_f64(x[i])
            if a <= amax:
                h[min(int(a * inv_w), last)] += 1
            elif np.isfinite(a):
                n_over += 1
                mx = max(mx, a)
                if clip:
                    h[last] += 1
            else:
                n_nonfinite += 1
        stats[c, 0] = n_nonfinite
        stats[c, 1] = n_over
        maxes[c] = mx
    counts = np.zeros(num_bins, np.int64)
    for c in range(n_chunks):
        counts += partial[c]
    return counts, stats.sum(axis=0), maxes.max()


@jit(parallel=True)
def _absmax_kernel(x, n_chunks):  # pragma: no cover - compiled
    n = x.size
    maxes = np.zeros(n_chunks, np.float64)
    nonfinite = np.zeros(n_chunks, np.int64)
    step = (n + n_chunks - 1) // n_chunks
    for c in numba.prange(n_chunks):
        mx = 0.0
        bad = 0
        for i in range(c * step, min(n, c * step + step)):
            a = _abs_f64(x[i])
            if np.isfinite(a):
                mx = max(mx, a)
            else:
                bad += 1
        maxes[c] = mx
        nonfinite[c] = bad
    return maxes.max(), nonfinite.sum()


# --------------------------------------------------------------------------- wrappers
def _kernel_view(x: np.ndarray) -> np.ndarray:
    """A 1-D array the kernels accept, sharing memory with ``x`` (float16 -> its uint16 bits)."""
    if x.dtype == np.float16:
        return x.view(np.uint16)
    return x


def dense_view(values: np.ndarray) -> np.ndarray | None:
    """A 1-D view of all of ``values`` when its memory is one dense block, else None.

    Element order is irrelevant to a histogram, so axes may be permuted and reversed freely.
    """
    if values.ndim == 0:
        return values.reshape(1)
    v = values
    for axis in range(v.ndim):
        if v.strides[axis] < 0:
            v = np.flip(v, axis)
    order = sorted(range(v.ndim), key=lambda ax: v.strides[ax], reverse=True)
    v = v.transpose(order)
    if v.flags.c_contiguous:
        return v.reshape(-1)
    return None


def _blocks(values: np.ndarray):
    """Yield one 1-D view (dense input) or bounded contiguous copies (strided input)."""
    flat = dense_view(values)
    if flat is not None:
        yield flat
        return
    it = np.nditer(
        values,
        flags=["external_loop", "buffered", "zerosize_ok"],
        op_flags=[["readonly"]],
        order="K",
        buffersize=BLOCK_ELEMENTS,
    )
    for block in it:
        yield np.ascontiguousarray(block)


def _chunks_for(size: int) -> int:
    return 1 if size < _SERIAL_BELOW else max(1, int(numba.get_num_threads()))


def fill_counts(values: np.ndarray, amax: float, num_bins: int, *, clip: bool) -> FillResult:
    """Count ``|values|`` into ``num_bins`` bins over ``[0, amax]`` (see the module contract).

    Parameters
    ----------
    values : numpy.ndarray
        float16/32/64 (or integer) array of any shape and strides; never copied whole.
    amax : float
        Upper edge of the range; 0 means "all mass in bin 0".
    num_bins : int
        Number of bins.
    clip : bool
        Put values above ``amax`` into the last bin (they are counted as over either way).

    Returns
    -------
    FillResult
    """
    counts = np.zeros(num_bins, np.int64)
    n_nonfinite = n_over = 0
    max_over = 0.0
    for block in _blocks(values):
        if block.size == 0:
            continue
        part, stats, mx = _fill_kernel(
            _kernel_view(block), float(amax), int(num_bins), bool(clip), _chunks_for(block.size)
        )
        counts += part
        n_nonfinite += int(stats[0])
        n_over += int(stats[1])
        max_over = max(max_over, float(mx))
    return FillResult(counts, n_nonfinite, n_over, max_over)


def absmax_stats(values: np.ndarray) -> tuple[float, int]:
    """``(largest finite |x|, number of non-finite values)`` without a temporary of ``|x|``."""
    max_abs = 0.0
    n_nonfinite = 0
    for block in _blocks(values):
        if block.size == 0:
            continue
        mx, bad = _absmax_kernel(_kernel_view(block), _chunks_for(block.size))
        max_abs = max(max_abs, float(mx))
        n_nonfinite += int(bad)
    return max_abs, n_nonfinite
