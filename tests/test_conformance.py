"""kldiv against TensorRT's sampleINT8 caches (real TensorRT output, public model and images):
the figures benchmarks/conformance.py prints, held.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kldiv.conformance import CaseReport, ConformanceCase, run_case, sampleint8_cases
from kldiv.errors import DataSourceError
from tests.conftest import fixtures_dir


def _cases() -> list[ConformanceCase]:
    folder = fixtures_dir()
    if not (folder / "conformance" / "sampleint8" / "mnist_lenet.onnx").is_file():
        pytest.skip(f"sampleINT8 conformance fixtures not found under {folder}")
    return sampleint8_cases(folder)


@pytest.fixture(scope="module")
def reports() -> dict[str, CaseReport]:
    return {c.name: run_case(c) for c in _cases()}


ENTROPY = ("sampleINT8 TRT 7.0", "sampleINT8 TRT 5.1")


@pytest.mark.parametrize("name", ENTROPY)
def test_entropy_caches_every_entry_in_trt_bin(reports: dict[str, CaseReport], name: str) -> None:
    r = reports[name]
    assert [e.tensor for e in r.entries] == [
        "data", "conv1", "pool1", "conv2", "pool2", "ip1", "ip2", "prob"
    ]
    assert r.in_bin == 8, r.to_text()
    assert r.max_ulps <= 8, r.to_text()
    assert {"data", "conv1", "pool1", "prob"} <= set(r.identical), r.to_text()
    # pooling outputs inherit their input's scale, as in the caches
    by = {e.tensor: e for e in r.entries}
    assert by["pool1"].source == "conv1" and by["pool2"].source == "conv2"
    # every remaining ulp comes from the range, not the bin
    for e in r.entries:
        assert e.identical or e.reason.startswith("same bin"), e


def test_sixteen_of_sixteen(reports: dict[str, CaseReport]) -> None:
    entries = [e for n in ENTROPY for e in reports[n].entries]
    assert len(entries) == 16
    assert sum(e.in_trt_bin for e in entries) == 16
    assert max(e.ulps_apart for e in entries) <= 8


@pytest.mark.parametrize("name", ENTROPY)
def test_degenerate_window_rule_changes_no_bin(reports: dict[str, CaseReport], name: str) -> None:
    r = reports[name]
    assert all(e.bin_rule_off is not None for e in r.entries)
    assert r.rule_changes == []


def test_legacy_cache_every_entry_on_trt_edge(reports: dict[str, CaseReport]) -> None:
    r = reports["sampleINT8 legacy (TRT 6)"]
    assert r.case.method == "legacy"
    assert len(r.entries) == 8 and r.in_bin == 8, r.to_text()
    assert r.max_ulps <= 8
    assert {"data", "conv1", "pool1", "prob"} <= set(r.identical), r.to_text()
    # no pooling inheritance: pool1 has its own threshold, not conv1's
    by = {e.tensor: e for e in r.entries}
    assert by["pool1"].source is None and by["pool1"].kldiv_hex != by["conv1"].kldiv_hex
    assert all(e.bin_rule_off is None for e in r.entries)


def test_report_text_lists_every_column(reports: dict[str, CaseReport]) -> None:
    text = reports["sampleINT8 TRT 7.0"].to_text()
    for word in ("TensorRT", "kldiv", "TRT bin", "bins", "ulps", "why", "3c008912", "8/8"):
        assert word in text


def test_table_gives_aliases_their_source_scale(reports: dict[str, CaseReport]) -> None:
    table = reports["sampleINT8 TRT 7.0"].table
    assert table.bits("pool2_flat") == table.bits("pool2")


def _never_called() -> list[dict[str, np.ndarray]]:
    raise AssertionError("the batches were built: the model would have run")


def test_cache_names_missing_from_model_fail_before_the_model_runs(tmp_path: Path) -> None:
    real = _cases()[0]
    cache = tmp_path / "extra.cache"
    text = Path(real.cache).read_text()
    cache.write_text(text + "ghost_a: 3c010a14\nghost_b: 3c010a14\n")
    case = ConformanceCase("bad", real.model, _never_called, cache)
    with pytest.raises(DataSourceError) as info:
        run_case(case)
    message = str(info.value)
    assert "2 tensor(s) the model does not calibrate: ghost_a, ghost_b;" in message


def test_legacy_case_needs_a_legacy_cache() -> None:
    real = _cases()[0]
    case = ConformanceCase("bad", real.model, _never_called, real.cache, method="legacy")
    with pytest.raises(DataSourceError, match="legacy cache"):
        run_case(case)


def test_missing_fixtures_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match="not found"):
        sampleint8_cases(tmp_path)


@pytest.mark.slow
def test_sampleint8_accuracy(reports: dict[str, CaseReport]) -> None:
    from kldiv.conformance import sampleint8_accuracy

    acc = sampleint8_accuracy(fixtures_dir(), reports["sampleINT8 TRT 7.0"].table)
    assert acc["n"] == 10_000
    assert acc["fp32"] == pytest.approx(0.9904, abs=5e-5)  # the sample READMEs' Top1
    assert acc["int8"] >= 0.99


@pytest.fixture(scope="module")
def collectors() -> dict[str, object]:
    from kldiv.pipeline import collect_histograms

    return {c.name: collect_histograms(c.model, c.batches()) for c in _cases()
            if c.method == "entropy"}


def _off_bins(case: ConformanceCase, collector: object, **options: object) -> dict[str, int]:
    from dataclasses import replace

    r = run_case(replace(case, options=options), collector=collector)
    return {e.tensor: e.bins_apart for e in r.entries if e.bins_apart}  # type: ignore[misc]


@pytest.mark.parametrize("name", ENTROPY)
def test_what_the_caches_pin(collectors: dict[str, object], name: str) -> None:
    """The alternatives the sampleINT8 caches rule out (docs/threshold-search.md table)."""
    case = next(c for c in _cases() if c.name == name)
    col = collectors[name]
    assert _off_bins(case, col) == {}
    assert _off_bins(case, col, zeros="drop") == {}  # bin1 vs drop: both fit (open)
    kept = _off_bins(case, col, zeros="keep")  # the zero spike kept: ip1 far off
    assert kept["ip1"] > 700  # TensorRT 1231 / 1155, kept spike ~384
    floor = _off_bins(case, col, grouping="floor")
    assert len({t for t in floor if not t.startswith("pool")}) >= 4
    assert set(_off_bins(case, col, empty="p")) == {"ip2"}


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["append", "global"])
def test_range_growth_is_pinned(policy: str) -> None:
    from kldiv.pipeline import collect_histograms

    case = next(c for c in _cases() if c.name == "sampleINT8 TRT 7.0")
    col = collect_histograms(case.model, case.batches(), range_policy=policy)
    r = run_case(case, collector=col)
    assert r.in_bin <= 4  # pow2 growth: 8 of 8


def test_entries_count_ulps_and_bins_as_compare_and_explain_do(
    reports: dict[str, CaseReport],
) -> None:
    """Each entry's ulps are ``kldiv compare``'s, its TensorRT bin ``place_value``'s position."""
    from kldiv.cachefile import read_cache
    from kldiv.comparison import compare
    from kldiv.entropy import resolve_options
    from kldiv.explain import place_value
    from kldiv.scales import hex_to_scale

    for r in reports.values():
        cache = read_cache(r.case.cache)
        by_name = {t.name: t for t in compare(cache, r.table).tensors}
        opts = resolve_options(r.case.preset) if r.case.method == "entropy" else None
        offset = 0.0 if opts is None else opts.threshold_offset
        for e in r.entries:
            ulps = by_name[e.tensor].ulps
            assert ulps is not None and e.ulps_apart == abs(ulps), e
            counts = np.zeros(2048, dtype=np.int64)
            placed = place_value(counts, e.range, hex_to_scale(e.trt_hex), options=opts)
            assert e.trt_bin == placed.position - offset, e


