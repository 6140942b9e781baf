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


# -- graphs built by hand: subgraphs, exact rewrites, residual Add, Concat ----------------------
def _conv(name, x, out, c_in, c_out, rng, k=3):
    w = numpy_helper.from_array(rng.standard_normal((c_out, c_in, k, k)).astype(np.float32) * 0.3,
                                f"{name}.w")
    b = numpy_helper.from_array(rng.standard_normal(c_out).astype(np.float32) * 0.1, f"{name}.b")
    node = helper.make_node("Conv", [x, w.name, b.name], [out], name=name, pads=[k // 2] * 4)
    return node, [w, b]


def _model(nodes, inits, inputs, outputs, opset=13):
    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _x(shape=("N", 2, 6, 6)):
    return helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(shape))


def _y(name="y", shape=("N", "C", "H", "W")):
    return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(shape))


def _sess(model, opt=True):
    so = ort.SessionOptions()
    if not opt:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _if_loop_model():
    """x -> Conv -> c; an If and a Loop whose bodies read c (an outer-scope value) -> y, z."""
    rng = np.random.default_rng(0)
    conv, inits = _conv("conv", "x", "c", 2, 3, rng)
    relu = helper.make_node("Relu", ["c"], ["then_out"], name="then_relu")
    neg = helper.make_node("Neg", ["c"], ["else_out"], name="else_neg")
    then_g = helper.make_graph([relu], "then", [], [_y("then_out", [1, 3, 6, 6])])
    else_g = helper.make_graph([neg], "else", [], [_y("else_out", [1, 3, 6, 6])])
    cond = helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])
    iff = helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then_g, else_branch=else_g)
    # Loop: v <- v + c, twice
    body_in = [helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
               helper.make_tensor_value_info("cin", onnx.TensorProto.BOOL, []),
               _y("v_in", [1, 3, 6, 6])]
    body_out = [helper.make_tensor_value_info("cout", onnx.TensorProto.BOOL, []),
                _y("v_out", [1, 3, 6, 6])]
    body = helper.make_graph(
        [helper.make_node("Identity", ["cin"], ["cout"], name="body_cond"),
         helper.make_node("Add", ["v_in", "c"], ["v_out"], name="body_add")],
        "body", body_in, body_out)
    trip = numpy_helper.from_array(np.array(2, np.int64), "trip")
    loop = helper.make_node("Loop", ["trip", "", "c0"], ["z"], name="loop", body=body)
    c0 = helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["c0"], name="conv0", pads=[1] * 4)
    nodes = [conv, iff, c0, loop]
    return _model(nodes, [*inits, trip], [_x(), cond], [_y("y", [1, 3, 6, 6]), _y("z", [1, 3, 6, 6])])


def test_subgraph_model_orders_outer_reads_and_passes_full_check():
    from kldiv.qdq import resolve_exclusions

    m = _if_loop_model()
    assert resolve_exclusions(m, ["then_out", "If"]) == {"then_out", "y"}
    x = np.random.default_rng(1).standard_normal((1, 2, 6, 6)).astype(np.float32)
    table = CalibrationTable.from_amaxes({"x": float(np.abs(x).max()), "c": 8.0, "c0": 8.0})
    for t, force in ((CalibrationTable(), True), (table, False)):  # empty table: weights only
        for placement in ("inputs", "all"):
            q = to_qdq_onnx(m, t, placement=placement, force=force)
            onnx.checker.check_model(q, full_check=True)
            names = [n.name for n in q.graph.node]
            assert names.index("conv") < names.index("if")  # the If reads c inside its branches
            assert names.index("conv0") < names.index("loop")
            for cond in (True, False):
                feed = {"x": x, "cond": np.array(cond)}
                ref, got = _sess(m).run(None, feed), _sess(q).run(None, feed)
                for a, b in zip(ref, got):
                    assert np.abs(a - b).max() <= 0.05 * np.abs(a).max()


