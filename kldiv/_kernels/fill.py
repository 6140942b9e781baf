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
    Chunks go in blocks through two passes: branch-free loops that LLVM vectorises compute
    the bin codes and the block's maximum (as the integer maximum of the magnitude bits),
    then the codes are counted into four interleaved copies of the histogram, so runs of one
    bin (the zeros after a ReLU) do not serialise on one counter. Loops index a slice of the
    block (``block[j]``, never ``x[start + j]``): an index Numba cannot prove non-negative
    gets a wrap-around fix-up per element, which made LLVM load the values with a gather
    instead of a vector load (1.2-1.3x slower fills, ``benchmarks/fill_kernel_ab.py``). Bin
    codes are unsigned for the same reason in the counting loop. Tensors below
    :data:`_SERIAL_BELOW` elements run in a serial twin of the kernel (no thread launch).
    float16 arrays are read as their uint16 bits: the bin code of each of the 2**15 magnitude
    patterns is computed once per fill by the same rule (a 128 KiB table), and the loop looks
    codes up, so no float32/float64 copy of the tensor is ever made. Non-contiguous arrays are fed in
    bounded blocks by the Python wrapper (at most :data:`BLOCK_ELEMENTS` copied at a time).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import overload

from ..histogram import FillStats
from ._jit import jit, numba_num_threads

__all__ = [
    "BLOCK_ELEMENTS",
    "F16_ABS_TABLE",
    "absmax_stats",
    "dense_view",
    "fill_counts",
]

#: Elements copied at a time when the input is not one dense block of memory.
BLOCK_ELEMENTS = 1 << 20
#: Below this many elements the kernel runs as a single chunk (no partial histograms).
_SERIAL_BELOW = 1 << 16
#: Elements per block of bin codes in the float32/float64 kernel (16 KiB of uint32 codes).
_CODE_BLOCK = 4096
#: (unsigned view, magnitude mask: every bit but the sign) by dtype, for the fill kernel.
_MAGNITUDE = {
    np.dtype(np.float16): (np.uint16, np.uint16(0x7FFF)),
    np.dtype(np.float32): (np.uint32, np.uint32(0x7FFF_FFFF)),
    np.dtype(np.float64): (np.uint64, np.uint64(0x7FFF_FFFF_FFFF_FFFF)),
}


# --------------------------------------------------------------------------- per-element rules
#: |float16| as float64 for each of the 2**15 magnitude bit patterns (exact widening).
F16_ABS_TABLE = np.arange(1 << 15, dtype=np.uint16).view(np.float16).astype(np.float64)
_NO_TABLE_F = np.zeros(1, np.float64)
_NO_TABLE_I = np.zeros(1, np.uint32)


def _is_f16_bits(v):
    return isinstance(v, types.Integer) and v.bitwidth == 16 and not v.signed


def _abs_f64(v, table):  # pragma: no cover - replaced by the overload inside kernels
    raise NotImplementedError


def _code_of(v, codes, amax, inv_w, flast, num_bins):  # pragma: no cover - overloaded
    raise NotImplementedError


@overload(_abs_f64, jit_options={"cache": True})  # type: ignore[typeddict-unknown-key]
def _abs_f64_impl(v, table):
    """|v| as float64; uint16 means 'the bits of a float16', looked up in F16_ABS_TABLE."""
    if _is_f16_bits(v):
        return lambda v, table: table[v & 0x7FFF]
    return lambda v, table: abs(np.float64(v))


@overload(_code_of, jit_options={"cache": True})  # type: ignore[typeddict-unknown-key]
def _code_of_impl(v, codes, amax, inv_w, flast, num_bins):
    """Bin code of one element, or ``num_bins`` (spill): branch-free, so loops vectorise.

    float16 bits look their code up in the per-fill table of all 2**15 magnitudes. For
    float32/float64, ``a <= amax`` is False for NaN and +-Inf (amax is finite), and for
    ``q >= 0``, ``int(min(q, last)) == min(int(q), last)``: the documented rule.
    """
    if _is_f16_bits(v):
        return lambda v, codes, amax, inv_w, flast, num_bins: codes[v & 0x7FFF]

    def code(v, codes, amax, inv_w, flast, num_bins):
        a = abs(np.float64(v))
        return np.uint32(min(a * inv_w, flast)) if a <= amax else np.uint32(num_bins)

    return code


# --------------------------------------------------------------------------- kernels
@jit
def _codes_kernel(values, amax, inv_w, num_bins):  # pragma: no cover - compiled
    """:func:`_code_of` of each value (float64): the float16 code table."""
    codes = np.empty(values.size, np.uint32)
    flast = float(num_bins - 1)
    for i in range(values.size):
        codes[i] = _code_of(values[i], _NO_TABLE_I, amax, inv_w, flast, num_bins)
    return codes


