"""``calibrate()``: calibration data → model → histograms → thresholds → :class:`Calibration`.

The three steps are public so that each can be changed or inspected:

1. :func:`collect_histograms` runs the model over the data (one batch at a time) and returns
   a :class:`~kldiv.collect.HistogramCollector` with the model hash and data fingerprint in
   ``meta`` and the graph's facts (:class:`~kldiv.graph.GraphFacts`) in ``graph``;
2. :func:`choose_thresholds` picks a threshold per histogram (an entropy preset, or another
   method), applying the preset's graph rules to the graph facts it is given, and returns the
   :class:`~kldiv.scales.ThresholdResult` of each tensor;
3. :func:`build_table` turns those into a :class:`~kldiv.scales.CalibrationTable` with the
   TensorRT header and the provenance.

:func:`calibrate` does all three and returns a :class:`Calibration` (table, per-tensor
results, histograms, graph facts); :func:`calibrate_histograms` does steps 2 and 3 on
histograms collected before (a collector or a saved ``.npz`` file).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import thresholds as _thresholds
from ._checks import (
    RULE_METHODS,
    check_count,
    check_header_choice,
    check_num_bins,
    check_options,
    check_preset_bins,
    header_algorithm,
)
from .collect import HistogramCollector
from .data import Preprocess, as_source
from .defaults import (
    DEFAULT_ALGORITHM,
    DEFAULT_MAX_MEMORY,
    DEFAULT_METHOD,
    DEFAULT_ORT_OPTIMIZATION,
    DEFAULT_OVERLAP,
    DEFAULT_PRESET,
    DEFAULT_RANGE_POLICY,
    DEFAULT_TRT_VERSION,
    NUM_BINS,
)
from .entropy import EntropyOptions, preset_name, resolve_options, search_threshold
from .errors import DataSourceError, HistogramError, NonFiniteError, PresetError
from .graph import GraphFacts, GraphRules
from .scales import CalibrationTable, ThresholdResult, amax_to_scale

__all__ = [
    "METHODS",
    "Calibration",
    "attach_graph_facts",
    "build_table",
    "calibrate",
    "calibrate_histograms",
    "choose_thresholds",
    "collect_histograms",
    "data_fingerprint",
]

log = logging.getLogger(__name__)

#: Threshold methods :func:`calibrate` accepts.
METHODS: tuple[str, ...] = tuple(_thresholds.METHODS)

#: Called after each batch with (batch index, samples in the batch).
ProgressCallback = Callable[[int, int], None]


def batch_digest(feed: Mapping[str, np.ndarray]) -> bytes:
    """SHA-256 of one batch as fed: input names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name in sorted(feed):
        arr = np.ascontiguousarray(feed[name])
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.data.cast("B"))
    return h.digest()


