"""The public API does not depend on import order: every submodule of kldiv and trt_backend
is imported first, then each public name must still be the kind of object documented here.

No module is named like a public name of its package (``kldiv.compare`` is a function, its
module is :mod:`kldiv.comparison`; ``trt_backend.crosscheck`` likewise, in
:mod:`trt_backend.crosschecking`), so importing a submodule can never replace a public
function by a module.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Mapping
from types import ModuleType

import pytest

KINDS: dict[str, Callable[[object], bool]] = {
    "class": lambda v: inspect.isclass(v) and not issubclass(v, BaseException),
    "exception": lambda v: inspect.isclass(v) and issubclass(v, BaseException),
    "function": lambda v: callable(v) and not inspect.isclass(v) and not inspect.ismodule(v),
    "mapping": lambda v: isinstance(v, Mapping),
    "str": lambda v: isinstance(v, str),
}

#: The documented kind of every public name (README, docs/, the packages' docstrings).
PUBLIC: dict[str, dict[str, str]] = {
    "kldiv": {
        **dict.fromkeys(
            ["ActivationHistogram", "CacheHeader", "CalibrationTable", "ComparisonReport",
             "EntropyOptions", "EvaluationReport", "Explanation", "HistogramCollector",
             "OnnxRuntimeRunner",
             "Preprocess", "ThresholdResult"], "class"),
        **dict.fromkeys(
            ["CacheFormatError", "DataSourceError", "HistogramError", "HistogramRangeError",
             "KldivError", "ModelError", "NonFiniteError", "OutputExistsError", "PresetError",
             "QuantizationError", "TableMismatchError", "UnknownNameError"], "exception"),
        **dict.fromkeys(
            ["amax_to_scale", "calibrate", "calibrate_histograms", "choose_threshold",
             "collect_histograms", "compare", "format_cache", "header_for", "hex_to_scale",
             "parse_cache", "read_cache", "read_table", "scale_to_amax", "scale_to_hex",
             "search_threshold", "to_qdq_onnx", "write_cache", "write_table", "explain_scale",
             "write_report"], "function"),
        "PRESETS": "mapping",
        "__version__": "str",
    },
    "trt_backend": {
        **dict.fromkeys(
            ["CalibrationFeed", "CrosscheckResult", "DeviceBuffer", "PrecisionReport",
             "RunResult", "StagingBuffers", "TensorSpec"], "class"),
        **dict.fromkeys(
            ["DeviceError", "EngineBuildError", "EngineRunError", "TensorRTUnavailableError",
             "TensorRTVersionError"], "exception"),
        **dict.fromkeys(
            ["build_engine", "check_cache_header", "compare_precisions", "crosscheck",
             "input_specs_from_onnx", "make_calibrator", "replay_cache_bytes", "run_engine",
             "tensorrt_available", "tensorrt_version"], "function"),
    },
}


def _submodules(package: ModuleType) -> list[str]:
    return [m.name for m in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}.")
            if ".examples.train" not in m.name]  # a training script, not library code


@pytest.fixture(scope="module")
def imported() -> dict[str, list[ModuleType]]:
    """Both packages with every submodule imported (the order that used to shadow names)."""
    out = {}
    for name in PUBLIC:
        package = importlib.import_module(name)
        out[name] = [importlib.import_module(m) for m in _submodules(package)]
    return out


@pytest.mark.parametrize("package_name", sorted(PUBLIC))
def test_every_public_name_is_its_documented_kind(package_name, imported):
    package = importlib.import_module(package_name)
    assert sorted(package.__all__) == sorted(PUBLIC[package_name]), (
        "a public name was added or removed: document its kind in tests/test_api.py")
    wrong = {name: type(getattr(package, name)).__name__ for name, kind in
             PUBLIC[package_name].items() if not KINDS[kind](getattr(package, name))}
    assert wrong == {}, f"not the documented kind after importing every submodule: {wrong}"
    assert set(package.__all__) <= set(dir(package))


@pytest.mark.parametrize("package_name", sorted(PUBLIC))
def test_no_module_is_named_like_a_public_name(package_name, imported):
    package = importlib.import_module(package_name)
    children = {m.rsplit(".", 1)[1] for m in _submodules(package)
                if m.count(".") == package_name.count(".") + 1}
    assert children & set(package.__all__) == set()


def test_every_submodule_all_resolves_to_objects(imported):
    """Each submodule's ``__all__`` names exist, and none is a module."""
    problems = []
    for modules in imported.values():
        for module in modules:
            for name in getattr(module, "__all__", ()):
                value = getattr(module, name, problems)
                if value is problems or inspect.ismodule(value):
                    problems.append(f"{module.__name__}.{name}")
    assert problems == []
