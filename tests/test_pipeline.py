"""calibrate(): wiring, provenance, --from-histograms, and onnxruntime's own MinMax as a peer."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

import kldiv
from kldiv.collect import HistogramCollector
from kldiv.entropy import search_threshold
from kldiv.errors import DataSourceError, NonFiniteError
from kldiv.examples import lenet_calibration_data, lenet_model_path
from kldiv.pipeline import calibrate, calibrate_histograms, collect_histograms
from kldiv.runners import OnnxRuntimeRunner
from kldiv.scales import amax_to_scale, scale_to_hex
from tests._kernels_env import using


@pytest.fixture(scope="module")
def lenet_batches():
    return lenet_calibration_data()[:12]


@pytest.fixture(scope="module")
def collected(lenet_batches):
    return collect_histograms(lenet_model_path(), lenet_batches)


def test_table_is_the_search_of_every_collected_histogram(collected, lenet_batches):
    runner = OnnxRuntimeRunner(lenet_model_path())
    result = calibrate_histograms(collected, preset="tensorrt", trt_version="8.6.1")
    table = result.table
    assert result.histograms is collected and result.graph == collected.graph
    assert list(table) == runner.tensor_names == collected.names
    assert table.header.text == "TRT-8601-EntropyCalibration2"
    sources = collected.graph.scale_sources  # pooling outputs take their input's scale
    assert sources == {"pool1": "relu1", "pool2": "relu2"}
    aliases = collected.graph.value_aliases  # Flatten/Reshape: their source's final scale
    assert aliases == {"flatten": "pool2"}
    for name in table:
        source = aliases.get(name, name)
        source = sources.get(source, source)
        with using("numpy"):
            expected = search_threshold(collected[source], "tensorrt")
        assert table.hex(name) == scale_to_hex(expected.scale), name
    # the histograms are those of the activations (checked on one tensor, by hand)
    acts = [runner.run(runner.prepare(b)) for b in lenet_batches]
    conv = np.concatenate([a["conv1"].ravel() for a in acts])
    assert collected.absmax("conv1") == float(np.abs(conv).max())
    assert collected["conv1"].total == conv.size


def test_provenance(collected, lenet_batches):
    result = calibrate(lenet_model_path(), lenet_batches, preset="gtc2017")
    p = result.table.provenance
    assert result.provenance is p
    assert p["model_sha256"] == hashlib.sha256(lenet_model_path().read_bytes()).hexdigest()
    assert p["preset"] == "gtc2017" and p["method"] == "entropy"
    assert p["options"]["threshold_offset"] == 0.5
    assert p["kldiv_version"] == kldiv.__version__
    assert p["batches"] == 12 and p["samples"] == sum(len(b["input"]) for b in lenet_batches)
    assert p["data_fingerprint"] == collected.meta["data_fingerprint"]
    other = [{"input": b["input"] * 0.5} for b in lenet_batches]
    assert (
        calibrate(lenet_model_path(), other).provenance["data_fingerprint"]
        != (p["data_fingerprint"])
    )


def test_from_histograms_equals_running_again(tmp_path, collected, lenet_batches):
    path = tmp_path / "h.npz"
    direct = calibrate(lenet_model_path(), lenet_batches, save_histograms=path).table
    again = calibrate_histograms(path)
    assert again.table == direct
    assert again.graph == collected.graph  # the graph facts travel with the file
    assert again.provenance["model_sha256"] == direct.provenance["model_sha256"]
    assert again.provenance["histograms"] == str(path)
    modelopt = calibrate_histograms(path, preset="modelopt").table
    for name in modelopt:
        assert modelopt[name] == search_threshold(collected[name], "modelopt").scale


def test_minmax_matches_onnxruntime_minmax_calibrator(tmp_path, lenet_batches):
    """onnxruntime's own MinMax calibrator (a peer) sees the same tensors and ranges."""
    from onnxruntime.quantization.calibrate import CalibrationDataReader, create_calibrator

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(lenet_batches)

        def get_next(self):
            return next(self.it, None)

    calibrator = create_calibrator(
        lenet_model_path(), augmented_model_path=str(tmp_path / "aug.onnx")
    )
    calibrator.collect_data(Reader())
    ranges = calibrator.compute_data()
    # onnxruntime's calibrator runs with every optimization disabled; so do we here, to
    # compare bit for bit (optimized conv kernels round differently, within a few ulp)
    col = collect_histograms(lenet_model_path(), lenet_batches, graph_optimization_level="disable")
    ours = calibrate_histograms(col, method="minmax").table
    assert ours.header.algorithm == "MinMaxCalibration"
    common = [n for n in ours if n in ranges.data]
    assert len(common) >= len(ours) - 1  # ORT skips the graph input
    for name in common:
        lo, hi = (float(np.asarray(v).max()) for v in ranges.data[name].range_value)
        assert ours[name] == amax_to_scale(max(abs(lo), abs(hi))), name


