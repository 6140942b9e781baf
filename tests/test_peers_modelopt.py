"""The modelopt preset against NVIDIA ModelOpt's own _compute_amax_entropy."""

from __future__ import annotations

import numpy as np
import pytest

from kldiv.entropy import search_threshold
from tests._hist_strategies import make_hist
from tests._kernels_env import using

pytestmark = pytest.mark.peers


@pytest.fixture(scope="module")
def modelopt_entropy():  # type: ignore[no-untyped-def]
    try:
        from modelopt.torch.quantization.calib.histogram import _compute_amax_entropy
    except Exception as exc:  # import chain needs torch, scipy, requests, huggingface_hub
        pytest.skip(f"nvidia-modelopt is not importable ({exc.__class__.__name__}: {exc})")
    return _compute_amax_entropy


def _suite() -> list[np.ndarray]:
    rng = np.random.default_rng(42)
    n = 2048
    decay = np.rint(1e6 * np.exp(-np.arange(n) / 150.0)).astype(np.int64)
    relu = decay.copy()
    relu[0] += 10**8
    sparse = (rng.random(n) < 0.05) * rng.integers(1, 40, n)
    sparse[-1] = 1
    spiky = rng.integers(0, 4, n)
    spiky[[3, 700, 2047]] += 10**6
    gauss = np.histogram(np.abs(rng.standard_normal(200_000)), bins=n)[0]
    lap = np.histogram(np.abs(rng.laplace(size=200_000)), bins=n)[0]
    const = np.zeros(n, dtype=np.int64)
    const[-1] = 99
    small = np.histogram(np.abs(rng.standard_normal(5000)), bins=512)[0]
    return [decay, relu, sparse, spiky, gauss, lap, const, rng.integers(0, 1000, n), small]


@pytest.mark.parametrize("case", range(len(_suite())))
def test_modelopt_preset_same_amax(case: int, modelopt_entropy) -> None:  # type: ignore[no-untyped-def]
    counts = _suite()[case].astype(np.int64)
    amax = 3.0
    edges = np.linspace(0.0, amax, counts.size + 1)
    theirs = modelopt_entropy(counts.copy(), edges, 8, False)  # their code mutates its input
    for implementation in ("numpy", "numba"):
        with using(implementation):
            ours = search_threshold(make_hist(counts, amax), "modelopt")
        assert ours.amax == float(theirs), (implementation, ours.bin_index)


def test_modelopt_stride_and_start(modelopt_entropy) -> None:  # type: ignore[no-untyped-def]
    counts = _suite()[4].astype(np.int64)
    edges = np.linspace(0.0, 1.0, counts.size + 1)
    theirs = modelopt_entropy(counts.copy(), edges, 8, False, stride=7, start_bin=200)
    ours = search_threshold(make_hist(counts, 1.0), "modelopt", stride=7, start_bin=200)
    assert ours.amax == float(theirs)
