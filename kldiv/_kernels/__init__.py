"""kldiv's compiled kernels: arrays and plain numbers in, arrays and plain numbers out.

This package is a leaf: it imports nothing from the rest of kldiv, and it is the only place
Numba is imported. Its callers (:mod:`kldiv.histogram` for the fill, :mod:`kldiv.entropy` for
the threshold search) hold the NumPy references the kernels are tested against, and ask
:func:`resolve` once which implementation runs.

The one knob
    ``KLDIV_KERNELS`` (environment variable), read once per process, on the first fill or
    search:

    ``auto`` (default, also when unset or empty)
        Numba's JIT kernels when Numba imports; otherwise the NumPy references, with one
        log line (``INFO``) saying so. Same results either way, the references are slower.
    ``numba``
        The Numba kernels, or :class:`KernelChoiceError` when they cannot load (naming the
        reason and what is available).
    ``numpy``
        The NumPy references (:func:`kldiv.histogram.fill_counts_reference`,
        :func:`kldiv.entropy.divergence_curve`), for reading, debugging and comparing.

Where compiled code goes
    Numba compiles each kernel on its first use and keeps the machine code in its on-disk
    cache, so later processes load it instead of compiling. kldiv points that cache at a user
    cache folder, never at the installed package: ``$KLDIV_CACHE_DIR/numba``, else
    ``$NUMBA_CACHE_DIR`` (Numba's own variable), else ``$XDG_CACHE_HOME/kldiv/numba``
    (``~/.cache/kldiv/numba``). See :func:`cache_dir`. Deleting the folder is always safe.

Modules
    :mod:`~kldiv._kernels.fill` and :mod:`~kldiv._kernels.entropy` hold the Numba loops,
    :mod:`~kldiv._kernels.wrappers` the array plumbing around them (dtype views, blocks,
    chunks), :mod:`~kldiv._kernels._jit` the one decorator with every JIT option,
    :mod:`~kldiv._kernels._cache` the cache folder (no Numba needed to ask).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._cache import CACHE_DIR_ENV, cache_dir
from ._threads import one_thread, pool, threads

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = [
    "CACHE_DIR_ENV",
    "DEFAULT_MODE",
    "KERNELS_ENV",
    "MODES",
    "KernelChoiceError",
    "Kernels",
    "available",
    "cache_dir",
    "load",
    "mode",
    "one_thread",
    "pool",
    "reset",
    "resolve",
    "threads",
    "using",
]

log = logging.getLogger(__name__)

#: The environment variable that chooses the implementation (the one knob).
KERNELS_ENV = "KLDIV_KERNELS"
#: Its values; see the module docstring.
MODES: tuple[str, ...] = ("auto", "numba", "numpy")
#: What an unset (or empty) ``KLDIV_KERNELS`` means.
DEFAULT_MODE = "auto"


class KernelChoiceError(ValueError):
    """``KLDIV_KERNELS`` names an unknown implementation, or one that cannot load here.

    Re-exported as :class:`kldiv.errors.KernelChoiceError`; the message lists what is
    available and how to choose it.
    """


@dataclass(frozen=True)
class Kernels:
    """One implementation of the kernels, called with arrays and plain numbers.

    Attributes
    ----------
    name : str
        ``"numba"``.
    fill_counts : callable
        ``fill_counts(values, amax, num_bins, clip)`` ->
        ``(counts, n_nonfinite, n_over, max_over, max_abs)``: the contract of
        :func:`kldiv.histogram.fill_counts_reference` (values of any shape and strides,
        float16/32/64 or integer; int64 counts).
    absmax : callable
        ``absmax(values)`` -> ``(largest finite |x|, number of non-finite values)``.
    curve_abs_proportional, curve_closed_form, curve_smoothed : callable
        The divergence curves of :mod:`kldiv._kernels.entropy` (int64 counts and candidates,
        plain numbers for the options).
    """

    name: str
    fill_counts: Callable[[np.ndarray, float, int, bool], tuple[np.ndarray, int, int, float, float]]
    absmax: Callable[[np.ndarray], tuple[float, int]]
    curve_abs_proportional: Callable[..., np.ndarray]
    curve_closed_form: Callable[..., np.ndarray]
    curve_smoothed: Callable[..., np.ndarray]


def mode() -> str:
    """The value of ``KLDIV_KERNELS`` (:data:`DEFAULT_MODE` when unset), checked.

    Raises
    ------
    KernelChoiceError
        For a value that is not one of :data:`MODES`.
    """
    value = os.environ.get(KERNELS_ENV, "").strip().lower() or DEFAULT_MODE
    if value not in MODES:
        raise KernelChoiceError(
            f"{KERNELS_ENV}={os.environ.get(KERNELS_ENV)!r} is not one of "
            f"{', '.join(MODES)}; unset it (auto: {_available_text()}) or choose one"
        )
    return value


def available() -> tuple[str, ...]:
    """The implementations this environment offers.

    ``"numba"`` when Numba is installed, and ``"numpy"`` always (found without importing Numba).
    """
    return ("numba", "numpy") if _numba_installed() else ("numpy",)


def _numba_installed() -> bool:
    try:
        return importlib.util.find_spec("numba") is not None
    except (ImportError, ValueError):  # a broken or blocked installation
        return False


def _available_text() -> str:
    return "available here: " + ", ".join(available())


def load(name: str = "numba") -> Kernels:
    """Load one implementation by name, whatever ``KLDIV_KERNELS`` says (tests, benchmarks).

    Raises
    ------
    ImportError
        Numba is not importable.
    KernelChoiceError
        ``name`` is not a compiled implementation (``"numpy"`` is the references, which live
        with their callers).
    """
    if name != "numba":
        raise KernelChoiceError(f"no compiled kernels named {name!r}; there is 'numba'")
    from . import wrappers  # imports Numba and the kernel modules

    return Kernels(
        "numba", wrappers.fill_counts, wrappers.absmax, wrappers.curve_abs_proportional,
        wrappers.curve_closed_form, wrappers.curve_smoothed,
    )


_UNSET: Any = object()
_CHOSEN: Kernels | None = _UNSET
_LOCK = threading.Lock()


def resolve() -> Kernels | None:
    """The kernels this process uses, or None for the NumPy references; decided once.

    The first call reads ``KLDIV_KERNELS`` (:func:`mode`) and loads the Numba kernels when
    asked to; later calls return the same answer (thread-safe). Fill and search both ask
    here, so they always run the same implementation.

    Returns
    -------
    Kernels or None
        None means: use the NumPy reference (``KLDIV_KERNELS=numpy``, or ``auto`` without
        Numba).

    Raises
    ------
    KernelChoiceError
        ``KLDIV_KERNELS`` is unknown, or is ``numba`` and Numba's kernels cannot load.
    """
    global _CHOSEN
    chosen = _CHOSEN
    if chosen is not _UNSET:
        return chosen
    with _LOCK:
        if _CHOSEN is _UNSET:
            _CHOSEN = _choose(mode())
        return _CHOSEN


def _choose(wanted: str) -> Kernels | None:
    if wanted == "numpy":
        log.debug("%s=numpy: the NumPy reference implementations", KERNELS_ENV)
        return None
    try:
        kernels = load("numba")
    except ImportError as exc:
        if wanted == "numba":
            raise KernelChoiceError(
                f"{KERNELS_ENV}=numba, but the Numba kernels cannot load "
                f"({type(exc).__name__}: {exc}); available here: numpy. Install Numba "
                f"(pip install numba) or set {KERNELS_ENV}=auto or numpy"
            ) from exc
        log.info(
            "Numba is not available (%s: %s); kldiv runs its NumPy reference "
            "implementations (same results, slower). Install numba for the fast kernels.",
            type(exc).__name__, exc,
        )
        return None
    log.debug("kldiv kernels: numba (cache %s)", cache_dir())
    return kernels


def reset() -> None:
    """Forget the choice, so that the next :func:`resolve` reads ``KLDIV_KERNELS`` again.

    For tests and benchmarks that switch implementations inside one process.
    """
    global _CHOSEN
    with _LOCK:
        _CHOSEN = _UNSET


@contextmanager
def using(name: str) -> Iterator[None]:
    """Run a block with ``KLDIV_KERNELS=name``, resolved afresh; restore the previous choice.

    For tests and benchmarks that compare implementations inside one process.

    Parameters
    ----------
    name : str
        One of :data:`MODES`.

    Yields
    ------
    None
        While the block runs, :func:`resolve` answers for ``name``.
    """
    saved = os.environ.get(KERNELS_ENV)
    os.environ[KERNELS_ENV] = name
    reset()
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(KERNELS_ENV, None)
        else:
            os.environ[KERNELS_ENV] = saved
        reset()
