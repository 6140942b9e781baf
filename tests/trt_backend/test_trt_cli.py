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


def test_build_never_writes_over_its_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--out`` naming the model or the cache is refused even with ``--force``, before any
    file is read (TensorRT's loader stubbed: the check comes first either way).
    """
    monkeypatch.setattr(_tensorrt, "load", lambda: None)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model bytes")
    cache = tmp_path / "m.cache"
    cache.write_text("TRT-8600-EntropyCalibration2\n")
    for out in (model, cache):
        rc = main(["build", str(model), "--cache", str(cache), "--out", str(out), "--force"])
        assert rc == 2
        assert "is also an input" in capsys.readouterr().err
    assert model.read_bytes() == b"model bytes"


def test_crosscheck_checks_its_outputs_before_calibrating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing report without ``--force``, or an input among the outputs, fails before
    TensorRT calibrates (which would take minutes).
    """
    from trt_backend import crosschecking

    monkeypatch.setattr(_tensorrt, "version", lambda: (10, 0, 0))
    monkeypatch.setattr(_tensorrt, "require_implicit", lambda v: None)

    def never(*a: object, **k: object) -> None:
        raise AssertionError("calibrated before the outputs were checked")

    monkeypatch.setattr(crosschecking, "crosscheck", never)
    out = tmp_path / "o"
    out.mkdir()
    (out / "crosscheck.txt").write_text("earlier report")
    data = tmp_path / "d"
    data.mkdir()
    rc = main(["crosscheck", "model.onnx", "--data", str(data), "--out-dir", str(out)])
    assert rc == 2 and "--force" in capsys.readouterr().err
    model = out / "tensorrt.cache"  # an input that sits where an output would go
    model.write_bytes(b"x")
    rc = main(["crosscheck", str(model), "--data", str(data), "--out-dir", str(out), "--force"])
    assert rc == 2 and "is also an input" in capsys.readouterr().err
    assert (out / "crosscheck.txt").read_text() == "earlier report"
