"""Models with inputs that are not batched (recurrent state, a scalar) calibrate and evaluate.

The model is built here with onnx.helper, VAD-style: ``x [B, 16]``, ``state [2, B, 8]`` (batch
on axis 1), ``h [1, 1, 8]`` (fixed recurrent state) and a scalar ``sr`` (int64).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import kldiv
from kldiv.cli import main
from kldiv.errors import DataSourceError
from kldiv.runners import OnnxRuntimeRunner

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
TensorProto, helper, numpy_helper = onnx.TensorProto, onnx.helper, onnx.numpy_helper


def _vad_model(path):
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(16, 8)).astype(np.float32), "W"),
        numpy_helper.from_array(np.array([1, 8], np.int64), "hshape"),
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array(16000.0, np.float32), "sr_ref"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Gather", ["state", "zero"], ["s0"], axis=0),  # [B, 8]
        helper.make_node("Reshape", ["h", "hshape"], ["hh"]),  # [1, 8]
        helper.make_node("Add", ["xw", "s0"], ["z0"]),
        helper.make_node("Add", ["z0", "hh"], ["z1"]),
        helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["srf", "sr_ref"], ["gain"]),
        helper.make_node("Mul", ["z1", "gain"], ["z2"]),
        helper.make_node("Relu", ["z2"], ["y"]),
        helper.make_node("Tanh", ["hh"], ["hn"]),
    ]
    graph = helper.make_graph(
        nodes, "vad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 16]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "B", 8]),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 1, 8]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 8]),
         helper.make_tensor_value_info("hn", TensorProto.FLOAT, [1, 8])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _batches(sizes=(5, 3), seed=1):
    rng = np.random.default_rng(seed)
    return [
        {"x": rng.normal(size=(n, 16)).astype(np.float32),
         "state": rng.normal(size=(2, n, 8)).astype(np.float32),
         "h": rng.normal(size=(1, 1, 8)).astype(np.float32),
         "sr": np.array(16000, np.int64)}
        for n in sizes
    ]


@pytest.fixture()
def vad(tmp_path):
    return _vad_model(tmp_path / "vad.onnx")


def test_runner_infers_batch_axes_and_feeds_state_as_given(vad):
    runner = OnnxRuntimeRunner(vad)
    assert runner.batch_axes == {"x": 0, "state": 1, "h": None, "sr": None}
    batch = _batches((5,))[0]
    feed = runner.prepare(batch)
    assert runner.samples(feed) == 5
    acts = runner.run(feed)
    ref = ort.InferenceSession(str(vad), providers=["CPUExecutionProvider"]).run(["y"], batch)[0]
    np.testing.assert_array_equal(acts["y"], ref)
    # a wrong declaration gives the error that names the fix
    wrong = OnnxRuntimeRunner(vad, batch_axes={"state": 0, "h": 0})
    with pytest.raises(DataSourceError, match="disagree on the batch size.*--batch-axis NAME=none"):
        wrong.prepare(batch)


def test_calibrate_and_rebatch_a_model_with_state_inputs(vad, tmp_path):
    batches = _batches((5, 3))
    table = kldiv.calibrate(vad, batches, batch_size=2).table
    assert {"x", "state", "h", "y", "z2"} <= set(table)
    collector = kldiv.collect_histograms(vad, batches, batch_size=2)
    assert collector.meta["samples"] == 8 and collector.meta["batches"] == 4
    # the re-cut batches feed the same samples: x's histogram absmax over all samples
    assert collector.absmax("x") == pytest.approx(
        max(float(np.abs(b["x"]).max()) for b in batches))
    with pytest.raises(DataSourceError, match=r"state=3.*rank 3"):
        kldiv.calibrate(vad, batches, batch_axes=["state=3"])


def test_cli_calibrate_and_evaluate_with_state_inputs(vad, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for i, b in enumerate(_batches((5, 3, 4))):
        np.savez(data / f"batch{i}.npz", **b)
    cache = tmp_path / "vad.cache"
    assert main(["calibrate", str(vad), "--data", str(data), "--batch-size", "4",
                 "--out", str(cache), "-q"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(vad), "--cache", str(cache), "--data", str(data),
                 "--batch-size", "3", "--placement", "inputs", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    report = doc["reports"][0]
    assert report["n"] == 12 and report["batches"] == 4
    assert set(report["outputs"]) == {"y", "hn"}
    assert report["outputs"]["hn"]["shape"] == [1, 8]
    assert 0.9 < report["outputs"]["y"]["cosine"] <= 1.0
    # a batch axis that does not exist, or a name that is no input: exit 2 before the run
    assert main(["evaluate", str(vad), "--cache", str(cache), "--data", str(data),
                 "--batch-axis", "state=3"]) == 2
    assert "input 'state' has rank 3" in capsys.readouterr().err
    assert main(["calibrate", str(vad), "--data", str(data), "--batch-axis", "hidden=0",
                 "--out", str(tmp_path / "x.cache")]) == 2
    assert "not inputs of the model" in capsys.readouterr().err
