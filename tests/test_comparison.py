"""kldiv.compare (kldiv.comparison) on real caches and on constructed tables."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from kldiv.cachefile import parse_cache, read_cache
from kldiv.comparison import AGREEMENT_CLASSES, compare
from kldiv.errors import CacheFormatError
from kldiv.exports import read_table
from kldiv.scales import CalibrationTable, bits_to_scale


def test_mlperf_resnet50_trt6_vs_trt72(trt_caches: Path) -> None:
    """What is true of the two MLPerf ResNet-50 caches (read from the files, not SOURCES.md).

    SOURCES.md calls their bodies byte-identical; they are not. Same 125 names, a different
    order, 20 scales bit-identical, the rest a few ULPs to ~3.7% apart.
    """
    a = read_cache(trt_caches / "mlperf-v0.5-nvidia-resnet50-trt6001.cache")
    b = read_cache(trt_caches / "mlperf-v0.7-nvidia-resnet50-trt7200.cache")
    r = compare(a, b)
    body_a = (trt_caches / "mlperf-v0.5-nvidia-resnet50-trt6001.cache").read_text().split("\n", 1)[1]
    body_b = (trt_caches / "mlperf-v0.7-nvidia-resnet50-trt7200.cache").read_text().split("\n", 1)[1]
    assert r.all_bit_identical == (body_a == body_b) is False
    assert (len(r.tensors), r.only_in_a, r.only_in_b) == (125, [], [])
    assert not r.same_order
    assert r.n_bit_identical == sum(a.bits(n) == b.bits(n) for n in a) == 20
    assert not r.headers_equal
    s = r.summary()
    assert (s["trt_version_a"], s["trt_version_b"]) == ("6.0.1", "7.2.0")
    assert sum(s["counts"].values()) == 125 and s["counts"]["identical"] == 20
    assert s["median_ratio"] == pytest.approx(1.0, abs=1e-6)
    w = r.worst
    ratios = {n: b.amax(n) / a.amax(n) for n in a}
    worst_name = max(ratios, key=lambda n: abs(math.log2(ratios[n])))
    assert w is not None and w.name == worst_name and w.ratio == pytest.approx(ratios[worst_name])
    for t in r.tensors:
        assert t.bit_identical == (a.bits(t.name) == b.bits(t.name))
        assert t.log2_ratio == pytest.approx(math.log2(b.amax(t.name) / a.amax(t.name)))
    text = r.to_text()
    assert "bit-identical: 20/125" in text and "same order: no" in text and "6.0.1 vs 7.2.0" in text


def test_identical_bodies_report_identical(trt_caches: Path) -> None:
    text = (trt_caches / "mlperf-v0.5-nvidia-resnet50-trt6001.cache").read_text()
    a = parse_cache(text)
    b = parse_cache("TRT-7200-EntropyCalibration2\n" + text.split("\n", 1)[1])
    r = compare(a, b)
    assert r.all_bit_identical and r.same_order and not r.headers_equal
    assert r.counts == {**dict.fromkeys(AGREEMENT_CLASSES, 0), "identical": 125}
    assert r.differs("header") and not r.differs("bits") and not r.differs("any")


def test_nvdla_cache_vs_renamed_json_by_position(trt_caches: Path) -> None:
    cache = read_cache(trt_caches / "nvdla-resnet50-trt5101.cache")
    js = read_table(trt_caches / "nvdla-resnet50.json")
    by_name = compare(cache, js)
    assert len(by_name.only_in_a) == len(by_name.only_in_b) == 155  # renamed keys
    by_pos = compare(cache, js, match="position")
    assert by_pos.all_bit_identical and len(by_pos.tensors) == 229
    assert by_pos.tensors[1].name == "(Unnamed Layer* 0) [Convolution]_output"
    assert by_pos.tensors[1].name_b == "conv1"
    renamed = [t for t in by_pos.tensors if t.name != t.name_b]
    assert len(renamed) == 224


def test_colon_normalization(trt_caches: Path) -> None:
    a = read_cache(trt_caches / "mlperf-v0.5-inspur-resnet50-tf-trt5102.cache")
    b = CalibrationTable([(n.replace(":", "_"), a[n]) for n in a])
    assert len(compare(a, b).only_in_a) == 126
    r = compare(a, b, normalize={":": "_"})
    assert r.all_bit_identical and len(r.tensors) == 131
    r2 = compare(a, b, normalize=lambda s: s.replace(":", "_"))
    assert r2.all_bit_identical
    clash = CalibrationTable({"a:0": 1.0, "a_0": 1.0})
    with pytest.raises(CacheFormatError, match="both normalize"):
        compare(clash, clash, normalize={":": "_"})


def test_classes_ulps_and_bins() -> None:
    a = CalibrationTable()
    b = CalibrationTable()
    base = 0x3C010A14
    cases = {
        "same": (base, base, "identical"),
        "ulp": (base, base + 3, "ulp"),
        "close": (base, base + 10000, "close"),
        "far": (base, base + 0x800000, "different"),  # one binade up: ratio 2
        "zero": (0, base, "zero"),
        "inf": (0x7F800000, base, "nonfinite"),
        "both0": (0, 0, "identical"),
    }
    for n, (x, y, _) in cases.items():
        a.set_bits(n, x)
        b.set_bits(n, y)
    r = compare(a, b, histograms={"far": 2.0 * a.amax("far"), "ulp": 4.0})
    got = {t.name: t for t in r.tensors}
    for n, (_, _, cls) in cases.items():
        assert got[n].agreement == cls, n
    assert got["ulp"].ulps == 3
    assert got["far"].ratio == pytest.approx(2.0) and got["far"].log2_ratio == pytest.approx(1.0)
    # amax_a - amax_b = -amax_a; bin width = 2*amax_a/2048 -> -1024 bins
    assert got["far"].bins == pytest.approx(-1024.0)
    assert got["ulp"].bins is not None and got["close"].bins is None
    assert math.isinf(got["zero"].ratio) and got["zero"].ulps == base
    assert got["inf"].ulps is None
    # the worst class present wins over the largest finite ratio
    assert r.worst is not None and r.worst.name == "inf" and r.worst.agreement == "nonfinite"
    del a["inf"], b["inf"], a["zero"], b["zero"]
    assert compare(a, b).worst.name == "far"
    assert r.differs("close") and r.differs("ulp") and r.differs("bits") and not r.differs("names")
    with pytest.raises(CacheFormatError):
        r.differs("nope")
    d = r.to_dict()
    assert d["summary"]["counts"]["nonfinite"] == 1


def test_histogram_objects_with_amax_and_num_bins() -> None:
    class H:  # anything with .amax and .num_bins (ActivationHistogram, collector entries)
        amax = 8.0
        num_bins = 1024

    a = CalibrationTable.from_amaxes({"x": 4.0})
    b = CalibrationTable.from_amaxes({"x": 3.0})
    r = compare(a, b, histograms={"x": H()})
    assert r.tensors[0].bins == pytest.approx((a.amax("x") - b.amax("x")) / (8.0 / 1024))


def test_position_with_different_lengths() -> None:
    a = CalibrationTable.from_amaxes({"a": 1.0, "b": 2.0, "c": 3.0})
    b = CalibrationTable.from_amaxes({"x": 1.0})
    r = compare(a, b, match="position")
    assert [t.name_b for t in r.tensors] == ["x"] and r.only_in_a == ["b", "c"]
    with pytest.raises(CacheFormatError, match="match"):
        compare(a, b, match="fuzzy")


def test_nan_scales() -> None:
    a = CalibrationTable()
    a.set_bits("n", 0x7FC00000)
    b = CalibrationTable()
    b.set_bits("n", 0x7FC00001)
    r = compare(a, b)
    assert r.tensors[0].agreement == "nonfinite" and math.isnan(r.tensors[0].ratio)
    assert math.isnan(float(bits_to_scale(0x7FC00001)))
    assert r.worst is not None and r.worst.name == "n" and math.isnan(r.median_ratio)
    r.to_text()
    r.to_json()
