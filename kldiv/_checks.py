"""Checks of calibration options, run before any model or data is touched.

The library (:func:`kldiv.pipeline.calibrate`, :func:`~kldiv.pipeline.collect_histograms`,
:func:`~kldiv.pipeline.calibrate_histograms`) and the command line call the same functions,
so an option is accepted or refused the same way by both, and the refusal comes before the
work, never after it.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

from .defaults import MAX_NUM_BINS, NUM_BINS
from .errors import HistogramError, PresetError

__all__ = [
    "check_count",
    "check_header_choice",
    "check_num_bins",
    "check_options",
    "check_preset_bins",
    "header_algorithm",
]

#: Methods whose thresholds no TensorRT calibrator computes: the cache header must name the
#: calibrator that will read the cache, and only the user knows which one that is.
_NO_TRT_CALIBRATOR = ("percentile", "mse")
#: Results whose method is a graph rule (the scale of another tensor or a bound), not a method.
RULE_METHODS = ("activation-bound", "inherited", "alias")


def check_count(name: str, value: Any, *, option: str | None = None) -> int | None:
    """``None``, or an integer >= 1 (``batch_size``, ``max_batches``).

    Raises
    ------
    PresetError
        For 0, negative numbers and non-integers, naming the option.
    """
    if value is None:
        return None
    label = option or name
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise PresetError(f"{label} must be a whole number >= 1, got {value!r}")
    if value < 1:
        hint = "leave it out to use every batch" if name == "max_batches" else (
            "leave it out to keep the source's batches (image folders: the default size)"
        )
        raise PresetError(f"{label} must be >= 1, got {value}; {hint}")
    return int(value)


def check_num_bins(num_bins: Any, *, option: str = "num_bins") -> int:
    """An integer in ``[1, MAX_NUM_BINS]``.

    The bound: every collected tensor holds ``num_bins`` int64 counts (65,536 bins are 512 KiB a
    tensor, ~110 MiB for a 220-tensor model, before the ``pow2`` merge copies), and the entropy
    search costs about ``num_bins**2 / 2`` operations a tensor; MXNet's 8,001 bins are the
    largest any reference implementation uses.

    Raises
    ------
    HistogramError
        Naming the option and the limit.
    """
    value = -1
    if not isinstance(num_bins, bool) and isinstance(num_bins, numbers.Integral):
        value = int(num_bins)
    if value < 1:
        raise HistogramError(
            f"{option} must be a positive whole number, got {num_bins!r}; TensorRT uses {NUM_BINS}"
        )
    if value > MAX_NUM_BINS:
        raise HistogramError(
            f"{option}={value:,} is above the limit of {MAX_NUM_BINS:,} bins (the counts of "
            "every tensor are kept in memory and the entropy search grows with the square of "
            f"the bin count); TensorRT uses {NUM_BINS}, MXNet 8001"
        )
    return value


def check_options(
    *,
    method: str,
    preset: Any,
    options: Mapping[str, Any] | None,
    num_bins: int | None,
) -> None:
    """The method exists, its options are valid, and the histograms fit the preset.

    Run before collecting: an entropy preset that needs more (or an odd number of) bins than
    ``num_bins`` fails here, not after the model ran. ``num_bins=None`` skips the bin check
    (histograms loaded from a file: :func:`check_preset_bins` once they are read).

    Raises
    ------
    PresetError, HistogramError
        Naming the option and what to change.
    """
    from .entropy import resolve_options
    from .graph import GraphRules
    from .thresholds import check_method_options

    opts = dict(options or {})
    # the graph rules are fields of the entropy options, and options of their own elsewhere
    rules = {} if method == "entropy" else {
        key: opts.pop(key) for key in GraphRules.names() if key in opts
    }
    check_method_options(method, opts)  # the method's name, its options' names and values
    if method == "entropy":
        resolved = resolve_options(preset, **opts)
        if num_bins is not None:
            _check_bins(preset, resolved, num_bins)
        return
    for key, value in rules.items():
        if value is not None and not isinstance(value, bool):
            raise PresetError(f"option {key}={value!r} must be True or False")


def _check_bins(preset: Any, resolved: Any, num_bins: int) -> None:
    from .entropy import candidate_bins, preset_name

    try:
        candidate_bins(num_bins, resolved)
    except (HistogramError, PresetError) as exc:
        name = preset_name(preset) or "options"
        raise type(exc)(f"preset {name!r} with {num_bins} bins: {exc}") from None


def check_preset_bins(
    *, method: str, preset: Any, options: Mapping[str, Any] | None, num_bins: int
) -> None:
    """An entropy preset's search fits histograms of ``num_bins`` bins (other methods: any).

    The part of :func:`check_options` that needs the histograms, for histograms read from a
    file after :func:`check_options` checked the rest.

    Raises
    ------
    PresetError, HistogramError
        Naming the preset and the bin count.
    """
    from .entropy import resolve_options

    if method == "entropy":
        _check_bins(preset, resolve_options(preset, **dict(options or {})), num_bins)


def header_algorithm(method: str, algorithm: str | None) -> str:
    """The calibration algorithm a cache made with ``method`` names in its header.

    ``minmax`` results name ``MinMaxCalibration`` (``legacy`` the legacy calibrator's header)
    and entropy results ``EntropyCalibration2`` unless told otherwise. TensorRT has no
    percentile or MSE calibrator, so for those the caller must say which calibrator will read
    the cache (``algorithm="entropy2"`` for ``IInt8EntropyCalibrator2``, ...): a header
    claiming an algorithm the numbers did not come from is written only when asked for.

    Raises
    ------
    PresetError
        ``method`` is percentile or mse and ``algorithm`` is None; or ``algorithm`` is unknown.
    """
    from .cachefile import normalize_algorithm
    from .defaults import DEFAULT_ALGORITHM

    if algorithm is not None:
        try:
            return normalize_algorithm(algorithm)
        except ValueError as exc:
            raise PresetError(str(exc)) from None
    if method in _NO_TRT_CALIBRATOR:
        raise PresetError(
            f"no TensorRT calibrator computes {method} thresholds, so the cache header cannot "
            "say which one made them; name the calibrator that will read the cache: "
            "--algorithm entropy2 (algorithm='entropy2') for IInt8EntropyCalibrator2, or "
            "minmax, entropy, legacy"
        )
    if method in ("minmax", "legacy"):  # the calibrators of those names
        return method
    return DEFAULT_ALGORITHM


def check_header_choice(trt_version: Any, algorithm: str | None, method: str) -> None:
    """Check that the TensorRT version and header algorithm can be written.

    See :func:`kldiv.cachefile.check_trt_version` and :func:`header_algorithm`.
    """
    from .cachefile import check_trt_version

    check_trt_version(trt_version)
    header_algorithm(method, algorithm)
