"""The kernels' Python side, without Numba: which build runs, and the array plumbing around it.

:func:`kernels` returns the kernels this process uses, either build of the same Numba source:

``"aot"``
    The extension module of :mod:`kldiv._kernels.aot` (built once per environment, loaded
    without importing Numba). Its functions are serial and release the GIL, so a large
    tensor's chunks run in a small thread pool here.
``"jit"``
    Numba's JIT (:mod:`kldiv._kernels.fill`, :mod:`kldiv._kernels.entropy`), machine code from
    Numba's on-disk cache; chunks run in Numba's ``prange`` threads.

The choice is :data:`kldiv.defaults.DEFAULT_KERNELS`, or the ``KLDIV_KERNELS`` environment
variable: ``auto`` (ahead of time, building it on first use; the JIT when that fails),
``aot`` or ``jit``. Both builds give the same bits (the test suite runs every kernel test on
both).

The wrappers here (:func:`fill_counts`, :func:`absmax_stats`, :func:`search`) hold everything
that is not a loop over elements: dtype views, bounded blocks for strided input, the float16
code table, the split into chunks and the sum of their partial results.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from ..defaults import DEFAULT_KERNELS
from ..histogram import FillStats

if TYPE_CHECKING:  # pragma: no cover
    from ..entropy import EntropyOptions

__all__ = [
    "BLOCK_ELEMENTS",
    "F16_ABS_TABLE",
    "KERNELS_ENV",
    "Kernels",
    "absmax_stats",
    "dense_view",
    "divergences",
    "fill_counts",
    "kernels",
    "run_concurrently",
    "search",
]

log = logging.getLogger(__name__)

#: Environment variable overriding :data:`kldiv.defaults.DEFAULT_KERNELS`.
KERNELS_ENV = "KLDIV_KERNELS"
_MODES = ("auto", "aot", "jit")
#: Elements copied at a time when the input is not one dense block of memory.
BLOCK_ELEMENTS = 1 << 20
#: Below this many elements a fill runs as a single chunk (no threads).
SERIAL_BELOW = 1 << 16
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


# --------------------------------------------------------------------------- the two builds
@dataclass(frozen=True)
class Kernels:
    """One build of the kernels, called the same way whichever it is.

    ``fill(x, bits, mask, table, ftable, amax, num_bins, clip, n_chunks)`` returns
    ``(counts, n_nonfinite, n_over, max_over, max_in_spilled, max_clean_bits)``;
    ``absmax(x, table, n_chunks)`` returns ``(max finite |x|, n_nonfinite)``;
    ``codes(values, amax, inv_w, num_bins)`` the float16 code table; the three ``curve_*``
    the divergence curves of :mod:`kldiv._kernels.entropy`; ``threads()`` how many chunks a
    large input is cut into; ``concurrent``: whether several Python threads may call the
    kernels at once (the ahead-of-time build: serial, GIL-free; not the JIT's ``prange``
    kernels, whose default threading layer is not re-entrant), see :func:`run_concurrently`.
    """

    name: str
    fill: Callable[..., tuple[Any, ...]]
    absmax: Callable[..., tuple[float, int]]
    codes: Callable[..., np.ndarray]
    curve_abs_proportional: Callable[..., np.ndarray]
    curve_closed_form: Callable[..., np.ndarray]
    curve_smoothed: Callable[..., np.ndarray]
    threads: Callable[[], int]
    concurrent: bool = False


@lru_cache(maxsize=1)
def jit_kernels() -> Kernels:
    """Numba's JIT build (imports Numba)."""
    from . import entropy, fill
    from ._jit import numba_num_threads

    def run_fill(*args: Any) -> tuple[Any, ...]:
        *rest, n_chunks = args
        if n_chunks > 1:
            return fill._fill_kernel(*args)  # type: ignore[no-any-return]
        return fill._fill_kernel_serial(*rest)  # type: ignore[no-any-return]

    return Kernels(
        "jit", run_fill, fill._absmax_kernel, fill._codes_kernel,
        entropy._curve_abs_proportional, entropy._curve_closed_form, entropy._curve_smoothed,
        numba_num_threads,
    )


