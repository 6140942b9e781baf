"""How many threads a fill may use (no Numba needed to ask)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache

__all__ = ["one_thread", "pool", "split_allowed", "threads"]

_ONE_THREAD: ContextVar[bool] = ContextVar("kldiv_fill_one_thread", default=False)
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def threads() -> int:
    """The threads a fill may use: chunks of a large input, tensors of a batch.

    ``NUMBA_NUM_THREADS``, else the CPUs this process may use (read once per process).

    Returns
    -------
    int
        At least 1.
    """
    named = os.environ.get("NUMBA_NUM_THREADS")
    if named:
        return max(1, int(named))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@contextmanager
def one_thread() -> Iterator[None]:
    """Within the block, on this thread, a fill never splits its input into chunks.

    For callers that already fill several tensors at once on :func:`threads` threads:
    chunks on top of them would run more threads than cores.

    Yields
    ------
    None
        While the block runs, :func:`split_allowed` is ``False`` on this thread.
    """
    token = _ONE_THREAD.set(True)
    try:
        yield
    finally:
        _ONE_THREAD.reset(token)


def split_allowed() -> bool:
    """Whether a fill on this thread may split a large input into chunks on threads."""
    return not _ONE_THREAD.get()


def pool() -> ThreadPoolExecutor:
    """The fills' thread pool: the calling thread plus these make :func:`threads`.

    Chunks of a large input and the tensors of a batch share it. A batch's tensors are
    filled under :func:`one_thread`, so work running on the pool never waits on the pool.

    Returns
    -------
    concurrent.futures.ThreadPoolExecutor
        ``threads() - 1`` workers (at least one), made on first use.
    """
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max(1, threads() - 1), thread_name_prefix="kldiv-fill")
        return _POOL