def _act_model(act, **kw):
    """x -> Conv -> c -> ACT -> a -> Conv -> y, with the activation's constants."""
    rng = np.random.default_rng(2)
    c1, i1 = _conv("conv1", "x", "c", 2, 4, rng)
    c2, i2 = _conv("conv2", "a", "y", 4, 3, rng)
    extra = []
    if act == "Clip":
        lo, hi = kw.get("lo", 0.0), kw.get("hi", 1.3)
        extra = [numpy_helper.from_array(np.array(lo, np.float32), "lo"),
                 numpy_helper.from_array(np.array(hi, np.float32), "hi")]
        node = helper.make_node("Clip", ["c", "lo", "hi"], ["a"], name="act")
    else:
        node = helper.make_node(act, ["c"], ["a"], name="act")
    return _model([c1, node, c2], [*i1, *i2, *extra], [_x()], [_y()])


def _table_for(model, x, **override):
    acts = _activations(model, {"x": x})
    amax = {k: float(np.abs(v).max()) for k, v in acts.items()}
    amax.update(override)
    return CalibrationTable.from_amaxes(amax)


@pytest.mark.parametrize("act", ["Sigmoid", "HardSigmoid", "LeakyRelu", "Tanh"])
def test_all_placement_never_gives_an_inexact_activation_scale(act):
    """A tensor read only by Sigmoid & co stays in float (fused in TensorRT); before, it was
    quantized with the activation's output scale, which is wrong for these activations."""
    m = _act_model(act)
    x = np.random.default_rng(3).standard_normal((4, 2, 6, 6)).astype(np.float32)
    table = _table_for(m, x)
    q = to_qdq_onnx(m, table, placement="all")
    pairs = _qdq_pairs(q)
    assert "c" not in pairs and "a" in pairs
    for name, (scale, _) in pairs.items():
        assert scale_to_bits(scale) == scale_to_bits(table[name])  # each its own scale
    ref = _sess(m).run(None, {"x": x})[0]
    got = _sess(q).run(None, {"x": x})[0]
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()


@pytest.mark.parametrize(("act", "kw"), [("Relu", {}), ("Clip", {"hi": 1.3}), ("Clip", {"hi": 6.0})])
def test_relu_and_clip0_rewrite_is_exact(act, kw):
    """Q/DQ on the activation's input with the activation's output scale changes no value:
    the model equals the same model without that pair, bit for bit."""
    m = _act_model(act, **kw)
    x = np.random.default_rng(4).standard_normal((4, 2, 6, 6)).astype(np.float32) * 3
    # an output scale that does not put the Clip bound on the int8 grid
    table = _table_for(m, x, a=1.1 if act == "Clip" else 2.0)
    q = to_qdq_onnx(m, table, placement="all")
    pairs = _qdq_pairs(q)
    assert scale_to_bits(pairs["c"][0]) == scale_to_bits(table["a"])
    assert json_scale_from(q) == {"c": "a"}
    # the same graph with the pair on c removed
    bare = onnx.ModelProto()
    bare.CopyFrom(q)
    dq_c = next(n.output[0] for n in bare.graph.node
                if n.op_type == "DequantizeLinear" and n.input[0] == "c_quantized")
    for n in bare.graph.node:
        if n.name == "act":
            n.input[0] = "c"
    keep = [n for n in bare.graph.node if dq_c not in n.output and "c_quantized" not in n.output]
    del bare.graph.node[:]
    bare.graph.node.extend(keep)
    a = _sess(q, opt=False).run(None, {"x": x})[0]
    b = _sess(bare, opt=False).run(None, {"x": x})[0]
    np.testing.assert_array_equal(a, b)


def json_scale_from(model):
    import json

    return json.loads(next(p.value for p in model.metadata_props if p.key == "kldiv_qdq_scale_from"))


def test_clip_with_nonzero_lower_bound_is_not_rewritten():
    m = _act_model("Clip", lo=-1.0, hi=1.0)
    x = np.random.default_rng(5).standard_normal((2, 2, 6, 6)).astype(np.float32)
    q = to_qdq_onnx(m, _table_for(m, x), placement="all")
    assert "c" not in _qdq_pairs(q) and json_scale_from(q) == {}


