"""INT8 accuracy without TensorRT: kldiv's presets vs onnxruntime's own calibration.

For each model, every row's scales go into the *same* Q/DQ graph (``kldiv.qdq.to_qdq_onnx``,
TensorRT placement, per-channel int8 weights), run by onnxruntime on CPU next to the FP32
model; the table reports top-1/top-5 agreement with FP32 (sampleINT8 style) and accuracy
where labels exist. Rows:

- kldiv presets: entropy ``tensorrt`` and ``modelopt``, ``minmax``, ``percentile`` (99.99),
  all from ONE pass over the calibration data (histograms saved, thresholds recomputed);
- onnxruntime's entropy calibrator with its default settings (``num_bins=128``,
  ``num_quantized_bins=128``) — whose ranges are exactly its MinMax ranges (checked here and
  printed): with as many bins as quantized levels the only candidate threshold is the max;
- onnxruntime's entropy calibrator with 2048 bins (``create_calibrator``, ``num_bins=2048``);
- onnxruntime's ``quantize_static`` end to end (its own Q/DQ graph, entropy defaults).

Models:
(a) the embedded LeNet-5 (256 calibration images, 360 held-out labelled digits);
(b) EfficientNet-Lite0 with ImageNet weights (export it first with
    ``benchmarks/export_efficientnet_lite0.py``), TF-style preprocessing ``(x - 127) / 128``.
    Data: the ~20 photos shipped in ``skimage.data`` — far too few for real ImageNet accuracy
    numbers, so the photos are split in two disjoint halves and each half is expanded with
    random crops and flips into a calibration set and an evaluation set. Agreement with FP32
    is what is measured; there are no labels.

    python benchmarks/quantization_accuracy.py [--models lenet efficientnet] [--crops 16]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from kldiv.defaults import DEFAULT_BATCH_SIZE, NUM_BINS, NUM_QUANT_LEVELS

REPO = Path(__file__).resolve().parents[1]
EFFICIENTNET = REPO / "bench-out" / "efficientnet_lite0.onnx"

# skimage.data photos that need no download (grey ones are replicated to RGB)
PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
    "colorwheel", "logo", "retina", "camera", "coins", "moon", "page", "text", "clock",
    "brick", "grass", "gravel", "cell", "microaneurysms", "checkerboard",
)  # fmt: skip


# ----------------------------------------------------------------------------- data
def _photos() -> list[np.ndarray]:
    import skimage.data

    out = []
    for name in PHOTOS:
        try:
            img = np.asarray(getattr(skimage.data, name)())
        except Exception as exc:  # noqa: BLE001 - a photo that needs a download: skip it
            print(f"skipping skimage.data.{name}: {type(exc).__name__}", file=sys.stderr)
            continue
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        out.append(np.ascontiguousarray(img[:, :, :3]))
    return out


def _crops(photos: list[np.ndarray], n: int, seed: int, size: int = 224) -> np.ndarray:
    """``n`` random crops (30–100 % of the short side) with random flips, per photo."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for img in photos:
        h, w = img.shape[:2]
        for _ in range(n):
            side = int(min(h, w) * rng.uniform(0.3, 1.0))
            y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = Image.fromarray(img[y : y + side, x : x + side]).resize(
                (size, size), Image.BILINEAR
            )
            a = np.asarray(crop, dtype=np.float32)
            if rng.random() < 0.5:
                a = a[:, ::-1]
            out.append(((a - 127.0) / 128.0).transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)


def _batches(x: np.ndarray, name: str, bs: int) -> list[dict[str, np.ndarray]]:
    return [{name: x[i : i + bs]} for i in range(0, len(x), bs)]


