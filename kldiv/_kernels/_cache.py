"""Where Numba's on-disk cache of kldiv's kernels lives (no Numba needed to ask)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["CACHE_DIR_ENV", "cache_dir"]

#: The environment variable naming kldiv's cache folder (Numba's cache goes under it).
CACHE_DIR_ENV = "KLDIV_CACHE_DIR"


def cache_dir() -> Path:
    """The folder Numba's on-disk cache of kldiv's kernels uses (see the module docstring).

    ``$KLDIV_CACHE_DIR/numba``, else ``$NUMBA_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/kldiv/numba`` (``%LOCALAPPDATA%\\kldiv\\numba`` on Windows,
    ``~/.cache/kldiv/numba`` otherwise). Nothing is created here.
    """
    named = os.environ.get(CACHE_DIR_ENV)
    if named:
        return Path(named).expanduser() / "numba"
    numba_named = os.environ.get("NUMBA_CACHE_DIR")
    if numba_named:
        return Path(numba_named).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    if not base and sys.platform == "win32":  # pragma: no cover - not tested on Windows
        base = os.environ.get("LOCALAPPDATA")
    root = Path(base).expanduser() if base else Path.home() / ".cache"
    return root / "kldiv" / "numba"