def test_global_range_policy_uses_absmax(lenet_batches):
    col = collect_histograms(lenet_model_path(), lenet_batches, range_policy="global")
    for name in col:
        assert col[name].amax == col.absmax(name)
    with pytest.raises(DataSourceError, match="re-iterable"):
        collect_histograms(lenet_model_path(), iter(lenet_batches), range_policy="global")


def test_bad_input():
    with pytest.raises(DataSourceError, match="no batches"):
        calibrate(lenet_model_path(), [])
    with pytest.raises(DataSourceError, match="needs a model"):
        calibrate(lenet_model_path())
    bad = [{"input": np.ones((2, 1, 8, 8), np.float32)}, {"input": np.ones((2, 1, 9, 8))}]
    with pytest.raises(DataSourceError, match="batch 1"):
        calibrate(lenet_model_path(), bad)
    nan = [
        {"input": np.ones((2, 1, 8, 8), np.float32)},
        {"input": np.full((2, 1, 8, 8), np.nan, np.float32)},
    ]
    with pytest.raises(NonFiniteError, match="tensor 'input', batch 1"):
        calibrate(lenet_model_path(), nan)


def test_collector_merge_gives_same_table_as_one_run(lenet_batches):
    """Sharded calibration: global ranges per shard, histograms added, same thresholds."""
    whole = collect_histograms(lenet_model_path(), lenet_batches, range_policy="global")
    ranges = {n: whole[n].amax for n in whole}
    shards = []
    for part in (lenet_batches[:5], lenet_batches[5:]):
        c = HistogramCollector(range_policy="global", ranges=ranges)
        # graph facts (pooling sources, Clip bounds) come from the model, as collect_histograms
        # records them
        c.graph = whole.graph
        runner = OnnxRuntimeRunner(lenet_model_path())
        for acts in runner.iter_activations(part):
            c.observe(acts)
        shards.append(c)
    merged = shards[0] + shards[1]
    assert calibrate_histograms(merged).table == calibrate_histograms(whole).table


def test_calibration_result_carries_what_the_table_was_made_from(collected, lenet_batches):
    result = calibrate(lenet_model_path(), lenet_batches)
    assert isinstance(result, kldiv.Calibration)
    assert list(result.results) == list(result.table) == result.histograms.names
    assert {n: r.scale_hex for n, r in result.results.items()} == {
        n: result.table.hex(n) for n in result.table
    }
    assert result.results["pool1"].method == "inherited"  # the tensorrt preset's rule
    assert result.graph.scale_sources == {"pool1": "relu1", "pool2": "relu2"}
    # the table's reading methods are the result's too
    assert len(result) == len(result.table) and list(result) == list(result.table)
    assert result["conv1"] == result.table["conv1"] and result.hex("conv1") == result.table.hex("conv1")


