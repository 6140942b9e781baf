"""The one place that imports TensorRT: loading, the version probe, and what each version offers.

TensorRT is imported on first use (:func:`load`), never when ``trt_backend`` is imported.
``tensorrt-stubs`` installs a ``tensorrt`` namespace holding only ``.pyi`` files: ``import
tensorrt`` then "succeeds" but there is no ``Builder`` and no ``__version__``; :func:`load`
treats that as "TensorRT is not installed".

What each version offers (TensorRT's documentation; see docs/trt-backend.md):

* implicit INT8 (``IInt8*Calibrator``, ``IBuilderConfig.int8_calibrator``,
  ``BuilderFlag.INT8``): TensorRT 8.6 to 10.x; deprecated in 10.1, removed in 11.
* explicit quantization with Q/DQ nodes (kldiv's Q/DQ export): offered here on 10.1 and later,
  including 11, where it is the only INT8 path and every network is strongly typed.
* ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH``: required on 8.x, deprecated and ignored in
  10, so :func:`network_flags` returns 0 from 10 on (``STRONGLY_TYPED`` for Q/DQ on 10.x).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import INSTALL_HINT, TensorRTUnavailableError, TensorRTVersionError

if TYPE_CHECKING:  # pragma: no cover - names for annotations only, checked against the stubs
    import tensorrt

    Builder = tensorrt.Builder
    IBuilderConfig = tensorrt.IBuilderConfig
    INetworkDefinition = tensorrt.INetworkDefinition
    OnnxParser = tensorrt.OnnxParser
    ICudaEngine = tensorrt.ICudaEngine
    IExecutionContext = tensorrt.IExecutionContext
    IHostMemory = tensorrt.IHostMemory
    IInt8Calibrator = tensorrt.IInt8Calibrator

__all__ = [
    "CALIBRATOR_CLASSES",
    "TrtVersion",
    "available",
    "dims_to_tuple",
    "load",
    "make_logger",
    "network_flags",
    "parse_version",
    "require_implicit",
    "require_qdq",
    "use_module",
    "version",
]

logger = logging.getLogger(__name__)

#: kldiv's algorithm name -> the TensorRT calibrator base class that implements it.
CALIBRATOR_CLASSES: dict[str, str] = {
    "entropy2": "IInt8EntropyCalibrator2",
    "entropy": "IInt8EntropyCalibrator",
    "minmax": "IInt8MinMaxCalibrator",
    "legacy": "IInt8LegacyCalibrator",
}

_VERSION = re.compile(r"\s*([0-9]+)\.([0-9]+)(?:\.([0-9]+))?")

# A module object standing in for TensorRT (tests of our control flow); None = the real one.
_override: Any = None


class TrtVersion(NamedTuple):
    """A TensorRT version, ``major.minor.patch`` (the build number is dropped)."""

    major: int
    minor: int
    patch: int = 0

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def implicit_int8(self) -> bool:
        """Whether calibrators and ``BuilderFlag.INT8`` exist (TensorRT < 11)."""
        return self.major < 11

    @property
    def explicit_qdq(self) -> bool:
        """Whether the Q/DQ path is offered here (TensorRT >= 10.1)."""
        return (self.major, self.minor) >= (10, 1)

    @property
    def named_tensors(self) -> bool:
        """Whether the named-tensor I/O API (``execute_async_v3``) exists (TensorRT >= 8.5)."""
        return (self.major, self.minor) >= (8, 5)


def parse_version(text: str) -> TrtVersion:
    """Parse ``tensorrt.__version__`` (``'10.13.0.35'``, ``'8.6.1'``) into a :class:`TrtVersion`.

    Raises
    ------
    TensorRTVersionError
        If ``text`` does not start with ``major.minor``.
    """
    m = _VERSION.match(str(text))
    if m is None:
        raise TensorRTVersionError(
            f"cannot read the TensorRT version {text!r}; expected 'major.minor[.patch]' such as "
            f"'10.9.0' (reinstall TensorRT with {INSTALL_HINT})"
        )
    return TrtVersion(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def load() -> Any:
    """Import and return the TensorRT module.

    Returns
    -------
    module
        ``tensorrt`` (or the object installed by :func:`use_module`).

    Raises
    ------
    TensorRTUnavailableError
        If TensorRT is not installed, or only its type stubs are; the message names
        ``pip install "kldiv[trt]"``.
    """
    if _override is not None:
        return _override
    try:
        import tensorrt
    except ImportError as exc:
        raise TensorRTUnavailableError(
            f"TensorRT is not installed ({exc}); install it with {INSTALL_HINT} on a machine "
            "with an NVIDIA GPU and driver"
        ) from None
    if not hasattr(tensorrt, "Builder") or not isinstance(
        getattr(tensorrt, "__version__", None), str
    ):
        raise TensorRTUnavailableError(
            "TensorRT is not installed: `import tensorrt` found only a namespace without "
            "tensorrt.Builder (the tensorrt-stubs type stubs, not the library); install TensorRT "
            f"with {INSTALL_HINT} on a machine with an NVIDIA GPU and driver"
        )
    return tensorrt


def version() -> TrtVersion:
    """The running TensorRT's version (raises :class:`TensorRTUnavailableError` without one)."""
    return parse_version(str(load().__version__))


