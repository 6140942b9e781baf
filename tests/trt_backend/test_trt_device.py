"""Host→device staging. CPU tests use a host-memory fake device for the bookkeeping; the tests
marked ``gpu`` allocate, copy, copy back, compare and free on a real CUDA GPU (cuda-python).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kldiv.errors import DataSourceError
from trt_backend.device import (
    DeviceBuffer,
    StagingBuffers,
    TensorSpec,
    check_batch,
    get_backend,
    input_specs_from_onnx,
)
from trt_backend.errors import DeviceError

DTYPES = [np.float32, np.float16, np.float64, np.int8, np.uint8, np.int32, np.int64, np.bool_]


def _random(shape: tuple[int, ...], dtype: Any, rng: np.random.Generator) -> np.ndarray:
    if np.dtype(dtype) == np.bool_:
        return rng.integers(0, 2, shape).astype(bool)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    return rng.standard_normal(shape).astype(dtype)


# -- CPU: bookkeeping on a fake device ----------------------------------------------------------
def test_buffers_sized_from_specs_and_freed(host_backend: Any) -> None:
    specs = [TensorSpec("x", (8, 3, 4), np.dtype(np.float32)), TensorSpec("ids", (8,), np.dtype(np.int64))]
    with StagingBuffers(specs, backend=host_backend) as stage:
        sizes = sorted(len(m) for m in host_backend.memory.values())
        assert sizes == [8 * 8, 8 * 3 * 4 * 4]
    assert stage.closed and host_backend.memory == {}
    with pytest.raises(DeviceError, match="closed"):
        stage.stage({"x": np.zeros((8, 3, 4), np.float32), "ids": np.zeros(8, np.int64)})


def test_dynamic_dims_fixed_by_first_batch(host_backend: Any) -> None:
    stage = StagingBuffers({"x": ((None, 2), "float32")}, backend=host_backend)
    assert host_backend.mallocs == 0
    stage.stage({"x": np.ones((5, 2), np.float32)})
    assert stage.shapes == {"x": (5, 2)}
    with pytest.raises(DataSourceError, match="first batch fixes"):
        stage.stage({"x": np.ones((6, 2), np.float32)})
    np.testing.assert_array_equal(stage.fetch("x"), np.ones((5, 2), np.float32))
    stage.close()


def test_check_batch_messages() -> None:
    specs = [TensorSpec("x", (2, 3), np.dtype(np.float32))]
    with pytest.raises(DataSourceError, match=r"missing input\(s\) \['x'\].*unknown name\(s\) \['y'\]"):
        check_batch(specs, {"y": np.zeros((2, 3))})
    with pytest.raises(DataSourceError, match="cannot be cast"):
        check_batch(specs, {"x": np.zeros((2, 3), complex)})
    out = check_batch(specs, {"x": np.arange(6.0).reshape(3, 2).T.T.reshape(2, 3)})
    assert out["x"].dtype == np.float32 and out["x"].flags.c_contiguous


def test_unknown_backend() -> None:
    with pytest.raises(ValueError, match="cuda-python"):
        get_backend("opencl")


def test_input_specs_from_onnx() -> None:
    pytest.importorskip("onnx")
    examples = pytest.importorskip("kldiv.examples")
    specs = input_specs_from_onnx(examples.lenet_model_path())
    assert [s.name for s in specs] == [examples.INPUT_NAME]
    assert specs[0].dtype == np.float32 and len(specs[0].shape) == 4


# -- GPU: the real thing -------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (3, 5, 7), (1 << 20,)])
def test_gpu_roundtrip(dtype: Any, shape: tuple[int, ...]) -> None:
    host = _random(shape, dtype, np.random.default_rng(0))
    with DeviceBuffer(host.nbytes) as buf:
        buf.upload(host)
        back = buf.download(host.shape, host.dtype)
    assert back.tobytes() == host.tobytes()  # bit for bit (NaN payloads, -0.0 included)
    with pytest.raises(DeviceError, match="freed"):
        _ = buf.ptr


@pytest.mark.gpu
def test_gpu_staging_reused_across_batches() -> None:
    rng = np.random.default_rng(1)
    specs = {"image": ((4, 3, 32, 32), np.float32), "ids": ((4,), np.int64)}
    with StagingBuffers(specs) as stage:
        first = None
        for _ in range(10):
            batch = {"image": _random((4, 3, 32, 32), np.float32, rng), "ids": _random((4,), np.int64, rng)}
            ptrs = stage.stage(batch)
            first = first or ptrs
            assert ptrs == first
            for name, arr in batch.items():
                np.testing.assert_array_equal(stage.fetch(name), arr)
        assert stage.allocations == 2 and stage.batches_staged == 10
    assert stage.closed


@pytest.mark.gpu
def test_gpu_allocation_failure_is_a_clear_error() -> None:
    with pytest.raises(DeviceError, match="cudaMalloc failed"):
        DeviceBuffer(1 << 62)


@pytest.mark.gpu
def test_gpu_pointer_read_by_cupy() -> None:
    cp = pytest.importorskip("cupy")
    host = _random((1000,), np.float32, np.random.default_rng(2))
    with DeviceBuffer(host.nbytes) as buf:
        buf.upload(host)
        mem = cp.cuda.UnownedMemory(buf.ptr, host.nbytes, None)
        view = cp.ndarray(host.shape, host.dtype, cp.cuda.MemoryPointer(mem, 0))
        np.testing.assert_array_equal(cp.asnumpy(view), host)
