"""Q/DQ export of every real model in the test suite: the checker, onnxruntime, agreement.

- the embedded LeNet-5 example, calibrated by kldiv;
- sampleINT8's MNIST LeNet (the Caffe model TensorRT calibrated) with the **cache TensorRT 7.0
  wrote** for it, on MNIST test images;
- PP-OCR det / rec / cls from the rapidocr_onnxruntime wheel (PaddlePaddle exports: weights in
  ``Constant`` nodes, opset 11/12, HardSigmoid/Sigmoid/Clip, residual Adds, Concat, attention
  MatMuls), with max-|x| tables from kldiv on rendered text lines.

Each export must pass ``onnx.checker.check_model(full_check=True)`` and run in onnxruntime, and
every Q/DQ pair must carry its tensor's own scale unless the rewrite is one of the exact ones.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from kldiv.qdq import table_coverage, to_qdq_onnx
from kldiv.scales import scale_to_bits

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
numpy_helper = onnx.numpy_helper

PLACEMENTS = ("inputs", "all")


def _session(model):
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _clip_min_zero(node, consts):
    if len(node.input) > 1 and node.input[1] in consts:
        return float(consts[node.input[1]].reshape(())) == 0.0
    return False


def assert_own_scales(fp32, qdq, table):
    """Every QuantizeLinear on T uses table[T], or, where the export says it used another
    entry, T is read only by that ReLU / Clip(0, b) / Concat, or only rearranges it."""
    from kldiv.runners import value_aliases

    target = max(o.version for o in qdq.opset_import if o.domain in ("", "ai.onnx"))
    if max(o.version for o in fp32.opset_import if o.domain in ("", "ai.onnx")) < target:
        fp32 = onnx.version_converter.convert_version(fp32, target)  # as the export did
    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    consts = {i.name: numpy_helper.to_array(i) for i in fp32.graph.initializer}
    for n in fp32.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    meta = {p.key: p.value for p in qdq.metadata_props}
    scale_from = json.loads(meta["kldiv_qdq_scale_from"])
    readers: dict[str, list] = {}
    for n in fp32.graph.node:
        for i in dict.fromkeys(n.input):
            readers.setdefault(i, []).append(n)
    names = {o for n in fp32.graph.node for o in n.output} | {i.name for i in fp32.graph.input}
    aliases = value_aliases(fp32, names)
    checked = 0
    for node in qdq.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in names:
            continue
        tensor, scale = node.input[0], inits[node.input[1]]
        src = scale_from.get(tensor, tensor)
        assert scale_to_bits(scale) == scale_to_bits(table[src]), tensor
        if src != tensor:
            users = readers[tensor]
            exact = (
                len(users) == 1
                and users[0].output[0] == src
                and (users[0].op_type in ("Relu", "Concat")
                     or (users[0].op_type == "Clip" and _clip_min_zero(users[0], consts)))
            ) or aliases.get(tensor) == src  # fmt: skip
            assert exact, f"{tensor} quantized with {src}'s scale by an inexact rewrite"
        checked += 1
    assert checked == len(meta["kldiv_qdq_activations"].split(","))
    return checked


def _agreement(ref, out):
    a = ref.reshape(len(ref), -1).astype(np.float64)
    b = out.reshape(len(out), -1).astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min()), float((ref.argmax(-1) == out.argmax(-1)).mean())


# -- LeNet, embedded example ---------------------------------------------------------------------
def test_lenet_example_exports_checks_and_agrees():
    from kldiv.examples import (
        INPUT_NAME,
        lenet_calibration_data,
        lenet_eval_data,
        lenet_model_path,
    )
    from kldiv.pipeline import calibrate

    path = lenet_model_path()
    table = calibrate(path, lenet_calibration_data())
    batches, labels = lenet_eval_data()
    x = np.concatenate([b[INPUT_NAME] for b in batches])
    ref = _session(path).run(None, {INPUT_NAME: x})[0]
    fp32 = onnx.load(str(path))
    for placement in PLACEMENTS:
        q = to_qdq_onnx(path, table, placement=placement)
        onnx.checker.check_model(q, full_check=True)
        assert assert_own_scales(fp32, q, table) >= 5
        out = _session(q).run(None, {INPUT_NAME: x})[0]
        assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.99
        assert (out.argmax(1) == labels).mean() >= 0.97


# -- sampleINT8 MNIST LeNet with TensorRT's own cache -------------------------------------------
@pytest.fixture(scope="module")
def sampleint8(trt_caches):
    folder = trt_caches.parent / "conformance" / "sampleint8"
    cache = trt_caches / "sampleint8-mnist-trt7000.cache"
    if not (folder / "mnist_lenet.onnx").is_file() or not cache.is_file():
        pytest.skip(f"sampleINT8 fixtures not found under {folder}; set KLDIV_FIXTURES")
    return folder, cache


def test_sampleint8_lenet_with_tensorrt_cache(sampleint8):
    from kldiv.cachefile import read_cache

    folder, cache_path = sampleint8
    model = folder / "mnist_lenet.onnx"
    table = read_cache(cache_path)
    cov = table_coverage(model, table)
    # TensorRT's cache has 8 entries; pool2_flat only flattens pool2; ip1_fc is the pre-ReLU
    # blob Caffe's in-place ReLU never exposed
    assert cov.missing == ["ip1_fc"] and cov.by_alias == {"pool2_flat": "pool2"}
    assert cov.unknown == [] and cov.fraction == 0.9
    with np.load(folder / "mnist_test.npz") as f:
        x = f["images"][:1000].astype(np.float32) / np.float32(255)
        y = f["labels"][:1000]
    fp32 = onnx.load(str(model))
    name = fp32.graph.input[0].name
    ref = _session(model).run(None, {name: x})[0]
    acc32 = (ref.argmax(1) == y).mean()
    for placement in PLACEMENTS:
        q = to_qdq_onnx(model, table, placement=placement)
        onnx.checker.check_model(q, full_check=True)
        assert_own_scales(fp32, q, table)
        meta = {p.key: p.value for p in q.metadata_props}
        acts = set(meta["kldiv_qdq_activations"].split(","))
        assert {"data", "pool1", "pool2_flat", "ip1"} <= acts  # inputs of every conv / FC
        if placement == "all":
            assert json.loads(meta["kldiv_qdq_scale_from"]) == {
                "pool2_flat": "pool2", "ip1_fc": "ip1"}  # fmt: skip
        out = _session(q).run(None, {name: x})[0]
        assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.995
        assert abs((out.argmax(1) == y).mean() - acc32) <= 0.005


# -- PP-OCR det / rec / cls ----------------------------------------------------------------------
rapidocr = pytest.importorskip(
    "rapidocr_onnxruntime", reason="rapidocr_onnxruntime (PP-OCR ONNX models) is not installed"
)

OCR = {  # kind -> (H, W), mean, std (PP-OCR's own preprocessing)
    "det": ((96, 320), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "rec": ((48, 320), (0.5,) * 3, (0.5,) * 3),
    "cls": ((48, 192), (0.5,) * 3, (0.5,) * 3),
}
WORDS = ["kldiv: 2048 bins", "TensorRT INT8 cache", "KL(P || Q) = 0.031", "PP-OCR det/rec/cls"]
# lowest cosine similarity of any sample's output with FP32 (max-|x| tables, 4 text lines).
# Measured: det 0.954 / 0.961 (inputs / all), rec 0.918 / 0.727, cls 0.913 / 0.989; giving
# Sigmoid/HardSigmoid inputs their activation's output scale and quantizing conv outputs
# before their BatchNormalization drops "all" to det 0.547, rec 0.528
MIN_COSINE = {"det": 0.9, "rec": 0.65, "cls": 0.85}


def _ocr_inputs(kind):
    from PIL import Image, ImageDraw, ImageFont

    (h, w), mean, std = OCR[kind]
    font = ImageFont.load_default(size=26)
    out = []
    for i, word in enumerate(WORDS):
        img = Image.new("RGB", (400, 64), (255, 255, 240 - 20 * i))
        ImageDraw.Draw(img).text((12, 16), word, fill=(10 * i, 0, 0), font=font)
        out.append(np.asarray(img.resize((w, h)), dtype=np.float32).transpose(2, 0, 1) / 255)
    x = (np.stack(out) - np.reshape(mean, (3, 1, 1))) / np.reshape(std, (3, 1, 1))
    return x.astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(OCR))
def test_pp_ocr_exports_check_and_run(kind, caplog):
    pytest.importorskip("PIL")
    from kldiv.pipeline import calibrate

    found = sorted((Path(rapidocr.__file__).parent / "models").glob(f"*_{kind}_infer.onnx"))
    if not found:
        pytest.skip(f"no *_{kind}_infer.onnx in the rapidocr wheel")
    path = found[0]
    x = _ocr_inputs(kind)
    table = calibrate(path, [{"x": x[:2]}, {"x": x[2:]}], method="minmax")
    fp32 = onnx.load(str(path))
    ref = _session(path).run(None, {"x": x})[0]
    for placement in PLACEMENTS:
        with caplog.at_level(logging.WARNING, logger="kldiv.qdq"):
            q = to_qdq_onnx(path, table, placement=placement)
        onnx.checker.check_model(q, full_check=True)
        assert max(o.version for o in q.opset_import if o.domain in ("", "ai.onnx")) >= 13
        n = assert_own_scales(fp32, q, table)
        assert n > 40
        meta = {p.key: p.value for p in q.metadata_props}
        assert len(meta["kldiv_qdq_weights"].split(",")) > 20  # Constant-node weights, as int8
        out = _session(q).run(None, {"x": x})[0]
        assert out.shape == ref.shape and np.isfinite(out).all()
        cos, _ = _agreement(ref, out)
        assert cos >= MIN_COSINE[kind], (placement, cos)
    # the model's If-free graph has HardSigmoid/Sigmoid behind convolutions: never quantized
    # with the activation's scale (the rewrite that took a recognizer from 0.97 to 0.22)
    q = to_qdq_onnx(path, table, placement="all")
    scale_from = json.loads(next(p.value for p in q.metadata_props
                                 if p.key == "kldiv_qdq_scale_from"))
    readers = {i: n.op_type for n in fp32.graph.node for i in n.input}
    assert not {t for t in scale_from if readers.get(t) in ("Sigmoid", "HardSigmoid")}


def test_resnet50_structure_quantizes_each_shortcut():
    """onnx's structure-only ResNet-50 (weights from ConstantOfShape): every residual ``Sum``
    gets exactly one quantized input, the shortcut — the identity (a ReLU output) or the
    downsampling convolution, never the three-convolution main branch."""
    path = Path(onnx.__file__).parent / "backend/test/data/light/light_resnet50.onnx"
    if not path.is_file():
        pytest.skip(f"{path} is not in this onnx wheel")
    from kldiv.scales import CalibrationTable

    m = onnx.load(str(path))
    names = [i.name for i in m.graph.input] + [o for n in m.graph.node for o in n.output]
    q = to_qdq_onnx(m, CalibrationTable.from_amaxes({n: 4.0 for n in names}), force=True)
    onnx.checker.check_model(q, full_check=True)
    producer = {o: n for n in m.graph.node for o in n.output}
    readers: dict[str, int] = {}
    for n in m.graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1

    def convs_to_fork(t):
        """Convolutions on the way back from ``t`` to the tensor the two branches share."""
        count = 0
        while True:
            node = producer[t]
            count += node.op_type == "Conv"
            t = node.input[0]
            if readers.get(t, 0) >= 2:
                return count

    sums = [n for n in q.graph.node if n.op_type == "Sum"]
    assert len(sums) == 16
    for node in sums:
        quantized = [i for i in node.input if i.endswith("_dequantized")]
        assert len(quantized) == 1
        skip = quantized[0][: -len("_dequantized")]
        main = next(i for i in node.input if not i.endswith("_dequantized"))
        assert producer[skip].op_type == "Relu" or convs_to_fork(skip) < convs_to_fork(main)
