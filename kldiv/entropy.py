"""Entropy (KL-divergence) threshold search: the readable reference, its options and presets.

This module is the one a teacher puts beside the GTC 2017 slide ("8-bit Inference with
TensorRT", S. Migacz). :func:`divergence_curve` is the pseudocode, one candidate at a time::

    for i in candidates:                                   # i = number of leading bins kept
        P = H[0:i];  P[i-1] += sum(H[i:])                  # outliers clipped, not dropped
        Q = merge H[0:i] into 128 groups, spread each group
            over its non-empty bins                       # the 8-bit version of P
        divergence[i] = KL(normalize(P) || normalize(Q))
    m = argmin(divergence);  threshold = (m + 0.5) * bin_width;  scale = threshold / 127

Wherever the slide is silent (algorithm.md §3, ambiguities #1–#13) the choice is a named field
of :class:`EntropyOptions`; :data:`PRESETS` bundles the choices of TensorRT (our reconstruction,
pinned by real caches), of the slide itself, of NVIDIA ModelOpt and of MXNet. The fast Numba
kernels (``kldiv._kernels.entropy``) compute the same curve from prefix sums;
:func:`search_threshold` runs them when ``kldiv._kernels.resolve()`` offers them (the
``KLDIV_KERNELS`` environment variable) and this file's loop otherwise; the tests hold the two
equal.

Examples
--------
>>> import numpy as np
>>> from kldiv.entropy import search_threshold
>>> counts = np.zeros(2048, dtype=np.int64); counts[-1] = 10   # a constant tensor, |x| = 2
>>> r = search_threshold(_Counts(counts, 2.0))
>>> r.bin_index, r.scale_hex
(2048, '3c810a14')
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import numpy as np

from . import _kernels
from .defaults import DEFAULT_PRESET, INT8_MAX, NUM_QUANT_LEVELS
from .errors import HistogramError, PresetError
from .graph import GraphRules
from .scales import ThresholdResult, amax_to_scale

__all__ = [
    "PRESETS",
    "EntropyOptions",
    "candidate_bins",
    "distributions",
    "divergence_curve",
    "group_index",
    "histogram_counts",
    "is_degenerate",
    "kl_divergence",
    "pick_minimum",
    "preset_name",
    "resolve_options",
    "search_threshold",
    "threshold_from_bin",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Options: one field per ambiguity of algorithm.md §3
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EntropyOptions:
    """Every choice the GTC 2017 pseudocode leaves open (algorithm.md §3), as named fields.

    Parameters
    ----------
    domain : {'abs', 'signed'}
        #1. ``'abs'``: the histogram holds ``|x|`` over ``[0, amax]`` and candidate ``i`` keeps
        bins ``[0, i)`` (TensorRT, ModelOpt). ``'signed'``: the histogram holds ``x`` over
        ``[-amax, amax]`` (odd bin count, zero in the middle bin ``z = num_bins // 2``) and
        candidate ``i`` keeps bins ``[z - i, z + i]``, outliers folded into both ends (MXNet).
    num_levels : int
        #2. Number of quantized levels ``Q`` is merged into: 128 for int8 on ``|x|``, 255 for
        signed int8 (MXNet), 256 for unsigned.
    zeros : {'keep', 'bin1', 'drop'}
        #5. What to do with the bin that holds exact zeros (bin 0, or the middle bin when
        signed): keep it; replace its count by bin 1's (ModelOpt: ``bins[0] = bins[1]``); or set
        it to 0 (zeros skipped).
    start_bin : int or None
        #6. First candidate ``i`` (``None``: ``num_levels``, or ``num_levels // 2`` signed).
    stop_bin : int or None
        #6. Last candidate, **inclusive** (``None``: ``num_bins``, or ``num_bins // 2`` signed).
    include_last : bool
        #6. Whether keeping every bin (``i = num_bins``, no outliers) is a candidate when
        ``stop_bin`` is None: yes for TensorRT (softmax and constant-tensor caches need it) and
        ModelOpt; no for the slide's ``range(128, 2048)``.
    stride : int
        #6. Step between candidates (ModelOpt's ``stride``).
    min_nonempty_bins : int
        #6. Degenerate windows: a candidate whose kept bins (after the ``zeros`` policy) hold
        at least one but fewer than ``min_nonempty_bins`` non-empty bins is not taken (its
        divergence is ``inf``). With a single non-empty bin, ``P`` and ``Q`` are the same
        one-point distribution and KL = 0, a minimum that says nothing about the data; real
        TensorRT caches show TensorRT does not take it (algorithm.md §4), so the ``tensorrt``
        preset uses 2. 1 (the default) takes every candidate, as ModelOpt and the slide do.
        A window without any non-empty bin is ``empty_q``'s case.
    grouping : {'proportional', 'floor'}
        #7. How the ``i`` kept bins merge into ``num_levels`` groups when ``num_levels`` does not
        divide ``i``: bin ``j`` goes to group ``floor(j * num_levels / i)`` (``'proportional'``,
        ModelOpt; pinned for TensorRT by the MNIST golden), or groups of ``i // num_levels`` bins
        with the remainder in the last group (``'floor'``, MXNet / ONNX Runtime).
    empty : {'histogram', 'p'}
        #8. Which bins count as empty when a group's mass is spread back: the raw histogram bins
        (``'histogram'``, the slide) or the bins of ``P`` after the outlier merge (``'p'``,
        MXNet).
    smoothing : {'none', 'eps'}
        #9. ``'none'``: a bin with ``P > 0`` and ``Q = 0`` makes KL infinite for that candidate
        (ModelOpt). ``'eps'``: MXNet / ONNX Runtime smoothing of both count vectors (zeros get
        ``smoothing_eps``, the non-zeros give that mass back evenly) before normalizing.
    smoothing_eps : float
        #9. The ``eps`` of ``'eps'`` smoothing (1e-4 in MXNet and ONNX Runtime).
    empty_q : {'inf', 'nan'}
        #9. A candidate whose kept bins are all empty (``Q`` is all zero): ``'inf'`` (never
        chosen unless every candidate is), or ``'nan'``, which wins the argmin the way NumPy's
        ``argmin`` picks the first NaN (ModelOpt, through scipy's ``entropy``).
    log_base : float
        #10. Base of the logarithm (``math.e``: nats). Does not move the argmin. Arithmetic is
        float64 throughout (TVM's float32 is not reproduced).
    ties : {'first', 'last'}
        #11. Which candidate wins when several share the minimum divergence.
    tie_tolerance : float
        #11. Divergences within this (absolute) amount of the minimum count as tied. 0.0: only
        bit-equal values tie. Mathematically equal divergences rarely come out bit-equal in
        floating point (a candidate whose Q reproduces P exactly gives KL = 0 up to ~1e-16),
        so a rule for ties needs a tolerance to act at all.
    threshold_offset : float
        #12. ``threshold = (m + threshold_offset) * bin_width``: 0.5 puts it in the middle of
        bin ``m`` (slide, TensorRT, MXNet), 0.0 on its lower edge (ModelOpt, PPQ).
    divisor : int
        #13. ``scale = float32(float32(threshold) / divisor)``: 127 (TensorRT) or 128 (PPQ).
    activation_bounds : bool
        Graph rule, not part of one histogram's search: a ``Clip``/ReLU6 output gets its bound
        as threshold (see :class:`kldiv.graph.GraphRules`). On in the ``tensorrt`` preset.
    pooling_inherits : bool
        Graph rule: a pooling output gets its input's scale. On in the ``tensorrt`` preset.
    alias_inherits : bool
        Graph rule: a ``Reshape``/``Flatten``/... output gets its source's final scale.

    Notes
    -----
    The graph rules are applied by :func:`kldiv.pipeline.choose_thresholds`, which knows the
    graph (:class:`kldiv.graph.GraphFacts`); they live here so that a preset's name and its
    object give the same table.

    Ambiguities #3 and #4 (initial range, growth) belong to histogram collection
    (:mod:`kldiv.histogram`, :mod:`kldiv.collect`), not to the search.
    """

    domain: Literal["abs", "signed"] = "abs"
    num_levels: int = NUM_QUANT_LEVELS
    zeros: Literal["keep", "bin1", "drop"] = "keep"
    start_bin: int | None = None
    stop_bin: int | None = None
    include_last: bool = True
    stride: int = 1
    min_nonempty_bins: int = 1
    grouping: Literal["proportional", "floor"] = "proportional"
    empty: Literal["histogram", "p"] = "histogram"
    smoothing: Literal["none", "eps"] = "none"
    smoothing_eps: float = 1e-4
    empty_q: Literal["inf", "nan"] = "inf"
    log_base: float = math.e
    ties: Literal["first", "last"] = "first"
    tie_tolerance: float = 0.0
    threshold_offset: float = 0.5
    divisor: int = INT8_MAX
    activation_bounds: bool = False
    pooling_inherits: bool = False
    alias_inherits: bool = True

    def __post_init__(self) -> None:
        for name in GraphRules.names():
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise PresetError(
                    f"option {name}={getattr(self, name)!r} must be True or False"
                )
        choices = {
            "domain": ("abs", "signed"),
            "zeros": ("keep", "bin1", "drop"),
            "grouping": ("proportional", "floor"),
            "empty": ("histogram", "p"),
            "smoothing": ("none", "eps"),
            "ties": ("first", "last"),
            "empty_q": ("inf", "nan"),
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise PresetError(
                    f"option {name}={value!r} is not valid; choose one of {', '.join(allowed)}"
                )
        for name in ("num_levels", "stride", "divisor", "min_nonempty_bins"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise PresetError(f"option {name}={value!r} must be a positive integer")
        for name in ("start_bin", "stop_bin"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1
            ):
                raise PresetError(f"option {name}={value!r} must be a positive integer or None")
        if not (0.0 < self.smoothing_eps < 1.0):
            raise PresetError(
                f"option smoothing_eps={self.smoothing_eps!r} must lie in (0, 1), e.g. 1e-4"
            )
        if not (self.log_base > 0 and self.log_base != 1 and math.isfinite(self.log_base)):
            raise PresetError(f"option log_base={self.log_base!r} must be positive and not 1")
        if not (0.0 <= self.tie_tolerance < 1e-6):
            raise PresetError(
                f"option tie_tolerance={self.tie_tolerance!r} must lie in [0, 1e-6); it absorbs "
                "rounding (e.g. 1e-12), it is not a smoothing of the curve"
            )
        if not (0.0 <= self.threshold_offset <= 1.0):
            raise PresetError(
                f"option threshold_offset={self.threshold_offset!r} must lie in [0, 1] "
                "(0.5: bin middle, TensorRT; 0.0: lower edge, ModelOpt)"
            )

    def replace(self, **changes: Any) -> EntropyOptions:
        """A copy with some fields changed; unknown names raise :class:`PresetError`."""
        _check_option_names(changes)
        return dataclasses.replace(self, **changes)

    @property
    def rules(self) -> GraphRules:
        """The graph rules of these options (see :class:`kldiv.graph.GraphRules`)."""
        return GraphRules(**{name: bool(getattr(self, name)) for name in GraphRules.names()})

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (JSON-serializable)."""
        # shallow: every field is a scalar (dataclasses.asdict deep-copies, ~0.2 ms a call)
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _check_option_names(options: Mapping[str, Any]) -> None:
    valid = [f.name for f in dataclasses.fields(EntropyOptions)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise PresetError(
            f"unknown entropy option(s) {', '.join(map(repr, unknown))}; "
            f"valid options are: {', '.join(valid)}"
        )


#: The presets. Each is documented with its evidence in docs/threshold-search.md.
PRESETS: Mapping[str, EntropyOptions] = MappingProxyType(
    {
        # Our reconstruction of IInt8EntropyCalibrator2 (algorithm.md §4). Pinned by real
        # caches: |x| domain, 2048 bins / 128 levels, i = 2048 is a candidate (softmax,
        # constant tensors), (m + 0.5) * w, divisor 127, float32 order; proportional grouping
        # (MNIST data = 3c008912 needs i = 2040, whatever the zero policy); emptiness from the
        # raw histogram and the zero spike not kept (sampleINT8 TRT 5.1 / 7.0 reproduced, 16 of
        # 16 entries in TensorRT's bin: docs/fidelity.md). Not pinned (documented defaults): no
        # smoothing, and bin 0 := bin 1 as NVIDIA's ModelOpt does rather than dropping it (both
        # fit every cache). Keeping the zero spike would make every ReLU output pick tiny
        # thresholds (group 0 spreads the spike): sampleINT8's ip1 lands ~800 bins low with it,
        # and EfficientNet-Lite0 falls to 0% top-1 agreement (docs/threshold-search.md).
        # Ties (#11, unknown): divergences within 1e-12 of the minimum are ties and the last
        # (widest) candidate wins, as in ModelOpt. Without it, sparse discrete data (pixels
        # k/16) has exact KL = 0 ties that rounding resolves to the first: amax 1/16 for [0, 1].
        # Degenerate windows (#6, algorithm.md §4): a candidate whose window holds a single
        # non-empty bin has KL = 0 and is not taken; a real TRT 7.0 cache is the KL curve's
        # second minimum, 1 ulp away, once that candidate is skipped.
        # Graph rules (algorithm.md §4): Clip/ReLU6 outputs written with their bound (MLPerf
        # SSD-MobileNet, TRT 7.2: all 35 Relu6 = 6/127), pooling outputs with their input's
        # scale (every real entropy cache with pooling, TRT 5.1 to 10.3).
        "tensorrt": EntropyOptions(
            zeros="bin1", ties="last", tie_tolerance=1e-12, min_nonempty_bins=2,
            activation_bounds=True, pooling_inherits=True,
        ),
        # The slide, literally: range(128, 2048), (m + 0.5) * w, plain KL. It does not say how
        # to group when 128 does not divide i; we take the widespread floor width with the
        # remainder in the last group (which the MNIST golden shows TensorRT does not use).
        "gtc2017": EntropyOptions(include_last=False, grouping="floor"),
        # ModelOpt / pytorch-quantization _compute_amax_entropy: bins[0] = bins[1]; candidates
        # start_bin..len(bins) inclusive; digitize over linspace(0, i, 129) = proportional
        # grouping; emptiness from the (modified) histogram; scipy entropy (inf when Q = 0 < P);
        # last minimum; amax = bin_edges[m] = m * w.
        "modelopt": EntropyOptions(zeros="bin1", ties="last", threshold_offset=0.0, empty_q="nan"),
        # MXNet contrib.quantization._get_optimal_threshold: signed histogram (8001 bins),
        # 255 levels, half-widths 127..z, floor grouping, emptiness from P, q[p == 0] = 0,
        # eps = 1e-4 smoothing, first minimum, threshold = edge z+i+1 = (i + 0.5) * w.
        "mxnet": EntropyOptions(
            domain="signed", num_levels=255, grouping="floor", empty="p", smoothing="eps"
        ),
    }
)


def resolve_options(preset: str | EntropyOptions = DEFAULT_PRESET, **options: Any) -> EntropyOptions:
    """Return the preset's :class:`EntropyOptions` with ``options`` overriding fields.

    Raises
    ------
    PresetError
        Unknown preset or option name, or an invalid value.
    """
    if isinstance(preset, EntropyOptions):
        base = preset
    else:
        if preset not in PRESETS:
            raise PresetError(
                f"unknown entropy preset {preset!r}; choose one of {', '.join(PRESETS)} "
                "or pass an EntropyOptions"
            )
        base = PRESETS[preset]
    return base.replace(**options) if options else base


def preset_name(preset: str | EntropyOptions) -> str | None:
    """The name of ``preset``.

    Itself for a name, the :data:`PRESETS` key of an equal object, else ``None`` (options built
    by hand).
    """
    if isinstance(preset, str):
        return preset
    return next((name for name, opts in PRESETS.items() if opts == preset), None)


# --------------------------------------------------------------------------------------------
# Input
# --------------------------------------------------------------------------------------------
def histogram_counts(hist: Any) -> tuple[np.ndarray, float]:
    """Validate ``hist.counts`` / ``hist.amax`` and return ``(int64 counts, amax)``.

    Raises
    ------
    HistogramError
        Counts that are not a 1-D array of non-negative integers, or an amax that is negative
        or not finite.
    """
    if not (hasattr(hist, "counts") and hasattr(hist, "amax")):
        raise HistogramError(
            f"expected a histogram with .counts and .amax, got {type(hist).__name__}; build one "
            "with kldiv.ActivationHistogram.from_counts(counts, amax)"
        )
    counts = np.asarray(hist.counts)
    if counts.ndim != 1 or counts.size == 0:
        raise HistogramError(
            f"histogram counts must be a non-empty 1-D array, got shape {counts.shape}"
        )
    if counts.dtype.kind not in "iu":
        raise HistogramError(
            f"histogram counts must be integers, got dtype {counts.dtype}; if they are whole "
            "numbers convert them with np.rint(counts).astype(np.int64)"
        )
    if counts.dtype.kind == "u" and counts.size and int(counts.max()) > np.iinfo(np.int64).max:
        raise HistogramError("histogram counts exceed int64; they cannot be searched exactly")
    counts = counts.astype(np.int64, copy=False)
    if (counts < 0).any():
        first = int(np.flatnonzero(counts < 0)[0])
        raise HistogramError(
            f"histogram counts must be >= 0, bin {first} holds {int(counts[first])}; "
            "counts come from counting values, fix the code that built them"
        )
    total = int(counts.sum(dtype=np.float64))
    if total >= 2**53:
        raise HistogramError(
            f"histogram total {total} is at or above 2**53; counts this large cannot be "
            "normalized exactly in float64 (split the calibration data)"
        )
    amax = float(hist.amax)
    if not (math.isfinite(amax) and amax >= 0):
        raise HistogramError(f"histogram amax must be finite and >= 0, got {amax!r}")
    return counts, amax


# --------------------------------------------------------------------------------------------
# The pseudocode, step by step
# --------------------------------------------------------------------------------------------
def _zero_bin(num_bins: int, opts: EntropyOptions) -> int:
    return num_bins // 2 if opts.domain == "signed" else 0


def apply_zero_policy(
    counts: np.ndarray, opts: EntropyOptions, *, dtype: Any = np.float64
) -> np.ndarray:
    """Return a copy of ``counts`` with ambiguity #5 (exact zeros) applied.

    The copy is float64 unless ``dtype`` says otherwise.
    """
    hist = counts.astype(dtype)
    z = _zero_bin(hist.size, opts)
    if opts.zeros == "bin1":
        hist[z] = hist[z + 1] if z + 1 < hist.size else hist[z]
    elif opts.zeros == "drop":
        hist[z] = 0
    return hist


def candidate_bins(num_bins: int, opts: EntropyOptions) -> np.ndarray:
    """The candidates ``i`` (ambiguity #6), in increasing order.

    For ``domain='abs'`` candidate ``i`` keeps bins ``[0, i)``; for ``'signed'`` it keeps the
    ``2 i + 1`` bins centred on the zero bin.

    Raises
    ------
    HistogramError
        If ``num_bins`` is smaller than ``num_levels`` (or even, for a signed histogram).
    PresetError
        If the candidate range is empty or outside the histogram.
    """
    if num_bins < opts.num_levels:
        raise HistogramError(
            f"histogram has {num_bins} bins, fewer than the {opts.num_levels} quantization "
            "levels; collect with more bins (TensorRT uses 2048) or lower num_levels"
        )
    if opts.domain == "signed":
        if num_bins % 2 == 0:
            raise HistogramError(
                f"a signed histogram needs an odd number of bins (zero in the middle bin), got "
                f"{num_bins}; MXNet uses 8001"
            )
        first, last = opts.num_levels // 2, num_bins // 2
    else:
        first, last = opts.num_levels, num_bins
    start = first if opts.start_bin is None else int(opts.start_bin)
    if opts.stop_bin is not None:
        stop = int(opts.stop_bin)
    else:
        stop = last if opts.include_last else last - 1
    if stop > last:
        raise PresetError(
            f"stop_bin={stop} is beyond the histogram ({last} is the largest candidate for "
            f"{num_bins} bins); lower stop_bin or leave it None"
        )
    if opts.grouping == "floor" and start < first:
        raise PresetError(
            f"start_bin={start} is below {first}: 'floor' grouping needs at least one bin per "
            "group; raise start_bin or use grouping='proportional'"
        )
    if start > stop:
        raise PresetError(f"no candidates: start_bin={start} > stop_bin={stop}")
    return np.arange(start, stop + 1, opts.stride, dtype=np.int64)


def window(num_bins: int, i: int, opts: EntropyOptions) -> tuple[int, int]:
    """Bins ``[lo, hi)`` kept by candidate ``i``."""
    if opts.domain == "signed":
        z = num_bins // 2
        return z - i, z + i + 1
    return 0, i


def group_index(length: int, opts: EntropyOptions) -> np.ndarray:
    """Group of each of the ``length`` kept bins when merging into ``num_levels`` (#7)."""
    j = np.arange(length, dtype=np.int64)
    levels = opts.num_levels
    if opts.grouping == "proportional":
        return j * levels // length
    width = length // levels
    return np.minimum(j // width, levels - 1)


def distributions(hist: np.ndarray, i: int, opts: EntropyOptions) -> tuple[np.ndarray, np.ndarray]:
    """Unnormalized ``P`` and ``Q`` (float64 counts) of candidate ``i`` (pseudocode steps 1–2).

    Parameters
    ----------
    hist : numpy.ndarray
        The histogram after :func:`apply_zero_policy`.
    i : int
        The candidate.
    opts : EntropyOptions
        The options.
    """
    lo, hi = window(hist.size, i, opts)
    kept = hist[lo:hi]

    # Step 1: P is the kept bins with the outliers clipped into the end bins.
    p = kept.copy()
    p[0] += hist[:lo].sum()
    p[-1] += hist[hi:].sum()

    # Step 2: Q merges the kept bins (without outliers) into num_levels groups, then spreads
    # each group's total evenly over the group's non-empty bins.
    group = group_index(kept.size, opts)
    nonempty = (kept if opts.empty == "histogram" else p) != 0
    group_total = np.bincount(group, weights=kept, minlength=opts.num_levels)
    group_nonempty = np.bincount(group, weights=nonempty, minlength=opts.num_levels)
    q = np.zeros_like(kept)
    q[nonempty] = group_total[group[nonempty]] / group_nonempty[group[nonempty]]
    return p, q


def _smooth(counts: np.ndarray, eps: float) -> np.ndarray | None:
    """MXNet / ONNX Runtime smoothing: zeros become ``eps``, non-zeros pay for it evenly."""
    is_zero = counts == 0
    n_zero = int(is_zero.sum())
    n_nonzero = counts.size - n_zero
    if n_nonzero == 0:
        return None
    eps1 = eps * n_zero / n_nonzero
    return np.where(is_zero, eps, counts - eps1)


def kl_divergence(p: np.ndarray, q: np.ndarray, opts: EntropyOptions) -> float:
    """``KL(P || Q)`` of two count vectors, normalized here (pseudocode step 3).

    Returns ``inf`` where the divergence is undefined: ``Q = 0`` where ``P > 0`` (without
    smoothing), or a vector that smoothing cannot make positive.
    """
    if opts.smoothing == "eps":
        ps, qs = _smooth(p, opts.smoothing_eps), _smooth(q, opts.smoothing_eps)
        if ps is None or qs is None or (ps <= 0).any() or (qs <= 0).any():
            return math.inf
        p, q = ps, qs
    p_sum, q_sum = p.sum(), q.sum()
    if q_sum <= 0 and opts.empty_q == "nan":
        return math.nan
    if p_sum <= 0 or q_sum <= 0:
        return math.inf
    p = p / p_sum
    q = q / q_sum
    support = p > 0
    if (q[support] == 0).any():
        return math.inf
    kl = float(np.sum(p[support] * np.log(p[support] / q[support])))
    return kl / math.log(opts.log_base)


def is_degenerate(hist: np.ndarray, i: int, opts: EntropyOptions) -> bool:
    """Whether candidate ``i``'s window is degenerate.

    It is when it holds at least one but fewer than ``opts.min_nonempty_bins`` non-empty bins of
    ``hist`` (the histogram after :func:`apply_zero_policy`).
    """
    lo, hi = window(hist.size, i, opts)
    nonempty = int(np.count_nonzero(hist[lo:hi]))
    return 0 < nonempty < opts.min_nonempty_bins


def divergence_curve(counts: np.ndarray, opts: EntropyOptions) -> tuple[np.ndarray, np.ndarray]:
    """The reference loop: ``(candidates, divergence)`` for every candidate ``i``.

    A degenerate candidate (:func:`is_degenerate`) gets ``inf``: it is not taken unless every
    candidate is infinite, when the tie rule decides (:func:`pick_minimum`).
    """
    hist = apply_zero_policy(counts, opts)
    candidates = candidate_bins(hist.size, opts)
    divergence = np.empty(candidates.size, dtype=np.float64)
    for k, i in enumerate(candidates):
        if is_degenerate(hist, int(i), opts):
            divergence[k] = math.inf
            continue
        p, q = distributions(hist, int(i), opts)
        divergence[k] = kl_divergence(p, q, opts)
    return candidates, divergence


def pick_minimum(divergence: np.ndarray, opts: EntropyOptions) -> int:
    """Position of the minimum divergence; ties resolved by ``opts.ties`` (#11).

    With ``opts.tie_tolerance > 0``, every finite divergence within that amount of the minimum
    is a tie.

    When every candidate is infinite the same rule applies (the first, or the last, candidate).
    A NaN (``empty_q='nan'``) wins, the first one in the tie rule's direction, as in NumPy.
    """
    if opts.tie_tolerance > 0 and divergence.size and not np.isnan(divergence).any():
        best = float(divergence.min())
        if math.isfinite(best):
            tied = np.flatnonzero(divergence <= best + opts.tie_tolerance)
            return int(tied[-1] if opts.ties == "last" else tied[0])
    if opts.ties == "last":
        return int(divergence.size - 1 - np.argmin(divergence[::-1]))
    return int(np.argmin(divergence))


def bin_width(num_bins: int, amax: float, opts: EntropyOptions) -> float:
    """Width of one bin: ``amax / num_bins`` for ``|x|``, ``2 amax / num_bins`` signed."""
    return (2.0 * amax if opts.domain == "signed" else amax) / num_bins


def threshold_from_bin(m: int, num_bins: int, amax: float, opts: EntropyOptions) -> float:
    """``(m + threshold_offset) * bin_width`` (#12), in float64.

    For TensorRT this is ``(m + 0.5) * R / 2048``; rounding it to float32 and dividing by 127
    in float32 (:func:`kldiv.scales.amax_to_scale`) reproduces real caches bit for bit.
    """
    return (m + opts.threshold_offset) * bin_width(num_bins, amax, opts)


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------
def _require_nonempty(counts: np.ndarray) -> None:
    """Raise :class:`HistogramError` for a histogram without a single count."""
    if counts.sum() == 0:
        raise HistogramError(
            "the histogram is empty (all counts are 0); fill it with calibration data first"
        )


# --------------------------------------------------------------------------------------------
# The fast path: the same curve from the kernels, the same minimum
# --------------------------------------------------------------------------------------------
#: Kernel values within ``BAND_ATOL + BAND_RTOL * |min|`` (plus the tie tolerance) of the kernel
#: minimum are decided on exact reference values (far above the kernel's error, measured ~1e-14
#: absolute; see :func:`pick_kernel_minimum`).
BAND_ATOL = 1e-10
BAND_RTOL = 1e-9


def kernel_divergence_curve(
    counts: np.ndarray, opts: EntropyOptions, kernels: _kernels.Kernels
) -> tuple[np.ndarray, np.ndarray]:
    """``(candidates, divergence)`` like :func:`divergence_curve`, from the kernels.

    The options become plain numbers for the kernels here; smoothing with emptiness taken from
    the raw histogram has no kernel and runs the reference loop.
    """
    if opts.smoothing != "none" and opts.empty != "p":
        return divergence_curve(counts, opts)
    h = np.ascontiguousarray(apply_zero_policy(np.asarray(counts), opts, dtype=np.int64))
    candidates = np.ascontiguousarray(candidate_bins(h.size, opts), dtype=np.int64)
    signed = opts.domain == "signed"
    grouping = 0 if opts.grouping == "proportional" else 1
    min_nonempty = int(opts.min_nonempty_bins)
    if opts.smoothing == "none" and not signed and grouping == 0:
        levels = opts.num_levels
        shift = levels.bit_length() - 1 if levels & (levels - 1) == 0 else -1
        div = kernels.curve_abs_proportional(
            h, candidates, levels, shift, int(opts.empty == "p"), min_nonempty
        )
    elif opts.smoothing == "none":
        div = kernels.curve_closed_form(
            h, candidates, signed, opts.num_levels, grouping, int(opts.empty == "p"),
            min_nonempty,
        )
    else:
        div = kernels.curve_smoothed(
            h, candidates, signed, opts.num_levels, grouping, float(opts.smoothing_eps),
            min_nonempty,
        )
    if opts.empty_q == "nan" and opts.smoothing == "none":
        # candidates whose kept bins are all empty; with smoothing the reference finds such a
        # Q impossible to smooth and gives inf, as the smoothed kernel does
        csum = np.concatenate(([0], np.cumsum(h)))
        z = h.size // 2
        lo, hi = (z - candidates, z + candidates + 1) if signed else (0 * candidates, candidates)
        div = np.where(csum[hi] - csum[lo] == 0, np.nan, div)
    if opts.log_base != math.e:  # the reference's inf stays +inf whatever the base
        div = np.where(np.isinf(div), div, div / math.log(opts.log_base))
    return candidates, div


def kernel_search(
    counts: np.ndarray, opts: EntropyOptions, kernels: _kernels.Kernels
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(candidates, divergence, position of the minimum)`` from the kernels.

    The minimum is chosen exactly as :func:`pick_minimum` chooses it on the reference curve.

    The kernel curve agrees with the reference to ~1e-13; the exact reference values of the
    candidates within a small band above the kernel minimum decide, as
    :func:`pick_kernel_minimum` explains.
    """
    candidates, div = kernel_divergence_curve(counts, opts, kernels)
    return candidates, div, pick_kernel_minimum(counts, candidates, div, opts)


def pick_kernel_minimum(
    counts: np.ndarray, candidates: np.ndarray, div: np.ndarray, opts: EntropyOptions
) -> int:
    """Position of the minimum of a kernel curve, as :func:`pick_minimum` picks it.

    :func:`pick_minimum` decides on the reference curve (:func:`divergence_curve`); this
    function returns the same position from the kernel curve ``div`` and the exact reference
    values of the candidates that can decide.

    Parameters
    ----------
    counts : numpy.ndarray
        The histogram's counts (before :func:`apply_zero_policy`).
    candidates : numpy.ndarray
        The candidates ``i`` of ``div``, in increasing order.
    div : numpy.ndarray
        The kernels' divergence of each candidate (:func:`kernel_divergence_curve`).
    opts : EntropyOptions
        The options.

    Returns
    -------
    int
        The position in ``candidates`` that :func:`pick_minimum` picks on the reference
        values of the same candidates.

    Notes
    -----
    *NaN or no finite value.* The kernels give NaN (``empty_q='nan'``) and ``inf`` exactly
    where the reference does (structural conditions on the counts, no rounding), so the
    curve itself decides.

    *The band.* Let ``d`` bound the kernel's error, ``|div - ref| <= d`` for every
    candidate (measured ~1e-14; the band assumes ``2 d <= BAND_ATOL + BAND_RTOL * |b|``).
    With ``b = min(div)`` the reference minimum ``R`` lies in ``[b - d, b + d]``, and a
    candidate with ``div > b + 2 d + tie_tolerance`` has ``ref > R + tie_tolerance``: it is
    neither the minimum nor tied with it, for either tie rule and for ``tie_tolerance = 0``
    too (bit-equal minima). Every candidate the rule can pick lies in the band
    ``div <= b + BAND_ATOL + BAND_RTOL * |b| + tie_tolerance``, and :func:`pick_minimum`
    applied to the band's exact reference values picks what it picks on the whole curve.

    *Exact values without the reference loop.* On sparse histograms most of the band is a
    plateau (hundreds of candidates of divergence 0, or of one same positive value), and the
    reference costs tens of microseconds a candidate. :func:`_value_classes` finds band
    candidates whose reference value is known without running it, or equal to another's,
    among those where

    1. nothing is clipped: every non-empty bin lies in the window, so ``P`` is the kept bins
       unchanged (the clipped mass added is ``0.0``), its support is the histogram's
       non-empty bins, and ``empty='histogram'`` and ``empty='p'`` name the same bins;
    2. there is no smoothing, the window is not degenerate, and the histogram's total is at
       most ``2**52``, so every group total (a float64 sum of whole numbers) is exact.

    Then each non-empty bin gets ``q = g / n``, its group's total over the group's non-empty
    bins (exact integers, computed here in integer arithmetic).

    - ``Q`` equals ``P`` bin for bin when every group's non-empty bins hold equal counts
      (``g = n h``: the division ``n h / n`` is exact). :func:`kl_divergence` then normalizes
      two identical arrays by the same sum (one NumPy reduction of the same values), every
      ratio ``p / q`` is ``x / x = 1.0`` exactly, ``log(1.0) = 0.0`` (a correctly rounded or
      faithful logarithm returns an exactly representable result exactly), and each product
      and their sum are ``0.0``: the value is ``0.0 / log(log_base)``, bit for bit, without a
      reference call.
    - Otherwise, when every ``g / n`` is a dyadic fraction (the odd part of ``n`` divides
      ``g``) and the total ``S`` times the largest power of two dividing an ``n`` is at most
      ``2**53``, every ``q`` is exact in float64, every partial sum of ``Q`` is exact whatever
      NumPy's summation order, and ``sum(Q)`` is ``S``, as is ``sum(P)``. The reference's
      floating-point work then depends only on the sequence of ``q`` over the non-empty bins:
      the same normalizations, and the same ``log`` and sum over the same compressed arrays.
      Candidates with the same sequence get bit-identical values, and the reference runs once
      per sequence (classes are formed for histograms of at most ``_CLASS_MAX_NONEMPTY``
      non-empty bins, where finding them costs less than the reference calls they save).

    The other band candidates run the reference itself. No value is approximated, so the pick
    is exact for every tie rule and tolerance, including ``tie_tolerance = 0`` where
    bit-equality decides.
    """
    if np.isnan(div).any():  # structural NaNs win as in np.argmin; no rounding involved
        return pick_minimum(div, opts)
    best = float(div.min())
    if not math.isfinite(best):  # every candidate infinite: decided by the tie rule alone
        return pick_minimum(div, opts)
    band = np.flatnonzero(div <= best + BAND_ATOL + opts.tie_tolerance + BAND_RTOL * abs(best))
    if band.size == 1:
        return int(band[0])
    hist = apply_zero_policy(counts, opts)
    label = _value_classes(hist, candidates[band], opts)
    exact = np.empty(band.size, dtype=np.float64)
    exact[label == 0] = 0.0 / math.log(opts.log_base)  # kl_divergence's value, sign of zero too
    of_class: dict[int, float] = {}
    for k in np.flatnonzero(label != 0):
        c = int(label[k])
        if c not in of_class:
            value = kl_divergence(*distributions(hist, int(candidates[band[k]]), opts), opts)
            if c < 0:
                exact[k] = value
                continue
            of_class[c] = value
        exact[k] = of_class[c]
    return int(band[pick_minimum(exact, opts)])


#: Largest (candidates x non-empty bins) block :func:`_value_classes` builds at once.
_CHECK_BLOCK = 1 << 16
#: :func:`_value_classes` forms classes of equal ``q`` sequences up to this many non-empty bins.
_CLASS_MAX_NONEMPTY = 512


def _group_of(bins: np.ndarray, lo: np.ndarray, length: np.ndarray, opts: EntropyOptions
              ) -> np.ndarray:
    """Group of each of ``bins`` (columns) in each window ``[lo, lo + length)`` (rows).

    The same integer arithmetic as :func:`group_index`; ``bins`` must lie in every window.
    """
    j = bins[None, :] - lo[:, None]
    n = length[:, None]
    group: np.ndarray
    if opts.grouping == "proportional":
        group = j * opts.num_levels // n
    else:
        group = np.minimum(j // (n // opts.num_levels), opts.num_levels - 1)
    return group


def _value_classes(hist: np.ndarray, cands: np.ndarray, opts: EntropyOptions) -> np.ndarray:
    """Which candidates share a reference value, without running the reference.

    Parameters
    ----------
    hist : numpy.ndarray
        The histogram after :func:`apply_zero_policy` (float64 whole numbers).
    cands : numpy.ndarray
        Candidates ``i``.
    opts : EntropyOptions
        The options.

    Returns
    -------
    numpy.ndarray
        One int64 label a candidate: ``0`` where ``Q`` equals ``P`` bin for bin (the reference
        gives ``0.0 / log(log_base)``), ``k >= 1`` for classes whose members have bit-identical
        reference values, ``-1`` where nothing is known. :func:`pick_kernel_minimum`'s notes
        give the conditions and the argument.
    """
    label = np.full(cands.size, -1, dtype=np.int64)
    nonempty = np.flatnonzero(hist)
    if (
        opts.smoothing != "none"
        or cands.size == 0
        or nonempty.size == 0
        or nonempty.size < opts.min_nonempty_bins
        or not float(hist.sum()) <= 2.0**52  # every group total then an exact float64 sum
    ):
        return label
    cands = np.asarray(cands, dtype=np.int64)
    if opts.domain == "signed":
        z = hist.size // 2
        lo, hi = z - cands, z + cands + 1
    else:
        lo, hi = np.zeros_like(cands), cands
    length = hi - lo
    levels = opts.num_levels
    # nothing clipped: every non-empty bin inside the window
    inside = (lo <= nonempty[0]) & (nonempty[-1] < hi)
    if opts.grouping == "floor":
        inside &= length >= levels  # group_index's width is at least 1
    h = hist[nonempty]  # float64 whole numbers, exact
    # Q = P iff no two neighbouring non-empty bins with different counts share a group
    differ = np.flatnonzero(h[1:] != h[:-1])
    todo = np.flatnonzero(inside)
    step = max(1, _CHECK_BLOCK // max(1, differ.size))
    for s in range(0, todo.size, step):
        rows = todo[s : s + step]
        apart = ~(
            _group_of(nonempty[differ], lo[rows], length[rows], opts)
            == _group_of(nonempty[differ + 1], lo[rows], length[rows], opts)
        ).any(axis=1)
        label[rows[apart]] = 0
    # the others: classes of equal q sequences (tens of operations a bin: worth it against
    # the reference's ~35 us a candidate on sparse histograms only)
    todo = np.flatnonzero(inside & (label != 0))
    m = nonempty.size
    if m > _CLASS_MAX_NONEMPTY:
        return label
    csum = np.concatenate(([0], np.cumsum(h.astype(np.int64))))
    total = int(csum[-1])
    pos = np.arange(m)
    edge = np.ones((1, 1), dtype=bool)
    classes: dict[bytes, int] = {}
    step = max(1, _CHECK_BLOCK // m)
    for s in range(0, todo.size, step):
        rows = todo[s : s + step]
        group = _group_of(nonempty, lo[rows], length[rows], opts)
        # a group's non-empty bins are a run of consecutive non-empty bins: its first and last
        new = group[:, 1:] != group[:, :-1]
        ends = np.repeat(edge, rows.size, axis=0)
        first = np.maximum.accumulate(np.where(np.hstack([ends, new]), pos, 0), axis=1)
        last = np.where(np.hstack([new, ends]), pos, m - 1)[:, ::-1]
        last = np.minimum.accumulate(last, axis=1)[:, ::-1]
        g = csum[last + 1] - csum[first]  # group total (exact)
        n = last - first + 1  # the group's non-empty bins
        two = n & -n  # largest power of two dividing n
        dyadic = (g % (n // two) == 0).all(axis=1) & (two.max(axis=1) <= 2**53 // total)
        rest = np.flatnonzero(dyadic)
        g, n = g[rest], n[rest]
        q = g / n  # exact: dyadic, below 2**53
        # one class per distinct sequence of q; neighbouring candidates mostly share one, so
        # only the first row of each run of equal rows is looked up
        run = np.ones(rest.size, dtype=bool)
        run[1:] = (q[1:] != q[:-1]).any(axis=1)
        starts = np.flatnonzero(run)
        ids = [classes.setdefault(q[r].tobytes(), len(classes) + 1) for r in starts]
        label[rows[rest]] = np.repeat(ids, np.diff(np.append(starts, rest.size)))
    return label


def search_threshold(
    hist: Any,
    preset: str | EntropyOptions = DEFAULT_PRESET,
    **options: Any,
) -> ThresholdResult:
    """Find the KL-divergence-minimizing threshold of a histogram.

    Parameters
    ----------
    hist : ActivationHistogram or object with ``.counts`` and ``.amax``
        Integer counts over ``[0, amax]`` (``domain='abs'``) or ``[-amax, amax]``
        (``domain='signed'``).
    preset : str or EntropyOptions, default 'tensorrt'
        A name in :data:`PRESETS`, or options built by hand.
    **options
        Fields of :class:`EntropyOptions` overriding the preset.

    Returns
    -------
    ThresholdResult
        ``amax``, ``bin_index``, ``scale`` and the divergence curve. An ``amax == 0``
        histogram (an all-zero tensor) gives ``amax = 0`` and ``scale = 0`` without a search,
        as TensorRT writes it.

    Raises
    ------
    PresetError
        Unknown preset or option.
    HistogramError
        Invalid counts, an empty histogram, or fewer bins than levels.

    Notes
    -----
    The curve comes from the Numba kernels (same ``i``, divergences within 1e-9, the minimum
    re-checked with this module's reference) or from :func:`divergence_curve` itself, as
    :func:`kldiv._kernels.resolve` decides (``KLDIV_KERNELS=auto|numba|numpy``).
    """
    opts = resolve_options(preset, **options)
    name = preset_name(preset)
    counts, amax = histogram_counts(hist)
    num_bins = counts.size
    candidate_bins(num_bins, opts)  # validates bins vs levels and the candidate range
    _require_nonempty(counts)

    def explain(i: int) -> tuple[np.ndarray, np.ndarray]:
        p, q = distributions(apply_zero_policy(counts, opts), int(i), opts)
        return p / p.sum(), (q / q.sum() if q.sum() > 0 else q)

    common = {
        "method": "entropy",
        "preset": name,
        "options": opts.as_dict(),
        "histogram": hist,
        "explainer": explain,
    }
    if amax == 0.0:
        logger.debug("amax is 0 (all-zero tensor): threshold 0 without a search")
        return ThresholdResult(
            amax=0.0,
            bin_index=None,
            scale=amax_to_scale(0.0, divisor=opts.divisor),
            divergence=np.empty(0),
            candidates=np.empty(0, dtype=np.int64),
            **common,
        )

    kernels = _kernels.resolve()
    if kernels is not None:
        candidates, divergence, pos = kernel_search(counts, opts, kernels)
    else:
        candidates, divergence = divergence_curve(counts, opts)
        pos = pick_minimum(divergence, opts)
    m = int(candidates[pos])
    threshold = threshold_from_bin(m, num_bins, amax, opts)
    return ThresholdResult(
        amax=threshold,
        bin_index=m,
        scale=amax_to_scale(threshold, divisor=opts.divisor),
        divergence=divergence,
        candidates=candidates,
        **common,
    )


class _Counts:
    """Minimal histogram stand-in (``.counts``, ``.amax``) for doctests."""

    def __init__(self, counts: np.ndarray, amax: float) -> None:
        self.counts = counts
        self.amax = amax
