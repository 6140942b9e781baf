"""minmax / percentile / mse behind choose_threshold."""

from __future__ import annotations

import numpy as np
import pytest

from kldiv.errors import PresetError
from kldiv.histogram import ActivationHistogram
from kldiv.scales import amax_to_scale
from kldiv.thresholds import choose_threshold


def _hist() -> ActivationHistogram:
    x = np.abs(np.random.default_rng(0).standard_normal(100_000)).astype(np.float32)
    return ActivationHistogram.from_values(x)


def test_minmax_is_absmax() -> None:
    h = _hist()
    r = choose_threshold(h, "minmax")
    assert r.amax == h.amax and r.scale == amax_to_scale(h.amax)


def test_percentile_against_numpy_quantile() -> None:
    x = np.abs(np.random.default_rng(0).standard_normal(100_000)).astype(np.float32)
    h = ActivationHistogram.from_values(x)
    r = choose_threshold(h, "percentile", percentile=99.0)
    exact = float(np.quantile(x, 0.99))
    assert abs(r.amax - exact) <= h.bin_width
    assert r.amax >= exact  # upper edge covers the percentile
    lower = choose_threshold(h, "percentile", percentile=99.0, edge="lower")
    assert lower.amax == pytest.approx(r.amax - h.bin_width)


def test_mse_brute_force() -> None:
    h = _hist()
    r = choose_threshold(h, "mse", stride=16)
    centers = (np.arange(h.num_bins) + 0.5) * h.bin_width
    best = None
    for i in range(128, h.num_bins, 16):
        t = centers[i]
        q = np.clip(np.round(centers / t * 127), -127, 127) * t / 127
        err = np.sum(h.counts * (q - centers) ** 2)
        if best is None or err < best[0]:
            best = (err, t)
    assert best is not None and r.amax == pytest.approx(best[1])
    assert 0 < r.amax < h.amax


def test_entropy_dispatch_and_errors() -> None:
    h = _hist()
    assert choose_threshold(h).method == "entropy"
    assert choose_threshold(h, preset="modelopt").preset == "modelopt"
    with pytest.raises(PresetError, match="choose one of"):
        choose_threshold(h, "kl")
    with pytest.raises(PresetError, match="valid options"):
        choose_threshold(h, "percentile", pct=99)
    with pytest.raises(ValueError):
        choose_threshold(h, "percentile", percentile=101)
