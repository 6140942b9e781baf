"""Exceptions raised by the TensorRT backend.

Each says what is wrong and what to do instead. All derive from :class:`kldiv.errors.KldivError`,
so ``kldiv-trt`` turns them into one line on stderr and exit status 2.
"""

from __future__ import annotations

from kldiv.errors import KldivError

__all__ = [
    "INSTALL_HINT",
    "DeviceError",
    "EngineBuildError",
    "EngineRunError",
    "TensorRTUnavailableError",
    "TensorRTVersionError",
]

#: The command that installs TensorRT and cuda-python next to kldiv.
INSTALL_HINT = 'pip install "kldiv[trt]"'


class TensorRTUnavailableError(KldivError, ImportError):
    """TensorRT (the real library, not only its type stubs) cannot be imported."""


class TensorRTVersionError(KldivError, ValueError):
    """The running TensorRT does not offer what was asked (e.g. implicit INT8 on TensorRT 11)."""


class EngineBuildError(KldivError, RuntimeError):
    """TensorRT's ONNX parser or builder failed; the message names the node or the step."""


class EngineRunError(KldivError, RuntimeError):
    """A serialized engine could not be loaded or executed."""


class DeviceError(KldivError, RuntimeError):
    """A CUDA call failed (allocation, copy, free) or no CUDA binding is usable."""
