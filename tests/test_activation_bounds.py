"""ReLU6 / Clip outputs take the activation's bound, as real TensorRT caches show."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kldiv.cachefile import read_cache
from kldiv.pipeline import calibrate, collect_histograms
from kldiv.runners import activation_bounds


def test_every_relu6_in_the_mlperf_ssd_cache_is_six_over_127(trt_caches: Path) -> None:
    """The evidence behind the rule: TensorRT 7.2 wrote exactly 6/127 for each ReLU6."""
    table = read_cache(trt_caches / "mlperf-v1.0-nvidia-ssd-mobilenet-trt7203.cache")
    relu6 = [n for n in table if n.endswith("Relu6")]
    assert len(relu6) == 35
    assert {table.hex(n) for n in relu6} == {"3d418306"}


def _model(opset: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1])]
    inits = [w]
    if opset >= 11:
        inits += [
            numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
            numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
        ]
        nodes.append(helper.make_node("Clip", ["conv", "lo", "hi"], ["relu6"]))
        # a Clip whose upper limit is computed at run time has no static bound
        nodes.append(helper.make_node("ReduceMax", ["conv"], ["m"], keepdims=0))
        nodes.append(helper.make_node("Clip", ["conv", "lo", "m"], ["dyn"]))
    else:
        nodes.append(helper.make_node("Clip", ["conv"], ["relu6"], min=0.0, max=6.0))
        nodes.append(helper.make_node("Relu", ["conv"], ["dyn"]))
    nodes.append(helper.make_node("Add", ["relu6", "dyn"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "clip",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model


@pytest.mark.parametrize("opset", [9, 13])
def test_activation_bounds_finds_constant_clips_only(opset: int) -> None:
    assert activation_bounds(_model(opset)) == {"relu6": 6.0}


@pytest.mark.parametrize("opset", [9, 13])
def test_tensorrt_preset_writes_the_bound_others_search(opset: int) -> None:
    rng = np.random.default_rng(1)
    # small values: the ReLU6 output never reaches 6, so a search picks less than the bound
    data = [{"x": (rng.normal(size=(4, 1, 8, 8)) * 0.3).astype(np.float32)} for _ in range(4)]
    model = _model(opset)
    table = calibrate(model, data, preset="tensorrt")
    assert table.hex("relu6") == "3d418306"  # exactly 6/127, like TensorRT
    assert table.provenance["thresholds_from_activation_bounds"] == ["relu6"]
    assert table.hex("dyn") != "3d418306"
    searched = calibrate(model, data, preset="modelopt")
    assert searched.hex("relu6") != "3d418306"
    collector = collect_histograms(model, data)
    assert collector.absmax("relu6") < 6.0
    off = calibrate(
        None, histograms=collector, preset="tensorrt", options={"activation_bounds": False}
    )
    assert off.hex("relu6") != "3d418306"
    assert off.hex("dyn") == table.hex("dyn")
