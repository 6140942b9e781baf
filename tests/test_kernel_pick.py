"""The kernel path's pick (``pick_kernel_minimum``) equals ``pick_minimum`` on the reference curve.

Sparse histograms (a few non-empty bins, plateaus of divergence 0, near-ties) are where the
exact re-check does its work: most of the band's reference values are known without running
the reference, or known to equal another candidate's (``_value_classes``); the rest run it.
These tests hold both parts to the reference: the values known in advance and the classes bit
for bit, and the pick for every tie rule and tolerance.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kldiv import entropy as E
from kldiv._kernels import Kernels
from kldiv.collect import HistogramCollector
from tests._search_checks import check_kernel_search

BUILD: Kernels | None = None

# each test runs on each build in turn: conftest's kernel_build sets BUILD (module scope)
pytestmark = pytest.mark.usefixtures("kernel_build")

TOLERANCES = [0.0, 1e-12, 1e-10, 5e-7]


@st.composite
def sparse_counts(draw: st.DrawFn, min_bins: int, max_bins: int, odd: bool = False) -> np.ndarray:
    """A few non-empty bins (1 to 48), counts often equal, sometimes a near-equal huge pair."""
    n = draw(st.integers(min_bins, max_bins))
    if odd and n % 2 == 0:
        n += 1 if n < max_bins else -1
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    k = draw(st.integers(1, 48))
    c = np.zeros(n, dtype=np.int64)
    pos = rng.choice(n, size=min(k, n), replace=False)
    style = draw(st.sampled_from(["ones", "small", "pair", "huge"]))
    if style == "ones":  # a small tensor's values, one per bin (2-page PP-OCR)
        c[pos] = 1
    elif style == "small":
        c[pos] = rng.integers(1, 4, pos.size)
    elif style == "pair":  # two neighbours of almost equal huge counts: KL ~ 1e-25 .. 1e-9
        c[pos] = rng.integers(1, 3, pos.size)
        j = int(rng.integers(0, n - 1))
        a = int(rng.integers(10**4, 2**42))
        c[j], c[j + 1] = a, a + int(rng.integers(0, 3))
    else:
        values = rng.integers(1, 2**40, 3)
        c[pos] = values[rng.integers(0, 3, pos.size)]  # few distinct values: equal groups
    if draw(st.booleans()):
        c[n // 2 if odd else 0] += int(rng.integers(1, 10**6))  # exact zeros (ReLU, padding)
    if c.sum() == 0:
        c[-1] = 1
    return c


def _check_pick(counts: np.ndarray, opts: E.EntropyOptions) -> None:
    check_kernel_search(counts, opts, BUILD, curve=False)


# ------------------------------------------------------------------ values known in advance
@settings(max_examples=60)
@given(
    counts=sparse_counts(128, 600),
    zeros=st.sampled_from(["keep", "bin1", "drop"]),
    grouping=st.sampled_from(["proportional", "floor"]),
    empty=st.sampled_from(["histogram", "p"]),
    levels=st.sampled_from([128, 100, 37]),
    min_nonempty=st.integers(1, 3),
    log_base=st.sampled_from([math.e, 2.0, 0.5]),
)
def test_values_known_in_advance_are_the_reference_abs(
    counts: np.ndarray, zeros: str, grouping: str, empty: str, levels: int, min_nonempty: int,
    log_base: float,
) -> None:
    opts = E.EntropyOptions(
        zeros=zeros, grouping=grouping, empty=empty, num_levels=levels,  # type: ignore[arg-type]
        min_nonempty_bins=min_nonempty, log_base=log_base,
    )
    _check_known_values(counts, opts)


@settings(max_examples=25)
@given(
    counts=sparse_counts(255, 701, odd=True),
    grouping=st.sampled_from(["proportional", "floor"]),
    empty=st.sampled_from(["histogram", "p"]),
    zeros=st.sampled_from(["keep", "bin1", "drop"]),
)
def test_values_known_in_advance_are_the_reference_signed(
    counts: np.ndarray, grouping: str, empty: str, zeros: str
) -> None:
    opts = E.PRESETS["mxnet"].replace(smoothing="none", grouping=grouping, empty=empty, zeros=zeros)
    _check_known_values(counts, opts)


def _check_known_values(counts: np.ndarray, opts: E.EntropyOptions) -> None:
    """Label 0: reference value 0.0 / log(base); label k >= 1: one value, bit for bit."""
    cand, ref = E.divergence_curve(counts, opts)
    label = E._value_classes(E.apply_zero_policy(counts, opts), cand, opts)
    expected = 0.0 / math.log(opts.log_base)
    bits = ref.view(np.int64)
    assert (bits[label == 0] == np.array([expected]).view(np.int64)[0]).all()
    for k in np.unique(label[label > 0]):
        assert np.unique(bits[label == k]).size == 1, ref[label == k]


def _labels(counts: np.ndarray, opts: E.EntropyOptions) -> tuple[np.ndarray, np.ndarray]:
    cand = E.candidate_bins(counts.size, opts)
    return cand, E._value_classes(E.apply_zero_policy(counts, opts), cand, opts)


def test_known_values_cover_the_zero_plateau() -> None:
    """On a small tensor's histogram (one value per bin) the plateau is known in advance."""
    counts = np.zeros(2048, dtype=np.int64)
    counts[[0, 40, 46, 103, 194, 217, 313, 351, 358, 385, 456, 671, 732, 863, 924, 1023, 1096]] = 1
    counts[0] = 8
    opts = E.PRESETS["tensorrt"]
    # every unclipped candidate: with zeros="bin1" bin 0 takes bin 1's count (0), and with
    # zeros="keep" bin 0's 8 never shares a group with bin 40's 1 (40 * 128 // 2048 = 2)
    for o in (opts, opts.replace(zeros="keep")):
        cand, label = _labels(counts, o)
        np.testing.assert_array_equal(label == 0, cand > 1096)
        assert (label[cand <= 1096] == -1).all()
        _check_known_values(counts, o)


