"""Compare two calibration tables tensor by tensor.

>>> from kldiv.scales import CalibrationTable
>>> a = CalibrationTable.from_amaxes({"x": 1.0, "y": 2.0})
>>> b = CalibrationTable.from_amaxes({"x": 1.0, "y": 2.2, "z": 3.0})
>>> r = compare(a, b)
>>> r.only_in_b, r.counts["identical"], r.counts["close"] + r.counts["different"]
(['z'], 1, 1)

Agreement classes, per matched tensor (first that applies):

``identical``
    the same float32 bits.
``negative``
    either scale has its sign bit set (negative, ``-0`` or ``-inf``): TensorRT cannot use it.
``nonfinite``
    either scale is infinite or NaN (and they are not identical).
``zero``
    exactly one scale is zero.
``ulp``
    within ``ulp_tolerance`` float32 ULPs (rounding-order differences).
``close``
    ``|amax_b / amax_a - 1| <= rtol``.
``different``
    anything else.

The classes are listed best first in :data:`AGREEMENT_CLASSES`; the report's ``worst`` tensor
is one of the worst class present, with the largest ``|log2 ratio|`` in it (NaN counts as
largest). Tables of millions of entries are compared with NumPy, one array per quantity; the
per-tensor :class:`TensorComparison` objects are made only when looked at.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import compress, islice
from typing import Any, overload

import numpy as np

from .defaults import COMPARE_RTOL, COMPARE_ULP_TOLERANCE, NUM_BINS
from .errors import CacheFormatError
from .scales import CacheHeader, CalibrationTable, PackedNames, bits_to_scale

__all__ = ["AGREEMENT_CLASSES", "ComparisonReport", "TensorComparison", "compare"]

#: Agreement classes in order from best to worst.
AGREEMENT_CLASSES: tuple[str, ...] = (
    "identical", "ulp", "close", "different", "zero", "nonfinite", "negative",
)


@dataclass(frozen=True)
class TensorComparison:
    """One tensor present in both tables.

    Attributes
    ----------
    name, name_b : str
        The tensor's name in table ``a`` and in table ``b`` (they differ under normalization or
        ``match="position"``).
    amax_a, amax_b : float
        Thresholds ``scale * 127``.
    bits_a, bits_b : int
        The float32 bit patterns of the scales.
    ratio : float
        ``amax_b / amax_a`` (``nan`` when undefined, ``inf`` when only ``a`` is zero).
    log2_ratio : float
        ``log2(ratio)``.
    ulps : int or None
        Distance in float32 ULPs between the two scales (None when either is not finite).
    bins : float or None
        ``(amax_a - amax_b) / (R / num_bins)``: the difference in histogram bins, when the
        histogram range ``R`` of the tensor is known.
    agreement : str
        One of :data:`AGREEMENT_CLASSES`.
    """

    name: str
    name_b: str
    amax_a: float
    amax_b: float
    bits_a: int
    bits_b: int
    ratio: float
    log2_ratio: float
    ulps: int | None
    bins: float | None
    agreement: str

    @property
    def bit_identical(self) -> bool:
        """Whether both scales have the same float32 bits."""
        return self.bits_a == self.bits_b

    @property
    def scale_a(self) -> float:
        """Table a's scale."""
        return float(bits_to_scale(self.bits_a))

    @property
    def scale_b(self) -> float:
        """Table b's scale."""
        return float(bits_to_scale(self.bits_b))