def test_ulps_between_orders_signs_and_leaves_out_non_finite() -> None:
    from kldiv.comparison import ulps_between

    assert ulps_between(0x3C010A14, 0x3C010A1C) == 8
    assert ulps_between(0x3C010A1C, 0x3C010A14) == -8
    assert ulps_between(0x80000000, 0) == 0  # -0 and +0: one value, no raw bit distance
    assert ulps_between(0x80000001, 0x00000001) == 2
    assert ulps_between(0x7F800000, 0x3C010A14) is None  # +inf
    assert ulps_between(0x7FC00000, 0x7FC00000) is None  # NaN


def test_table_follows_the_case_alias_rule(collectors: dict[str, object]) -> None:
    """The table holds choose_thresholds' results.

    With the alias rule off, an alias keeps its own search instead of being given its
    source's scale afterwards.
    """
    from dataclasses import replace

    from kldiv.entropy import search_threshold

    name = "sampleINT8 TRT 7.0"
    case = next(c for c in _cases() if c.name == name)
    col = collectors[name]
    off = run_case(replace(case, options={"alias_inherits": False}), collector=col).table
    own = search_threshold(col["pool2_flat"], case.preset).scale  # type: ignore[index]
    assert off.bits("pool2_flat") == int(np.float32(own).view(np.uint32))
    assert off.bits("pool2_flat") != off.bits("pool2")  # pool2 inherits conv2's scale
