"""Exports (kldiv/exports.py) against nvdla/sw's conversion and ONNX Runtime's own writer."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest

from kldiv.cachefile import header_for, read_cache
from kldiv.errors import CacheFormatError, OutputExistsError
from kldiv.exports import (
    detect_format,
    format_table,
    read_csv,
    read_dynamic_range_text,
    read_json,
    read_nvdla_json,
    read_ort_flatbuffers,
    read_ort_json,
    read_ort_text,
    read_table,
    to_csv,
    to_dynamic_range_text,
    to_json,
    to_nvdla_json,
    to_ort_json,
    to_ort_text,
    write_ort_tables,
    write_table,
)
from kldiv.scales import CalibrationTable, amax_to_scale


@pytest.fixture
def nvdla_cache(trt_caches: Path) -> CalibrationTable:
    return read_cache(trt_caches / "nvdla-resnet50-trt5101.cache")


def test_nvdla_json_equals_nvdla_sw_conversion(trt_caches: Path, nvdla_cache: CalibrationTable) -> None:
    ref_text = (trt_caches / "nvdla-resnet50-orig-1ae4738.json").read_text()
    ref = json.loads(ref_text)
    ours = json.loads(to_nvdla_json(nvdla_cache))
    assert list(ours) == list(ref)  # same keys, same order
    for name in ref:  # value for value
        assert ours[name] == ref[name]
        # and the scale is exactly the float32 of the cache's hex (independent decoder)
        hx = nvdla_cache.hex(name).rjust(8, "0")
        assert ref[name]["scale"] == struct.unpack(">f", bytes.fromhex(hx))[0]
    assert to_nvdla_json(nvdla_cache) == ref_text  # and byte for byte


def test_nvdla_json_readers(trt_caches: Path, nvdla_cache: CalibrationTable) -> None:
    assert read_nvdla_json((trt_caches / "nvdla-resnet50-orig-1ae4738.json").read_text()) == nvdla_cache
    renamed = read_table(trt_caches / "nvdla-resnet50.json")  # keys renamed to layer names
    assert renamed.provenance["format"] == "nvdla-json"
    assert [renamed.bits(n) for n in renamed] == [nvdla_cache.bits(n) for n in nvdla_cache]
    assert sum(a != b for a, b in zip(renamed, nvdla_cache)) == 224  # SOURCES.md


def test_dynamic_range_fixture_and_round_trip(trt_caches: Path) -> None:
    path = trt_caches / "resnet50_per_tensor_dynamic_range.txt"
    text = path.read_text()
    t = read_table(path)
    assert t.provenance["format"] == "dynamic-range" and len(t) == 178
    for line in text.splitlines():
        name, value = line.split(":")  # the fixture has no ':' in names
        assert t[name] == amax_to_scale(float(value))
    # our text reads back to the same scales
    assert read_dynamic_range_text(to_dynamic_range_text(t)) == t


def test_dynamic_range_refuses_or_renames_colons(trt_caches: Path) -> None:
    t = read_cache(trt_caches / "mlperf-v0.5-inspur-resnet50-tf-trt5102.cache")
    with pytest.raises(CacheFormatError, match="colon_replacement"):
        to_dynamic_range_text(t)
    text = to_dynamic_range_text(t, colon_replacement="_")
    back = read_dynamic_range_text(text)
    assert "input_tensor_0" in back and not any(":" in n for n in back)
    for line in text.splitlines():  # sampleINT8API's reader: split at the first ':'
        name, value = line.split(":", 1)
        assert float(value) == back.amax(name) or back[name] == amax_to_scale(float(value))


def test_dynamic_range_of_a_cache_keeps_scales(trt_caches: Path) -> None:
    t = read_cache(trt_caches / "trt8-8601-diffusion-zeros-inf.cache")
    back = read_dynamic_range_text(to_dynamic_range_text(t))
    # amax = scale*127 exactly in float64; amax_to_scale gives back the same float32 scale
    same = sum(back.bits(n) == t.bits(n) for n in t)
    assert same == len(t), f"{len(t) - same} scales changed through dynamic-range text"


def test_ort_tables_with_onnxruntime_writer(tmp_path: Path, nvdla_cache: CalibrationTable) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("flatbuffers")
    paths = write_ort_tables(nvdla_cache, tmp_path)
    assert sorted(p.name for p in paths) == [
        "calibration.cache", "calibration.flatbuffers", "calibration.json"
    ]
    # our pure writers give the bytes ONNX Runtime's writer gave
    assert (tmp_path / "calibration.cache").read_text() == to_ort_text(nvdla_cache)
    assert (tmp_path / "calibration.json").read_text() == to_ort_json(nvdla_cache)
    # read back with ONNX Runtime's generated TrtTable classes
    fb = read_ort_flatbuffers((tmp_path / "calibration.flatbuffers").read_bytes())
    js = read_ort_json((tmp_path / "calibration.json").read_text())
    tx = read_ort_text((tmp_path / "calibration.cache").read_text())
    assert dict(fb.items()) == dict(js.items()) == dict(tx.items())
    assert set(fb) == set(nvdla_cache)
    for n in nvdla_cache:  # amax is stored as float32: scale survives within 1 ULP
        assert abs(fb.bits(n) - nvdla_cache.bits(n)) <= 1
    assert read_table(tmp_path).provenance["format"] == "ort-flatbuffers"
    for name, fmt in [("calibration.cache", "ort-text"), ("calibration.json", "ort-json"),
                      ("calibration.flatbuffers", "ort-flatbuffers")]:
        assert detect_format((tmp_path / name).read_bytes(), path=name) == fmt
    with pytest.raises(OutputExistsError):
        write_ort_tables(nvdla_cache, tmp_path)


def test_ort_flatbuffers_independent_of_our_reader(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("flatbuffers")
    from onnxruntime.quantization.CalTableFlatBuffers.TrtTable import TrtTable

    t = CalibrationTable.from_amaxes({"a:0": 2.5, "b c": 0.125})
    write_ort_tables(t, tmp_path)
    root = TrtTable.GetRootAsTrtTable((tmp_path / "calibration.flatbuffers").read_bytes(), 0)
    got = {root.Dict(i).Key().decode(): float(root.Dict(i).Value()) for i in range(root.DictLength())}
    assert got == pytest.approx({"a:0": 2.5, "b c": 0.125}, rel=1e-7)


def test_ort_json_reader_uses_max_of_highest_lowest() -> None:
    text = json.dumps({"x": {"lowest": -8.0, "highest": 3.0}, "y": {"lowest": 0.0, "highest": 6.0}})
    t = read_ort_json(text)
    assert t.amax("x") == pytest.approx(3.0) and t.amax("y") == pytest.approx(6.0)


def test_garbage_flatbuffers() -> None:
    pytest.importorskip("onnxruntime")
    with pytest.raises(CacheFormatError, match="flatbuffers"):
        read_ort_flatbuffers(b"\x01\x02garbage")


def test_csv_and_json_round_trip_with_provenance(trt_caches: Path) -> None:
    t = read_cache(trt_caches / "trt8-8601-diffusion-zeros-inf.cache")
    t.provenance["method"] = "entropy"
    for text, reader in [(to_csv(t), read_csv), (to_json(t), read_json)]:
        back = reader(text)
        assert back == t  # bits (zeros, infinities) and order
        assert back.header == t.header
        assert back.provenance["method"] == "entropy"
    doc = json.loads(to_json(t))  # strict JSON: no Infinity
    inf = [r for r in doc["tensors"] if r["scale_hex"] == "7f800000"]
    assert len(inf) == 7 and all(r["scale"] is None for r in inf)


def test_read_table_detects_every_format(tmp_path: Path, trt_caches: Path) -> None:
    t = read_cache(trt_caches / "sampleint8-mnist-trt7000.cache")
    for fmt in ["trt", "dynamic-range", "nvdla-json", "ort-json", "ort-text", "csv", "json"]:
        p = write_table(t, tmp_path / f"x.{fmt}", format=fmt)[0]
        back = read_table(p)
        expected = {"trt": "tensorrt-cache", "csv": "tensorrt-cache", "json": "tensorrt-cache"}
        assert back.provenance["format"] == expected.get(fmt, fmt)  # csv/json keep provenance
        assert set(back) == set(t)
        for n in t:
            assert abs(back.bits(n) - t.bits(n)) <= 1, (fmt, n)
        assert detect_format(p.read_bytes()) == fmt


def test_write_table_trt_with_header(tmp_path: Path, trt_caches: Path) -> None:
    t = read_cache(trt_caches / "sampleint8-mnist-trt5100.cache")
    text = format_table(t, "trt", header=header_for("8.6.1", "entropy2"))
    assert text.startswith("TRT-8601-EntropyCalibration2\n")
    with pytest.raises(CacheFormatError, match="unknown output format"):
        format_table(t, "yaml")


def test_bad_inputs_raise_cache_format_error() -> None:
    with pytest.raises(CacheFormatError) as e:
        read_dynamic_range_text("a:1.0\nb:xyz\n", path="d.txt")
    assert e.value.line == 2
    with pytest.raises(CacheFormatError, match="duplicate"):
        read_dynamic_range_text("a:1.0\na:2.0\n")
    with pytest.raises(CacheFormatError, match="JSON"):
        read_nvdla_json('{"a": ')
    with pytest.raises(CacheFormatError, match="scale"):
        read_nvdla_json('{"a": {"min": 0}}')
    with pytest.raises(CacheFormatError):
        read_json("{}")
    with pytest.raises(CacheFormatError, match="empty"):
        read_ort_text("")


def test_qdq_reexport_is_lazy() -> None:
    import importlib
    import sys

    import kldiv.exports as ex

    importlib.reload(ex)
    assert "to_qdq_onnx" not in vars(ex) or "kldiv.qdq" in sys.modules
    try:
        from kldiv.exports import to_qdq_onnx
    except ModuleNotFoundError as exc:  # an installation without kldiv.qdq
        assert exc.name == "kldiv.qdq"
    else:
        assert callable(to_qdq_onnx)


def test_nonfinite_amax_exports() -> None:
    t = CalibrationTable()
    t.set_bits("inf", 0x7F800000)
    t.set_bits("zero", 0)
    assert "inf:inf\n" in to_dynamic_range_text(t)
    back = read_dynamic_range_text(to_dynamic_range_text(t))
    assert math.isinf(back["inf"]) and back.bits("zero") == 0
    assert '"scale": Infinity' in to_nvdla_json(t)  # what Python's json writes, as nvdla/sw's would
    assert np.isinf(read_nvdla_json(to_nvdla_json(t))["inf"])
