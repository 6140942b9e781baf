"""Hypothesis strategies for histograms shared by the entropy tests (helper SEARCH)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from kldiv.histogram import ActivationHistogram

__all__ = ["counts_arrays", "degenerate_counts", "make_hist"]

MAX_COUNT = 2**40


@st.composite
def counts_arrays(draw: st.DrawFn, min_bins: int, max_bins: int, odd: bool = False) -> np.ndarray:
    """Random, sparse, spiky, zero-heavy, single-bin and huge-count int64 histograms."""
    n = draw(st.integers(min_bins, max_bins))
    if odd and n % 2 == 0:
        n += 1 if n < max_bins else -1
    kind = draw(st.sampled_from(["dense", "sparse", "spiky", "zeros", "single", "huge", "decay"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if kind == "dense":
        c = rng.integers(0, 1000, n)
    elif kind == "sparse":
        c = (rng.random(n) < draw(st.floats(0.001, 0.2))) * rng.integers(1, 50, n)
    elif kind == "spiky":
        c = rng.integers(0, 3, n)
        c[rng.integers(0, n, 3)] += rng.integers(10**6, 10**9, 3)
    elif kind == "zeros":
        c = rng.integers(0, 100, n)
        c[0] += 10**7  # ReLU: most values exactly zero
    elif kind == "single":
        c = np.zeros(n, dtype=np.int64)
        c[draw(st.integers(0, n - 1))] = draw(st.integers(1, MAX_COUNT))
    elif kind == "huge":
        c = rng.integers(0, MAX_COUNT, n) * (rng.random(n) < 0.5)
    else:
        c = np.rint(1e6 * np.exp(-np.arange(n) / rng.uniform(5, n))).astype(np.int64)
    c = np.asarray(c, dtype=np.int64)
    if c.sum() == 0:
        c[-1] = 1
    return c


def make_hist(counts: np.ndarray, amax: float = 1.0) -> ActivationHistogram:
    """An ActivationHistogram over [0, amax] holding ``counts``."""
    return ActivationHistogram.from_counts(counts, amax)


@st.composite
def degenerate_counts(draw: st.DrawFn, min_bins: int, max_bins: int) -> np.ndarray:
    """Histograms where many candidate windows hold a single non-empty bin.

    A few isolated non-empty bins (the first one often below the first candidate, so that
    every window up to the second one holds it alone), optionally a spike of exact zeros in
    bin 0 with or without a count in bin 1 (the ``zeros`` policies then decide whether bin 0
    counts as non-empty), and optionally a dense tail.
    """
    n = draw(st.integers(min_bins, max_bins))
    c = np.zeros(n, dtype=np.int64)
    k = draw(st.integers(1, 4))
    positions = draw(st.lists(st.integers(1, n - 1), min_size=k, max_size=k, unique=True))
    for pos in positions:
        c[pos] = draw(st.integers(1, MAX_COUNT))
    if draw(st.booleans()):
        c[0] = draw(st.integers(1, 10**9))  # ReLU zeros
    if draw(st.booleans()):
        c[1] = draw(st.integers(0, 3))  # bin 1: what zeros="bin1" copies into bin 0
    if draw(st.booleans()):
        start = draw(st.integers(n // 2, n - 1))
        seed = draw(st.integers(0, 2**32 - 1))
        c[start:] += np.random.default_rng(seed).integers(0, 20, n - start)
    if c.sum() == 0:
        c[-1] = 1
    return c
