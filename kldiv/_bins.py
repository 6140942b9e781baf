"""Argument checks and float rounding shared by the CPU and GPU histogram fills."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from .defaults import NUM_BINS
from .errors import HistogramError

__all__: list[str] = []


def _check_num_bins(num_bins: Any) -> int:
    if isinstance(num_bins, bool) or not isinstance(num_bins, numbers.Integral) or num_bins < 1:
        raise HistogramError(
            f"num_bins must be a positive integer, got {num_bins!r}; TensorRT uses {NUM_BINS}"
        )
    return int(num_bins)


def _check_amax(amax: Any, num_bins: int) -> float:
    try:
        value = float(amax)
    except (TypeError, ValueError):
        raise HistogramError(f"amax must be a number, got {amax!r}") from None
    if not math.isfinite(value) or value < 0:
        raise HistogramError(
            f"amax must be finite and >= 0, got {value!r}; pass the largest |x| to cover "
            "(or use growth='pow2'/'append' to find it from the data)"
        )
    if value > 0 and value / num_bins < np.finfo(np.float64).tiny:
        raise HistogramError(
            f"amax={value!r} is too small to split into {num_bins} float64 bins; "
            "rescale the data (e.g. multiply by 2**100) or use fewer bins"
        )
    return value


def _float_threshold(dtype: np.dtype[Any], threshold: float) -> np.floating[Any] | None:
    """``threshold`` rounded *up* to the float type ``dtype`` (None when that overflows).

    ``x >= t`` in that type is then exactly ``float64(x) >= threshold``.
    """
    t = dtype.type(threshold)
    if float(t) < threshold:
        t = np.nextafter(t, dtype.type(np.inf))
    return None if np.isinf(t) else t