@jit
def _fill_chunk(  # pragma: no cover - compiled
    x, bits, mask, table, ftable, amax, num_bins, clip, lo, hi, h, tallies, fmax, bmax, c
):
    """Fill ``h`` (four lanes) from ``x[lo:hi]``; write chunk ``c``'s tallies and maxima.

    In blocks of :data:`_CODE_BLOCK` elements and two passes. Pass 1 (branch-free loops that
    LLVM vectorises for float32/float64): the bin code of each element (:func:`_code_of`;
    float16 arrives as its uint16 bits and looks its code up in ``table``), or ``num_bins``
    (a spill code) for values outside ``[0, amax]`` and non-finite ones; then the block's
    largest magnitude as the integer maximum of ``bits & mask`` (magnitude bits order
    non-negative IEEE values exactly, and an integer max vectorises where a NaN-aware float
    max does not). Pass 2: the codes are counted into four interleaved copies of the
    histogram, so runs of equal codes (the zeros after a ReLU) do not serialise on one
    counter. A block with spilled codes is rescanned (rare): over-range and non-finite values
    are tallied there, and its in-range maximum is taken from the values themselves.
    """
    last = num_bins - 1
    flast = float(last)
    inv_w = num_bins / amax if amax > 0.0 else 0.0
    lane = num_bins + 1  # each copy has one spill bin at index num_bins
    codes = np.empty(_CODE_BLOCK, np.uint32)
    mb = bmax[c]  # zero, typed like the bits
    mx = 0.0
    mx_in = 0.0
    n_over = 0
    n_nonfinite = 0
    for start in range(lo, hi, _CODE_BLOCK):
        m = min(_CODE_BLOCK, hi - start)
        block = x[start : start + m]
        for j in range(m):
            codes[j] = _code_of(block[j], table, amax, inv_w, flast, num_bins)
        block_bits = bits[start : start + m]
        mb_block = bmax[c]
        for j in range(m):
            mb_block = max(mb_block, block_bits[j] & mask)
        j = 0
        while j + 4 <= m:
            h[codes[j]] += 1
            h[lane + codes[j + 1]] += 1
            h[2 * lane + codes[j + 2]] += 1
            h[3 * lane + codes[j + 3]] += 1
            j += 4
        while j < m:
            h[codes[j]] += 1
            j += 1
        spill = h[num_bins] + h[lane + num_bins] + h[2 * lane + num_bins]
        spill += h[3 * lane + num_bins]
        if spill == 0:
            mb = max(mb, mb_block)
            continue
        h[num_bins] = 0
        h[lane + num_bins] = 0
        h[2 * lane + num_bins] = 0
        h[3 * lane + num_bins] = 0
        for j in range(m):
            a = _abs_f64(block[j], ftable)
            if a <= amax:
                mx_in = max(mx_in, a)
            elif np.isfinite(a):
                n_over += 1
                mx = max(mx, a)
                if clip:
                    h[last] += 1
            else:
                n_nonfinite += 1
    tallies[c, 0] = n_nonfinite
    tallies[c, 1] = n_over
    fmax[c, 0] = mx
    fmax[c, 1] = mx_in
    bmax[c] = mb


@jit
def _fill_scratch(bits, num_bins, n_chunks):  # pragma: no cover - compiled
    """Per-chunk lanes and tallies for :func:`_fill_chunk` (zeroed)."""
    return (
        np.zeros((n_chunks, 4 * (num_bins + 1)), np.int64),
        np.zeros((n_chunks, 2), np.int64),  # nonfinite, over
        np.zeros((n_chunks, 2), np.float64),  # largest |x| over amax, in range (spilled blocks)
        np.zeros(n_chunks, bits.dtype),  # bits of the largest |x| of the clean blocks
    )


@jit
def _fill_combine(partial, tallies, fmax, bmax, num_bins):  # pragma: no cover - compiled
    lane = num_bins + 1
    counts = np.zeros(num_bins, np.int64)
    for c in range(partial.shape[0]):
        for k in range(4):
            counts += partial[c, k * lane : k * lane + num_bins]
    return (counts, tallies[:, 0].sum(), tallies[:, 1].sum(), fmax[:, 0].max(),
            fmax[:, 1].max(), bmax.max())


@jit
def _fill_kernel_serial(  # pragma: no cover - compiled
    x, bits, mask, table, ftable, amax, num_bins, clip
):
    """One chunk, no threads: small tensors (a parallel launch costs ~30 us by itself)."""
    partial, tallies, fmax, bmax = _fill_scratch(bits, num_bins, 1)
    _fill_chunk(x, bits, mask, table, ftable, amax, num_bins, clip, 0, x.size, partial[0],
                tallies, fmax, bmax, 0)
    return _fill_combine(partial, tallies, fmax, bmax, num_bins)


