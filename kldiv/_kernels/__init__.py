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
    """Load the kernels a calibration of float32 activations uses, before the first
    histogram needs them.

    With the ahead-of-time build (:mod:`kldiv._kernels.aot`) this loads its one extension
    module, which holds every kernel (building it once per environment). With Numba's JIT it
    imports Numba and loads the cached machine code of the float32 fills (serial and
    parallel) and the searches, about a second in a fresh process; other dtypes load on first
    use. Doing it up front changes no result: it only moves that cost to where it can overlap
    other work (see :func:`preload_in_background`).
    """
    import numpy as np

    from . import dispatch

    build = dispatch.kernels()
    if build.name == "jit":
        import numba

        from . import entropy, fill  # noqa: F401  (entropy: explicit signatures, loaded)

        x = np.zeros(16, np.float32)
        dispatch.fill_counts(x, 1.0, 2, clip=False, build=build)  # the serial kernel
        # the parallel one is loaded, not run: this may be a background thread, and the JIT's
        # parallel kernels must not be launched from two threads at once (workqueue layer)
        mask = dispatch.MAGNITUDE[x.dtype][1]
        args = (x, x.view(np.uint32), mask, dispatch.NO_TABLE_I, dispatch.NO_TABLE_F, 1.0, 2,
                False, 2)
        fill._fill_kernel.compile(tuple(numba.typeof(a) for a in args))


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