@lru_cache(maxsize=1)
def _aot_threads() -> int:
    """Numba's own default: ``NUMBA_NUM_THREADS``, else the CPUs this process may use (read
    once per process, as Numba reads it once)."""
    named = os.environ.get("NUMBA_NUM_THREADS")
    if named:
        return max(1, int(named))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """The kernels' thread pool: the calling thread plus these make :func:`_aot_threads`."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max(1, _aot_threads() - 1),
                                       thread_name_prefix="kldiv-kernel")
        return _POOL


def _in_chunks(
    run: Callable[..., tuple[Any, ...]], arrays: tuple[np.ndarray, ...], rest: tuple[Any, ...],
    n_chunks: int,
) -> list[tuple[Any, ...]]:
    """``run(*chunk_of_each_array, *rest)`` for ``n_chunks`` slices, in threads (GIL-free)."""
    n = arrays[0].size
    step = -(-n // n_chunks)
    bounds = [(lo, min(n, lo + step)) for lo in range(0, n, step)]
    parts = [tuple(a[lo:hi] for a in arrays) + rest for lo, hi in bounds]
    if len(parts) < 2:
        return [run(*p) for p in parts]
    futures = [_pool().submit(run, *p) for p in parts[1:]]
    first = run(*parts[0])  # this thread takes a chunk too
    return [first] + [f.result() for f in futures]


def aot_kernels(module: Any) -> Kernels:
    """The ahead-of-time build, from its extension module (see :mod:`kldiv._kernels.aot`)."""
    fills = {np.dtype(t): getattr(module, f"fill_{n}")
             for t, n in ((np.float32, "float32"), (np.float64, "float64"), (np.uint16, "float16"))}
    maxes = {np.dtype(t): getattr(module, f"absmax_{n}")
             for t, n in ((np.float32, "float32"), (np.float64, "float64"), (np.uint16, "float16"))}

    def run_fill(x: np.ndarray, bits: np.ndarray, *rest: Any) -> tuple[Any, ...]:
        *scalars, n_chunks = rest
        kernel = fills[x.dtype]
        if n_chunks == 1:
            return tuple(kernel(x, bits, *scalars))
        parts = _in_chunks(kernel, (x, bits), tuple(scalars), n_chunks)
        return (
            sum(p[0] for p in parts),
            sum(int(p[1]) for p in parts),
            sum(int(p[2]) for p in parts),
            max(float(p[3]) for p in parts),
            max(float(p[4]) for p in parts),
            max(p[5] for p in parts),
        )

    def run_absmax(x: np.ndarray, table: np.ndarray, n_chunks: int) -> tuple[float, int]:
        kernel = maxes[x.dtype]
        if n_chunks == 1:
            mx, bad = kernel(x, table, 1)
            return float(mx), int(bad)
        parts = _in_chunks(kernel, (x,), (table, 1), n_chunks)
        return max(float(p[0]) for p in parts), sum(int(p[1]) for p in parts)

    return Kernels(
        "aot", run_fill, run_absmax, module.codes, module.curve_abs_proportional,
        module.curve_closed_form, module.curve_smoothed, _aot_threads, concurrent=True,
    )


_LOCAL = threading.local()


def run_concurrently(tasks: Sequence[Callable[[], Any]], *, build: Kernels | None = None) -> None:
    """Run every task, on several threads when the kernels allow it, else one after another.

    For many independent fills (one per tensor of a batch) this beats cutting each fill into
    chunks: the threads take whole tasks from a shared queue (the calling thread too), so
    there is one hand-over per batch instead of one per tensor. Fills inside a task run in one
    chunk. Every task runs even when one fails; then the failure of the earliest task (in the
    given order) is raised, so errors do not depend on thread timing.
    """
    k = kernels() if build is None else build
    workers = min(len(tasks), k.threads()) if k.concurrent else 1
    if workers < 2 or getattr(_LOCAL, "one_chunk", False):
        for task in tasks:
            task()
        return
    errors: dict[int, BaseException] = {}
    queue = iter(enumerate(tasks))
    lock = threading.Lock()

    def work() -> None:
        _LOCAL.one_chunk = True
        try:
            while True:
                with lock:
                    item = next(queue, None)
                if item is None:
                    return
                try:
                    item[1]()
                except BaseException as exc:  # re-raised below, in task order
                    errors[item[0]] = exc
        finally:
            _LOCAL.one_chunk = False

    futures = [_pool().submit(work) for _ in range(workers - 1)]
    work()
    for future in futures:
        future.result()
    if errors:
        raise errors[min(errors)]


_KERNELS: Kernels | None = None
_KERNELS_LOCK = threading.Lock()


def kernel_mode() -> str:
    """``KLDIV_KERNELS`` when set, else :data:`kldiv.defaults.DEFAULT_KERNELS` (checked)."""
    mode = os.environ.get(KERNELS_ENV) or DEFAULT_KERNELS
    if mode not in _MODES:
        raise ValueError(
            f"{KERNELS_ENV}={mode!r} is not one of {', '.join(_MODES)}; unset it or pick one"
        )
    return mode


def kernels() -> Kernels:
    """The kernels of this process, chosen (and built or loaded) on first call; thread-safe."""
    global _KERNELS
    if _KERNELS is not None:  # the common case, without the lock
        return _KERNELS
    with _KERNELS_LOCK:
        if _KERNELS is None:
            mode = kernel_mode()
            chosen = None
            if mode in ("auto", "aot"):
                from . import aot

                module = aot.load()
                if module is not None:
                    chosen = aot_kernels(module)
                elif mode == "aot":
                    raise RuntimeError(
                        f"{KERNELS_ENV}=aot but the ahead-of-time kernels could not be built "
                        f"(see the log, or {aot.kernel_dir()}); set {KERNELS_ENV}=jit or auto"
                    )
            _KERNELS = chosen if chosen is not None else jit_kernels()
            log.debug("kldiv kernels: %s", _KERNELS.name)
        return _KERNELS


# --------------------------------------------------------------------------- array plumbing
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
        return v.reshape(-1)
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


def _chunks_for(size: int, k: Kernels) -> int:
    if size < SERIAL_BELOW or getattr(_LOCAL, "one_chunk", False):
        return 1
    return max(1, k.threads())


def fill_counts(
    values: np.ndarray, amax: float, num_bins: int, *, clip: bool, build: Kernels | None = None
) -> FillStats:
    """Count ``|values|`` into ``num_bins`` bins over ``[0, amax]`` (the contract of
    :mod:`kldiv._kernels.fill`, identical to :func:`kldiv.histogram.fill_counts_reference`).

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
    build : Kernels, optional
        The kernels to run (default :func:`kernels`).

    Returns
    -------
    kldiv.histogram.FillStats
    """
    k = kernels() if build is None else build
    counts = np.zeros(num_bins, np.int64)
    n_nonfinite = n_over = 0
    max_over = max_in = 0.0
    amax, num_bins = float(amax), int(num_bins)
    table, ftable = NO_TABLE_I, NO_TABLE_F
    if values.dtype == np.float16:  # the bin code of every magnitude pattern, once per fill
        inv_w = num_bins / amax if amax > 0.0 else 0.0
        table, ftable = k.codes(F16_ABS_TABLE, amax, inv_w, num_bins), F16_ABS_TABLE
    for block in blocks(values):
        if block.size == 0:
            continue
        utype, mask = MAGNITUDE[block.dtype]
        part, bad, over, mx, mx_in, clean_bits = k.fill(
            kernel_view(block), block.view(utype), mask, table, ftable, amax, num_bins,
            bool(clip), _chunks_for(block.size, k),
        )
        mx_in = max(float(mx_in), float(np.array(clean_bits, utype).view(block.dtype)[()]))
        counts += part
        n_nonfinite += int(bad)
        n_over += int(over)
        max_over = max(max_over, float(mx))
        max_in = max(max_in, float(mx_in))
    return FillStats(counts, n_nonfinite, n_over, max_over, max(max_over, max_in))


def absmax_stats(values: np.ndarray, *, build: Kernels | None = None) -> tuple[float, int]:
    """``(largest finite |x|, number of non-finite values)`` without a temporary of ``|x|``."""
    k = kernels() if build is None else build
    max_abs = 0.0
    n_nonfinite = 0
    for block in blocks(values):
        if block.size == 0:
            continue
        table = F16_ABS_TABLE if block.dtype == np.float16 else NO_TABLE_F
        mx, bad = k.absmax(kernel_view(block), table, _chunks_for(block.size, k))
        max_abs = max(max_abs, float(mx))
        n_nonfinite += int(bad)
    return max_abs, n_nonfinite


# --------------------------------------------------------------------------- threshold search
#: Kernel values within ``BAND_ATOL + BAND_RTOL * |min|`` of the kernel minimum are re-checked
#: with the reference (far above the kernel's error, measured ~1e-14 absolute).
BAND_ATOL = 1e-10
BAND_RTOL = 1e-9


def divergences(
    counts: np.ndarray, opts: EntropyOptions, *, build: Kernels | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(candidates, divergence)`` like :func:`kldiv.entropy.divergence_curve`, fast."""
    from .. import entropy as ref

    if opts.smoothing != "none" and opts.empty != "p":
        # smoothing with emptiness from the raw histogram: no fast path, use the reference
        return ref.divergence_curve(counts, opts)  # type: ignore[no-any-return]
    k = kernels() if build is None else build
    h = np.ascontiguousarray(ref.apply_zero_policy(np.asarray(counts), opts, dtype=np.int64))
    candidates = np.ascontiguousarray(ref.candidate_bins(h.size, opts), dtype=np.int64)
    signed = opts.domain == "signed"
    grouping = 0 if opts.grouping == "proportional" else 1
    min_nonempty = int(opts.min_nonempty_bins)
    if opts.smoothing == "none" and not signed and grouping == 0:
        levels = opts.num_levels
        shift = levels.bit_length() - 1 if levels & (levels - 1) == 0 else -1
        div = k.curve_abs_proportional(
            h, candidates, levels, shift, int(opts.empty == "p"), min_nonempty
        )
    elif opts.smoothing == "none":
        div = k.curve_closed_form(
            h, candidates, signed, opts.num_levels, grouping, int(opts.empty == "p"),
            min_nonempty,
        )
    else:
        div = k.curve_smoothed(
            h, candidates, signed, opts.num_levels, grouping, float(opts.smoothing_eps),
            min_nonempty,
        )
    if opts.empty_q == "nan":  # candidates whose kept bins are all empty
        csum = np.concatenate(([0], np.cumsum(h)))
        z = h.size // 2
        lo, hi = (z - candidates, z + candidates + 1) if signed else (0 * candidates, candidates)
        div = np.where(csum[hi] - csum[lo] == 0, np.nan, div)
    if opts.log_base != math.e:
        div = div / math.log(opts.log_base)
    return candidates, div


def search(
    counts: np.ndarray, opts: EntropyOptions, *, build: Kernels | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(candidates, divergence, position of the minimum)``, the minimum chosen exactly as
    :func:`kldiv.entropy.pick_minimum` chooses it on the reference curve."""
    from .. import entropy as ref

    candidates, div = divergences(counts, opts, build=build)
    if np.isnan(div).any():  # structural NaNs win as in np.argmin; no rounding involved
        return candidates, div, ref.pick_minimum(div, opts)
    best = float(div.min())
    if not math.isfinite(best):  # every candidate infinite: decided by the tie rule alone
        return candidates, div, ref.pick_minimum(div, opts)
    band = np.flatnonzero(div <= best + BAND_ATOL + opts.tie_tolerance + BAND_RTOL * abs(best))
    if band.size == 1:
        return candidates, div, int(band[0])
    hist = ref.apply_zero_policy(counts, opts)
    exact = np.array(
        [ref.kl_divergence(*ref.distributions(hist, int(candidates[k]), opts), opts) for k in band]
    )
    return candidates, div, int(band[ref.pick_minimum(exact, opts)])
