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


# --------------------------------------------------------------------------- per-output metrics
def _conv_map_model(scale=1.0):
    """A detector-like model: [N, 1, 4, 4] in, a [N, 1, 4, 4] map out (y = x * scale)."""
    w = numpy_helper.from_array(np.asarray(scale, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["map"])],
        "det",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("map", TensorProto.FLOAT, ["N", 1, 4, 4])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_per_output_metrics_against_numpy():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(20, 5)).astype(np.float32)
    w = np.array([1.0, 0.9, 1.1, 1.0, 0.5], np.float32)
    data = [{"x": x[:8]}, {"x": x[8:]}]
    r = evaluate(_scaled_identity(np.ones(5)), _scaled_identity(w), data, topk=(1, 3))
    a, b = x.astype(np.float64), (x * w).astype(np.float64)
    e = a - b
    m = r.outputs["y"]
    assert m.cosine == pytest.approx((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))
    assert m.sqnr_db == pytest.approx(10 * np.log10((a * a).sum() / (e * e).sum()))
    assert m.max_abs_error == pytest.approx(np.abs(e).max())
    assert m.mean_abs_error == pytest.approx(np.abs(e).mean())
    assert m.rel_l2 == pytest.approx(np.linalg.norm(e) / np.linalg.norm(a))
    assert m.elements == 100 and m.shape == (8, 5) and r.batches == 2
    assert r.classification.topk == (1, 3) and r.classification.classes == 5
    same = evaluate(_scaled_identity(np.ones(5)), _scaled_identity(np.ones(5)), data)
    assert same.outputs["y"].sqnr_db == float("inf") and same.outputs["y"].cosine == 1.0
    assert json.loads(json.dumps(same.to_dict()))["outputs"]["y"]["sqnr_db"] == "inf"


def test_classification_only_where_meaningful():
    rng = np.random.default_rng(4)
    maps = [{"x": rng.normal(size=(3, 1, 4, 4)).astype(np.float32)}]
    r = evaluate(_conv_map_model(), _conv_map_model(1.01), maps)
    assert r.classification is None and r.agreement == {} and "top-1" not in r.to_text()
    assert r.outputs["map"].rel_l2 == pytest.approx(0.01, rel=1e-4)
    with pytest.raises(DataSourceError, match="rank 4.*\\[N, classes\\]"):
        evaluate(_conv_map_model(), _conv_map_model(), maps, output="map")
    with pytest.raises(DataSourceError, match="rank 4"):
        evaluate(_conv_map_model(), _conv_map_model(), maps, labels=[0, 1, 2])
    # 4 classes: top-5 would always be 100 %, so it is not reported
    x = rng.normal(size=(6, 4)).astype(np.float32)
    r = evaluate(_scaled_identity(np.ones(4)), _scaled_identity(np.ones(4)), [{"x": x}])
    assert r.classification.topk == (1,) and r.classification.topk_skipped == (5,)
    assert "top-5 not shown" in r.to_text()


