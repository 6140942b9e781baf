"""kldiv-trt without TensorRT: exit status 2 and the install hint."""

from __future__ import annotations

from pathlib import Path

import pytest

from trt_backend import _tensorrt
from trt_backend.cli import main


@pytest.fixture(autouse=True)
def _no_tensorrt() -> None:
    if _tensorrt.available():  # pragma: no cover
        pytest.skip("a real TensorRT is installed")


def test_build_without_tensorrt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["build", "model.onnx", "--cache", "x.cache", "--out", str(tmp_path / "m.engine")])
    assert rc == 2
    err = capsys.readouterr().err
    assert 'pip install "kldiv[trt]"' in err and err.count("\n") == 1
    assert not (tmp_path / "m.engine").exists()


def test_crosscheck_without_tensorrt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["crosscheck", "model.onnx", "--data", "d", "--out-dir", str(tmp_path / "o")])
    assert rc == 2
    assert 'pip install "kldiv[trt]"' in capsys.readouterr().err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "crosscheck" in capsys.readouterr().out


def test_usage_errors_name_the_subcommand_and_return_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An argument error prints the subcommand's usage and returns 2 (no SystemExit), as the
    kldiv command does; -q and -v are taken before or after the subcommand.
    """
    assert main(["build", "model.onnx"]) == 2  # --out missing
    err = capsys.readouterr().err
    assert "usage: kldiv-trt build" in err and "--out" in err
    assert main(["build", "model.onnx", "--out", "x", "--bogus"]) == 2
    assert "usage: kldiv-trt build" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "-q, --quiet" in capsys.readouterr().out


def test_quiet_and_verbose_are_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for flags in (["-q"], ["-vv"]):
        rc = main([*flags, "build", "model.onnx", "--out", str(tmp_path / "m.engine"), *flags])
        assert rc == 2  # no TensorRT here: the install hint, not a usage error
        assert 'pip install "kldiv[trt]"' in capsys.readouterr().err