@dataclass
class ComparisonReport:
    """Result of :func:`compare`.

    Attributes
    ----------
    tensors : list of TensorComparison
        Matched tensors in table ``a``'s order.
    only_in_a, only_in_b : list of str
        Names found in one table only (original spelling).
    header_a, header_b : CacheHeader or None
        The two tables' headers.
    match : str
        ``"name"`` or ``"position"``.
    same_order : bool
        Whether the matched tensors appear in the same relative order in both tables.
    """

    tensors: Sequence[TensorComparison]
    only_in_a: list[str]
    only_in_b: list[str]
    header_a: CacheHeader | None
    header_b: CacheHeader | None
    match: str = "name"
    same_order: bool = True
    options: dict[str, Any] = field(default_factory=dict)

    # -- summary ------------------------------------------------------------------------------
    def _columns(self) -> _Columns:
        if isinstance(self.tensors, _Columns):
            return self.tensors
        return _Columns.from_tensors(list(self.tensors))

    @property
    def counts(self) -> dict[str, int]:
        """Number of matched tensors per agreement class (every class present, maybe 0)."""
        n = np.bincount(self._columns().cls, minlength=len(AGREEMENT_CLASSES))
        return {c: int(k) for c, k in zip(AGREEMENT_CLASSES, n)}

    @property
    def n_bit_identical(self) -> int:
        """How many matched tensors have bit-identical scales."""
        c = self._columns()
        return int(np.count_nonzero(c.bits_a == c.bits_b))

    @property
    def all_bit_identical(self) -> bool:
        """Same names (under the matching used) and every scale bit-identical."""
        return not self.only_in_a and not self.only_in_b and self.n_bit_identical == len(
            self.tensors
        )

    @property
    def headers_equal(self) -> bool:
        """Whether the two header lines are the same text."""
        ha = self.header_a.text if self.header_a else None
        hb = self.header_b.text if self.header_b else None
        return ha == hb

    @property
    def median_ratio(self) -> float:
        """Median of ``amax_b / amax_a`` over tensors where it is finite and non-zero."""
        c = self._columns()
        rs = c.ratio[np.isfinite(c.log2)]
        return float(np.median(rs)) if rs.size else math.nan

    @property
    def worst(self) -> TensorComparison | None:
        """The worst-agreeing tensor that is not bit-identical.

        Of the worst class present (:data:`AGREEMENT_CLASSES` order), the one with the largest
        ``|log2 ratio|`` (NaN counts as largest; the first in table order on ties). None when all
        are identical.
        """
        c = self._columns()
        differ = np.flatnonzero(c.cls > 0)
        if differ.size == 0:
            return None
        worst_cls = c.cls[differ].max()
        cand = differ[c.cls[differ] == worst_cls]
        size = np.abs(c.log2[cand])
        size[np.isnan(size)] = np.inf
        return self.tensors[int(cand[int(np.argmax(size))])]

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary: counts, headers, order, median and worst ratio."""
        w = self.worst
        return {
            "match": self.match,
            "matched": len(self.tensors),
            "only_in_a": len(self.only_in_a),
            "only_in_b": len(self.only_in_b),
            "bit_identical": self.n_bit_identical,
            "all_bit_identical": self.all_bit_identical,
            "same_order": self.same_order,
            "counts": self.counts,
            "median_ratio": self.median_ratio,
            "worst": None if w is None else {"name": w.name, "ratio": w.ratio,
                                              "log2_ratio": w.log2_ratio,
                                              "agreement": w.agreement},
            "header_a": self.header_a.text if self.header_a else None,
            "header_b": self.header_b.text if self.header_b else None,
            "trt_version_a": self.header_a.trt_version if self.header_a else None,
            "trt_version_b": self.header_b.trt_version if self.header_b else None,
            "headers_equal": self.headers_equal,
        }

    def differs(self, on: str = "any") -> bool:
        """Whether differences of kind ``on`` exist (for ``--fail-on``).

        ``on``: ``"any"`` (anything but all-bit-identical with the same names), ``"names"``
        (a name in one table only), ``"bits"`` (a matched scale not bit-identical), ``"ulp"``
        (a class worse than ``ulp``), ``"close"`` (worse than ``close``), ``"header"``.
        """
        worse = {"ulp": AGREEMENT_CLASSES[2:], "close": AGREEMENT_CLASSES[3:]}
        if on == "any":
            return not self.all_bit_identical
        if on == "names":
            return bool(self.only_in_a or self.only_in_b)
        if on == "bits":
            return self.n_bit_identical != len(self.tensors)
        if on in worse:
            return any(t.agreement in worse[on] for t in self.tensors)
        if on == "header":
            return not self.headers_equal
        raise CacheFormatError(f"unknown difference kind {on!r}",
                               hint="use any, names, bits, ulp, close or header")

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready (non-finite floats as strings)."""
        def clean(v: Any) -> Any:
            return v if not isinstance(v, float) or math.isfinite(v) else str(v)

        return {
            "summary": {k: clean(v) for k, v in self.summary().items()},
            "only_in_a": self.only_in_a,
            "only_in_b": self.only_in_b,
            "tensors": [{k: clean(v) for k, v in asdict(t).items()} for t in self.tensors],
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as JSON text."""
        return json.dumps(self.to_dict(), indent=2, default=str) + "\n"

    def to_text(self, *, max_rows: int | None = None, only_differences: bool = False) -> str:
        """A readable report: summary lines, then one row per matched tensor."""
        s = self.summary()
        lines = [
            f"headers: {s['header_a']!r} vs {s['header_b']!r}"
            + ("" if self.headers_equal else "  (differ)"),
            f"TensorRT versions: {s['trt_version_a']} vs {s['trt_version_b']}",
            (f"matched by {self.match}: {s['matched']}; only in a: {s['only_in_a']}; "
            f"only in b: {s['only_in_b']}; same order: {'yes' if self.same_order else 'no'}"),
            f"bit-identical: {s['bit_identical']}/{s['matched']}"
            + ("  (tables identical)" if self.all_bit_identical else ""),
            "agreement: " + ", ".join(f"{k} {v}" for k, v in s["counts"].items()),
            f"median ratio b/a: {s['median_ratio']:.6g}"
            + (f"; worst: {s['worst']['name']} ({s['worst']['agreement']}) ratio "
               f"{s['worst']['ratio']:.6g} (log2 {s['worst']['log2_ratio']:+.4f})"
               if s["worst"] else ""),
        ]
        c = self._columns()
        shown = np.flatnonzero(c.bits_a != c.bits_b) if only_differences else np.arange(
            len(self.tensors)
        )
        n_rows = int(shown.size)
        if max_rows is not None:
            shown = shown[:max_rows]
        rows = [self.tensors[int(i)] for i in shown]
        if rows:
            has_bins = any(t.bins is not None for t in rows)
            width = min(60, max(len(t.name) for t in rows))
            head = f"{'tensor':<{width}}  {'amax a':>12}  {'amax b':>12}  {'ratio':>10}  " \
                   f"{'ulps':>8}  {'class':<9}" + ("  bins" if has_bins else "")
            lines += ["", head]
            for t in rows:
                ulps = "" if t.ulps is None else str(t.ulps)
                row = (f"{t.name[:width]:<{width}}  {t.amax_a:>12.6g}  {t.amax_b:>12.6g}  "
                       f"{t.ratio:>10.6g}  {ulps:>8}  {t.agreement:<9}")
                if has_bins:
                    row += "" if t.bins is None else f"  {t.bins:+.2f}"
                lines.append(row)
            if n_rows > len(rows):
                lines.append(f"... {n_rows - len(rows)} more")
        for label, names in (("only in a", self.only_in_a), ("only in b", self.only_in_b)):
            if names:
                lines += ["", f"{label}:"] + [f"  {n}" for n in names[:max_rows]]
        return "\n".join(lines) + "\n"


def _normalizer(normalize: Callable[[str], str] | Mapping[str, str] | None) -> Callable[[str], str]:
    if normalize is None:
        return lambda s: s
    if callable(normalize):
        return normalize
    pairs = list(normalize.items())

    def replace(s: str) -> str:
        for old, new in pairs:
            s = s.replace(old, new)
        return s

    return replace


def _index(table: CalibrationTable, norm: Callable[[str], str], which: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in table:
        key = norm(name)
        if key in out:
            raise CacheFormatError(
                f"names {out[key]!r} and {name!r} of table {which} both normalize to {key!r}",
                hint="choose a normalization that keeps names apart, or none",
            )
        out[key] = name
    return out


def _range_of(histograms: Any, *names: str) -> tuple[float, int] | None:
    if histograms is None:
        return None
    for n in names:
        try:
            h = histograms[n]
        except (KeyError, IndexError, TypeError):
            continue
        if h is None:
            continue
        if isinstance(h, (int, float)):
            return float(h), NUM_BINS
        return float(h.amax), int(getattr(h, "num_bins", NUM_BINS))
    return None


class _Columns(Sequence[TensorComparison]):
    """The matched tensors as NumPy columns; :class:`TensorComparison` made on access."""

    def __init__(self, names_a: Sequence[str], names_b: Sequence[str], ia: np.ndarray,
                 ib: np.ndarray, bits_a: np.ndarray, bits_b: np.ndarray, *,
                 ulp_tolerance: int, rtol: float, bins: np.ndarray | None = None) -> None:
        self.names_a, self.names_b, self.ia, self.ib = names_a, names_b, ia, ib
        self.bits_a = bits_a.astype(np.uint32)
        self.bits_b = bits_b.astype(np.uint32)
        with np.errstate(all="ignore"):
            self.amax_a = self.bits_a.view(np.float32).astype(np.float64) * 127.0
            self.amax_b = self.bits_b.view(np.float32).astype(np.float64) * 127.0
            xa, xb = self.amax_a, self.amax_b
            ratio = xb / xa
            ratio = np.where(xa == 0, np.where(xb == 0, 1.0, np.where(xb > 0, np.inf, np.nan)),
                             ratio)
            ratio = np.where((xa != 0) & ~np.isfinite(xa) & ~np.isfinite(xb), np.nan, ratio)
            self.ratio = ratio
            log2 = np.full(ratio.shape, np.nan)
            pos = (ratio > 0) & ~np.isnan(ratio)
            log2[pos] = np.log2(ratio[pos])
            log2[ratio == 0] = -np.inf
            self.log2 = log2
        self.ulps, self.ulps_ok = _ulps_array(self.bits_a, self.bits_b)
        self.bins = bins
        self.cls = _classify_array(self.bits_a, self.bits_b, xa, xb, self.ulps, self.ulps_ok,
                                   ulp_tolerance, rtol)

    @classmethod
    def from_tensors(cls, tensors: list[TensorComparison]) -> _Columns:
        ba = np.array([t.bits_a for t in tensors], dtype=np.uint32)
        bb = np.array([t.bits_b for t in tensors], dtype=np.uint32)
        out = cls([t.name for t in tensors], [t.name_b for t in tensors],
                  np.arange(len(tensors)), np.arange(len(tensors)), ba, bb,
                  ulp_tolerance=COMPARE_ULP_TOLERANCE, rtol=COMPARE_RTOL)
        out.cls = np.array([AGREEMENT_CLASSES.index(t.agreement) for t in tensors],
                           dtype=np.int64)
        out.ratio = np.array([t.ratio for t in tensors], dtype=np.float64)
        out.log2 = np.array([t.log2_ratio for t in tensors], dtype=np.float64)
        return out

    def __len__(self) -> int:
        return int(self.ia.size)

    @overload
    def __getitem__(self, i: int) -> TensorComparison: ...

    @overload
    def __getitem__(self, i: slice) -> list[TensorComparison]: ...

    def __getitem__(self, i: int | slice) -> TensorComparison | list[TensorComparison]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError("comparison index out of range")
        bins = None
        if self.bins is not None and not math.isnan(self.bins[i]):
            bins = float(self.bins[i])
        return TensorComparison(
            name=self.names_a[int(self.ia[i])], name_b=self.names_b[int(self.ib[i])],
            amax_a=float(self.amax_a[i]), amax_b=float(self.amax_b[i]),
            bits_a=int(self.bits_a[i]), bits_b=int(self.bits_b[i]), ratio=float(self.ratio[i]),
            log2_ratio=float(self.log2[i]),
            ulps=int(self.ulps[i]) if self.ulps_ok[i] else None, bins=bins,
            agreement=AGREEMENT_CLASSES[int(self.cls[i])],
        )

    def __iter__(self) -> Iterator[TensorComparison]:
        for i in range(len(self)):
            yield self[i]


def _ulps_array(bits_a: np.ndarray, bits_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signed float32 ulps from a to b: ``(distance, defined)``, undefined at Inf/NaN."""
    def ordered(bits: np.ndarray) -> np.ndarray:
        b = bits.astype(np.int64)
        return np.where(b & 0x80000000, -(b & 0x7FFFFFFF), b)

    ok = (((bits_a >> 23) & 0xFF) != 0xFF) & (((bits_b >> 23) & 0xFF) != 0xFF)
    return ordered(bits_b) - ordered(bits_a), ok


def ulps_between(bits_a: int, bits_b: int) -> int | None:
    """Signed float32 ulps from one bit pattern to another (:func:`_ulps_array` of one pair).

    ``None`` when either is Inf or NaN (no distance), ``0`` only for equal values.
    """
    d, ok = _ulps_array(np.array([bits_a], dtype=np.uint32), np.array([bits_b], dtype=np.uint32))
    return int(d[0]) if bool(ok[0]) else None


def _classify_array(bits_a: np.ndarray, bits_b: np.ndarray, a: np.ndarray, b: np.ndarray,
                    ulps: np.ndarray, ulps_ok: np.ndarray, ulp_tolerance: int,
                    rtol: float) -> np.ndarray:
    """Each pair's agreement class (the first that applies), as its AGREEMENT_CLASSES index."""
    code = {c: i for i, c in enumerate(AGREEMENT_CLASSES)}
    out = np.full(a.shape, code["different"], dtype=np.int64)
    with np.errstate(all="ignore"):
        close = (a != 0) & (np.abs(b / a - 1) <= rtol)
    rules = [  # later rules override earlier ones: listed in reverse order of precedence
        (close, "close"),
        (ulps_ok & (np.abs(ulps) <= ulp_tolerance), "ulp"),
        ((a == 0) != (b == 0), "zero"),
        (~(np.isfinite(a) & np.isfinite(b)), "nonfinite"),
        (((bits_a | bits_b) & 0x80000000) != 0, "negative"),
        (bits_a == bits_b, "identical"),
    ]
    for mask, name in rules:
        out[mask] = code[name]
    return out


def _hashes(table: CalibrationTable) -> np.ndarray:
    """Python's hash of every name, in order (names made a block at a time, not kept)."""
    return np.fromiter(map(hash, table), dtype=np.int64, count=len(table))


def _names_at(table: CalibrationTable, positions: np.ndarray) -> list[str]:
    names = table._names
    return [names[int(i)] for i in positions]


def _match_by_hash(a: CalibrationTable, b: CalibrationTable) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(ia, ib)`` of the names both tables hold, in a's order.

    Names are matched by their hash (sorted and searched with NumPy: no dict of millions of
    str), then every matched pair is checked to be the same name.
    """
    ha, hb = _hashes(a), _hashes(b)
    if _has_repeats(ha) or _has_repeats(hb):
        # two names of one table share a hash: match through a dict (exact, slower)
        pos = {name: j for j, name in enumerate(b)}
        pairs = [(i, pos[name]) for i, name in enumerate(a) if name in pos]
        ia = np.array([p[0] for p in pairs], dtype=np.int64)
        ib = np.array([p[1] for p in pairs], dtype=np.int64)
        return ia, ib
    _, ia, ib = np.intersect1d(ha, hb, assume_unique=True, return_indices=True)
    del ha, hb
    order = np.argsort(ia, kind="stable")
    ia, ib = ia[order].astype(np.int64), ib[order].astype(np.int64)
    return _checked(a, b, ia, ib)


def _has_repeats(h: np.ndarray) -> bool:
    s = np.sort(h)
    return bool(s.size > 1 and np.any(s[1:] == s[:-1]))


def _checked(a: CalibrationTable, b: CalibrationTable, ia: np.ndarray,
             ib: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pairs whose names are equal (equal hashes almost always are; this makes sure)."""
    same = np.ones(ia.size, dtype=bool)
    if ia.size and np.all(ib[1:] > ib[:-1]):  # same relative order: both in one pass
        wanted_a = np.zeros(len(a), dtype=bool)
        wanted_a[ia] = True
        wanted_b = np.zeros(len(b), dtype=bool)
        wanted_b[ib] = True
        names_a = compress(a, wanted_a.tolist())
        names_b = compress(b, wanted_b.tolist())
        block = 1 << 16
        for start in range(0, ia.size, block):
            xa = list(islice(names_a, block))
            xb = list(islice(names_b, block))
            if xa != xb:  # compared in C; element by element only when they differ
                same[start : start + len(xa)] = [x == y for x, y in zip(xa, xb)]
    else:
        na, nb = a._names, b._names
        same = np.fromiter((na[int(i)] == nb[int(j)] for i, j in zip(ia, ib)), dtype=bool,
                           count=ia.size)
    return ia[same], ib[same]


def _pairs(a: CalibrationTable, b: CalibrationTable, match: str,
           norm: Callable[[str], str] | None
           ) -> tuple[np.ndarray, np.ndarray, list[str], list[str], bool]:
    """Match the tensors of two tables.

    Returns the matched positions (in a, in b), the names only in a / only in b, and whether
    the matched tensors keep their order in b.
    """
    if match == "position":
        n = min(len(a), len(b))
        na, nb = list(a), list(b)
        return np.arange(n), np.arange(n), na[n:], nb[n:], True
    if match != "name":
        raise CacheFormatError(f"unknown match {match!r}", hint="use match='name' or 'position'")
    if norm is None:
        ia, ib = _match_by_hash(a, b)
        matched_b = np.zeros(len(b), dtype=bool)
        matched_b[ib] = True
        matched_a = np.zeros(len(a), dtype=bool)
        matched_a[ia] = True
        only_a = _names_at(a, np.flatnonzero(~matched_a))
        only_b = _names_at(b, np.flatnonzero(~matched_b))
    else:
        ka, kb = _index(a, norm, "a"), _index(b, norm, "b")
        posa = {name: i for i, name in enumerate(a)}
        posb = {name: j for j, name in enumerate(b)}
        ia = np.array([posa[ka[k]] for k in ka if k in kb], dtype=np.int64)
        ib = np.array([posb[kb[k]] for k in ka if k in kb], dtype=np.int64)
        only_a = [ka[k] for k in ka if k not in kb]
        only_b = [kb[k] for k in kb if k not in ka]
    same_order = bool(np.all(ib[1:] > ib[:-1])) if ib.size > 1 else True
    return ia, ib, only_a, only_b, same_order


def compare(
    a: CalibrationTable,
    b: CalibrationTable,
    *,
    normalize: Callable[[str], str] | Mapping[str, str] | None = None,
    match: str = "name",
    histograms: Mapping[str, Any] | Any | None = None,
    ulp_tolerance: int = COMPARE_ULP_TOLERANCE,
    rtol: float = COMPARE_RTOL,
) -> ComparisonReport:
    """Compare two calibration tables.

    Parameters
    ----------
    a, b : CalibrationTable
        The tables; ratios are ``b / a``.
    normalize : callable or mapping, optional
        Applied to both tables' names before matching by name: a function, or replacements
        such as ``{":": "_"}`` (for caches whose ``:`` were renamed to ``_`` by hand).
    match : {'name', 'position'}, optional
        Pair tensors by (normalized) name, or by position (for files whose keys were renamed,
        like nvdla/sw's ``resnet50.json`` against its cache).
    histograms : mapping, optional
        Per-tensor histogram range: ``name -> R`` (float), or ``name -> histogram`` with
        ``.amax`` (and ``.num_bins``), e.g. a ``HistogramCollector``. Looked up under ``a``'s
        name, then ``b``'s. Gives each tensor's difference in bins,
        ``(amax_a - amax_b) / (R / num_bins)``.
    ulp_tolerance : int, optional
        Largest ULP distance classed ``ulp`` (default ``COMPARE_ULP_TOLERANCE``).
    rtol : float, optional
        Largest relative amax difference classed ``close`` (default ``COMPARE_RTOL``).

    Returns
    -------
    ComparisonReport

    Raises
    ------
    CacheFormatError
        On an unknown ``match`` or a normalization that merges two names of one table.
    """
    norm = None if normalize is None else _normalizer(normalize)
    ia, ib, only_a, only_b, same_order = _pairs(a, b, match, norm)
    # packed names never change (a table changed later unpacks into a new list); a list is
    # copied, so that the report does not change with the table
    names_a: Sequence[str] = a._names if isinstance(a._names, PackedNames) else list(a._names)
    names_b: Sequence[str] = b._names if isinstance(b._names, PackedNames) else list(b._names)
    bits_a = a.bits_array()[ia]
    bits_b = b.bits_array()[ib]
    bins = None
    if histograms is not None:
        with np.errstate(all="ignore"):
            xa = bits_a.view(np.float32).astype(np.float64) * 127.0
            xb = bits_b.view(np.float32).astype(np.float64) * 127.0
        bins = np.full(ia.size, np.nan)
        for k in range(ia.size):
            rng = _range_of(histograms, names_a[int(ia[k])], names_b[int(ib[k])])
            if rng is not None and rng[0] > 0 and math.isfinite(xa[k]) and math.isfinite(xb[k]):
                bins[k] = (xa[k] - xb[k]) / (rng[0] / rng[1])
    columns = _Columns(names_a, names_b, ia, ib, bits_a, bits_b, ulp_tolerance=ulp_tolerance,
                       rtol=rtol, bins=bins)
    return ComparisonReport(
        tensors=columns, only_in_a=only_a, only_in_b=only_b, header_a=a.header,
        header_b=b.header, match=match, same_order=same_order,
        options={"ulp_tolerance": ulp_tolerance, "rtol": rtol,
                 "normalize": None if normalize is None else repr(normalize)},
    )
