"""Run TensorRT engines over a data source; compare FP32 / FP16 / INT8 like sampleINT8.

Execution uses TensorRT's named-tensor API (``num_io_tensors``, ``get_tensor_name``,
``get_tensor_mode``, ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``), which
TensorRT 8.5+ offers, so it serves 8.6 and 10.x alike (the bindings API was removed in 10).

The accuracy bookkeeping (:func:`topk_accuracy`, :func:`top1_agreement`,
:func:`summarize_precisions`) is plain NumPy on the outputs, testable without TensorRT.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kldiv.defaults import DEFAULT_CUDA_BACKEND, DEFAULT_WORKSPACE
from kldiv.errors import DataSourceError
from kldiv.evaluate import topk_hits
from kldiv.scales import CalibrationTable

from . import _tensorrt
from .device import CudaBackend, DeviceBuffer, StagingBuffers, TensorSpec, get_backend
from .engine import PRECISIONS, build_calibrated, build_engine
from .errors import EngineRunError, TensorRTVersionError

if TYPE_CHECKING:
    from ._tensorrt import ICudaEngine, IExecutionContext

__all__ = [
    "PrecisionReport",
    "PrecisionRow",
    "RunResult",
    "compare_precisions",
    "run_engine",
    "summarize_precisions",
    "top1_agreement",
    "topk_accuracy",
]

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    """Outputs of an engine over a data source, and the time each batch took.

    Attributes
    ----------
    outputs : dict of str -> ndarray
        Each output tensor, batches concatenated along axis 0.
    batch_ms : list of float
        Per batch: wall time of ``execute_async_v3`` plus stream synchronize, milliseconds
        (host→device copies excluded).
    """

    outputs: dict[str, np.ndarray[Any, Any]]
    batch_ms: list[float] = field(default_factory=list)

    @property
    def mean_ms(self) -> float:
        """Mean time per batch (nan when no batch ran)."""
        return float(np.mean(self.batch_ms)) if self.batch_ms else math.nan


def run_engine(
    engine: bytes,
    data: Iterable[Mapping[str, Any]],
    *,
    backend: str | CudaBackend = DEFAULT_CUDA_BACKEND,
) -> RunResult:
    """Run a serialized engine on every batch of ``data``.

    Parameters
    ----------
    engine : bytes
        From :func:`~trt_backend.engine.build_engine` (or a ``.engine`` file's bytes).
    data : iterable of {input_name: array}
        Batches; the first batch fixes dynamic input shapes (later batches must match, so
        drop or pad a smaller last batch).
    backend : str or CudaBackend
        CUDA binding for the copies.

    Returns
    -------
    RunResult

    Raises
    ------
    EngineRunError
        The engine cannot be deserialized (other TensorRT version or GPU) or execution fails.
    DataSourceError
        A batch does not match the engine's inputs.
    """
    trt = _tensorrt.load()
    v = _tensorrt.version()
    if not v.named_tensors:
        raise TensorRTVersionError(
            f"TensorRT {v} lacks the named-tensor API (TensorRT 8.5+); upgrade TensorRT"
        )
    trt_logger = _tensorrt.make_logger(trt)
    runtime = trt.Runtime(trt_logger)
    cuda_engine: ICudaEngine | None = runtime.deserialize_cuda_engine(engine)
    if cuda_engine is None:
        raise EngineRunError(
            f"TensorRT {v} could not deserialize the engine; engines only load on the TensorRT "
            "version and GPU that built them - rebuild it here with build_engine()"
        )
    context: IExecutionContext = cuda_engine.create_execution_context()
    names = [cuda_engine.get_tensor_name(i) for i in range(int(cuda_engine.num_io_tensors))]
    inputs = [n for n in names if cuda_engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if n not in inputs]
    specs = [
        TensorSpec(
            n,
            _tensorrt.dims_to_tuple(cuda_engine.get_tensor_shape(n)),
            np.dtype(trt.nptype(cuda_engine.get_tensor_dtype(n))),
        )
        for n in inputs
    ]
    out_dtypes = {n: np.dtype(trt.nptype(cuda_engine.get_tensor_dtype(n))) for n in outputs}
    be = get_backend(backend)
    stream = be.create_stream()
    out_buffers: dict[str, DeviceBuffer] = {}
    collected: dict[str, list[np.ndarray[Any, Any]]] = {n: [] for n in outputs}
    times: list[float] = []
    try:
        with StagingBuffers(specs, backend=be) as staging:
            for index, batch in enumerate(data):
                pointers = staging.stage(batch)  # checked there; shapes fixed by batch 0
                shapes = staging.shapes
                for name in inputs:
                    if not context.set_input_shape(name, shapes[name]):
                        raise DataSourceError(
                            f"batch {index}: TensorRT refused shape {shapes[name]} for "
                            f"input {name!r}; use a shape inside the engine's profile"
                        )
                    context.set_tensor_address(name, pointers[name])
                out_shapes = {
                    n: tuple(int(d or 0) for d in _tensorrt.dims_to_tuple(context.get_tensor_shape(n)))
                    for n in outputs
                }
                for name, shape in out_shapes.items():
                    nbytes = max(math.prod(shape), 1) * out_dtypes[name].itemsize
                    if name not in out_buffers or out_buffers[name].nbytes < nbytes:
                        if name in out_buffers:
                            out_buffers[name].free()
                        out_buffers[name] = DeviceBuffer(nbytes, be)
                    context.set_tensor_address(name, out_buffers[name].ptr)
                start = time.perf_counter()
                ok = context.execute_async_v3(stream)
                be.synchronize(stream)
                times.append((time.perf_counter() - start) * 1e3)
                if not ok:
                    raise EngineRunError(
                        f"batch {index}: execute_async_v3 failed; see TensorRT's log (logging "
                        "at DEBUG)"
                    )
                for name, shape in out_shapes.items():
                    collected[name].append(out_buffers[name].download(shape, out_dtypes[name]))
    finally:
        for buf in out_buffers.values():
            buf.free()
        be.destroy_stream(stream)
    result = {
        n: np.concatenate(parts, axis=0) if parts else np.empty((0,), out_dtypes[n])
        for n, parts in collected.items()
    }
    return RunResult(result, times)


def _as_2d(logits: Any) -> np.ndarray[Any, Any]:
    arr = np.asarray(logits)
    if arr.ndim < 1:
        raise ValueError("logits need at least one dimension (samples)")
    return arr.reshape(arr.shape[0], -1)


def topk_accuracy(logits: Any, labels: Any, k: int = 1) -> float:
    """Fraction of samples whose label is among the ``k`` largest logits (sampleINT8's top-k).

    Ties are broken toward the lower class index (a stable descending sort).
    """
    scores = _as_2d(logits)
    y = np.asarray(labels).reshape(-1)
    if scores.shape[0] != y.shape[0]:
        raise DataSourceError(
            f"{scores.shape[0]} outputs but {y.shape[0]} labels; give one label per sample"
        )
    if scores.shape[0] == 0:
        return math.nan
    return float(np.mean(topk_hits(scores, y, int(k))))


def top1_agreement(logits: Any, reference: Any) -> float:
    """Fraction of samples whose arg-max class equals the reference's (e.g. INT8 vs FP32)."""
    a, b = _as_2d(logits), _as_2d(reference)
    if a.shape != b.shape:
        raise ValueError(f"output shapes differ: {a.shape} vs {b.shape}")
    if a.shape[0] == 0:
        return math.nan
    return float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))