def available() -> bool:
    """Whether a real TensorRT can be loaded (never raises)."""
    try:
        load()
    except TensorRTUnavailableError:
        return False
    return True


@contextlib.contextmanager
def use_module(module: Any) -> Iterator[Any]:
    """Make :func:`load` return ``module`` inside the ``with`` block.

    For tests of kldiv's own control flow around TensorRT (which calls are made, in what
    order); nothing produced this way is a TensorRT result.
    """
    global _override
    previous, _override = _override, module
    try:
        yield module
    finally:
        _override = previous


def require_implicit(v: TrtVersion) -> None:
    """Raise unless ``v`` offers implicit INT8 calibration (calibrators), i.e. ``v < 11``.

    Raises
    ------
    TensorRTVersionError
        On TensorRT 11 and later, saying to use the explicit Q/DQ path instead.
    """
    if not v.implicit_int8:
        raise TensorRTVersionError(
            f"TensorRT {v} has no implicit INT8 calibration (calibrators, int8_calibrator and "
            "BuilderFlag.INT8 were removed in TensorRT 11); build from kldiv's scales with the "
            "explicit Q/DQ path instead: build_engine(model, 'int8', table=table, qdq=True) or "
            "`kldiv-trt build MODEL --cache FILE --qdq`"
        )


def require_qdq(v: TrtVersion) -> None:
    """Raise unless ``v`` offers the explicit Q/DQ path here, i.e. ``v >= 10.1``.

    Raises
    ------
    TensorRTVersionError
        Before 10.1, saying to use the implicit path (a replayed cache) instead.
    """
    if not v.explicit_qdq:
        raise TensorRTVersionError(
            f"the Q/DQ (explicit quantization) path is offered on TensorRT 10.1 and later, this "
            f"is TensorRT {v}; use the implicit path instead: build_engine(model, 'int8', "
            "table=table) (kldiv's scales replayed as the calibration cache)"
        )


def network_flags(trt: Any, v: TrtVersion, *, strongly_typed: bool = False) -> int:
    """Flags for ``Builder.create_network``.

    ``1 << EXPLICIT_BATCH`` on 8.x/9.x (required there; deprecated and ignored from 10).
    With ``strongly_typed`` (the explicit Q/DQ path): ``1 << STRONGLY_TYPED`` on 10.x, where
    TensorRT's documentation says to use explicit quantization with strong typing and no
    precision flags; 0 on 11 and later, where every network is strongly typed.
    """
    if v.major >= 11:
        return 0
    if strongly_typed:
        require_qdq(v)
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if v.major >= 10:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def dims_to_tuple(dims: Any) -> tuple[int | None, ...]:
    """A ``tensorrt.Dims`` (or any sequence) as a tuple; dynamic (-1) dimensions become None."""
    return tuple(None if int(dims[i]) < 0 else int(dims[i]) for i in range(len(dims)))


_SEVERITY_TO_LEVEL = {
    "INTERNAL_ERROR": logging.CRITICAL,
    "ERROR": logging.ERROR,
    "WARNING": logging.WARNING,
    "INFO": logging.INFO,
    "VERBOSE": logging.DEBUG,
}


def make_logger(trt: Any) -> Any:
    """A ``tensorrt.ILogger`` that forwards TensorRT's messages to Python logging.

    The subclass is defined here, at call time, so this module imports without TensorRT.
    """
    base = trt.ILogger

    class _ForwardingLogger(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            name = getattr(severity, "name", str(severity)).rsplit(".", 1)[-1]
            level = _SEVERITY_TO_LEVEL.get(name.upper(), logging.INFO)
            if level >= logging.ERROR:
                self.errors.append(msg)
            logger.log(level, "TensorRT: %s", msg)

    return _ForwardingLogger()
