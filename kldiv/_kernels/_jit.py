"""The one decorator that holds every JIT option used by kldiv's Numba kernels.

Every kernel under :mod:`kldiv._kernels` is compiled through :func:`jit`, so the options
below are decided once, here, and nowhere else:

``cache=True``
    Compiled machine code is written next to the module (``__pycache__``) and reused by the
    next process, so the first call in a fresh interpreter costs a cache load, not a compile.
    Numba's cache key holds the kernel's source file and types, *not* these options: after
    changing anything in this module, touch the kernel modules (or delete their
    ``__pycache__/*.nbi`` and ``*.nbc`` files), or the old machine code keeps being loaded.
``nogil=True``
    Kernels release the GIL. Serial kernels may run in several threads at once (the
    ahead-of-time build does, :mod:`kldiv._kernels.dispatch`); the JIT's ``prange`` kernels
    need Numba's ``omp`` or ``tbb`` threading layer for that, so kldiv never does it.
``fastmath=False``
    No reassociation, no flush-to-zero, no "no NaNs" assumptions: the kernels must produce the
    same bits as their NumPy references (denormals and NaN checks included).
``error_model="numpy"``
    Division by zero gives inf/nan like NumPy instead of raising (the kernels guard anyway).
``boundscheck=False``
    Indices are computed and clamped by the kernels themselves.

Signatures
    Pass explicit signatures (``jit("int64(float32[:])")`` or a list of them) where the
    kernel has a small fixed set of input types: they compile eagerly on first import of the
    kernel module (and then come from the on-disk cache), and calls with other dtypes fail
    loudly instead of compiling a new specialization silently. Without signatures the
    function compiles lazily per input type (still cached on disk).

``parallel``
    Off by default. Kernels that ``prange`` over chunks pass ``parallel=True``, which turns on
    explicit ``prange`` loops *only* (:data:`PARALLEL_OPTIONS`): Numba's other parallel
    rewrites would turn every ``np.zeros``, ``.sum()`` and ``.max()`` of a kernel's set-up and
    epilogue into a parallel region of its own, each a thread fork and join (measured: 40 of
    the 46 microseconds a fill of a 16-element tensor cost, ten times per fill). The thread
    count is Numba's (``NUMBA_NUM_THREADS`` / :func:`numba.set_num_threads`).

Example
-------
>>> from kldiv._kernels._jit import jit
>>> @jit("float64(float64[:])")
... def total(x):
...     s = 0.0
...     for v in x:
...         s += v
...     return s
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numba

__all__ = ["JIT_OPTIONS", "PARALLEL_OPTIONS", "jit", "numba_num_threads"]


#: The options every kldiv kernel is compiled with (see the module docstring).
JIT_OPTIONS: dict[str, Any] = {
    "cache": True,
    "nogil": True,
    "fastmath": False,
    "error_model": "numpy",
    "boundscheck": False,
}

#: What ``parallel=True`` means for kldiv kernels: explicit ``prange`` loops and nothing else.
PARALLEL_OPTIONS: dict[str, bool] = {
    "prange": True,
    "comprehension": False,
    "reduction": False,
    "inplace_binop": False,
    "setitem": False,
    "numpy": False,
    "stencil": False,
    "fusion": False,
}


def jit(
    signatures: str | Sequence[str] | Callable[..., Any] | None = None,
    *,
    parallel: bool = False,
) -> Any:
    """Compile a kernel with kldiv's JIT options (``numba.njit`` + :data:`JIT_OPTIONS`).

    Parameters
    ----------
    signatures : str or sequence of str or callable, optional
        Explicit Numba signature(s), compiled eagerly. May also be the function itself when
        the decorator is used bare (``@jit``), which compiles lazily per input type.
    parallel : bool, default False
        Enable ``numba.prange`` parallel loops.

    Returns
    -------
    callable
        A decorator, or the compiled dispatcher when used bare.
    """
    options = dict(JIT_OPTIONS, parallel=dict(PARALLEL_OPTIONS) if parallel else False)
    if callable(signatures):  # used as @jit without parentheses
        return numba.njit(**options)(signatures)
    if signatures is None:
        return numba.njit(**options)
    sigs = [signatures] if isinstance(signatures, str) else list(signatures)
    return numba.njit(sigs, **options)


def numba_num_threads(set_to: int | None = None) -> int:
    """The number of threads parallel kernels use (Numba's setting), after setting it to
    ``set_to`` when given (:func:`numba.set_num_threads`, this thread only)."""
    if set_to:
        numba.set_num_threads(int(set_to))
    return int(numba.get_num_threads())
