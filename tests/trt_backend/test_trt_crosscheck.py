"""Report assembly and files of the cross-check, on real TensorRT caches (no TensorRT needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kldiv.cachefile import parse_cache, read_cache
from kldiv.errors import OutputExistsError
from trt_backend.crosschecking import OUTPUT_FILES, assemble


def test_assemble_and_write(trt_caches: Path, tmp_path: Path) -> None:
    # Two real sampleINT8 caches (TensorRT 5.1 and 7.0, same 8 tensors, different scales) stand
    # for "kldiv's table" and "the cache TensorRT wrote".
    ours = read_cache(trt_caches / "sampleint8-mnist-trt5100.cache")
    theirs_bytes = (trt_caches / "sampleint8-mnist-trt7000.cache").read_bytes()
    result = assemble(ours, theirs_bytes, trt_version="10.9.0")
    assert result.theirs == parse_cache(theirs_bytes.decode())
    assert result.report.summary()  # compared tensor by tensor
    counts = result.report.counts
    assert sum(counts.values()) >= 8
    text = result.to_text()
    assert "TensorRT 10.9.0" in text and "TensorRT / kldiv" in text

    written = result.write(tmp_path / "out")
    assert (tmp_path / "out" / OUTPUT_FILES["tensorrt_cache"]).read_bytes() == theirs_bytes
    ours_file = (tmp_path / "out" / OUTPUT_FILES["kldiv_cache"]).read_bytes()
    assert ours_file.startswith(b"TRT-100900-EntropyCalibration2\n")
    assert parse_cache(ours_file.decode()) == ours
    assert {"report", "json", "tensorrt_cache", "kldiv_cache"} <= set(written)
    with pytest.raises(OutputExistsError):
        result.write(tmp_path / "out")
    result.write(tmp_path / "out", force=True)


def test_identical_tables_agree(trt_caches: Path) -> None:
    data = (trt_caches / "trt8-8501-retinaface-onnx-names.cache").read_bytes()
    result = assemble(parse_cache(data.decode()), data, trt_version="8.5.1")
    assert result.report.all_bit_identical
