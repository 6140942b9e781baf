#!/usr/bin/env python
"""Check trt_backend.device on a real CUDA GPU and print a PASS/FAIL table.

Run on a machine with an NVIDIA GPU and cuda-python (TensorRT is not needed)::

    python scripts/gpu_staging_check.py

For several dtypes and sizes: allocate a device buffer, copy host→device, copy device→host,
compare bit for bit, free. Then a reuse-across-batches loop through StagingBuffers (pointers
must stay the same, every batch must come back intact, freed on exit), an allocation failure
(must raise DeviceError with CUDA's message), and, where CuPy is installed, an independent
read of our device pointer by CuPy. Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trt_backend.device import DeviceBuffer, StagingBuffers, get_backend
from trt_backend.errors import DeviceError

DTYPES = ["float32", "float16", "float64", "int8", "uint8", "int32", "int64", "bool"]
SIZES = [1, 1000, 12345, 1 << 20, 1 << 24]

rows: list[tuple[str, str, str]] = []


def record(name: str, fn: Callable[[], str]) -> None:
    try:
        detail = fn()
        rows.append((name, "PASS", detail))
    except Exception as exc:  # noqa: BLE001 - report every failure in the table
        rows.append((name, "FAIL", f"{type(exc).__name__}: {exc}"))
        traceback.print_exc(file=sys.stderr)


def random_array(n: int, dtype: str, rng: np.random.Generator) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return rng.integers(0, 2, n).astype(bool)
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, n, dtype=dt, endpoint=True)
    arr = rng.standard_normal(n).astype(dt)
    if n > 4:  # special values must survive bit for bit
        arr[:4] = [np.nan, np.inf, -0.0, -np.inf]
    return arr


def roundtrip(n: int, dtype: str) -> str:
    host = random_array(n, dtype, np.random.default_rng(n))
    t0 = time.perf_counter()
    buf = DeviceBuffer(host.nbytes)
    buf.upload(host)
    back = buf.download(host.shape, host.dtype)
    buf.free()
    ms = (time.perf_counter() - t0) * 1e3
    if back.tobytes() != host.tobytes():
        bad = int(np.count_nonzero(back.view(np.uint8) != host.view(np.uint8)))
        raise AssertionError(f"{bad} bytes differ after the round trip")
    return f"{host.nbytes} bytes, {ms:.2f} ms"


def reuse_loop() -> str:
    rng = np.random.default_rng(7)
    specs = {"image": ((8, 3, 224, 224), np.float32), "ids": ((8,), np.int64)}
    batches = 25
    with StagingBuffers(specs) as stage:
        first = stage.pointers
        for i in range(batches):
            batch = {
                "image": random_array(8 * 3 * 224 * 224, "float32", rng).reshape(8, 3, 224, 224),
                "ids": random_array(8, "int64", rng),
            }
            ptrs = stage.stage(batch)
            if ptrs != first:
                raise AssertionError(f"batch {i}: buffers were reallocated ({ptrs} != {first})")
            for name, arr in batch.items():
                if stage.fetch(name).tobytes() != arr.tobytes():
                    raise AssertionError(f"batch {i}: input {name!r} differs after copy back")
        if stage.allocations != 2:
            raise AssertionError(f"{stage.allocations} allocations for 2 inputs")
    if not stage.closed:
        raise AssertionError("staging buffers not closed by the with block")
    try:
        stage.stage(batch)
    except DeviceError:
        pass
    else:
        raise AssertionError("staging after close did not raise")
    return f"{batches} batches, 2 allocations, same pointers, freed on exit"


def allocation_failure() -> str:
    try:
        DeviceBuffer(1 << 62)
    except DeviceError as exc:
        if "cudaMalloc" not in str(exc):
            raise AssertionError(f"message does not name cudaMalloc: {exc}") from exc
        return str(exc).split(";")[0]
    raise AssertionError("allocating 4 EiB did not fail")


def cupy_reads_pointer() -> str:
    import cupy as cp

    host = random_array(1 << 16, "float32", np.random.default_rng(3))
    with DeviceBuffer(host.nbytes) as buf:
        buf.upload(host)
        mem = cp.cuda.UnownedMemory(buf.ptr, host.nbytes, None)
        view = cp.ndarray(host.shape, host.dtype, cp.cuda.MemoryPointer(mem, 0))
        got = cp.asnumpy(view)
    if got.tobytes() != host.tobytes():
        raise AssertionError("CuPy read different bytes at our device pointer")
    return f"CuPy {cp.__version__} read {host.nbytes} bytes at our pointer"


def device_name() -> str:
    backend: Any = get_backend("cuda-python")
    props = backend._check("cudaGetDeviceProperties", backend._rt.cudaGetDeviceProperties(0))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return f"{name.strip(chr(0))} (compute capability {props.major}.{props.minor})"


def main() -> int:
    try:
        print(f"device: {device_name()}")
    except Exception as exc:  # noqa: BLE001
        print(f"FAIL: cannot use the CUDA runtime through cuda-python: {exc}")
        return 1
    for dtype in DTYPES:
        for n in SIZES:
            record(f"roundtrip {dtype}[{n}]", lambda n=n, dtype=dtype: roundtrip(n, dtype))
    record("reuse across batches", reuse_loop)
    record("allocation failure", allocation_failure)
    try:
        import cupy  # noqa: F401
    except ImportError:
        rows.append(("CuPy reads our pointer", "SKIP", "CuPy is not installed"))
    else:
        record("CuPy reads our pointer", cupy_reads_pointer)
    width = max(len(r[0]) for r in rows)
    print(f"{'check':<{width}}  result  detail")
    for name, result, detail in rows:
        print(f"{name:<{width}}  {result:<6}  {detail}")
    failed = sum(r[1] == "FAIL" for r in rows)
    passed = sum(r[1] == "PASS" for r in rows)
    print(f"{passed} passed, {failed} failed, {len(rows) - passed - failed} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
