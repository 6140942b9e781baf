"""The legacy calibrator (``method="legacy"``): the quantile rule on the |x| histogram, its
header, its options checked before any model runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kldiv.cli import main
from kldiv.collect import HistogramCollector
from kldiv.defaults import DEFAULT_LEGACY_CUTOFF, DEFAULT_LEGACY_QUANTILE
from kldiv.errors import PresetError
from kldiv.pipeline import calibrate, calibrate_histograms
from kldiv.thresholds import choose_threshold, legacy_threshold
from tests._hist_strategies import counts_arrays, make_hist


def test_defaults_are_the_sampleint8_legacy_cache() -> None:
    assert (DEFAULT_LEGACY_QUANTILE, DEFAULT_LEGACY_CUTOFF) == (0.999999, 1.0)


def test_rule_by_hand() -> None:
    counts = np.array([90, 5, 3, 1, 1, 0, 0, 0], dtype=np.int64)  # N = 100
    # at most 2 values at or above the edge: bins >= 3 hold 2 -> edge 3
    r = legacy_threshold(make_hist(counts, 8.0), quantile=0.98)
    assert (r.bin_index, r.amax, r.method) == (3, 3.0, "legacy")
    assert r.clipped_fraction == pytest.approx(0.02)
    # quantile 1: nothing may be clipped -> the first edge above every value
    assert legacy_threshold(make_hist(counts, 8.0), quantile=1.0).bin_index == 5


@settings(max_examples=60)
@given(counts=counts_arrays(16, 600), quantile=st.floats(0.5, 1.0))
def test_smallest_edge_within_the_quantile(counts: np.ndarray, quantile: float) -> None:
    r = legacy_threshold(make_hist(counts, 2.0), quantile=quantile)
    k = r.bin_index
    assert k is not None
    allowed = (1 - quantile) * counts.sum()
    assert counts[k:].sum() <= allowed
    assert k == 0 or counts[k - 1:].sum() > allowed
    assert r.amax == k * (2.0 / counts.size)
    assert r.clipped_fraction == pytest.approx(counts[k:].sum() / counts.sum(), abs=1e-12)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"quantile": 0.0}, "outside"),
        ({"quantile": 1.5}, "outside"),
        ({"quantile": -0.1}, "outside"),
        ({"regression_cutoff": 0.0}, "outside"),
        ({"regression_cutoff": 1.01}, "outside"),
        ({"regression_cutoff": 0.5}, "unknown"),
        ({"bogus": 1}, "unknown option"),
    ],
)
def test_bad_options(options: dict[str, float], match: str) -> None:
    with pytest.raises(PresetError, match=match):
        choose_threshold(make_hist(np.ones(64, dtype=np.int64)), "legacy", **options)


def _collector() -> HistogramCollector:
    rng = np.random.default_rng(3)
    c = HistogramCollector()
    for _ in range(3):
        x = rng.standard_normal((8, 4, 6, 6)).astype(np.float32)
        c.observe({"conv": x, "pool": x[..., ::2, ::2]})
    c.meta["scale_sources"] = {"pool": "conv"}
    return c


def test_header_and_no_pooling_inheritance() -> None:
    results, table = calibrate_histograms(
        _collector(), method="legacy", trt_version="6.0.1", options={"quantile": 0.999999}
    )
    assert table.header is not None and table.header.kind == "legacy"
    assert table.header.text == "03ff00000000000003feffffde7210be9"  # as legacy-mnist-trt6
    assert results["pool"].method == "legacy"  # searched, not inherited
    _, spaced = calibrate_histograms(
        _collector(), method="legacy", trt_version="7.2.0", options={"quantile": 0.99999}
    )
    assert spaced.header is not None
    assert spaced.header.text == "0 3ff0000000000000 3fefffeb074a771d"  # as the MLPerf cache


def test_calibrate_refuses_bad_options_before_the_model_runs() -> None:
    # model and data are not even valid: the options are checked first
    with pytest.raises(PresetError, match="quantile"):
        calibrate("no-such-model.onnx", "no-such-data", method="legacy",
                  options={"quantile": 2.0})


@pytest.mark.parametrize(
    "argv",
    [
        ["--quantile", "0"],
        ["--quantile", "1.5"],
        ["--regression-cutoff", "0"],
        ["--regression-cutoff", "2"],
        ["--regression-cutoff", "0.9"],
    ],
)
def test_cli_bad_legacy_options_exit_2_before_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    try:  # outside (0, 1]: argparse rejects the value; a cutoff below 1.0: kldiv refuses it
        code = main(["calibrate", str(tmp_path / "missing.onnx"), "--data", str(tmp_path),
                     "-o", str(tmp_path / "x.cache"), "--method", "legacy", *argv])
    except SystemExit as exc:
        code = exc.code  # type: ignore[assignment]
    assert code == 2
    err = capsys.readouterr().err
    assert "cutoff" in err or "quantile" in err
    assert "(0, 1]" in err or "unknown" in err
    assert not (tmp_path / "x.cache").exists()


def test_cli_legacy_flags_need_the_legacy_method(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["calibrate", str(tmp_path / "m.onnx"), "--data", str(tmp_path),
                 "-o", str(tmp_path / "x.cache"), "--quantile", "0.99"])
    assert code == 2
    assert "--method legacy" in capsys.readouterr().err


def test_cli_legacy_from_histograms(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h = tmp_path / "h.npz"
    _collector().save(h)
    out = tmp_path / "legacy.cache"
    assert main(["calibrate", "--from-histograms", str(h), "-o", str(out), "--method", "legacy",
                 "--quantile", "0.9999", "--trt-version", "8.6.1"]) == 0
    text = out.read_text()
    assert text.startswith("0 3ff0000000000000 3fefff2e48e8a71e\n")
    assert "clipped" in capsys.readouterr().out
