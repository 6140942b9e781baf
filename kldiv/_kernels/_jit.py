"""The one decorator that holds every JIT option used by kldiv's Numba kernels.

Every kernel under :mod:`kldiv._kernels` is compiled through :func:`jit`, so the options
below are decided once, here, and nowhere else:

``cache=True``
    Compiled machine code is kept in Numba's on-disk cache and reused by the next process,
    so the first call in a fresh interpreter costs a cache load, not a compile. The cache is
    the folder of :func:`kldiv._kernels.cache_dir` (a user cache folder, never the installed
    package): Numba fixes a function's cache folder when it is decorated, so :func:`jit`
    points ``numba.config.CACHE_DIR`` there while it decorates, and puts the caller's value
    back afterwards. A folder that cannot be created or written turns the cache off for kldiv
    (one warning; the kernels are compiled in each process). Numba keys its cache on the
    kernel's source file and types, *not* on these options: after changing anything in this
    module, touch the kernel modules or delete the cache folder.
``nogil=True``
    Kernels release the GIL, so several Python threads run them at once (the chunks of a
    large fill, :mod:`kldiv._kernels.wrappers`). No kernel uses ``prange``: the threads are
    kldiv's, whatever Numba's threading layer is.
``fastmath=False``
    No reassociation, no flush-to-zero, no "no NaNs" assumptions: the kernels must produce the
    same bits as their NumPy references (denormals and NaN checks included).
``error_model="numpy"``
    Division by zero gives inf/nan like NumPy instead of raising (the kernels guard anyway).
``boundscheck=False``
    Indices are computed and clamped by the kernels themselves.

Signatures
    kldiv's kernels are decorated bare (``@jit``, the only form it takes): each compiles on
    its first call, for the types it is called with (the wrappers pass int64/float64 scalars
    and C-contiguous arrays of fixed dtypes, so there is one specialization per input dtype),
    and only the kernels a run uses are compiled. Explicit signatures would compile every
    kernel of a module when it is imported: importing the threshold-search kernels and the
    first search took 9-10 s that way on a loaded 2-core machine (all three divergence
    curves compiled), against 4-5 s for the one curve a calibration uses (empty cache
    folder, same conditions, alternating runs).

Example
-------
>>> from kldiv._kernels._jit import jit
>>> @jit
... def total(x):
...     s = 0.0
...     for v in x:
...         s += v
...     return s
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numba

from ._cache import cache_dir

__all__ = ["JIT_OPTIONS", "jit"]

log = logging.getLogger(__name__)

#: The options every kldiv kernel is compiled with (see the module docstring).
JIT_OPTIONS: dict[str, Any] = {
    "cache": True,
    "nogil": True,
    "fastmath": False,
    "error_model": "numpy",
    "boundscheck": False,
}

_DECORATING = threading.Lock()


@lru_cache(maxsize=1)
def _usable_cache_dir() -> str | None:
    """The cache folder, when it can be created and written; else None.

    :func:`kldiv._kernels.cache_dir`, checked once per process (with one warning).
    """
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        log.warning(
            "kldiv cannot write its kernel cache folder %s (%s); the kernels are compiled in "
            "every process. Point KLDIV_CACHE_DIR at a writable folder to keep them.",
            folder, exc,
        )
        return None
    return os.fspath(folder)


_ANNOUNCED = threading.Event()


def _announce_compile() -> None:
    """Say once per process (``INFO``; the CLI shows it) that kernels are being compiled."""
    if not _ANNOUNCED.is_set():
        _ANNOUNCED.set()
        log.info(
            "compiling kldiv's kernels on first use (a few seconds, once: the machine code is "
            "kept in %s)", cache_dir(),
        )


def _guard_cache(dispatcher: Any) -> None:
    """Make a damaged or unwritable cache entry a warning and a compile, never an error.

    Numba raises when an index or data file of its cache does not unpickle (a truncated write,
    a full disk, another tool's file), on load and again on save. Here a failed load empties
    the function's index (Numba's ``Cache.flush``) and reports a miss, so the kernel is
    compiled and its entry written afresh; a failed save is logged and skipped.
    """
    cache: Any = getattr(dispatcher, "_cache", None)
    load = getattr(cache, "load_overload", None)
    save = getattr(cache, "save_overload", None)
    if load is None or save is None:  # pragma: no cover - a Numba without this cache API
        return
    name = getattr(dispatcher, "__name__", "kernel")

    def guarded_load(sig: Any, target_context: Any) -> Any:
        try:
            found = load(sig, target_context)
            if found is None:
                _announce_compile()
            return found
        except Exception as exc:
            log.warning(
                "kldiv's cached machine code for %s is damaged (%s: %s); compiling it again "
                "and rewriting the entry in %s", name, type(exc).__name__, exc, cache_dir(),
            )
            try:
                cache.flush()
            except Exception:  # an unwritable folder: the save below is skipped too
                log.debug("could not reset the cache index of %s", name, exc_info=True)
            return None

    def guarded_save(sig: Any, data: Any) -> None:
        try:
            save(sig, data)
        except Exception as exc:
            log.warning(
                "kldiv could not cache the machine code of %s in %s (%s: %s); it is compiled "
                "again in the next process", name, cache_dir(), type(exc).__name__, exc,
            )

    cache.load_overload = guarded_load
    cache.save_overload = guarded_save


def _decorate(function: Callable[..., Any], options: dict[str, Any]) -> Any:
    """``numba.njit`` with its cache in kldiv's folder.

    Numba's cache folder points at kldiv's while it decorates, and the cache is guarded
    (:func:`_guard_cache`).
    """
    folder = _usable_cache_dir()
    if folder is None:
        options = dict(options, cache=False)
    config: Any = numba.config
    with _DECORATING:
        saved = config.CACHE_DIR
        config.CACHE_DIR = folder or saved
        try:
            dispatcher = numba.njit(**options)(function)
            if options["cache"]:
                _guard_cache(dispatcher)
            return dispatcher
        finally:
            config.CACHE_DIR = saved


def jit(function: Callable[..., Any]) -> Any:
    """Compile a kernel with kldiv's JIT options (``numba.njit`` + :data:`JIT_OPTIONS`).

    Used bare (``@jit``): the kernel compiles lazily, once per input types.

    Parameters
    ----------
    function : callable
        The kernel's Python source.

    Returns
    -------
    callable
        The Numba dispatcher.
    """
    return _decorate(function, dict(JIT_OPTIONS))
