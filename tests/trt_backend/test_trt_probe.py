"""The version probe, what each TensorRT version offers, and importing without TensorRT."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trt_backend import _tensorrt
from trt_backend._tensorrt import TrtVersion, network_flags, parse_version
from trt_backend.errors import TensorRTUnavailableError, TensorRTVersionError


def test_without_tensorrt_load_names_the_extra() -> None:
    # Here only tensorrt-stubs (or nothing) is installed: neither is TensorRT.
    if _tensorrt._override is None and _tensorrt.available():  # pragma: no cover
        pytest.skip("a real TensorRT is installed")
    with pytest.raises(TensorRTUnavailableError, match=r'pip install "kldiv\[trt\]"'):
        _tensorrt.load()
    with pytest.raises(ImportError):  # also an ImportError for callers that catch that
        _tensorrt.version()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.13.0.35", TrtVersion(10, 13, 0)),
        ("8.6.1", TrtVersion(8, 6, 1)),
        ("8.6.1.post1", TrtVersion(8, 6, 1)),
        ("11.0", TrtVersion(11, 0, 0)),
    ],
)
def test_parse_version(text: str, expected: TrtVersion) -> None:
    assert parse_version(text) == expected
    assert str(parse_version(text)) == f"{expected.major}.{expected.minor}.{expected.patch}"


def test_parse_version_rejects_garbage() -> None:
    with pytest.raises(TensorRTVersionError, match="major.minor"):
        parse_version("unknown")


@pytest.mark.parametrize(
    ("version", "implicit", "qdq"),
    [("8.6.1", True, False), ("10.0.1", True, False), ("10.1.0", True, True),
     ("10.16.0", True, True), ("11.0.0", False, True)],
)
def test_paths_per_version(version: str, implicit: bool, qdq: bool) -> None:
    v = parse_version(version)
    assert v.implicit_int8 is implicit
    assert v.explicit_qdq is qdq
    if implicit:
        _tensorrt.require_implicit(v)
    else:
        with pytest.raises(TensorRTVersionError, match="qdq=True"):
            _tensorrt.require_implicit(v)
    if qdq:
        _tensorrt.require_qdq(v)
    else:
        with pytest.raises(TensorRTVersionError, match="table=table"):
            _tensorrt.require_qdq(v)


def test_network_flags(trt_factory) -> None:  # type: ignore[no-untyped-def]
    trt = trt_factory("8.6.1")
    trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH = 0
    trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED = 1
    assert network_flags(trt, parse_version("8.6.1")) == 1 << 0  # EXPLICIT_BATCH required
    assert network_flags(trt, parse_version("10.9.0")) == 0  # deprecated, ignored in 10
    assert network_flags(trt, parse_version("10.9.0"), strongly_typed=True) == 1 << 1
    assert network_flags(trt, parse_version("11.0.0"), strongly_typed=True) == 0
    with pytest.raises(TensorRTVersionError):
        network_flags(trt, parse_version("8.6.1"), strongly_typed=True)


def test_use_module_restores(trt_factory) -> None:  # type: ignore[no-untyped-def]
    before = _tensorrt._override
    trt = trt_factory("10.9.0")
    assert _tensorrt.load() is trt
    assert _tensorrt.version() == TrtVersion(10, 9, 0)
    with _tensorrt.use_module(None):
        assert _tensorrt._override is None
    assert _tensorrt._override is trt
    del before


def test_import_trt_backend_is_light() -> None:
    code = (
        "import sys, trt_backend, trt_backend.calibrators, trt_backend.engine, "
        "trt_backend.runtime, trt_backend.crosschecking, trt_backend.cli, trt_backend.device\n"
        "heavy = [m for m in ('tensorrt', 'numba', 'onnxruntime', 'pycuda', 'cuda') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert set(trt_backend.__all__) <= set(dir(trt_backend))\n"
        "for name in trt_backend.__all__: getattr(trt_backend, name)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
