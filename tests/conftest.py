"""Shared test configuration: Hypothesis profiles, fixture files, TensorRT/GPU markers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

REPO = Path(__file__).resolve().parent.parent

settings.register_profile(
    "default", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default"))


def fixtures_dir() -> Path:
    """The real TensorRT files: ``$KLDIV_FIXTURES``, default ``../shared/fixtures``."""
    return Path(os.environ.get("KLDIV_FIXTURES", REPO.parent / "shared" / "fixtures"))


@pytest.fixture(scope="session")
def trt_caches() -> Path:
    """Folder of real TensorRT caches; skips the test, saying why, when absent."""
    folder = fixtures_dir() / "trt-caches"
    if not folder.is_dir():
        pytest.skip(
            f"real TensorRT cache fixtures not found at {folder}; "
            "set KLDIV_FIXTURES to the shared fixtures folder"
        )
    return folder


@pytest.fixture(scope="session")
def aot_module():
    """The ahead-of-time kernel module of this environment (built on first use).

    It is what users get by default: failing to build it here is a test failure (with the
    compiler's reason), not a skip. ``KLDIV_KERNELS=jit`` skips, saying so.
    """
    from kldiv._kernels import aot, dispatch

    if os.environ.get(dispatch.KERNELS_ENV) == "jit":
        pytest.skip(f"{dispatch.KERNELS_ENV}=jit: the ahead-of-time build is not used")
    module = aot.load()
    if module is None:
        failed = aot.failed_path(aot.module_path())
        reason = failed.read_text() if failed.exists() else "(no reason recorded)"
        pytest.fail(f"the ahead-of-time kernels did not build:\n{reason}")
    return module


@pytest.fixture(scope="module", params=["jit", "aot"])
def kernel_build(request: pytest.FixtureRequest):
    """Each build of the Numba kernels in turn: Numba's JIT, and the ahead-of-time module.

    The ahead-of-time one comes from :func:`aot_module` (a failed build fails the test). A
    test module with a ``BUILD`` attribute gets the build there for its helpers (module
    scope, so Hypothesis tests can use it).
    """
    from kldiv._kernels import dispatch

    if request.param == "jit":
        build = dispatch.jit_kernels()
    else:
        build = dispatch.aot_kernels(request.getfixturevalue("aot_module"))
    has_slot = hasattr(request.module, "BUILD")
    if has_slot:
        request.module.BUILD = build
    yield build
    if has_slot:
        request.module.BUILD = None


def _real_tensorrt_available() -> str | None:
    """None when a real TensorRT imports, else the reason it does not.

    ``tensorrt-stubs`` installs a ``tensorrt`` namespace with no code: that is not TensorRT.
    """
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the machine
        return f"TensorRT is not importable ({exc.__class__.__name__}: {exc})"
    if not hasattr(tensorrt, "Builder"):
        return "only the tensorrt-stubs type stubs are installed, not TensorRT itself"
    return None  # pragma: no cover


def _gpu_available() -> str | None:
    try:
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]
    except Exception as exc:
        return f"cuda-python is not importable ({exc.__class__.__name__})"
    try:
        err, count = cudart.cudaGetDeviceCount()
    except Exception as exc:  # pragma: no cover
        return f"CUDA runtime unavailable ({exc})"
    if int(err) != 0 or count < 1:
        return "no CUDA GPU on this machine (run these on the device machine)"
    return None  # pragma: no cover


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    trt_reason = gpu_reason = None
    checked_trt = checked_gpu = False
    for item in items:
        if "trt" in item.keywords:
            if not checked_trt:
                trt_reason, checked_trt = _real_tensorrt_available(), True
            if trt_reason:
                item.add_marker(pytest.mark.skip(reason=f"needs real TensorRT: {trt_reason}"))
        if "gpu" in item.keywords:
            if not checked_gpu:
                gpu_reason, checked_gpu = _gpu_available(), True
            if gpu_reason:
                item.add_marker(pytest.mark.skip(reason=f"needs a CUDA GPU: {gpu_reason}"))
