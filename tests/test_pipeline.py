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
    _results, table = calibrate_histograms(collected, preset="tensorrt", trt_version="8.6.1")
    assert list(table) == runner.tensor_names == collected.names
    assert table.header.text == "TRT-8601-EntropyCalibration2"
    sources = collected.meta["scale_sources"]  # pooling outputs take their input's scale
    assert sources == {"pool1": "relu1", "pool2": "relu2"}
    aliases = collected.meta["value_aliases"]  # Flatten/Reshape: their source's final scale
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
    table = calibrate(lenet_model_path(), lenet_batches, preset="gtc2017")
    p = table.provenance
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
    direct = calibrate(lenet_model_path(), lenet_batches, save_histograms=path)
    again = calibrate(None, histograms=path)
    assert again == direct
    assert again.provenance["model_sha256"] == direct.provenance["model_sha256"]
    modelopt = calibrate(None, histograms=path, preset="modelopt")
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
    ours = calibrate(None, histograms=col, method="minmax")
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
        c.meta.update(
            {k: whole.meta[k] for k in ("scale_sources", "activation_bounds", "value_aliases")}
        )
        runner = OnnxRuntimeRunner(lenet_model_path())
        for acts in runner.iter_activations(part):
            c.observe(acts)
        shards.append(c)
    merged = shards[0] + shards[1]
    assert calibrate(None, histograms=merged) == calibrate(None, histograms=whole)
