"""make_calibrator, CalibrationFeed and cache replay: kldiv's logic around TensorRT's calibrators."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kldiv.cachefile import parse_cache, read_cache
from kldiv.errors import CacheFormatError, DataSourceError
from trt_backend.calibrators import (
    CalibrationFeed,
    check_cache_header,
    make_calibrator,
    normalize_algorithm,
    replay_cache_bytes,
)
from trt_backend.errors import TensorRTUnavailableError, TensorRTVersionError


def _batches(n: int, shape: tuple[int, ...] = (2, 3), seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [{"input": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


# -- replay: header rewriting on real TensorRT caches -----------------------------------------
@pytest.mark.parametrize(
    ("version", "algorithm", "header"),
    [
        ("10.9.0", "entropy2", "TRT-100900-EntropyCalibration2"),
        ("8.6.1", "EntropyCalibration2", "TRT-8601-EntropyCalibration2"),
        ("10.13.0", "minmax", "TRT-101300-MinMaxCalibration"),
        ("8.6.1", "entropy", "TRT-8601-EntropyCalibration"),
    ],
)
def test_replay_rewrites_only_the_header(
    trt_caches: Path, version: str, algorithm: str, header: str
) -> None:
    original = (trt_caches / "sampleint8-mnist-trt7000.cache").read_bytes()
    table = read_cache(trt_caches / "sampleint8-mnist-trt7000.cache")
    out = replay_cache_bytes(table, version, algorithm)
    first, _, body = out.partition(b"\n")
    assert first.decode() == header
    assert body == original.partition(b"\n")[2]  # every scale written back bit for bit


def test_replay_legacy_header(trt_caches: Path) -> None:
    table = read_cache(trt_caches / "sampleint8-mnist-trt7000.cache")
    out = replay_cache_bytes(table, "8.6.1", "legacy", cutoff=1.0, quantile=0.99999)
    header = parse_cache(out.decode()).header
    assert header is not None and header.kind == "legacy"
    assert header.cutoff == 1.0 and header.quantile == 0.99999


def test_check_cache_header_accepts_matching_and_refuses_other_versions(trt_caches: Path) -> None:
    data = (trt_caches / "sampleint8-mnist-trt7000.cache").read_bytes()
    table = check_cache_header(data, "7.0.0", "entropy2")
    assert len(table) == 8
    with pytest.raises(CacheFormatError, match=r"TRT-8601-EntropyCalibration2.*replay="):
        check_cache_header(data, "8.6.1", "entropy2", path="x.cache")
    with pytest.raises(CacheFormatError, match="MinMaxCalibration"):
        check_cache_header(data, "7.0.0", "minmax")


def test_normalize_algorithm() -> None:
    assert normalize_algorithm("EntropyCalibration2") == "entropy2"
    assert normalize_algorithm(" MinMax ") == "minmax"
    with pytest.raises(ValueError, match="entropy2"):
        normalize_algorithm("percentile")


# -- the TensorRT subclass, defined at call time --------------------------------------------
@pytest.mark.parametrize(
    ("algorithm", "base"),
    [("entropy2", "IInt8EntropyCalibrator2"), ("entropy", "IInt8EntropyCalibrator"),
     ("minmax", "IInt8MinMaxCalibrator"), ("legacy", "IInt8LegacyCalibrator")],
)
def test_make_calibrator_subclasses_the_chosen_base(
    fake_trt: Any, host_backend: Any, algorithm: str, base: str
) -> None:
    calib = make_calibrator(_batches(1), algorithm, backend=host_backend)
    assert isinstance(calib, getattr(fake_trt, base))
    assert ("calibrator_base.__init__", base) in fake_trt.calls  # base initializer ran
    assert calib.get_batch_size() == 2
    assert hasattr(calib, "get_quantile") is (algorithm == "legacy")
    calib.close()


def test_make_calibrator_without_tensorrt() -> None:
    from trt_backend import _tensorrt

    if _tensorrt.available():  # pragma: no cover
        pytest.skip("a real TensorRT is installed")
    with pytest.raises(TensorRTUnavailableError, match="kldiv\\[trt\\]"):
        make_calibrator(_batches(1))


def test_make_calibrator_refused_on_tensorrt_11(trt_factory: Any) -> None:
    trt_factory("11.0.0")
    with pytest.raises(TensorRTVersionError, match="Q/DQ"):
        make_calibrator(_batches(1))


def test_replayed_table_is_served_under_running_header(trt_factory: Any, trt_caches: Path) -> None:
    trt_factory("10.9.0.34")
    table = read_cache(trt_caches / "sampleint8-mnist-trt5100.cache")
    calib = make_calibrator(None, "entropy2", replay=table)
    served = calib.read_calibration_cache()
    assert served.startswith(b"TRT-100900-EntropyCalibration2\n")
    assert parse_cache(served.decode()) == table  # same names, same bits, same order


def test_existing_cache_with_foreign_header_is_refused(
    fake_trt: Any, trt_caches: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "calib.cache"
    cache.write_bytes((trt_caches / "sampleint8-mnist-trt7000.cache").read_bytes())
    with pytest.raises(CacheFormatError, match="TensorRT 10.9.0"):
        make_calibrator(_batches(1), cache=cache)


# -- batches, staging, capture (fake device) --------------------------------------------------
def _feed(data: Any, backend: Any, **kw: Any) -> CalibrationFeed:
    return CalibrationFeed(data, algorithm="entropy2", trt_version="10.9.0", backend=backend, **kw)


def test_batches_are_staged_in_requested_order_and_buffers_reused(host_backend: Any) -> None:
    rng = np.random.default_rng(1)
    data = [
        {"a": rng.standard_normal((4, 2)).astype(np.float32), "b": rng.integers(0, 9, (4,))}
        for _ in range(3)
    ]
    feed = _feed(data, host_backend)
    assert feed.batch_size == 4
    seen = []
    for batch in data:
        ptrs = feed.next_batch(["b", "a"])
        assert ptrs is not None and len(ptrs) == 2
        got_a = np.frombuffer(bytes(host_backend.memory[ptrs[1]]), np.float32).reshape(4, 2)
        np.testing.assert_array_equal(got_a, batch["a"])
        got_b = np.frombuffer(bytes(host_backend.memory[ptrs[0]]), batch["b"].dtype)
        np.testing.assert_array_equal(got_b, batch["b"])
        seen.append(tuple(ptrs))
    assert len(set(seen)) == 1  # the same two buffers every batch
    assert host_backend.mallocs == 2
    assert feed.next_batch(["a", "b"]) is None  # end of data: buffers freed at once
    assert host_backend.memory == {} and host_backend.frees == 2
    assert feed.batches_served == 3 and feed.error is None


def test_shape_mismatch_is_recorded_not_raised_into_tensorrt(host_backend: Any) -> None:
    data = _batches(1, (2, 3)) + _batches(1, (2, 4))
    feed = _feed(data, host_backend)
    assert feed.next_batch(["input"]) is not None
    assert feed.next_batch(["input"]) is None
    assert isinstance(feed.error, DataSourceError)
    assert "(2, 4)" in str(feed.error) and "(2, 3)" in str(feed.error)
    assert host_backend.memory == {}


def test_bind_inputs_checks_first_batch(host_backend: Any) -> None:
    feed = _feed(_batches(2, (2, 3)), host_backend)
    feed.bind_inputs({"input": ((None, 3), np.float32)})  # dynamic batch dimension: fine
    with pytest.raises(DataSourceError, match="does not match"):
        feed.bind_inputs({"input": ((2, 5), np.float32)})
    with pytest.raises(DataSourceError, match="image"):
        feed.bind_inputs({"image": ((2, 3), np.float32)})


def test_no_data_no_cache_is_an_error(host_backend: Any) -> None:
    with pytest.raises(DataSourceError, match="replay="):
        _feed(None, host_backend)


def test_replay_rejected_by_tensorrt_is_reported(host_backend: Any, trt_caches: Path) -> None:
    feed = _feed(None, host_backend, replay=trt_caches / "sampleint8-mnist-trt7000.cache")
    assert feed.next_batch(["data"]) is None
    assert isinstance(feed.error, DataSourceError) and "did not accept" in str(feed.error)


def test_written_cache_is_captured_and_saved(host_backend: Any, tmp_path: Path) -> None:
    path = tmp_path / "out.cache"
    feed = _feed(_batches(1), host_backend, cache=path)
    feed.write_cache(memoryview(b"TRT-100900-EntropyCalibration2\nx: 3c010204\n"))
    assert feed.captured == b"TRT-100900-EntropyCalibration2\nx: 3c010204\n"
    assert path.read_bytes() == feed.captured
    # a different cache is not written over the file without force
    feed.write_cache(b"TRT-100900-EntropyCalibration2\nx: 3c000000\n")
    assert path.read_bytes() == b"TRT-100900-EntropyCalibration2\nx: 3c010204\n"
    assert feed.captured.endswith(b"3c000000\n")
