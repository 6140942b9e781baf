"""Reshape/Transpose/... outputs take their source's histogram instead of being filled again."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from kldiv.collect import HistogramCollector  # noqa: E402
from kldiv.pipeline import calibrate, collect_histograms  # noqa: E402
from kldiv.runners import OnnxRuntimeRunner, value_aliases  # noqa: E402


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([0, -1], np.int64), "shape")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    table = numpy_helper.from_array(rng.standard_normal((2, 3)).astype(np.float32), "table")
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["x_flat"]),  # alias of a graph input
        helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["conv"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["t", "shape"], ["r"]),  # chain: r -> t -> conv
        helper.make_node("Relu", ["r"], ["relu"]),  # not value-preserving
        helper.make_node("Unsqueeze", ["relu", "axes"], ["u"]),
        helper.make_node("Squeeze", ["u", "axes"], ["s"]),
        helper.make_node("Flatten", ["s"], ["f"]),
        helper.make_node("Identity", ["f"], ["out"]),
        helper.make_node("Reshape", ["table", "shape"], ["const_r"]),  # weights only: skipped
        helper.make_node("Identity", ["const_r"], ["const_out"]),
    ]
    graph = helper.make_graph(
        nodes, "aliases",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", "D"]),
         helper.make_tensor_value_info("x_flat", TensorProto.FLOAT, ["N", "E"]),
         helper.make_tensor_value_info("const_out", TensorProto.FLOAT, [2, 3])],
        initializer=[w, shape, axes, table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    onnx.checker.check_model(model)
    return model


def _batches(n: int = 5) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    # growing scales, so the pow2 ranges grow during the run (aliases must follow)
    return [{"x": (rng.standard_normal((2, 4, 6, 6)) * 2.0**k).astype(np.float32)}
            for k in range(n)]


def test_aliases_follow_chains_to_collected_sources_only():
    model = _model()
    runner = OnnxRuntimeRunner(model)
    assert value_aliases(model, runner.network_order) == {
        "x_flat": "x", "t": "conv", "r": "conv", "u": "relu", "s": "relu", "f": "relu",
        "out": "relu",
    }
    assert "const_r" not in runner.network_order  # computed from weights: not collected


def test_runner_leaves_aliases_out_only_when_asked():
    model = _model()
    feed = _batches(1)[0]
    everything = OnnxRuntimeRunner(model).run(feed)
    lean = OnnxRuntimeRunner(model, fetch_aliases=False)
    acts = lean.run(feed)
    assert set(everything) - set(acts) == set(lean.value_aliases)
    for name, source in lean.value_aliases.items():  # the premise: same values, rearranged
        np.testing.assert_array_equal(np.sort(everything[name], axis=None),
                                      np.sort(everything[source], axis=None))


@pytest.mark.parametrize("range_policy", ["pow2", "append"])
def test_aliased_histograms_equal_observing_every_tensor(range_policy):
    model = _model()
    batches = _batches()
    runner = OnnxRuntimeRunner(model)  # fetches everything
    direct = HistogramCollector(range_policy=range_policy)
    for i, feed in enumerate(batches):
        direct.observe(runner.run(feed), batch=i)
    got = collect_histograms(model, batches, range_policy=range_policy)
    assert got.names == direct.names  # network order, aliases in place
    for name in direct.names:
        assert got[name] == direct[name], name
        assert got.absmax(name) == direct.absmax(name), name
    assert got.graph.value_aliases["out"] == "relu"
    # and the scales written are the same as for the tensors they copy
    table = calibrate(model, batches).table
    assert table.bits("r") == table.bits("t") == table.bits("conv")
    assert table.bits("out") == table.bits("relu")
    assert list(table.scales()) == got.names
