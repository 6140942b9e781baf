"""trt_backend: kldiv's scales in TensorRT, and TensorRT's scales next to kldiv's.

``import trt_backend`` never imports TensorRT; each public name loads its submodule on first
use, and TensorRT itself is loaded only by :mod:`trt_backend._tensorrt` when a function needs it
(a missing TensorRT raises an error naming ``pip install "kldiv[trt]"``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> submodule that defines it
_LAZY: dict[str, str] = {
    "make_calibrator": "calibrators",
    "CalibrationFeed": "calibrators",
    "replay_cache_bytes": "calibrators",
    "check_cache_header": "calibrators",
    "build_engine": "engine",
    "run_engine": "runtime",
    "RunResult": "runtime",
    "compare_precisions": "runtime",
    "PrecisionReport": "runtime",
    "crosscheck": "crosschecking",
    "CrosscheckResult": "crosschecking",
    "StagingBuffers": "device",
    "DeviceBuffer": "device",
    "TensorSpec": "device",
    "input_specs_from_onnx": "device",
    "tensorrt_version": "_tensorrt",
    "tensorrt_available": "_tensorrt",
    "TensorRTUnavailableError": "errors",
    "TensorRTVersionError": "errors",
    "EngineBuildError": "errors",
    "EngineRunError": "errors",
    "DeviceError": "errors",
}
_RENAMED = {"tensorrt_version": "version", "tensorrt_available": "available"}

__all__ = [
    "CalibrationFeed",
    "CrosscheckResult",
    "DeviceBuffer",
    "DeviceError",
    "EngineBuildError",
    "EngineRunError",
    "PrecisionReport",
    "RunResult",
    "StagingBuffers",
    "TensorRTUnavailableError",
    "TensorRTVersionError",
    "TensorSpec",
    "build_engine",
    "check_cache_header",
    "compare_precisions",
    "crosscheck",
    "input_specs_from_onnx",
    "make_calibrator",
    "replay_cache_bytes",
    "run_engine",
    "tensorrt_available",
    "tensorrt_version",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trt_backend' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # pragma: no cover
    from ._tensorrt import available as tensorrt_available
    from ._tensorrt import version as tensorrt_version
    from .calibrators import (
        CalibrationFeed,
        check_cache_header,
        make_calibrator,
        replay_cache_bytes,
    )
    from .crosschecking import CrosscheckResult, crosscheck
    from .device import DeviceBuffer, StagingBuffers, TensorSpec, input_specs_from_onnx
    from .engine import build_engine
    from .errors import (
        DeviceError,
        EngineBuildError,
        EngineRunError,
        TensorRTUnavailableError,
        TensorRTVersionError,
    )
    from .runtime import PrecisionReport, RunResult, compare_precisions, run_engine
