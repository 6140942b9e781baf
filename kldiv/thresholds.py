"""Threshold methods behind one dispatch: entropy (KL), minmax, percentile, mse.

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
from typing import Any

import numpy as np

from .defaults import DEFAULT_METHOD, DEFAULT_PERCENTILE, INT8_MAX, NUM_QUANT_LEVELS
from .entropy import _require_nonempty, histogram_counts, search_threshold
from .errors import HistogramError, PresetError
from .scales import ThresholdResult, amax_to_scale

__all__ = [
    "METHODS",
    "choose_threshold",
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


def minmax_threshold(hist: Any, *, divisor: int = INT8_MAX) -> ThresholdResult:
    """``T = max |x|``: the histogram's range (``IInt8MinMaxCalibrator``, algorithm.md §6).

    :func:`kldiv.pipeline.choose_thresholds` uses the collector's exact largest ``|x|``
    instead, when the range has grown beyond it.
    """
    _, t = _nonempty(hist)
    return ThresholdResult(
        amax=t,
        bin_index=None,
        scale=amax_to_scale(t, divisor=divisor),
        method="minmax",
        options={"divisor": divisor},
        histogram=hist,
    )


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
    ``_compute_amax_percentile``).
    """
    if not (0.0 <= percentile <= 100.0):
        raise PresetError(f"percentile={percentile!r} must lie in [0, 100], e.g. 99.99")
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


def _entropy(hist: Any, **options: Any) -> ThresholdResult:
    return search_threshold(hist, **options)


#: method name -> function(hist, **options) -> ThresholdResult
METHODS = {
    "entropy": _entropy,
    "minmax": minmax_threshold,
    "percentile": percentile_threshold,
    "mse": mse_threshold,
}

_OPTIONS = {
    "minmax": ("divisor",),
    "percentile": ("percentile", "edge", "divisor"),
    "mse": ("start_bin", "stride", "levels", "divisor"),
}


def choose_threshold(hist: Any, method: str = DEFAULT_METHOD, **options: Any) -> ThresholdResult:
    """Choose the threshold of one histogram with the named method.

    Parameters
    ----------
    hist : ActivationHistogram or object with ``.counts`` and ``.amax``
        The ``|x|`` histogram.
    method : {'entropy', 'minmax', 'percentile', 'mse'}
        ``entropy`` takes ``preset=`` and :class:`~kldiv.entropy.EntropyOptions` fields;
        ``percentile`` takes ``percentile=`` and ``edge=``; ``mse`` takes
        ``start_bin=``, ``stride=``, ``levels=``; every method takes ``divisor=``.

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
    if method not in METHODS:
        raise PresetError(
            f"unknown threshold method {method!r}; choose one of {', '.join(METHODS)}"
        )
    if method != "entropy":
        _check_options(method, options, _OPTIONS[method])
    result = METHODS[method](hist, **options)
    if not math.isfinite(result.amax):  # pragma: no cover - guarded by histogram_counts
        raise HistogramError(f"method {method!r} produced a non-finite threshold")
    return result
