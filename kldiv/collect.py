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
import threading
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ._checks import check_num_bins
from ._io import atomic_write_bytes
from .defaults import DEFAULT_RANGE_POLICY, NUM_BINS
from .errors import (
    HistogramError,
    HistogramRangeError,
    InputNotFoundError,
    NonFiniteError,
    NotAFileError,
)
from .graph import FACT_KEYS, GraphFacts
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
HISTOGRAM_FILE_VERSION = 2


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
        self.num_bins = check_num_bins(num_bins)
        self.range_policy = range_policy
        self.ranges = dict(ranges) if ranges is not None else None
        self.nonfinite = nonfinite
        self.batches = 0
        self.meta: dict[str, Any] = {}
        #: What the model's graph says about the collected tensors (saved with the file).
        self.graph = GraphFacts()
        self._hists: dict[str, ActivationHistogram] = {}
        self._absmax: dict[str, float] = {}
        #: Non-finite values skipped per tensor (``nonfinite="drop"``), in first-seen order.
        self.dropped: dict[str, int] = {}

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
        """The growth policy of every histogram this collector builds.

        From :attr:`range_policy`: ``"pow2"``, ``"append"``, else ``"fixed"``.
        """
        return _growth_of(self.range_policy)

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
        The tensors of a batch are filled on :func:`kldiv._kernels.threads` threads at once
        (each histogram by one thread, so every count is that of a one-thread fill); new
        tensors join :attr:`names` in the batch's order. The error raised is that of the
        first failing tensor in the batch's order; the collector then holds a partial batch:
        start over.
        """
        index = self.batches if batch is None else batch
        items = list(activations.items())
        workers = _fill_pool()
        if workers is None or len(items) < 2 or any(_is_device_array(v) for _, v in items):
            for name, values in items:
                self._observe_one(name, values, index)
        else:
            self._observe_in_threads(items, index, workers)
        self.batches += 1

    def _observe_in_threads(
        self, items: list[tuple[str, Any]], index: int, pool: ThreadPoolExecutor
    ) -> None:
        """:meth:`_observe_one` of each item, on this thread and the pool's.

        Largest first: a tensor with more than a thread's share of the batch fills alone,
        its input split over all threads; the others are taken in turn by the threads, each
        filled whole on one (no chunks on top of the threads). After a failure no tensor
        later in the batch is started; the error raised is the earliest in batch order.
        """
        from . import _kernels

        tables: list[dict[str, Any]] = [self._hists, self._absmax, self.dropped]
        before = [set(t) for t in tables]
        failures: dict[int, BaseException] = {}
        sizes = [int(getattr(v, "size", 0)) for _, v in items]
        n_threads = _kernels.threads()
        share = sum(sizes) / n_threads
        order = sorted(range(len(items)), key=lambda k: -sizes[k])
        big = [k for k in order if sizes[k] > share]
        taken = iter([k for k in order if sizes[k] <= share])
        lock = threading.Lock()

        def fill(k: int) -> None:
            if failures and k > min(failures):
                return
            try:
                self._observe_one(items[k][0], items[k][1], index)
            except BaseException as exc:  # noqa: BLE001 - raised below, in batch order
                failures[k] = exc

        def drain() -> None:
            with _kernels.one_thread():
                while True:
                    with lock:
                        k = next(taken, None)
                    if k is None:
                        return
                    fill(k)

        for k in big:
            fill(k)
        helpers = [pool.submit(drain) for _ in range(n_threads - 1)]
        drain()
        for helper in helpers:
            helper.result()
        for table, old in zip(tables, before):  # new tensors in the batch's order
            if len(table) > len(old):
                fresh = {n: table.pop(n) for n, _ in items if n in table and n not in old}
                table.update(fresh)
        if failures:
            raise failures[min(failures)]

    def _observe_one(self, name: str, values: Any, index: int) -> float | None:
        """Fill one tensor of a batch; return the batch's largest finite ``|x|``.

        ``None`` for an empty tensor, which adds nothing.
        """
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
            a, skipped = hist._observe(arr, self.nonfinite, "raise", False, where)
        except HistogramRangeError as exc:
            if self.range_policy != "global":
                raise
            raise HistogramRangeError(
                f"{exc}; with range_policy='global' the absmax of the first pass must cover "
                "every batch: recompute it over the same data"
            ) from None
        self._absmax[name] = max(self._absmax[name], a)
        if self.nonfinite == "drop":  # the fill counted what it skipped: no pass of its own
            self.dropped[name] = self.dropped.get(name, 0) + skipped
        return a

    def alias(self, aliases: Mapping[str, str], order: Iterable[str] | None = None) -> None:
        """Give tensors that rearrange another tensor's values that tensor's histogram.

        For ``Reshape``/``Transpose``/... outputs (see :func:`kldiv.graph.value_aliases`)
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
                if source in self.dropped:
                    self.dropped[name] = self.dropped[source]
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
        out.graph = self.graph if self.graph else other.graph
        for name in [*self._hists, *(n for n in other._hists if n not in self._hists)]:
            h1, h2 = self._hists.get(name), other._hists.get(name)
            if h1 is None or h2 is None:
                h = (h1 or h2).copy()  # type: ignore[union-attr]
            else:
                h = _merge(h1, h2, self.range_policy, name)
            out._hists[name] = h
            out._absmax[name] = max(self._absmax.get(name, 0.0), other._absmax.get(name, 0.0))
            if name in self.dropped or name in other.dropped:
                out.dropped[name] = self.dropped.get(name, 0) + other.dropped.get(name, 0)
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

        Notes
        -----
        The file (version 2) holds ``format``, ``version``, ``names`` (str, unique),
        ``counts`` (int64, one zero-padded row per tensor), ``amax`` (each histogram's range),
        ``absmax`` (the largest finite ``|x|`` seen: what ``method="minmax"`` uses),
        ``num_bins``, ``dropped`` (non-finite values skipped per tensor), ``range_policy``,
        ``batches`` and ``meta`` (JSON; the graph facts, :attr:`graph`, are stored in it under
        ``activation_bounds``, ``scale_sources`` and ``value_aliases``). Version 1 files lack
        ``dropped``.
        """
        if not self._hists:
            raise HistogramError("no histograms to save: observe() some activations first")
        names = list(self._hists)
        bins = np.array([self._hists[n].num_bins for n in names], dtype=np.int64)
        counts = np.zeros((len(names), int(bins.max())), dtype=np.int64)
        for t, n in enumerate(names):
            counts[t, : bins[t]] = self._hists[n].counts
        info = {**self.meta, **self.graph.to_dict(), **(meta or {})}
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
            dropped=np.array([self.dropped.get(n, 0) for n in names], dtype=np.int64),
            range_policy=np.array(self.range_policy),
            batches=np.array(self.batches, dtype=np.int64),
            meta=np.array(json.dumps(info, sort_keys=True, default=str)),
        )
        return atomic_write_bytes(path, buf.getvalue(), force=force)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> HistogramCollector:
        """Read a file written by :meth:`save` (``allow_pickle=False``), checking every array.

        Files of version 1 and 2 are read. A file without ``absmax`` (the largest ``|x|``)
        is read with each histogram's range in its place, with a warning (``minmax`` then
        gives an upper bound); :attr:`meta` ``["absmax_from_range"]`` says so.

        Raises
        ------
        InputNotFoundError, NotAFileError
            If there is no such file, or the path is a folder.
        HistogramError
            If the file is not a kldiv histogram file, comes from an unknown format version,
            or holds inconsistent arrays (duplicate names, negative counts, counts beyond
            the bins of an all-zero tensor, wrong dtypes or shapes); the message names the
            file and the tensor.
        """
        p, z = _open_histogram_archive(path)
        with z:
            return cls._from_archive(z, p)

    @classmethod
    def _from_archive(cls, z: Any, p: Path) -> HistogramCollector:
        """:meth:`load` of an archive :func:`_open_histogram_archive` opened."""
        return cls._from_arrays(_read_arrays(z, p), p)

    @classmethod
    def _from_arrays(cls, a: dict[str, Any], p: Path) -> HistogramCollector:
        names: list[str] = a["names"]
        counts, amax, bins = a["counts"], a["amax"], a["num_bins"]
        hists: dict[str, ActivationHistogram] = {}
        policy = a["range_policy"]
        growth = _growth_of(policy)
        for t, name in enumerate(names):
            row = counts[t]
            n = int(bins[t])
            if np.any(row[n:]):
                raise HistogramError(
                    f"{p}: tensor {name!r}: counts beyond its {n} bins; the file is damaged, "
                    "save the histograms again"
                )
            if amax[t] == 0 and np.any(row[1:n]):
                raise HistogramError(
                    f"{p}: tensor {name!r}: range amax 0 (an all-zero tensor) but counts above "
                    "bin 0; the file is damaged, save the histograms again"
                )
            try:
                hists[name] = ActivationHistogram.from_counts(
                    row[:n], float(amax[t]), growth=growth
                )
            except HistogramError as exc:
                raise HistogramError(f"{p}: tensor {name!r}: {exc}") from None
        policy = policy if policy in RANGE_POLICIES else DEFAULT_RANGE_POLICY
        out = cls(
            int(bins.min()) if len(bins) else NUM_BINS,
            policy,
            ranges={n: h.amax for n, h in hists.items()} if policy in ("global", "fixed") else None,
        )
        out.batches = a["batches"]
        out.meta = dict(a["meta"])
        facts = {k: out.meta.pop(k) for k in FACT_KEYS if k in out.meta}
        out.graph = GraphFacts.from_dict(facts, where=f"{p}: meta")
        out._hists = hists
        absmax = a["absmax"]
        if absmax is None:
            log.warning(
                "%s: the file does not record the largest |x| of each tensor (an older "
                "format); minmax uses each histogram's range instead, an upper bound", p,
            )
            out.meta["absmax_from_range"] = True
            out._absmax = {name: float(amax[t]) for t, name in enumerate(names)}
        else:
            out._absmax = {name: float(absmax[t]) for t, name in enumerate(names)}
        dropped = a["dropped"]
        if dropped is not None:
            out.dropped = {n: int(dropped[t]) for t, n in enumerate(names) if dropped[t]}
        return out


_REQUIRED_KEYS = ("format", "version", "names", "counts", "amax", "num_bins")


def _open_histogram_archive(path: str | os.PathLike[str]) -> tuple[Path, Any]:
    """The path and the open ``.npz`` archive of a histogram file (``allow_pickle=False``).

    The caller closes it (``with``); :meth:`HistogramCollector.load` reads it.

    Raises
    ------
    InputNotFoundError, NotAFileError
        If there is no such file, or the path is a folder.
    HistogramError
        If NumPy cannot read it, or it is a single array rather than an archive.
    """
    p = Path(path)
    if p.is_dir():
        raise NotAFileError(
            f"{p} is a folder, not a histogram file; give the .npz written by "
            "kldiv calibrate --save-histograms", path=str(p),
        )
    if not p.exists():
        raise InputNotFoundError(
            f"{p}: histogram file not found; write one with kldiv calibrate "
            "--save-histograms H.npz", path=str(p),
        )
    try:
        z = np.load(p, allow_pickle=False)
    except Exception as exc:
        raise HistogramError(
            f"{p}: not a kldiv histogram file ({exc.__class__.__name__}: {exc}); "
            "write one with kldiv calibrate --save-histograms"
        ) from exc
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise HistogramError(
            f"{p}: a single NumPy array, not a kldiv histogram file (an .npz archive); "
            "write one with kldiv calibrate --save-histograms"
        )
    return p, z


def _read_arrays(z: Any, p: Path) -> dict[str, Any]:
    """The arrays of an open histogram archive, each checked for dtype and shape."""
    def bad(what: str) -> HistogramError:
        return HistogramError(
            f"{p}: {what}; this is not a histogram file kldiv wrote, or it is damaged "
            "(write one with kldiv calibrate --save-histograms)"
        )

    def get(key: str) -> np.ndarray:
        try:
            return np.asarray(z[key])
        except ValueError as exc:  # e.g. an object array, refused without pickle
            raise bad(f"array {key!r} cannot be read ({exc})") from None

    files = set(z.files)
    if "format" not in files or str(get("format")) != HISTOGRAM_FILE_FORMAT:
        raise bad(f"no format={HISTOGRAM_FILE_FORMAT!r} entry (it holds "
                  f"{', '.join(sorted(files)) or 'nothing'})")
    missing = [k for k in _REQUIRED_KEYS if k not in files]
    if missing:
        raise bad(f"no {', '.join(repr(k) for k in missing)} array in the archive")
    version_arr = get("version")
    if version_arr.shape != () or version_arr.dtype.kind not in "iu":
        raise bad(f"version is {version_arr!r}, not a whole number")
    version = int(version_arr)
    if version > HISTOGRAM_FILE_VERSION:
        raise HistogramError(
            f"{p}: histogram file version {version} is newer than this kldiv reads "
            f"(1 to {HISTOGRAM_FILE_VERSION}); upgrade kldiv"
        )
    if version < 1:
        raise bad(f"unknown histogram file version {version}")
    names_arr = get("names")
    if names_arr.ndim != 1 or names_arr.dtype.kind != "U":
        raise bad(f"names must be a 1-D array of str, got {names_arr.dtype} of shape "
                  f"{names_arr.shape}")
    names = [str(n) for n in names_arr]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise bad(f"tensor {name!r} appears twice in names")
        seen.add(name)
    n = len(names)
    counts = get("counts")
    if counts.ndim != 2 or counts.shape[0] != n or counts.dtype.kind not in "iu":
        raise bad(f"counts must be an integer array of {n} rows (one per name), got "
                  f"{counts.dtype} of shape {counts.shape}")
    out: dict[str, Any] = {"names": names, "counts": counts}
    for key, kind in (("amax", "f"), ("num_bins", "iu"), ("absmax", "f"), ("dropped", "iu")):
        if key not in files:
            out[key] = None
            continue
        arr = get(key)
        if arr.shape != (n,) or arr.dtype.kind not in kind:
            want = "float" if kind == "f" else "integer"
            raise bad(f"{key} must be a 1-D {want} array of {n} values (one per name), got "
                      f"{arr.dtype} of shape {arr.shape}")
        out[key] = arr
    for key in ("amax", "absmax"):
        arr = out[key]
        if arr is not None:
            wrong = np.flatnonzero(~(np.isfinite(arr) & (arr >= 0)))
            if wrong.size:
                raise bad(f"tensor {names[wrong[0]]!r}: {key} {float(arr[wrong[0]])!r} is not a "
                          "finite number >= 0")
    bins = out["num_bins"]
    wrong = np.flatnonzero((bins < 1) | (bins > counts.shape[1]))
    if wrong.size:
        raise bad(f"tensor {names[wrong[0]]!r}: num_bins {int(bins[wrong[0]])} is outside "
                  f"1..{counts.shape[1]} (the width of counts)")
    if out["dropped"] is not None and np.any(out["dropped"] < 0):
        raise bad("dropped holds a negative count")
    policy = str(get("range_policy")) if "range_policy" in files else DEFAULT_RANGE_POLICY
    out["range_policy"] = policy
    out["batches"] = int(get("batches")) if "batches" in files else 0
    meta: Any = {}
    if "meta" in files:
        try:
            meta = json.loads(str(get("meta")))
        except json.JSONDecodeError as exc:
            raise bad(f"meta is not JSON ({exc.msg})") from None
    out["meta"] = meta if isinstance(meta, dict) else {}
    return out


def _fill_pool() -> ThreadPoolExecutor | None:
    """The threads that fill a batch's tensors beside the calling one (``None`` on one CPU)."""
    from . import _kernels

    return _kernels.pool() if _kernels.threads() > 1 else None


def _as_host_or_device(values: Any) -> Any:
    """``np.asarray(values)``, except for CUDA arrays.

    CUDA arrays (CuPy, torch CUDA tensors, DLPack) stay on the device as a CuPy view
    (:func:`kldiv.gpu.as_device_array`).
    """
    if _is_device_array(values):
        from .gpu import as_device_array

        return as_device_array(values)
    return np.asarray(values)


def _growth_of(range_policy: str) -> GrowthPolicy:
    """The histograms' growth under a range policy: ``"pow2"``, ``"append"``, else ``"fixed"``."""
    if range_policy == "pow2":
        return "pow2"
    if range_policy == "append":
        return "append"
    return "fixed"


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
