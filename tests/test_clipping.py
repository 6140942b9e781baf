"""Clipping made visible: every ThresholdResult knows the share of the histogram's mass above
its threshold; summaries show it and flag (and log) tensors above CLIP_WARN_FRACTION."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kldiv.cli import main
from kldiv.collect import HistogramCollector
from kldiv.defaults import CLIP_WARN_FRACTION
from kldiv.pipeline import calibrate_histograms, choose_thresholds
from kldiv.scales import ThresholdResult, amax_to_scale, clipped_fraction
from kldiv.thresholds import METHODS, choose_threshold, clipping_outliers
from tests._hist_strategies import counts_arrays, make_hist


def test_clipped_fraction_by_hand() -> None:
    c = [6, 2, 1, 1]  # over [0, 4]: one bin per unit
    assert clipped_fraction(c, 4.0, 4.0) == 0.0
    assert clipped_fraction(c, 4.0, 9.0) == 0.0
    assert clipped_fraction(c, 4.0, 3.0) == pytest.approx(0.1)  # an edge: bin 3 whole
    assert clipped_fraction(c, 4.0, 2.5) == pytest.approx(0.15)  # half of bin 2
    assert clipped_fraction(c, 4.0, 0.0) == 1.0
    assert math.isnan(clipped_fraction([0, 0], 1.0, 0.5))
    assert clipped_fraction([5, 0], 0.0, 0.0) == 0.0  # all-zero tensor


@settings(max_examples=40)
@given(counts=counts_arrays(129, 700), method=st.sampled_from(sorted(METHODS)))
def test_every_method_knows_its_clipped_fraction(counts: np.ndarray, method: str) -> None:
    h = make_hist(counts, 3.0)
    r = choose_threshold(h, method)
    assert 0.0 <= r.clipped_fraction <= 1.0
    # monotone in the threshold: the mass above a larger threshold is not larger
    assert clipped_fraction(counts, 3.0, r.amax * 1.5) <= r.clipped_fraction + 1e-12


def test_entropy_counts_half_of_the_threshold_bin() -> None:
    counts = np.zeros(2048, dtype=np.int64)
    counts[:1500] = 1000
    counts[1500:] = 1
    r = choose_threshold(make_hist(counts), "entropy")
    m = r.bin_index
    assert m is not None and m < 2048
    expected = (counts[m + 1:].sum() + 0.5 * counts[m]) / counts.sum()
    assert r.clipped_fraction == pytest.approx(expected)


def test_result_without_histogram_is_nan_and_explicit_value_kept() -> None:
    r = ThresholdResult(amax=1.0, bin_index=None, scale=amax_to_scale(1.0), method="x")
    assert math.isnan(r.clipped_fraction)
    r = ThresholdResult(amax=1.0, bin_index=None, scale=amax_to_scale(1.0), method="x",
                        histogram=make_hist(np.ones(8, dtype=np.int64), 4.0), clipped_fraction=0.0)
    assert r.clipped_fraction == 0.0


def _collector() -> HistogramCollector:
    rng = np.random.default_rng(5)
    c = HistogramCollector()
    for _ in range(2):
        c.observe({"a": rng.standard_normal(5000), "b": rng.laplace(size=5000)})
    return c


def test_minmax_clips_nothing() -> None:
    results = choose_thresholds(_collector(), method="minmax")
    assert all(r.clipped_fraction == 0.0 for r in results.values())


def test_flag_rule_and_warning(caplog: pytest.LogCaptureFixture) -> None:
    results = choose_thresholds(_collector(), method="percentile", percentile=90.0)
    with caplog.at_level(logging.WARNING, logger="kldiv.thresholds"):
        flagged = clipping_outliers(results)
    assert set(flagged) == {"a", "b"}
    assert all(f > CLIP_WARN_FRACTION for f in flagged.values())
    assert "a (" in caplog.text and "b (" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kldiv.thresholds"):
        assert clipping_outliers(choose_thresholds(_collector(), method="minmax")) == {}
    assert caplog.text == ""


def test_calibrate_records_flagged_tensors() -> None:
    _, table = calibrate_histograms(
        _collector(), method="percentile", options={"percentile": 90.0}, algorithm="entropy2"
    )
    assert set(table.provenance["clipping_above_limit"]) == {"a", "b"}


def test_cli_calibrate_summary_shows_and_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    h = tmp_path / "h.npz"
    _collector().save(h)
    with caplog.at_level(logging.WARNING):
        assert main(["calibrate", "--from-histograms", str(h), "-o", str(tmp_path / "c.cache"),
                     "--method", "percentile", "--percentile", "90", "--algorithm", "entropy2"]
                    ) == 0
    out = capsys.readouterr().out
    assert "clipped" in out.splitlines()[0]
    assert f"! 2 tensor(s) clip more than {100 * CLIP_WARN_FRACTION:g}%" in out
    assert "clip more than" in caplog.text
    assert main(["calibrate", "--from-histograms", str(h), "-o", str(tmp_path / "d.cache")]) == 0
    out = capsys.readouterr().out
    assert "clipped" in out and " !" not in out


def test_cli_search_shows_and_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h = tmp_path / "h.npz"
    _collector().save(h)
    assert main(["search", str(h), "--method", "percentile", "--option", "percentile=90"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[-2:] == ["clipped", "rule"]
    assert f"clip more than {100 * CLIP_WARN_FRACTION:g}%" in out
    assert main(["search", str(h), "--method", "legacy", "--option", "quantile=3"]) == 2
    assert "quantile" in capsys.readouterr().err


def test_threshold_a_rounding_below_the_top_clips_nothing() -> None:
    from kldiv.scales import clipped_fraction

    top = 49 * (2.0 / 49)  # 1.9999999999999998: the last bin's upper edge, rounded down
    assert top < 2.0
    assert clipped_fraction(np.ones(49), 2.0, top) == 0.0
