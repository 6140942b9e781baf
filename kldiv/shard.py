"""Exact sharded histogram collection: the one-process ``"pow2"`` table, from any split.

The ``"pow2"`` range policy (TensorRT's: the first batch's absmax, doubled as often as a
batch needs, bin pairs merged at each doubling) is sequential by nature, yet its result can be
computed from shards of the batches filled independently and merged afterwards, **bit for
bit**. ``docs/histograms.md`` ("Exact sharding") derives why; in short:

- every range a tensor's histogram ever has is ``B * 2**k``, with ``B`` the range its first
  batch with a non-zero value sets (``B = 0`` until then);
- filling a value at range ``B * 2**j`` and merging bin pairs up to ``B * 2**k`` puts it in
  the bin that filling at ``B * 2**k`` directly gives, *except* for the values the last bin's
  clamp took at ``B * 2**j`` (``|x|`` in ``[clamp_edge(R), R]``, in practice ``|x| == R``):
  those end one bin lower, in ``(N - 1) >> (k - j)`` instead of ``N >> (k - j)``;
- so a shard filled from range ``B`` (its own pow2 growth) differs from the one-process
  histogram only in where its clamped values went: the one-process run clamps a batch's
  values only when its range at that batch (the larger of the range reached before the shard
  and the shard's own) equals the shard's range there.

:class:`ShardCollector` fills a shard from the broadcast range ``B`` of each tensor and records,
per batch, the range the batch was filled at and how many values the clamp took there;
:func:`merge_shards` folds the shards in batch order, moving exactly those counts to the bin
the one-process run gives them. A tensor whose range is still unset after the first batch
(all zeros, or empty, in it) is anchored by the first shard that sees a non-zero value; later
shards that saw it too are filled again from that range (:func:`merge_shards` says which).

:func:`collect_in_shards` runs the whole scheme in this process (the reference the distributed
driver, :mod:`kldiv.distributed`, is tested against).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .collect import HistogramCollector, _as_host_or_device, _fast_absmax
from .defaults import NUM_BINS
from .errors import HistogramRangeError
from .histogram import ActivationHistogram, clamp_edge, count_at_least

__all__ = [
    "ShardCollector",
    "ShardResult",
    "collect_in_shards",
    "merge_shards",
    "shard_bases",
]


@dataclass
class ShardResult:
    """What one shard hands back: its histograms and what exact merging needs.

    Attributes
    ----------
    hists : dict of str to ActivationHistogram
        Per tensor, filled from ``base[name]`` (or from the shard's own first non-zero batch
        when the base is 0) with ``"pow2"`` growth.
    absmax : dict of str to float
        Largest finite ``|x|`` seen per tensor.
    base : dict of str to float
        The range each histogram started from (0: none given).
    records : dict of str to numpy.ndarray
        Per tensor, one row per non-empty batch: ``(batch index, range the batch was filled
        at, values the last bin's clamp took)``, float64 (indices and counts are exact below
        2**53).
    batches : int
        Batches observed.
    first, stop : int
        Global index of the shard's first batch and one past its last.
    digests : list of bytes
        SHA-256 of each batch as fed (the data fingerprint is chained from them).
    samples : int
        Samples observed.
    """

    hists: dict[str, ActivationHistogram]
    absmax: dict[str, float]
    base: dict[str, float]
    records: dict[str, np.ndarray]
    batches: int
    first: int = 0
    stop: int = 0
    digests: list[bytes] = field(default_factory=list)
    samples: int = 0

    def describe(self) -> str:
        """``batches 4-7`` (for messages)."""
        return f"batches {self.first}-{max(self.first, self.stop - 1)}"

    def replace_tensors(self, again: ShardResult, names: Iterable[str]) -> None:
        """Take ``names``' histograms, records and bases from ``again`` (the shard filled anew)."""
        for name in names:
            self.hists[name] = again.hists[name]
            self.records[name] = again.records[name]
            self.base[name] = again.base[name]


