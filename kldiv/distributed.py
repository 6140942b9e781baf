"""Sharded calibration on a Dask cluster: the one-process histograms, bit for bit.

:func:`collect_histograms_distributed` cuts the calibration data into shards by file, runs
the first batch (which sets every tensor's range), then every other shard on the cluster's
workers (each worker keeps one onnxruntime session per model), and merges the shards exactly
(:mod:`kldiv.shard`; ``docs/histograms.md``, "Exact sharding"). The result equals
:func:`kldiv.pipeline.collect_histograms` over the same batches, histogram for histogram, with
the same ``data_fingerprint``.

The cluster: ``client=`` (a ``distributed.Client``), ``scheduler=`` (the address of a
running ``dask scheduler``), or ``workers=N`` (a ``LocalCluster`` of N worker processes on this
machine, closed afterwards). A worker that dies mid-shard: Dask runs the shard again on
another worker (a shard is a pure function of its files and the ranges, so the retry gives the
same result); after ``distributed.scheduler.allowed-failures`` deaths of one shard the run
stops with :class:`~kldiv.errors.ClusterError`, and nothing is written.

Dask (``pip install "kldiv[dist]"``) is imported only here.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from .collect import HistogramCollector
from .data import ImageFolder, NpyFolder, Preprocess, SampleInt8BatchFiles, as_source
from .defaults import (
    DEFAULT_MAX_MEMORY,
    DEFAULT_METHOD,
    DEFAULT_ORT_OPTIMIZATION,
    DEFAULT_PRESET,
    DEFAULT_SCHEDULER_TIMEOUT,
    DEFAULT_SHARDS_PER_WORKER,
    DEFAULT_TRT_VERSION,
    NUM_BINS,
)
from .errors import ClusterError, DataSourceError, ModelError, PresetError
from .shard import ShardCollector, ShardResult, merge_shards, shard_bases

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import Calibration

__all__ = [
    "calibrate_distributed",
    "collect_histograms_distributed",
    "local_cluster_options",
    "run_shard",
    "shard_source",
]

log = logging.getLogger(__name__)

#: Called as shards finish with (batches done, batches in all).
ShardProgress = Callable[[int, int], None]


# ----------------------------------------------------------------------------- data shards
def _count(source: Any) -> int:
    if isinstance(source, ImageFolder):
        return len(source)
    if isinstance(source, (NpyFolder, SampleInt8BatchFiles)):
        return len(source.files)
    return len(source)


def _piece(source: Any, lo: int, hi: int) -> Any:
    """Batches ``lo:hi`` of a shardable source, as a source of the same kind."""
    if isinstance(source, (NpyFolder, SampleInt8BatchFiles)):
        part = copy.copy(source)
        part.files = source.files[lo:hi]
        return part
    if isinstance(source, ImageFolder):
        images = copy.copy(source)
        images.files = source.files[lo * source.batch_size : hi * source.batch_size]
        return images
    return list(source[lo:hi])


def shard_source(source: Any, shards: int, *, max_batches: int | None = None) -> list[tuple[int, Any]]:
    """Cut a data source into the first batch and ``shards`` contiguous shards, by file.

    Parameters
    ----------
    source : NpyFolder, SampleInt8BatchFiles, ImageFolder, list or tuple
        A source whose batches can be addressed by position: one batch per ``.npy``/``.npz``
        or batch file, ``batch_size`` images per batch, or a sequence of batches.
    shards : int
        Shards for the batches after the first (fewer when there are fewer batches).
    max_batches : int, optional
        Use only the first ``max_batches`` batches.

    Returns
    -------
    list of (int, source)
        ``(index of the shard's first batch, shard)``; the first entry is batch 0 alone.

    Raises
    ------
    DataSourceError
        For a source that cannot be cut by position (an iterator, a re-batched folder).
    """
    if not isinstance(source, (NpyFolder, SampleInt8BatchFiles, ImageFolder, list, tuple)):
        raise DataSourceError(
            f"calibration data {source!r} cannot be cut into shards: a distributed run needs a "
            "folder of .npy/.npz files, images or sampleINT8 batch files (one batch per file, "
            "no --batch-size re-cutting), or a list of batches"
        )
    n = _count(source)
    if max_batches is not None:
        n = min(n, int(max_batches))
    if n < 1:
        raise DataSourceError(f"the calibration data holds no batches ({source!r})")
    rest = n - 1
    k = max(1, min(int(shards), rest)) if rest else 0
    out = [(0, _piece(source, 0, 1))]
    for s in range(k):
        lo = 1 + rest * s // k
        hi = 1 + rest * (s + 1) // k
        out.append((lo, _piece(source, lo, hi)))
    return out


# ----------------------------------------------------------------------------- worker side
_RUNNERS: dict[tuple[Any, ...], Any] = {}


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return f"worker {get_worker().address}"
    except Exception:  # noqa: BLE001 - not on a worker (tests call the task directly)
        return "this process"


def _runner(model: str | bytes, sha256: str, opts: Mapping[str, Any]) -> Any:
    """The onnxruntime runner of this worker for ``model`` (created once, kept for later shards)."""
    key = (sha256, tuple(sorted(opts.items())))
    runner = _RUNNERS.get(key)
    if runner is not None:
        return runner
    from .runners import OnnxRuntimeRunner

    if isinstance(model, str) and not Path(model).is_file():
        raise ModelError(
            f"{_worker_name()}: model file {model} not found; every worker must read the model "
            "at this path (a shared file system), or pass the model as bytes"
        )
    runner = OnnxRuntimeRunner(model, fetch_aliases=False, **opts)
    if runner.model_sha256 != sha256:
        raise ModelError(
            f"{_worker_name()}: the model at "
            f"{model if isinstance(model, str) else '<bytes>'} differs from the driver's (sha256 "
            f"{runner.model_sha256[:12]} vs {sha256[:12]}); give every worker the same file"
        )
    _RUNNERS.clear()  # one model per worker at a time
    _RUNNERS[key] = runner
    return runner


def run_shard(
    model: str | bytes,
    sha256: str,
    piece: Any,
    first: int,
    base: Mapping[str, float],
    opts: Mapping[str, Any],
    fill: Mapping[str, Any],
) -> tuple[ShardResult, dict[str, Any]]:
    """Run the model over one shard and histogram it (the task a worker runs).

    Returns the :class:`~kldiv.shard.ShardResult` (with each batch's digest) and what the
    driver needs of the graph (aliases, bounds, pooling sources, network order).
    """
    from .pipeline import batch_digest, batch_samples

    runner = _runner(model, sha256, opts)
    collector = ShardCollector(base, fill["num_bins"], nonfinite=fill["nonfinite"])
    digests: list[bytes] = []
    samples = 0
    for i, batch in enumerate(piece):
        index = first + i
        feed = runner.prepare(batch, index=index)
        digests.append(batch_digest(feed))
        samples += batch_samples(feed)
        for chunk in runner.split(feed):
            for acts in runner.run_parts(chunk, index=index):
                collector.observe(acts, batch=index)
    collector.batches = len(digests)
    result = collector.result(first=first, stop=first + len(digests))
    result.digests, result.samples = digests, samples
    # what kldiv.pipeline.attach_graph_facts reads of a runner, sent back to the driver
    info = {"runner": SimpleNamespace(value_aliases=runner.value_aliases,
                                      network_order=runner.network_order, graph=runner.graph)}
    return result, info


# ----------------------------------------------------------------------------- driver side
@contextlib.contextmanager
def _cluster(
    client: Any, workers: int | None, scheduler: str | None, timeout: float
) -> Iterator[Any]:
    if client is not None:
        yield client
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - an optional dependency
        raise ClusterError(
            "distributed calibration needs Dask: pip install 'kldiv[dist]'"
        ) from None
    if scheduler is not None:
        try:
            c = Client(scheduler, timeout=timeout)  # type: ignore[no-untyped-call]
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterError(
                f"no Dask scheduler answered at {scheduler!r} within {timeout:g} s "
                f"({exc.__class__.__name__}: {exc}); start one with `dask scheduler` and "
                "`dask worker ADDRESS`, or use --workers N for a cluster on this machine"
            ) from None
        try:
            yield c
        finally:
            c.close()  # type: ignore[no-untyped-call]
        return
    if workers is None or workers < 1:
        raise ClusterError(f"workers must be >= 1, got {workers!r}")
    cluster = LocalCluster(**local_cluster_options(int(workers)))  # type: ignore[no-untyped-call]
    try:
        with Client(cluster) as c:  # type: ignore[no-untyped-call]
            yield c
    finally:
        cluster.close()


def _cores_each(workers: int) -> int:
    """The cores of the machine divided among ``workers`` local worker processes (>= 1)."""
    return max(1, (os.cpu_count() or 1) // workers)


def local_cluster_options(workers: int) -> dict[str, Any]:
    """``LocalCluster`` options of ``--workers N``.

    N processes of one task thread each, the machine's cores divided among them (the histogram
    kernels' threads too).
    """
    share = str(_cores_each(workers))
    return {
        "n_workers": workers, "threads_per_worker": 1, "processes": True,
        "dashboard_address": ":0", "silence_logs": logging.ERROR,
        "env": {"NUMBA_NUM_THREADS": share, "OMP_NUM_THREADS": share},
    }


def _model_payload(model: Any) -> tuple[str | bytes, str]:
    """What workers load (an absolute path, or the serialized model) and its SHA-256."""
    if isinstance(model, (str, os.PathLike)):
        path = Path(model).resolve()
        if not path.is_file():
            raise ModelError(f"{path}: model file not found; give the path of an .onnx file")
        return str(path), hashlib.sha256(path.read_bytes()).hexdigest()
    if isinstance(model, (bytes, bytearray)):
        data = bytes(model)
    else:
        try:
            data = model.SerializeToString()
        except AttributeError:
            raise ModelError(
                f"a model must be a path, bytes or onnx.ModelProto, not {type(model).__name__}"
            ) from None
    return data, hashlib.sha256(data).hexdigest()


def _result(future: Any, what: str) -> Any:
    try:
        return future.result()
    except Exception as exc:
        if exc.__class__.__name__ == "KilledWorker":
            raise ClusterError(
                f"{what}: its worker died each time it ran it ({exc}); no table is written. "
                "Look for the cause in the workers' logs (memory limit? a crash in "
                "onnxruntime?), or raise distributed.scheduler.allowed-failures"
            ) from None
        raise


def collect_histograms_distributed(
    model: Any,
    data: Any,
    *,
    client: Any = None,
    workers: int | None = None,
    scheduler: str | None = None,
    shards: int | None = None,
    num_bins: int = NUM_BINS,
    range_policy: str = "pow2",
    batch_size: int | None = None,
    preprocess: Preprocess | None = None,
    max_batches: int | None = None,
    nonfinite: str = "raise",
    include_constants: bool = False,
    graph_optimization_level: str = DEFAULT_ORT_OPTIMIZATION,
    intra_op_num_threads: int | None = None,
    max_memory: int | None = DEFAULT_MAX_MEMORY,
    timeout: float = DEFAULT_SCHEDULER_TIMEOUT,
    on_progress: ShardProgress | None = None,
) -> HistogramCollector:
    """:func:`kldiv.pipeline.collect_histograms`, sharded over a Dask cluster; same result.

    Parameters
    ----------
    model : path-like, bytes or onnx.ModelProto
        A path must name the same file on every worker (checked by SHA-256); bytes and
        ``ModelProto`` travel to the workers.
    data : path-like or sequence of batches
        A folder of ``.npy``/``.npz``, images or sampleINT8 batch files (sharded by file), or
        a list of batches (see :func:`shard_source`).
    client : distributed.Client, optional
        The cluster to use.
    workers : int, optional
        Start a ``LocalCluster`` of this many worker processes (one thread each) for the run.
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``).
    shards : int, optional
        Shards after the first batch (default ``DEFAULT_SHARDS_PER_WORKER`` per worker).
    num_bins, batch_size, preprocess, max_batches, nonfinite, include_constants, graph_optimization_level
        As for :func:`kldiv.pipeline.collect_histograms`. ``batch_size`` applies to image
        folders only (other sources are one batch per file).
    range_policy : {"pow2"}
        The only policy sharded here (``docs/histograms.md`` says why).
    intra_op_num_threads : int, optional
        onnxruntime threads per worker (default: the cores divided among local workers;
        onnxruntime's choice on a remote cluster).
    max_memory : int or None, default DEFAULT_MAX_MEMORY
        Bytes of activations each worker holds at once (see
        :class:`~kldiv.runners.OnnxRuntimeRunner`).
    timeout : float, default DEFAULT_SCHEDULER_TIMEOUT
        Seconds to wait for ``scheduler`` to answer.
    on_progress : callable, optional
        ``on_progress(batches_done, batches_total)`` as shards finish.

    Returns
    -------
    HistogramCollector
        Equal to the one-process collector over the same batches (histograms, absmax, order,
        ``data_fingerprint``); ``meta["shards"]`` and ``meta["workers"]`` say how it ran.

    Raises
    ------
    ClusterError
        No scheduler answered, or a shard's worker kept dying.
    ModelError, DataSourceError, NonFiniteError
        As in one process, naming the worker for a model it cannot read.
    """
    from .pipeline import _Fingerprint, _kldiv_version, attach_graph_facts

    if range_policy != "pow2":
        raise PresetError(
            f"range_policy={range_policy!r} is not sharded; distributed calibration merges "
            "'pow2' histograms exactly (the default). Run it in one process instead"
        )
    if sum(x is not None for x in (client, workers, scheduler)) != 1:
        raise ClusterError("give exactly one of client=, workers=N or scheduler=ADDRESS")
    payload, sha = _model_payload(model)
    source = data
    if not isinstance(data, (list, tuple)):
        source = as_source(data, preprocess=preprocess, batch_size=batch_size)
        if batch_size is not None and not isinstance(source, ImageFolder):
            raise DataSourceError(
                "--batch-size re-cuts the batches across files, so they cannot be sharded by "
                "file; save the data one batch per file, or run in one process"
            )
    if intra_op_num_threads is None and workers:
        intra_op_num_threads = _cores_each(int(workers))
    opts = {
        "include_constants": include_constants,
        "graph_optimization_level": graph_optimization_level,
        "intra_op_num_threads": intra_op_num_threads,
        "max_memory": max_memory,
    }
    fill = {"num_bins": int(num_bins), "nonfinite": nonfinite}
    start = time.perf_counter()
    with _cluster(client, workers, scheduler, timeout) as c:
        n_workers = len(c.scheduler_info().get("workers", {})) or 1
        pieces = shard_source(
            source, shards or DEFAULT_SHARDS_PER_WORKER * n_workers, max_batches=max_batches
        )
        total = sum(_count(p) for _, p in pieces)
        remote = c.scatter(payload, broadcast=True) if isinstance(payload, bytes) else payload

        def submit(lo: int, piece: Any, base: Mapping[str, float]) -> Any:
            return c.submit(run_shard, remote, sha, piece, lo, dict(base), opts, fill, pure=False)

        first, info = _result(submit(0, pieces[0][1], {}), "the first batch")
        done = first.batches
        if on_progress is not None:
            on_progress(done, total)
        base = shard_bases(first)
        futures = [submit(lo, p, base) for lo, p in pieces[1:]]
        results: list[ShardResult] = [first]
        from distributed import as_completed

        by_future = {f.key: i for i, f in enumerate(futures)}
        slots: list[ShardResult | None] = [None] * len(futures)
        for fut in as_completed(futures):  # type: ignore[no-untyped-call]
            i = by_future[fut.key]
            res, _ = _result(fut, f"shard {i + 1} (from batch {pieces[i + 1][0]})")
            slots[i] = res
            done += res.batches
            if on_progress is not None:
                on_progress(done, total)
        results += [r for r in slots if r is not None]
        merged, reruns = merge_shards(results, num_bins=num_bins, nonfinite=nonfinite)
        if reruns:
            log.info("%d shard(s) run again for tensors first non-zero after batch 0",
                     len(reruns))
            again = {
                pos: submit(pieces[pos][0], pieces[pos][1], {**base, **extra})
                for pos, extra in reruns.items()
            }
            for pos, fut in again.items():
                res, _ = _result(fut, f"shard {pos} (again)")
                results[pos].replace_tensors(res, reruns[pos])
            merged, reruns = merge_shards(results, num_bins=num_bins, nonfinite=nonfinite)
            if reruns:  # pragma: no cover - one refill anchors every tensor
                raise ClusterError(f"shards {sorted(reruns)} could not be merged exactly")
    fp = _Fingerprint()
    for res in results:
        for d in res.digests:
            fp.add_digest(d)
        fp.samples += res.samples

    attach_graph_facts(merged, info["runner"])  # as one process does with its runner
    merged.meta.update(
        model=(str(model) if isinstance(payload, str)
               else "<bytes>" if isinstance(model, (bytes, bytearray)) else "<ModelProto>"),
        model_sha256=sha,
        data_fingerprint=fp.hexdigest(),
        batches=fp.batches,
        samples=fp.samples,
        seconds=round(time.perf_counter() - start, 3),
        kldiv_version=_kldiv_version(),
        shards=len(results),
        workers=n_workers,
    )
    return merged


def calibrate_distributed(
    model: Any,
    data: Any,
    *,
    preset: str | None = None,
    method: str | None = None,
    options: Mapping[str, Any] | None = None,
    trt_version: str | None = None,
    algorithm: str | None = None,
    save_histograms: str | os.PathLike[str] | None = None,
    force: bool = False,
    **collect: Any,
) -> Calibration:
    """:func:`kldiv.calibrate`, with the histograms collected on a Dask cluster.

    ``collect`` takes the arguments of :func:`collect_histograms_distributed` (``client=``,
    ``workers=`` or ``scheduler=``, ``shards``, ``num_bins``, ``max_memory`` ...); the rest
    are :func:`kldiv.calibrate`'s. The table is the one-process table, bit for bit.

    Returns
    -------
    kldiv.pipeline.Calibration
        As :func:`kldiv.calibrate` returns it.
    """
    from .pipeline import _calibrate_collected, check_calibration

    table: dict[str, Any] = {
        "method": method or DEFAULT_METHOD, "preset": preset or DEFAULT_PRESET,
        "options": options, "trt_version": trt_version or DEFAULT_TRT_VERSION,
        "algorithm": algorithm,
    }
    check_calibration(  # before the cluster starts
        model, num_bins=collect.get("num_bins", NUM_BINS), batch_size=collect.get("batch_size"),
        max_batches=collect.get("max_batches"), save_histograms=save_histograms, force=force,
        **table,
    )
    collector = collect_histograms_distributed(model, data, **collect)
    result = _calibrate_collected(collector, graph=collector.graph, **table)  # checked above
    if save_histograms is not None:
        collector.save(save_histograms, force=force)
    return result

