"""The Python side of the Numba kernels: arrays and plain numbers in, arrays and numbers out.

Everything here that is not a loop over elements: dtype views, bounded blocks for strided
input, the float16 code table, and the threads. The loops are in :mod:`kldiv._kernels.fill`
and :mod:`kldiv._kernels.entropy`; callers reach these functions through
:func:`kldiv._kernels.resolve`, never directly.

Threads
    The kernels are serial and release the GIL. An input of at least :data:`SERIAL_BELOW`
    elements is cut into one chunk per thread (:func:`threads`: ``NUMBA_NUM_THREADS``, else
    the CPUs this process may use), run in a small pool of Python threads (the calling thread
    takes a chunk too), and the partial results are added. Not Numba's ``prange``: its OpenMP
    layer, on a machine with more runnable threads than cores, spent 8-24 ms per parallel
    launch where the serial kernel took 0.2 ms (a 1 MiB tensor; measured with
    ``benchmarks/fill_kernel_ab.py``), and its fallback layer cannot be entered from two
    threads at once. Python threads behave the same under every layer and cost ~0.05 ms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from . import entropy, fill
from ._threads import pool, split_allowed, threads

__all__ = [
    "BLOCK_ELEMENTS",
    "F16_ABS_TABLE",
    "SERIAL_BELOW",
    "absmax",
    "blocks",
    "curve_abs_proportional",
    "curve_closed_form",
    "curve_smoothed",
    "dense_view",
    "fill_counts",
    "threads",
]

#: Elements copied at a time when the input is not one dense block of memory.
BLOCK_ELEMENTS = 1 << 20
#: Below this many elements a fill runs as one chunk on the calling thread: handing chunks to
#: the pool and back costs 0.05-0.1 ms, as much as filling a 256 Ki-element tensor alone.
SERIAL_BELOW = 1 << 20
#: (unsigned view, magnitude mask: every bit but the sign) by dtype, for the fill kernel.
MAGNITUDE = {
    np.dtype(np.float16): (np.uint16, np.uint16(0x7FFF)),
    np.dtype(np.float32): (np.uint32, np.uint32(0x7FFF_FFFF)),
    np.dtype(np.float64): (np.uint64, np.uint64(0x7FFF_FFFF_FFFF_FFFF)),
}
#: |float16| as float64 for each of the 2**15 magnitude bit patterns (exact widening).
F16_ABS_TABLE = np.arange(1 << 15, dtype=np.uint16).view(np.float16).astype(np.float64)
#: Stand-ins for the float16 tables when the input is float32/float64.
NO_TABLE_F = np.zeros(1, np.float64)
NO_TABLE_I = np.zeros(1, np.uint32)

#: The divergence curves, called as they are (int64 arrays and plain numbers).
curve_abs_proportional = entropy._curve_abs_proportional
curve_closed_form = entropy._curve_closed_form
curve_smoothed = entropy._curve_smoothed


def _in_chunks(
    run: Callable[..., tuple[Any, ...]], arrays: tuple[np.ndarray, ...], rest: tuple[Any, ...],
) -> list[tuple[Any, ...]]:
    """``run(*chunk_of_each_array, *rest)`` over :func:`threads` slices (one when small)."""
    n = arrays[0].size
    n_chunks = 1 if n < SERIAL_BELOW or not split_allowed() else threads()
    if n_chunks == 1:
        return [run(*arrays, *rest)]
    step = -(-n // n_chunks)
    parts = [tuple(a[lo : lo + step] for a in arrays) + rest for lo in range(0, n, step)]
    futures = [pool().submit(run, *p) for p in parts[1:]]
    first = run(*parts[0])  # this thread takes a chunk too
    return [first] + [f.result() for f in futures]


def kernel_view(x: np.ndarray) -> np.ndarray:
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
        flat: np.ndarray = v.reshape(-1)
        return flat
    return None


def blocks(values: np.ndarray) -> Iterator[np.ndarray]:
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


def fill_counts(
    values: np.ndarray, amax: float, num_bins: int, clip: bool
) -> tuple[np.ndarray, int, int, float, float]:
    """Count ``|values|`` into ``num_bins`` bins over ``[0, amax]``.

    The contract of :func:`kldiv.histogram.fill_counts_reference` (see
    :mod:`kldiv._kernels.fill`); the caller has checked ``amax`` and ``num_bins``.

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
    tuple
        ``(counts, n_nonfinite, n_over, max_over, max_abs)``: int64 counts, the number of
        NaN/±Inf values, of finite values above ``amax``, the largest of those (0.0 when
        none) and the largest finite ``|x|`` (0.0 when none).
    """
    counts = np.zeros(num_bins, np.int64)
    n_nonfinite = n_over = 0
    max_over = max_in = 0.0
    amax, num_bins = float(amax), int(num_bins)
    table, ftable = NO_TABLE_I, NO_TABLE_F
    if values.dtype == np.float16:  # the bin code of every magnitude pattern, once per fill
        inv_w = num_bins / amax if amax > 0.0 else 0.0
        table, ftable = fill._codes_kernel(F16_ABS_TABLE, amax, inv_w, num_bins), F16_ABS_TABLE
    for block in blocks(values):
        if block.size == 0:
            continue
        utype, mask = MAGNITUDE[block.dtype]
        for part, bad, over, mx, mx_in, clean_bits in _in_chunks(
            fill._fill_kernel, (kernel_view(block), block.view(utype)),
            (mask, table, ftable, amax, num_bins, bool(clip), fill.LANE_SPAN),
        ):
            clean = float(np.array(clean_bits, utype).view(block.dtype)[()])
            counts += part
            n_nonfinite += int(bad)
            n_over += int(over)
            max_over = max(max_over, float(mx))
            max_in = max(max_in, float(mx_in), clean)
    return counts, n_nonfinite, n_over, max_over, max(max_over, max_in)


def absmax(values: np.ndarray) -> tuple[float, int]:
    """``(largest finite |x|, number of non-finite values)`` without a temporary of ``|x|``."""
    max_abs = 0.0
    n_nonfinite = 0
    for block in blocks(values):
        if block.size == 0:
            continue
        table = F16_ABS_TABLE if block.dtype == np.float16 else NO_TABLE_F
        for mx, bad in _in_chunks(fill._absmax_kernel, (kernel_view(block),), (table,)):
            max_abs = max(max_abs, float(mx))
            n_nonfinite += int(bad)
    return max_abs, n_nonfinite
