"""evaluate(): agreement/accuracy arithmetic, bad input, and the `kldiv evaluate` CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kldiv.errors import DataSourceError, ModelError
from kldiv.evaluate import evaluate, topk_hits
from kldiv.examples import INPUT_NAME, lenet_eval_data, lenet_model_path
from kldiv.scales import CalibrationTable

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
TensorProto, helper, numpy_helper = onnx.TensorProto, onnx.helper, onnx.numpy_helper


def _scaled_identity(scale_vec, name="scaled"):
    """y = x * w (elementwise): lets a test choose the 'quantized' model's scores exactly."""
    w = numpy_helper.from_array(np.asarray(scale_vec, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["y"])],
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", len(scale_vec)])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", len(scale_vec)])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_topk_hits_reference():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(200, 10))
    target = rng.integers(0, 10, size=200)
    for k in (1, 3, 5, 10):
        ranks = (scores > scores[np.arange(200), target][:, None]).sum(1)
        np.testing.assert_array_equal(topk_hits(scores, target, k), ranks < k)


def test_agreement_and_accuracy_against_hand_count():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 6)).astype(np.float32)
    w = np.array([1, 1, 1, 1, 1, 3], np.float32)  # boosts class 5 in the "quantized" model
    data = [{"x": x[i : i + 16]} for i in range(0, 64, 16)]
    labels = rng.integers(0, 6, size=64)
    r = evaluate(_scaled_identity(np.ones(6)), _scaled_identity(w), data, labels, topk=(1, 2))
    ref, q = x.argmax(1), (x * w).argmax(1)
    assert r.n == 64
    assert r.agreement[1] == pytest.approx((ref == q).mean())
    top2 = np.argsort(-(x * w), axis=1)[:, :2]
    assert r.agreement[2] == pytest.approx((top2 == ref[:, None]).any(1).mean())
    assert r.fp32_accuracy[1] == pytest.approx((ref == labels).mean())
    assert r.quantized_accuracy[1] == pytest.approx((q == labels).mean())
    assert r.max_abs_diff == pytest.approx(float(np.abs(x * w - x).max()), rel=1e-6)
    text = r.to_text()
    assert "top-1" in text and "agreement with FP32" in text and "accuracy" in text
    assert json.loads(json.dumps(r.to_dict()))["n"] == 64


def test_identical_models_agree_fully():
    batches, labels = lenet_eval_data()
    r = evaluate(lenet_model_path(), lenet_model_path(), batches, labels)
    assert r.agreement == {1: 1.0, 5: 1.0}
    assert r.fp32_accuracy == r.quantized_accuracy
    assert r.max_abs_diff == 0.0 and r.integer_ops == {}


def test_bad_input():
    batches, labels = lenet_eval_data()
    m = lenet_model_path()
    with pytest.raises(DataSourceError, match="labels for 360 samples"):
        evaluate(m, m, batches, labels[:10])
    with pytest.raises(DataSourceError, match="no samples"):
        evaluate(m, m, [])
    with pytest.raises(ModelError, match="no output"):
        evaluate(m, m, batches, output="nope")
    with pytest.raises(DataSourceError, match="batch 0: input 'input' has shape"):
        evaluate(m, m, [{INPUT_NAME: np.zeros((2, 3), np.float32)}])
    with pytest.raises(ModelError, match="does not exist"):
        evaluate("missing.onnx", m, batches)


def _minmax_cache(tmp_path):
    from kldiv.cachefile import write_cache

    # a crude but valid table: amax 1 for the input, 30 for everything else
    model = onnx.load(str(lenet_model_path()))
    names = [INPUT_NAME] + [o for n in model.graph.node for o in n.output]
    table = CalibrationTable.from_amaxes({n: (1.0 if n == INPUT_NAME else 30.0) for n in names})
    path = tmp_path / "lenet.cache"
    write_cache(table, path)
    return path


def test_cli_evaluate(tmp_path, capsys):
    from kldiv.cli import main

    cache = _minmax_cache(tmp_path)
    batches, labels = lenet_eval_data()
    np.save(tmp_path / "labels.npy", labels)
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "x.npy", np.concatenate([b[INPUT_NAME] for b in batches]))
    out = tmp_path / "q.onnx"
    argv = [
        "evaluate", str(lenet_model_path()), "--cache", str(cache), "--data", str(data),
        "--labels", str(tmp_path / "labels.npy"), "--batch-size", "40", "--save-qdq", str(out),
        "--json",
    ]  # fmt: skip
    assert main(argv) == 0
    reports = json.loads(capsys.readouterr().out)["reports"]
    assert [r["name"] for r in reports] == ["INT8 Q/DQ (inputs)", "INT8 Q/DQ (all)"]
    assert reports[1]["integer_ops"].get("QLinearConv") == 2
    report = reports[0]
    cls = report["classification"]
    assert report["n"] == 360 and cls["agreement"]["1"] > 0.9
    assert cls["fp32_accuracy"]["1"] >= 0.95
    onnx.checker.check_model(onnx.load(str(out)))
    # refuses to overwrite without --force; nothing else is written
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0


def test_cli_evaluate_bad_input(tmp_path, capsys):
    from kldiv.cli import main

    assert main(["evaluate", str(lenet_model_path()), "--data", str(tmp_path)]) == 2
    assert "--cache" in capsys.readouterr().err
    cache = _minmax_cache(tmp_path)
    assert main(["evaluate", str(tmp_path / "no.onnx"), "--cache", str(cache), "--data", "x"]) == 2