class ShardCollector(HistogramCollector):
    """A ``"pow2"`` :class:`~kldiv.collect.HistogramCollector` for one shard of the batches.

    Parameters
    ----------
    base : mapping of str to float, optional
        Each tensor's range after the first batch (:func:`shard_bases`); tensors not listed
        (or at 0) start the usual way, at their first batch's absmax.
    num_bins : int, default NUM_BINS
        Bins per histogram.
    nonfinite : {"raise", "drop"}, default "raise"
        As for the collector.
    """

    def __init__(
        self,
        base: Mapping[str, float] | None = None,
        num_bins: int = NUM_BINS,
        *,
        nonfinite: str = "raise",
    ) -> None:
        super().__init__(num_bins, "pow2", nonfinite=nonfinite)
        self.base = {str(k): float(v) for k, v in (base or {}).items()}
        self._records: dict[str, list[tuple[int, float, int]]] = {}

    def observe(self, activations: Mapping[str, Any], *, batch: int | None = None) -> None:
        """Add one batch (as :meth:`HistogramCollector.observe`), recording what merging needs.

        A tensor with a base is filled from it, and on its first batch here the range is grown to
        the batch's absmax before the fill: the range the fill would grow to, so the batch is read
        once (not filled at the base, then again).
        """
        for name, values in activations.items():
            b = self.base.get(name, 0.0)
            if name in self._hists or b <= 0.0:
                continue
            hist = ActivationHistogram(b, self.num_bins, growth="pow2")
            arr = _as_host_or_device(values)
            if arr.size:
                a = _fast_absmax(arr)
                if math.isfinite(a) and a > b:
                    hist.grow_to(a)
            self._hists[name] = hist
            self._absmax[name] = 0.0
        super().observe(activations, batch=batch)

    def _observe_one(self, name: str, values: Any, index: int) -> float | None:
        m = super()._observe_one(name, values, index)
        if m is None:
            return None
        r = self._hists[name].amax
        clamped = 0
        if m > 0.0:
            edge = clamp_edge(r, self.num_bins)
            if m >= edge:  # the batch reaches the range's top edge: count what the clamp took
                clamped = count_at_least(values, edge)
        self._records.setdefault(name, []).append((index, r, clamped))
        return m

    def result(self, *, first: int = 0, stop: int | None = None) -> ShardResult:
        """The shard's :class:`ShardResult` (``first``/``stop``: its global batch indices)."""
        return ShardResult(
            hists=dict(self._hists),
            absmax=dict(self._absmax),
            base={n: self.base.get(n, 0.0) for n in self._hists},
            records={
                n: np.asarray(rows, dtype=np.float64).reshape(-1, 3)
                for n, rows in self._records.items()
            },
            batches=self.batches,
            first=first,
            stop=first + self.batches if stop is None else stop,
        )


def shard_bases(first: ShardResult | HistogramCollector) -> dict[str, float]:
    """The range each tensor's histogram has after the first batch.

    What every other shard starts from (0 for tensors all-zero or empty there).
    """
    hists = first.hists if isinstance(first, ShardResult) else dict(first.items())
    return {n: h.amax for n, h in hists.items()}


def _doublings(small: float, large: float) -> int:
    """``k`` with ``large == small * 2**k`` exactly (both are ``B * 2**j``)."""
    mant, exp = math.frexp(large / small)
    if mant != 0.5:  # pragma: no cover - guarded by the base check
        raise HistogramRangeError(f"{large!r} is not {small!r} times a power of two")
    return exp - 1


def _first_anchor(rec: np.ndarray | None) -> float:
    """The range a shard that started unanchored set at its first non-zero batch (0: none)."""
    if rec is None:
        return 0.0
    nonzero = rec[rec[:, 1] > 0.0]
    return float(nonzero[0, 1]) if len(nonzero) else 0.0


def merge_shards(
    results: Sequence[ShardResult], *, num_bins: int | None = None, nonfinite: str = "raise"
) -> tuple[HistogramCollector, dict[int, dict[str, float]]]:
    """Fold shard results, in batch order, into the one-process ``"pow2"`` histograms.

    Parameters
    ----------
    results : sequence of ShardResult
        Every shard, in batch order; the first must have been filled with no base (it holds
        the first batch, which sets the ranges).
    num_bins : int, optional
        Bins (default: the histograms' own).
    nonfinite : str, default "raise"
        Recorded on the collector.

    Returns
    -------
    collector : HistogramCollector
        The merged histograms (valid only when ``reruns`` is empty).
    reruns : dict of int to dict of str to float
        Shards (by position) to fill again for some tensors, with the range to start them
        from: tensors whose range a shard before them set (their first batch was all zeros or
        empty). Fill those shards again for those tensors with that base, replace the
        tensors' entries in their results, and merge again.

    Raises
    ------
    HistogramRangeError
        When a shard was filled from a range that the batches before it do not give the
        tensor (the first batch differed from the one the bases were taken from, e.g. the
        data changed between the passes): the message names the shard and the tensor.
    """
    hists: dict[str, ActivationHistogram] = {}
    bases: dict[str, float] = {}
    absmax: dict[str, float] = {}
    reruns: dict[int, dict[str, float]] = {}
    n_bins = num_bins
    batches = 0
    for pos, res in enumerate(results):
        batches += res.batches
        for name, h in res.hists.items():
            n_bins = n_bins or h.num_bins
            absmax[name] = max(absmax.get(name, 0.0), res.absmax.get(name, 0.0))
            base_s = res.base.get(name, 0.0)
            rec = res.records.get(name)
            cur = hists.get(name)
            anchor = bases.get(name, 0.0)
            if cur is None or anchor == 0.0:
                # nothing but zeros so far: the shard's own run is the one-process continuation
                if base_s != 0.0:
                    raise HistogramRangeError(
                        f"tensor {name!r}: shard {pos} ({res.describe()}) was filled from range "
                        f"{base_s!r}, but the batches before it set no range for it (all zeros "
                        "or empty); the first batch is not the one the ranges were taken from "
                        "(did the data change during the run?)"
                    )
                hists[name] = h.copy() if cur is None else _add_zeros(h, cur)
                bases[name] = _first_anchor(rec)
                continue
            if h.amax == 0.0:  # the shard saw only zeros of it: bin 0 under any range
                hists[name] = _add_zeros(cur, h)
                continue
            if base_s == 0.0:
                reruns.setdefault(pos, {})[name] = anchor
                continue
            if base_s != anchor:
                raise HistogramRangeError(
                    f"tensor {name!r}: shard {pos} ({res.describe()}) was filled from range "
                    f"{base_s!r}, but the first batch set {anchor!r}; the shards' first batch "
                    "disagrees with the broadcast range (did the data change during the run?)"
                )
            hists[name] = _merge_exact(cur, h, rec, name)
    collector = HistogramCollector(n_bins or NUM_BINS, "pow2", nonfinite=nonfinite)
    collector._hists = hists
    collector._absmax = absmax
    collector.batches = batches
    return collector, reruns


