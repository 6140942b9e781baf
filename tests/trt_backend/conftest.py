"""Fakes for testing kldiv's control flow around TensorRT and CUDA, on a CPU machine.

``FakeTensorRT`` is a small module object with the attributes our code touches. It records the
calls made to it so tests can check *our* logic (which flags we set, that the calibrator serves
the replayed cache, that parser errors are reported with the node). It produces no TensorRT
results: the "engine" it returns is the marker ``FAKE_ENGINE`` and the cache it makes the
calibrator write is ``FAKE_CACHE``; tests only check that our code passes them through.

``HostMemoryBackend`` implements :class:`trt_backend.device.CudaBackend` with host bytearrays,
to test staging logic (sizes, reuse, freeing) without a GPU. The real CUDA tests are marked
``gpu`` (tests/trt_backend/test_device.py, scripts/gpu_staging_check.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from trt_backend import _tensorrt

FAKE_ENGINE = b"FAKE-ENGINE-NOT-TENSORRT"
FAKE_CACHE = b"FAKE-CACHE-NOT-TENSORRT\n"


class HostMemoryBackend:
    """A CudaBackend over host memory: pointers are keys into a dict of bytearrays."""

    name = "host-fake"

    def __init__(self) -> None:
        self.memory: dict[int, bytearray] = {}
        self.next_ptr = 0x1000
        self.mallocs = 0
        self.frees = 0
        self.copies_htod = 0

    def malloc(self, nbytes: int) -> int:
        ptr = self.next_ptr
        self.next_ptr += max(nbytes, 1) + 256
        self.memory[ptr] = bytearray(max(nbytes, 1))
        self.mallocs += 1
        return ptr

    def free(self, ptr: int) -> None:
        del self.memory[ptr]
        self.frees += 1

    def htod(self, ptr: int, host: np.ndarray[Any, Any]) -> None:
        self.memory[ptr][: host.nbytes] = host.tobytes()
        self.copies_htod += 1

    def dtoh(self, host: np.ndarray[Any, Any], ptr: int) -> None:
        host.reshape(-1).view(np.uint8)[:] = np.frombuffer(
            bytes(self.memory[ptr][: host.nbytes]), dtype=np.uint8
        )

    def create_stream(self) -> int:
        return 7

    def destroy_stream(self, stream: int) -> None:
        pass

    def synchronize(self, stream: int) -> None:
        pass


def _enum(*names: str) -> SimpleNamespace:
    return SimpleNamespace(**{n: i for i, n in enumerate(names)})


class FakeParserError:
    def __init__(self, desc: str, node: int, name: str, op: str) -> None:
        self._d, self._n, self._name, self._op = desc, node, name, op

    def desc(self) -> str:
        return self._d

    def node(self) -> int:
        return self._n

    def node_name(self) -> str:
        return self._name

    def node_operator(self) -> str:
        return self._op


def make_fake_trt(
    version: str = "10.9.0.34",
    *,
    inputs: list[tuple[str, tuple[int, ...]]] | None = None,
    parse_errors: list[FakeParserError] | None = None,
    fast_int8: bool = True,
    build_fails: bool = False,
) -> SimpleNamespace:
    """A module object standing in for ``tensorrt`` (records calls; see the module docstring)."""
    calls: list[tuple[Any, ...]] = []
    net_inputs = inputs if inputs is not None else [("input", (2, 3))]

    class ILogger:
        def __init__(self) -> None:
            calls.append(("ILogger.__init__",))

    class IInt8Calibrator:
        def __init__(self) -> None:
            calls.append(("calibrator_base.__init__", type(self).__mro__[1].__name__))

    calibrator_classes = {
        n: type(n, (IInt8Calibrator,), {})
        for n in (
            "IInt8EntropyCalibrator2",
            "IInt8EntropyCalibrator",
            "IInt8MinMaxCalibrator",
            "IInt8LegacyCalibrator",
        )
    }

    class Tensor:
        def __init__(self, name: str, shape: tuple[int, ...]) -> None:
            self.name, self.shape, self.dtype = name, shape, "FLOAT"

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self._inputs = [Tensor(n, s) for n, s in net_inputs]

        @property
        def num_inputs(self) -> int:
            return len(self._inputs)

        def get_input(self, i: int) -> Tensor:
            return self._inputs[i]

    class Config:
        def __init__(self) -> None:
            self.flags: list[Any] = []
            self.pools: dict[Any, int] = {}
            self.int8_calibrator: Any = None
            self.profiles: list[Any] = []
            self.calibration_profile: Any = None

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            calls.append(("set_memory_pool_limit", pool, size))
            self.pools[pool] = size

        def set_flag(self, flag: Any) -> None:
            calls.append(("set_flag", flag))
            self.flags.append(flag)

        def add_optimization_profile(self, profile: Any) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def set_calibration_profile(self, profile: Any) -> bool:
            self.calibration_profile = profile
            return True

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, Any] = {}

        def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
            self.shapes[name] = (lo, opt, hi)

    class Builder:
        def __init__(self, logger: Any) -> None:
            calls.append(("Builder",))
            self.platform_has_fast_int8 = fast_int8
            self.platform_has_fast_fp16 = True

        def create_network(self, flags: int) -> Network:
            calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> Any:
            calls.append(("build_serialized_network",))
            calib = config.int8_calibrator
            if calib is not None:  # TensorRT's documented calibrator protocol, in order
                calib.get_batch_size()
                served = calib.read_calibration_cache()
                calls.append(("served_cache", served))
                if served is None:
                    names = [t.name for t in network._inputs]
                    while calib.get_batch(names) is not None:
                        calls.append(("got_batch",))
                    calib.write_calibration_cache(memoryview(FAKE_CACHE))
            if build_fails:
                return None
            return memoryview(FAKE_ENGINE)

    class OnnxParser:
        def __init__(self, network: Network, logger: Any) -> None:
            self.errors = list(parse_errors or [])

        def parse_from_file(self, path: str) -> bool:
            calls.append(("parse_from_file", path))
            return not self.errors

        def parse(self, data: bytes) -> bool:
            calls.append(("parse", len(data)))
            return not self.errors

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> FakeParserError:
            return self.errors[i]

    return SimpleNamespace(
        __version__=version,
        calls=calls,
        Builder=Builder,
        OnnxParser=OnnxParser,
        ILogger=ILogger,
        IInt8Calibrator=IInt8Calibrator,
        NetworkDefinitionCreationFlag=SimpleNamespace(
            EXPLICIT_BATCH=0, STRONGLY_TYPED=1
        ),
        BuilderFlag=SimpleNamespace(FP16="FP16", INT8="INT8"),
        MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"),
        Dims=lambda shape: tuple(shape),
        nptype=lambda dtype: np.float32,
        **calibrator_classes,
    )


@pytest.fixture
def fake_trt() -> Iterator[Any]:
    """Install a fake TensorRT 10.9 module (use ``fake_trt_factory`` for other versions)."""
    module = make_fake_trt()
    with _tensorrt.use_module(module):
        yield module


@pytest.fixture
def host_backend() -> HostMemoryBackend:
    return HostMemoryBackend()


@pytest.fixture
def onnx_file(tmp_path: Any) -> Any:
    """An (empty) file that stands for a model; the fake parser never reads it."""
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not read by the fake parser")
    return path


@pytest.fixture
def trt_factory() -> Iterator[Any]:
    """Call with ``make_fake_trt`` arguments; installs that fake for the rest of the test."""
    import contextlib

    with contextlib.ExitStack() as stack:

        def install(*args: Any, **kwargs: Any) -> SimpleNamespace:
            module = make_fake_trt(*args, **kwargs)
            stack.enter_context(_tensorrt.use_module(module))
            return module

        yield install


@pytest.fixture
def parser_error() -> Any:
    return FakeParserError


@pytest.fixture
def fake_outputs() -> tuple[bytes, bytes]:
    """The fake's engine and cache markers."""
    return FAKE_ENGINE, FAKE_CACHE
