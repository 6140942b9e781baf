"""How many threads a fill may use (no Numba needed to ask)."""

from __future__ import annotations

import os
from functools import lru_cache

__all__ = ["threads"]


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