def _residual_model():
    """x -> conv1 -> r1 (Relu) -> conv2 -> BN -> b ; Add(b, r1) -> s -> conv3 -> y."""
    rng = np.random.default_rng(6)
    c1, i1 = _conv("conv1", "x", "c1", 2, 4, rng)
    relu = helper.make_node("Relu", ["c1"], ["r1"], name="relu1")
    c2, i2 = _conv("conv2", "r1", "c2", 4, 4, rng)
    bn_p = [numpy_helper.from_array(v.astype(np.float32), f"bn.{k}") for k, v in
            {"s": rng.uniform(0.5, 2, 4), "b": rng.standard_normal(4), "m": rng.standard_normal(4),
             "v": rng.uniform(0.5, 2, 4)}.items()]
    bn = helper.make_node("BatchNormalization", ["c2", *[p.name for p in bn_p]], ["b"], name="bn")
    add = helper.make_node("Add", ["b", "r1"], ["s"], name="add")
    c3, i3 = _conv("conv3", "s", "y", 4, 2, rng)
    # a ConvNext-like Add: conv output plus a non-conv branch of that same output: no skip
    sig = helper.make_node("Sigmoid", ["y"], ["g"], name="sig")
    add2 = helper.make_node("Add", ["y", "g"], ["out"], name="add2")
    return _model([c1, relu, c2, bn, add, c3, sig, add2], [*i1, *i2, *bn_p, *i3], [_x()],
                  [_y("out")])


def test_residual_add_quantizes_the_skip_input():
    m = _residual_model()
    x = np.random.default_rng(7).standard_normal((2, 2, 6, 6)).astype(np.float32)
    table = _table_for(m, x)
    q = to_qdq_onnx(m, table)  # placement "inputs"
    producers = {o: n for n in q.graph.node for o in n.output}
    add = next(n for n in q.graph.node if n.name == "add")
    assert producers[add.input[1]].op_type == "DequantizeLinear"  # r1, the skip, quantized
    assert producers[add.input[0]].op_type == "BatchNormalization"  # the conv branch: float
    add2 = next(n for n in q.graph.node if n.name == "add2")
    assert all(producers[i].op_type != "DequantizeLinear" for i in add2.input)
    assert set(_qdq_pairs(q)) == {"x", "r1", "s"}
    ref = _sess(m).run(None, {"x": x})[0]
    assert np.abs(_sess(q).run(None, {"x": x})[0] - ref).max() <= 0.05 * np.abs(ref).max()


def test_concat_inputs_share_the_concat_scale_in_all_placement():
    rng = np.random.default_rng(8)
    c1, i1 = _conv("conv1", "x", "c1", 2, 3, rng)
    c2, i2 = _conv("conv2", "x", "c2", 2, 3, rng)
    cat = helper.make_node("Concat", ["c1", "c2"], ["cat"], name="cat", axis=1)
    c3, i3 = _conv("conv3", "cat", "y", 6, 2, rng)
    m = _model([c1, c2, cat, c3], [*i1, *i2, *i3], [_x()], [_y()])
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    table = _table_for(m, x)
    pairs = _qdq_pairs(to_qdq_onnx(m, table, placement="all"))
    for name in ("c1", "c2", "cat"):
        assert scale_to_bits(pairs[name][0]) == scale_to_bits(table["cat"])


def test_batchnorm_input_of_a_conv_stays_float_in_all_placement():
    """TensorRT folds BatchNormalization into the convolution: the tensor between them never
    exists; quantizing it per tensor loses channels whose range BN scales up."""
    m = _residual_model()
    x = np.random.default_rng(9).standard_normal((2, 2, 6, 6)).astype(np.float32)
    q = to_qdq_onnx(m, _table_for(m, x), placement="all")
    assert "c2" not in _qdq_pairs(q) and "b" in _qdq_pairs(q)


# -- exclusions ---------------------------------------------------------------------------------
def test_resolve_exclusions_by_tensor_node_and_op_type(lenet):
    from kldiv.qdq import resolve_exclusions

    assert resolve_exclusions(lenet, ["pool1"]) == {"pool1"}
    assert resolve_exclusions(lenet, ["fc1"]) == {"fc1"}  # node fc1 writes tensor fc1
    assert resolve_exclusions(lenet, ["Relu"]) == {"relu1", "relu2", "relu3", "relu4"}
    assert resolve_exclusions(lenet, ["fc3"]) == {"logits"}  # a node name: its output