def _add_zeros(h: ActivationHistogram, zeros: ActivationHistogram) -> ActivationHistogram:
    """``h`` plus a histogram holding only zeros (all in bin 0, whatever its range)."""
    counts = h.counts.copy()
    counts[0] += int(zeros.counts[0])
    return ActivationHistogram(h.amax, h.num_bins, counts, growth="pow2")


def _merge_exact(
    cur: ActivationHistogram, h: ActivationHistogram, rec: np.ndarray | None, name: str
) -> ActivationHistogram:
    """``cur`` (the batches so far) + ``h`` (the next shard, filled from the same base).

    The shard's clamped values are moved where the one-process run puts them.
    """
    n = cur.num_bins
    target = max(cur.amax, h.amax)
    a = cur.copy().grow_to(target, policy="pow2")
    b = h.copy().grow_to(target, policy="pow2")
    if a.amax != target or b.amax != target or a.num_bins != b.num_bins:
        raise HistogramRangeError(  # pragma: no cover - both are base * 2**k
            f"tensor {name!r}: ranges {cur.amax!r} and {h.amax!r} do not double to one another"
        )
    counts = a.counts + b.counts
    before = cur.amax  # the one-process range when the shard starts
    if rec is not None:
        for _, r, clamped in rec[(rec[:, 2] > 0) & (rec[:, 1] < before)]:
            # one-process: filled at max(before, r) > r, so not clamped; here: clamped at r
            e = _doublings(float(r), target)
            src, dst = (n - 1) >> e, min(n >> e, n - 1)
            if src != dst:
                counts[src] -= int(clamped)
                counts[dst] += int(clamped)
    return ActivationHistogram(target, n, counts, growth="pow2")


def collect_in_shards(
    batches: Sequence[Mapping[str, Any]],
    bounds: Iterable[int],
    *,
    num_bins: int = NUM_BINS,
    nonfinite: str = "raise",
    fill: Callable[[Sequence[Mapping[str, Any]], Mapping[str, float], int], ShardResult]
    | None = None,
) -> HistogramCollector:
    """The sharded scheme in this process: batch 0, then shards cut at ``bounds``, merged.

    Parameters
    ----------
    batches : sequence of mapping
        Activations per batch (``{tensor: array}``), in order.
    bounds : iterable of int
        Where later shards start (indices in ``1..len(batches)``, sorted here; a repeated
        bound gives an empty shard, which is allowed).
    num_bins, nonfinite
        As for :class:`ShardCollector`.
    fill : callable, optional
        ``fill(batches, base, first) -> ShardResult``; default a :class:`ShardCollector`.

    Returns
    -------
    HistogramCollector
        Equal, histogram for histogram, to a ``"pow2"`` collector fed the batches in order.
    """

    def run(part: Sequence[Mapping[str, Any]], base: Mapping[str, float], first: int) -> ShardResult:
        if fill is not None:
            return fill(part, base, first)
        c = ShardCollector(base, num_bins, nonfinite=nonfinite)
        for i, acts in enumerate(part):
            c.observe(acts, batch=first + i)
        return c.result(first=first)

    if not batches:
        raise HistogramRangeError("no batches to collect")
    cuts = [1, *sorted(min(max(int(b), 1), len(batches)) for b in bounds), len(batches)]
    first = run(batches[:1], {}, 0)
    base = shard_bases(first)
    results = [first] + [run(batches[lo:hi], base, lo) for lo, hi in zip(cuts, cuts[1:])]
    merged, reruns = merge_shards(results, num_bins=num_bins, nonfinite=nonfinite)
    if reruns:
        for pos, extra in reruns.items():
            res = results[pos]
            again = run(batches[res.first : res.stop], {**base, **extra}, res.first)
            res.replace_tensors(again, extra)
        merged, reruns = merge_shards(results, num_bins=num_bins, nonfinite=nonfinite)
        if reruns:  # a refill anchors every tensor it was run for
            raise HistogramRangeError(
                f"tensors {sorted({n for extra in reruns.values() for n in extra})} still lack a "
                "range after their shards were refilled; this is a bug in kldiv's sharding, "
                "calibrate in one process meanwhile"
            )
    return merged
