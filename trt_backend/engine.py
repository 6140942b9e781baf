"""Build TensorRT engines from ONNX: FP32, FP16, INT8 (calibrator, replayed cache, or Q/DQ).

The TensorRT 10 calls are used (``build_serialized_network``, ``set_memory_pool_limit``), with
the 8.6 difference handled where there is one (the ``EXPLICIT_BATCH`` network flag). INT8 comes
three ways:

* ``calibrator=``: a :func:`~trt_backend.calibrators.make_calibrator` object; TensorRT
  calibrates (implicit quantization, TensorRT < 11).
* ``table=``: kldiv's scales, replayed as the calibration cache under the running TensorRT's
  header, so TensorRT uses them without calibrating (implicit, TensorRT < 11).
* ``qdq=True``: explicit quantization (TensorRT >= 10.1, the only INT8 path on 11): the model is
  rewritten with Q/DQ nodes from ``table`` by :func:`kldiv.qdq.to_qdq_onnx` (or is taken as
  already holding Q/DQ nodes when no table is given) and built as a strongly typed network.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from kldiv.defaults import (
    DEFAULT_ALGORITHM,
    DEFAULT_CUDA_BACKEND,
    DEFAULT_PRECISION,
    DEFAULT_WORKSPACE,
)
from kldiv.errors import DataSourceError, ModelError
from kldiv.scales import CalibrationTable

from . import _tensorrt
from .device import CudaBackend, TensorSpec
from .errors import EngineBuildError, TensorRTVersionError

if TYPE_CHECKING:
    from ._tensorrt import Builder, IBuilderConfig, INetworkDefinition, OnnxParser

__all__ = [
    "PRECISIONS",
    "build_calibrated",
    "build_engine",
    "format_parser_errors",
    "network_inputs",
]

logger = logging.getLogger(__name__)

#: Precisions :func:`build_engine` accepts.
PRECISIONS = ("fp32", "fp16", "int8")

_PARSER_HINT = (
    "fold constants and simplify the model (`polygraphy surgeon sanitize --fold-constants` or "
    "onnxsim), re-export it with an opset this TensorRT supports, or upgrade TensorRT"
)


def format_parser_errors(parser: Any, source: str) -> str:
    """Describe every error TensorRT's ONNX parser recorded, naming the failing node.

    Parameters
    ----------
    parser : tensorrt.OnnxParser
        After a failed ``parse``.
    source : str
        The model (for the message).
    """
    lines = []
    for i in range(int(parser.num_errors)):
        err = parser.get_error(i)
        node = _call(err, "node")
        name = _call(err, "node_name")  # TensorRT >= 10 (8.6 has node() only)
        op = _call(err, "node_operator")
        desc = _call(err, "desc") or str(err)
        where = f"node {node}" if node is not None and int(node) >= 0 else "the graph"
        if name:
            where += f" {name!r}"
        if op:
            where += f" ({op})"
        lines.append(f"{where}: {desc}")
    if not lines:
        lines.append("the parser reported failure without an error message")
    return f"TensorRT's ONNX parser rejected {source}: " + "; ".join(lines) + f"; {_PARSER_HINT}"


def _call(obj: Any, name: str) -> Any:
    fn = getattr(obj, name, None)
    if fn is None:
        return None
    try:
        return fn() if callable(fn) else fn
    except Exception:  # noqa: BLE001 - an accessor this TensorRT version lacks or rejects
        return None


def network_inputs(trt: Any, network: INetworkDefinition) -> list[TensorSpec]:
    """The network's inputs as :class:`~trt_backend.device.TensorSpec` (-1 dims -> None)."""
    specs = []
    for i in range(int(network.num_inputs)):
        tensor = network.get_input(i)
        dims = _tensorrt.dims_to_tuple(tensor.shape)
        specs.append(TensorSpec(tensor.name, dims, np.dtype(trt.nptype(tensor.dtype))))
    return specs