@dataclass
class PrecisionRow:
    """One engine's line in a :class:`PrecisionReport`."""

    precision: str
    samples: int
    top1: float
    top5: float
    agreement: float
    mean_ms: float


@dataclass
class PrecisionReport:
    """FP32 / FP16 / INT8 accuracy and agreement with FP32, like TensorRT's sampleINT8."""

    rows: list[PrecisionRow]
    output: str

    def format(self) -> str:
        """A plain-text table."""

        def pct(x: float) -> str:
            return "   n/a" if math.isnan(x) else f"{100 * x:6.2f}"

        lines = [
            f"output: {self.output}",
            "precision  samples   top-1%   top-5%  agree-fp32%  ms/batch",
        ]
        for r in self.rows:
            ms = "   n/a" if math.isnan(r.mean_ms) else f"{r.mean_ms:8.3f}"
            lines.append(
                f"{r.precision:<9} {r.samples:>8}   {pct(r.top1)}   {pct(r.top5)}"
                f"       {pct(r.agreement)}  {ms}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def summarize_precisions(
    results: Mapping[str, RunResult], labels: Any = None, *, output: str | None = None
) -> PrecisionReport:
    """Build the report from each precision's :class:`RunResult` (pure NumPy).

    Parameters
    ----------
    results : mapping precision -> RunResult
        Must include ``"fp32"`` for the agreement column (else it is nan).
    labels : array-like, optional
        One class label per sample; without it the top-k columns are nan.
    output : str, optional
        The output tensor holding class scores (default: the first output).
    """
    if not results:
        raise ValueError("no results to summarize; run at least one engine")
    first = next(iter(results.values()))
    name = output if output is not None else next(iter(first.outputs))
    for prec, res in results.items():
        if name not in res.outputs:
            raise ValueError(f"{prec} engine has no output {name!r}; it has {sorted(res.outputs)}")
    reference = results["fp32"].outputs[name] if "fp32" in results else None
    rows = []
    for prec, res in results.items():
        logits = res.outputs[name]
        n = int(np.shape(logits)[0]) if np.ndim(logits) else 0
        top1 = topk_accuracy(logits, labels, 1) if labels is not None else math.nan
        top5 = topk_accuracy(logits, labels, 5) if labels is not None else math.nan
        agree = top1_agreement(logits, reference) if reference is not None else math.nan
        rows.append(PrecisionRow(prec, n, top1, top5, agree, res.mean_ms))
    return PrecisionReport(rows, name)