def test_classes_cover_a_positive_plateau() -> None:
    """Counts 1 and 2 two bins apart share a group in most windows: a few classes of many."""
    counts = np.zeros(2048, dtype=np.int64)
    counts[[6, 14, 25, 34, 37, 50, 51, 67, 91, 111, 139, 188, 196, 233, 1023, 1461]] = 1
    counts[190] = 2
    opts = E.PRESETS["tensorrt"]
    cand, label = _labels(counts, opts)
    unclipped = cand > 1461
    assert (label[~unclipped] == -1).all()
    classes = np.unique(label[label > 0])
    assert 1 <= classes.size <= 3 and np.count_nonzero(label > 0) > 300
    _check_known_values(counts, opts)


def test_inexact_group_means_are_not_classed() -> None:
    """A group mean like 4/3 is not exact in float64: the sum of Q depends on its layout."""
    counts = np.zeros(1024, dtype=np.int64)
    counts[[100, 101, 102]] = [1, 1, 2]  # a group of the three: q = 4/3
    counts[[300, 700]] = 1
    opts = E.EntropyOptions()
    cand, label = _labels(counts, opts)
    j = np.array([100, 101, 102])
    three = np.array([np.unique(j * 128 // i).size == 1 for i in cand])
    assert (cand[three] > 700).any()
    assert (label[three & (cand > 700)] == -1).all()
    _check_known_values(counts, opts)


def test_equal_q_sequences_need_exact_sums() -> None:
    """Same q over the non-empty bins, inexact means (x 4/3): the reference values differ.

    The sum of Q then rounds differently with the layout of the window, so such candidates
    must not share a class (the dyadic condition).
    """
    counts = np.zeros(2048, dtype=np.int64)
    bins = [12, 13, 14, 32, 33, 34, 120, 121, 122, 232, 233, 234, 236, 237, 238, 260, 261, 262,
            324, 325, 326, 388, 389, 390, 412, 413, 414, 428, 429, 430, 456, 457, 458, 472, 473,
            474, 528]
    counts[bins] = [362, 724, 362, 995, 995, 1990, 128, 256, 128, 764, 382, 382, 171, 342, 171,
                    658, 329, 329, 820, 820, 1640, 851, 851, 1702, 348, 696, 348, 98, 98, 196,
                    500, 1000, 500, 858, 858, 1716, 903195]
    opts = E.EntropyOptions()
    hist = E.apply_zero_policy(counts, opts)
    values: dict[bytes, set[float]] = {}
    for i in (727, 1857):
        p, q = E.distributions(hist, i, opts)
        values.setdefault(q[bins].tobytes(), set()).add(E.kl_divergence(p, q, opts))
    assert len(values) == 1 and len(next(iter(values.values()))) == 2  # the construction
    _check_known_values(counts, opts)


def test_smoothing_and_clipping_are_never_known_in_advance() -> None:
    counts = np.zeros(512, dtype=np.int64)
    counts[[10, 200, 300]] = 1
    opts = E.EntropyOptions()
    cand, label = _labels(counts, opts)
    assert (label[cand > 300] == 0).all() and (label[cand <= 300] == -1).all()
    _, smoothed = _labels(counts, E.EntropyOptions(smoothing="eps", empty="p"))
    assert (smoothed == -1).all()


# ------------------------------------------------------------------ the pick
@settings(max_examples=60)
@given(
    counts=sparse_counts(129, 700),
    preset=st.sampled_from([n for n, o in E.PRESETS.items() if o.domain == "abs"]),
    ties=st.sampled_from(["first", "last"]),
    tol=st.sampled_from(TOLERANCES),
    empty_q=st.sampled_from(["inf", "nan"]),
    zeros=st.sampled_from(["keep", "bin1", "drop"]),
    grouping=st.sampled_from(["proportional", "floor"]),
    empty=st.sampled_from(["histogram", "p"]),
    stride=st.integers(1, 3),
    min_nonempty=st.integers(1, 3),
    log_base=st.sampled_from([math.e, 2.0, 0.5]),
)
def test_pick_is_the_reference_pick_sparse_abs(
    counts: np.ndarray, preset: str, ties: str, tol: float, empty_q: str, zeros: str,
    grouping: str, empty: str, stride: int, min_nonempty: int, log_base: float,
) -> None:
    opts = E.PRESETS[preset].replace(
        ties=ties, tie_tolerance=tol, empty_q=empty_q, zeros=zeros, grouping=grouping,
        empty=empty, stride=stride, min_nonempty_bins=min_nonempty, log_base=log_base,
    )
    _check_pick(counts, opts)


@settings(max_examples=20)
@given(
    counts=sparse_counts(255, 601, odd=True),
    ties=st.sampled_from(["first", "last"]),
    tol=st.sampled_from(TOLERANCES),
    smoothing=st.sampled_from(["eps", "none"]),
    empty_q=st.sampled_from(["inf", "nan"]),
    empty=st.sampled_from(["histogram", "p"]),
)
def test_pick_is_the_reference_pick_sparse_signed(
    counts: np.ndarray, ties: str, tol: float, smoothing: str, empty_q: str, empty: str
) -> None:
    opts = E.PRESETS["mxnet"].replace(
        ties=ties, tie_tolerance=tol, smoothing=smoothing, empty_q=empty_q, empty=empty
    )
    _check_pick(counts, opts)


@pytest.mark.parametrize("ties", ["first", "last"])
@pytest.mark.parametrize("tol", TOLERANCES)
def test_pick_on_a_faithful_two_page_histogram(ties: str, tol: float) -> None:
    """Histograms as the collector builds them from two small batches (range doubling)."""
    rng = np.random.default_rng(5)
    collector = HistogramCollector()
    for batch in range(2):
        collector.observe(
            {
                "se": np.maximum(rng.standard_normal(12), 0),
                "pooled": np.abs(rng.laplace(size=(1, 24, 1, 1))),
                "relu": np.maximum(rng.standard_normal(20), 0) * (batch + 1),
            }
        )
    for _, hist in collector.items():
        counts = np.asarray(hist.counts, dtype=np.int64)
        assert 1 <= np.count_nonzero(counts) <= 48
        _check_pick(counts, E.PRESETS["tensorrt"].replace(ties=ties, tie_tolerance=tol))


UNIT_BINS = [19, 21, 22, 25, 52, 81, 106, 133, 160, 178, 189, 201, 219, 223, 238, 253]


@pytest.mark.parametrize(
    ("ones", "threes"),
    [
        (UNIT_BINS + [299], []),  # KL 0 past bin 299 (Q = P)
        # bins 2 and 3 (counts 1 and 3) share group 0 in every window past bin 400: KL > 0,
        # the same sequence of q (2, 2, 1, 1, ...) everywhere
        ([2, *UNIT_BINS, 400], [3]),
    ],
)
def test_plateau_needs_few_reference_calls(
    monkeypatch: pytest.MonkeyPatch, ones: list[int], threes: list[int]
) -> None:
    """A plateau of over a thousand candidates is decided with few reference calls."""
    counts = np.zeros(2048, dtype=np.int64)
    counts[ones] = 1
    counts[threes] = 3
    opts = E.PRESETS["tensorrt"]
    calls = []
    real = E.kl_divergence

    def counting(p: np.ndarray, q: np.ndarray, o: E.EntropyOptions) -> float:
        calls.append(1)
        return real(p, q, o)

    assert BUILD is not None
    cand, div = E.kernel_divergence_curve(counts, opts, BUILD)
    monkeypatch.setattr(E, "kl_divergence", counting)
    pos = E.pick_kernel_minimum(counts, cand, div, opts)
    monkeypatch.undo()
    assert int(cand[pos]) == 2048
    band = div <= div.min() + 1e-10
    assert np.count_nonzero(band) > 1500  # the band: every candidate past the last bin
    assert len(calls) < 50
    _check_pick(counts, opts)


# ------------------------------------------------------------------ constructed near-ties
def _pair_histogram(a: int, delta: int) -> np.ndarray:
    """Unit counts below bin 400 and a pair (a, a + delta) in bins 450, 451 of 600.

    Candidates past 451 keep everything; those that put 450 and 451 in one group have
    ``KL > 0`` (~ delta**2 / (8 a) / total), the others ``Q = P`` and ``KL = 0``.
    """
    c = np.zeros(600, dtype=np.int64)
    rng = np.random.default_rng(0)
    c[np.sort(rng.choice(np.arange(10, 400), 20, replace=False))] = 1
    c[450], c[451] = a, a + delta
    return c


def _naive_pick(counts: np.ndarray, opts: E.EntropyOptions) -> int:
    """What a pick that took every unclipped band candidate for KL = 0 would choose."""
    assert BUILD is not None
    cand, div = E.kernel_divergence_curve(counts, opts, BUILD)
    best = float(div.min())
    band = np.flatnonzero(div <= best + E.BAND_ATOL + opts.tie_tolerance)
    hist = E.apply_zero_policy(counts, opts)
    last_bin = int(np.flatnonzero(hist)[-1])
    exact = np.array([
        0.0 if cand[k] > last_bin else E.kl_divergence(*E.distributions(hist, int(cand[k]), opts), opts)
        for k in band
    ])
    return int(cand[band[E.pick_minimum(exact, opts)]])


@pytest.mark.parametrize(
    ("a", "lo", "hi"),
    [
        (337_000, 1e-12, 1.5e-12),  # just above the tolerance: not a tie
        (373_000, 0.5e-12, 1e-12),  # just below: a tie
        (2**40, 0.0, 1e-24),  # positive by a hair: no tie at tolerance 0
    ],
)
@pytest.mark.parametrize("ties", ["first", "last"])
@pytest.mark.parametrize("tol", [0.0, 1e-12])
def test_near_ties_around_the_tolerance(a: int, lo: float, hi: float, ties: str, tol: float) -> None:
    counts = _pair_histogram(a, 1)
    opts = E.EntropyOptions(ties=ties, tie_tolerance=tol)  # type: ignore[arg-type]
    cand, ref = E.divergence_curve(counts, opts)
    merged = (cand > 451) & (ref > 0)
    assert merged.any() and (ref[cand > 451] == 0).any()
    assert (lo < ref[merged]).all() and (ref[merged] < hi).all()  # the construction holds
    _check_pick(counts, opts)


def test_near_ties_tell_a_wrong_pick_apart() -> None:
    """The constructions above separate the exact pick from one that assumes KL = 0."""
    differs = 0
    for a in (337_000, 2**40):
        for tol in (0.0, 1e-12):
            opts = E.EntropyOptions(ties="last", tie_tolerance=tol)
            counts = _pair_histogram(a, 1)
            cand, ref = E.divergence_curve(counts, opts)
            differs += _naive_pick(counts, opts) != int(cand[E.pick_minimum(ref, opts)])
    assert differs >= 2


def test_rounding_below_zero_wins_at_tolerance_zero() -> None:
    """A candidate whose reference value rounds below 0 is the minimum at tolerance 0."""
    counts = np.zeros(300, dtype=np.int64)
    counts[[43, 68, 129, 133, 156, 169, 185]] = [2, 2, 1, 1, 3, 2, 1]
    counts[250], counts[251] = 4_651_103_603_027, 4_651_103_603_028
    for ties in ("first", "last"):
        opts = E.EntropyOptions(ties=ties)  # type: ignore[arg-type]
        cand, ref = E.divergence_curve(counts, opts)
        assert ref.min() < 0 and (ref == 0).any()
        _check_pick(counts, opts)
        assert int(cand[E.pick_minimum(ref, opts)]) != _naive_pick(counts, opts)
        _check_pick(counts, opts.replace(tie_tolerance=1e-12))


def test_infinite_candidates_stay_infinite_in_any_base() -> None:
    """The reference's inf (an empty or degenerate window) is +inf for a base below 1 too."""
    counts = np.zeros(147, dtype=np.int64)
    counts[128] = 1  # candidate 128 keeps no count: inf; the others hold the one bin: KL 0
    for base in (0.5, 2.0):
        opts = E.PRESETS["tensorrt"].replace(
            ties="first", tie_tolerance=0.0, zeros="keep", min_nonempty_bins=1, log_base=base
        )
        _, ref = E.divergence_curve(counts, opts)
        assert BUILD is not None
        _, div = E.kernel_divergence_curve(counts, opts, BUILD)
        assert ref[0] == div[0] == np.inf
        _check_pick(counts, opts)


# ------------------------------------------------------------------ NaN and smoothing
@pytest.mark.parametrize("empty", ["p", "histogram"])
@pytest.mark.parametrize("smoothing", ["eps", "none"])
def test_empty_windows_with_smoothing_follow_the_reference(empty: str, smoothing: str) -> None:
    """With smoothing an all-empty window is inf in the reference (Q cannot be smoothed),
    whatever ``empty_q`` says; without it, ``empty_q='nan'`` makes it NaN.
    """
    counts = np.zeros(2048, dtype=np.int64)
    counts[[1500, 1700, 1900]] = [5, 3, 2]
    opts = E.EntropyOptions(smoothing=smoothing, empty=empty, empty_q="nan")  # type: ignore[arg-type]
    _, ref = E.divergence_curve(counts, opts)
    assert BUILD is not None
    _, div = E.kernel_divergence_curve(counts, opts, BUILD)
    np.testing.assert_array_equal(np.isnan(div), np.isnan(ref))
    assert np.isnan(ref).any() == (smoothing == "none")
    _check_pick(counts, opts)
