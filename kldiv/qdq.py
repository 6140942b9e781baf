"""Explicit quantization: a calibration table written into the ONNX graph as Q/DQ nodes.

:func:`to_qdq_onnx` inserts ``QuantizeLinear``/``DequantizeLinear`` pairs (int8, zero point 0,
``scale = table[name]`` exactly as stored — the float32 ``amax / 127`` of the cache, never
recomputed) so that TensorRT ≥ 10.1 (explicit quantization, the only INT8 path from TensorRT 11)
and ONNX Runtime run the model with the calibrated ranges.

Placement follows TensorRT's explicit-quantization guidance (developer guide, "Q/DQ layer
placement recommendations"):

- quantize the **activation inputs of weighted operations** (``Conv``, ``ConvTranspose``,
  ``Gemm``, ``MatMul``): one Q/DQ pair per tensor, shared by every quantized consumer;
- quantize their **weights** symmetrically per output channel (``Conv``/``Gemm`` with
  ``transB=1``: axis 0; ``ConvTranspose``, ``Gemm`` with ``transB=0`` and ``MatMul``: axis 1),
  stored as int8 initializers followed by a ``DequantizeLinear`` (TensorRT's "pre-quantized
  weights" form; ONNX Runtime's own QDQ form);
- leave **outputs** of weighted ops and biases in float: TensorRT fuses the following
  activation and moves Q/DQ across pooling and other commuting layers itself.

``placement="all"`` also quantizes every other calibrated tensor (node outputs), which is
closer to what *implicit* INT8 does and lets ONNX Runtime fuse ``DQ → Conv → Q`` into
``QLinearConv``; with ``bias="int32"`` the biases are quantized the way ONNX Runtime's
integer kernels need (scale ``s_x · s_w``), which TensorRT does not accept.

Decisions on odd scales: a tensor missing from the table, or whose scale is ``0`` (an all-zero
tensor; ``QuantizeLinear`` with scale 0 is undefined) is left in float with a logged warning;
a scale that is infinite, NaN or negative raises :class:`~kldiv.errors.QuantizationError`
naming the tensor. Tensors inside ``If``/``Loop``/``Scan`` subgraphs are left in float.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .defaults import DEFAULT_QDQ_BIAS, DEFAULT_QDQ_WEIGHTS, INT8_MAX
from .errors import ModelError, QuantizationError
from .scales import amax_to_scale

__all__ = ["QUANTIZABLE_OPS", "QdqSummary", "load_onnx", "to_qdq_onnx"]

logger = logging.getLogger(__name__)

#: Op types whose activation inputs and weights are quantized (TensorRT's weighted ops).
QUANTIZABLE_OPS: tuple[str, ...] = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Activations TensorRT fuses into the preceding op: their *input* is never quantized.
_FUSED_ACTIVATIONS = frozenset({"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid"})
#: Smallest opset with per-axis QuantizeLinear/DequantizeLinear.
_MIN_OPSET = 13
_PLACEMENTS = ("inputs", "all")
_WEIGHT_MODES = ("per_channel", "per_tensor")
_BIAS_MODES = ("float", "int32")


@dataclass
class QdqSummary:
    """What :func:`to_qdq_onnx` did (attached to the returned model as ``metadata_props``).

    Attributes
    ----------
    activations : list of str
        Tensors that received a Q/DQ pair.
    weights : list of str
        Weights stored as int8 with a per-channel (or per-tensor) DequantizeLinear.
    skipped : dict
        Tensor name -> why it stayed in float.
    """

    activations: list[str] = field(default_factory=list)
    weights: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def load_onnx(model: Any) -> Any:
    """Return a copy of the ``onnx.ModelProto`` given as a path, bytes or a ModelProto.

    Raises
    ------
    ModelError
        If the file does not exist or is not an ONNX model
        (see :func:`kldiv.runners.load_model`).
    """
    import onnx

    from .runners import load_model

    # a ModelProto needs no loading (load_model would serialize and hash it for nothing)
    proto = model if isinstance(model, onnx.ModelProto) else load_model(model)[0]
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    return copy


def _opset(model: Any) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def _weight_axis(node: Any) -> int:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 1  # ConvTranspose (C_in, C_out/g, ...), MatMul (K, N)


def _check_scale(name: str, scale: np.float32) -> str | None:
    """Return why ``scale`` cannot be used (None if it can); raise on inf/NaN/negative."""
    if not np.isfinite(scale) or scale < 0:
        raise QuantizationError(
            f"tensor {name!r} has scale {float(scale)!r} in the calibration table; Q/DQ needs a "
            "finite positive scale. Recalibrate it, or drop it from the table to keep it in float"
        )
    if scale == 0:
        return "scale is 0 (all-zero tensor during calibration); QuantizeLinear needs scale > 0"
    return None


def _per_channel_scales(w: np.ndarray, axis: int | None) -> np.ndarray:
    """Symmetric weight scales ``max|w| / 127`` per channel along ``axis`` (or per tensor)."""
    a = np.abs(w.astype(np.float64))
    if axis is None:
        amax = np.array([a.max() if a.size else 0.0])
    else:
        amax = np.moveaxis(a, axis, 0).reshape(w.shape[axis], -1).max(axis=1)
    scales = np.array([amax_to_scale(v) for v in amax], dtype=np.float32)
    # an all-zero channel quantizes to 0 with any scale; use amax 1 so the scale is valid
    scales[scales == 0] = amax_to_scale(1.0)
    return scales if axis is not None else scales.reshape(())


def _quantize_weight(w: np.ndarray, scales: np.ndarray, axis: int | None) -> np.ndarray:
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = -1
    q = np.rint(w.astype(np.float32) / scales.reshape(shape))
    return np.clip(q, -INT8_MAX, INT8_MAX).astype(np.int8)


class _Namer:
    def __init__(self, graph: Any) -> None:
        self.used: set[str] = {i.name for i in graph.initializer}
        self.used |= {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
        for n in graph.node:
            self.used.update(n.output)
            self.used.update(n.input)
            self.used.add(n.name)

    def __call__(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name


def to_qdq_onnx(
    model: Any,
    table: Mapping[str, Any],
    *,
    weights: str = DEFAULT_QDQ_WEIGHTS,
    placement: str = "inputs",
    bias: str = DEFAULT_QDQ_BIAS,
    ops: Collection[str] = QUANTIZABLE_OPS,
    exclude: Iterable[str] = (),
    opset: int | None = None,
) -> Any:
    """Return a copy of ``model`` with the table's scales inserted as Q/DQ nodes.

    Parameters
    ----------
    model : path, bytes or onnx.ModelProto
        The FP32 model the table was calibrated on.
    table : CalibrationTable or mapping of tensor name -> float32 scale
        Scales as stored in a TensorRT cache (``amax / 127``); used exactly.
    weights : {'per_channel', 'per_tensor'}, optional
        Symmetric int8 weight quantization granularity (default per output channel).
    placement : {'inputs', 'all'}, optional
        ``'inputs'`` (default): Q/DQ on the activation inputs of ``ops`` only (TensorRT's
        recommendation). ``'all'``: also on every other calibrated tensor.
    bias : {'float', 'int32'}, optional
        Keep biases of Conv/Gemm in float (TensorRT, default) or quantize them to int32 with
        scale ``s_input · s_weight`` (ONNX Runtime's integer-kernel form).
    ops : collection of str, optional
        Op types whose inputs (and weights) are quantized.
    exclude : iterable of str, optional
        Activation tensor names to keep in float, and node names whose inputs to leave alone.
    opset : int, optional
        Target opset; default ``max(model opset, 13)``. Models below it are converted with
        ``onnx.version_converter``.

    Returns
    -------
    onnx.ModelProto
        The Q/DQ model; passes ``onnx.checker``. Its ``metadata_props`` record what was
        quantized (``kldiv_qdq_activations``, ``kldiv_qdq_weights``).

    Raises
    ------
    QuantizationError
        If a scale is infinite, NaN or negative, or an option value is unknown.
    ModelError
        If the model cannot be loaded or converted to the target opset.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    for value, allowed, what in (
        (weights, _WEIGHT_MODES, "weights"),
        (placement, _PLACEMENTS, "placement"),
        (bias, _BIAS_MODES, "bias"),
    ):
        if value not in allowed:
            raise QuantizationError(f"unknown {what}={value!r}; choose one of {allowed}")

    m = load_onnx(model)
    target = max(_opset(m), _MIN_OPSET) if opset is None else int(opset)
    if target < _MIN_OPSET:
        raise QuantizationError(f"opset {target} has no per-axis Q/DQ; use opset >= 13")
    if _opset(m) < target:
        from onnx import version_converter

        try:
            m = version_converter.convert_version(m, target)
        except Exception as exc:
            raise ModelError(
                f"could not convert the model from opset {_opset(m)} to {target}: {exc}; "
                "convert it yourself and pass the result"
            ) from exc

    g = m.graph
    excluded = set(exclude)
    summary = QdqSummary()
    namer = _Namer(g)
    inits = {i.name: i for i in g.initializer}
    const_nodes = {
        n.output[0]: n
        for n in g.node
        if n.op_type == "Constant" and any(a.name == "value" for a in n.attribute)
    }

    def constant(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        node = const_nodes.get(name)
        if node is not None:
            attr = next(a for a in node.attribute if a.name == "value")
            return numpy_helper.to_array(attr.t)
        return None

    float_types = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16}
    new_nodes: list[Any] = []
    new_inits: list[Any] = []
    dq_of: dict[str, str] = {}  # activation -> its dequantized name
    act_scale: dict[str, np.float32] = {}

    def dequantize(
        base: str, q_name: str, scale: np.ndarray, zero_type: Any, axis: int | None = None
    ) -> tuple[str, str, str]:
        """Add scale / zero-point initializers and a DequantizeLinear reading ``q_name``."""
        s_name = namer(f"{base}_scale")
        z_name = namer(f"{base}_zero_point")
        d_name = namer(f"{base}_dequantized")
        new_inits.append(numpy_helper.from_array(scale.astype(np.float32), s_name))
        new_inits.append(numpy_helper.from_array(np.zeros(scale.shape, zero_type), z_name))
        attrs = {"axis": axis} if axis is not None else {}
        new_nodes.append(
            helper.make_node(
                "DequantizeLinear", [q_name, s_name, z_name], [d_name],
                name=namer(f"{base}_DequantizeLinear"), **attrs,
            )
        )  # fmt: skip
        return d_name, s_name, z_name

    def activation_dq(tensor: str, scale_of: str | None = None) -> str | None:
        if tensor in dq_of:
            return dq_of[tensor]
        scale_of = scale_of or tensor
        if tensor in excluded:
            summary.skipped[tensor] = "excluded"
            return None
        if scale_of not in table:
            summary.skipped[tensor] = f"{scale_of!r} is not in the calibration table"
            return None
        scale = np.float32(table[scale_of])
        why = _check_scale(scale_of, scale)
        if why is not None:
            summary.skipped[tensor] = why
            return None
        q_name = namer(f"{tensor}_quantized")
        d_name, s_name, z_name = dequantize(tensor, q_name, np.array(scale), np.int8)
        new_nodes.append(
            helper.make_node(
                "QuantizeLinear", [tensor, s_name, z_name], [q_name],
                name=namer(f"{tensor}_QuantizeLinear"),
            )
        )  # fmt: skip
        dq_of[tensor] = d_name
        act_scale[tensor] = scale
        summary.activations.append(tensor)
        return d_name

    def weight_dq(name: str, node: Any) -> tuple[str, np.ndarray] | None:
        w = constant(name)
        if w is None or w.dtype.kind != "f" or w.ndim < 2:
            return None
        axis = _weight_axis(node) if weights == "per_channel" else None
        scales = _per_channel_scales(w, axis)
        q = _quantize_weight(w, scales, axis)
        q_name = namer(f"{name}_quantized")
        new_inits.append(numpy_helper.from_array(q, q_name))
        d_name = dequantize(name, q_name, scales, np.int8, axis)[0]
        summary.weights.append(name)
        return d_name, scales

    # which tensors are float activations (graph inputs and node outputs, not constants)
    producers = {o for n in g.node for o in n.output if o}
    activations = {i.name for i in g.input if i.name not in inits} | producers
    activations -= set(const_nodes)
    elem_type = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.value_info, *g.output)}

    quantized_weight_cache: dict[tuple[str, int], tuple[str, np.ndarray] | None] = {}
    for node in g.node:
        if node.op_type not in ops or node.name in excluded:
            continue
        data_inputs = [0, 1] if node.op_type == "MatMul" else [0]
        for idx in range(min(len(node.input), 2)):
            name = node.input[idx]
            if name in activations and idx in data_inputs:
                dq = activation_dq(name)
                if dq is not None:
                    node.input[idx] = dq
            elif idx == 1 and name not in activations:
                key = (name, _weight_axis(node))
                if key not in quantized_weight_cache:
                    quantized_weight_cache[key] = weight_dq(name, node)
                res = quantized_weight_cache[key]
                if res is None:
                    continue
                node.input[1] = res[0]
                x = node.input[0]
                if bias == "int32" and len(node.input) > 2 and node.input[2]:
                    x_orig = next((k for k, v in dq_of.items() if v == x), None)
                    b = constant(node.input[2])
                    if x_orig is not None and b is not None:
                        b_scale = np.broadcast_to(
                            np.float32(act_scale[x_orig]) * res[1], b.shape
                        ).astype(np.float32)
                        b_q = np.rint(b / b_scale).astype(np.int32)
                        bq_name = namer(f"{node.input[2]}_quantized")
                        new_inits.append(numpy_helper.from_array(b_q, bq_name))
                        bd_name = dequantize(node.input[2], bq_name, b_scale, np.int32, 0)[0]
                        node.input[2] = bd_name

    if placement == "all":
        graph_outputs = {o.name for o in g.output}
        consumers: dict[str, list[Any]] = {}
        for node in g.node:
            for inp in node.input:
                consumers.setdefault(inp, []).append(node)
        for tensor in sorted(activations - set(dq_of) - graph_outputs):
            if elem_type.get(tensor, TensorProto.FLOAT) not in float_types:
                continue
            if tensor not in table:
                continue  # integer/shape tensors are not calibrated
            users = consumers.get(tensor, [])
            scale_of = None
            if len(users) == 1 and users[0].op_type in _FUSED_ACTIVATIONS:
                # TensorRT fuses op + activation and quantizes the fused output with the
                # activation's scale; Q(x) then ReLU equals ReLU then Q(x) for symmetric int8
                scale_of = users[0].output[0]
            dq = activation_dq(tensor, scale_of)
            if dq is None:
                continue
            for node in users:  # every reader of the tensor (listed before any rewrite)
                for i, inp in enumerate(node.input):
                    if inp == tensor:
                        node.input[i] = dq

    # drop float weights (initializers or Constant nodes) that nothing reads any more
    used = _used_names([*g.node, *new_nodes]) | {o.name for o in g.output}
    keep_nodes = [n for n in g.node if not (n.op_type == "Constant" and n.output[0] not in used)]
    del g.node[:]
    g.node.extend(keep_nodes)
    keep_inits = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep_inits)

    for name, why in summary.skipped.items():
        logger.warning("Q/DQ: tensor %r stays in float: %s", name, why)

    # topological order: insert the new nodes, then sort
    nodes = list(g.node) + new_nodes
    ordered = _toposort(nodes, {i.name for i in g.input} | set(inits) | {i.name for i in new_inits})
    del g.node[:]
    g.node.extend(ordered)
    g.initializer.extend(new_inits)
    m.ir_version = max(m.ir_version, 7)
    helper.set_model_props(
        m,
        {
            **{p.key: p.value for p in m.metadata_props},
            "kldiv_qdq_activations": ",".join(summary.activations),
            "kldiv_qdq_weights": ",".join(summary.weights),
            "kldiv_qdq_options": f"weights={weights} placement={placement} bias={bias}",
        },
    )
    try:
        onnx.checker.check_model(m)
    except onnx.checker.ValidationError as exc:  # pragma: no cover - would be our bug
        raise QuantizationError(f"the Q/DQ model fails onnx.checker: {exc}") from exc
    m.doc_string = (m.doc_string + "\n" if m.doc_string else "") + (
        f"Q/DQ inserted by kldiv: {len(summary.activations)} activations, "
        f"{len(summary.weights)} weights"
    )
    return m


