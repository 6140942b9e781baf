"""The only place numba is imported. Modules here are loaded lazily by their NumPy twins.

:mod:`~kldiv._kernels.fill` and :mod:`~kldiv._kernels.entropy` hold the Numba kernels;
:mod:`~kldiv._kernels.dispatch` (no Numba) runs them through Numba's JIT or through their
ahead-of-time build (:mod:`~kldiv._kernels.aot`, loaded without importing Numba).
"""

from __future__ import annotations

import logging
import threading

__all__ = ["preload", "preload_in_background"]

log = logging.getLogger(__name__)


def preload() -> None:
    """Load every kernel a calibration uses, before the first histogram needs it.

    With the ahead-of-time build (:mod:`kldiv._kernels.aot`) this loads one extension module
    (building it once per environment). With Numba's JIT it imports Numba and loads the
    cached machine code, about a second in a fresh process. Doing it up front changes no
    result: it only moves that cost to where it can overlap other work
    (see :func:`preload_in_background`).
    """
    import numpy as np

    from . import dispatch

    build = dispatch.kernels()
    if build.name == "jit":  # load the serial and the parallel float32 kernels and the search
        from . import entropy  # noqa: F401  (explicit signatures: loaded at import)

        for size in (16, dispatch.SERIAL_BELOW):
            dispatch.fill_counts(np.zeros(size, np.float32), 1.0, 2, clip=False, build=build)


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
