"""Numba histogram fill: the fast twin of the NumPy reference in :mod:`kldiv.histogram`.

Contract (identical to :func:`kldiv.histogram.fill_counts_reference`): for every finite value
``a = |float64(x)|`` with ``a <= amax``, the bin is ``min(int(a * (num_bins / amax)),
num_bins - 1)`` computed in float64 (the bin-edge rule of :mod:`kldiv.histogram`, whose
edges are derived from this very expression, so the two always agree). With ``amax == 0``
everything lands in bin 0. Values with ``a > amax`` are counted as *over* (and their largest
value kept, for range growth); with ``clip`` they also go into the last bin. NaN and ±Inf are
counted as *non-finite* and never binned.

How it is fast without changing the answer
    A large input is split into one chunk per thread (:mod:`kldiv._kernels.wrappers` runs
    the serial, GIL-free kernels in a small thread pool); each chunk fills a private partial
    histogram; the partials are added at the end (no atomics, no shared writes).
    Chunks go in blocks through two passes: branch-free loops that LLVM vectorises compute
    the bin codes and the block's maximum (as the integer maximum of the magnitude bits),
    then the codes are counted into four interleaved uint32 copies of the histogram (added to
    the int64 counts at the end, at most 2**31 elements at a time), so runs of one
    bin (the zeros after a ReLU) do not serialise on one counter. Loops index a slice of the
    block (``block[j]``, never ``x[start + j]``): an index Numba cannot prove non-negative
    gets a wrap-around fix-up per element, which made LLVM load the values with a gather
    instead of a vector load (1.2-1.3x slower fills, ``benchmarks/fill_kernel_ab.py``). Bin
    codes are unsigned for the same reason in the counting loop. float16 arrays are read as their uint16 bits: the bin code of each of
    the 2**15 magnitude patterns is computed once per fill by the same rule (a 128 KiB table),
    and the loop looks codes up, so no float32/float64 copy of the tensor is ever made.

Only the loops over elements live here; :mod:`kldiv._kernels.wrappers` calls them (dtype
views, bounded blocks of non-contiguous input, the float16 table, the number of chunks). The
helpers :func:`_abs_f64` and :func:`_code_of` are overloads: compiled into each kernel that
calls them, so they have no cache of their own.
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import overload

from ._jit import jit

__all__: list[str] = []  # private kernels, called by kldiv._kernels.wrappers

#: Elements per block of bin codes in the float32/float64 kernel (16 KiB of uint32 codes).
_CODE_BLOCK = 4096
#: Most elements :func:`_fill_kernel` counts into its uint32 lanes before adding them to the
#: int64 counts: no lane can then pass 2**31 (the caller passes it; tests pass small spans).
LANE_SPAN = 1 << 31


# --------------------------------------------------------------------------- per-element rules


def _is_f16_bits(v):
    return isinstance(v, types.Integer) and v.bitwidth == 16 and not v.signed


def _abs_f64(v, table):  # pragma: no cover - replaced by the overload inside kernels
    raise NotImplementedError


def _code_of(v, codes, amax, inv_w, flast, num_bins):  # pragma: no cover - overloaded
    raise NotImplementedError


@overload(_abs_f64)
def _abs_f64_impl(v, table):
    """|v| as float64; uint16 means 'the bits of a float16', looked up in F16_ABS_TABLE."""
    if _is_f16_bits(v):
        return lambda v, table: table[v & 0x7FFF]
    return lambda v, table: abs(np.float64(v))


@overload(_code_of)
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
        codes[i] = _code_of(values[i], codes, amax, inv_w, flast, num_bins)  # table unused
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
    tallies[c, 0] += n_nonfinite
    tallies[c, 1] += n_over
    fmax[c, 0] = max(fmax[c, 0], mx)
    fmax[c, 1] = max(fmax[c, 1], mx_in)
    bmax[c] = mb


@jit
def _fill_scratch(bits, num_bins, n_chunks):  # pragma: no cover - compiled
    """Per-chunk lanes and tallies for :func:`_fill_chunk` (zeroed). The lanes are uint32:
    4 x 2049 x 4 bytes = 32 KiB, half of int64 lanes (the 48 KiB L1d of the benchmark
    machine holds them; int64 lanes did not fit), and half the bytes to zero and add up per
    fill (0.98-1.59x the speed of int64 lanes over two runs of ``benchmarks/fill_kernel_ab.py``,
    docs/performance.md)."""
    return (
        np.zeros((n_chunks, 4 * (num_bins + 1)), np.uint32),
        np.zeros((n_chunks, 2), np.int64),  # nonfinite, over
        np.zeros((n_chunks, 2), np.float64),  # largest |x| over amax, in range (spilled blocks)
        np.zeros(n_chunks, bits.dtype),  # bits of the largest |x| of the clean blocks
    )


@jit
def _add_lanes(counts, h, num_bins):  # pragma: no cover - compiled
    """``counts += `` the four uint32 lanes of ``h`` (their spill bins excluded)."""
    lane = num_bins + 1
    for k in range(4):
        for b in range(num_bins):
            counts[b] += h[k * lane + b]


@jit
def _fill_kernel(  # pragma: no cover - compiled
    x, bits, mask, table, ftable, amax, num_bins, clip, span
):
    """Fill one chunk (the caller's threads run several chunks at once: the GIL is released),
    ``span`` elements at a time into the uint32 lanes (:data:`LANE_SPAN`), each span's lanes
    added to the int64 counts."""
    partial, tallies, fmax, bmax = _fill_scratch(bits, num_bins, 1)
    counts = np.zeros(num_bins, np.int64)
    n = x.size
    for lo in range(0, n, span):
        if lo > 0:
            partial[0, :] = 0
        _fill_chunk(x, bits, mask, table, ftable, amax, num_bins, clip, lo, min(n, lo + span),
                    partial[0], tallies, fmax, bmax, 0)
        _add_lanes(counts, partial[0], num_bins)
    return counts, tallies[0, 0], tallies[0, 1], fmax[0, 0], fmax[0, 1], bmax[0]


@jit
def _absmax_kernel(x, table):  # pragma: no cover - compiled
    """``(largest finite |x|, number of non-finite values)`` of one chunk."""
    mx = 0.0
    bad = 0
    for i in range(x.size):
        a = _abs_f64(x[i], table)
        if np.isfinite(a):
            mx = max(mx, a)
        else:
            bad += 1
    return mx, bad