def _used_names(nodes: Iterable[Any]) -> set[str]:
    """Every tensor name read by ``nodes``, including reads from inside their subgraphs."""
    used: set[str] = set()
    for n in nodes:
        used.update(n.input)
        for a in n.attribute:
            for sub in [a.g] if a.HasField("g") else list(a.graphs):
                used |= _used_names(sub.node)
    return used


def _toposort(nodes: list[Any], available: set[str]) -> list[Any]:
    """Order ``nodes`` so every input is produced before use, otherwise keeping their order.

    Kahn's algorithm with the original position as priority. Inputs produced by no node
    (graph inputs, initializers, outer-scope names of subgraphs) count as available.
    """
    import heapq

    producer = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    waiting = [0] * len(nodes)
    users: dict[int, list[int]] = {}
    for k, n in enumerate(nodes):
        deps = {producer[i] for i in n.input if i in producer and i not in available}
        waiting[k] = len(deps)
        for d in deps:
            users.setdefault(d, []).append(k)
    ready = [k for k, c in enumerate(waiting) if c == 0]
    heapq.heapify(ready)
    out: list[Any] = []
    while ready:
        k = heapq.heappop(ready)
        out.append(nodes[k])
        for u in users.get(k, ()):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(out) != len(nodes):  # a cycle: cannot happen for a valid graph; keep the rest
        seen = {id(n) for n in out}
        out.extend(n for n in nodes if id(n) not in seen)
    return out
