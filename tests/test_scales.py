"""amax <-> scale conversion, hex codec and CalibrationTable (kldiv/scales.py)."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kldiv.scales import (
    CacheHeader,
    CalibrationTable,
    amax_to_scale,
    bits_to_scale,
    hex_to_scale,
    scale_to_amax,
    scale_to_bits,
    scale_to_hex,
)


def _struct_hex(x: float) -> str:
    """Independent reference: struct packs IEEE-754 float32."""
    return format(struct.unpack("<I", struct.pack("<f", x))[0], "x")


@pytest.mark.parametrize(
    ("amax", "expected"),
    [
        # algorithm.md §4: constant tensors M with i = 2048 -> T = M * 2048.5 / 2048
        (0.5 * 2048.5 / 2048, "3b810a14"),
        (1.0 * 2048.5 / 2048, "3c010a14"),
        (2.0 * 2048.5 / 2048, "3c810a14"),
        (4.0 * 2048.5 / 2048, "3d010a14"),
        (6.0 * 2048.5 / 2048, "3d418f1e"),
        (2040.5 / 2048, "3c008912"),  # TRT 7.0 sampleINT8 MNIST `data`
        (6.0, "3d418306"),  # ReLU6 in MLPerf caches
        (0.0, "0"),
        (math.inf, "7f800000"),
    ],
)
def test_amax_to_scale_matches_trt_caches(amax: float, expected: str) -> None:
    assert scale_to_hex(amax_to_scale(amax)) == expected


def test_scale_is_float32_division_of_float32_amax() -> None:
    # f32(f32(T)/127), not f32(T/127) in float64: pick T where the two differ
    diffs = 0
    rng = np.random.default_rng(0)
    for t in rng.uniform(0, 100, 2000):
        ours = amax_to_scale(t)
        assert ours == np.float32(np.float32(t) / np.float32(127))
        diffs += ours != np.float32(t / 127.0)
    assert diffs > 0  # the order of operations is observable, so the test is meaningful


@given(st.floats(width=32, allow_nan=False))
def test_hex_roundtrip_matches_struct(x: float) -> None:
    h = scale_to_hex(x)
    assert h == _struct_hex(x)
    assert scale_to_bits(hex_to_scale(h)) == scale_to_bits(x)


@given(st.integers(0, 0xFFFFFFFF))
def test_bits_roundtrip_keeps_nan_payloads(bits: int) -> None:
    assert scale_to_bits(bits_to_scale(bits)) == bits
    assert hex_to_scale(format(bits, "x")).view(np.uint32) == bits


@pytest.mark.parametrize("bad", ["", "xyz", "123456789", "3c01 0a14", "-1", "0x3c"])
def test_hex_to_scale_rejects_garbage(bad: str) -> None:
    with pytest.raises(ValueError, match="hex digits"):
        hex_to_scale(bad)


def test_scale_to_amax_inverts_within_float32() -> None:
    for amax in [1e-6, 0.5, 1.0, 6.0, 1234.5]:
        assert scale_to_amax(amax_to_scale(amax)) == pytest.approx(amax, rel=2e-7)


def test_table_keeps_order_bits_and_equality() -> None:
    t = CalibrationTable()
    t["b"] = 1.0
    t.set_bits("a", 0x7FC00001)  # a NaN with payload
    t.set_amax("c", 6.0)
    assert list(t) == ["b", "a", "c"]
    assert t.hex("a") == "7fc00001"
    assert t.hex("c") == "3d418306"
    assert t.amax("b") == 127.0
    u = CalibrationTable.from_bits([("b", t.bits("b")), ("a", 0x7FC00001), ("c", t.bits("c"))])
    assert t == u  # NaN payloads compare by bits, not by float ==
    u2 = CalibrationTable.from_bits([("a", 0x7FC00001), ("b", t.bits("b")), ("c", t.bits("c"))])
    assert t != u2  # order matters
    assert not t.is_finite("a") and t.is_finite("b")
    del t["a"]
    assert len(t) == 2 and "a" not in t


def test_table_rejects_line_breaks_and_non_str() -> None:
    t = CalibrationTable()
    with pytest.raises(ValueError, match="line break"):
        t["a\nb"] = 1.0
    with pytest.raises(TypeError):
        t[3] = 1.0  # type: ignore[index]
    with pytest.raises(ValueError, match="32 bits"):
        t.set_bits("x", 1 << 32)


def test_from_amaxes_and_views() -> None:
    t = CalibrationTable.from_amaxes({"x": 1.0, "y": 2.0}, provenance={"method": "minmax"})
    assert t.provenance == {"method": "minmax"}
    assert t.scales()["y"] == amax_to_scale(2.0)
    assert t.amaxes()["x"] == pytest.approx(1.0, rel=1e-7)
    c = t.copy()
    c["x"] = 0.0
    assert t.hex("x") != "0"


@pytest.mark.parametrize(
    ("number", "version"),
    [(5100, "5.1.0"), (7203, "7.2.3"), (8601, "8.6.1"), (100300, "10.3.0"), (101401, "10.14.1")],
)
def test_header_version_decoding(number: int, version: str) -> None:
    assert CacheHeader(text="", kind="trt", version_number=number).trt_version == version