def test_unknown_exclusion_is_an_error_with_close_names(lenet):
    from kldiv.errors import UnknownNameError
    from kldiv.qdq import resolve_exclusions

    with pytest.raises(UnknownNameError, match=r"'relu9'.*did you mean.*'relu1'"):
        resolve_exclusions(lenet, ["relu9"])
    with pytest.raises(UnknownNameError, match=r"no Sigmoid node \(its op types: Conv, "):
        to_qdq_onnx(lenet, CalibrationTable(), exclude=["Sigmoid"], force=True)
    assert issubclass(UnknownNameError, ValueError)


def test_excluded_tensors_stay_float_and_their_layers_unquantized(lenet, minmax_table):
    for placement in ("inputs", "all"):
        full = _qdq_pairs(to_qdq_onnx(lenet, minmax_table, placement=placement))
        q = to_qdq_onnx(lenet, minmax_table, placement=placement, exclude=["pool1", "Gemm"])
        onnx.checker.check_model(q, full_check=True)
        pairs = _qdq_pairs(q)
        assert "pool1" in full and "pool1" not in pairs
        inits = {i.name for i in q.graph.initializer}
        # conv2 reads the excluded pool1: it runs in float, weights too
        assert "conv2.weight" in inits and "conv2.weight_quantized" not in inits
        # every Gemm is excluded: float weights, no Q/DQ on their outputs
        assert {"fc1.weight", "fc2.weight", "fc3.weight"} <= inits
        assert not {"fc1", "fc2"} & set(pairs)
        assert "conv1.weight_quantized" in inits  # the rest is still quantized
        meta = {p.key: p.value for p in q.metadata_props}
        assert set(meta["kldiv_qdq_excluded"].split(",")) == {"pool1", "fc1", "fc2", "logits"}


def test_table_without_drops_excluded_names(lenet, minmax_table, tmp_path):
    from kldiv.cachefile import read_cache, write_cache
    from kldiv.qdq import resolve_exclusions

    names = resolve_exclusions(lenet, ["Relu", "pool1"])
    t = minmax_table.without(names)
    assert set(t) == set(minmax_table) - names and len(minmax_table) == len(t) + len(names)
    assert sorted(t.provenance["excluded"]) == sorted(names)
    assert all(t.bits(n) == minmax_table.bits(n) for n in t)
    write_cache(t, tmp_path / "t.cache")
    assert set(read_cache(tmp_path / "t.cache")) == set(t)


# -- coverage -----------------------------------------------------------------------------------
def test_coverage_counts_missing_and_unknown(lenet, minmax_table):
    from kldiv.qdq import table_coverage

    t = minmax_table.without(["relu3"])
    t["not_a_tensor"] = 0.5
    cov = table_coverage(lenet, t)
    assert "relu3" in cov.missing and cov.unknown == ["not_a_tensor"]
    assert len(cov.calibratable) == len(cov.covered) + len(cov.by_alias) + len(cov.missing)
    assert "relu3" in cov.to_text() and "not_a_tensor" in cov.to_text()
    assert table_coverage(lenet, t, exclude=["relu3"]).missing == []


def test_table_of_another_model_is_refused(lenet, minmax_table, caplog):
    from kldiv.errors import TableMismatchError

    foreign = CalibrationTable.from_amaxes({f"layer{i}": 1.0 for i in range(20)} | {"input": 1.0})
    with pytest.raises(TableMismatchError, match=r"covers 1 of the model's \d+ calibratable.*force"):
        to_qdq_onnx(lenet, foreign)
    other = minmax_table.copy()
    other.provenance["model_sha256"] = "0" * 64
    other.provenance["model"] = "other.onnx"
    with pytest.raises(TableMismatchError, match=r"another model \(other.onnx\)"):
        to_qdq_onnx(lenet, other)
    with caplog.at_level(logging.WARNING, logger="kldiv.qdq"):
        q = to_qdq_onnx(lenet, other, force=True)
    assert "applied anyway" in caplog.text and _qdq_pairs(q)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kldiv.qdq"):
        q = to_qdq_onnx(lenet, CalibrationTable({"pool1": minmax_table["pool1"]}), check=False)
    assert set(_qdq_pairs(q)) == {"pool1"} and "does not match" not in caplog.text


