"""Explain one tensor's scale: how the search chose it, and which options reproduce another.

:func:`explain_scale` tells the story of one histogram the way a person checks it by hand:

1. the histogram (range ``R``, bins, values, exact zeros);
2. the search under a preset: the winning candidate ``i``, ``T = (i + offset) * R / bins``,
   the scale and its hex, the divergence at the minimum and the share of values the threshold
   clips (:func:`kldiv.scales.clipped_fraction`);
3. the other presets' choices on the same histogram;
4. given a value from elsewhere (a TensorRT cache, another table): where it falls on this
   histogram (:func:`place_value`: bin position, whether it is bit-exactly a candidate), the
   divergence there, and **which option values of the search reproduce it**
   (:func:`reproduce`): every field of :data:`SEARCH_SPACE` is changed, alone and then
   together, and the smallest set of changes (fewest fields) whose threshold lands on the given
   one is reported, or that none of them does.

A variant *reproduces* a value when its threshold lies within
:data:`~kldiv.defaults.EXPLAIN_MATCH_BINS` bins of it: TensorRT's thresholds sit on bin centres
``(i + 0.5) * w`` one bin apart, so a quarter bin separates "the same bin" from every other,
and a rule that places thresholds on bin edges (``threshold_offset=0``) never passes for one
that places them on centres. "Bit-exact" is said separately.

Examples
--------
>>> import numpy as np
>>> from kldiv.histogram import ActivationHistogram
>>> from kldiv.scales import amax_to_scale
>>> rng = np.random.default_rng(0)
>>> h = ActivationHistogram.from_values(rng.laplace(size=20_000))
>>> gtc = explain_scale(h, preset="gtc2017").result            # the slide's reading
>>> e = explain_scale(h, preset="tensorrt", value=amax_to_scale(gtc.amax), value_label="slide")
>>> [v.changes for v in e.smallest]                      # doctest: +SKIP
[{'grouping': 'floor'}]
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .defaults import DEFAULT_EXPLAIN_MAX_CHANGES, DEFAULT_PRESET, EXPLAIN_MATCH_BINS
from .entropy import (
    PRESETS,
    EntropyOptions,
    candidate_bins,
    divergence_curve,
    histogram_counts,
    kernel_divergence_curve,
    pick_kernel_minimum,
    pick_minimum,
    resolve_options,
    search_threshold,
    threshold_from_bin,
)
from .errors import HistogramError, PresetError
from .scales import (
    ThresholdResult,
    amax_to_scale,
    clipped_fraction,
    scale_to_bits,
    scale_to_hex,
)

__all__ = [
    "SEARCH_SPACE",
    "Explanation",
    "PlacedValue",
    "Variant",
    "abs_presets",
    "explain_scale",
    "find_tensor",
    "load_histograms",
    "load_tables",
    "place_value",
    "reproduce",
]

logger = logging.getLogger(__name__)

_CHOICES: dict[str, tuple[Any, ...]] = {
    "zeros": ("keep", "bin1", "drop"),
    "min_nonempty_bins": (1, 2),
    "grouping": ("proportional", "floor"),
    "empty": ("histogram", "p"),
    "smoothing": ("none", "eps"),
    "empty_q": ("inf", "nan"),
    "include_last": (True, False),
    "ties": ("first", "last"),
    "tie_tolerance": (0.0, 1e-12),
    "threshold_offset": (0.5, 0.0),
}

#: The option values :func:`reproduce` tries, per field of :class:`~kldiv.entropy.EntropyOptions`
#: (algorithm.md §3): every choice seen in a public implementation, or that the real caches
#: leave open. Fields that change the divergence curve come first.
SEARCH_SPACE: Mapping[str, tuple[Any, ...]] = {
    k: v for k, v in _CHOICES.items() if k in {f.name for f in dataclasses.fields(EntropyOptions)}
}

# Fields whose value changes the divergence curve (the rest only choose among its candidates
# or turn the winner into a threshold). A field of EntropyOptions in neither set makes
# reproduce() run every variant through search_threshold itself.
_CURVE_FIELDS = frozenset(
    {"domain", "num_levels", "zeros", "min_nonempty_bins", "start_bin", "stride", "grouping",
     "empty", "smoothing", "smoothing_eps", "empty_q", "log_base"}
)
_PICK_FIELDS = frozenset(
    {"stop_bin", "include_last", "ties", "tie_tolerance", "threshold_offset", "divisor"}
)


def load_histograms(path: str | os.PathLike[str]) -> Any:
    """Read a histogram file (``kldiv calibrate --save-histograms``) for explaining.

    Returns
    -------
    kldiv.collect.HistogramCollector

    Raises
    ------
    HistogramError
        The file is missing or not a histogram file, or its histograms have no range (no
        ``amax`` array: thresholds cannot be placed on a value axis without one).
    """
    from .collect import HistogramCollector, _open_histogram_archive

    p = Path(path)
    if not p.is_file():
        raise HistogramError(f"{p}: histogram file not found; write one with kldiv calibrate "
                             "MODEL --data DATA --save-histograms FILE.npz")
    p, z = _open_histogram_archive(p)
    with z:  # opened once: the range check and the arrays read from the same archive
        if "counts" in z.files and "amax" not in z.files:
            raise HistogramError(
                f"{p}: the histograms have no range (the file holds counts but no 'amax' "
                "array): without each tensor's range R no bin maps to a value; save histograms "
                "with kldiv calibrate --save-histograms, or HistogramCollector.save()"
            )
        return HistogramCollector._from_archive(z, p)


def find_tensor(names: Sequence[str], name: str, where: str) -> str:
    """``name`` if it is in ``names``; else a :class:`HistogramError` suggesting close names."""
    if name in names:
        return name
    close = difflib.get_close_matches(name, list(names), n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(map(repr, close))}?" if close else (
        f"it holds {len(names)} tensors, e.g. {', '.join(map(repr, list(names)[:3]))}"
    )
    raise HistogramError(f"no tensor {name!r} in {where}; {hint}")


def load_tables(
    paths: Sequence[str | os.PathLike[str]],
    names: Sequence[str],
    *,
    trt_cache: bool = True,
) -> dict[str, Any]:
    """Read calibration tables and check that each shares tensors with the histograms.

    Parameters
    ----------
    paths : sequence of path-like
        The files.
    names : sequence of str
        The histograms' tensor names.
    trt_cache : bool, optional
        Read TensorRT caches (:func:`~kldiv.cachefile.read_cache`) or any table kldiv reads
        (:func:`~kldiv.exports.read_table`).

    Returns
    -------
    dict of str to CalibrationTable
        Keyed by a label (the file name, made unique).

    Raises
    ------
    CacheFormatError
        A file that is not a table, or one with no tensor in common with the histograms.
    """
    from .cachefile import read_cache
    from .errors import CacheFormatError
    from .exports import read_table

    out: dict[str, Any] = {}
    known = set(names)
    for path in paths:
        p = Path(path)
        if not p.exists():
            raise CacheFormatError("no such file", path=str(p),
                                   hint="check the path of --cache / --table")
        table = read_cache(p) if trt_cache else read_table(p)
        if not any(n in known for n in table):
            raise CacheFormatError(
                f"no tensor in common with the histograms ({len(table)} entries, e.g. "
                f"{', '.join(map(repr, list(table)[:3]))}; the histograms hold "
                f"{', '.join(map(repr, list(names)[:3]))} ...)",
                path=str(p),
                hint="give the cache made for this model, or histograms collected from it",
            )
        label = p.name
        k = 2
        while label in out:
            label = f"{p.name} ({k})"
            k += 1
        out[label] = table
    return out


def abs_presets() -> list[str]:
    """Names of the presets that search a histogram of ``|x|`` (every one but the signed)."""
    return [name for name, opts in PRESETS.items() if opts.domain == "abs"]


@dataclass(frozen=True)
class PlacedValue:
    """A threshold from elsewhere (a cache entry) placed on a histogram.

    Attributes
    ----------
    label : str
        Where the value comes from (a file name).
    scale : float
        The float32 scale.
    scale_hex : str
        Its hex, as a cache holds it.
    amax : float
        ``scale * divisor``.
    position : float
        ``amax / w`` with ``w = R / bins``: where the threshold sits, in bins.
    bin_index : int or None
        The candidate ``i`` whose bin centre ``(i + 0.5) * w`` is nearest, when it lies
        within :data:`~kldiv.defaults.EXPLAIN_MATCH_BINS` bins (``None`` otherwise: the value
        was not chosen on this histogram's grid, e.g. its histogram had another range).
    exact : bool
        Whether ``bin_index`` gives this very float32 scale (``f32(f32((i + 0.5) w) / 127)``).
    clipped_share : float
        Share of this histogram's values above the value.
    """

    label: str
    scale: float
    scale_hex: str
    amax: float
    position: float
    bin_index: int | None
    exact: bool
    clipped_share: float


def place_value(
    counts: np.ndarray,
    amax: float,
    scale: float | np.floating[Any],
    *,
    label: str = "value",
    options: EntropyOptions | None = None,
) -> PlacedValue:
    """Place a stored scale on a histogram of ``|x|`` over ``[0, amax]``.

    Parameters
    ----------
    counts : numpy.ndarray
        The histogram's counts.
    amax : float
        Its range ``R``.
    scale : float
        The float32 scale (as read from a cache).
    label : str, optional
        Where the scale comes from.
    options : EntropyOptions, optional
        Divisor and offset of the rule that would have made it (default: the ``tensorrt``
        preset's).

    Returns
    -------
    PlacedValue
    """
    opts = options if options is not None else PRESETS[DEFAULT_PRESET]
    s = np.float32(scale)
    value = float(s) * float(opts.divisor)
    n = int(np.asarray(counts).size)
    width = amax / n if amax > 0 else math.nan
    position = value / width if amax > 0 and math.isfinite(value) else math.nan
    bin_index: int | None = None
    exact = False
    if math.isfinite(position):
        nearest = int(round(position - opts.threshold_offset))
        if abs(position - (nearest + opts.threshold_offset)) <= EXPLAIN_MATCH_BINS and nearest >= 0:
            bin_index = nearest
            made = amax_to_scale(threshold_from_bin(nearest, n, amax, opts), divisor=opts.divisor)
            exact = scale_to_bits(made) == scale_to_bits(s)
    return PlacedValue(
        label=label,
        scale=float(s),
        scale_hex=scale_to_hex(s),
        amax=value,
        position=position,
        bin_index=bin_index,
        exact=exact,
        clipped_share=clipped_fraction(counts, amax, value) if math.isfinite(value) else 0.0,
    )


@dataclass(frozen=True)
class Variant:
    """One variant of the search: the base options with ``changes`` applied.

    Attributes
    ----------
    changes : dict
        Field -> value, relative to the base preset (empty: the preset itself).
    bin_index : int or None
        The winning candidate.
    amax : float
        The threshold.
    scale_hex : str
        Its scale's hex.
    distance : float
        ``|threshold - target| / w`` in bins (NaN without a target).
    matches : bool
        ``distance <= EXPLAIN_MATCH_BINS``.
    exact : bool
        The same float32 scale as the target.
    """

    changes: dict[str, Any]
    bin_index: int | None
    amax: float
    scale_hex: str
    distance: float = math.nan
    matches: bool = False
    exact: bool = False

    def describe(self) -> str:
        """``'zeros=keep, ties=first'`` (or ``'(the preset itself)'``)."""
        if not self.changes:
            return "(the preset itself)"
        return ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
                         for k, v in self.changes.items())


class _Searcher:
    """Runs many variants of the search on one histogram.

    Each distinct divergence curve is computed once; the winner is picked as
    :func:`kldiv.entropy.kernel_search` picks it.
    """

    def __init__(self, counts: np.ndarray, amax: float) -> None:
        from . import _kernels

        self.counts = counts
        self.amax = amax
        self.kernels = _kernels.resolve()  # None: the NumPy reference, as search_threshold
        known = _CURVE_FIELDS | _PICK_FIELDS
        self.direct = any(f.name not in known for f in dataclasses.fields(EntropyOptions))
        self._curves: dict[tuple[Any, ...], tuple[np.ndarray, np.ndarray]] = {}

    def _curve(self, opts: EntropyOptions) -> tuple[np.ndarray, np.ndarray]:
        base = opts.replace(stop_bin=None, include_last=True, ties="first", tie_tolerance=0.0,
                            threshold_offset=0.5)
        if base.smoothing == "eps":
            # smoothing makes an all-empty Q infinite before empty_q is looked at
            # (kldiv.entropy.kl_divergence): one curve serves both values
            base = base.replace(empty_q="inf")
        key = dataclasses.astuple(base)
        if key not in self._curves:
            if self.kernels is not None:
                self._curves[key] = kernel_divergence_curve(self.counts, base, self.kernels)
            else:
                self._curves[key] = divergence_curve(self.counts, base)
        cands, div = self._curves[key]
        last = int(candidate_bins(self.counts.size, opts)[-1])
        keep = cands <= last
        return cands[keep], div[keep]

    def _pick(self, cands: np.ndarray, div: np.ndarray, opts: EntropyOptions) -> int:
        if self.kernels is None:
            return pick_minimum(div, opts)
        return pick_kernel_minimum(self.counts, cands, div, opts)

    def run(self, opts: EntropyOptions) -> tuple[int | None, float]:
        """``(bin, threshold)`` of the search under ``opts``."""
        if self.amax == 0.0:
            return None, 0.0
        if self.direct:
            from .entropy import _Counts

            r = search_threshold(_Counts(self.counts, self.amax), opts)
            return r.bin_index, r.amax
        cands, div = self._curve(opts)
        m = int(cands[self._pick(cands, div, opts)])
        return m, threshold_from_bin(m, self.counts.size, self.amax, opts)


def _variant_options(
    base: EntropyOptions, changes: Mapping[str, Any], exhaustive: bool
) -> EntropyOptions | None:
    try:
        opts = base.replace(**changes)
    except PresetError:
        return None
    if not exhaustive and _reference_only(opts) and not _reference_only(base):
        return None
    return opts


def _reference_only(opts: EntropyOptions) -> bool:
    """Smoothing with emptiness judged on the raw histogram.

    No tool uses the pair (MXNet and onnxruntime judge it on P), and only the NumPy reference
    computes it (~0.1 s a curve).
    """
    return opts.smoothing != "none" and opts.empty != "p"


def reproduce(
    hist: Any,
    target_amax: float,
    *,
    preset: str | EntropyOptions = DEFAULT_PRESET,
    max_changes: int = DEFAULT_EXPLAIN_MAX_CHANGES,
    target_scale: float | np.floating[Any] | None = None,
    space: Mapping[str, Sequence[Any]] | None = None,
    exhaustive: bool = False,
) -> tuple[list[Variant], list[Variant], int]:
    """Which option values of the search reproduce a threshold.

    Starting from ``preset``, every field of ``space`` (default :data:`SEARCH_SPACE`) is
    changed to each of its other values, one field at a time, then two, ... up to
    ``max_changes`` fields together; the search stops at the first number of fields where some
    variant's threshold lies within :data:`~kldiv.defaults.EXPLAIN_MATCH_BINS` bins of
    ``target_amax``.

    Parameters
    ----------
    hist : ActivationHistogram or object with ``.counts`` and ``.amax``
        The histogram of ``|x|``.
    target_amax : float
        The threshold to reproduce (a cache's ``scale * 127``).
    preset : str or EntropyOptions, default DEFAULT_PRESET
        The options changes are counted from.
    max_changes : int, default DEFAULT_EXPLAIN_MAX_CHANGES
        Most fields changed together.
    target_scale : float, optional
        The target's float32 scale, to say which variants give it bit for bit.
    space : mapping, optional
        Field -> values to try (default :data:`SEARCH_SPACE`); unknown fields raise.
    exhaustive : bool, optional
        Also try ε-smoothing with emptiness judged on the raw histogram (``smoothing='eps'``
        with ``empty='histogram'``). By default smoothing is tried as the tools that smooth use
        it, with ``empty='p'`` (so it counts as two changed fields from a preset that judges
        emptiness on the histogram): the other pair is used by no tool, and only the slow NumPy
        reference computes it (about 0.1 s per curve, up to a dozen curves).

    Returns
    -------
    single : list of Variant
        The preset itself, then every one-field change (whether or not it matches).
    smallest : list of Variant
        Every variant with the fewest changed fields that matches (empty when none within
        ``max_changes`` does).
    tried : int
        How many distinct variants were searched.

    Raises
    ------
    PresetError
        Unknown preset or field.
    HistogramError
        Invalid histogram, or one searched on a signed preset.
    """
    base = resolve_options(preset)
    if base.domain != "abs":
        raise PresetError(
            f"reproduce() works on histograms of |x|; preset {preset!r} searches a signed one"
        )
    valid = [f.name for f in dataclasses.fields(EntropyOptions)]
    given = dict(SEARCH_SPACE if space is None else space)
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise PresetError(
            f"unknown option(s) {', '.join(map(repr, unknown))} in the search space; valid "
            f"options are: {', '.join(valid)}"
        )
    space = {k: tuple(v) for k, v in given.items()}
    counts, amax = histogram_counts(hist)
    if counts.sum() == 0:
        raise HistogramError("the histogram is empty (all counts are 0); nothing to reproduce")
    width = amax / counts.size if amax > 0 else math.nan
    target_bits = None if target_scale is None else scale_to_bits(target_scale)
    searcher = _Searcher(counts, amax)
    seen: dict[tuple[Any, ...], Variant] = {}

    def evaluate(changes: dict[str, Any]) -> Variant | None:
        opts = _variant_options(base, changes, exhaustive)
        if opts is None:
            return None
        key = dataclasses.astuple(opts)
        if key in seen:
            prior = seen[key]
            return dataclasses.replace(prior, changes=changes)
        try:
            m, t = searcher.run(opts)
        except (PresetError, HistogramError):  # e.g. floor grouping below num_levels
            return None
        distance = abs(t - target_amax) / width if width > 0 else math.nan
        s = amax_to_scale(t, divisor=opts.divisor)
        v = Variant(
            changes=changes,
            bin_index=m,
            amax=t,
            scale_hex=scale_to_hex(s),
            distance=distance,
            matches=bool(distance <= EXPLAIN_MATCH_BINS),
            exact=target_bits is not None and scale_to_bits(s) == target_bits,
        )
        seen[key] = v
        return v

    fields = [k for k in space if any(val != getattr(base, k) for val in space[k])]
    preset_itself = evaluate({})
    single: list[Variant] = [preset_itself] if preset_itself is not None else []
    for k in fields:
        for val in space[k]:
            if val != getattr(base, k):
                v = evaluate({k: val})
                if v is not None:
                    single.append(v)
    smallest: list[Variant] = [v for v in single[:1] if v.matches]
    if not smallest:
        smallest = [v for v in single[1:] if v.matches]
    size = 2
    while not smallest and size <= max_changes:
        for combo in itertools.combinations(fields, size):
            alternatives = [[val for val in space[k] if val != getattr(base, k)] for k in combo]
            for values in itertools.product(*alternatives):
                v = evaluate(dict(zip(combo, values)))
                if v is not None and v.matches:
                    smallest.append(v)
        size += 1
    return single, smallest, len(seen)


@dataclass
class Explanation:
    """The story of one tensor's threshold; see :func:`explain_scale`.

    Attributes
    ----------
    name : str
        The tensor.
    preset : str
        The preset searched.
    result : ThresholdResult
        The search under ``preset``.
    presets : dict of str to ThresholdResult
        Every preset of ``|x|`` histograms on the same histogram.
    clipped_share : float
        Share of values above the chosen threshold.
    value : PlacedValue or None
        The given value placed on the histogram.
    kl_at_value : float or None
        The divergence of the preset's curve at the value's bin (when it is a candidate).
    single : list of Variant
        The preset and every one-field change of it (with ``value``).
    smallest : list of Variant
        The smallest changes that reproduce ``value`` (empty: none up to ``max_changes``).
    max_changes : int
        How many fields were changed together at most.
    tried : int
        Variants searched.
    notes : list of str
        What else the data says (e.g. the value is another tensor's).
    """

    name: str
    preset: str
    histogram: Any
    result: ThresholdResult
    presets: dict[str, ThresholdResult]
    clipped_share: float
    value: PlacedValue | None = None
    kl_at_value: float | None = None
    single: list[Variant] = field(default_factory=list)
    smallest: list[Variant] = field(default_factory=list)
    max_changes: int = DEFAULT_EXPLAIN_MAX_CHANGES
    tried: int = 0
    notes: list[str] = field(default_factory=list)
    exhaustive: bool = False

    # ------------------------------------------------------------------ text
    def to_text(self) -> str:
        """The story as terminal text."""
        h = self.histogram
        counts = np.asarray(h.counts)
        total = int(counts.sum())
        r = self.result
        lines = [
            f"tensor {self.name}: {counts.size} bins of |x| over [0, R], R = {h.amax:.7g} "
            f"(bin width w = {h.amax / counts.size:.4g}); {total:,} values, "
            f"{counts[0] / total if total else 0:.1%} in bin 0",
        ]
        if r.bin_index is None:
            lines.append(f"{self.preset}: every value is 0 -> threshold 0, scale 0 (as TensorRT "
                         "writes an all-zero tensor)")
            return "\n".join(lines)
        off = r.options.get("threshold_offset", 0.5)
        lines += [
            "",
            f"{self.preset}: the KL minimum is at candidate i = {r.bin_index} of "
            f"{int(r.candidates[0])}..{int(r.candidates[-1])}",
            f"  T = (i + {off:g}) * w = {r.amax:.7g};  scale = f32(T) / {r.options.get('divisor')}"
            f" = {float(r.scale):.7g} = {r.scale_hex}",
            f"  KL(P || Q) there = {r.divergence_at(r.bin_index):.6g};  "
            f"values clipped (above T): {_pct(self.clipped_share)}",
            "  KL around it: " + _neighbourhood(r, r.bin_index),
        ]
        others = [(p, x) for p, x in self.presets.items() if p != self.preset]
        if others:
            lines += ["", "other presets on the same histogram:"]
            for p, x in others:
                lines.append(
                    f"  {p:<9} i = {_bin_text(x.bin_index):>5}  T = {x.amax:.7g}  {x.scale_hex:>8}"
                    f"  ({_delta(x.bin_index, r.bin_index)} vs {self.preset})"
                )
        v = self.value
        if v is not None:
            lines += ["", f"{v.label}: {v.scale_hex} -> T = scale * 127 = {v.amax:.7g}, at bin "
                          f"position {v.position:.2f} of this histogram (T / w)"]
            if v.bin_index is None:
                centre = max(0, round(v.position - 0.5))
                lines.append(
                    f"  not on a bin centre (i + 0.5) * w of this histogram (nearest: i = {centre}, "
                    f"{abs(v.position - centre - 0.5):.2f} bins away): it was not chosen on these "
                    "bins (another range R, other data), or by another rule"
                )
            else:
                exact = "bit-exact" if v.exact else "same bin; not bit-exact: R differs by ulps"
                lines.append(f"  = candidate i = {v.bin_index} ({exact}); "
                             f"{_delta(v.bin_index, r.bin_index)} vs {self.preset}")
            kl = "-" if self.kl_at_value is None else f"{self.kl_at_value:.6g}"
            lines.append(f"  KL there = {kl} (minimum {r.divergence_at(r.bin_index):.6g}); "
                         f"values clipped: {_pct(v.clipped_share)}")
            lines += ["", f"what each option does (fields of EntropyOptions changed one at a "
                          f"time from {self.preset}):"]
            if not self.exhaustive:
                lines.append("  (smoothing='eps' is tried with empty='p', as the tools that "
                             "smooth use it; --exhaustive tries it alone)")
            for s in self.single:
                mark = "  <- reproduces it" if s.matches else ""
                if s.matches and s.exact:
                    mark += " bit for bit"
                lines.append(f"  {s.describe():<28} i = {_bin_text(s.bin_index):>5}  "
                             f"{s.scale_hex:>8}{mark}")
            lines.append("")
            if self.smallest:
                n = len(self.smallest[0].changes)
                if n == 0:
                    lines.append(f"the {self.preset} preset itself reproduces {v.label}")
                else:
                    what = "1 field" if n == 1 else f"{n} fields"
                    lines.append(f"smallest change that reproduces {v.label} ({what}):")
                    for s in self.smallest:
                        exact = "  [bit-exact]" if s.exact else ""
                        lines.append(f"  {s.describe()}{exact}")
            else:
                lines.append(
                    f"no change of up to {self.max_changes} fields reproduces {v.label} "
                    f"({self.tried} variants searched)"
                )
                near = min(self.single, key=lambda s: s.distance, default=None)
                if near is not None and math.isfinite(near.distance):
                    lines.append(f"  nearest single change: {near.describe()} at i = "
                                 f"{_bin_text(near.bin_index)}, {near.distance:.2f} bins away")
        for note in self.notes:
            lines.append(f"note: {note}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ figure
    def plot(
        self, path: str | os.PathLike[str] | None = None, *, force: bool = False
    ) -> Any:
        """Three panels: the histogram (log) with every threshold, the KL curve, P against Q.

        Parameters
        ----------
        path : path-like, optional
            Where to save a PNG (atomically; never overwriting without ``force``).
        force : bool, optional
            Overwrite ``path``.

        Returns
        -------
        matplotlib.figure.Figure
        """
        from ._io import check_writable
        from .plots import _pyplot, _save_png

        if path is not None:
            check_writable(path, force=force)
        plt = _pyplot()
        h = self.histogram
        counts = np.asarray(h.counts)
        n = counts.size
        w = h.amax / n if h.amax > 0 else 1.0
        r = self.result
        fig, axes = plt.subplots(3, 1, figsize=(9, 8.5), layout="constrained")
        ax = axes[0]
        ax.fill_between(np.arange(n) * w, np.maximum(counts, 0.5), 0.5, step="post",
                        color="#a5b4c8", linewidth=0)
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.5)
        ax.set_xlim(0, h.amax if h.amax > 0 else 1)
        colors = ["#d9480f", "#1971c2", "#2b8a3e", "#862e9c", "#495057"]
        for (p, x), c in zip(self.presets.items(), colors):
            ax.axvline(x.amax, color=c, lw=1.4 if p == self.preset else 1.0,
                       ls="-" if p == self.preset else "--", label=f"{p}: {x.amax:.4g}")
        if self.value is not None:
            ax.axvline(self.value.amax, color="black", lw=1.2, ls=":",
                       label=f"{self.value.label}: {self.value.amax:.4g}")
        ax.set_xlabel("|x|")
        ax.set_ylabel("count (log)")
        ax.set_title(f"{self.name}: histogram of |x| ({n} bins, R = {h.amax:.4g}) and thresholds",
                     fontsize=10)
        ax.legend(fontsize=8, loc="upper right")
        ax = axes[1]
        if r.bin_index is not None:
            fin = np.isfinite(r.divergence)
            ax.plot(r.candidates[fin], r.divergence[fin], lw=1, color="#1971c2")
            ax.axvline(r.bin_index, color="#d9480f", lw=1.2,
                       label=f"{self.preset} minimum: i = {r.bin_index}")
            if self.value is not None and self.value.bin_index is not None:
                ax.axvline(self.value.bin_index, color="black", ls=":", lw=1.2,
                           label=f"{self.value.label}: i = {self.value.bin_index}")
            ax.set_yscale("log")
            ax.legend(fontsize=8)
        ax.set_xlabel("candidate i (bins kept)")
        ax.set_ylabel("KL(P || Q)")
        ax.set_title(f"divergence curve ({self.preset})", fontsize=10)
        ax = axes[2]
        if r.bin_index is not None:
            p_, q_ = r.distributions(r.bin_index)
            bins = np.arange(p_.size)
            ax.step(bins, np.where(p_ > 0, p_, np.nan), where="mid", lw=1, color="#1971c2",
                    label="P (clipped reference)")
            ax.step(bins, np.where(q_ > 0, q_, np.nan), where="mid", lw=1, color="#d9480f",
                    alpha=0.85, label=f"Q ({r.options.get('num_levels')} levels)")
            ax.set_yscale("log")
            ax.legend(fontsize=8)
        ax.set_xlabel("bin")
        ax.set_ylabel("probability (log)")
        ax.set_title(f"P against Q at the chosen candidate i = {r.bin_index}", fontsize=10)
        if path is not None:
            _save_png(fig, path, dpi=110, force=force)
        return fig


def _pct(x: float) -> str:
    if x == 0:
        return "0%"
    return f"{x:.2%}" if x >= 1e-4 else f"{x * 100:.2g}%"


def _bin_text(i: int | None) -> str:
    return "-" if i is None else str(i)


def _delta(i: int | None, ref: int | None) -> str:
    if i is None or ref is None:
        return "-"
    d = i - ref
    return "same bin" if d == 0 else f"{d:+d} bins"


def _neighbourhood(r: ThresholdResult, at: int, span: int = 2) -> str:
    cands = r.candidates
    k = int(np.flatnonzero(cands == at)[0])
    parts = []
    for j in range(max(0, k - span), min(cands.size, k + span + 1)):
        d = float(r.divergence[j])
        parts.append(("*" if j == k else "") + f"{int(cands[j])}: {d:.5g}")
    return "  ".join(parts)


def explain_scale(
    hist: Any,
    *,
    name: str = "",
    preset: str = DEFAULT_PRESET,
    value: float | np.floating[Any] | None = None,
    value_label: str = "value",
    max_changes: int = DEFAULT_EXPLAIN_MAX_CHANGES,
    exhaustive: bool = False,
) -> Explanation:
    """Explain how the search chose one histogram's threshold, and what reproduces ``value``.

    Parameters
    ----------
    hist : ActivationHistogram or object with ``.counts`` and ``.amax``
        The tensor's histogram of ``|x|``.
    name : str, optional
        The tensor's name.
    preset : str, default DEFAULT_PRESET
        The preset whose choice is explained (one of :func:`abs_presets`).
    value : float, optional
        A float32 scale from elsewhere (a TensorRT cache): it is placed on the histogram and
        :func:`reproduce` looks for the options that give it.
    value_label : str, optional
        Where ``value`` comes from.
    max_changes : int, default DEFAULT_EXPLAIN_MAX_CHANGES
        Most option fields changed together.
    exhaustive : bool, optional
        See :func:`reproduce`.

    Returns
    -------
    Explanation
        ``to_text()`` for the terminal, ``plot(path)`` for the figure.

    Raises
    ------
    PresetError
        Unknown or signed preset.
    HistogramError
        A histogram without a range (``amax`` 0 or counts all zero) cannot be explained.
    """
    if preset not in abs_presets():
        raise PresetError(
            f"preset {preset!r} cannot be explained on a histogram of |x|; choose one of "
            f"{', '.join(abs_presets())}"
        )
    counts, amax = histogram_counts(hist)
    label = f"tensor {name!r}" if name else "the histogram"
    if amax == 0.0 or counts.sum() == 0:
        raise HistogramError(
            f"{label} has no range (every value is 0, R = {amax!r}): there is no search to "
            "explain; its scale is 0, as TensorRT writes an all-zero tensor"
        )
    presets = {p: search_threshold(hist, p) for p in abs_presets()}
    result = presets[preset]
    assert result.bin_index is not None  # amax > 0 and counts non-empty
    share = result.clipped_fraction
    out = Explanation(name=name, preset=preset, histogram=hist, result=result, presets=presets,
                      clipped_share=share, max_changes=max_changes, exhaustive=exhaustive)
    if value is not None:
        opts = resolve_options(preset)
        placed = place_value(counts, amax, value, label=value_label, options=opts)
        out.value = placed
        if placed.bin_index is not None and np.any(result.candidates == placed.bin_index):
            out.kl_at_value = result.divergence_at(placed.bin_index)
        if float(np.float32(value)) == 0.0:
            out.notes.append(f"{value_label} holds 0 for this tensor: TensorRT writes 0 for a "
                             "tensor whose values were all 0 when it calibrated")
        elif math.isfinite(placed.amax):
            out.single, out.smallest, out.tried = reproduce(
                hist, placed.amax, preset=preset, max_changes=max_changes,
                target_scale=value, exhaustive=exhaustive,
            )
    return out
