"""Ties (#11): exact KL = 0 ties on sparse discrete data, and the tensorrt preset's rule."""

from __future__ import annotations

import numpy as np
import pytest

from kldiv.entropy import search_threshold
from kldiv.errors import PresetError
from kldiv.histogram import ActivationHistogram


def _sixteenths(seed: int = 0) -> ActivationHistogram:
    """Pixels k/16 (17 levels), half of them zero: the embedded LeNet's input."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 17, size=20_000) / 16.0
    x[rng.random(x.size) < 0.5] = 0.0
    return ActivationHistogram.from_values(x)


def test_exact_zero_ties_resolve_to_the_widest_range(implementation: str) -> None:
    h = _sixteenths()
    r = search_threshold(h, "tensorrt")
    assert r.bin_index == 2048  # every level kept: Q reproduces P
    assert r.divergence_at(2048) == pytest.approx(0.0, abs=1e-12)
    # i = 129 keeps one level (the 1/16 bin): a degenerate window, not taken by the preset
    assert r.divergence_at(129) == float("inf")
    # without the degenerate-window rule the tie exists: KL = 0 up to rounding at i = 129
    plain = search_threshold(h, "tensorrt", min_nonempty_bins=1)
    assert plain.bin_index == 2048
    assert plain.divergence_at(129) == pytest.approx(0.0, abs=1e-12)
    first = search_threshold(h, "tensorrt", ties="first", min_nonempty_bins=1)
    assert first.bin_index == 129
    exact = search_threshold(
        h, "tensorrt", tie_tolerance=0.0, min_nonempty_bins=1
    )
    assert exact.bin_index in (129, 2048)  # decided by rounding alone, which is the problem
    # with the rule, the first minimum is the widest range too
    assert search_threshold(h, "tensorrt", ties="first").bin_index == 2048


def test_tolerance_is_not_a_smoothing() -> None:
    with pytest.raises(PresetError, match="tie_tolerance"):
        search_threshold(_sixteenths(), "tensorrt", tie_tolerance=0.1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dense_data_has_no_ties_so_the_rule_changes_nothing(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h = ActivationHistogram.from_values(rng.standard_normal(50_000))
    a = search_threshold(h, "tensorrt")
    b = search_threshold(h, "tensorrt", ties="first", tie_tolerance=0.0)
    assert a.bin_index == b.bin_index
