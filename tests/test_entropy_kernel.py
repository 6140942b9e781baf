"""The Numba kernels against the NumPy reference: same bin_index, KL within 1e-9 (every build)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kldiv import entropy as E
from kldiv._kernels import Kernels
from tests._hist_strategies import counts_arrays
from tests._search_checks import check_kernel_search

BUILD: Kernels | None = None


# each test runs on each build in turn: conftest's kernel_build sets BUILD (module scope)
pytestmark = pytest.mark.usefixtures("kernel_build")

ABS_PRESETS = [n for n, o in E.PRESETS.items() if o.domain == "abs"]


def _check(counts: np.ndarray, opts: E.EntropyOptions) -> None:
    check_kernel_search(counts, opts, BUILD)


@settings(max_examples=40)
@given(counts=counts_arrays(129, 700), preset=st.sampled_from(ABS_PRESETS))
def test_kernel_matches_reference_abs(counts: np.ndarray, preset: str) -> None:
    _check(counts, E.PRESETS[preset])


@settings(max_examples=25)
@given(
    counts=counts_arrays(128, 600),
    zeros=st.sampled_from(["keep", "bin1", "drop"]),
    grouping=st.sampled_from(["proportional", "floor"]),
    empty=st.sampled_from(["histogram", "p"]),
    ties=st.sampled_from(["first", "last"]),
    stride=st.integers(1, 5),
)
def test_kernel_matches_reference_any_options(
    counts: np.ndarray, zeros: str, grouping: str, empty: str, ties: str, stride: int
) -> None:
    opts = E.EntropyOptions(zeros=zeros, grouping=grouping, empty=empty, ties=ties, stride=stride)  # type: ignore[arg-type]
    _check(counts, opts)


@settings(max_examples=15)
@given(counts=counts_arrays(255, 801, odd=True), smoothing=st.sampled_from(["eps", "none"]))
def test_kernel_matches_reference_signed(counts: np.ndarray, smoothing: str) -> None:
    _check(counts, E.PRESETS["mxnet"].replace(smoothing=smoothing))


@settings(max_examples=10)
@given(counts=counts_arrays(128, 400))
def test_kernel_matches_reference_smoothing_abs(counts: np.ndarray) -> None:
    _check(counts, E.EntropyOptions(smoothing="eps", empty="p"))


@pytest.mark.parametrize("preset", ABS_PRESETS)
def test_kernel_full_size_histograms(preset: str) -> None:
    rng = np.random.default_rng(11)
    for counts in (
        rng.integers(0, 2**40, 2048),
        np.rint(1e9 * np.exp(-np.arange(2048) / 90.0)).astype(np.int64) + (rng.random(2048) < 0.01),
    ):
        _check(counts.astype(np.int64), E.PRESETS[preset])


def test_exact_ties_resolved_like_reference() -> None:
    counts = np.zeros(512, dtype=np.int64)
    counts[5] = 2**40  # every candidate has KL 0: the tie rule decides
    for ties in ("first", "last"):
        _check(counts, E.EntropyOptions(ties=ties))  # type: ignore[arg-type]


def test_search_implementations_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """search_threshold through the resolver: KLDIV_KERNELS=numpy and =numba, same result."""
    from kldiv import _kernels
    from tests._hist_strategies import make_hist

    rng = np.random.default_rng(2)
    h = make_hist(rng.integers(0, 1000, 2048), 3.0)
    results = {}
    for name in ("numpy", "numba"):
        monkeypatch.setenv(_kernels.KERNELS_ENV, name)
        _kernels.reset()
        results[name] = E.search_threshold(h)
        assert (_kernels.resolve() is None) == (name == "numpy")
    _kernels.reset()
    a, b = results["numpy"], results["numba"]
    assert a.bin_index == b.bin_index and a.scale == b.scale
    np.testing.assert_allclose(a.divergence, b.divergence, rtol=1e-9, atol=1e-12)
