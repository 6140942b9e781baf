"""Robustness on real models nobody here wrote: PP-OCR det / rec / cls from rapidocr_onnxruntime.

PaddlePaddle exports (paddle2onnx) keep their weights in ``Constant`` nodes and use opsets
11/12; calibration must finish, skip every weight, and write a cache TensorRT would parse.
Inputs are text lines rendered with Pillow, prepared as PP-OCR does (det: ImageNet mean/std
on [0, 1]; rec/cls: (x/255 - 0.5) / 0.5).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

rapidocr = pytest.importorskip(
    "rapidocr_onnxruntime", reason="rapidocr_onnxruntime (PP-OCR ONNX models) is not installed"
)
onnx = pytest.importorskip("onnx")
PIL = pytest.importorskip("PIL")

from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from kldiv.cachefile import read_cache  # noqa: E402
from kldiv.cli import main  # noqa: E402

MODELS_DIR = Path(rapidocr.__file__).parent / "models"
# model file ending -> (--resize H,W, preprocessing flags)
CASES = {
    "det": ("96,320", ["--scale", str(1 / 255), "--mean", "0.485,0.456,0.406",
                       "--std", "0.229,0.224,0.225"]),
    "rec": ("48,320", ["--scale", str(1 / 255), "--mean", "0.5", "--std", "0.5"]),
    "cls": ("48,192", ["--scale", str(1 / 255), "--mean", "0.5", "--std", "0.5"]),
}
WORDS = ["kldiv: 2048 bins", "TensorRT INT8 cache", "KL(P || Q) = 0.031", "PP-OCR det/rec/cls"]


def _model(kind: str) -> Path:
    found = sorted(MODELS_DIR.glob(f"*_{kind}_infer.onnx"))
    if not found:
        pytest.skip(f"no *_{kind}_infer.onnx in {MODELS_DIR}")
    return found[0]


@pytest.fixture(scope="module")
def text_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text")
    font = ImageFont.load_default(size=26)
    for i, word in enumerate(WORDS):
        img = Image.new("RGB", (400, 64), (255, 255, 240 - 20 * i))
        ImageDraw.Draw(img).text((12, 16), word, fill=(10 * i, 0, 0), font=font)
        img.save(folder / f"line{i}.png")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(CASES))
def test_pp_ocr_calibrates_and_writes_a_cache(kind, text_images, tmp_path, capsys):
    path = _model(kind)
    model = onnx.load(str(path))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset in (11, 12)
    constants = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    assert constants and not model.graph.initializer  # weights live in Constant nodes

    resize, flags = CASES[kind]
    out = tmp_path / f"{kind}.cache"
    code = main(["calibrate", str(path), "--data", str(text_images), "--resize", resize,
                 *flags, "--batch-size", "2", "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    table = read_cache(out)
    values = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    names = list(table)
    assert names[0] == "x" and len(names) > 100
    assert set(names) <= values
    assert not set(names) & constants
    conv_outputs = {n.output[0] for n in model.graph.node if n.op_type == "Conv"}
    assert conv_outputs <= set(names)  # every convolution's activation is calibrated
    assert all(math.isfinite(float(table[n])) for n in names)
