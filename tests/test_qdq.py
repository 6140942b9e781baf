"""to_qdq_onnx: Q/DQ placement, exact scales, int8 weights, odd scales, ONNX Runtime kernels."""

from __future__ import annotations

import collections
import logging

import numpy as np
import pytest

from kldiv.errors import ModelError, QuantizationError
from kldiv.examples import (
    INPUT_NAME,
    OUTPUT_NAME,
    lenet_calibration_data,
    lenet_eval_data,
    lenet_model_path,
)
from kldiv.qdq import to_qdq_onnx
from kldiv.scales import CalibrationTable, scale_to_bits

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
helper, numpy_helper = onnx.helper, onnx.numpy_helper


def _with_all_outputs(model):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    inferred = onnx.shape_inference.infer_shapes(m)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    for n in m.graph.node:
        for o in n.output:
            if o not in have:
                elem = types.get(o, onnx.TensorProto.FLOAT)
                m.graph.output.append(helper.make_tensor_value_info(o, elem, None))
    return m


def _activations(model, batch):
    """Every node output (and the input) of ``model`` for ``batch``, with onnxruntime."""
    m = _with_all_outputs(model)
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(None, batch))) | dict(batch)


@pytest.fixture(scope="module")
def lenet():
    return onnx.load(str(lenet_model_path()))


@pytest.fixture(scope="module")
def minmax_table(lenet):
    """A max-|x| table made with onnxruntime directly (independent of kldiv.pipeline)."""
    amax: dict[str, float] = collections.defaultdict(float)
    for batch in lenet_calibration_data():
        for k, v in _activations(lenet, batch).items():
            amax[k] = max(amax[k], float(np.abs(v).max()))
    return CalibrationTable.from_amaxes(amax)


@pytest.fixture(scope="module")
def eval_x():
    batches, y = lenet_eval_data()
    return np.concatenate([b[INPUT_NAME] for b in batches]), y


