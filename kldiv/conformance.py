"""Conformance against real TensorRT caches whose model and calibration data are public.

A :class:`ConformanceCase` names a model, a function that rebuilds the calibration batches
TensorRT saw, the cache TensorRT wrote, and the method (``"entropy"`` with a preset, or
``"legacy"``). :func:`run_case` calibrates the same batches with kldiv and compares every cache
entry: TensorRT's hex and kldiv's, the bin TensorRT's value implies under kldiv's histogram
range, how many bins and float32 ulps apart the two are, and why any ulps remain.
:func:`sampleint8_cases` lists TensorRT's sampleINT8 caches (MNIST LeNet, TensorRT 5.1, 6 and
7.0); another reproducible cache is one more :class:`ConformanceCase`.

Examples
--------
>>> from kldiv.conformance import run_case, sampleint8_cases   # doctest: +SKIP
>>> for case in sampleint8_cases("shared/fixtures"):           # doctest: +SKIP
...     print(run_case(case).to_text())
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .comparison import ulps_between
from .defaults import DEFAULT_PRESET
from .errors import DataSourceError
from .scales import CalibrationTable, bits_to_scale, scale_to_bits

__all__ = [
    "CaseReport",
    "ConformanceCase",
    "EntryReport",
    "run_case",
    "sampleint8_accuracy",
    "sampleint8_cases",
]

log = logging.getLogger(__name__)

Batches = Iterable[Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class ConformanceCase:
    """One real TensorRT cache and everything needed to reproduce it.

    Parameters
    ----------
    name : str
        A short label (``"sampleINT8 TRT 7.0"``).
    model : path-like
        The ONNX model under TensorRT's tensor names.
    batches : callable
        ``batches() -> iterable of {input name: array}``: the calibration batches TensorRT
        saw, in order (the first batch sets each histogram's range).
    cache : path-like
        The cache TensorRT wrote.
    method : {'entropy', 'legacy'}, default 'entropy'
        How kldiv calibrates (``legacy`` reads its quantile from the cache header).
    preset : str, default DEFAULT_PRESET
        Entropy preset.
    options : mapping, optional
        Options of the preset / method.
    notes : str, optional
        Where the batches come from (shown in reports).
    """

    name: str
    model: str | os.PathLike[str]
    batches: Callable[[], Batches]
    cache: str | os.PathLike[str]
    method: str = "entropy"
    preset: str = DEFAULT_PRESET
    options: Mapping[str, Any] = field(default_factory=dict)
    notes: str = ""


@dataclass(frozen=True)
class EntryReport:
    """One cache entry, TensorRT against kldiv.

    Attributes
    ----------
    tensor : str
        The cache entry's name.
    trt_hex, kldiv_hex : str
        The two scales as a cache holds them.
    range : float
        kldiv's histogram range ``R`` of the tensor whose histogram gave the threshold (the
        pooling input's, for a pooling output that inherits its input's scale).
    kldiv_bin : int or None
        The bin kldiv chose (``i`` of the entropy search, edge ``k`` of the legacy rule).
    trt_bin : float
        The bin TensorRT's value implies under kldiv's range: ``T / (R / num_bins) - offset``
        with ``T = scale * divisor`` (127) and ``offset`` 0.5 (entropy) or 0 (legacy); the
        position :func:`kldiv.explain.place_value` gives.
    bins_apart : int or None
        ``round(trt_bin) - kldiv_bin``.
    ulps_apart : int or None
        Float32 ulps between the two scales (:func:`kldiv.comparison.ulps_between`, as
        ``kldiv compare`` counts them); None when one is Inf or NaN.
    reason : str
        Why any ulps remain.
    source : str or None
        The tensor whose threshold this entry inherits (pooling outputs).
    bin_rule_off : int or None
        The bin kldiv chooses without the degenerate-window rule (entropy only).
    """

    tensor: str
    trt_hex: str
    kldiv_hex: str
    range: float
    kldiv_bin: int | None
    trt_bin: float
    bins_apart: int | None
    ulps_apart: int | None
    reason: str
    source: str | None = None
    bin_rule_off: int | None = None

    @property
    def in_trt_bin(self) -> bool:
        """Kldiv's bin is the one TensorRT's value implies."""
        return self.bins_apart == 0

    @property
    def identical(self) -> bool:
        """Bit-identical scales."""
        return self.ulps_apart == 0


@dataclass(frozen=True)
class CaseReport:
    """Every entry of one case, and what the case adds up to.

    ``table`` is kldiv's table for every tensor it calibrated, cache entries or not; a value
    alias (Flatten, Reshape ... of a calibrated tensor, ``pool2_flat`` in sampleINT8, which
    Caffe's InnerProduct never materializes) carries its source's scale.
    """

    case: ConformanceCase
    entries: tuple[EntryReport, ...]
    not_in_cache: tuple[str, ...] = ()
    table: Any = None  # kldiv's whole table (CalibrationTable), for accuracy runs

    @property
    def in_bin(self) -> int:
        """Entries in TensorRT's bin."""
        return sum(e.in_trt_bin for e in self.entries)

    @property
    def identical(self) -> list[str]:
        """Entries whose scale is bit-identical."""
        return [e.tensor for e in self.entries if e.identical]

    @property
    def max_ulps(self) -> int:
        """The largest distance in float32 ulps."""
        return max((e.ulps_apart for e in self.entries if e.ulps_apart is not None), default=0)

    @property
    def rule_changes(self) -> list[str]:
        """Entries whose bin the degenerate-window rule moves."""
        return [
            e.tensor for e in self.entries
            if e.bin_rule_off is not None and e.bin_rule_off != e.kldiv_bin
        ]

    def to_text(self) -> str:
        """The case as a table with a one-line summary."""
        head = ("tensor", "TensorRT", "kldiv", "range R", "kldiv bin", "TRT bin", "bins",
                "ulps", "why")
        rows = [head]
        for e in self.entries:
            rows.append((
                e.tensor + (f" (= {e.source})" if e.source else ""),
                e.trt_hex,
                e.kldiv_hex,
                f"{e.range:.9g}",
                "-" if e.kldiv_bin is None else str(e.kldiv_bin),
                f"{e.trt_bin:.4f}",
                "-" if e.bins_apart is None else f"{e.bins_apart:+d}",
                "-" if e.ulps_apart is None else str(e.ulps_apart),
                e.reason,
            ))
        width = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
        lines = [
            "  ".join(
                [c.ljust(width[i]) if i == 0 else c.rjust(width[i]) for i, c in enumerate(r[:-1])]
                + [r[-1]]
            )
            for r in rows
        ]
        lines.insert(1, "-" * len(lines[0]))
        n = len(self.entries)
        method = self.case.method + (f" ({self.case.preset})" if self.case.method == "entropy"
                                     else "")
        summary = (
            f"{self.case.name} [{method}]: {self.in_bin}/{n} in TensorRT's bin, "
            f"{len(self.identical)}/{n} bit-identical, at most {self.max_ulps} ulps apart"
        )
        if self.case.method == "entropy":
            summary += (f"; degenerate-window rule changes {len(self.rule_changes)} of {n} bins"
                        + (f" ({', '.join(self.rule_changes)})" if self.rule_changes else ""))
        foot = [summary]
        if self.not_in_cache:
            foot.append(f"  kldiv tensors without a cache entry (not compared): "
                        f"{', '.join(self.not_in_cache)}")
        return "\n".join([f"== {self.case.name}: {Path(self.case.cache).name}", *lines, *foot])


def _ulps(a_bits: int, b_bits: int) -> int | None:
    d = ulps_between(a_bits, b_bits)
    return None if d is None else abs(d)


def _reason(
    ulps: int | None, bins_apart: int | None, implied_range: float, range_: float
) -> str:
    if ulps == 0:
        return "bit-identical"
    if ulps is None:
        return "a scale is Inf or NaN"
    if bins_apart is None:
        return "no bin (not a searched threshold)"
    if bins_apart != 0:
        return f"a different bin ({bins_apart:+d})"
    r_ulps = _ulps(scale_to_bits(implied_range), scale_to_bits(range_))
    return (
        f"same bin; the range differs: TensorRT's value implies R = {implied_range:.9g}, "
        f"{'an undefined number of' if r_ulps is None else r_ulps} float32 ulps from kldiv's"
    )


def _check_names(case: ConformanceCase, cache_names: list[str], collected: list[str]) -> None:
    missing = [n for n in cache_names if n not in collected]
    if missing:
        raise DataSourceError(
            f"conformance case {case.name!r}: the cache {Path(case.cache).name} holds "
            f"{len(missing)} tensor(s) the model does not calibrate: {', '.join(missing)}; "
            f"the model's tensors are {', '.join(collected)}. Fix the model's tensor names "
            "(they must be TensorRT's) or the case's cache"
        )


def run_case(case: ConformanceCase, *, collector: Any = None) -> CaseReport:
    """Calibrate ``case``'s batches with kldiv and compare every entry of its cache.

    Parameters
    ----------
    case : ConformanceCase
        The case.
    collector : HistogramCollector, optional
        Histograms already collected from ``case``'s model and batches (e.g. to compare several
        options on one collection): the model is not run again.

    Raises
    ------
    DataSourceError
        Before the model runs, when the cache holds names the model does not calibrate (all
        listed), or the model or cache cannot be read.
    """
    from .cachefile import read_cache
    from .entropy import resolve_options
    from .explain import place_value
    from .pipeline import choose_thresholds, collect_histograms
    from .runners import calibration_tensor_names, load_model

    cache = read_cache(case.cache)
    proto, _, _ = load_model(case.model)
    inputs, outputs, _ = calibration_tensor_names(proto)
    _check_names(case, list(cache), [*inputs, *outputs])

    options = dict(case.options)
    if case.method == "legacy":
        header = cache.header
        if header is None or header.kind != "legacy":
            raise DataSourceError(
                f"conformance case {case.name!r}: method 'legacy' needs a legacy cache "
                f"(header '0 <cutoff> <quantile>'), {Path(case.cache).name} is not one"
            )
        options.setdefault("quantile", header.quantile)
        options.setdefault("regression_cutoff", header.cutoff)
    if collector is None:
        collector = collect_histograms(case.model, case.batches())
    results = choose_thresholds(collector, preset=case.preset, method=case.method, **options)
    rule_off: dict[str, Any] = {}
    if case.method == "entropy":
        rule_off = choose_thresholds(
            collector, preset=case.preset, method="entropy",
            **{**options, "min_nonempty_bins": 1},
        )
    opts = None  # the rule that made the scales: divisor and offset (legacy: 127, 0)
    if case.method == "entropy":
        fields = set(resolve_options(case.preset).as_dict())
        opts = resolve_options(case.preset, **{k: v for k, v in options.items() if k in fields})
    offset = 0.0 if opts is None else opts.threshold_offset
    entries = []
    for name in cache:
        r = results[name]
        source = None
        hist_name = name
        while results[hist_name].method == "inherited":  # pooling chains: the searched tensor
            hist_name = results[hist_name].options["source"]
            source = hist_name
        searched = results[hist_name]
        hist = collector[hist_name]
        trt_bits = cache.bits(name)
        placed = place_value(hist.counts, hist.amax, bits_to_scale(trt_bits), options=opts)
        t_trt = placed.amax
        trt_bin = placed.position - offset
        kbin = searched.bin_index
        bins_apart = None if kbin is None or math.isnan(trt_bin) else round(trt_bin) - kbin
        implied_range = (
            t_trt * hist.num_bins / (kbin + offset) if kbin is not None and kbin + offset > 0
            else math.nan
        )
        ulps = _ulps(trt_bits, scale_to_bits(r.scale))
        off = rule_off.get(hist_name)
        entries.append(EntryReport(
            tensor=name,
            trt_hex=cache.hex(name),
            kldiv_hex=r.scale_hex,
            range=hist.amax,
            kldiv_bin=kbin,
            trt_bin=trt_bin,
            bins_apart=bins_apart,
            ulps_apart=ulps,
            reason=_reason(ulps, bins_apart, implied_range, hist.amax),
            source=source,
            bin_rule_off=None if off is None else off.bin_index,
        ))
    not_in_cache = tuple(n for n in collector.names if n not in cache)
    # value aliases already carry their source's scale (the alias rule of choose_thresholds)
    table = CalibrationTable((n, r.scale) for n, r in results.items())
    return CaseReport(case, tuple(entries), not_in_cache, table)


# ------------------------------------------------------------------------------ sampleINT8
def _sampleint8_dir(fixtures: str | os.PathLike[str]) -> Path:
    folder = Path(fixtures) / "conformance" / "sampleint8"
    if not (folder / "mnist_lenet.onnx").is_file():
        raise DataSourceError(
            f"sampleINT8 conformance data not found in {folder}; point fixtures at the shared "
            "fixtures folder (it holds conformance/sampleint8/ and trt-caches/)"
        )
    return folder


def _batches(images: np.ndarray, size: int) -> list[dict[str, np.ndarray]]:
    return [{"data": images[k:k + size]} for k in range(0, images.shape[0], size)]


def sampleint8_cases(fixtures: str | os.PathLike[str]) -> list[ConformanceCase]:
    """TensorRT's sampleINT8 caches and their batches (``conformance/sampleint8/README.md``).

    * TensorRT 7.0, EntropyCalibration2: training images 50–549 (``getBatch()`` advances the
      stream before reading it), pixels ``float(v) / 255.f``, 10 batches of 50;
    * TensorRT 5.1, EntropyCalibration2: test images 0–499 × 2⁻⁸ (Caffe's TEST-phase data
      layer, scale 0.00390625), 10 batches of 50;
    * TensorRT 6, legacy calibrator (quantile 1 − 1e-6, cutoff 1.0 from its header): the
      TensorRT 5.1 image set.

    Parameters
    ----------
    fixtures : path-like
        The shared fixtures folder (holding ``conformance/sampleint8`` and ``trt-caches``).
    """
    folder = _sampleint8_dir(fixtures)
    caches = Path(fixtures) / "trt-caches"
    model = folder / "mnist_lenet.onnx"

    def trt7() -> Batches:
        with np.load(folder / "mnist_train_0_550.npz") as f:
            images = f["images"][50:550].astype(np.float32) / np.float32(255.0)
        return _batches(images, 50)

    def trt51() -> Batches:
        with np.load(folder / "mnist_test.npz") as f:
            images = f["images"][0:500].astype(np.float32) * np.float32(2.0**-8)
        return _batches(images, 50)

    return [
        ConformanceCase("sampleINT8 TRT 7.0", model, trt7,
                        caches / "sampleint8-mnist-trt7000.cache",
                        notes="train[50:550] / 255, 10 batches of 50"),
        ConformanceCase("sampleINT8 TRT 5.1", model, trt51,
                        caches / "sampleint8-mnist-trt5100.cache",
                        notes="test[0:500] * 2^-8, 10 batches of 50"),
        ConformanceCase("sampleINT8 legacy (TRT 6)", model, trt51,
                        caches / "legacy-mnist-trt6.cache", method="legacy",
                        notes="test[0:500] * 2^-8, 10 batches of 50 (the TRT 5.1 set)"),
    ]


def sampleint8_accuracy(
    fixtures: str | os.PathLike[str], table: Mapping[str, Any], *, scale: float = 1 / 255
) -> dict[str, float]:
    """Top-1 on the MNIST test set: the FP32 model, and its Q/DQ copy with ``table``'s scales.

    Both run in onnxruntime (CPU); the Q/DQ model is :func:`kldiv.qdq.to_qdq_onnx` with its
    defaults (per-channel int8 weights, Q/DQ on the inputs of Conv/Gemm/...).

    Parameters
    ----------
    fixtures : path-like
        The shared fixtures folder.
    table : CalibrationTable or mapping of tensor name -> scale
        The scales (e.g. reproduced from a :class:`ConformanceCase`).
    scale : float, default 1/255
        Pixel scale of the test images (the TRT 7.0 sample's ``/ 255``).

    Returns
    -------
    dict
        ``{"fp32": top-1, "int8": top-1, "agreement": top-1 agreement, "n": images}``.
    """
    from .evaluate import evaluate
    from .qdq import to_qdq_onnx

    folder = _sampleint8_dir(fixtures)
    with np.load(folder / "mnist_test.npz") as f:
        images = f["images"].astype(np.float32) * np.float32(scale)
        labels = f["labels"].astype(np.int64)
    model = folder / "mnist_lenet.onnx"
    qdq = to_qdq_onnx(model, table)
    report = evaluate(model, qdq, _batches(images, 500), labels, topk=(1,), output="prob")
    assert report.fp32_accuracy is not None and report.quantized_accuracy is not None
    return {
        "fp32": report.fp32_accuracy[1],
        "int8": report.quantized_accuracy[1],
        "agreement": report.agreement[1],
        "n": float(report.n),
    }
