"""OnnxRuntimeRunner: which tensors, their values (vs NumPy), opsets, batching, bad input."""

from __future__ import annotations

import logging

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from kldiv.errors import DataSourceError, ModelError  # noqa: E402
from kldiv.runners import OnnxRuntimeRunner, calibration_tensor_names  # noqa: E402

RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((4, 5)).astype(np.float32)
B1 = RNG.standard_normal(5).astype(np.float32)
W2 = RNG.standard_normal((5, 3)).astype(np.float32)


def _ir_for(opset: int) -> int:
    return {11: 6, 12: 7, 13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10}[opset]


def mlp(opset: int = 13, batch: int | str = "N", *, old_style_inputs: bool = False):
    """x -> MatMul(W1 as Constant, scaled by 2 in-graph) + B1 -> Relu -> MatMul(W2) -> y.

    W1 lives in a Constant node and is multiplied by an initializer (a constant-only
    subgraph, as PaddlePaddle exports), then a Shape/Cast branch makes a float tensor from a
    shape, and an ArgMax output is integer.
    """
    nodes = [
        helper.make_node("Constant", [], ["w1_raw"], value=numpy_helper.from_array(W1, "w1")),
        helper.make_node("Mul", ["w1_raw", "two"], ["w1"]),
        helper.make_node("MatMul", ["x", "w1"], ["mm1"]),
        helper.make_node("Add", ["mm1", "b1"], ["add1"]),
        helper.make_node("Relu", ["add1"], ["relu1"]),
        helper.make_node("MatMul", ["relu1", "w2"], ["y"]),
        helper.make_node("Shape", ["y"], ["y_shape"]),
        helper.make_node("Cast", ["y_shape"], ["y_shape_f"], to=TensorProto.FLOAT),
        helper.make_node("ArgMax", ["y"], ["label"], axis=1, keepdims=0),
    ]
    inits = [
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(B1, "b1"),
        numpy_helper.from_array(W2, "w2"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])]
    if old_style_inputs:  # IR < 4 exporters list initializers as graph inputs
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(
        nodes, "mlp", inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3]),
         helper.make_tensor_value_info("label", TensorProto.INT64, [batch])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=_ir_for(opset)
    )
    onnx.checker.check_model(model)
    return model


def mlp_reference(x: np.ndarray) -> dict[str, np.ndarray]:
    mm1 = x @ (W1 * 2)
    add1 = mm1 + B1
    relu1 = np.maximum(add1, 0)
    y = relu1 @ W2
    return {"x": x, "mm1": mm1, "add1": add1, "relu1": relu1, "y": y,
            "y_shape_f": np.array(y.shape, np.float32)}


@pytest.mark.parametrize("opset", [11, 12, 13, 17, 21])
def test_tensors_and_values_match_numpy(opset):
    runner = OnnxRuntimeRunner(mlp(opset), graph_optimization_level="all")
    assert runner.tensor_names == ["x", "mm1", "add1", "relu1", "y", "y_shape_f"]
    x = RNG.standard_normal((7, 4)).astype(np.float32)
    (acts,) = list(runner.iter_activations([{"x": x}]))
    ref = mlp_reference(x)
    assert list(acts) == list(ref)  # network order; no weights, no ints
    for name in ref:
        np.testing.assert_allclose(acts[name], ref[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_callers_model_proto_is_left_as_it_was():
    model = mlp()
    before = model.SerializeToString()
    runner = OnnxRuntimeRunner(model)
    assert model.SerializeToString() == before  # the added outputs were taken off again
    assert [o.name for o in model.graph.output] == ["y", "label"]
    session_outputs = {o.name for o in runner.session.get_outputs()}
    assert session_outputs == {"label", *runner.tensor_names} - {"x"}


def test_old_style_initializer_inputs_are_not_inputs():
    runner = OnnxRuntimeRunner(mlp(11, old_style_inputs=True))
    assert [s.name for s in runner.input_specs] == ["x"]
    assert "two" not in runner.tensor_names and "w2" not in runner.tensor_names


def test_include_constants():
    _, outputs, _ = calibration_tensor_names(mlp(), include_constants=True)
    assert "w1" in outputs and "w1_raw" in outputs
    _, outputs, _ = calibration_tensor_names(mlp())
    assert "w1" not in outputs and "w1_raw" not in outputs


@pytest.mark.parametrize("level", ["disable", "basic", "extended", "all"])
def test_optimization_levels_keep_every_tensor(level):
    """Conv+BatchNorm+Relu would be fused; requested outputs must survive with the same values."""
    c = 3
    w = RNG.standard_normal((c, 2, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["conv", "s", "b", "m", "v"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["relu"]),
    ]
    inits = [numpy_helper.from_array(w, "w")] + [
        numpy_helper.from_array(RNG.uniform(0.5, 1.5, c).astype(np.float32), n)
        for n in ("s", "b", "m", "v")
    ]
    graph = helper.make_graph(
        nodes, "cbr", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])],
        [helper.make_tensor_value_info("relu", TensorProto.FLOAT, None)], initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    x = RNG.standard_normal((2, 2, 5, 5)).astype(np.float32)
    ref = OnnxRuntimeRunner(model, graph_optimization_level="disable").run({"x": x})
    got = OnnxRuntimeRunner(model, graph_optimization_level=level).run({"x": x})
    assert list(got) == ["x", "conv", "bn", "relu"]
    for name in ref:
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-5)


