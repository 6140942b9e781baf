"""The only place numba is imported. Modules here are loaded lazily by their NumPy twins."""

from __future__ import annotations

import logging
import threading

__all__ = ["preload", "preload_in_background"]

log = logging.getLogger(__name__)


def preload() -> None:
    """Load every kernel a calibration uses, from Numba's on-disk cache (compiling if absent).

    Importing numba and loading cached machine code costs about a second in a fresh process.
    Doing it up front changes no result: it only moves that cost to where it can overlap
    other work (see :func:`preload_in_background`).
    """
    import numpy as np

    from . import (
        entropy,  # noqa: F401  (explicit signatures: loaded at import)
        fill,
    )

    for size in (16, fill._SERIAL_BELOW):  # the serial and the parallel float32 kernels
        fill.fill_counts(np.zeros(size, np.float32), 1.0, 2, clip=False)


def preload_in_background() -> threading.Thread:
    """Run :func:`preload` in a daemon thread and return it (join it before exiting).

    A failure there is only logged: the caller's own first use of a kernel raises it again,
    in context.
    """

    def _run() -> None:
        try:
            preload()
        except Exception:  # pragma: no cover - reported again by the caller's first use
            log.debug("kernel preload failed", exc_info=True)

    thread = threading.Thread(target=_run, name="kldiv-kernel-preload", daemon=True)
    thread.start()
    return thread