class _Fingerprint:
    """SHA-256 over the batches' digests (:func:`batch_digest`), in order.

    The same value whether the batches were read in one process or in shards on several
    workers.
    """

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.batches = 0
        self.samples = 0

    def update(self, feed: Mapping[str, np.ndarray], samples: int | None = None) -> None:
        self.add_digest(batch_digest(feed))
        self.samples += batch_samples(feed) if samples is None else samples

    def add_digest(self, digest: bytes) -> None:
        """Chain one batch's digest (a shard's, in batch order)."""
        self._h.update(digest)
        self.batches += 1

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def peak_memory_mb() -> float | None:
    """The peak resident memory of this process so far, in MB (``None`` where unknown)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return round(kb / 1024, 1)


def batch_samples(feed: Mapping[str, np.ndarray]) -> int:
    """Samples in a batch: the first input's leading dimension (1 for a scalar input)."""
    first = next(iter(feed.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


def data_fingerprint(batches: Iterable[Mapping[str, np.ndarray]]) -> str:
    """The data fingerprint :func:`calibrate` records: SHA-256 over the batches as fed."""
    fp = _Fingerprint()
    for b in batches:
        fp.update(b)
    return fp.hexdigest()


def _kldiv_version() -> str:
    from . import __version__

    return __version__


def collect_histograms(
    model: Any,
    data: Any = None,
    *,
    num_bins: int = NUM_BINS,
    range_policy: str = DEFAULT_RANGE_POLICY,
    batch_size: int | None = None,
    preprocess: Preprocess | None = None,
    max_batches: int | None = None,
    nonfinite: str = "raise",
    include_constants: bool = False,
    graph_optimization_level: str = DEFAULT_ORT_OPTIMIZATION,
    on_batch: ProgressCallback | None = None,
    batch_axes: Any = None,
    overlap: bool = DEFAULT_OVERLAP,
    max_memory: int | None = DEFAULT_MAX_MEMORY,
) -> HistogramCollector:
    """Run ``model`` over ``data`` and histogram every calibratable activation.

    Parameters
    ----------
    model : path-like, bytes or onnx.ModelProto
        The ONNX model (see :class:`~kldiv.runners.OnnxRuntimeRunner`).
    data : path-like, array, dict or iterable of batches
        Calibration data (see :func:`kldiv.data.as_source`).
    num_bins : int, default NUM_BINS
        Histogram bins.
    range_policy : {"pow2", "append", "global"}, default DEFAULT_RANGE_POLICY
        ``"global"`` runs the model twice: a first pass finds each tensor's absmax (the data
        must be re-iterable, e.g. a folder or a list).
    batch_size : int, optional
        Images per batch for image folders; other sources are re-cut to this size.
    preprocess : Preprocess, optional
        Image preprocessing (required for image folders).
    max_batches : int, optional
        Stop after this many batches.
    nonfinite : {"raise", "drop"}, default "raise"
        NaN/±Inf in an activation raise an error naming tensor and batch, or are skipped.
    include_constants : bool, optional
        Also collect tensors computed only from weights.
    graph_optimization_level : str, default DEFAULT_ORT_OPTIMIZATION ("all")
        onnxruntime's optimization level (same tensors at every level, values equal to
        float rounding; see :class:`~kldiv.runners.OnnxRuntimeRunner`).
    on_batch : callable, optional
        ``on_batch(index, samples)`` after each batch (progress bars).
    batch_axes : mapping or iterable of ``NAME=AXIS``, optional
        Declared batch axis of inputs (``None``: not batched, fed as given: recurrent
        state, scalars); the others are inferred from the model
        (:func:`kldiv.data.infer_batch_axes`). Re-batching touches batched inputs only.
    overlap : bool, default DEFAULT_OVERLAP
        Run the model on the next batch (in a thread; onnxruntime releases the GIL) while
        this batch's histograms fill, whenever two batches of activations fit ``max_memory``
        (always without a budget); batches that would not, run in turn. The fills happen in
        the same order on the calling thread, so every count and every error (with its batch)
        is the same as without (docs/performance.md).
    max_memory : int or None, default DEFAULT_MAX_MEMORY
        Bytes of activations held at once; a batch whose activations exceed it runs in
        stages (see :class:`~kldiv.runners.OnnxRuntimeRunner`); same histograms. ``None``:
        no limit.

    Returns
    -------
    HistogramCollector
        With ``meta``: ``model``, ``model_sha256``, ``data_fingerprint``, ``batches``,
        ``samples``, ``seconds``, ``peak_memory_mb`` (the process's peak resident memory); and
        ``graph``: the :class:`~kldiv.graph.GraphFacts` of the collected tensors.

    Raises
    ------
    ModelError, DataSourceError, NonFiniteError
        With the file, batch or tensor named.
    """
    if range_policy == "fixed":
        raise PresetError(
            "range_policy='fixed' needs ranges; calibrate() supports 'pow2', 'append', 'global'"
        )
    if range_policy not in ("pow2", "append", "global"):
        raise PresetError(
            f"unknown range_policy {range_policy!r}; choose one of 'pow2', 'append', 'global'"
        )
    if nonfinite not in ("raise", "drop"):
        raise PresetError(f"nonfinite must be 'raise' or 'drop', got {nonfinite!r}")
    check_num_bins(num_bins)
    check_count("batch_size", batch_size)
    check_count("max_batches", max_batches)
    from .runners import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(
        model,
        include_constants=include_constants,
        graph_optimization_level=graph_optimization_level,
        fetch_aliases=False,  # Reshape/Transpose/... outputs: their source's histogram
        batch_axes=batch_axes,
        max_memory=max_memory,
    )
    source = as_source(data, preprocess=preprocess, batch_size=batch_size,
                       batch_axes=runner.batch_axes)
    ranges = None
    if range_policy == "global":
        if iter(source) is source:
            raise DataSourceError(
                "range_policy='global' reads the data twice; give a re-iterable source "
                "(a folder, a list), not an iterator"
            )
        ranges = _absmax_pass(runner, source, max_batches, nonfinite, overlap)
    collector = HistogramCollector(
        num_bins, range_policy, ranges=ranges, nonfinite=nonfinite
    )
    fp = _Fingerprint()
    start = time.perf_counter()
    for index, acts, samples in _activations(runner, source, max_batches, fp, overlap):
        if acts is not None:
            collector.observe(acts, batch=index)
        del acts  # before the next part is taken: at most two batches alive
        if samples is not None and on_batch is not None:
            on_batch(index, samples)
    collector.batches = fp.batches
    attach_graph_facts(collector, runner)
    if nonfinite == "drop":
        collector.meta["nonfinite_dropped"] = {n: c for n, c in collector.dropped.items() if c}
    collector.meta.update(
        model=runner.label,
        model_sha256=runner.model_sha256,
        data_fingerprint=fp.hexdigest(),
        batches=fp.batches,
        samples=fp.samples,
        seconds=round(time.perf_counter() - start, 3),
        kldiv_version=_kldiv_version(),
        peak_memory_mb=peak_memory_mb(),
    )
    return collector


def attach_graph_facts(collector: HistogramCollector, runner: Any) -> GraphFacts:
    """Give value aliases their source's histogram and attach the graph facts.

    Run after the last batch; sets ``collector.graph`` to the runner's graph facts about the
    collected tensors.

    Parameters
    ----------
    collector : HistogramCollector
        Filled from ``runner`` (which did not fetch the aliases).
    runner : kldiv.runners.OnnxRuntimeRunner
        The runner of the model.

    Returns
    -------
    GraphFacts
        The facts set on ``collector.graph``.
    """
    collector.alias(runner.value_aliases, order=runner.network_order)
    collector.graph = runner.graph.restrict(collector.names)
    return collector.graph


def _feeds(runner: Any, source: Iterable[Any], max_batches: int | None) -> Any:
    """Prepared feeds, checked before they run; an empty source is an error."""
    index = -1
    for index, batch in enumerate(source):
        if max_batches is not None and index >= max_batches:
            break
        yield index, runner.prepare(batch, index=index)
    if index < 0:
        raise DataSourceError(
            f"the calibration data holds no batches ({source!r}); give at least one batch"
        )


def _activations(
    runner: Any, source: Iterable[Any], max_batches: int | None, fp: _Fingerprint | None,
    overlap: bool,
) -> Iterator[tuple[int, dict[str, np.ndarray] | None, int | None]]:
    """``(batch index, activations, samples so far)`` for each model run, in order.

    ``samples`` is ``None`` except on the last item of a batch (a batch larger than a fixed
    model batch size runs in pieces, and under a memory budget each piece in stages, whose
    activations are handed out one stage at a time; then a last item without activations,
    ``None``, carries the samples).

    With ``overlap``, the run of the next piece starts in a worker thread before the current
    one is handed out, so the caller's fills overlap the model. The caller must drop what it
    was handed before taking the next item: then at most two runs' activations are alive (the
    one handed out, the one in progress). A piece whose activations would not fit the
    runner's memory budget twice (``runner.fits_twice``) runs in turn, after the pending one
    is handed out. An error reading or checking the next batch is
    raised only after the current one is handed out, and a run's error when its result is
    taken: the order in which errors surface is that of running everything in turn.
    """

    def runs() -> Iterator[tuple[int, dict[str, np.ndarray], int | None]]:
        for index, feed in _feeds(runner, source, max_batches):
            if fp is not None:
                # samples along the batch axes (a runner without them: along axis 0)
                counted = getattr(runner, "samples", None)
                fp.update(feed, counted(feed) if counted is not None else None)
            samples = fp.samples if fp is not None else None
            chunks = list(runner.split(feed))
            for k, chunk in enumerate(chunks):
                yield index, chunk, samples if k == len(chunks) - 1 else None

    def serial(
        index: int, chunk: dict[str, np.ndarray], samples: int | None
    ) -> Iterator[tuple[int, dict[str, np.ndarray] | None, int | None]]:
        for acts in runner.run_parts(chunk, index=index):  # one dict, or one per stage
            yield index, acts, None
            del acts
        if samples is not None:
            yield index, None, samples  # the batch is complete: progress only

    fits_twice = getattr(runner, "fits_twice", None)
    if not overlap:
        for index, chunk, samples in runs():
            yield from serial(index, chunk, samples)
        return
    from concurrent.futures import Future, ThreadPoolExecutor

    pool = ThreadPoolExecutor(1, thread_name_prefix="kldiv-model-run")
    pending: tuple[int, Future[dict[str, np.ndarray]], int | None] | None = None
    try:
        items = runs()
        while True:
            failure: BaseException | None = None
            try:
                index, chunk, samples = next(items)
            except StopIteration:
                index = -1
            except BaseException as exc:  # raised after the pending run is handed out
                failure, index = exc, -1
            submitted: Future[dict[str, np.ndarray]] | None = None
            if index >= 0 and (fits_twice is None or fits_twice(chunk)):
                submitted = pool.submit(runner.run, chunk, index=index)
            if pending is not None:
                p_index, future, p_samples = pending
                pending = None
                acts = future.result()
                del future
                yield p_index, acts, p_samples
                del acts
            if failure is not None:
                raise failure
            if index < 0:
                return
            if submitted is None:  # two batches would not fit the memory budget: in turn
                yield from serial(index, chunk, samples)
            else:
                pending = (index, submitted, samples)
            del submitted, chunk
    finally:
        if pending is not None:  # the caller stopped early: let the run finish, drop it
            pending[1].cancel()
            pending = None
        pool.shutdown(wait=True)


def _absmax_pass(
    runner: Any, source: Iterable[Any], max_batches: int | None, nonfinite: str,
    overlap: bool = False,
) -> dict[str, float]:
    """First pass of the ``"global"`` policy: each tensor's absmax over all the data."""
    probe = HistogramCollector(1, "pow2", nonfinite=nonfinite)  # 1 bin: absmax is what we use
    for index, acts, _ in _activations(runner, source, max_batches, None, overlap):
        if acts is not None:
            probe.observe(acts, batch=index)
        del acts
    return {n: probe.absmax(n) for n in probe}


def _rules_and_options(
    method: str,
    preset: str | EntropyOptions,
    options: Mapping[str, Any],
    overrides: Mapping[str, bool | None],
) -> tuple[GraphRules, dict[str, Any]]:
    """The graph rules in force, and the method's options.

    The rule switches stay in the options of the entropy preset, whose fields they are, and are
    taken out for the other methods.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    if method == "entropy":
        opts = {**options, **given}
        return resolve_options(preset, **opts).rules, opts
    opts = {k: v for k, v in options.items() if k not in GraphRules.names()}
    rules = {k: v for k, v in options.items() if k in GraphRules.names()}
    return GraphRules(**{k: bool(v) for k, v in {**rules, **given}.items()}), opts


def choose_thresholds(
    collector: HistogramCollector,
    graph: GraphFacts | None = None,
    *,
    preset: str | EntropyOptions = DEFAULT_PRESET,
    method: str = DEFAULT_METHOD,
    activation_bounds: bool | None = None,
    pooling_inherits: bool | None = None,
    **options: Any,
) -> dict[str, ThresholdResult]:
    """A threshold per collected tensor, in network order.

    Parameters
    ----------
    collector : HistogramCollector
        The histograms.
    graph : GraphFacts, optional
        What the graph says about the tensors (Clip bounds, pooling inputs, value aliases).
        Default: ``collector.graph``, the facts collected (or saved) with the histograms.
    preset : str or EntropyOptions, default DEFAULT_PRESET
        Entropy preset (``method="entropy"``), a name in :data:`kldiv.entropy.PRESETS` or
        an options object; its graph rules (:attr:`EntropyOptions.rules`) say which graph
        facts set thresholds. A name and its object give the same thresholds.
    method : {"entropy", "minmax", "percentile", "mse", "legacy"}
        ``"minmax"`` uses the exact largest ``|x|`` seen (as TensorRT's MinMax calibrator),
        not the histogram's range. ``"legacy"`` is TensorRT's legacy calibrator (options
        ``quantile``, ``regression_cutoff``; pooling outputs are searched, not inherited, as
        the real legacy cache shows). The others go through
        :func:`kldiv.entropy.search_threshold` / :func:`kldiv.thresholds.choose_threshold`.
        Methods other than entropy apply only the value-alias rule unless told otherwise.
    activation_bounds : bool, optional
        Override the preset's rule: give tensors whose range the graph bounds (``Clip`` with
        constant limits, i.e. ReLU6) that bound as threshold, as TensorRT does (all 35 ReLU6
        outputs of the MLPerf SSD-MobileNet cache are exactly ``6/127``). On in the
        ``tensorrt`` preset.
    pooling_inherits : bool, optional
        Override the preset's rule: give pooling outputs (``MaxPool``, ``AveragePool`` and
        their global forms) their input's threshold, as TensorRT does (every real entropy
        cache with pooling shows it, TensorRT 5.1 to 10.3; see
        :func:`kldiv.graph.scale_sources`). On in the ``tensorrt`` preset.
    **options
        Options of the preset / method (e.g. ``percentile=99.99``).

    Returns
    -------
    dict of str to ThresholdResult
    """
    check_options(method=method, preset=preset, options=options, num_bins=None)
    return _choose_thresholds(
        collector, graph, preset=preset, method=method, activation_bounds=activation_bounds,
        pooling_inherits=pooling_inherits, options=options,
    )


def _choose_thresholds(
    collector: HistogramCollector,
    graph: GraphFacts | None,
    *,
    preset: str | EntropyOptions,
    method: str,
    options: Mapping[str, Any],
    activation_bounds: bool | None = None,
    pooling_inherits: bool | None = None,
) -> dict[str, ThresholdResult]:
    """:func:`choose_thresholds` of a method and options :func:`check_options` passed."""
    rules, options = _rules_and_options(
        method, preset, options,
        {"activation_bounds": activation_bounds, "pooling_inherits": pooling_inherits},
    )
    facts = collector.graph if graph is None else graph
    bounds = facts.activation_bounds if rules.activation_bounds else {}
    sources = facts.scale_sources if rules.pooling_inherits else {}
    aliases = facts.value_aliases if rules.alias_inherits else {}
    results: dict[str, ThresholdResult] = {}
    for name, hist in collector.items():
        try:
            results[name] = _threshold_of(
                name, hist, collector, results, method=method, preset=preset,
                bound=bounds.get(name), source=sources.get(name), alias_of=aliases.get(name),
                options=options,
            )
        except HistogramError as exc:
            raise _tensor_error(exc, name, collector) from None
    return results


def _tensor_error(exc: HistogramError, name: str, collector: HistogramCollector) -> HistogramError:
    """``exc`` with the tensor named (and, for a tensor whose every value was dropped, why)."""
    dropped = int(collector.meta.get("nonfinite_dropped", {}).get(name, 0))
    if dropped and collector[name].total == 0:
        return NonFiniteError(
            f"tensor {name!r}: all {dropped:,} of its values were NaN/Inf and were dropped "
            "(--drop-nonfinite), so nothing is left to calibrate it from; fix the model or "
            "data that produce them",
            where=f"tensor {name!r}",
        )
    return type(exc)(f"tensor {name!r}: {exc}")


def _threshold_of(
    name: str,
    hist: Any,
    collector: HistogramCollector,
    results: Mapping[str, ThresholdResult],
    *,
    method: str,
    preset: str | EntropyOptions,
    bound: float | None,
    source: str | None,
    alias_of: str | None,
    options: Mapping[str, Any],
) -> ThresholdResult:
    """One tensor's threshold; tensors it takes its scale from come first (network order)."""
    if alias_of is not None and alias_of in results:
        # the same values as its source, rearranged: the source's final scale, whichever
        # rule (search, bound, inherited) set it
        final = results[alias_of]
        return ThresholdResult(
            amax=final.amax, bin_index=None, scale=final.scale, method="alias",
            preset=final.preset,
            options={"source": alias_of, "rule": "holds its source's values (Reshape, "
                     "Flatten, ...): takes its source's final scale",
                     "source_method": final.method},
            histogram=hist,
        )
    if source is not None and source in results:  # inputs come first in network order
        inherited = results[source]
        return ThresholdResult(
            amax=inherited.amax, bin_index=None, scale=inherited.scale,
            method="inherited", preset=inherited.preset,
            options={"source": source, "rule": "pooling output takes its input's scale"},
            histogram=hist,
        )
    if bound is not None and collector.absmax(name) <= bound:
        return ThresholdResult(
            amax=float(bound), bin_index=None, scale=amax_to_scale(bound),
            method="activation-bound", preset=preset_name(preset) if method == "entropy" else None,
            options={"source": "Clip limits in the graph", "bound": float(bound)},
            histogram=hist, clipped_fraction=0.0,  # every |x| seen is within the bound
        )
    if method == "minmax":
        return _thresholds.minmax_threshold(hist, absmax=collector.absmax(name), **options)
    if method == "entropy":
        return search_threshold(hist, preset, **options)
    return _thresholds._choose_checked(hist, method, options)


