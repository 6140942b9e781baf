"""Threshold methods behind one dispatch: entropy (KL), minmax, percentile, mse, legacy.

:func:`choose_threshold` returns a :class:`~kldiv.scales.ThresholdResult` for every method, so
a calibration pipeline can switch method by name. The entropy method is
:func:`kldiv.entropy.search_threshold`; the others work on the same ``|x|`` histogram.

Examples
--------
>>> import numpy as np
>>> from kldiv.entropy import _Counts
>>> h = _Counts(np.array([5, 3, 1, 1], dtype=np.int64), 4.0)
>>> choose_threshold(h, "minmax").amax
4.0
>>> choose_threshold(h, "percentile", percentile=80.0).amax
2.0
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .defaults import (
    CLIP_WARN_FRACTION,
    DEFAULT_LEGACY_CUTOFF,
    DEFAULT_LEGACY_QUANTILE,
    DEFAULT_METHOD,
    DEFAULT_PERCENTILE,
    INT8_MAX,
    NUM_QUANT_LEVELS,
)
from .entropy import _require_nonempty, histogram_counts, search_threshold
from .errors import HistogramError, PresetError
from .scales import ThresholdResult, amax_to_scale, clipped_fraction

__all__ = [
    "METHODS",
    "check_legacy_options",
    "check_method_options",
    "check_percentile",
    "choose_threshold",
    "clipping_outliers",
    "legacy_threshold",
    "minmax_threshold",
    "mse_threshold",
    "percentile_threshold",
]

logger = logging.getLogger(__name__)


def _check_options(method: str, options: dict[str, Any], valid: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise PresetError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for method {method!r}; "
            f"valid options are: {', '.join(valid) or '(none)'}"
        )


def _nonempty(hist: Any) -> tuple[np.ndarray, float]:
    counts, amax = histogram_counts(hist)
    _require_nonempty(counts)
    return counts, amax


def minmax_threshold(
    hist: Any, *, absmax: float | None = None, divisor: int = INT8_MAX
) -> ThresholdResult:
    """``T = max |x|`` (``IInt8MinMaxCalibrator``, algorithm.md §6).

    Parameters
    ----------
    hist : ActivationHistogram or object with ``.counts`` and ``.amax``
        The ``|x|`` histogram (must hold at least one value).
    absmax : float, optional
        The exact largest ``|x|`` seen (:meth:`kldiv.collect.HistogramCollector.absmax`), which
        :func:`kldiv.pipeline.choose_thresholds` passes: a histogram's range may have grown
        beyond it. Without it, the histogram's range ``hist.amax``, an upper bound.
    divisor : int, default 127
        ``scale = T / divisor``.

    Returns
    -------
    ThresholdResult
        ``options["source"]`` says which of the two the threshold is.
    """
    counts, t = _nonempty(hist)
    exact = absmax is not None
    if absmax is not None:
        t = float(absmax)
        if not (math.isfinite(t) and t >= 0):
            raise HistogramError(f"absmax must be finite and >= 0, got {absmax!r}")
    return ThresholdResult(
        amax=t,
        bin_index=None,
        scale=amax_to_scale(t, divisor=divisor),
        method="minmax",
        options={"source": "largest |x| seen" if exact else "histogram range",
                 "divisor": divisor},
        histogram=hist,
        # the exact largest |x| clips nothing, whatever the bins say
        clipped_fraction=0.0 if exact else clipped_fraction(counts, float(hist.amax), t),
    )


def check_percentile(value: Any, *, option: str = "percentile") -> float:
    """A percentile of ``|x|`` in ``(0, 100]``, as a float.

    0 is refused: the first bin whose cumulative fraction reaches 0 is bin 0 whatever the
    values (even when it is empty), so its "threshold" is a constant, one bin width (upper
    edge) or 0 (lower edge, a zero scale), not a percentile of the data. ONNX Runtime's and
    ModelOpt's percentile calibrators accept 0 and return that constant.

    Raises
    ------
    PresetError
        A non-number, NaN, 0 or less, or above 100, naming the option.
    """
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real)
    if not (ok and 0.0 < float(value) <= 100.0):  # NaN fails the comparison
        raise PresetError(
            f"{option}={value!r} must be above 0 and at most 100, e.g. 99.99 (the share of "
            "|x| values the threshold covers)"
        )
    return float(value)


def percentile_threshold(
    hist: Any,
    *,
    percentile: float = DEFAULT_PERCENTILE,
    edge: str = "upper",
    divisor: int = INT8_MAX,
) -> ThresholdResult:
    """The ``percentile``-th percentile of ``|x|``, read from the histogram.

    The bin ``m`` where the cumulative fraction first reaches ``percentile / 100`` is found
    (ModelOpt's ``searchsorted`` rule); ``edge='upper'`` returns its upper edge ``(m + 1) * w``
    (every counted value is covered), ``edge='lower'`` its lower edge ``m * w`` (ModelOpt's
    ``_compute_amax_percentile``). ``percentile`` lies in ``(0, 100]``
    (:func:`check_percentile` says why 0 is refused).
    """
    check_percentile(percentile)
    if edge not in ("upper", "lower"):
        raise PresetError(f"edge={edge!r} must be 'upper' or 'lower'")
    counts, amax = _nonempty(hist)
    cdf = np.cumsum(counts / counts.sum())
    m = min(int(np.searchsorted(cdf, percentile / 100.0)), counts.size - 1)
    t = (m + (1 if edge == "upper" else 0)) * (amax / counts.size)
    return ThresholdResult(
        amax=t,
        bin_index=m,
        scale=amax_to_scale(t, divisor=divisor),
        method="percentile",
        options={"percentile": percentile, "edge": edge, "divisor": divisor},
        histogram=hist,
    )


def mse_threshold(
    hist: Any,
    *,
    start_bin: int = NUM_QUANT_LEVELS,
    stride: int = 1,
    levels: int = INT8_MAX,
    divisor: int = INT8_MAX,
) -> ThresholdResult:
    """The bin centre ``T`` minimizing the mean squared quantization error of the histogram.

    Every bin centre ``c_j = (j + 0.5) w`` stands for the values counted in bin ``j``;
    candidate ``i`` (``start_bin <= i < num_bins``) sets ``T = c_i`` and quantizes each centre
    to ``clamp(round(c / T * levels), -levels, levels) * T / levels``; its error is
    ``mean_j counts_j (q(c_j) - c_j)^2`` (ModelOpt's ``_compute_amax_mse``, in float64).
    The first minimum wins. The curve is in ``.divergence``.
    """
    counts, amax = _nonempty(hist)
    n = counts.size
    if not (isinstance(start_bin, int) and 0 <= start_bin < n and stride >= 1):
        raise PresetError(f"start_bin={start_bin!r} must be an int in [0, {n}) and stride >= 1")
    width = amax / n
    centers = (np.arange(n) + 0.5) * width
    weights = counts.astype(np.float64)
    candidates = np.arange(start_bin, n, stride, dtype=np.int64)
    mse = np.empty(candidates.size)
    for k, i in enumerate(candidates):
        t = centers[i]
        q = np.clip(np.round(centers / t * levels), -levels, levels) * (t / levels)
        mse[k] = float(np.mean(weights * (q - centers) ** 2))
    pos = int(np.argmin(mse))
    m = int(candidates[pos])
    t = float(centers[m]) if amax > 0 else 0.0
    return ThresholdResult(
        amax=t,
        bin_index=m,
        scale=amax_to_scale(t, divisor=divisor),
        method="mse",
        options={"start_bin": start_bin, "stride": stride, "levels": levels, "divisor": divisor},
        divergence=mse,
        candidates=candidates,
        histogram=hist,
    )


def check_legacy_options(quantile: float, regression_cutoff: float) -> None:
    """Raise :class:`PresetError` unless the legacy calibrator's options are usable.

    Both must lie in ``(0, 1]``. A cutoff below 1.0 is refused too: what TensorRT's legacy
    calibrator does with it is unknown (algorithm.md §4), and kldiv does not guess.
    """
    for name, value in (("quantile", quantile), ("regression_cutoff", regression_cutoff)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
            raise PresetError(f"{name}={value!r} must be a number in (0, 1]")
        if not (0.0 < float(value) <= 1.0):
            raise PresetError(
                f"{name}={value!r} is outside (0, 1]; the legacy calibrator's {name} is a "
                f"fraction, e.g. {DEFAULT_LEGACY_QUANTILE if name == 'quantile' else 1.0}"
            )
    if float(regression_cutoff) < 1.0:
        raise PresetError(
            f"regression_cutoff={regression_cutoff!r}: what TensorRT's legacy calibrator does "
            "with a cutoff below 1.0 is unknown (no real cache shows it; docs/fidelity.md), so "
            "kldiv does not reproduce it; use regression_cutoff=1.0"
        )


def legacy_threshold(
    hist: Any,
    *,
    quantile: float = DEFAULT_LEGACY_QUANTILE,
    regression_cutoff: float = DEFAULT_LEGACY_CUTOFF,
    divisor: int = INT8_MAX,
) -> ThresholdResult:
    """TensorRT's legacy calibrator (``IInt8LegacyCalibrator``) with regression cutoff 1.0.

    ``T = k * R / num_bins`` for the smallest bin edge ``k`` such that at most
    ``(1 - quantile) * N`` of the ``N`` counted values lie in bins ``>= k``; the same
    ``|x|`` histogram (and range growth) as the entropy calibrator. This fits TensorRT's
    sampleINT8 legacy cache on 8 of 8 tensors (algorithm.md §4, docs/fidelity.md).

    Parameters
    ----------
    hist : ActivationHistogram or object with ``.counts`` and ``.amax``
        The ``|x|`` histogram.
    quantile : float, default DEFAULT_LEGACY_QUANTILE (0.999999)
        In ``(0, 1]``.
    regression_cutoff : float, default DEFAULT_LEGACY_CUTOFF (1.0)
        Only 1.0 is accepted (see :func:`check_legacy_options`); it is written in the cache
        header.
    divisor : int, default 127
        ``scale = T / divisor``.

    Raises
    ------
    PresetError
        A quantile or cutoff outside ``(0, 1]``, or a cutoff below 1.0.
    """
    check_legacy_options(quantile, regression_cutoff)
    counts, amax = _nonempty(hist)
    n = counts.size
    tail = np.concatenate((np.cumsum(counts[::-1])[::-1], [0]))  # tail[k] = sum(counts[k:])
    allowed = (1.0 - float(quantile)) * float(counts.sum())
    k = int(np.flatnonzero(tail <= allowed)[0])
    t = k * (amax / n)
    return ThresholdResult(
        amax=t,
        bin_index=k,
        scale=amax_to_scale(t, divisor=divisor),
        method="legacy",
        options={
            "quantile": float(quantile),
            "regression_cutoff": float(regression_cutoff),
            "divisor": divisor,
        },
        histogram=hist,
    )


#: method name -> function(hist, **options) -> ThresholdResult
METHODS: dict[str, Callable[..., ThresholdResult]] = {
    "entropy": search_threshold,
    "minmax": minmax_threshold,
    "percentile": percentile_threshold,
    "mse": mse_threshold,
    "legacy": legacy_threshold,
}

_OPTIONS = {
    "minmax": ("divisor",),
    "percentile": ("percentile", "edge", "divisor"),
    "mse": ("start_bin", "stride", "levels", "divisor"),
    "legacy": ("quantile", "regression_cutoff", "divisor"),
}


def check_method_options(method: str, options: Mapping[str, Any]) -> None:
    """Check a method's name and options before any data is read (no histogram needed).

    Raises
    ------
    PresetError
        An unknown method or option name, a percentile outside ``(0, 100]``, or a legacy
        quantile / cutoff that cannot be used.
    """
    if method not in METHODS:
        raise PresetError(
            f"unknown threshold method {method!r}; choose one of {', '.join(METHODS)}"
        )
    if method == "entropy":
        return
    _check_options(method, dict(options), _OPTIONS[method])
    if method == "percentile" and "percentile" in options:
        check_percentile(options["percentile"])
    if method == "legacy":
        check_legacy_options(
            options.get("quantile", DEFAULT_LEGACY_QUANTILE),
            options.get("regression_cutoff", DEFAULT_LEGACY_CUTOFF),
        )


def clipping_outliers(
    results: Mapping[str, ThresholdResult], *, limit: float = CLIP_WARN_FRACTION
) -> dict[str, float]:
    """Tensors whose threshold clips more than ``limit`` of their histogram's mass.

    Logs one warning naming them (with their clipped fractions) when there are any.

    Parameters
    ----------
    results : mapping of str to ThresholdResult
        Per tensor.
    limit : float, default CLIP_WARN_FRACTION (0.05)
        The flag rule: more than this fraction of the values saturate (docs/fidelity.md).

    Returns
    -------
    dict of str to float
        ``{tensor: clipped fraction}``, in the results' order.
    """
    flagged = {
        name: float(r.clipped_fraction)
        for name, r in results.items()
        if r.clipped_fraction is not None and float(r.clipped_fraction) > limit
    }
    if flagged:
        logger.warning(
            "%d tensor(s) clip more than %.3g%% of their values at the chosen threshold: %s "
            "(check their histograms, e.g. with `kldiv search --curve`)",
            len(flagged), 100 * limit,
            ", ".join(f"{n} ({100 * f:.3g}%)" for n, f in flagged.items()),
        )
    return flagged


def choose_threshold(hist: Any, method: str = DEFAULT_METHOD, **options: Any) -> ThresholdResult:
    """Choose the threshold of one histogram with the named method.

    Parameters
    ----------
    hist : ActivationHistogram or object with ``.counts`` and ``.amax``
        The ``|x|`` histogram.
    method : {'entropy', 'minmax', 'percentile', 'mse', 'legacy'}
        ``entropy`` takes ``preset=`` and :class:`~kldiv.entropy.EntropyOptions` fields;
        ``percentile`` takes ``percentile=`` and ``edge=``; ``mse`` takes
        ``start_bin=``, ``stride=``, ``levels=``; ``legacy`` takes ``quantile=`` and
        ``regression_cutoff=``; every method takes ``divisor=``.

    Returns
    -------
    ThresholdResult

    Raises
    ------
    PresetError
        Unknown method or option.
    HistogramError
        Invalid or empty histogram.
    """
    check_method_options(method, options)
    return _choose_checked(hist, method, options)


def _choose_checked(hist: Any, method: str, options: Mapping[str, Any]) -> ThresholdResult:
    """:func:`choose_threshold` of a method and options :func:`check_method_options` passed."""
    result: ThresholdResult = METHODS[method](hist, **options)
    if not math.isfinite(result.amax):  # pragma: no cover - guarded by histogram_counts
        raise HistogramError(f"method {method!r} produced a non-finite threshold")
    return result