@jit(parallel=True)
def _fill_kernel(  # pragma: no cover - compiled
    x, bits, mask, table, ftable, amax, num_bins, clip, n_chunks
):
    """``n_chunks`` chunks of :func:`_fill_chunk` in parallel, private lanes each."""
    n = x.size
    partial, tallies, fmax, bmax = _fill_scratch(bits, num_bins, n_chunks)
    step = (n + n_chunks - 1) // n_chunks
    for c in numba.prange(n_chunks):
        _fill_chunk(x, bits, mask, table, ftable, amax, num_bins, clip, c * step,
                    min(n, c * step + step), partial[c], tallies, fmax, bmax, c)
    return _fill_combine(partial, tallies, fmax, bmax, num_bins)


@jit(parallel=True)
def _absmax_kernel(x, table, n_chunks):  # pragma: no cover - compiled
    n = x.size
    maxes = np.zeros(n_chunks, np.float64)
    nonfinite = np.zeros(n_chunks, np.int64)
    step = (n + n_chunks - 1) // n_chunks
    for c in numba.prange(n_chunks):
        mx = 0.0
        bad = 0
        chunk = x[c * step : min(n, c * step + step)]  # sliced: no per-element index wrap
        for i in range(chunk.size):
            a = _abs_f64(chunk[i], table)
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


def _tables(dtype: np.dtype, amax: float, num_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(bin-code table, |value| table) for float16 input; dummies for other dtypes."""
    if dtype != np.float16:
        return _NO_TABLE_I, _NO_TABLE_F
    inv_w = num_bins / amax if amax > 0.0 else 0.0
    return _codes_kernel(F16_ABS_TABLE, amax, inv_w, num_bins), F16_ABS_TABLE


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
    """Yield one 1-D view (dense float input) or bounded contiguous blocks.

    Strided float arrays are copied a block at a time; integer arrays are widened to float64
    a block at a time (so the kernels are compiled for float16/32/64 only).
    """
    native = values.dtype in (np.float16, np.float32, np.float64)
    flat = dense_view(values) if native else None
    if flat is not None:
        yield flat
        return
    it = np.nditer(  # type: ignore[call-overload]
        values,
        flags=["external_loop", "buffered", "zerosize_ok"],
        op_flags=[["readonly"]],
        op_dtypes=[values.dtype if native else np.dtype(np.float64)],
        casting="unsafe",
        order="K",
        buffersize=BLOCK_ELEMENTS,
    )
    for block in it:
        yield np.ascontiguousarray(block)


def _chunks_for(size: int) -> int:
    return 1 if size < _SERIAL_BELOW else max(1, numba_num_threads())


def fill_counts(values: np.ndarray, amax: float, num_bins: int, *, clip: bool) -> FillStats:
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
    kldiv.histogram.FillStats
    """
    counts = np.zeros(num_bins, np.int64)
    n_nonfinite = n_over = 0
    max_over = max_in = 0.0
    amax, num_bins = float(amax), int(num_bins)
    table, ftable = _tables(values.dtype, amax, num_bins)  # float16 only
    for block in _blocks(values):
        if block.size == 0:
            continue
        utype, mask = _MAGNITUDE[block.dtype]
        n_chunks = _chunks_for(block.size)
        args = (_kernel_view(block), block.view(utype), mask, table, ftable, amax, num_bins,
                bool(clip))
        part, bad, over, mx, mx_in, clean_bits = (
            _fill_kernel(*args, n_chunks) if n_chunks > 1 else _fill_kernel_serial(*args)
        )
        mx_in = max(float(mx_in), float(np.array(clean_bits, utype).view(block.dtype)[()]))
        counts += part
        n_nonfinite += int(bad)
        n_over += int(over)
        max_over = max(max_over, float(mx))
        max_in = max(max_in, float(mx_in))
    return FillStats(counts, n_nonfinite, n_over, max_over, max(max_over, max_in))


def absmax_stats(values: np.ndarray) -> tuple[float, int]:
    """``(largest finite |x|, number of non-finite values)`` without a temporary of ``|x|``."""
    max_abs = 0.0
    n_nonfinite = 0
    for block in _blocks(values):
        if block.size == 0:
            continue
        table = F16_ABS_TABLE if block.dtype == np.float16 else _NO_TABLE_F
        mx, bad = _absmax_kernel(_kernel_view(block), table, _chunks_for(block.size))
        max_abs = max(max_abs, float(mx))
        n_nonfinite += int(bad)
    return max_abs, n_nonfinite
