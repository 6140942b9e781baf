"""Q/DQ export on real models: checker, onnxruntime, agreement with FP32, both placements.

For each model and each placement (``inputs``: TensorRT's recommendation; ``all``: every
calibrated tensor, implicit-INT8 style; and "weights only": int8 weights with every activation
in float, to show the weights' share of the error), the table's scales go through
``kldiv.qdq.to_qdq_onnx``; the result must pass ``onnx.checker.check_model(full_check=True)``
and run in onnxruntime (CPU) next to the FP32 model. Printed per row: export seconds, the
number of tensors given a Q/DQ pair, top-1 agreement (argmax over the last axis: per class,
per time step, per pixel for the detector's 1-channel map — a rough figure there), the lowest
and the mean per-sample cosine similarity of the outputs, and the SQNR in dB.

Models and tables:
- sampleINT8's MNIST LeNet with the cache TensorRT 7.0 wrote for it, on MNIST test[0:2000]
  (``$KLDIV_FIXTURES``, default ``../shared/fixtures``);
- PP-OCR det / rec / cls from the rapidocr_onnxruntime wheel, max-|x| tables from kldiv on four
  rendered text lines (the same four evaluate: a soundness check, not OCR accuracy);
- EfficientNet-Lite0 when ``bench-out/efficientnet_lite0.onnx`` exists
  (``benchmarks/export_efficientnet_lite0.py``), entropy ``tensorrt`` table on the crops of
  ``benchmarks/quantization_accuracy.py``.

    python benchmarks/qdq_real_models.py [--models mnist ocr efficientnet]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("KLDIV_FIXTURES", REPO.parent / "shared" / "fixtures"))
WORDS = ["kldiv: 2048 bins", "TensorRT INT8 cache", "KL(P || Q) = 0.031", "PP-OCR det/rec/cls"]
OCR = {  # kind -> (H, W), mean, std (PP-OCR's preprocessing)
    "det": ((96, 320), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "rec": ((48, 320), (0.5,) * 3, (0.5,) * 3),
    "cls": ((48, 192), (0.5,) * 3, (0.5,) * 3),
}


def _session(model: Any) -> Any:
    import onnx
    import onnxruntime as ort

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _run(model: Any, batches: list[dict[str, np.ndarray]]) -> np.ndarray:
    s = _session(model)
    return np.concatenate([s.run(None, b)[0] for b in batches])


def _row(name: str, model: Path, table: Any, batches: list[dict[str, np.ndarray]]) -> None:
    import onnx

    from kldiv.qdq import table_coverage, to_qdq_onnx

    print(f"\n{name}: {table_coverage(model, table).to_text()}")
    ref = _run(model, batches)
    from kldiv.scales import CalibrationTable

    for placement in ("inputs", "all", "weights only"):
        t = time.perf_counter()
        if placement == "weights only":  # int8 weights, float activations: the weights' share
            q = to_qdq_onnx(model, CalibrationTable(), force=True)
        else:
            q = to_qdq_onnx(model, table, placement=placement)
        seconds = time.perf_counter() - t
        onnx.checker.check_model(q, full_check=True)
        out = _run(q, batches)
        a = ref.reshape(len(ref), -1).astype(np.float64)
        b = out.reshape(len(out), -1).astype(np.float64)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        sqnr = 10 * np.log10((a**2).sum() / ((a - b) ** 2).sum())
        agree = (ref.argmax(-1) == out.argmax(-1)).mean()
        meta = {p.key: p.value for p in q.metadata_props}
        n = len([a for a in meta["kldiv_qdq_activations"].split(",") if a])
        print(f"  {placement:12s} export {seconds:4.1f} s, {n:3d} Q/DQ tensors, checker OK, "
              f"top-1 agreement {agree:7.2%}, cosine min {cos.min():.3f} mean {cos.mean():.3f}, "
              f"SQNR {sqnr:5.1f} dB")  # fmt: skip


def _mnist() -> None:
    from kldiv.cachefile import read_cache

    folder = FIXTURES / "conformance" / "sampleint8"
    with np.load(folder / "mnist_test.npz") as f:
        x = f["images"][:2000].astype(np.float32) / np.float32(255)
    batches = [{"data": x[i : i + 500]} for i in range(0, len(x), 500)]
    table = read_cache(FIXTURES / "trt-caches" / "sampleint8-mnist-trt7000.cache")
    _row("sampleINT8 LeNet, TensorRT 7.0's cache, MNIST test[0:2000]",
         folder / "mnist_lenet.onnx", table, batches)  # fmt: skip


def _ocr() -> None:
    import rapidocr_onnxruntime
    from PIL import Image, ImageDraw, ImageFont

    from kldiv.pipeline import calibrate

    models = Path(rapidocr_onnxruntime.__file__).parent / "models"
    font = ImageFont.load_default(size=26)
    for kind, ((h, w), mean, std) in OCR.items():
        path = sorted(models.glob(f"*_{kind}_infer.onnx"))[0]
        imgs = []
        for i, word in enumerate(WORDS):
            img = Image.new("RGB", (400, 64), (255, 255, 240 - 20 * i))
            ImageDraw.Draw(img).text((12, 16), word, fill=(10 * i, 0, 0), font=font)
            imgs.append(np.asarray(img.resize((w, h)), dtype=np.float32).transpose(2, 0, 1) / 255)
        x = ((np.stack(imgs) - np.reshape(mean, (3, 1, 1))) / np.reshape(std, (3, 1, 1)))
        x = x.astype(np.float32)
        table = calibrate(path, [{"x": x[:2]}, {"x": x[2:]}], method="minmax")
        _row(f"PP-OCR {kind} ({path.name}), minmax table, 4 text lines", path, table,
             [{"x": x}])  # fmt: skip


def _efficientnet() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import quantization_accuracy as qa

    from kldiv.pipeline import calibrate

    if not qa.EFFICIENTNET.is_file():
        print(f"\n{qa.EFFICIENTNET} missing: run benchmarks/export_efficientnet_lite0.py first")
        return
    photos = qa._photos()
    cal = qa._crops(photos[0::2], 8, seed=1)
    ev = qa._crops(photos[1::2], 8, seed=2)
    table = calibrate(qa.EFFICIENTNET, qa._batches(cal, "input", 8))
    _row("EfficientNet-Lite0, entropy tensorrt table, 80 evaluation crops", qa.EFFICIENTNET,
         table, qa._batches(ev, "input", 8))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mnist", "ocr", "efficientnet"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    import onnxruntime

    import kldiv

    print(f"kldiv {kldiv.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    for name, fn in (("mnist", _mnist), ("ocr", _ocr), ("efficientnet", _efficientnet)):
        if name in args.models:
            fn()
    return 0


if __name__ == "__main__":
    sys.exit(main())
