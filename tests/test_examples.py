"""The embedded LeNet example: shipped files, their API, and the script that made them."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from kldiv import examples
from kldiv.examples import (
    INPUT_NAME,
    OUTPUT_NAME,
    lenet_calibration_data,
    lenet_eval_data,
    lenet_heldout_accuracy,
    lenet_model_path,
)

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _run(path, batches):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run([OUTPUT_NAME], b)[0] for b in batches])


def test_shipped_files_are_small():
    here = lenet_model_path().parent
    total = sum(p.stat().st_size for p in here.iterdir() if p.suffix in {".onnx", ".npz"})
    assert total < 1_000_000


def test_model_is_valid_named_opset13_dynamic_batch():
    model = onnx.load(str(lenet_model_path()))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 13
    (inp,) = model.graph.input
    assert inp.name == INPUT_NAME
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")
    assert [d.dim_value for d in dims[1:]] == [1, 8, 8]
    assert [o.name for o in model.graph.output] == [OUTPUT_NAME]
    outputs = [o for n in model.graph.node for o in n.output]
    assert all(outputs) and len(set(outputs)) == len(outputs)
    assert {"conv1", "relu1", "pool1", "conv2", "fc1", "fc2"} <= set(outputs)


def test_data_shapes_and_batches():
    cal = lenet_calibration_data()
    assert len(cal) == 32
    assert all(set(b) == {INPUT_NAME} for b in cal)
    assert all(b[INPUT_NAME].shape == (8, 1, 8, 8) for b in cal)
    assert all(b[INPUT_NAME].dtype == np.float32 for b in cal)
    x = np.concatenate([b[INPUT_NAME] for b in cal])
    assert 0.0 <= x.min() and x.max() <= 1.0
    batches, labels = lenet_eval_data(batch_size=50)
    assert [len(b[INPUT_NAME]) for b in batches] == [50] * 7 + [10]
    assert labels.shape == (360,) and labels.dtype == np.int64
    assert set(labels.tolist()) == set(range(10))
    with pytest.raises(ValueError, match="batch_size"):
        lenet_calibration_data(batch_size=0)


def test_calibration_and_eval_sets_are_disjoint():
    cal = np.concatenate([b[INPUT_NAME] for b in lenet_calibration_data()])
    batches, _ = lenet_eval_data()
    ev = np.concatenate([b[INPUT_NAME] for b in batches])
    cal_rows = {r.tobytes() for r in cal.reshape(len(cal), -1)}
    # digits has a handful of exact duplicate images; allow at most a few collisions
    shared = sum(r.tobytes() in cal_rows for r in ev.reshape(len(ev), -1))
    assert shared <= 3


def test_onnxruntime_reproduces_recorded_accuracy():
    batches, labels = lenet_eval_data()
    logits = _run(lenet_model_path(), batches)
    acc = float((logits.argmax(1) == labels).mean())
    assert acc == pytest.approx(lenet_heldout_accuracy(), abs=1e-6)
    assert acc >= 0.95


def test_data_matches_scikit_learn_digits():
    from kldiv.examples.train_lenet import load_split

    split = load_split()
    batches, labels = lenet_eval_data()
    np.testing.assert_array_equal(np.concatenate([b[INPUT_NAME] for b in batches]), split["x_eval"])
    np.testing.assert_array_equal(labels, split["y_eval"])
    cal = np.concatenate([b[INPUT_NAME] for b in lenet_calibration_data()])
    np.testing.assert_array_equal(cal, split["x_cal"])


def test_build_onnx_graph_matches_shipped_structure():
    from kldiv.examples.train_lenet import build_onnx

    shipped = onnx.load(str(lenet_model_path()))
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in shipped.graph.initializer}
    rebuilt = build_onnx(weights)
    assert [(n.op_type, list(n.input), list(n.output)) for n in rebuilt.graph.node] == [
        (n.op_type, list(n.input), list(n.output)) for n in shipped.graph.node
    ]


@pytest.mark.slow
@pytest.mark.peers
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_training_script_retrains_to_the_same_accuracy(tmp_path):
    from kldiv.examples import train_lenet

    assert train_lenet.INPUT_NAME == examples.INPUT_NAME
    assert train_lenet.main(["--out-dir", str(tmp_path)]) == 0
    model = tmp_path / "lenet5_digits.onnx"
    batches, labels = lenet_eval_data()
    acc = float((_run(model, batches).argmax(1) == labels).mean())
    # torch on another CPU may round differently; the accuracy must stay put
    assert acc >= 0.95
    assert abs(acc - lenet_heldout_accuracy()) <= 0.02
    # existing files are kept without --force
    from kldiv.errors import OutputExistsError

    with pytest.raises(OutputExistsError):
        train_lenet.main(["--out-dir", str(tmp_path)])
