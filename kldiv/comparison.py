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
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from .defaults import COMPARE_RTOL, COMPARE_ULP_TOLERANCE, NUM_BINS
from .errors import CacheFormatError
from .scales import CacheHeader, CalibrationTable, bits_to_scale

__all__ = ["AGREEMENT_CLASSES", "ComparisonReport", "TensorComparison", "compare"]

#: Agreement classes in order from best to worst.
AGREEMENT_CLASSES: tuple[str, ...] = ("identical", "ulp", "close", "different", "zero", "nonfinite")


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

    tensors: list[TensorComparison]
    only_in_a: list[str]
    only_in_b: list[str]
    header_a: CacheHeader | None
    header_b: CacheHeader | None
    match: str = "name"
    same_order: bool = True
    options: dict[str, Any] = field(default_factory=dict)

    # -- summary ------------------------------------------------------------------------------
    @property
    def counts(self) -> dict[str, int]:
        """Number of matched tensors per agreement class (every class present, maybe 0)."""
        out = dict.fromkeys(AGREEMENT_CLASSES, 0)
        for t in self.tensors:
            out[t.agreement] += 1
        return out

    @property
    def n_bit_identical(self) -> int:
        """How many matched tensors have bit-identical scales."""
        return sum(t.bit_identical for t in self.tensors)

    @property
    def all_bit_identical(self) -> bool:
        """Same names (under the matching used) and every scale bit-identical."""
        return not self.only_in_a and not self.only_in_b and all(
            t.bit_identical for t in self.tensors
        )

    @property
    def headers_equal(self) -> bool:
        """Whether the two header lines are the same text."""
        ha = self.header_a.text if self.header_a else None
        hb = self.header_b.text if self.header_b else None
        return ha == hb

    def _finite_ratios(self) -> list[TensorComparison]:
        return [t for t in self.tensors if math.isfinite(t.log2_ratio)]

    @property
    def median_ratio(self) -> float:
        """Median of ``amax_b / amax_a`` over tensors where it is finite and non-zero."""
        rs = [t.ratio for t in self._finite_ratios()]
        return statistics.median(rs) if rs else math.nan

    @property
    def worst(self) -> TensorComparison | None:
        """The tensor with the largest ``|log2 ratio|`` (finite ones only)."""
        fin = self._finite_ratios()
        return max(fin, key=lambda t: abs(t.log2_ratio)) if fin else None

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
                                              "log2_ratio": w.log2_ratio},
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
            + (f"; worst: {s['worst']['name']} ratio {s['worst']['ratio']:.6g} "
               f"(log2 {s['worst']['log2_ratio']:+.4f})" if s["worst"] else ""),
        ]
        rows = [t for t in self.tensors if not (only_differences and t.bit_identical)]
        if rows:
            has_bins = any(t.bins is not None for t in rows)
            width = min(60, max(len(t.name) for t in rows))
            head = f"{'tensor':<{width}}  {'amax a':>12}  {'amax b':>12}  {'ratio':>10}  " \
                   f"{'ulps':>8}  {'class':<9}" + ("  bins" if has_bins else "")
            lines += ["", head]
            for t in rows[:max_rows]:
                ulps = "" if t.ulps is None else str(t.ulps)
                row = (f"{t.name[:width]:<{width}}  {t.amax_a:>12.6g}  {t.amax_b:>12.6g}  "
                       f"{t.ratio:>10.6g}  {ulps:>8}  {t.agreement:<9}")
                if has_bins:
                    row += "" if t.bins is None else f"  {t.bins:+.2f}"
                lines.append(row)
            if max_rows is not None and len(rows) > max_rows:
                lines.append(f"... {len(rows) - max_rows} more")
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


def _ulps(bits_a: int, bits_b: int) -> int | None:
    def ordered(bits: int) -> int | None:
        exp = (bits >> 23) & 0xFF
        if exp == 0xFF:
            return None
        return -(bits & 0x7FFFFFFF) if bits & 0x80000000 else bits

    oa, ob = ordered(bits_a), ordered(bits_b)
    return None if oa is None or ob is None else ob - oa


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


def _classify(bits_a: int, bits_b: int, a: float, b: float, ulps: int | None,
              ulp_tolerance: int, rtol: float) -> str:
    if bits_a == bits_b:
        return "identical"
    if not (math.isfinite(a) and math.isfinite(b)):
        return "nonfinite"
    if (a == 0) != (b == 0):
        return "zero"
    if ulps is not None and abs(ulps) <= ulp_tolerance:
        return "ulp"
    if a != 0 and abs(b / a - 1) <= rtol:
        return "close"
    return "different"


def _pairs(a: CalibrationTable, b: CalibrationTable, match: str,
           norm: Callable[[str], str]) -> tuple[list[tuple[str, str]], list[str], list[str], bool]:
    if match == "position":
        na, nb = list(a), list(b)
        n = min(len(na), len(nb))
        return list(zip(na[:n], nb[:n])), na[n:], nb[n:], True
    if match != "name":
        raise CacheFormatError(f"unknown match {match!r}", hint="use match='name' or 'position'")
    ia, ib = _index(a, norm, "a"), _index(b, norm, "b")
    pairs = [(ia[k], ib[k]) for k in ia if k in ib]
    only_a = [ia[k] for k in ia if k not in ib]
    only_b = [ib[k] for k in ib if k not in ia]
    pos_b = {name: i for i, name in enumerate(b)}
    order_b = [pos_b[nb] for _, nb in pairs]
    return pairs, only_a, only_b, order_b == sorted(order_b)


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
    norm = _normalizer(normalize)
    pairs, only_a, only_b, same_order = _pairs(a, b, match, norm)
    tensors = []
    for na, nb in pairs:
        ba, bb = a.bits(na), b.bits(nb)
        xa, xb = a.amax(na), b.amax(nb)
        if xa == 0:
            ratio = 1.0 if xb == 0 else (math.inf if xb > 0 else math.nan)
        elif math.isfinite(xa) or math.isfinite(xb):
            ratio = xb / xa
        else:
            ratio = math.nan
        if ratio > 0 and not math.isnan(ratio):
            log2 = math.log2(ratio) if math.isfinite(ratio) else math.inf
        else:
            log2 = -math.inf if ratio == 0 else math.nan
        ulps = _ulps(ba, bb)
        rng = _range_of(histograms, na, nb)
        bins = None
        if rng is not None and rng[0] > 0 and math.isfinite(xa) and math.isfinite(xb):
            bins = (xa - xb) / (rng[0] / rng[1])
        tensors.append(TensorComparison(
            name=na, name_b=nb, amax_a=xa, amax_b=xb, bits_a=ba, bits_b=bb, ratio=ratio,
            log2_ratio=log2, ulps=ulps, bins=bins,
            agreement=_classify(ba, bb, xa, xb, ulps, ulp_tolerance, rtol),
        ))
    return ComparisonReport(
        tensors=tensors, only_in_a=only_a, only_in_b=only_b, header_a=a.header,
        header_b=b.header, match=match, same_order=same_order,
        options={"ulp_tolerance": ulp_tolerance, "rtol": rtol,
                 "normalize": None if normalize is None else repr(normalize)},
    )