def compare_precisions(
    model: str | os.PathLike[str],
    data: Iterable[Mapping[str, Any]],
    labels: Any = None,
    *,
    table: CalibrationTable | None = None,
    calibration_data: Iterable[Mapping[str, Any]] | None = None,
    qdq: bool = False,
    precisions: Sequence[str] = PRECISIONS,
    output: str | None = None,
    workspace: int = DEFAULT_WORKSPACE,
    backend: str | CudaBackend = DEFAULT_CUDA_BACKEND,
) -> PrecisionReport:
    """Build FP32, FP16 and INT8 engines and report top-1/top-5 and agreement with FP32.

    Parameters
    ----------
    model : path
        ONNX model.
    data : iterable of {input_name: array}
        Evaluation batches (materialized once, run through every engine).
    labels : array-like, optional
        One label per evaluation sample.
    table : CalibrationTable, optional
        kldiv's scales for INT8 (replayed cache, or Q/DQ with ``qdq=True``). Without it TensorRT
        calibrates with its entropy2 calibrator on ``calibration_data`` (default ``data``).
    calibration_data : iterable, optional
        Calibration batches when no ``table`` is given.
    qdq : bool
        Build INT8 through the explicit Q/DQ path.
    precisions : sequence of str
        Which engines to build (default all three).
    output : str, optional
        The output tensor with class scores (default the first).
    workspace : int
        Workspace memory-pool limit, bytes.
    backend : str or CudaBackend
        CUDA binding.
    """
    batches = list(data)
    results: dict[str, RunResult] = {}
    for prec in precisions:
        if prec == "int8":
            if table is not None or qdq:
                plan = build_engine(model, "int8", table=table, qdq=qdq, workspace=workspace)
            else:
                calib_batches = batches if calibration_data is None else calibration_data
                plan, _ = build_calibrated(
                    model, calib_batches, workspace=workspace, backend=backend
                )
        else:
            plan = build_engine(model, prec, workspace=workspace)
        results[prec] = run_engine(plan, batches, backend=backend)
        logger.info("%s engine: %d batches, %.3f ms/batch", prec, len(batches), results[prec].mean_ms)
    return summarize_precisions(results, labels, output=output)
