"""kldiv evaluate on a real recognizer nobody here wrote (PP-OCRv4 rec from rapidocr_onnxruntime):
image folder with PaddleOCR's letterbox (height 48, padded right to 320 with the normalized
zero), per-output metrics on a [N, T, 6625] sequence output, no classification metrics.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

rapidocr = pytest.importorskip("rapidocr_onnxruntime")
pytest.importorskip("onnx")
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from kldiv.cli import main  # noqa: E402

MODELS_DIR = Path(rapidocr.__file__).parent / "models"
PREPROCESS = ["--letterbox", "48,320", "--pad-position", "top-left", "--pad-value", "127.5",
              "--scale", str(1 / 255), "--mean", "0.5", "--std", "0.5"]


@pytest.mark.slow
def test_pp_ocr_rec_evaluates_with_letterbox(tmp_path, capsys):
    found = sorted(MODELS_DIR.glob("*_rec_infer.onnx"))
    if not found:
        pytest.skip(f"no *_rec_infer.onnx in {MODELS_DIR}")
    model = str(found[0])
    lines = tmp_path / "lines"
    lines.mkdir()
    font = ImageFont.load_default(size=26)
    for i, word in enumerate(["kldiv 2048 bins", "INT8 cache", "letterbox 48x320", "SQNR"]):
        img = Image.new("RGB", (60 + 14 * len(word), 48 + 6 * i), (255, 255, 245))
        ImageDraw.Draw(img).text((8, 8), word, fill=(0, 0, 0), font=font)
        img.save(lines / f"line{i}.png")
    cache = tmp_path / "rec.cache"
    assert main(["calibrate", model, "--data", str(lines), *PREPROCESS, "--batch-size", "2",
                 "--out", str(cache), "-q"]) == 0
    capsys.readouterr()
    assert main(["evaluate", model, "--cache", str(cache), "--data", str(lines), *PREPROCESS,
                 "--batch-size", "2", "--placement", "inputs", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["reports"][0]
    assert report["n"] == 4 and report["classification"] is None
    (out,) = report["outputs"].values()
    assert out["shape"][0] == 2 and out["shape"][2] == 6625 and len(out["shape"]) == 3
    assert -1 <= out["cosine"] <= 1 and math.isfinite(out["rel_l2"])
    # labels need an [N, classes] output: refused before the run
    (tmp_path / "y.txt").write_text("0\n1\n2\n3\n")
    assert main(["evaluate", model, "--cache", str(cache), "--data", str(lines), *PREPROCESS,
                 "--labels", str(tmp_path / "y.txt")]) == 2
    assert "[N, classes]" in capsys.readouterr().err