def test_own_calibration_is_accepted(lenet):
    from kldiv.pipeline import calibrate
    from kldiv.qdq import check_table

    table = calibrate(lenet_model_path(), lenet_calibration_data())
    cov = check_table(lenet_model_path(), table)
    assert cov.same_model is True and cov.fraction == 1.0
    assert check_table(lenet, table).same_model is True  # the same model as a ModelProto


def test_checker_failure_names_the_model_and_the_node(tmp_path):
    """float16 activations cannot be quantized at opset 13: a clear error before any run."""
    rng = np.random.default_rng(10)
    w = numpy_helper.from_array(rng.standard_normal((2, 2, 3, 3)).astype(np.float16), "w")
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1] * 4)
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT16, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT16, [1, 2, 4, 4])
    m = _model([conv], [w], [x], [y])
    path = tmp_path / "half.onnx"
    onnx.save(m, str(path))
    with pytest.raises(QuantizationError, match=r"half\.onnx.*x_QuantizeLinear.*exclude=\['x'\]"):
        to_qdq_onnx(path, CalibrationTable.from_amaxes({"x": 1.0, "y": 1.0}))


def test_weights_computed_from_constants_are_folded_and_quantized():
    """A Conv weight that is a Transpose of an initializer (TensorRT folds it) is stored as int8
    like any weight, and the float weight and its Transpose leave the graph."""
    rng = np.random.default_rng(11)
    w = rng.standard_normal((3, 3, 2, 4)).astype(np.float32)  # (kh, kw, C_in, C_out)
    w_init = numpy_helper.from_array(w, "w_hwio")
    tr = helper.make_node("Transpose", ["w_hwio"], ["w"], name="to_oihw", perm=[3, 2, 0, 1])
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1] * 4)
    m = _model([tr, conv], [w_init], [_x()], [_y()])
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    q = to_qdq_onnx(m, _table_for(m, x))
    onnx.checker.check_model(q, full_check=True)
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    assert "w_hwio" not in inits and all(n.op_type != "Transpose" for n in q.graph.node)
    oihw = w.transpose(3, 2, 0, 1)
    np.testing.assert_array_equal(
        inits["w_scale"], np.abs(oihw).reshape(4, -1).max(1).astype(np.float32) / np.float32(127)
    )
    assert inits["w_quantized"].dtype == np.int8
    ref = _sess(m).run(None, {"x": x})[0]
    assert np.abs(_sess(q).run(None, {"x": x})[0] - ref).max() <= 0.03 * np.abs(ref).max()


def test_clip0_input_keeps_float_when_a_concat_rescales_the_clip_output():
    """Clip(0, b)'s rewrite is exact only if the output's own pair follows; a Concat reading
    the output gives it the concatenation's scale instead, so the Clip input stays float."""
    rng = np.random.default_rng(12)
    c1, i1 = _conv("conv1", "x", "c", 2, 3, rng)
    lo, hi = (numpy_helper.from_array(np.array(v, np.float32), n) for v, n in ((0, "lo"), (1.3, "hi")))
    clip = helper.make_node("Clip", ["c", "lo", "hi"], ["a"], name="clip")
    c2, i2 = _conv("conv2", "x", "d", 2, 3, rng)
    cat = helper.make_node("Concat", ["a", "d"], ["cat"], name="cat", axis=1)
    c3, i3 = _conv("conv3", "cat", "y", 6, 2, rng)
    m = _model([c1, clip, c2, cat, c3], [*i1, lo, hi, *i2, *i3], [_x()], [_y()])
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    q = to_qdq_onnx(m, _table_for(m, x), placement="all")
    assert "c" not in _qdq_pairs(q)
    assert json_scale_from(q) == {"a": "cat", "d": "cat"}
