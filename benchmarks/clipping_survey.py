"""How much of each tensor's values the chosen thresholds clip, on real models.

Run: ``python benchmarks/clipping_survey.py [--fixtures DIR]``.

The evidence behind :data:`kldiv.defaults.CLIP_WARN_FRACTION` and the ``tensorrt`` preset's
degenerate-window rule (``min_nonempty_bins=2``). For each model it calibrates with the
``tensorrt`` preset, with and without the rule, and prints the clipped share of the values
(:attr:`kldiv.ThresholdResult.clipped_fraction`): median, 90th and 99th percentile, maximum,
how many tensors clip more than 1 %, 5 %, 10 %, 50 %, and which tensors the rule moves.

Models: TensorRT's sampleINT8 LeNet on the batches of its TRT 7.0 and 5.1 caches (thresholds
in TensorRT's bin, so these are TensorRT's own clipped shares); kldiv's embedded LeNet-5; and,
when ``rapidocr_onnxruntime`` is installed, PP-OCR det / rec / cls on four rendered text lines
(the robustness test's inputs: a deliberately small calibration set).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from kldiv.collect import HistogramCollector
from kldiv.conformance import sampleint8_cases
from kldiv.defaults import CLIP_WARN_FRACTION
from kldiv.pipeline import choose_thresholds, collect_histograms

REPO = Path(__file__).resolve().parents[1]
LIMITS = (0.01, 0.05, 0.10, 0.50)


def _ocr(folder: Path) -> Iterator[tuple[str, HistogramCollector]]:
    try:
        import rapidocr_onnxruntime  # type: ignore[import-untyped]
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        print("(PP-OCR skipped: rapidocr_onnxruntime or Pillow is not installed)")
        return
    from kldiv.data import Preprocess

    words = ["kldiv: 2048 bins", "TensorRT INT8 cache", "KL(P || Q) = 0.031",
             "PP-OCR det/rec/cls"]
    font = ImageFont.load_default(size=26)
    for i, word in enumerate(words):
        img = Image.new("RGB", (400, 64), (255, 255, 240 - 20 * i))
        ImageDraw.Draw(img).text((12, 16), word, fill=(10 * i, 0, 0), font=font)
        img.save(folder / f"line{i}.png")
    models = Path(rapidocr_onnxruntime.__file__).parent / "models"
    cases: dict[str, tuple[tuple[int, int], tuple[float, ...], tuple[float, ...]]] = {
        "det": ((96, 320), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        "rec": ((48, 320), (0.5,), (0.5,)),
        "cls": ((48, 192), (0.5,), (0.5,)),
    }
    for kind, (size, mean, std) in cases.items():
        found = sorted(models.glob(f"*_{kind}_infer.onnx"))
        if not found:
            continue
        pp = Preprocess.from_dict({"resize": size, "scale": 1 / 255, "mean": mean, "std": std})
        yield (f"PP-OCR {kind} ({found[0].name}, 4 text lines)",
               collect_histograms(found[0], str(folder), preprocess=pp, batch_size=2))


def _collectors(fixtures: Path, tmp: Path) -> Iterator[tuple[str, HistogramCollector]]:
    try:
        cases = [c for c in sampleint8_cases(fixtures) if c.method == "entropy"]
    except Exception as exc:  # fixtures absent
        print(f"(sampleINT8 skipped: {exc})")
        cases = []
    for case in cases:
        yield case.name, collect_histograms(case.model, case.batches())
    from kldiv.examples import lenet_calibration_data, lenet_model_path

    yield "kldiv demo LeNet-5 (digits)", collect_histograms(lenet_model_path(),
                                                           lenet_calibration_data())
    yield from _ocr(tmp)


def _line(label: str, fractions: np.ndarray) -> str:
    p50, p90, p99 = np.percentile(fractions, [50, 90, 99])
    counts = "  ".join(f">{lim:.0%}: {int(np.sum(fractions > lim)):3d}" for lim in LIMITS)
    return (f"  {label:<10} median {p50:8.2e}  p90 {p90:8.2e}  p99 {p99:8.2e}  "
            f"max {fractions.max():7.2%}  {counts}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fixtures", type=Path,
                    default=Path(os.environ.get("KLDIV_FIXTURES",
                                                REPO.parent / "shared" / "fixtures")))
    args = ap.parse_args(argv)
    print(f"clipped share of each tensor's values, tensorrt preset (flag: > "
          f"{CLIP_WARN_FRACTION:.0%})")
    with tempfile.TemporaryDirectory() as tmp:
        for name, collector in _collectors(args.fixtures, Path(tmp)):
            on: dict[str, Any] = choose_thresholds(collector)
            off: dict[str, Any] = choose_thresholds(collector, min_nonempty_bins=1)
            f_on = np.array([r.clipped_fraction for r in on.values()])
            f_off = np.array([r.clipped_fraction for r in off.values()])
            moved = [n for n in on if on[n].bin_index != off[n].bin_index]
            print(f"{name}: {len(on)} tensors")
            print(_line("rule on", f_on))
            print(_line("rule off", f_off))
            print(f"  the degenerate-window rule moves {len(moved)} tensor(s)"
                  + (":" if moved else ""))
            for n in moved[:6]:
                print(f"    {n}: bin {off[n].bin_index} (clips {off[n].clipped_fraction:.2%}) -> "
                      f"{on[n].bin_index} (clips {on[n].clipped_fraction:.2%})")
            if len(moved) > 6:
                print(f"    ... and {len(moved) - 6} more")
            top = sorted(on, key=lambda n: -on[n].clipped_fraction)[:3]
            print("  largest with the rule: " + ", ".join(
                f"{n} {on[n].clipped_fraction:.2%} ({on[n].method})" for n in top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
