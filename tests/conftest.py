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


#: The compiled builds of the kernels this suite tests against the NumPy references. Numba's
#: JIT (with its on-disk cache) is the only one kldiv offers; a new build is added here.
KERNEL_BUILDS = ["numba"]


@pytest.fixture(scope="module", params=KERNEL_BUILDS)
def kernel_build(request: pytest.FixtureRequest):
    """Each compiled build of the kernels in turn (:func:`kldiv._kernels.load`).

    Failing to load a build here is a test failure with the reason, not a skip. A test module
    with a ``BUILD`` attribute gets the build there for its helpers (module scope, so
    Hypothesis tests can use it).
    """
    from kldiv import _kernels

    build = _kernels.load(request.param)
    has_slot = hasattr(request.module, "BUILD")
    if has_slot:
        request.module.BUILD = build
    yield build
    if has_slot:
        request.module.BUILD = None


@pytest.fixture(params=["numba", "numpy"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Run the test with ``KLDIV_KERNELS`` set to each implementation in turn (the Numba
    kernels, then the NumPy references), through the one resolver."""
    from kldiv import _kernels

    monkeypatch.setenv(_kernels.KERNELS_ENV, request.param)
    _kernels.reset()
    yield request.param
    _kernels.reset()


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
