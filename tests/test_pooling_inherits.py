"""Pooling outputs take their input's scale with the tensorrt preset, as real caches show."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from kldiv.cachefile import read_cache
from kldiv.graph import scale_sources
from kldiv.pipeline import calibrate

# (cache, pooled tensor, its input) in real TensorRT entropy caches, TensorRT 5.1 to 10.3
EVIDENCE = [
    ("sampleint8-mnist-trt5100.cache", "pool1", "conv1"),
    ("sampleint8-mnist-trt5100.cache", "pool2", "conv2"),
    ("sampleint8-mnist-trt7000.cache", "pool1", "conv1"),
    ("sampleint8-mnist-trt7000.cache", "pool2", "conv2"),
    ("nvdla-resnet50-trt5101.cache", "pool1", "conv1"),
    ("nvdla-resnet50-trt5101.cache", "pool5", "res5c"),  # global average pooling
    (
        "mlperf-v0.5-nvidia-resnet50-trt6001.cache",
        "resnet_model/max_pooling2d/MaxPool_0",
        "resnet_model/Relu_0",
    ),
    (
        "mlperf-v0.7-nvidia-resnet50-trt7200.cache",
        "resnet_model/max_pooling2d/MaxPool_0",
        "resnet_model/Relu_0",
    ),
    (
        "trt10-100300-yolo-chicken.cache",
        "/model.9/m/MaxPool_output_0",
        "/model.9/cv1/conv/Conv_output_0",
    ),
    (
        "trt10-100300-yolo-chicken.cache",
        "/model.9/m_1/MaxPool_output_0",
        "/model.9/m/MaxPool_output_0",
    ),
]


@pytest.mark.parametrize(("cache", "pooled", "source"), EVIDENCE)
def test_real_caches_give_pooling_outputs_their_input_scale(
    trt_caches: Path, cache: str, pooled: str, source: str
) -> None:
    table = read_cache(trt_caches / cache)
    assert table.bits(pooled) == table.bits(source)


def _model() -> object:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["conv"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("MaxPool", ["pool"], ["pool2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["pool2"], ["gap"]),
    ]
    graph = helper.make_graph(
        nodes,
        "pools",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("gap", TensorProto.FLOAT, None)],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


def test_scale_sources_follow_pooling_chains() -> None:
    assert scale_sources(_model()) == {"pool": "conv", "pool2": "pool", "gap": "pool2"}


def test_tensorrt_preset_inherits_others_search() -> None:
    rng = np.random.default_rng(1)
    data = [{"x": rng.normal(size=(4, 1, 8, 8)).astype(np.float32)} for _ in range(4)]
    model = _model()
    table = calibrate(model, data, preset="tensorrt").table
    assert table.bits("pool") == table.bits("conv")
    assert table.bits("pool2") == table.bits("conv")  # through the chain
    assert table.bits("gap") == table.bits("conv")
    assert table.provenance["thresholds_inherited_from_inputs"] == {
        "pool": "conv",
        "pool2": "pool",
        "gap": "pool2",
    }
    off = calibrate(model, data, preset="tensorrt", options={"pooling_inherits": False}).table
    assert off.bits("conv") == table.bits("conv")
    assert off.bits("gap") != table.bits("gap")  # an average has a narrower distribution
    other = calibrate(model, data, preset="modelopt").table
    assert other.bits("gap") != other.bits("conv")
