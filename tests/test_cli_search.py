"""``kldiv search``: thresholds from saved histograms equal the library's, errors exit 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kldiv.cli import main
from kldiv.collect import HistogramCollector
from kldiv.entropy import search_threshold


@pytest.fixture()
def hist_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(7)
    collector = HistogramCollector()
    for _ in range(3):
        collector.observe(
            {
                "relu": np.maximum(rng.normal(size=(8, 64)), 0).astype(np.float32),
                "gauss": rng.normal(scale=3.0, size=(8, 64)).astype(np.float32),
            }
        )
    path = tmp_path / "h.npz"
    collector.save(path)
    return path


def _rows(out: str) -> dict[tuple[str, str], list[str]]:
    lines = out.strip().splitlines()[2:]
    return {(c[0], c[1]): c for c in (ln.split() for ln in lines)}


def test_search_matches_library_for_each_preset(
    hist_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["search", str(hist_file), "--preset", "tensorrt", "--preset", "modelopt"]) == 0
    rows = _rows(capsys.readouterr().out)
    loaded = HistogramCollector.load(hist_file)
    for name in ("relu", "gauss"):
        for preset in ("tensorrt", "modelopt"):
            expected = search_threshold(loaded[name], preset)
            row = rows[(name, preset)]
            assert row[2] == str(expected.bin_index)
            assert row[5] == expected.scale_hex


def test_option_override_changes_the_search(
    hist_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["search", str(hist_file), "--tensor", "gauss", "--option", "threshold_offset=0"]) == 0
    )
    row = _rows(capsys.readouterr().out)[("gauss", "tensorrt+threshold_offset=0")]
    h = HistogramCollector.load(hist_file)["gauss"]
    expected = search_threshold(h, "tensorrt", threshold_offset=0)
    assert row[5] == expected.scale_hex
    assert expected.scale_hex != search_threshold(h, "tensorrt").scale_hex


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tensor", "missing"], "not in"),
        (["--option", "bogus=1"], "unknown entropy option"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    hist_file: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["search", str(hist_file), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_unknown_preset_is_a_usage_error(
    hist_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["search", str(hist_file), "--preset", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: kldiv search") and "invalid choice: 'nope'" in err


def test_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", str(tmp_path / "none.npz")]) == 2
    assert "not found" in capsys.readouterr().err
