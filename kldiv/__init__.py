"""kldiv: TensorRT's INT8 entropy (KL-divergence) calibration, reimplemented in the open.

The public API is listed in ``__all__``. Submodules are imported on first use, so
``import kldiv`` loads neither numba nor onnxruntime nor TensorRT.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> submodule that defines it
_LAZY: dict[str, str] = {
    # histograms and their collection
    "ActivationHistogram": "histogram",
    "HistogramCollector": "collect",
    # threshold search
    "search_threshold": "entropy",
    "EntropyOptions": "entropy",
    "PRESETS": "entropy",
    "choose_threshold": "thresholds",
    "ThresholdResult": "scales",
    # scales and tables
    "amax_to_scale": "scales",
    "scale_to_amax": "scales",
    "scale_to_hex": "scales",
    "hex_to_scale": "scales",
    "CacheHeader": "scales",
    "CalibrationTable": "scales",
    # cache files, exports, comparison
    "parse_cache": "cachefile",
    "format_cache": "cachefile",
    "read_cache": "cachefile",
    "write_cache": "cachefile",
    "header_for": "cachefile",
    "read_table": "exports",
    "write_table": "exports",
    "compare": "comparison",
    "ComparisonReport": "comparison",
    # end to end, explicit quantization
    "calibrate": "pipeline",
    "collect_histograms": "pipeline",
    "calibrate_histograms": "pipeline",
    "OnnxRuntimeRunner": "runners",
    "Preprocess": "data",
    "to_qdq_onnx": "qdq",
    "EvaluationReport": "evaluate",
    # explaining scales
    "explain_scale": "explain",
    "Explanation": "explain",
    "write_report": "report",
    # errors
    "KldivError": "errors",
    "HistogramError": "errors",
    "HistogramRangeError": "errors",
    "NonFiniteError": "errors",
    "PresetError": "errors",
    "CacheFormatError": "errors",
    "DataSourceError": "errors",
    "ModelError": "errors",
    "OutputExistsError": "errors",
    "QuantizationError": "errors",
    "TableMismatchError": "errors",
    "UnknownNameError": "errors",
}

__all__ = [
    "ActivationHistogram",
    "CacheFormatError",
    "CacheHeader",
    "CalibrationTable",
    "ComparisonReport",
    "DataSourceError",
    "EntropyOptions",
    "EvaluationReport",
    "Explanation",
    "HistogramCollector",
    "HistogramError",
    "HistogramRangeError",
    "KldivError",
    "ModelError",
    "NonFiniteError",
    "OnnxRuntimeRunner",
    "OutputExistsError",
    "PRESETS",
    "Preprocess",
    "PresetError",
    "QuantizationError",
    "TableMismatchError",
    "ThresholdResult",
    "UnknownNameError",
    "__version__",
    "amax_to_scale",
    "calibrate",
    "calibrate_histograms",
    "choose_threshold",
    "collect_histograms",
    "compare",
    "explain_scale",
    "format_cache",
    "header_for",
    "hex_to_scale",
    "parse_cache",
    "read_cache",
    "read_table",
    "scale_to_amax",
    "scale_to_hex",
    "search_threshold",
    "to_qdq_onnx",
    "write_cache",
    "write_report",
    "write_table",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kldiv' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .cachefile import format_cache, header_for, parse_cache, read_cache, write_cache
    from .collect import HistogramCollector
    from .comparison import ComparisonReport, compare
    from .data import Preprocess
    from .entropy import PRESETS, EntropyOptions, search_threshold
    from .errors import (
        CacheFormatError,
        DataSourceError,
        HistogramError,
        HistogramRangeError,
        KldivError,
        ModelError,
        NonFiniteError,
        OutputExistsError,
        PresetError,
        QuantizationError,
        TableMismatchError,
        UnknownNameError,
    )
    from .evaluate import EvaluationReport
    from .explain import Explanation, explain_scale
    from .exports import read_table, write_table
    from .histogram import ActivationHistogram
    from .pipeline import calibrate, calibrate_histograms, collect_histograms
    from .qdq import to_qdq_onnx
    from .report import write_report
    from .runners import OnnxRuntimeRunner
    from .scales import (
        CacheHeader,
        CalibrationTable,
        ThresholdResult,
        amax_to_scale,
        hex_to_scale,
        scale_to_amax,
        scale_to_hex,
    )
    from .thresholds import choose_threshold