# ----------------------------------------------------------------------------- rows
def _kldiv_rows(model: Path, cal: list[dict[str, np.ndarray]], tmp: Path) -> Iterator[Any]:
    import kldiv

    hist = tmp / "hist.npz"
    t = time.perf_counter()
    table = kldiv.calibrate(model, cal, preset="tensorrt", save_histograms=hist).table
    yield "kldiv entropy preset=tensorrt", table, time.perf_counter() - t
    for label, kw in (
        ("kldiv entropy preset=modelopt", {"preset": "modelopt"}),
        ("kldiv minmax", {"method": "minmax"}),
        ("kldiv percentile 99.99", {"method": "percentile"}),
    ):
        t = time.perf_counter()
        table = kldiv.calibrate_histograms(hist, **kw).table
        yield label + " (same histograms)", table, time.perf_counter() - t


class _Reader:
    """onnxruntime CalibrationDataReader over a list of batches."""

    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self.it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.it, None)

    def rewind(self) -> None:  # pragma: no cover - not used by the calibrators here
        pass


def _ort_ranges(
    model: Path, cal: list[dict[str, np.ndarray]], method: str, tmp: Path, **extra: Any
) -> dict[str, tuple[float, float]]:
    """(min, max) per tensor from onnxruntime's calibrator, fed all batches in ONE call.

    One call is what ``quantize_static`` does by default. (Feeding it in several calls makes
    its histograms grow past ``num_bins``, and the entropy search then has more candidates.)
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    calib = create_calibrator(
        str(model),
        [],
        augmented_model_path=str(tmp / f"augmented_{method}.onnx"),
        calibrate_method=getattr(CalibrationMethod, method),
        extra_options=extra,
    )
    with contextlib.redirect_stdout(io.StringIO()):  # onnxruntime prints progress
        calib.collect_data(_Reader(cal))
        data = calib.compute_data()
    return {
        name: tuple(float(np.asarray(v).reshape(-1)[0]) for v in rng.range_value)  # type: ignore[misc]
        for name, rng in data.data.items()
    }


def _symmetric(ranges: dict[str, tuple[float, float]]) -> dict[str, float]:
    return {k: max(abs(lo), abs(hi)) for k, (lo, hi) in ranges.items()}


def _ort_rows(model: Path, cal: list[dict[str, np.ndarray]], tmp: Path) -> Iterator[Any]:
    from kldiv.scales import CalibrationTable

    t = time.perf_counter()
    minmax = _ort_ranges(model, cal, "MinMax", tmp)
    t_minmax = time.perf_counter() - t
    t = time.perf_counter()
    default = _ort_ranges(model, cal, "Entropy", tmp)
    t_default = time.perf_counter() - t
    same = default == minmax
    note = f"(= its MinMax (min, max) ranges exactly: {'yes' if same else 'NO'}, {len(default)} tensors)"
    yield (
        f"ort entropy, default 128 bins {note}",
        CalibrationTable.from_amaxes(_symmetric(default)),
        t_default,
    )
    yield "ort minmax", CalibrationTable.from_amaxes(_symmetric(minmax)), t_minmax
    t = time.perf_counter()
    wide = _ort_ranges(model, cal, "Entropy", tmp, num_bins=NUM_BINS, num_quantized_bins=NUM_QUANT_LEVELS)
    yield (
        "ort entropy, 2048 bins (create_calibrator)",
        CalibrationTable.from_amaxes(_symmetric(wide)),
        time.perf_counter() - t,
    )


def _ort_quantize_static(model: Path, cal: list[dict[str, np.ndarray]], tmp: Path) -> Path:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
    )
    from onnxruntime.quantization import quantize_static as _quantize_static

    out = tmp / "ort_qdq.onnx"
    options = {"ActivationSymmetric": True, "WeightSymmetric": True}
    with contextlib.redirect_stdout(io.StringIO()):
        _quantize_static(
            str(model),
            str(out),
            _Reader(cal),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.Entropy,
            extra_options=options,
        )
    return out


# ----------------------------------------------------------------------------- table
def run_model(
    title: str,
    model: Path,
    cal: list[dict[str, np.ndarray]],
    ev: list[dict[str, np.ndarray]],
    labels: np.ndarray | None,
    note: str,
    emit: Callable[[str], None],
) -> None:
    from kldiv.evaluate import evaluate
    from kldiv.qdq import to_qdq_onnx

    emit(f"\n### {title}\n\n{note}\n")
    head = "| scales | calib s | top-1 agree | top-5 agree |"
    sep = "|---|---:|---:|---:|"
    if labels is not None:
        head += " top-1 acc |"
        sep += "---:|"
    emit(head)
    emit(sep)
    fp32_acc = None

    def row(label: str, qdq: Any, secs: float | None) -> None:
        nonlocal fp32_acc
        r = evaluate(model, qdq, ev, labels)
        cells = [label, "" if secs is None else f"{secs:.1f}",
                 f"{r.agreement[1]:.2%}", f"{r.agreement[5]:.2%}"]  # fmt: skip
        if labels is not None and r.quantized_accuracy is not None:
            cells.append(f"{r.quantized_accuracy[1]:.2%}")
            fp32_acc = r.fp32_accuracy
        emit("| " + " | ".join(cells) + " |")

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for producer in (_kldiv_rows, _ort_rows):
            for label, table, secs in producer(model, cal, tmp):
                row(label, to_qdq_onnx(model, table), secs)
        t = time.perf_counter()
        try:
            path = _ort_quantize_static(model, cal, tmp)
            row("ort quantize_static (entropy default; its own Q/DQ graph)", path,
                time.perf_counter() - t)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - report, do not hide, a peer failure
            emit(f"| ort quantize_static failed: {type(exc).__name__}: {exc} | | | |")
    if fp32_acc is not None:
        emit(f"\nFP32 top-1 accuracy: {fp32_acc[1]:.2%}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet", "efficientnet"])
    parser.add_argument("--crops", type=int, default=8, help="crops per photo (each set)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    args = parser.parse_args(argv)
    emit = print
    import onnxruntime

    import kldiv

    emit(f"kldiv {kldiv.__version__}, onnxruntime {onnxruntime.__version__}, "
         f"{os.cpu_count()} CPUs; agreement = FP32 top-1 class within the INT8 top-k")  # fmt: skip
    if "lenet" in args.models:
        from kldiv.examples import (
            lenet_calibration_data,
            lenet_eval_data,
            lenet_model_path,
        )

        ev, y = lenet_eval_data()
        run_model("(a) embedded LeNet-5 (sklearn digits)", lenet_model_path(),
                  lenet_calibration_data(), ev, y,
                  "256 calibration images (train split), 360 held-out labelled images.", emit)  # fmt: skip
    if "efficientnet" in args.models:
        if not EFFICIENTNET.is_file():
            emit(f"\n{EFFICIENTNET} missing: run benchmarks/export_efficientnet_lite0.py first")
            return 1
        photos = _photos()
        cal_x = _crops(photos[0::2], args.crops, seed=1)
        # onnxruntime's histogram calibrators need equal batch sizes: drop a ragged tail
        cal_x = cal_x[: len(cal_x) // args.batch_size * args.batch_size]
        ev_x = _crops(photos[1::2], args.crops, seed=2)
        note = (f"{len(photos)} skimage.data photos: {len(photos[0::2])} for calibration, "
                f"{len(photos) - len(photos[0::2])} (disjoint) for evaluation, each expanded to "
                f"{args.crops} random crops/flips -> {len(cal_x)} calibration and {len(ev_x)} "
                "evaluation images. A small, non-ImageNet set: differences of one or two "
                f"images are {1 / len(ev_x):.2%} each; no labels.")  # fmt: skip
        run_model("(b) EfficientNet-Lite0 (ImageNet weights)", EFFICIENTNET,
                  _batches(cal_x, "input", args.batch_size),
                  _batches(ev_x, "input", args.batch_size), None, note, emit)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