def _check_precision(
    precision: str, calibrator: Any, table: CalibrationTable | None, qdq: bool
) -> str:
    prec = str(precision).strip().lower()
    if prec not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if prec != "int8":
        if calibrator is not None or table is not None or qdq:
            raise ValueError(
                f"calibrator=, table= and qdq= are for precision='int8', not {prec!r}; "
                "drop them or ask for int8"
            )
        return prec
    if calibrator is not None and (table is not None or qdq):
        raise ValueError(
            "give either calibrator= (TensorRT calibrates) or table=/qdq= (kldiv's scales), "
            "not both"
        )
    if calibrator is None and table is None and not qdq:
        raise ValueError(
            "precision='int8' needs scales: calibrator=make_calibrator(data), "
            "table=<CalibrationTable> (replayed as the cache), or qdq=True (a Q/DQ model)"
        )
    return prec


def _profile_shapes(
    specs: Sequence[TensorSpec],
    input_shapes: Mapping[str, Sequence[int]] | None,
    calibrator: Any,
) -> dict[str, tuple[int, ...]]:
    """Concrete shapes for dynamic inputs: ``input_shapes``, else the first calibration batch."""
    dynamic = [s for s in specs if any(d is None for d in s.shape)]
    if not dynamic:
        return {}
    shapes: dict[str, tuple[int, ...]] = {}
    first = None
    if calibrator is not None:
        first = calibrator.feed.first_batch
    for spec in dynamic:
        if input_shapes is not None and spec.name in input_shapes:
            shapes[spec.name] = tuple(int(d) for d in input_shapes[spec.name])
        elif first is not None and spec.name in first:
            shapes[spec.name] = tuple(int(d) for d in np.shape(first[spec.name]))
        else:
            shown = tuple("?" if d is None else d for d in spec.shape)
            raise DataSourceError(
                f"input {spec.name!r} has dynamic shape {shown}; pass input_shapes="
                f"{{{spec.name!r}: (...)}} with the shape to build for"
            )
    return shapes


def build_calibrated(
    model: str | os.PathLike[str],
    batches: Any,
    *,
    workspace: int = DEFAULT_WORKSPACE,
    backend: str | CudaBackend = DEFAULT_CUDA_BACKEND,
) -> tuple[bytes, bytes | None]:
    """Build an INT8 engine calibrated by TensorRT itself (its default entropy calibrator).

    Returns
    -------
    (bytes, bytes or None)
        The serialized engine, and the calibration cache TensorRT wrote.
    """
    from .calibrators import make_calibrator

    calibrator = make_calibrator(batches, DEFAULT_ALGORITHM, backend=backend)
    plan = build_engine(model, "int8", calibrator=calibrator, workspace=workspace)
    return plan, calibrator.captured