def _run(model, x):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def _qdq_pairs(model):
    """activation name -> (scale initializer value, zero point) of its QuantizeLinear."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {
        n.input[0]: (inits[n.input[1]], inits[n.input[2]])
        for n in model.graph.node
        if n.op_type == "QuantizeLinear"
    }


def test_inputs_placement_quantizes_inputs_of_weighted_ops(lenet, minmax_table):
    q = to_qdq_onnx(lenet, minmax_table)
    onnx.checker.check_model(q, full_check=True)
    pairs = _qdq_pairs(q)
    # activation inputs of Conv/Gemm, nothing else (TensorRT's placement recommendation)
    assert set(pairs) == {"input", "pool1", "flatten", "relu3", "relu4"}
    for name, (scale, zp) in pairs.items():
        assert scale.dtype == np.float32 and scale.shape == ()
        assert scale_to_bits(scale) == scale_to_bits(minmax_table[name])  # exact bits
        assert zp.dtype == np.int8 and zp == 0
    # every Conv/Gemm reads dequantized inputs and dequantized int8 weights
    producers = {o: n for n in q.graph.node for o in n.output}
    for node in q.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            assert producers[node.input[0]].op_type == "DequantizeLinear"
            dq_w = producers[node.input[1]]
            assert dq_w.op_type == "DequantizeLinear"
            axis = next(a.i for a in dq_w.attribute if a.name == "axis")
            assert axis == 0  # Conv, and Gemm with transB=1


def test_original_model_untouched_and_float_weights_dropped(lenet, minmax_table):
    before = lenet.SerializeToString()
    q = to_qdq_onnx(lenet, minmax_table)
    assert lenet.SerializeToString() == before
    init_types = {i.name: i.data_type for i in q.graph.initializer}
    assert "conv1.weight" not in init_types
    assert init_types["conv1.weight_quantized"] == onnx.TensorProto.INT8


def test_weights_are_symmetric_per_channel_int8(lenet, minmax_table):
    q = to_qdq_onnx(lenet, minmax_table)
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    for init in lenet.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.ndim < 2:
            continue
        wq, s = inits[f"{init.name}_quantized"], inits[f"{init.name}_scale"]
        assert wq.dtype == np.int8 and s.shape == (w.shape[0],)
        flat = w.reshape(len(w), -1)
        np.testing.assert_array_equal(s, (np.abs(flat).max(1).astype(np.float32) / np.float32(127)))
        # the largest magnitude of each channel maps to ±127; the error is at most half a step
        assert (np.abs(wq.reshape(len(w), -1)).max(1) == 127).all()
        deq = wq.astype(np.float32) * s.reshape((-1,) + (1,) * (w.ndim - 1))
        assert (np.abs(deq - w) <= s.reshape(deq.shape[:1] + (1,) * (w.ndim - 1)) / 2 + 1e-7).all()


def test_per_tensor_weights_and_int32_bias(lenet, minmax_table, eval_x):
    x, _ = eval_x
    ref = _run(lenet, x).argmax(1)
    for weights in ("per_tensor", "per_channel"):
        q = to_qdq_onnx(lenet, minmax_table, weights=weights, bias="int32")
        onnx.checker.check_model(q)
        inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
        assert inits["conv1.weight_scale"].shape == (() if weights == "per_tensor" else (6,))
        bias, b_scale = inits["conv1.bias_quantized"], inits["conv1.bias_scale"]
        assert bias.dtype == np.int32 and b_scale.shape == (6,)
        expected = np.float32(minmax_table["input"]) * inits["conv1.weight_scale"]
        np.testing.assert_array_equal(b_scale, np.broadcast_to(expected, (6,)))
        assert (_run(q, x).argmax(1) == ref).mean() >= 0.98


def test_quantize_nodes_compute_rint_clip_of_activation(lenet, minmax_table, eval_x):
    """The int8 tensors onnxruntime produces are round-half-even(x / scale), saturated."""
    x, _ = eval_x
    q = to_qdq_onnx(lenet, minmax_table)
    acts = _activations(q, {INPUT_NAME: x[:64]})
    for name, (scale, _) in _qdq_pairs(q).items():
        expected = np.clip(np.rint(acts[name] / scale), -128, 127).astype(np.int8)
        np.testing.assert_array_equal(acts[f"{name}_quantized"], expected)


def test_qdq_model_agrees_with_fp32(lenet, minmax_table, eval_x):
    x, y = eval_x
    ref = _run(lenet, x).argmax(1)
    for placement in ("inputs", "all"):
        out = _run(to_qdq_onnx(lenet, minmax_table, placement=placement), x).argmax(1)
        assert (out == ref).mean() >= 0.98
        assert (out == y).mean() >= 0.95


def test_all_placement_gives_onnxruntime_integer_kernels(lenet, minmax_table):
    from kldiv.evaluate import integer_ops

    ops = integer_ops(to_qdq_onnx(lenet, minmax_table, placement="all", bias="int32"))
    assert ops.get("QLinearConv") == 2
    assert ops.get("QGemm", 0) >= 2
    # a ReLU's input is quantized with the ReLU's scale (TensorRT fuses op + activation)
    pairs = _qdq_pairs(to_qdq_onnx(lenet, minmax_table, placement="all"))
    assert scale_to_bits(pairs["conv1"][0]) == scale_to_bits(minmax_table["relu1"])


def test_missing_and_zero_scales_stay_float_with_warning(lenet, minmax_table, caplog):
    table = CalibrationTable(minmax_table)
    del table["pool1"]
    table["relu3"] = 0.0
    with caplog.at_level(logging.WARNING, logger="kldiv.qdq"):
        q = to_qdq_onnx(lenet, table)
    pairs = _qdq_pairs(q)
    assert "pool1" not in pairs and "relu3" not in pairs and "input" in pairs
    text = caplog.text
    assert "pool1" in text and "not in the calibration table" in text
    assert "relu3" in text and "scale is 0" in text
    onnx.checker.check_model(q)


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -1.0])
def test_nonfinite_or_negative_scale_is_an_error(lenet, minmax_table, bad):
    table = CalibrationTable(minmax_table)
    table["pool1"] = bad
    with pytest.raises(QuantizationError, match="pool1"):
        to_qdq_onnx(lenet, table)


def test_bad_options_and_models(lenet, minmax_table, tmp_path):
    with pytest.raises(QuantizationError, match="placement"):
        to_qdq_onnx(lenet, minmax_table, placement="outputs")
    with pytest.raises(ModelError, match="nope.onnx"):
        to_qdq_onnx(tmp_path / "nope.onnx", minmax_table)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"TRT-100900-EntropyCalibration2\n")
    with pytest.raises(ModelError, match="bad.onnx"):
        to_qdq_onnx(bad, minmax_table)


def _constant_weights(model):
    """Move every initializer into a Constant node, as PaddlePaddle exports do."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    consts = [
        helper.make_node("Constant", [], [i.name], name=f"const_{i.name}", value=i)
        for i in m.graph.initializer
    ]
    del m.graph.initializer[:]
    nodes = consts + list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


def test_constant_node_weights_same_result(lenet, minmax_table, eval_x):
    x, _ = eval_x
    plain = _run(to_qdq_onnx(lenet, minmax_table), x)
    q = to_qdq_onnx(_constant_weights(lenet), minmax_table)
    onnx.checker.check_model(q)
    assert not any(n.op_type == "Constant" and "weight" in n.output[0] for n in q.graph.node)
    np.testing.assert_allclose(_run(q, x), plain, rtol=1e-5, atol=1e-5)


def test_old_opset_is_converted(lenet, minmax_table, eval_x):
    x, _ = eval_x
    old = onnx.ModelProto()
    old.CopyFrom(lenet)
    old.opset_import[0].version = 11  # LeNet's ops mean the same at opset 11
    onnx.checker.check_model(old)
    q = to_qdq_onnx(old, minmax_table)
    assert max(o.version for o in q.opset_import if o.domain in ("", "ai.onnx")) == 13
    np.testing.assert_allclose(_run(q, x), _run(to_qdq_onnx(lenet, minmax_table), x), atol=1e-5)


def test_exports_reexports_to_qdq_onnx():
    from kldiv import exports

    assert exports.to_qdq_onnx is to_qdq_onnx
