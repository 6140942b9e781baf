"""Collect one histogram per tensor from streamed activations.

:class:`HistogramCollector` keeps an :class:`~kldiv.histogram.ActivationHistogram` of ``|x|``
per tensor name, filled batch by batch (nothing of a batch is kept after
:meth:`HistogramCollector.observe` returns), plus the exact largest ``|x|`` seen per tensor (what
the minmax calibrator uses). Collectors of shards merge with ``+``; they save to and load from
a pickle-free ``.npz`` file (format in ``docs/calibration.md``), so thresholds can be recomputed
with another preset without running the model again.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_write_bytes
from .defaults import DEFAULT_RANGE_POLICY, NUM_BINS
from .errors import HistogramError, HistogramRangeError, NonFiniteError
from .histogram import (
    _NONFINITE,
    RANGE_POLICIES,
    ActivationHistogram,
    GrowthPolicy,
    _is_device_array,
    absmax,
)

__all__ = ["HISTOGRAM_FILE_FORMAT", "HISTOGRAM_FILE_VERSION", "HistogramCollector"]

log = logging.getLogger(__name__)

#: Value of the ``format`` key of a histogram file.
HISTOGRAM_FILE_FORMAT = "kldiv-histograms"
#: Version of the histogram file written (and the newest read).
HISTOGRAM_FILE_VERSION = 1


class HistogramCollector:
    """One histogram of ``|x|`` per tensor, filled from streamed batches of activations.

    Parameters
    ----------
    num_bins : int, default NUM_BINS (2048)
        Bins of each histogram (with ``"append"`` this is the starting count).
    range_policy : {"pow2", "append", "global", "fixed"}, default DEFAULT_RANGE_POLICY
        How each histogram's range is chosen and grown (see :mod:`kldiv.histogram`):
        ``"pow2"`` (TensorRT guide) starts at the first batch's absmax and doubles, merging
        bin pairs; ``"append"`` (ModelOpt) appends bins of the same width; ``"global"`` and
        ``"fixed"`` use ``ranges`` (``"global"``: the absmax of a first pass over all data,
        see :func:`kldiv.pipeline.calibrate`). Each histogram is built with the matching
        growth (:attr:`growth`): ``"pow2"``, ``"append"``, or ``"fixed"`` for the last two.
    ranges : mapping of str to float, optional
        Per-tensor range for ``"global"`` / ``"fixed"`` (required for those policies).
    nonfinite : {"raise", "drop"}, default "raise"
        NaN/±Inf raise :class:`~kldiv.errors.NonFiniteError` naming the tensor and the batch,
        or are skipped.

    Notes
    -----
    Fills run the Numba kernels or the NumPy reference as ``KLDIV_KERNELS`` chooses (see
    :mod:`kldiv._kernels`); the histograms are the same.

    Examples
    --------
    >>> import numpy as np
    >>> c = HistogramCollector(num_bins=8)
    >>> c.observe({"x": np.array([0.5, -2.0, 1.0])})
    >>> c["x"].amax, c.absmax("x")
    (2.0, 2.0)
    """

    def __init__(
        self,
        num_bins: int = NUM_BINS,
        range_policy: str = DEFAULT_RANGE_POLICY,
        *,
        ranges: Mapping[str, float] | None = None,
        nonfinite: str = "raise",
    ) -> None:
        if range_policy not in RANGE_POLICIES:
            raise HistogramError(
                f"unknown range_policy {range_policy!r}; choose one of {RANGE_POLICIES}"
            )
        if range_policy in ("global", "fixed") and ranges is None:
            raise HistogramError(
                f"range_policy={range_policy!r} needs ranges={{tensor: amax}}; use 'pow2' to "
                "find the ranges from the data"
            )
        if nonfinite not in _NONFINITE:
            raise HistogramError(f"nonfinite must be 'raise' or 'drop', got {nonfinite!r}")
        self.num_bins = int(num_bins)
        self.range_policy = range_policy
        self.ranges = dict(ranges) if ranges is not None else None
        self.nonfinite = nonfinite
        self.batches = 0
        self.meta: dict[str, Any] = {}
        self._hists: dict[str, ActivationHistogram] = {}
        self._absmax: dict[str, float] = {}

    # -- mapping-like access -------------------------------------------------------------
    def __getitem__(self, name: str) -> ActivationHistogram:
        try:
            return self._hists[name]
        except KeyError:
            raise KeyError(
                f"no histogram for tensor {name!r}; collected: {len(self._hists)} tensors"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._hists

    def __iter__(self) -> Iterator[str]:
        return iter(self._hists)

    def __len__(self) -> int:
        return len(self._hists)

    def __repr__(self) -> str:
        return (
            f"HistogramCollector({len(self)} tensors, {self.batches} batches, "
            f"range_policy={self.range_policy!r})"
        )

    @property
    def names(self) -> list[str]:
        """Tensor names in the order first seen (network order)."""
        return list(self._hists)

    def items(self) -> Iterator[tuple[str, ActivationHistogram]]:
        """``(name, histogram)`` pairs in order."""
        return iter(self._hists.items())

    def absmax(self, name: str) -> float:
        """The largest finite ``|x|`` seen for ``name`` (``<= self[name].amax``)."""
        return self._absmax[name]

    @property
    def growth(self) -> GrowthPolicy:
        """The growth policy of every histogram this collector builds (from
        :attr:`range_policy`: ``"pow2"``, ``"append"``, else ``"fixed"``)."""
        if self.range_policy == "pow2":
            return "pow2"
        if self.range_policy == "append":
            return "append"
        return "fixed"

    # -- filling ---------------------------------------------------------------------------
    def observe(self, activations: Mapping[str, np.ndarray], *, batch: int | None = None) -> None:
        """Add one batch of activations.

        Parameters
        ----------
        activations : mapping of str to array
            ``{tensor_name: array}`` for one batch (any shape, float16/32/64).
        batch : int, optional
            The batch's index, for error messages (default: the count of batches so far).

        Raises
        ------
        NonFiniteError
            NaN/±Inf in an activation (with ``nonfinite="raise"``), naming tensor and batch.
        HistogramRangeError
            With ``"global"``/``"fixed"``, a value beyond the given range.

        Notes
        -----
        Tensors are filled in the batch's order; the first failing tensor raises, and the
        collector then holds a partial batch: start over.
        """
        index = self.batches if batch is None else batch
        for name, values in activations.items():
            self._observe_one(name, values, index)
        self.batches += 1

    def _observe_one(self, name: str, values: Any, index: int) -> float | None:
        """Fill one tensor of a batch; return the batch's largest finite ``|x|`` (``None``
        for an empty tensor, which adds nothing)."""
        where = f"tensor {name!r}, batch {index}"
        arr = _as_host_or_device(values)
        if arr.size == 0:
            return None  # an empty tensor (e.g. zero detections) adds nothing
        hist = self._hists.get(name)
        if hist is None:
            # the first batch sets the range: its absmax is needed before the fill
            try:
                a = _fast_absmax(arr)
                if not np.isfinite(a):  # NaN/Inf somewhere: the detailed check (or drop them)
                    a = absmax(arr, nonfinite=self.nonfinite)  # type: ignore[arg-type]
            except NonFiniteError as exc:
                raise NonFiniteError(
                    f"{where}: {exc}", n_nan=exc.n_nan, n_posinf=exc.n_posinf,
                    n_neginf=exc.n_neginf, first_index=exc.first_index, where=where,
                ) from None
            if self.range_policy in ("global", "fixed"):
                assert self.ranges is not None
                if name not in self.ranges:
                    raise HistogramError(
                        f"{where}: no range given for this tensor (range_policy="
                        f"{self.range_policy!r}); add it to ranges="
                    )
                hist = ActivationHistogram(self.ranges[name], self.num_bins, growth=self.growth)
            else:
                hist = ActivationHistogram(a, self.num_bins, growth=self.growth)
            self._hists[name] = hist
            self._absmax[name] = a
        # One pass: the fill grows the range when the histogram's growth allows (pow2/append)
        # and returns the batch's largest finite |x|, exact, for the MinMax method.
        try:
            a = hist.observe(arr, nonfinite=self.nonfinite, where=where)  # type: ignore[arg-type]
        except HistogramRangeError as exc:
            if self.range_policy != "global":
                raise
            raise HistogramRangeError(
                f"{exc}; with range_policy='global' the absmax of the first pass must cover "
                "every batch: recompute it over the same data"
            ) from None
        self._absmax[name] = max(self._absmax[name], a)
        return a

    def alias(self, aliases: Mapping[str, str], order: Iterable[str] | None = None) -> None:
        """Give tensors that rearrange another tensor's values that tensor's histogram.

        For ``Reshape``/``Transpose``/... outputs (see :func:`kldiv.runners.value_aliases`)
        every batch holds the same values as the source, so observing them would produce the
        same counts, range and absmax; this copies them instead.

        Parameters
        ----------
        aliases : mapping of str to str
            Tensor -> the collected tensor whose values it holds. Sources not collected
            (e.g. dropped as non-float) are skipped.
        order : iterable of str, optional
            Network order to list the tensors in afterwards (names not collected ignored).
        """
        for name, source in aliases.items():
            if source in self._hists and name not in self._hists:
                self._hists[name] = self._hists[source].copy()
                self._absmax[name] = self._absmax[source]
        if order is not None:
            ranked = [n for n in dict.fromkeys(order) if n in self._hists]
            listed = set(ranked)
            ranked += [n for n in self._hists if n not in listed]
            self._hists = {n: self._hists[n] for n in ranked}

    # -- merging ---------------------------------------------------------------------------
    def __add__(self, other: object) -> HistogramCollector:
        if not isinstance(other, HistogramCollector):
            return NotImplemented
        if other.num_bins != self.num_bins or other.range_policy != self.range_policy:
            raise HistogramRangeError(
                "cannot merge collectors with different num_bins or range_policy "
                f"({self.num_bins}/{self.range_policy} vs {other.num_bins}/{other.range_policy})"
            )
        out = HistogramCollector(
            self.num_bins, self.range_policy, ranges=self.ranges, nonfinite=self.nonfinite
        )
        out.batches = self.batches + other.batches
        out.meta = dict(self.meta)
        for name in [*self._hists, *(n for n in other._hists if n not in self._hists)]:
            h1, h2 = self._hists.get(name), other._hists.get(name)
            if h1 is None or h2 is None:
                h = (h1 or h2).copy()  # type: ignore[union-attr]
            else:
                h = _merge(h1, h2, self.range_policy, name)
            out._hists[name] = h
            out._absmax[name] = max(self._absmax.get(name, 0.0), other._absmax.get(name, 0.0))
        return out

    # -- files -----------------------------------------------------------------------------
    def save(
        self,
        path: str | os.PathLike[str],
        *,
        meta: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> Path:
        """Write the histograms to a pickle-free ``.npz`` file, atomically.

        Parameters
        ----------
        path : path-like
            Destination (``.npz``).
        meta : mapping, optional
            JSON-serializable extra information (model hash, data fingerprint ...), merged
            over :attr:`meta`.
        force : bool, optional
            Overwrite an existing file.

        Returns
        -------
        pathlib.Path
            The file written.
        """
        if not self._hists:
            raise HistogramError("no histograms to save: observe() some activations first")
        names = list(self._hists)
        bins = np.array([self._hists[n].num_bins for n in names], dtype=np.int64)
        counts = np.zeros((len(names), int(bins.max())), dtype=np.int64)
        for t, n in enumerate(names):
            counts[t, : bins[t]] = self._hists[n].counts
        info = {**self.meta, **(meta or {})}
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            format=np.array(HISTOGRAM_FILE_FORMAT),
            version=np.array(HISTOGRAM_FILE_VERSION, dtype=np.int64),
            names=np.array(names, dtype=str),
            counts=counts,
            amax=np.array([self._hists[n].amax for n in names], dtype=np.float64),
            absmax=np.array([self._absmax[n] for n in names], dtype=np.float64),
            num_bins=bins,
            range_policy=np.array(self.range_policy),
            batches=np.array(self.batches, dtype=np.int64),
            meta=np.array(json.dumps(info, sort_keys=True, default=str)),
        )
        return atomic_write_bytes(path, buf.getvalue(), force=force)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> HistogramCollector:
        """Read a file written by :meth:`save` (``allow_pickle=False``).

        Raises
        ------
        HistogramError
            If the file is missing, not such a file, or inconsistent; the message names it.
        """
        p = Path(path)
        try:
            z = np.load(p, allow_pickle=False)
        except FileNotFoundError:
            raise HistogramError(f"{p}: histogram file not found") from None
        except Exception as exc:
            raise HistogramError(
                f"{p}: not a kldiv histogram file ({exc.__class__.__name__}: {exc}); "
                "write one with kldiv calibrate --save-histograms"
            ) from exc
        with z:
            try:
                fmt = str(z["format"])
                if fmt != HISTOGRAM_FILE_FORMAT:
                    raise ValueError(f"format is {fmt!r}")
                version = int(z["version"])
                if version > HISTOGRAM_FILE_VERSION:
                    raise ValueError(
                        f"version {version} is newer than this kldiv reads "
                        f"({HISTOGRAM_FILE_VERSION}); upgrade kldiv"
                    )
                names = [str(n) for n in z["names"]]
                counts, amax, amx = z["counts"], z["amax"], z["absmax"]
                bins = z["num_bins"]
                policy = str(z["range_policy"])
                batches = int(z["batches"])
                meta = json.loads(str(z["meta"]))
            except KeyError as exc:
                raise HistogramError(f"{p}: missing key {exc} in the histogram file") from None
            except ValueError as exc:
                raise HistogramError(f"{p}: not a readable kldiv histogram file: {exc}") from None
        if not (len(names) == counts.shape[0] == amax.shape[0] == amx.shape[0] == bins.shape[0]):
            raise HistogramError(f"{p}: names, counts, amax and num_bins disagree in length")
        hists: dict[str, ActivationHistogram] = {}
        growth = policy if policy in ("pow2", "append") else "fixed"  # as the collector's
        for t, name in enumerate(names):
            try:
                hists[name] = ActivationHistogram.from_counts(
                    counts[t, : int(bins[t])], float(amax[t]), growth=growth  # type: ignore[arg-type]
                )
            except HistogramError as exc:
                raise HistogramError(f"{p}: tensor {name!r}: {exc}") from None
        policy = policy if policy in RANGE_POLICIES else DEFAULT_RANGE_POLICY
        out = cls(
            int(bins.min()) if len(bins) else NUM_BINS,
            policy,
            ranges={n: h.amax for n, h in hists.items()} if policy in ("global", "fixed") else None,
        )
        out.batches = batches
        out.meta = meta if isinstance(meta, dict) else {}
        out._hists = hists
        out._absmax = {name: float(amx[t]) for t, name in enumerate(names)}
        return out


def _as_host_or_device(values: Any) -> Any:
    """``np.asarray(values)``; CUDA arrays (CuPy, torch CUDA tensors, DLPack) stay on the
    device as a CuPy view (:func:`kldiv.gpu.as_device_array`)."""
    if _is_device_array(values):
        from .gpu import as_device_array

        return as_device_array(values)
    return np.asarray(values)


def _fast_absmax(arr: Any) -> float:
    """``max|x|`` from two SIMD reductions (no ``|x|`` temporary); NaN/Inf propagate."""
    if arr.dtype.kind not in "fiu":
        raise HistogramError(f"activations of dtype {arr.dtype} cannot be histogrammed")
    return float(max(float(arr.max()), -float(arr.min())))


def _merge(
    h1: ActivationHistogram, h2: ActivationHistogram, policy: str, name: str
) -> ActivationHistogram:
    """``h1 + h2``, first growing the narrower one when the policy allows it exactly."""
    if h1.amax != h2.amax and policy in ("pow2", "append"):
        a, b = (h1.copy(), h2) if h1.amax < h2.amax else (h2.copy(), h1)
        a.grow_to(b.amax, policy=policy)  # type: ignore[arg-type]
        if a.amax == b.amax and a.num_bins == b.num_bins:
            return a + b
        raise HistogramRangeError(
            f"tensor {name!r}: shard ranges {h1.amax!r} and {h2.amax!r} do not grow to a "
            f"common range under {policy!r}; collect the shards with range_policy='global' "
            "(same ranges for every shard) to merge them exactly"
        )
    try:
        return h1 + h2
    except HistogramRangeError as exc:
        raise HistogramRangeError(f"tensor {name!r}: {exc}") from None
