"""minmax / percentile / mse behind choose_threshold."""

from __future__ import annotations

import numpy as np
import pytest

from kldiv.entropy import search_threshold
from kldiv.errors import PresetError
from kldiv.histogram import ActivationHistogram
from kldiv.scales import amax_to_scale
from kldiv.thresholds import METHODS, choose_threshold


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
    assert METHODS["entropy"] is search_threshold  # the entropy method is the search itself
    for kwargs in ({}, {"preset": "modelopt"}, {"preset": "gtc2017", "stride": 3}):
        ours, direct = choose_threshold(h, "entropy", **kwargs), search_threshold(h, **kwargs)
        assert (ours.amax, ours.bin_index, ours.preset) == (
            direct.amax, direct.bin_index, direct.preset)
    with pytest.raises(PresetError, match="choose one of"):
        choose_threshold(h, "kl")
    with pytest.raises(PresetError, match="valid options"):
        choose_threshold(h, "percentile", pct=99)
    with pytest.raises(ValueError):
        choose_threshold(h, "percentile", percentile=101)


def _cli_percentile(value: float, capsys: pytest.CaptureFixture[str]) -> str | None:
    """``kldiv calibrate --percentile VALUE``'s parse: None if accepted, else its error."""
    from kldiv.cli import build_parser

    argv = ["calibrate", "m.onnx", "--data", "d", "--out", "x.cache", "--method", "percentile",
            "--percentile", repr(value), "--algorithm", "entropy2"]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        return capsys.readouterr().err
    assert args.percentile == value
    return None


@pytest.mark.parametrize(
    ("value", "accepted"),
    [(0.0, False), (100.0, True), (-1.0, False), (100.5, False), (1e-6, True), (99.99, True)],
)
def test_percentile_range_is_one_rule(
    value: float, accepted: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """``percentile_threshold``, ``check_options`` and the CLI accept and refuse alike."""
    from kldiv._checks import check_options
    from kldiv.thresholds import percentile_threshold

    rule = "must be above 0 and at most 100"
    if accepted:
        r = percentile_threshold(_hist(), percentile=value)
        assert 0 < r.amax <= _hist().amax
        check_options(method="percentile", preset="tensorrt",
                      options={"percentile": value}, num_bins=None)
        assert _cli_percentile(value, capsys) is None
        return
    with pytest.raises(PresetError, match=rule):
        percentile_threshold(_hist(), percentile=value)
    with pytest.raises(PresetError, match=rule):
        check_options(method="percentile", preset="tensorrt",
                      options={"percentile": value}, num_bins=None)
    err = _cli_percentile(value, capsys)
    assert err is not None and f"--percentile={value!r} {rule}" in err