def test_labels_are_validated_before_the_run(tmp_path, monkeypatch):
    from kldiv.data import NpyFolder
    from kldiv.evaluate import check_labels

    x = np.random.default_rng(5).normal(size=(6, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    src = NpyFolder(tmp_path, input_name="x")

    def never(self):
        raise AssertionError("the data was read before the labels were checked")

    monkeypatch.setattr(NpyFolder, "__iter__", never)
    m = _scaled_identity(np.ones(4))
    with pytest.raises(DataSourceError, match="5 labels for 6 samples"):
        evaluate(m, m, src, [0, 1, 2, 3, 0])
    with pytest.raises(DataSourceError, match="label 2 is 4, but the scored output has 4 classes"):
        evaluate(m, m, src, [0, 1, 4, 3, 0, 1])
    with pytest.raises(DataSourceError, match="label 1 is -1"):
        check_labels([0, -1])
    with pytest.raises(DataSourceError, match="not a class index"):
        check_labels(np.array([0.0, 1.5]))
    np.testing.assert_array_equal(check_labels(np.array([2.0, 1.0], np.float32)), [2, 1])


# --------------------------------------------------------------------------- which tensor hurts
def _lenet_table():
    from kldiv.examples import lenet_calibration_data
    from kldiv.pipeline import calibrate

    return calibrate(lenet_model_path(), lenet_calibration_data())


def _one_layer_qdq(model, table, tensor):
    """Reference for rank_tensors: only ``tensor`` and the weighted layers reading it in INT8,
    built by to_qdq_onnx with every other weighted layer excluded.
    """
    from kldiv.qdq import QUANTIZABLE_OPS, to_qdq_onnx

    others = {n.name for n in model.graph.node
              if n.op_type in QUANTIZABLE_OPS and tensor not in n.input[:1]}
    return to_qdq_onnx(model, {tensor: table[tensor]}, placement="inputs", exclude=others,
                       check=False)


def test_rank_tensors_matches_one_tensor_quantized_by_hand():
    import onnxruntime as ort

    from kldiv.evaluate import rank_tensors
    from kldiv.qdq import to_qdq_onnx

    table = _lenet_table()
    fp32 = onnx.load(str(lenet_model_path()))
    qdq = to_qdq_onnx(fp32, table, placement="inputs")
    batches, _ = lenet_eval_data()
    batches = batches[:6]
    steps = []
    ranking = rank_tensors(fp32, qdq, batches, on_step=lambda d, t: steps.append((d, t)))
    quantized = qdq.metadata_props
    acts = next(p.value for p in quantized if p.key == "kldiv_qdq_activations").split(",")
    assert sorted(i.tensor for i in ranking.impacts) == sorted(acts)
    assert [i.noise for i in ranking.impacts] == sorted((i.noise for i in ranking.impacts),
                                                        reverse=True)
    assert steps and steps[-1][0] == steps[-1][1] and ranking.runs >= len(acts) + 2
    assert all(n.name for n in fp32.graph.node)  # the reference excludes layers by name
    s32 = ort.InferenceSession(fp32.SerializeToString(), providers=["CPUExecutionProvider"])
    for impact in ranking.impacts:
        ref = _one_layer_qdq(fp32, table, impact.tensor)
        sq = ort.InferenceSession(ref.SerializeToString(), providers=["CPUExecutionProvider"])
        see = saa = 0.0
        for b in batches:
            a = s32.run(None, b)[0].astype(np.float64)
            q = sq.run(None, b)[0].astype(np.float64)
            see += float(((a - q) ** 2).sum())
            saa += float((a * a).sum())
        assert impact.noise == pytest.approx(see / saa, rel=1e-4, abs=1e-12), impact.tensor
    # the suggestion is a prefix of the ranking, and its recovery is what it claims
    k = len(ranking.suggested)
    assert ranking.suggested == [i.tensor for i in ranking.impacts[:k]]
    everything = ranking.all_quantized
    if ranking.criterion == "output noise":
        expect = (everything.noise - ranking.suggested_result.noise) / everything.noise
        assert ranking.recovered == pytest.approx(expect)
    text = ranking.to_text()
    assert "suggested --exclude" in text and "one run per tensor" in text


def test_exclusions_resolve_and_reach_the_cache(tmp_path, capsys):
    from kldiv.cachefile import read_cache
    from kldiv.cli import main
    from kldiv.errors import QuantizationError
    from kldiv.evaluate import resolve_exclusions

    model = onnx.load(str(lenet_model_path()))
    assert "conv1" in resolve_exclusions(model, ["conv1"])
    relus = {n.output[0] for n in model.graph.node if n.op_type == "Relu"}
    assert relus <= resolve_exclusions(model, ["Relu"])
    with pytest.raises(QuantizationError, match="'conv9'.*did you mean"):
        resolve_exclusions(model, ["conv9"])
    cache = _minmax_cache(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    batches, labels = lenet_eval_data()
    np.save(data / "x.npy", np.concatenate([b[INPUT_NAME] for b in batches[:5]]))
    out = tmp_path / "kept.cache"
    argv = ["evaluate", str(lenet_model_path()), "--cache", str(cache), "--data", str(data),
            "--placement", "inputs", "--exclude", "pool1", "Relu", "--out", str(out),
            "--save-qdq", str(tmp_path / "q.onnx"), "--json"]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert "pool1" in doc["excluded"] and doc["cache_written"]["tensors"] < len(read_cache(cache))
    kept = read_cache(out)
    assert "pool1" not in kept and not relus & set(kept) and "conv1" in kept
    q = onnx.load(str(tmp_path / "q.onnx"))
    acts = next(p.value for p in q.metadata_props if p.key == "kldiv_qdq_activations")
    assert "pool1" not in acts.split(",")
    assert main([*argv[:-1], "--exclude", "nope_tensor", "--force"]) == 2
    assert "nope_tensor" in capsys.readouterr().err


def test_cli_per_tensor_json(tmp_path, capsys):
    from kldiv.cli import main

    cache = _minmax_cache(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    batches, labels = lenet_eval_data()
    np.save(data / "x.npy", np.concatenate([b[INPUT_NAME] for b in batches[:4]]))
    np.save(tmp_path / "y.npy", labels[:32])
    assert main(["evaluate", str(lenet_model_path()), "--cache", str(cache), "--data", str(data),
                 "--labels", str(tmp_path / "y.npy"), "--placement", "inputs", "--per-tensor",
                 "--suggest-max", "3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    ranking = doc["per_tensor"]
    assert ranking["impacts"] and len(ranking["suggested"]) <= 3
    assert "each of" in ranking["method"]
    assert doc["suggested_report"]["classification"]["fp32_accuracy"] is not None
    # wrong labels: exit 2 before the run
    np.save(tmp_path / "bad.npy", np.arange(33) % 10)
    assert main(["evaluate", str(lenet_model_path()), "--cache", str(cache), "--data", str(data),
                 "--labels", str(tmp_path / "bad.npy")]) == 2
    assert "33 labels for 32 samples" in capsys.readouterr().err


def test_one_session_per_model_and_integer_ops_from_its_graph(monkeypatch):
    """Each quantized model gets one session, which also writes the graph its integer ops are
    counted from (the counts of :func:`kldiv.evaluate.integer_ops`); an FP32 session passed
    in is reused as it is.
    """
    import kldiv.evaluate as ev
    from kldiv.qdq import to_qdq_onnx

    fp32 = onnx.load(str(lenet_model_path()))
    data, _ = lenet_eval_data()
    data = data[:2]
    names = [INPUT_NAME] + [o for n in fp32.graph.node for o in n.output]
    qdq = to_qdq_onnx(fp32, CalibrationTable.from_amaxes(
        {n: (1.0 if n == INPUT_NAME else 30.0) for n in names}), placement="all")
    expected = ev.integer_ops(qdq)
    assert expected  # onnxruntime makes integer ops of the Q/DQ LeNet
    built = []
    real = ev._session
    monkeypatch.setattr(ev, "_session", lambda m, **kw: built.append(m) or real(m, **kw))
    s32 = real(fp32)
    reports = ev.evaluate_many(s32, {"a": qdq, "b": qdq}, data)
    assert len(built) == 2  # the two quantized models; FP32 came as a session
    assert reports["a"].integer_ops == reports["b"].integer_ops == expected
    assert reports["a"].agreement == ev.evaluate(fp32, qdq, data).agreement
