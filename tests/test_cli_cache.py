"""`kldiv cache show|convert` and `kldiv compare`: output, exit codes, no overwrite."""

from __future__ import annotations

from pathlib import Path

import pytest

from kldiv.cachefile import read_cache
from kldiv.cli import main


def test_show(trt_caches: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "show", str(trt_caches / "trt8-8601-diffusion-zeros-inf.cache")]) == 0
    out = capsys.readouterr().out
    assert "TensorRT: 8.6.1 (number 8601); algorithm: EntropyCalibration2" in out
    assert "tensors: 848; zero: 80; inf: 7; nan: 0" in out
    assert sum(line.endswith(" inf") for line in out.splitlines()) == 7
    assert main(["cache", "show", str(trt_caches / "legacy-mnist-trt6.cache")]) == 0
    assert "quantile 0.999999" in capsys.readouterr().out


def test_convert_to_trt_with_new_header(
    trt_caches: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = trt_caches / "sampleint8-mnist-trt7000.cache"
    out = tmp_path / "new.cache"
    args = ["cache", "convert", str(src), "--to", "trt", "--trt-version", "10.9.0", "-o", str(out)]
    assert main(args) == 0
    text = out.read_text()
    assert text == "TRT-100900-EntropyCalibration2\n" + src.read_text().split("\n", 1)[1]
    assert main(args) == 2  # exists: refuse without --force
    assert "--force" in capsys.readouterr().err
    assert main([*args[:-2], "--algorithm", "minmax", "-o", str(out), "--force"]) == 0
    assert out.read_text().startswith("TRT-100900-MinMaxCalibration\n")
    assert main(["cache", "convert", str(src), "--to", "trt", "--algorithm", "legacy",
                 "--trt-version", "7.2"]) == 0
    assert capsys.readouterr().out.startswith("0 3ff0000000000000 3feffffde7210be9\n")


@pytest.mark.parametrize("fmt", ["dynamic-range", "nvdla-json", "ort-json", "ort-text", "csv", "json"])
def test_convert_stdout_formats(trt_caches: Path, fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "convert", str(trt_caches / "sampleint8-mnist-trt5100.cache"),
                 "--to", fmt]) == 0
    assert "conv1" in capsys.readouterr().out


def test_convert_ort_folder(trt_caches: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("flatbuffers")
    src = trt_caches / "sampleint8-mnist-trt7000.cache"
    assert main(["cache", "convert", str(src), "--to", "ort", "-o", str(tmp_path)]) == 0
    assert (tmp_path / "calibration.flatbuffers").exists()
    assert main(["cache", "convert", str(src), "--to", "ort"]) == 2


def test_round_trip_through_json_cli(trt_caches: Path, tmp_path: Path) -> None:
    src = trt_caches / "trt10-100300-yolo-chicken.cache"
    js = tmp_path / "t.json"
    back = tmp_path / "back.cache"
    assert main(["cache", "convert", str(src), "--to", "json", "-o", str(js)]) == 0
    assert main(["cache", "convert", str(js), "--to", "trt", "-o", str(back)]) == 0
    assert back.read_bytes() == src.read_bytes()


def test_compare_exit_codes(trt_caches: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = str(trt_caches / "mlperf-v0.5-nvidia-resnet50-trt6001.cache")
    b = str(trt_caches / "mlperf-v0.7-nvidia-resnet50-trt7200.cache")
    assert main(["compare", a, b]) == 0
    out = capsys.readouterr().out
    assert "bit-identical: 20/125" in out
    assert main(["compare", a, b, "--fail-on", "bits"]) == 1
    assert main(["compare", a, b, "--fail-on", "names"]) == 0
    assert main(["compare", a, a, "--fail-on", "any"]) == 0
    nv = str(trt_caches / "nvdla-resnet50-trt5101.cache")
    js = str(trt_caches / "nvdla-resnet50.json")
    assert main(["compare", nv, js, "--match", "position", "--fail-on", "bits"]) == 0
    assert main(["compare", nv, js, "--fail-on", "names"]) == 1
    capsys.readouterr()
    assert main(["compare", a, b, "--json"]) == 0
    assert '"bit_identical": 20' in capsys.readouterr().out


def test_compare_plot(trt_caches: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    a = str(trt_caches / "mlperf-v0.5-nvidia-resnet50-trt6001.cache")
    b = str(trt_caches / "mlperf-v0.7-nvidia-resnet50-trt7200.cache")
    png = tmp_path / "r.png"
    assert main(["compare", a, b, "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["compare", a, b, "--plot", str(png)]) == 2  # no overwrite without --force
    assert main(["compare", a, b, "--plot", str(png), "--force"]) == 0


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "empty"),
        (b"\x7fELF\x02\x01\x01\x00\x00\xff\xfe", "UTF-8|binary"),
        (b"TRT-8601-EntropyCalibration2\nconv1: 3c8", None),  # fine: truncated but hex
        (b"TRT-8601-EntropyCalibration2\nconv1\n", "no ': '"),
        (b"TRT-8601-EntropyCalibration2\nx: 1\nx: 2\n", "duplicate"),
        (b"TRT-8601-FooCalibration\nx: 1\n", "unknown calibration algorithm"),
    ],
)
def test_bad_input_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, match: str | None
) -> None:
    p = tmp_path / "bad.cache"
    p.write_bytes(content)
    code = main(["cache", "show", str(p)])
    err = capsys.readouterr().err
    if match is None:
        assert code == 0
        return
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert str(p) in err
    import re

    assert re.search(match, err)


def test_missing_file_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "/no/such/a.cache", "/no/such/b.cache"]) == 2
    assert "no such calibration table" in capsys.readouterr().err


def test_written_cache_reads_back(trt_caches: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.cache"
    src = trt_caches / "mlperf-v0.5-nvidia-gnmt-minmax-trt6001-inf.cache"
    assert main(["cache", "convert", str(src), "--to", "trt", "--trt-version", "8.6.1", "-o",
                 str(out)]) == 0
    assert read_cache(out) == read_cache(src)
    assert read_cache(out).header.text == "TRT-8601-MinMaxCalibration"
