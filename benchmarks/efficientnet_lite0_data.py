r"""EfficientNet-Lite0's calibration and evaluation batches, as a kldiv data-loader script.

The same images as ``benchmarks/quantization_accuracy.py`` (crops and flips of the
``skimage.data`` photos; even photos calibrate, odd ones evaluate; TF-style ``(x - 127) / 128``,
NCHW, batches of 8), for the command line::

    kldiv calibrate bench-out/efficientnet_lite0.onnx \
        --data-loader-script benchmarks/efficientnet_lite0_data.py:calibration --out lite0.cache
    kldiv evaluate bench-out/efficientnet_lite0.onnx --cache lite0.cache \
        --data-loader-script benchmarks/efficientnet_lite0_data.py:evaluation --per-tensor

Needs the ``bench`` extra (scikit-image).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quantization_accuracy import _batches, _crops, _photos  # noqa: E402

CROPS = 8
BATCH = 8


@functools.cache
def _sets() -> tuple[np.ndarray, np.ndarray]:
    photos = _photos()
    cal = _crops(photos[0::2], CROPS, seed=1)
    cal = cal[: len(cal) // BATCH * BATCH]
    return cal, _crops(photos[1::2], CROPS, seed=2)


def calibration() -> list[dict[str, np.ndarray]]:
    """88 calibration images in batches of 8."""
    return _batches(_sets()[0], "input", BATCH)


def evaluation() -> list[dict[str, np.ndarray]]:
    """80 evaluation images (disjoint photos) in batches of 8."""
    return _batches(_sets()[1], "input", BATCH)


load_data = evaluation
