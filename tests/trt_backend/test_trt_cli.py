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
