"""Degenerate windows (#6, algorithm.md §4): candidates whose window holds a single non-empty
bin are not taken when ``min_nonempty_bins=2`` (the ``tensorrt`` preset); the Numba kernel
skips exactly the candidates the reference skips (every compiled build).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kldiv import entropy as E
from kldiv._kernels import Kernels
from kldiv.errors import PresetError
from tests._hist_strategies import counts_arrays, degenerate_counts, make_hist
from tests._kernels_env import using
from tests._search_checks import check_kernel_search

BUILD: Kernels | None = None

ABS_PRESETS = [n for n, o in E.PRESETS.items() if o.domain == "abs"]


def _check(counts: np.ndarray, opts: E.EntropyOptions) -> None:
    check_kernel_search(counts, opts, BUILD)


def _nonempty_in_window(counts: np.ndarray, i: int, opts: E.EntropyOptions) -> int:
    hist = E.apply_zero_policy(counts, opts)
    lo, hi = E.window(hist.size, i, opts)
    return int(np.count_nonzero(hist[lo:hi]))


@pytest.mark.usefixtures("kernel_build")
@settings(max_examples=60)
@given(
    counts=degenerate_counts(129, 700),
    preset=st.sampled_from(ABS_PRESETS),
    min_nonempty=st.integers(1, 4),
)
def test_kernel_matches_reference_on_degenerate_windows(
    counts: np.ndarray, preset: str, min_nonempty: int
) -> None:
    _check(counts, E.PRESETS[preset].replace(min_nonempty_bins=min_nonempty))


@pytest.mark.usefixtures("kernel_build")
@settings(max_examples=30)
@given(
    counts=degenerate_counts(128, 500),
    zeros=st.sampled_from(["keep", "bin1", "drop"]),
    grouping=st.sampled_from(["proportional", "floor"]),
    empty=st.sampled_from(["histogram", "p"]),
    smoothing=st.sampled_from(["none", "eps"]),
    min_nonempty=st.integers(1, 3),
)
def test_kernel_matches_reference_any_options(
    counts: np.ndarray, zeros: str, grouping: str, empty: str, smoothing: str,
    min_nonempty: int,
) -> None:
    if smoothing == "eps":
        empty = "p"  # the kernel's smoothed loop; smoothing with raw emptiness is the reference
    opts = E.EntropyOptions(
        zeros=zeros, grouping=grouping, empty=empty, smoothing=smoothing,  # type: ignore[arg-type]
        min_nonempty_bins=min_nonempty,
    )
    _check(counts, opts)


@pytest.mark.usefixtures("kernel_build")
@settings(max_examples=15)
@given(counts=degenerate_counts(255, 801), min_nonempty=st.integers(1, 3))
def test_kernel_matches_reference_signed(counts: np.ndarray, min_nonempty: int) -> None:
    if counts.size % 2 == 0:
        counts = counts[:-1].copy()
        if counts.sum() == 0:
            counts[-1] = 1
    _check(counts, E.PRESETS["mxnet"].replace(min_nonempty_bins=min_nonempty))


@settings(max_examples=60)
@given(counts=st.one_of(degenerate_counts(129, 700), counts_arrays(129, 700)))
def test_tensorrt_never_takes_a_degenerate_window_while_another_is_finite(
    counts: np.ndarray,
) -> None:
    opts = E.PRESETS["tensorrt"]
    for implementation in ("numpy", "numba"):
        with using(implementation):
            r = E.search_threshold(make_hist(counts), opts)
        assert r.bin_index is not None
        finite = np.isfinite(r.divergence)
        if finite.any():
            assert np.isfinite(r.divergence_at(r.bin_index))
            assert _nonempty_in_window(counts, r.bin_index, opts) >= 2
        # every candidate whose window holds exactly one non-empty bin is excluded
        for i, d in zip(r.candidates, r.divergence):
            if _nonempty_in_window(counts, int(i), opts) == 1:
                assert d == np.inf


@settings(max_examples=40)
@given(counts=counts_arrays(129, 700))
def test_rule_off_is_the_plain_search(counts: np.ndarray) -> None:
    """min_nonempty_bins=1 changes nothing: same curve as a search that never skips."""
    opts = E.PRESETS["tensorrt"].replace(min_nonempty_bins=1)
    hist = E.apply_zero_policy(counts, opts)
    cand, div = E.divergence_curve(counts, opts)
    plain = [E.kl_divergence(*E.distributions(hist, int(i), opts), opts) for i in cand]
    np.testing.assert_array_equal(div, plain)


def _one_bin_bulk() -> np.ndarray:
    """The bulk of a tensor in one bin (200) and a sparse tail whose last group holds two
    unequal bins: candidate i = 201 keeps bin 200 alone with every outlier folded into it, so
    P = Q = one point and KL = 0, below every other candidate.
    """
    counts = np.zeros(2048, dtype=np.int64)
    counts[200] = 10**6
    counts[[900, 1500, 2046, 2047]] = [5, 3, 5, 1]
    return counts


def test_degenerate_minimum_is_skipped(implementation: str) -> None:
    counts = _one_bin_bulk()
    plain = E.search_threshold(make_hist(counts), "tensorrt", min_nonempty_bins=1)
    assert plain.bin_index == 201  # the degenerate window
    assert plain.divergence_at(201) == pytest.approx(0.0, abs=1e-12)
    r = E.search_threshold(make_hist(counts), "tensorrt")
    assert r.divergence_at(201) == np.inf
    assert r.bin_index is not None and r.bin_index > 900
    assert _nonempty_in_window(counts, r.bin_index, E.PRESETS["tensorrt"]) >= 2
    assert r.clipped_fraction < plain.clipped_fraction


def test_constant_tensor_still_keeps_every_bin(implementation: str) -> None:
    """A constant tensor has only degenerate (or empty) windows; every candidate is infinite
    and the preset's tie rule (last) keeps all bins, as the constant-tensor caches show.
    """
    counts = np.zeros(2048, dtype=np.int64)
    counts[-1] = 77
    r = E.search_threshold(make_hist(counts, 2.0), "tensorrt")
    assert r.bin_index == 2048 and r.scale_hex == "3c810a14"


def test_presets_that_take_degenerate_windows() -> None:
    assert E.PRESETS["tensorrt"].min_nonempty_bins == 2
    for name in ("gtc2017", "modelopt", "mxnet"):
        assert E.PRESETS[name].min_nonempty_bins == 1


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_min_nonempty_bins(bad: object) -> None:
    with pytest.raises(PresetError, match="min_nonempty_bins"):
        E.EntropyOptions(min_nonempty_bins=bad)  # type: ignore[arg-type]


@pytest.mark.peers
def test_modelopt_takes_degenerate_windows() -> None:
    """Why the modelopt preset keeps min_nonempty_bins=1: ModelOpt's own routine picks the
    degenerate KL = 0 window on the same histogram.
    """
    try:
        with warnings.catch_warnings():  # torch's own deprecation notices on import
            warnings.simplefilter("ignore", DeprecationWarning)
            from modelopt.torch.quantization.calib.histogram import _compute_amax_entropy
    except Exception as exc:  # import chain needs torch, scipy ...
        pytest.skip(f"nvidia-modelopt is not importable ({exc.__class__.__name__}: {exc})")
    # bins 0 and 1 empty, so bin 0 := bin 1 stays empty; the bulk in bin 127 makes the first
    # candidate (i = 128) a one-bin window with KL = 0 (a later lone bin would leave empty
    # windows before it, which ModelOpt's NaN rule picks first)
    counts = _one_bin_bulk()
    counts[127], counts[200] = counts[200], 0
    edges = np.linspace(0.0, 1.0, counts.size + 1)
    theirs = float(_compute_amax_entropy(counts.copy(), edges, 8, False))
    ours = E.search_threshold(make_hist(counts), "modelopt")
    assert ours.amax == theirs
    assert ours.bin_index == 128  # the degenerate window
    assert _nonempty_in_window(counts, ours.bin_index, E.PRESETS["modelopt"]) == 1
    skipping = E.search_threshold(make_hist(counts), "modelopt", min_nonempty_bins=2)
    assert skipping.amax != theirs