def test_calibrate_writes_through_write_cache(tmp_path, lenet_batches):
    result = calibrate(lenet_model_path(), lenet_batches[:2])
    kldiv.write_cache(result, tmp_path / "a.cache")
    kldiv.write_cache(result.table, tmp_path / "b.cache")
    assert (tmp_path / "a.cache").read_bytes() == (tmp_path / "b.cache").read_bytes()
    assert kldiv.read_cache(tmp_path / "a.cache") == result.table


def test_histogram_file_keeps_graph_facts_under_the_keys_files_always_used(tmp_path, collected):
    """Files keep the facts in their meta JSON under the keys they always used."""
    path = tmp_path / "h.npz"
    collected.save(path)
    with np.load(path) as z:
        import json

        meta = json.loads(str(z["meta"]))
    assert meta["scale_sources"] == {"pool1": "relu1", "pool2": "relu2"}
    loaded = HistogramCollector.load(path)
    assert "scale_sources" not in loaded.meta and loaded.graph == collected.graph


def test_minmax_is_the_exact_largest_value(collected):
    """One MinMax: choose_thresholds and kldiv.thresholds.minmax_threshold agree."""
    from kldiv.pipeline import choose_thresholds
    from kldiv.thresholds import minmax_threshold

    results = choose_thresholds(collected, method="minmax")
    for name, r in results.items():
        if r.method == "alias":
            continue
        alone = minmax_threshold(collected[name], absmax=collected.absmax(name))
        assert (r.amax, r.scale_hex, r.options) == (alone.amax, alone.scale_hex, alone.options)
        assert r.amax == collected.absmax(name) <= collected[name].amax
        assert r.clipped_fraction == 0.0
    assert minmax_threshold(collected["conv1"]).options["source"] == "histogram range"


def test_damaged_graph_facts_in_a_histogram_file_are_named(tmp_path, collected):
    from kldiv.errors import HistogramError

    path = tmp_path / "h.npz"
    collected.save(path, meta={"scale_sources": ["pool1", "relu1"]})
    with pytest.raises(HistogramError, match=r"h\.npz: meta: scale_sources is not a mapping"):
        HistogramCollector.load(path)
    collected.save(path, meta={"activation_bounds": {"relu6": -1.0}}, force=True)
    with pytest.raises(HistogramError, match="activation bound of 'relu6'"):
        HistogramCollector.load(path)


def test_graph_facts_are_read_only_and_travel_between_processes(collected):
    import pickle

    facts = collected.graph
    with pytest.raises(TypeError):
        facts.scale_sources["pool1"] = "conv1"  # type: ignore[index]
    again = pickle.loads(pickle.dumps(facts))  # Dask and process pools pickle them
    assert again == facts and again.scale_sources["pool1"] == "relu1"


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_options_are_checked_once_per_calibration(
    tmp_path, lenet_batches, monkeypatch, method
):
    """calibrate() checks the method and its options once, before the model runs.

    calibrate_histograms checks a file's options before reading it, and its bins once read.
    """
    import kldiv.pipeline
    import kldiv.thresholds

    calls: dict[str, int] = {}

    def counted(module, name):
        real = getattr(module, name)

        def spy(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)

    counted(kldiv.pipeline, "check_options")
    counted(kldiv.pipeline, "check_preset_bins")
    counted(kldiv.thresholds, "check_method_options")  # imported where it is called
    kwargs = {"method": method, "algorithm": "entropy2",
              "options": {"percentile": 99.9} if method == "percentile" else None}
    path = tmp_path / "h.npz"
    one = calibrate(lenet_model_path(), lenet_batches[:2], save_histograms=path, **kwargs)
    assert calls == {"check_options": 1, "check_method_options": 1}
    calls.clear()
    assert calibrate_histograms(one.histograms, **kwargs).table == one.table
    assert calls == {"check_options": 1, "check_method_options": 1}
    calls.clear()
    assert calibrate_histograms(path, **kwargs).table == one.table
    assert calls == {"check_options": 1, "check_method_options": 1, "check_preset_bins": 1}