def build_engine(
    onnx_path: str | os.PathLike[str],
    precision: str = DEFAULT_PRECISION,
    *,
    calibrator: Any = None,
    table: CalibrationTable | None = None,
    qdq: bool = False,
    workspace: int = DEFAULT_WORKSPACE,
    algorithm: str = DEFAULT_ALGORITHM,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> bytes:
    """Build a serialized TensorRT engine from an ONNX model.

    Parameters
    ----------
    onnx_path : path
        The ONNX model.
    precision : {'fp32', 'fp16', 'int8'}
        Engine precision.
    calibrator : tensorrt.IInt8Calibrator, optional
        From :func:`~trt_backend.calibrators.make_calibrator`: TensorRT calibrates with it
        (int8, TensorRT < 11). Errors from its data are raised after the build.
    table : CalibrationTable, optional
        kldiv's scales. Without ``qdq``: replayed as the cache (header rewritten for this
        TensorRT and ``algorithm``). With ``qdq``: written into the model as Q/DQ nodes.
    qdq : bool
        Explicit quantization (TensorRT >= 10.1; the only INT8 path on 11).
    workspace : int
        Workspace memory-pool limit in bytes.
    algorithm : str
        The calibrator algorithm named in a replayed cache's header (``table=`` only).
    input_shapes : mapping, optional
        Shapes to build for, for inputs with dynamic dimensions (default: the first
        calibration batch's shapes).

    Returns
    -------
    bytes
        The serialized engine (``IHostMemory`` copied to bytes).

    Raises
    ------
    TensorRTUnavailableError
        Without TensorRT.
    TensorRTVersionError
        Implicit INT8 asked of TensorRT 11, Q/DQ asked of TensorRT < 10.1, FP16 flag on 11.
    EngineBuildError
        The parser rejected the model (the message names the node), the GPU has no fast INT8,
        or the build failed.
    DataSourceError
        Calibration data whose shapes do not match the network.
    """
    prec = _check_precision(precision, calibrator, table, qdq)
    trt = _tensorrt.load()
    v = _tensorrt.version()
    path = os.fspath(onnx_path)
    if not os.path.isfile(path):
        raise ModelError(f"ONNX model {path!r} does not exist; check the path")
    model_bytes: bytes | None = None
    if qdq:
        _tensorrt.require_qdq(v)
        if table is not None:
            from kldiv.qdq import to_qdq_onnx

            model_bytes = to_qdq_onnx(path, table).SerializeToString()
    elif prec == "int8":
        _tensorrt.require_implicit(v)
    if prec == "fp16" and v.major >= 11:
        raise TensorRTVersionError(
            f"TensorRT {v} has no FP16 builder flag (every network is strongly typed); convert "
            "the model to FP16 first (e.g. ModelOpt AutoCast) and build it as 'fp32'"
        )

    trt_logger = _tensorrt.make_logger(trt)
    builder: Builder = trt.Builder(trt_logger)
    network: INetworkDefinition = builder.create_network(
        _tensorrt.network_flags(trt, v, strongly_typed=qdq)
    )
    parser: OnnxParser = trt.OnnxParser(network, trt_logger)
    if model_bytes is not None:
        ok = parser.parse(model_bytes)
    else:
        ok = parser.parse_from_file(path)
    if not ok:
        raise EngineBuildError(format_parser_errors(parser, path))

    config: IBuilderConfig = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))

    if prec == "int8" and table is not None and not qdq:
        from .calibrators import make_calibrator

        calibrator = make_calibrator(None, algorithm, replay=table)
    specs = network_inputs(trt, network)
    shapes = _profile_shapes(specs, input_shapes, calibrator)
    if shapes:
        profile = builder.create_optimization_profile()
        for name, shape in shapes.items():
            dims = trt.Dims(list(shape))
            profile.set_shape(name, dims, dims, dims)
        config.add_optimization_profile(profile)
        if calibrator is not None:
            config.set_calibration_profile(profile)

    if prec == "fp16":
        if not getattr(builder, "platform_has_fast_fp16", True):
            logger.warning("this GPU has no fast FP16; TensorRT may fall back to FP32 kernels")
        config.set_flag(trt.BuilderFlag.FP16)
    elif prec == "int8" and not qdq:
        if not getattr(builder, "platform_has_fast_int8", True):
            raise EngineBuildError(
                "this GPU has no fast INT8 support (TensorRT's builder.platform_has_fast_int8 is "
                "False; INT8 needs compute capability 6.1 or later); build with precision="
                "'fp16' or 'fp32', or use a GPU with INT8 support"
            )
        config.set_flag(trt.BuilderFlag.INT8)
        calibrator.feed.bind_inputs(specs)
        config.int8_calibrator = calibrator

    logger.info("building a %s engine from %s with TensorRT %s", prec, path, v)
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.close()
    if calibrator is not None and calibrator.feed.error is not None:
        raise calibrator.feed.error
    if serialized is None:
        detail = "; ".join(getattr(trt_logger, "errors", [])[-3:]) or "see the log"
        raise EngineBuildError(
            f"TensorRT could not build a {prec} engine from {path}: {detail}; run with logging "
            "at DEBUG for TensorRT's full log, or try a larger workspace="
        )
    return bytes(serialized)
