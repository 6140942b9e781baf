"""TensorRT cache codec (kldiv/cachefile.py): golden tests on every real fixture, bad input."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest

from kldiv.cachefile import (
    format_cache,
    header_for,
    parse_cache,
    parse_header,
    read_cache,
    trt_version_number,
    write_cache,
)
from kldiv.errors import CacheFormatError, OutputExistsError
from kldiv.scales import CacheHeader, CalibrationTable, scale_to_amax

# Every cache fixture TensorRT wrote (README extracts included: their text is TensorRT's output).
TRT_WRITTEN = [
    "legacy-mnist-trt6.cache",
    "mlperf-v0.5-inspur-resnet50-tf-trt5102.cache",
    "mlperf-v0.5-nvidia-gnmt-minmax-trt6001-inf.cache",
    "mlperf-v0.5-nvidia-resnet50-trt6001.cache",
    "mlperf-v0.7-nvidia-3d-unet-legacy.cache",
    "mlperf-v0.7-nvidia-resnet50-trt7200.cache",
    "mlperf-v0.7-nvidia-rnnt-minmax-trt7200.cache",
    "mlperf-v1.0-nvidia-ssd-mobilenet-trt7203.cache",
    "nvdla-resnet50-trt5101.cache",
    "sampleint8-mnist-trt5100.cache",
    "sampleint8-mnist-trt7000.cache",
    "trt10-100300-yolo-chicken.cache",
    "trt10-101401-groot-backbone-zeros.cache",
    "trt8-8001-trtexec-numeric-names.cache",
    "trt8-8400-minmax-vgg16.cache",
    "trt8-8501-retinaface-onnx-names.cache",
    "trt8-8601-diffusion-zeros-inf.cache",
]

# file -> (header kind, version number, algorithm, entries) from SOURCES.md's summary table
EXPECTED = {
    "legacy-mnist-trt6.cache": ("legacy", None, None, 8),
    "mlperf-v0.5-inspur-resnet50-tf-trt5102.cache": ("trt", 5102, "EntropyCalibration2", 131),
    "mlperf-v0.5-nvidia-gnmt-minmax-trt6001-inf.cache": ("trt", 6001, "MinMaxCalibration", 53),
    "mlperf-v0.5-nvidia-resnet50-trt6001.cache": ("trt", 6001, "EntropyCalibration2", 125),
    "mlperf-v0.7-nvidia-3d-unet-legacy.cache": ("legacy", None, None, 56),
    "mlperf-v0.7-nvidia-resnet50-trt7200.cache": ("trt", 7200, "EntropyCalibration2", 125),
    "mlperf-v0.7-nvidia-rnnt-minmax-trt7200.cache": ("trt", 7200, "MinMaxCalibration", 22),
    "mlperf-v1.0-nvidia-ssd-mobilenet-trt7203.cache": ("trt", 7203, "EntropyCalibration2", 127),
    "nvdla-resnet50-trt5101.cache": ("trt", 5101, "EntropyCalibration2", 229),
    "sampleint8-mnist-trt5100.cache": ("trt", 5100, "EntropyCalibration2", 8),
    "sampleint8-mnist-trt7000.cache": ("trt", 7000, "EntropyCalibration2", 8),
    "trt10-100300-yolo-chicken.cache": ("trt", 100300, "EntropyCalibration2", 343),
    "trt10-101401-groot-backbone-zeros.cache": ("trt", 101401, "EntropyCalibration2", 4409),
    "trt8-8001-trtexec-numeric-names.cache": ("trt", 8001, "EntropyCalibration2", 108),
    "trt8-8400-minmax-vgg16.cache": ("trt", 8400, "MinMaxCalibration", 67),
    "trt8-8501-retinaface-onnx-names.cache": ("trt", 8501, "EntropyCalibration2", 126),
    "trt8-8601-diffusion-zeros-inf.cache": ("trt", 8601, "EntropyCalibration2", 848),
}


def _struct_scale(hex_text: str) -> float:
    """Independent reference decoder: big-endian float32 from padded hex (struct)."""
    return struct.unpack(">f", bytes.fromhex(hex_text.rjust(8, "0")))[0]


@pytest.mark.parametrize("name", TRT_WRITTEN)
def test_every_fixture_parses_and_round_trips_byte_for_byte(trt_caches: Path, name: str) -> None:
    raw = (trt_caches / name).read_bytes()
    table = read_cache(trt_caches / name)
    kind, number, algorithm, entries = EXPECTED[name]
    assert table.header is not None
    assert (table.header.kind, table.header.version_number, table.header.algorithm) == (
        kind, number, algorithm
    )
    assert len(table) == entries == raw.count(b"\n") - 1
    assert format_cache(table).encode() == raw


@pytest.mark.parametrize("name", TRT_WRITTEN)
def test_every_scale_equals_an_independent_decoder(trt_caches: Path, name: str) -> None:
    text = (trt_caches / name).read_text()
    table = parse_cache(text)
    body = text.splitlines()[1:]
    assert list(table) == [line.rsplit(": ", 1)[0] for line in body]
    for line in body:
        tensor, value = line.rsplit(": ", 1)
        ref = _struct_scale(value)
        got = float(table[tensor])
        assert got == ref or (math.isnan(got) and math.isnan(ref))
        assert table.hex(tensor) == value


def test_known_entries(trt_caches: Path) -> None:
    t7 = read_cache(trt_caches / "sampleint8-mnist-trt7000.cache")
    t5 = read_cache(trt_caches / "sampleint8-mnist-trt5100.cache")
    # prob: 3c010a14 is identical in both READMEs; 3c010a14 = float32(1.00024414 / 127)
    assert t7.hex("prob") == t5.hex("prob") == "3c010a14"
    assert t7["prob"] == np.float32(np.float32(1.000244140625) / np.float32(127))
    assert t7.amax("prob") == pytest.approx(1.00024414, rel=1e-7)
    assert list(t7) == ["data", "conv1", "pool1", "conv2", "pool2", "ip1", "ip2", "prob"]
    assert t7.hex("data") == "3c008912"
    assert t7.header.trt_version == "7.0.0"
    assert t5.header.trt_version == "5.1.0"

    gnmt = read_cache(trt_caches / "mlperf-v0.5-nvidia-gnmt-minmax-trt6001-inf.cache")
    infs = [n for n in gnmt if math.isinf(gnmt[n])]
    assert len(infs) == 3 and all(gnmt.hex(n) == "7f800000" for n in infs)
    assert "Query Embedding Indices" in gnmt
    big = [n for n in gnmt if gnmt.hex(n) == "43810204"]
    # SOURCES.md calls it "258.0": it is float32(32768/127) = 258.0157..., amax 32768 (2**15)
    assert len(big) == 1 and float(gnmt[big[0]]) == 258.0157470703125
    assert gnmt.amax(big[0]) == pytest.approx(32768.0, rel=1e-7)

    diff = read_cache(trt_caches / "trt8-8601-diffusion-zeros-inf.cache")
    zeros = [n for n in diff if diff.bits(n) == 0]
    assert len(zeros) == 80 and all(diff.hex(n) == "0" for n in zeros)
    assert sum(1 for n in zeros if n.startswith("(Unnamed Layer*") and "[Shuffle]" in n) == 36
    assert sum(1 for n in diff if math.isinf(diff[n])) == 7

    tf = read_cache(trt_caches / "mlperf-v0.5-inspur-resnet50-tf-trt5102.cache")
    assert sum(":" in n for n in tf) == 126
    assert "input_tensor:0" in tf

    groot = read_cache(trt_caches / "trt10-101401-groot-backbone-zeros.cache")
    assert groot.header.trt_version == "10.14.1"
    assert sum(groot.bits(n) == 0 for n in groot) == 3

    yolo = read_cache(trt_caches / "trt10-100300-yolo-chicken.cache")
    assert yolo.header.trt_version == "10.3.0"
    assert "/model.0/conv/Conv_output_0" in yolo


def test_legacy_headers_spaced_and_run_together(trt_caches: Path) -> None:
    unet = read_cache(trt_caches / "mlperf-v0.7-nvidia-3d-unet-legacy.cache").header
    mnist = read_cache(trt_caches / "legacy-mnist-trt6.cache").header
    assert (unet.cutoff, unet.quantile) == (1.0, 0.99999)
    assert (mnist.cutoff, mnist.quantile) == (1.0, 0.999999)
    # header_for reproduces both real legacy headers
    assert header_for("7.2.0", "legacy", quantile=0.99999).text == unet.text
    assert header_for("6.0.1", "legacy").text == mnist.text  # the defaults: sampleINT8
    t = read_cache(trt_caches / "legacy-mnist-trt6.cache")
    assert list(t) == ["pool1", "ip1", "ip2", "pool2", "prob", "data", "conv2", "conv1"]


def test_mlperf_resnet_caches_are_not_identical(trt_caches: Path) -> None:
    # SOURCES.md says the bodies are byte-identical; the files say otherwise: same 125 names
    # (same byte count, 3580), but in a different order and 105 scales differ by a few ULPs.
    a = read_cache(trt_caches / "mlperf-v0.5-nvidia-resnet50-trt6001.cache")
    b = read_cache(trt_caches / "mlperf-v0.7-nvidia-resnet50-trt7200.cache")
    assert set(a) == set(b) and len(a) == 125
    assert list(a) != list(b)
    assert sum(a.bits(n) == b.bits(n) for n in a) == 20
    assert a.header.text != b.header.text


# -- headers ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("version", "algorithm", "text"),
    [
        ("5.1.0", "entropy2", "TRT-5100-EntropyCalibration2"),
        ("5.1.2", "EntropyCalibration2", "TRT-5102-EntropyCalibration2"),
        ("6.0.1", "minmax", "TRT-6001-MinMaxCalibration"),
        ("7.2.3.4", "entropy2", "TRT-7203-EntropyCalibration2"),
        ("8.6.1", "entropy", "TRT-8601-EntropyCalibration"),
        ("10.3.0", "entropy2", "TRT-100300-EntropyCalibration2"),
        ("10.9", "entropy2", "TRT-100900-EntropyCalibration2"),
        ("10.14.1", "MinMaxCalibration", "TRT-101401-MinMaxCalibration"),
        (8400, "minmax", "TRT-8400-MinMaxCalibration"),
    ],
)
def test_header_for(version: str, algorithm: str, text: str) -> None:
    h = header_for(version, algorithm)
    assert h.text == text
    assert parse_header(h.text) == h  # header_for fills the same fields parse does


def test_header_for_default_and_versions_round_trip() -> None:
    assert header_for().text == "TRT-100900-EntropyCalibration2"
    for v in ["5.1.0", "7.2.3", "8.6.1", "9.3.0", "10.0.1", "10.14.1"]:
        assert header_for(v).trt_version == v
    assert trt_version_number("8.6.1") == 8601


@pytest.mark.parametrize("bad", ["eight", "8", "8.10.0", "10.100.0", "-1.0"])
def test_header_for_rejects_bad_versions(bad: str) -> None:
    with pytest.raises(ValueError, match="8.6.1|above 99|minor above 9"):
        header_for(bad)


def test_header_for_rejects_unknown_algorithm() -> None:
    with pytest.raises(ValueError, match="entropy2"):
        header_for("8.6.1", "percentile")


# -- tolerant reading -------------------------------------------------------------------------
SIMPLE = "TRT-8601-EntropyCalibration2\ndata: 3c008912\nconv1: 3c88edfc\n"


def test_crlf_and_missing_final_newline_read_the_same() -> None:
    ref = parse_cache(SIMPLE)
    crlf = parse_cache(SIMPLE.replace("\n", "\r\n"))
    assert crlf == ref and crlf.header == ref.header
    assert crlf.provenance["line_endings"] == "crlf"
    assert parse_cache(SIMPLE.rstrip("\n")) == ref
    assert parse_cache(SIMPLE.replace("\n", "\r\n").rstrip("\r\n")) == ref
    # format writes what TensorRT writes: LF and a final newline
    assert format_cache(crlf) == SIMPLE


def test_names_split_at_the_last_colon_space() -> None:
    text = (
        "TRT-7000-EntropyCalibration2\n"
        "input_tensor:0: 3c008912\n"
        "(Unnamed Layer* 64) [Shuffle]_output: 0\n"
        "/model/layer1/Conv_output_0: 7f800000\n"
        "%x.1 : Tensor = aten::relu(%x): 7fc00000\n"
        "a: b: : 3f800000\n"
        " lead and trail : 1\n"
    )
    t = parse_cache(text)
    assert list(t) == [
        "input_tensor:0",
        "(Unnamed Layer* 64) [Shuffle]_output",
        "/model/layer1/Conv_output_0",
        "%x.1 : Tensor = aten::relu(%x)",
        "a: b: ",
        " lead and trail ",
    ]
    assert t.bits("(Unnamed Layer* 64) [Shuffle]_output") == 0
    assert math.isinf(t["/model/layer1/Conv_output_0"])
    assert math.isnan(t["%x.1 : Tensor = aten::relu(%x)"])
    assert t.hex("%x.1 : Tensor = aten::relu(%x)") == "7fc00000"
    assert t.bits(" lead and trail ") == 1  # smallest subnormal
    assert format_cache(t) == text


def test_nan_payload_and_uppercase_hex() -> None:
    t = parse_cache("TRT-8601-EntropyCalibration2\nx: 7FC00001\ny: FFFFFFFF\n")
    assert t.bits("x") == 0x7FC00001 and t.bits("y") == 0xFFFFFFFF
    assert format_cache(t).endswith("x: 7fc00001\ny: ffffffff\n")


def test_bom_and_blank_lines_are_tolerated() -> None:
    t = parse_cache("\ufeff" + SIMPLE.replace("\ndata", "\n\ndata") + "\n\n")
    assert t == parse_cache(SIMPLE)


def test_unknown_header_opt_in() -> None:
    text = "calibration v3\ndata: 3c008912\n"
    with pytest.raises(CacheFormatError, match="unknown cache header") as err:
        parse_cache(text)
    assert err.value.line == 1 and "header_for" in str(err.value)
    t = parse_cache(text, allow_unknown_header=True)
    assert t.header == CacheHeader(text="calibration v3", kind="unknown")
    assert format_cache(t) == text
    headerless = parse_cache("data: 3c008912\n", allow_unknown_header=True)
    assert headerless.header is None and headerless.hex("data") == "3c008912"


# -- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "line", "match"),
    [
        ("", 1, "empty"),
        ("\n\n", 1, "empty"),
        ("TRT-8601-Foo\ndata: 0\n", 1, "unknown calibration algorithm"),
        ("hello world\n", 1, "unknown cache header"),
        ("data: 3c008912\n", 1, "header line is missing"),
        (SIMPLE + "conv2: 3c8\x00\n", 4, "binary"),
        (SIMPLE + "conv2\n", 4, "no ': '"),
        (SIMPLE + "conv2: \n", 4, "no value"),
        (SIMPLE + "conv2:3c88edfc\n", 4, "no ': '"),
        (SIMPLE + "conv2: 3c88edfc0\n", 4, "not 1 to 8 hex"),
        (SIMPLE + "conv2: 0x3c\n", 4, "not 1 to 8 hex"),
        (SIMPLE + "conv2: 1_0\n", 4, "not 1 to 8 hex"),
        (SIMPLE + "conv2: 3c88edfc \n", 4, "not 1 to 8 hex"),
        (SIMPLE + ": 3c88edfc\n", 4, "empty tensor name"),
        (SIMPLE + "data: 3c008912\n", 4, "duplicate.*first on line 2"),
        (SIMPLE + "a\rb: 0\n", 4, "carriage return"),
        (SIMPLE + "conv2: 3c88e", None, None),  # a truncated value that is still hex: legal
    ],
)
def test_bad_input_names_the_line(text: str, line: int | None, match: str | None) -> None:
    if match is None:
        assert parse_cache(text).hex("conv2") == "3c88e"
        return
    with pytest.raises(CacheFormatError, match=match) as err:
        parse_cache(text, path="x.cache")
    assert err.value.line == line
    assert err.value.path == "x.cache"
    assert err.value.hint
    assert str(err.value).startswith(f"x.cache:{line}: ")


def test_hints_recognize_other_formats() -> None:
    with pytest.raises(CacheFormatError, match="dynamic-range"):
        parse_cache("TRT-8601-EntropyCalibration2\ngpu_0/conv1_1:5.43116007373\n")
    with pytest.raises(CacheFormatError, match="ONNX Runtime"):
        parse_cache("TRT-8601-EntropyCalibration2\nconv1 5.43\n")


def test_binary_garbage_file(tmp_path: Path) -> None:
    p = tmp_path / "engine.plan"
    p.write_bytes(b"TRT-8601-EntropyCalibration2\nok: 0\n\xff\xfe\x00garbage")
    with pytest.raises(CacheFormatError, match="not UTF-8") as err:
        read_cache(p)
    assert err.value.line == 3 and err.value.path == str(p)


# -- writing ----------------------------------------------------------------------------------
def test_write_cache_atomic_and_no_overwrite(tmp_path: Path) -> None:
    t = CalibrationTable.from_amaxes({"data": 1.000244140625, "conv1": 0.0})
    p = write_cache(t, tmp_path / "c.cache", header=header_for("8.6.1"))
    assert p.read_text() == "TRT-8601-EntropyCalibration2\ndata: 3c010a14\nconv1: 0\n"
    with pytest.raises(OutputExistsError):
        write_cache(t, p)
    write_cache(t, p, header="TRT-100900-EntropyCalibration2", force=True)
    back = read_cache(p)
    assert back == t and back.header == header_for("10.9.0")
    assert scale_to_amax(back["data"]) == pytest.approx(1.000244140625, rel=1e-6)


def test_format_without_header_uses_default(caplog: pytest.LogCaptureFixture) -> None:
    t = CalibrationTable.from_amaxes({"x": 6.0})
    assert format_cache(t) == "TRT-100900-EntropyCalibration2\nx: 3d418306\n"


def test_format_rejects_unwritable_names() -> None:
    for bad in ["", "a\x00b"]:
        t = CalibrationTable()
        t[bad] = 1.0
        with pytest.raises(CacheFormatError, match="cannot be written"):
            format_cache(t)


@pytest.mark.parametrize(
    ("name", "short"),
    [
        ("entropy2", "entropy2"),
        ("EntropyCalibration2", "entropy2"),
        ("entropy_calibration_2", "entropy2"),
        ("ENTROPY", "entropy"),
        ("MinMaxCalibration", "minmax"),
        ("minmax_calibration", "minmax"),
        ("legacy", "legacy"),
        ("LegacyCalibration", "legacy"),
    ],
)
def test_one_normalizer_serves_headers_and_calibrators(name: str, short: str) -> None:
    from kldiv.cachefile import normalize_algorithm
    from trt_backend.calibrators import normalize_algorithm as trt_normalize

    assert normalize_algorithm(name) == short
    assert trt_normalize is normalize_algorithm
    if short != "legacy":
        assert header_for("10.9.0", name).algorithm == header_for("10.9.0", short).algorithm


def test_unknown_algorithm_lists_the_valid_ones() -> None:
    from kldiv.cachefile import normalize_algorithm

    with pytest.raises(ValueError, match="entropy2, entropy, minmax, legacy"):
        normalize_algorithm("kl")