def build_table(
    results: Mapping[str, ThresholdResult],
    *,
    trt_version: str = DEFAULT_TRT_VERSION,
    algorithm: str | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> CalibrationTable:
    """A :class:`CalibrationTable` from threshold results, with header and provenance.

    Parameters
    ----------
    results : mapping of str to ThresholdResult
        In network order; each result's ``scale`` is written as it is.
    trt_version : str, default DEFAULT_TRT_VERSION
        TensorRT version whose header is written (:func:`kldiv.cachefile.header_for`).
    algorithm : str, optional
        Header algorithm; default ``"minmax"`` for minmax results, else
        :data:`~kldiv.defaults.DEFAULT_ALGORITHM` (``entropy2``), and ``"legacy"`` (with the
        results' cutoff and quantile) for legacy results — TensorRT reads a cache only with the
        header of the calibrator that uses it.
    provenance : mapping, optional
        Stored on the table.
    """
    from .cachefile import check_trt_version, header_for

    number = check_trt_version(trt_version)
    methods = {r.method for r in results.values()} - set(RULE_METHODS)
    if algorithm is None and methods:
        # one method made the searched thresholds; more than one means hand-made results
        method = methods.pop() if len(methods) == 1 else DEFAULT_METHOD
        algorithm = header_algorithm(method, None)
    legacy = next((r.options for r in results.values() if r.method == "legacy"), {})
    header_options = {
        k: legacy[o] for k, o in (("cutoff", "regression_cutoff"), ("quantile", "quantile"))
        if o in legacy
    }
    table = CalibrationTable(
        ((n, r.scale) for n, r in results.items()),
        header=header_for(number, algorithm or DEFAULT_ALGORITHM, **header_options),
        provenance=provenance,
    )
    return table


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


@dataclass(frozen=True, eq=False)
class Calibration:
    """The result of :func:`calibrate`: the table and everything it was made from.

    Attributes
    ----------
    table : CalibrationTable
        The scales in network order, the TensorRT header and the provenance; write it with
        :func:`kldiv.write_cache` (which also takes the :class:`Calibration` itself).
    results : mapping of str to ThresholdResult
        Per tensor, in network order: bin index, divergence curve, clipped fraction, and for
        graph rules the tensor or bound the scale came from.
    histograms : HistogramCollector
        The histograms (save them with ``histograms.save(path)`` to re-threshold later with
        :func:`calibrate_histograms`).
    graph : GraphFacts
        The graph facts the thresholds used.

    Notes
    -----
    ``len()``, iteration, ``in``, ``[name]`` (the scale), :meth:`hex` and :attr:`provenance`
    are the table's, so code written for a :class:`CalibrationTable` keeps working.
    """

    table: CalibrationTable
    results: Mapping[str, ThresholdResult]
    histograms: HistogramCollector
    graph: GraphFacts

    @property
    def provenance(self) -> dict[str, Any]:
        """The table's provenance: model hash, data fingerprint, preset, options ..."""
        return self.table.provenance

    def hex(self, name: str) -> str:
        """The scale of ``name`` as TensorRT writes it (8 hex digits)."""
        return self.table.hex(name)

    def __len__(self) -> int:
        return len(self.table)

    def __iter__(self) -> Iterator[str]:
        return iter(self.table)

    def __contains__(self, name: object) -> bool:
        return name in self.table

    def __getitem__(self, name: str) -> Any:
        return self.table[name]

    def __repr__(self) -> str:
        return f"Calibration({len(self.table)} tensors, {self.table.header!r})"


def _load_histograms(
    histograms: HistogramCollector | str | os.PathLike[str],
) -> HistogramCollector:
    if isinstance(histograms, HistogramCollector):
        return histograms
    if not isinstance(histograms, (str, os.PathLike)):
        raise DataSourceError(
            f"histograms must be a HistogramCollector or the path of a .npz file written by "
            f"save_histograms=, got {type(histograms).__name__}"
        )
    return HistogramCollector.load(histograms)


def calibrate_histograms(
    histograms: HistogramCollector | str | os.PathLike[str],
    *,
    graph: GraphFacts | None = None,
    preset: str | EntropyOptions = DEFAULT_PRESET,
    method: str = DEFAULT_METHOD,
    options: Mapping[str, Any] | None = None,
    trt_version: str = DEFAULT_TRT_VERSION,
    algorithm: str | None = None,
) -> Calibration:
    """Thresholds and table from histograms collected before, without running the model.

    Parameters
    ----------
    histograms : HistogramCollector or path-like
        A collector, or a ``.npz`` file written by ``save_histograms=`` /
        :meth:`HistogramCollector.save`.
    graph : GraphFacts, optional
        Graph facts; default the histograms' own (``histograms.graph``, saved in the file).
    preset, method, options, trt_version, algorithm
        As for :func:`calibrate`. The preset is checked against the histograms' bins before
        any search.

    Returns
    -------
    Calibration
        The table (provenance names the file in ``histograms`` when one was read), the
        per-tensor results, the histograms and the graph facts.

    Examples
    --------
    >>> result = calibrate_histograms("h.npz", preset="modelopt")   # doctest: +SKIP
    >>> kldiv.write_cache(result, "modelopt.cache")                  # doctest: +SKIP
    """
    check_header_choice(trt_version, algorithm, method)
    given = histograms if isinstance(histograms, HistogramCollector) else None
    # a file is checked before it is read, and against its bins once read
    check_options(method=method, preset=preset, options=options,
                  num_bins=None if given is None else given.num_bins)
    collector = _load_histograms(histograms)
    if given is None:
        check_preset_bins(method=method, preset=preset, options=options,
                          num_bins=collector.num_bins)
    return _calibrate_collected(
        collector, graph=graph, preset=preset, method=method, options=options,
        trt_version=trt_version, algorithm=algorithm,
        source=None if given is not None else str(histograms),
    )


def _calibrate_collected(
    collector: HistogramCollector, *, graph: GraphFacts | None, preset: str | EntropyOptions,
    method: str, options: Mapping[str, Any] | None, trt_version: str, algorithm: str | None,
    source: str | None = None,
) -> Calibration:
    """:func:`calibrate_histograms` of a collector, with options :func:`check_options` passed.

    ``source``: the file the histograms were read from, for the provenance.
    """
    facts = collector.graph if graph is None else graph
    results = _choose_thresholds(
        collector, facts, preset=preset, method=method, options=dict(options or {})
    )
    clipping = _thresholds.clipping_outliers(results)  # logs a warning naming them
    searched = [r for r in results.values() if r.method not in RULE_METHODS]
    first = searched[0] if searched else None
    bounded = [n for n, r in results.items() if r.method == "activation-bound"]
    inherited = {n: r.options["source"] for n, r in results.items() if r.method == "inherited"}
    aliased = {n: r.options["source"] for n, r in results.items() if r.method == "alias"}
    provenance = {
        **collector.meta,
        **facts.to_dict(),
        "preset": preset_name(preset) if method == "entropy" else None,
        "method": method,
        "options": first.options if first is not None else dict(options or {}),
        "thresholds_from_activation_bounds": bounded,
        "thresholds_inherited_from_inputs": inherited,
        "thresholds_of_value_aliases": aliased,
        "clipping_above_limit": clipping,
        "range_policy": collector.range_policy,
        "num_bins": collector.num_bins,
        "trt_version": trt_version,
        "kldiv_version": _kldiv_version(),
        "tensors": len(results),
    }
    if source is not None:
        provenance["histograms"] = source
    table = build_table(
        results, trt_version=trt_version, algorithm=algorithm, provenance=_jsonable(provenance)
    )
    return Calibration(table=table, results=results, histograms=collector, graph=facts)


def check_calibration(
    model: Any,
    *,
    method: str,
    preset: str | EntropyOptions,
    options: Mapping[str, Any] | None,
    num_bins: int,
    trt_version: str,
    algorithm: str | None,
    batch_size: int | None,
    max_batches: int | None,
    save_histograms: str | os.PathLike[str] | None,
    force: bool,
) -> None:
    """Every check of a calibration's arguments, made before the model runs.

    Raises
    ------
    KldivError
        A bad count, bin number, method, preset, option or header choice, or a
        ``save_histograms`` path that exists (without ``force``), is a folder, or is the model.
    """
    check_count("batch_size", batch_size)
    check_count("max_batches", max_batches)
    check_num_bins(num_bins)
    check_options(method=method, preset=preset, options=options, num_bins=num_bins)
    check_header_choice(trt_version, algorithm, method)
    if save_histograms is not None:
        from ._io import check_writable

        inputs = [model] if isinstance(model, (str, os.PathLike)) else []
        check_writable(save_histograms, force=force, inputs=inputs, what="save_histograms")


def calibrate(
    model: Any,
    data: Any = None,
    *,
    preset: str | EntropyOptions = DEFAULT_PRESET,
    method: str = DEFAULT_METHOD,
    options: Mapping[str, Any] | None = None,
    trt_version: str = DEFAULT_TRT_VERSION,
    algorithm: str | None = None,
    num_bins: int = NUM_BINS,
    range_policy: str = DEFAULT_RANGE_POLICY,
    batch_size: int | None = None,
    preprocess: Preprocess | None = None,
    max_batches: int | None = None,
    nonfinite: str = "raise",
    save_histograms: str | os.PathLike[str] | None = None,
    force: bool = False,
    on_batch: ProgressCallback | None = None,
    batch_axes: Any = None,
    overlap: bool = DEFAULT_OVERLAP,
    max_memory: int | None = DEFAULT_MAX_MEMORY,
) -> Calibration:
    """Calibrate an ONNX model: run it over data, histogram, search, return the result.

    Parameters
    ----------
    model : path-like, bytes or onnx.ModelProto
        The ONNX model.
    data : path-like, array, dict or iterable of batches
        Calibration data (see :func:`kldiv.data.as_source`).
    preset : str or EntropyOptions, default DEFAULT_PRESET
        Entropy preset (``"tensorrt"``, ``"gtc2017"``, ``"modelopt"`` ...) or an options
        object; its graph rules come with it (a name and its object give the same table).
    method : {"entropy", "minmax", "percentile", "mse", "legacy"}, default "entropy"
        Threshold method. Its options are checked before the model runs.
    options : mapping, optional
        Options for the preset / method (graph rules included, e.g.
        ``{"activation_bounds": False}``).
    trt_version : str, default DEFAULT_TRT_VERSION
        TensorRT version whose cache header the table carries.
    algorithm : str, optional
        Header algorithm (default from ``method``; see :func:`build_table`).
    num_bins, range_policy, batch_size, preprocess, max_batches, nonfinite
        See :func:`collect_histograms`.
    save_histograms : path-like, optional
        Also write the histograms (with the graph facts) to this ``.npz`` file, atomically;
        :func:`calibrate_histograms` re-thresholds them without the model.
    force : bool, optional
        Overwrite ``save_histograms`` if it exists.
    on_batch : callable, optional
        Progress callback ``on_batch(index, samples)``.
    batch_axes : mapping or iterable of ``NAME=AXIS``, optional
        Declared batch axes (see :func:`collect_histograms`).
    overlap : bool, default DEFAULT_OVERLAP
        Run the model on the next batch while this one's histograms fill (see
        :func:`collect_histograms`).
    max_memory : int or None, default DEFAULT_MAX_MEMORY
        Bytes of activations held at once (see :func:`collect_histograms`). To shard the
        data over a Dask cluster instead, see :func:`kldiv.distributed.calibrate_distributed`.

    Returns
    -------
    Calibration
        ``.table``: scales in network order, the TensorRT header, and ``provenance``
        (``model``, ``model_sha256``, ``data_fingerprint``, ``batches``, ``samples``,
        ``preset``, ``method``, ``options``, ``range_policy``, ``num_bins``, ``trt_version``,
        ``kldiv_version`` ...); ``.results``: per-tensor threshold results; ``.histograms``;
        ``.graph``.

    Examples
    --------
    >>> from kldiv.examples import lenet_model_path, lenet_calibration_data
    >>> result = calibrate(lenet_model_path(), lenet_calibration_data())  # doctest: +SKIP
    >>> kldiv.write_cache(result.table, "lenet.cache")                    # doctest: +SKIP
    """
    if model is None or data is None:
        raise DataSourceError(
            "calibrate() needs a model and calibration data; to re-threshold saved "
            "histograms use calibrate_histograms(H.npz)"
        )
    check_calibration(
        model, method=method, preset=preset, options=options, num_bins=num_bins,
        trt_version=trt_version, algorithm=algorithm, batch_size=batch_size,
        max_batches=max_batches, save_histograms=save_histograms, force=force,
    )
    collector = collect_histograms(
        model, data, num_bins=num_bins, range_policy=range_policy, batch_size=batch_size,
        preprocess=preprocess, max_batches=max_batches, nonfinite=nonfinite,
        on_batch=on_batch, max_memory=max_memory, overlap=overlap, batch_axes=batch_axes,
    )
    result = _calibrate_collected(
        collector, graph=collector.graph, preset=preset, method=method, options=options,
        trt_version=trt_version, algorithm=algorithm,
    )
    if save_histograms is not None:
        collector.save(save_histograms, force=force)
    return result