def test_if_subgraph_tensors_not_collected_and_logged(caplog):
    then_g = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["inner_neg"]),
         helper.make_node("Abs", ["inner_neg"], ["then_out"])],
        "then", [], [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, None)],
    )
    else_g = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["else_out"])],
        "else", [], [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, None)],
    )
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["out"], then_branch=then_g, else_branch=else_g),
    ]
    graph = helper.make_graph(
        nodes, "iff", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.array(0, np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)], ir_version=7)
    with caplog.at_level(logging.WARNING, logger="kldiv.runners"):
        runner = OnnxRuntimeRunner(model)
    assert "3 tensors inside If/Loop/Scan" in caplog.text
    assert runner.tensor_names == ["x", "s", "out"]
    acts = runner.run({"x": np.array([[1, 2]], np.float32)})
    np.testing.assert_array_equal(acts["out"], [[1, 2]])


def test_fixed_batch_is_split_and_checked():
    runner = OnnxRuntimeRunner(mlp(batch=2))
    assert runner.input_specs[0].batch_dim == 2
    x = RNG.standard_normal((6, 4)).astype(np.float32)
    acts = list(runner.iter_activations([x]))
    assert [a["y"].shape for a in acts] == [(2, 3)] * 3
    np.testing.assert_allclose(np.concatenate([a["y"] for a in acts]),
                               mlp_reference(x)["y"], rtol=1e-5, atol=1e-5)
    with pytest.raises(DataSourceError, match="batch 0.*multiple of 2"):
        list(runner.iter_activations([x[:3]]))


def test_lazy_one_batch_at_a_time():
    runner = OnnxRuntimeRunner(mlp())
    pulled = []

    def source():
        for i in range(4):
            pulled.append(i)
            yield {"x": np.full((2, 4), i, np.float32)}

    for i, acts in enumerate(runner.iter_activations(source())):
        assert pulled == list(range(i + 1))
        assert float(acts["x"][0, 0]) == i


def test_input_checks_name_batch_and_input():
    runner = OnnxRuntimeRunner(mlp())
    with pytest.raises(DataSourceError, match=r"batch 3: .*inputs are \['x'\].*missing \['x'\]"):
        runner.prepare({"z": np.ones((1, 4), np.float32)}, index=3)
    with pytest.raises(DataSourceError, match="axis 1: 5 != 4"):
        runner.prepare(np.ones((2, 5), np.float32))
    with pytest.raises(DataSourceError, match="rank 2"):
        runner.prepare(np.ones((2, 2, 4), np.float32))
    with pytest.raises(DataSourceError, match="dtype int64"):
        runner.prepare(np.ones((2, 4), np.int64))
    feed = runner.prepare(np.ones((2, 4), np.float64))  # float64 is cast
    assert feed["x"].dtype == np.float32
    assert runner.prepare(np.ones(4, np.float32))["x"].shape == (1, 4)  # one sample


def test_bad_models(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        OnnxRuntimeRunner(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(ModelError, match="junk.onnx"):
        OnnxRuntimeRunner(junk)
    bad = mlp()
    bad.graph.node[2].op_type = "NoSuchOp"
    with pytest.raises(ModelError, match="onnxruntime cannot load"):
        OnnxRuntimeRunner(bad)


@pytest.mark.parametrize(
    "form", ["external-data", "textproto", ".pbtxt", ".prototxt", ".onnxtxt", ".onnxjson"]
)
@pytest.mark.filterwarnings("ignore:The onnxtxt format is experimental")
def test_load_model_reads_external_data_and_text_models(tmp_path, form):
    """load_model parses the bytes it hashed; external weights and text formats still load."""
    import hashlib

    from kldiv.runners import load_model

    model = mlp()
    if form == "external-data":
        path = tmp_path / "m.onnx"
        onnx.save_model(model, str(path), save_as_external_data=True,
                        all_tensors_to_one_file=True, location="m.weights", size_threshold=0)
        assert (tmp_path / "m.weights").stat().st_size > 0
    else:  # every suffix onnx.save writes as text: textproto, JSON, or ONNX text syntax
        path = tmp_path / ("m.txtpb" if form == "textproto" else f"m{form}")
        onnx.save_model(model, str(path))
        assert path.read_text().lstrip().startswith(("ir_version", "#", "{", "<"))
    proto, label, sha = load_model(path)
    assert label == str(path)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    got = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    # a fresh copy: saving with external data moved `model`'s weights out to the file
    want = {t.name: numpy_helper.to_array(t) for t in mlp().graph.initializer}
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    runner = OnnxRuntimeRunner(path)  # and onnxruntime runs what was loaded
    assert runner.tensor_names
