"""build_engine's control flow, checked against a fake TensorRT module (no TensorRT results)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kldiv.cachefile import read_cache
from kldiv.errors import DataSourceError
from trt_backend.calibrators import make_calibrator
from trt_backend.engine import build_engine
from trt_backend.errors import EngineBuildError, TensorRTVersionError


def _batches(n: int, shape: tuple[int, ...] = (2, 3)) -> list[dict[str, Any]]:
    return [{"input": np.ones(shape, np.float32) * i} for i in range(n)]


def test_fp32_sets_workspace_and_explicit_batch_on_86(trt_factory: Any, onnx_file: Path) -> None:
    trt = trt_factory("8.6.1")
    out = build_engine(onnx_file, "fp32", workspace=123456)
    assert isinstance(out, bytes)
    assert ("set_memory_pool_limit", "WORKSPACE", 123456) in trt.calls
    assert ("create_network", 1 << 0) in trt.calls  # EXPLICIT_BATCH on 8.6
    assert ("parse_from_file", str(onnx_file)) in trt.calls
    assert not any(c[0] == "set_flag" for c in trt.calls)


def test_fp32_on_10_uses_no_network_flags(trt_factory: Any, onnx_file: Path) -> None:
    trt = trt_factory("10.13.0")
    build_engine(onnx_file)
    assert ("create_network", 0) in trt.calls


def test_fp16_sets_flag(fake_trt: Any, onnx_file: Path) -> None:
    build_engine(onnx_file, "fp16")
    assert ("set_flag", "FP16") in fake_trt.calls


def test_fp16_flag_refused_on_11(trt_factory: Any, onnx_file: Path) -> None:
    trt_factory("11.0.0")
    with pytest.raises(TensorRTVersionError, match="strongly typed"):
        build_engine(onnx_file, "fp16")


def test_int8_table_replays_cache_with_running_header(
    fake_trt: Any, onnx_file: Path, trt_caches: Path
) -> None:
    table = read_cache(trt_caches / "sampleint8-mnist-trt7000.cache")
    build_engine(onnx_file, "int8", table=table)
    assert ("set_flag", "INT8") in fake_trt.calls
    served = [c[1] for c in fake_trt.calls if c[0] == "served_cache"]
    assert len(served) == 1 and served[0].startswith(b"TRT-100900-EntropyCalibration2\n")
    assert not any(c[0] == "got_batch" for c in fake_trt.calls)  # nothing recalibrated


def test_int8_calibrator_runs_batches_and_captures_cache(
    fake_trt: Any, onnx_file: Path, host_backend: Any, fake_outputs: Any
) -> None:
    calib = make_calibrator(_batches(3), "entropy2", backend=host_backend)
    engine = build_engine(onnx_file, "int8", calibrator=calib)
    assert engine == fake_outputs[0]  # passed through unchanged
    assert sum(c[0] == "got_batch" for c in fake_trt.calls) == 3
    assert calib.captured == fake_outputs[1]
    assert host_backend.memory == {}  # device buffers freed after the build


def test_int8_data_shape_mismatch_is_caught_before_the_build(
    trt_factory: Any, onnx_file: Path, host_backend: Any
) -> None:
    trt = trt_factory("10.9.0", inputs=[("input", (2, 3))])
    calib = make_calibrator(_batches(2, (2, 5)), backend=host_backend)
    with pytest.raises(DataSourceError, match=r"\(2, 5\).*\(2, 3\)"):
        build_engine(onnx_file, "int8", calibrator=calib)
    assert ("build_serialized_network",) not in trt.calls


def test_dynamic_input_gets_profile_from_first_batch(
    trt_factory: Any, onnx_file: Path, host_backend: Any
) -> None:
    trt_factory("10.9.0", inputs=[("input", (-1, 3))])
    calib = make_calibrator(_batches(2, (2, 3)), backend=host_backend)
    build_engine(onnx_file, "int8", calibrator=calib)
    with pytest.raises(DataSourceError, match="input_shapes="):
        build_engine(onnx_file, "fp32")
    build_engine(onnx_file, "fp32", input_shapes={"input": (4, 3)})


def test_int8_implicit_refused_on_11(trt_factory: Any, onnx_file: Path, trt_caches: Path) -> None:
    trt_factory("11.0.0")
    table = read_cache(trt_caches / "sampleint8-mnist-trt7000.cache")
    with pytest.raises(TensorRTVersionError, match="qdq=True"):
        build_engine(onnx_file, "int8", table=table)


def test_qdq_refused_before_10_1(trt_factory: Any, onnx_file: Path) -> None:
    trt_factory("10.0.1")
    with pytest.raises(TensorRTVersionError, match="10.1"):
        build_engine(onnx_file, "int8", qdq=True)


def test_qdq_model_builds_strongly_typed_without_precision_flags(
    trt_factory: Any, onnx_file: Path
) -> None:
    trt = trt_factory("10.9.0")
    build_engine(onnx_file, "int8", qdq=True)
    assert ("create_network", 1 << 1) in trt.calls  # STRONGLY_TYPED
    assert not any(c[0] == "set_flag" for c in trt.calls)
    trt11 = trt_factory("11.0.0")
    build_engine(onnx_file, "int8", qdq=True)
    assert ("create_network", 0) in trt11.calls


def test_parser_errors_name_the_node(trt_factory: Any, onnx_file: Path, parser_error: Any) -> None:
    trt_factory(parse_errors=[parser_error("unsupported op", 17, "/layer3/Foo", "FooOp")])
    with pytest.raises(EngineBuildError) as info:
        build_engine(onnx_file)
    msg = str(info.value)
    assert "node 17 '/layer3/Foo' (FooOp): unsupported op" in msg
    assert "opset" in msg  # says what to do


def test_gpu_without_int8(trt_factory: Any, onnx_file: Path, trt_caches: Path) -> None:
    trt_factory(fast_int8=False)
    table = read_cache(trt_caches / "sampleint8-mnist-trt7000.cache")
    with pytest.raises(EngineBuildError, match="no fast INT8.*fp16"):
        build_engine(onnx_file, "int8", table=table)


def test_failed_build_is_an_error(trt_factory: Any, onnx_file: Path) -> None:
    trt_factory(build_fails=True)
    with pytest.raises(EngineBuildError, match="could not build"):
        build_engine(onnx_file)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"precision": "int4"}, "unknown precision"), ({"precision": "int8"}, "needs scales"),
     ({"precision": "fp16", "qdq": True}, "for precision='int8'")],
)
def test_bad_arguments(fake_trt: Any, onnx_file: Path, kwargs: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_engine(onnx_file, **kwargs)


def test_missing_model(fake_trt: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        build_engine(tmp_path / "nope.onnx")
