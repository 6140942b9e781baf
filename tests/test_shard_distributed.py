"""Sharded calibration on a real Dask LocalCluster (2 worker processes): the same histograms,
absmax, order and data fingerprint as one process; retries, dead workers and bad input.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed", reason="needs dask[distributed] (kldiv[dist])")

from kldiv.cli import main  # noqa: E402
from kldiv.data import ImageFolder, NpyFolder, Preprocess  # noqa: E402
from kldiv.distributed import collect_histograms_distributed, run_shard, shard_source  # noqa: E402
from kldiv.errors import ClusterError, DataSourceError, ModelError, PresetError  # noqa: E402
from kldiv.examples import lenet_calibration_data, lenet_model_path  # noqa: E402
from kldiv.pipeline import collect_histograms  # noqa: E402


def _same(a, b):
    assert a.names == b.names
    for n in a:
        assert a[n] == b[n], n
        assert a.absmax(n) == b.absmax(n), n
    for key in ("data_fingerprint", "batches", "samples", "model_sha256"):
        assert a.meta[key] == b.meta[key], key
    assert a.graph == b.graph  # Clip bounds, pooling sources, value aliases


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
        silence_logs=40,
    )
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


@pytest.fixture(scope="module")
def data():
    batches = lenet_calibration_data()[:11]
    # saturated inputs: pixels exactly on the first batch's range in later batches
    top = float(np.abs(batches[0]["input"]).max())
    for b in batches[3:7]:
        b["input"] = b["input"].copy()
        b["input"].reshape(-1)[:40] = top
    batches[2]["input"] = batches[2]["input"] * 2.5  # the range doubles before them
    return batches


@pytest.fixture(scope="module")
def whole(data):
    return collect_histograms(lenet_model_path(), data)


@pytest.mark.parametrize("shards", [1, 2, 3, 7, 10])
def test_sharded_equals_one_process(client, data, whole, shards):
    seen = []
    got = collect_histograms_distributed(
        lenet_model_path(), data, client=client, shards=shards,
        on_progress=lambda done, total: seen.append((done, total)),
    )
    _same(got, whole)
    assert got.meta["shards"] == min(shards, len(data) - 1) + 1
    assert seen[-1] == (len(data), len(data)) and seen[0][0] == 1


def test_calibrate_with_a_client_writes_the_same_table(client, data):
    from kldiv.distributed import calibrate_distributed
    from kldiv.pipeline import calibrate

    one = calibrate(lenet_model_path(), data)
    two = calibrate_distributed(lenet_model_path(), data, client=client)
    assert [(n, two.table.hex(n)) for n in two.table] == [(n, one.table.hex(n)) for n in one.table]
    assert two.provenance["data_fingerprint"] == one.provenance["data_fingerprint"]
    assert two.graph == one.graph


def test_npy_folder_shards_by_file_and_bytes_model(client, data, whole, tmp_path):
    for i, b in enumerate(data):
        np.savez(tmp_path / f"batch{i}.npz", **b)
    got = collect_histograms_distributed(
        lenet_model_path().read_bytes(), tmp_path, client=client, shards=4
    )
    _same(got, whole)
    assert got.meta["model"] == "<bytes>"


def test_shard_source_cuts_by_file(tmp_path):
    for i in range(7):
        np.save(tmp_path / f"b{i}.npy", np.zeros((1, 2), np.float32))
    src = NpyFolder(tmp_path)
    pieces = shard_source(src, 4)
    assert [lo for lo, _ in pieces] == [0, 1, 2, 4, 5]
    assert [len(p.files) for _, p in pieces] == [1, 1, 2, 1, 2]
    assert sum((p.files for _, p in pieces), []) == src.files
    assert [len(p) for _, p in shard_source(src, 2, max_batches=4)] == [1, 1, 2]
    assert len(shard_source(src, 100)) == 7  # never an empty shard of files
    from PIL import Image

    for i in range(5):
        Image.fromarray(np.full((4, 4, 3), i * 40, np.uint8)).save(tmp_path / f"im{i}.png")
    images = ImageFolder(tmp_path, Preprocess(), batch_size=2)
    cut = shard_source(images, 2)
    assert [p.files for _, p in cut] == [images.files[:2], images.files[2:4], images.files[4:]]
    with pytest.raises(DataSourceError, match="cannot be cut into shards"):
        shard_source(iter([np.zeros(3)]), 2)


class _DieOnce:
    """A shard whose first reading kills its worker process (a crash mid-run)."""

    def __init__(self, batches, marker):
        self.batches, self.marker = batches, marker

    def __iter__(self):
        if not os.path.exists(self.marker):
            Path(self.marker).write_text("died")
            os._exit(1)
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


@pytest.mark.slow
def test_a_worker_dies_mid_run_and_its_shard_is_retried_exactly(client, data, whole, tmp_path):
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    import kldiv.distributed as dist

    marker = str(tmp_path / "died")
    real = dist.shard_source

    def with_a_crash(source, shards, max_batches=None):
        pieces = real(source, shards, max_batches=max_batches)
        lo, piece = pieces[2]
        pieces[2] = (lo, _DieOnce(piece, marker))
        return pieces

    dist.shard_source = with_a_crash
    try:
        got = collect_histograms_distributed(lenet_model_path(), data, client=client, shards=4)
    finally:
        dist.shard_source = real
    assert Path(marker).read_text() == "died"  # the worker did die
    _same(got, whole)


class _AlwaysDie:
    def __iter__(self):
        os._exit(1)

    def __len__(self):
        return 1


@pytest.mark.slow
def test_a_shard_whose_worker_always_dies_fails_the_run_clearly(data, monkeypatch):
    import cloudpickle
    import dask

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    import kldiv.distributed as dist

    real = dist.shard_source

    def with_a_killer(source, shards, max_batches=None):
        pieces = real(source, shards, max_batches=max_batches)
        pieces[1] = (pieces[1][0], _AlwaysDie())
        return pieces

    monkeypatch.setattr(dist, "shard_source", with_a_killer)
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
            silence_logs=50,
        )
        try:
            with distributed.Client(cluster) as c, pytest.raises(
                # shard 2, lost with the same worker, may be the one reported first
                ClusterError, match=r"shard \d \(from batch \d+\): its worker died"
            ):
                collect_histograms_distributed(lenet_model_path(), data, client=c, shards=2)
        finally:
            cluster.close()


def test_scheduler_that_does_not_answer():
    with pytest.raises(ClusterError, match=r"no Dask scheduler answered at 'tcp://127\.0\.0\.1:9'"):
        collect_histograms_distributed(
            lenet_model_path(), lenet_calibration_data()[:2], scheduler="tcp://127.0.0.1:9",
            timeout=1.0,
        )


def test_worker_without_the_model_file_or_another_model(tmp_path):
    missing = str(tmp_path / "gone.onnx")
    with pytest.raises(ModelError, match=r"model file .*gone\.onnx not found; every worker"):
        run_shard(missing, "0" * 64, [], 0, {}, {}, {"num_bins": 8, "nonfinite": "raise"})
    with pytest.raises(ModelError, match="differs from the driver's"):
        run_shard(str(lenet_model_path()), "0" * 64, [], 0, {}, {},
                  {"num_bins": 8, "nonfinite": "raise"})


def test_bad_arguments(data):
    with pytest.raises(PresetError, match="not sharded"):
        collect_histograms_distributed(lenet_model_path(), data, workers=2, range_policy="append")
    with pytest.raises(ClusterError, match="exactly one"):
        collect_histograms_distributed(lenet_model_path(), data)


@pytest.mark.slow
def test_cli_workers_writes_the_one_process_cache(data, tmp_path, capsys):
    folder = tmp_path / "data"  # one kind of data per folder: the caches go beside it
    folder.mkdir()
    for i, b in enumerate(data):
        np.save(folder / f"batch{i}.npy", b["input"])
    model = str(lenet_model_path())
    assert main(["calibrate", model, "--data", str(folder), "-o", str(tmp_path / "one.cache"),
                 "-q"]) == 0
    assert main(["calibrate", model, "--data", str(folder), "-o", str(tmp_path / "two.cache"),
                 "--workers", "2", "-q"]) == 0
    assert (tmp_path / "two.cache").read_bytes() == (tmp_path / "one.cache").read_bytes()
    out = tmp_path / "never.cache"
    assert main(["calibrate", model, "--data", str(folder), "-o", str(out),
                 "--scheduler", "tcp://127.0.0.1:9", "--scheduler-timeout", "1", "-q"]) == 2
    assert "no Dask scheduler answered" in capsys.readouterr().err
    assert not out.exists()
