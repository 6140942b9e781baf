"""Explicit quantization: a calibration table written into the ONNX graph as Q/DQ nodes.

:func:`to_qdq_onnx` inserts ``QuantizeLinear``/``DequantizeLinear`` pairs (int8, zero point 0,
``scale = table[name]`` exactly as stored — the float32 ``amax / 127`` of the cache, never
recomputed) so that TensorRT ≥ 10.1 (explicit quantization, the only INT8 path from TensorRT 11)
and ONNX Runtime run the model with the calibrated ranges.

Placement follows TensorRT's explicit-quantization guidance (developer guide, "Q/DQ layer
placement recommendations"); ``docs/explicit-quantization.md`` sets each rule against it:

- quantize the **activation inputs of weighted operations** (``Conv``, ``ConvTranspose``,
  ``Gemm``, ``MatMul``): one Q/DQ pair per tensor, shared by every quantized consumer;
- quantize the **residual input of a skip-connection** ``Add`` (the input that does not come
  out of the convolution the ``Add`` fuses into), so that TensorRT can fuse the addition into
  the convolution and keep its output in INT8;
- quantize their **weights** symmetrically per output channel (``Conv``/``Gemm`` with
  ``transB=1``: axis 0; ``ConvTranspose``, ``Gemm`` with ``transB=0`` and ``MatMul``: axis 1),
  stored as int8 initializers followed by a ``DequantizeLinear`` (TensorRT's "pre-quantized
  weights" form; ONNX Runtime's own QDQ form);
- leave **outputs** of weighted ops and biases in float: TensorRT fuses the following
  activation and moves Q/DQ across pooling, concatenation and other commuting layers itself.

``placement="all"`` also quantizes every other calibrated tensor (node outputs), which is
closer to what *implicit* INT8 does. Each pair uses the tensor's own scale, except where a
rewrite is exact: a tensor read only by a ``Relu`` or a ``Clip(0, b)`` takes the activation's
output scale (``Q`` commutes with them), a tensor read only by a ``Concat`` takes the
concatenation's scale (TensorRT's implicit mode shares it), and a tensor missing from the table
that only rearranges another one (``Reshape``, ``Flatten``, ``Transpose`` ...) takes that
tensor's scale. A tensor read only by another activation TensorRT fuses into its producer
(``Sigmoid``, ``HardSigmoid``, ``LeakyRelu``, ``Tanh`` ...) stays in float, as inside TensorRT's
fused kernel.

Decisions on odd scales: a tensor missing from the table, or whose scale is ``0`` (an all-zero
tensor; ``QuantizeLinear`` with scale 0 is undefined) is left in float with a logged warning;
a scale that is infinite, NaN or negative raises :class:`~kldiv.errors.QuantizationError`
naming the tensor. Tensors inside ``If``/``Loop``/``Scan`` subgraphs are left in float (the
order of the main graph counts what the subgraphs read).

Before anything is written, :func:`check_table` refuses a table whose provenance names another
model or that covers less than :data:`~kldiv.defaults.MIN_TABLE_COVERAGE` of the model's
calibratable tensors (``force=True`` applies it anyway), and every result passes
``onnx.checker.check_model(full_check=True)`` or raises naming the model and the node.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .defaults import DEFAULT_QDQ_BIAS, DEFAULT_QDQ_WEIGHTS, INT8_MAX, MIN_TABLE_COVERAGE
from .errors import ModelError, QuantizationError, TableMismatchError, UnknownNameError
from .scales import amax_to_scale

__all__ = [
    "QUANTIZABLE_OPS",
    "QdqSummary",
    "TableCoverage",
    "check_table",
    "load_onnx",
    "resolve_exclusions",
    "table_coverage",
    "to_qdq_onnx",
]

logger = logging.getLogger(__name__)

#: Op types whose activation inputs and weights are quantized (TensorRT's weighted ops).
QUANTIZABLE_OPS: tuple[str, ...] = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Activations TensorRT fuses into the layer before them: their input never exists in INT8.
_FUSED_ACTIVATIONS = frozenset(
    {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "Tanh", "Elu", "Selu", "Softplus",
     "HardSwish", "ThresholdedRelu"}
)
#: Layers TensorRT fuses a following activation into.
_FUSING_PRODUCERS = frozenset(
    {"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "Add", "Sub", "Mul", "Div"}
)
#: Ops between a convolution and a skip-connection ``Add`` that TensorRT fuses with it.
_RESIDUAL_PATH_OPS = frozenset({"BatchNormalization", "Relu", "Add", "Mul"})
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
    scale_from : dict
        Tensor name -> the table entry whose scale its Q/DQ pair uses, where that is not its
        own (the exact rewrites: ReLU/Clip(0, b), Concat, value-preserving ops).
    """

    activations: list[str] = field(default_factory=list)
    weights: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    scale_from: dict[str, str] = field(default_factory=dict)


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
    out: np.ndarray = np.clip(q, -INT8_MAX, INT8_MAX).astype(np.int8)
    return out


class _Namer:
    def __init__(self, graph: Any) -> None:
        self.used: set[str] = {i.name for i in graph.initializer}
        self.used |= {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
        for n in graph.node:
            self.used.update(n.output)
            self.used.update(n.input)
            self.used.add(n.name)
        self.used |= _subgraph_names(graph.node)

    def __call__(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name


# -- graph helpers ------------------------------------------------------------------------------
def _subgraphs(node: Any) -> list[Any]:
    from .runners import _graph_attrs

    return _graph_attrs(node)


def _subgraph_names(nodes: Iterable[Any]) -> set[str]:
    """Every value and node name used inside the subgraphs of ``nodes`` (recursively)."""
    names: set[str] = set()
    for n in nodes:
        for g in _subgraphs(n):
            names |= {v.name for v in (*g.input, *g.output, *g.value_info, *g.initializer)}
            for inner in g.node:
                names.update(inner.input)
                names.update(inner.output)
                names.add(inner.name)
            names |= _subgraph_names(g.node)
    return names


def _reads(node: Any) -> set[str]:
    """The names ``node`` reads: its inputs and every name read inside its subgraphs."""
    names = {i for i in node.input if i}
    for g in _subgraphs(node):
        for inner in g.node:
            names |= _reads(inner)
    return names


def _consumers(nodes: Iterable[Any]) -> dict[str, list[Any]]:
    """Tensor -> main-graph nodes reading it as an input (each node once per tensor)."""
    out: dict[str, list[Any]] = {}
    for node in nodes:
        for name in dict.fromkeys(i for i in node.input if i):
            out.setdefault(name, []).append(node)
    return out


def _constant_value(name: str, inits: Mapping[str, Any], const_nodes: Mapping[str, Any]) -> Any:
    from onnx import numpy_helper

    if name in inits:
        return numpy_helper.to_array(inits[name])
    node = const_nodes.get(name)
    if node is not None:
        attr = next(a for a in node.attribute if a.name == "value")
        return numpy_helper.to_array(attr.t)
    return None


def _fold_constant(
    name: str, producer: Mapping[str, Any], inits: Mapping[str, Any], model: Any, label: str
) -> np.ndarray | None:
    """Evaluate a tensor computed from constants only; None if it cannot.

    E.g. ``ConstantOfShape`` or a ``Transpose`` of an initializer, with onnx's reference
    evaluator.
    """
    import onnx
    from onnx import helper

    nodes: list[Any] = []
    seen: set[str] = set()
    needed: set[str] = set()
    stack = [name]
    while stack:
        t = stack.pop()
        if t in seen or not t:
            continue
        seen.add(t)
        if t in inits:
            needed.add(t)
            continue
        node = producer.get(t)
        if node is None:
            return None
        if id(node) not in {id(n) for n in nodes}:
            nodes.append(node)
        stack.extend(node.input)
    order = {id(n): k for k, n in enumerate(producer.values())}
    nodes.sort(key=lambda n: order.get(id(n), 0))
    out = helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)
    graph = helper.make_graph(nodes, "fold", [], [out], [inits[i] for i in sorted(needed)])
    try:
        from onnx.reference import ReferenceEvaluator

        folded = helper.make_model(graph, opset_imports=list(model.opset_import))
        value = list(ReferenceEvaluator(folded).run(None, {}))[0]
    except Exception as exc:  # noqa: BLE001 - any op the reference evaluator lacks
        logger.info("%s: weight %r is computed in the graph and could not be folded (%s); "
                    "it stays in float", label, name, exc)  # fmt: skip
        return None
    return np.asarray(value)


def _clip_min_is_zero(node: Any, inits: Mapping[str, Any], const_nodes: Mapping[str, Any]) -> bool:
    """Whether a ``Clip`` has the constant lower bound 0 (and a constant or no upper bound)."""
    import onnx

    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if "min" in attrs or "max" in attrs:  # opset < 11
        return float(attrs.get("min", -np.inf)) == 0.0
    if len(node.input) < 2 or not node.input[1]:
        return False
    lo = _constant_value(node.input[1], inits, const_nodes)
    if lo is None or lo.size != 1 or float(lo.reshape(())) != 0.0:
        return False
    if len(node.input) > 2 and node.input[2]:
        return _constant_value(node.input[2], inits, const_nodes) is not None
    return True


# -- exclusions ---------------------------------------------------------------------------------
def _model_names(model: Any) -> tuple[set[str], dict[str, Any], dict[str, list[Any]]]:
    """Tensor names (graph inputs and node outputs), node name -> node, op type -> nodes."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    tensors = {i.name for i in g.input if i.name not in inits}
    tensors |= {o for n in g.node for o in n.output if o}
    by_name = {n.name: n for n in g.node if n.name}
    by_type: dict[str, list[Any]] = {}
    for n in g.node:
        by_type.setdefault(n.op_type, []).append(n)
    return tensors, by_name, by_type


def _resolve(model: Any, exclude: Iterable[str]) -> tuple[set[str], set[str]]:
    """``exclude`` -> (tensor names kept in float, names of nodes left unquantized)."""
    tensors, by_name, by_type = _model_names(model)
    out_tensors: set[str] = set()
    out_nodes: set[str] = set()
    for item in exclude:
        if not isinstance(item, str) or not item:
            raise UnknownNameError(f"exclusions are tensor names, node names or op types; got {item!r}")
        found = False
        if item in tensors:
            out_tensors.add(item)
            found = True
        if item in by_name:
            out_tensors.update(o for o in by_name[item].output if o)
            out_nodes.add(item)
            found = True
        if item in by_type:
            for n in by_type[item]:
                out_tensors.update(o for o in n.output if o)
                if n.name:
                    out_nodes.add(n.name)
            found = True
        if not found and item in _subgraph_names(model.graph.node):
            out_tensors.add(item)  # inside an If/Loop/Scan body: in float already
            found = True
        if not found:
            import onnx

            if onnx.defs.has(item):
                raise UnknownNameError(
                    f"--exclude {item!r}: the model has no {item} node (its op types: "
                    f"{', '.join(sorted(by_type))})"
                )
            candidates = sorted(tensors | set(by_name) | set(by_type))
            close = difflib.get_close_matches(item, candidates, n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else (
                "; tensor names are the graph inputs and node outputs (as in Netron or a "
                "calibration cache of this model), op types as in the ONNX spec ('Sigmoid')"
            )
            raise UnknownNameError(
                f"--exclude {item!r}: the model has no tensor, node or op type of that name"
                f"{hint}"
            )
    return out_tensors, out_nodes


def resolve_exclusions(model: Any, exclude: Iterable[str]) -> set[str]:
    """The tensors that ``exclude`` keeps in float.

    Parameters
    ----------
    model : path, bytes or onnx.ModelProto
        The FP32 model.
    exclude : iterable of str
        Each a tensor name (a graph input or a node output), a node name (its outputs), or an op
        type such as ``"Sigmoid"`` (the outputs of every node of that type).

    Returns
    -------
    set of str
        Tensor names. Dropping them from a cache (:meth:`CalibrationTable.without
        <kldiv.scales.CalibrationTable.without>`) makes TensorRT run the layers that write and
        read them in higher precision; :func:`to_qdq_onnx` leaves them (and the weights of
        their producers) in float.

    Raises
    ------
    UnknownNameError
        If a name is no tensor, node or op type of the model; the message lists close names.
    """
    m = load_onnx(model)
    return _resolve(m, exclude)[0]


# -- coverage -----------------------------------------------------------------------------------
@dataclass
class TableCoverage:
    """How well a calibration table matches a model.

    Attributes
    ----------
    calibratable : list of str
        The model's tensors a calibration would give a scale (network order), less exclusions.
    covered : list of str
        Those the table has an entry for.
    by_alias : dict
        Tensors without an entry that only rearrange a covered one (``Reshape``, ``Flatten``
        ...) -> that tensor; the Q/DQ export gives them its scale.
    missing : list of str
        Calibratable tensors with no usable scale.
    unknown : list of str
        Table entries that name no tensor of the model.
    model_sha256 : str
        SHA-256 of the model (file bytes, or the serialized ModelProto).
    table_model_sha256 : str or None
        The model hash the table's provenance records (``None`` when it records none, as
        for a cache TensorRT wrote).
    """

    calibratable: list[str]
    covered: list[str]
    by_alias: dict[str, str]
    missing: list[str]
    unknown: list[str]
    model_sha256: str
    table_model_sha256: str | None = None
    table_model: str | None = None

    @property
    def fraction(self) -> float:
        """Covered (directly or by alias) / calibratable; 1.0 for a model with none."""
        n = len(self.calibratable)
        return (len(self.covered) + len(self.by_alias)) / n if n else 1.0

    @property
    def same_model(self) -> bool | None:
        """Whether the table's provenance names this model (None: it names none)."""
        if self.table_model_sha256 is None:
            return None
        return self.table_model_sha256 == self.model_sha256

    def to_text(self) -> str:
        """One line: covered / calibratable, missing, unknown."""
        n = len(self.calibratable)
        text = (
            f"table covers {len(self.covered) + len(self.by_alias)} of the model's {n} "
            f"calibratable tensors ({self.fraction:.0%}"
        )
        text += f"; {len(self.by_alias)} through a reshape-like alias)" if self.by_alias else ")"
        if self.missing:
            text += f"; missing: {_preview(self.missing)}"
        if self.unknown:
            text += f"; {len(self.unknown)} entries name no tensor of the model: " + _preview(
                self.unknown
            )
        return text


def _preview(names: list[str], k: int = 5) -> str:
    shown = ", ".join(names[:k])
    return shown + (f" ... (+{len(names) - k})" if len(names) > k else "")


def _all_value_names(model: Any) -> set[str]:
    g = model.graph
    names = {v.name for v in (*g.input, *g.output, *g.value_info)}
    names |= {o for n in g.node for o in n.output} | _subgraph_names(g.node)
    return names


def table_coverage(model: Any, table: Mapping[str, Any], *, exclude: Iterable[str] = ()) -> TableCoverage:
    """Which of the model's calibratable tensors ``table`` covers.

    Also which it does not, and which of its entries are unknown to the model.

    Parameters
    ----------
    model : path, bytes or onnx.ModelProto
        The FP32 model.
    table : CalibrationTable or mapping of tensor name -> scale
        The scales; a :class:`~kldiv.scales.CalibrationTable`'s ``provenance["model_sha256"]``
        is compared with the model's.
    exclude : iterable of str, optional
        Exclusions (see :func:`resolve_exclusions`): not counted as calibratable.

    Returns
    -------
    TableCoverage
    """
    from .runners import load_model

    proto, _, sha = load_model(model)
    return _coverage(proto, sha, table, _resolve(proto, exclude)[0])


def _coverage(proto: Any, sha: str, table: Mapping[str, Any], excluded: set[str]) -> TableCoverage:
    from .runners import calibration_tensor_names, value_aliases

    inputs, outputs, _ = calibration_tensor_names(proto)
    calibratable = [n for n in (*inputs, *outputs) if n not in excluded]
    names = set(table)
    covered = [n for n in calibratable if n in names]
    aliases = value_aliases(proto, calibratable)
    by_alias = {n: src for n, src in aliases.items() if n not in names and src in names}
    missing = [n for n in calibratable if n not in names and n not in by_alias]
    known = _all_value_names(proto)
    unknown = [n for n in table if n not in known]
    prov = getattr(table, "provenance", None) or {}
    recorded = prov.get("model_sha256")
    return TableCoverage(
        calibratable=calibratable, covered=covered, by_alias=by_alias, missing=missing,
        unknown=unknown, model_sha256=sha,
        table_model_sha256=str(recorded) if recorded else None,
        table_model=str(prov["model"]) if prov.get("model") else None,
    )  # fmt: skip


def check_table(
    model: Any,
    table: Mapping[str, Any],
    *,
    exclude: Iterable[str] = (),
    force: bool = False,
    min_coverage: float = MIN_TABLE_COVERAGE,
) -> TableCoverage:
    """Refuse a table that belongs to another model; return its coverage otherwise.

    Parameters
    ----------
    model, table, exclude
        As for :func:`table_coverage`.
    force : bool, optional
        Only log what is wrong, never raise.
    min_coverage : float, optional
        Smallest fraction of calibratable tensors the table must cover (default
        :data:`~kldiv.defaults.MIN_TABLE_COVERAGE`).

    Returns
    -------
    TableCoverage

    Raises
    ------
    TableMismatchError
        If the table's provenance records another model's SHA-256, or it covers less than
        ``min_coverage`` of the calibratable tensors (and ``force`` is false).
    """
    from .runners import load_model

    proto, _, sha = load_model(model)
    return _check_coverage(_coverage(proto, sha, table, _resolve(proto, exclude)[0]), force,
                           min_coverage)  # fmt: skip


def _check_coverage(cov: TableCoverage, force: bool, min_coverage: float) -> TableCoverage:
    problems: list[str] = []
    if cov.same_model is False:
        where = f" ({cov.table_model})" if cov.table_model else ""
        problems.append(
            f"the table was calibrated on another model{where}: sha256 "
            f"{cov.table_model_sha256[:12] if cov.table_model_sha256 else ''}..., this model is "
            f"{cov.model_sha256[:12]}..."
        )
    if cov.fraction < min_coverage:
        problems.append(
            f"it covers {len(cov.covered) + len(cov.by_alias)} of the model's "
            f"{len(cov.calibratable)} calibratable tensors ({cov.fraction:.0%}, below "
            f"{min_coverage:.0%}); first missing: {_preview(cov.missing)}"
            + (f"; {len(cov.unknown)} table entries name no tensor of the model, e.g. "
               f"{_preview(cov.unknown, 3)}" if cov.unknown else "")
        )  # fmt: skip
    if problems:
        text = "calibration table does not match the model: " + "; ".join(problems)
        if force:
            logger.warning("%s (applied anyway: force)", text)
        else:
            raise TableMismatchError(
                f"{text}. Calibrate this model (kldiv calibrate MODEL ...), or pass force=True "
                "(--force) to apply the table anyway"
            )
    logger.info("%s", cov.to_text())
    return cov


# -- the export ---------------------------------------------------------------------------------
def _folds_into(user: Any, tensor: str, activations: set[str]) -> bool:
    """Whether ``user`` folds into the weighted op in TensorRT.

    ``user`` reads ``tensor`` out of a weighted op; it folds for a BatchNormalization, or a
    per-channel scale/shift (``Add``/``Sub``/``Mul``/``Div`` by a constant).
    """
    if user.op_type == "BatchNormalization":
        return True
    if user.op_type in ("Add", "Sub", "Mul", "Div") and len(user.input) == 2:
        other = user.input[1] if user.input[0] == tensor else user.input[0]
        return other not in activations
    return False


def _residual_inputs(nodes: list[Any], producer: Mapping[str, Any], activations: set[str],
                     ops: Collection[str]) -> dict[int, str]:
    """``Add`` nodes of a skip connection -> their residual input (by ``id`` of the node).

    The ``Add`` fuses into the convolution that produces one input (through BatchNormalization,
    ReLU, bias ``Add``/``Mul``); the other input is the residual. When both come out of such
    convolutions, the one reached over fewer nodes from their common ancestor is the residual
    (the shortcut). A convolution that is itself the common ancestor (``x -> conv -> ... -> add``
    and ``conv -> add``) is no skip connection.
    """

    def backbone(tensor: str) -> tuple[Any, int] | None:
        node, depth = producer.get(tensor), 0
        while node is not None and depth < 8:
            if node.op_type in ("Conv", "ConvTranspose") and node.op_type in ops:
                return node, depth
            if node.op_type not in _RESIDUAL_PATH_OPS:
                return None
            data = [i for i in node.input if i in activations]
            if len(data) != 1:
                return None
            node, depth = producer.get(data[0]), depth + 1
        return None

    def ancestors(tensor: str) -> dict[int, int]:
        """id(node) -> shortest distance (in nodes) from ``tensor``'s producer."""
        dist: dict[int, int] = {}
        frontier = [(tensor, 0)]
        while frontier:
            nxt: list[tuple[str, int]] = []
            for t, d in frontier:
                node = producer.get(t)
                if node is None or id(node) in dist:
                    continue
                dist[id(node)] = d
                nxt.extend((i, d + 1) for i in node.input if i in activations)
            frontier = nxt
            if len(dist) > 2000:
                break
        return dist

    out: dict[int, str] = {}
    for node in nodes:
        if node.op_type not in ("Add", "Sum") or len(node.input) != 2:
            continue
        a, b = node.input
        if a not in activations or b not in activations or a == b:
            continue
        if a not in producer or b not in producer:
            continue
        ba, bb = backbone(a), backbone(b)
        if ba is None and bb is None:
            continue
        da, db = ancestors(a), ancestors(b)
        common = set(da) & set(db)
        lca = min(common, key=lambda k: da[k] + db[k]) if common else None
        if ba is not None and bb is not None:
            if ba[0] is bb[0]:
                continue
            # the branch with the longer path from the common ancestor holds the fused conv
            if lca is None or da[lca] == db[lca]:
                out[id(node)] = b
            else:
                out[id(node)] = b if da[lca] > db[lca] else a
        elif ba is not None:
            if lca is not None and lca == id(ba[0]):
                continue
            out[id(node)] = b
        elif bb is not None:
            if lca is not None and lca == id(bb[0]):
                continue
            out[id(node)] = a
    return out


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
    force: bool = False,
    check: bool = True,
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
        ``'inputs'`` (default): Q/DQ on the activation inputs of ``ops`` and on the residual
        input of skip-connection ``Add`` nodes (TensorRT's recommendation). ``'all'``: also on
        every other calibrated tensor, like implicit INT8.
    bias : {'float', 'int32'}, optional
        Keep biases of Conv/Gemm in float (TensorRT, default) or quantize them to int32 with
        scale ``s_input · s_weight`` (ONNX Runtime's integer-kernel form).
    ops : collection of str, optional
        Op types whose inputs (and weights) are quantized.
    exclude : iterable of str, optional
        Tensor names, node names or op types to keep in float (see
        :func:`resolve_exclusions`). An excluded tensor gets no Q/DQ pair and the node that
        writes it is not quantized (inputs nor weights): the layer runs in higher precision,
        as TensorRT runs it when the tensor is missing from its cache.
    opset : int, optional
        Target opset; default ``max(model opset, 13)``. Models below it are converted with
        ``onnx.version_converter``.
    force : bool, optional
        Apply a table that :func:`check_table` would refuse (another model's, or covering
        too little of this one), with a logged warning.
    check : bool, optional
        Run :func:`check_table` (default). ``False`` skips it silently, for callers that
        have checked the table once and export many variants of it (one tensor at a time ...).

    Returns
    -------
    onnx.ModelProto
        The Q/DQ model; passes ``onnx.checker.check_model(full_check=True)``. Its
        ``metadata_props`` record what was quantized (``kldiv_qdq_activations``,
        ``kldiv_qdq_weights``, ``kldiv_qdq_excluded``, and ``kldiv_qdq_scale_from``: JSON
        of tensor -> the table entry whose scale it uses where that is not its own).

    Raises
    ------
    QuantizationError
        If a scale is infinite, NaN or negative, an option value is unknown, or the Q/DQ model
        fails ``onnx.checker`` (the message names the model and the node).
    TableMismatchError
        If the table belongs to another model (see :func:`check_table`) and ``force`` is false.
    UnknownNameError
        If an ``exclude`` entry names nothing in the model.
    ModelError
        If the model cannot be loaded or converted to the target opset.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from .runners import (
        FLOAT_ELEM_TYPES,
        _elem_types,
        calibration_tensor_names,
        load_model,
        value_aliases,
    )

    for value, allowed, what in (
        (weights, _WEIGHT_MODES, "weights"),
        (placement, _PLACEMENTS, "placement"),
        (bias, _BIAS_MODES, "bias"),
    ):
        if value not in allowed:
            raise QuantizationError(f"unknown {what}={value!r}; choose one of {allowed}")

    proto, label, sha = load_model(model)
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    excluded, excluded_nodes = _resolve(m, exclude)
    if check:
        _check_coverage(_coverage(proto, sha, table, excluded), force, MIN_TABLE_COVERAGE)

    target = max(_opset(m), _MIN_OPSET) if opset is None else int(opset)
    if target < _MIN_OPSET:
        raise QuantizationError(f"opset {target} has no per-axis Q/DQ; use opset >= 13")
    if _opset(m) < target:
        from onnx import version_converter

        try:
            m = version_converter.convert_version(m, target)
        except Exception as exc:
            raise ModelError(
                f"{label}: could not convert the model from opset {_opset(m)} to {target}: "
                f"{exc}; convert it yourself and pass the result"
            ) from exc
    original = onnx.ModelProto()
    original.CopyFrom(m)

    g = m.graph
    summary = QdqSummary()
    namer = _Namer(g)
    inits = {i.name: i for i in g.initializer}
    const_nodes = {
        n.output[0]: n
        for n in g.node
        if n.op_type == "Constant" and any(a.name == "value" for a in n.attribute)
    }
    producer = {o: n for n in g.node for o in n.output if o}
    # a node is left alone when excluded by name/op type, or when it writes an excluded tensor
    skip_node_ids = {
        id(n) for n in g.node if n.name in excluded_nodes or any(o in excluded for o in n.output)
    }

    folded: dict[str, np.ndarray | None] = {}

    def constant(name: str) -> np.ndarray | None:
        value = _constant_value(name, inits, const_nodes)
        if value is None and name in producer and name not in activations:
            if name not in folded:  # a weight computed from constants only: fold it
                folded[name] = _fold_constant(name, producer, inits, m, label)
            value = folded[name]
        return None if value is None else np.asarray(value)

    new_nodes: list[Any] = []
    new_inits: list[Any] = []
    dq_of: dict[str, str] = {}  # activation -> its dequantized name
    act_scale: dict[str, np.float32] = {}
    qnode_tensor: dict[str, str] = {}  # inserted node name -> the tensor it quantizes

    # which tensors are float activations (graph inputs and node outputs, not constants)
    types = _elem_types(m)
    folded_ok: set[str] = set()  # outputs of constant-only nodes
    # (a tensor computed from constants only is a weight TensorRT folds, not an activation)
    calib_inputs, calib_outputs, _ = calibration_tensor_names(m)
    activations = {
        t for t in (*calib_inputs, *calib_outputs)
        if types.get(t, TensorProto.FLOAT) in FLOAT_ELEM_TYPES
    }  # fmt: skip
    aliases = value_aliases(m, activations)
    const_ids: set[int] = set()  # nodes that compute constants only (weights TensorRT folds)
    for n in g.node:
        ins = [i for i in n.input if i]
        if (n.output and not _subgraphs(n) and all(o not in activations for o in n.output if o)
                and all(i in inits or i in const_nodes or i in folded_ok for i in ins)):
            const_ids.add(id(n))
            folded_ok.update(o for o in n.output if o)

    def dequantize(
        base: str, q_name: str, scale: np.ndarray, zero_type: Any, axis: int | None = None
    ) -> tuple[str, str, str]:
        """Add scale / zero-point initializers and a DequantizeLinear reading ``q_name``."""
        s_name = namer(f"{base}_scale")
        z_name = namer(f"{base}_zero_point")
        d_name = namer(f"{base}_dequantized")
        new_inits.append(numpy_helper.from_array(scale.astype(np.float32), s_name))
        new_inits.append(numpy_helper.from_array(np.zeros(scale.shape, zero_type), z_name))
        attrs: dict[str, Any] = {"axis": axis} if axis is not None else {}
        node_name = namer(f"{base}_DequantizeLinear")
        qnode_tensor[node_name] = base
        new_nodes.append(
            helper.make_node(
                "DequantizeLinear", [q_name, s_name, z_name], [d_name], name=node_name, **attrs,
            )
        )  # fmt: skip
        return d_name, s_name, z_name

    def scale_source(tensor: str, scale_of: str | None) -> str | None:
        """The table entry whose scale ``tensor``'s pair uses, or None (reason recorded)."""
        src = scale_of or tensor
        if src in table:
            return src
        if scale_of is None and tensor in aliases and aliases[tensor] in table:
            return aliases[tensor]  # the same values rearranged: the source's scale is exact
        summary.skipped[tensor] = f"{src!r} is not in the calibration table"
        return None

    def activation_dq(tensor: str, scale_of: str | None = None) -> str | None:
        if tensor in dq_of:
            return dq_of[tensor]
        if tensor in excluded:
            summary.skipped[tensor] = "excluded"
            return None
        if tensor not in activations:
            return None
        src = scale_source(tensor, scale_of)
        if src is None:
            return None
        scale = np.float32(table[src])
        why = _check_scale(src, scale)
        if why is not None:
            summary.skipped[tensor] = why
            return None
        q_name = namer(f"{tensor}_quantized")
        d_name, s_name, z_name = dequantize(tensor, q_name, np.array(scale), np.int8)
        node_name = namer(f"{tensor}_QuantizeLinear")
        qnode_tensor[node_name] = tensor
        new_nodes.append(
            helper.make_node("QuantizeLinear", [tensor, s_name, z_name], [q_name], name=node_name)
        )
        dq_of[tensor] = d_name
        act_scale[tensor] = scale
        summary.activations.append(tensor)
        summary.skipped.pop(tensor, None)
        if src != tensor:
            summary.scale_from[tensor] = src
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

    def rewire(node: Any, tensor: str, dq: str) -> None:
        for i, inp in enumerate(node.input):
            if inp == tensor:
                node.input[i] = dq

    nodes = list(g.node)
    consumers = _consumers(nodes)  # listed before any rewiring
    quantized_weight_cache: dict[tuple[str, int], tuple[str, np.ndarray] | None] = {}
    for node in nodes:
        if node.op_type not in ops or id(node) in skip_node_ids:
            continue
        data_inputs = [0, 1] if node.op_type == "MatMul" else [0]
        if any(i < len(node.input) and node.input[i] in excluded for i in data_inputs):
            # TensorRT runs a layer reading a tensor without a scale in higher precision:
            # its weights stay in float too
            for i in data_inputs:
                if i < len(node.input) and node.input[i] in excluded:
                    summary.skipped[node.input[i]] = "excluded"
            continue
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

    # the residual input of a skip-connection Add (TensorRT then fuses the Add into the conv)
    for node in nodes:
        if id(node) in skip_node_ids:
            continue
        residual = _residual_inputs([node], producer, activations, ops).get(id(node))
        if residual is not None:
            dq = activation_dq(residual)
            if dq is not None:
                rewire(node, residual, dq)

    if placement == "all":
        graph_outputs = {o.name for o in g.output}

        def quantized_as_own(t: str) -> bool:
            """Whether ``t`` will carry a Q/DQ pair with its own table entry."""
            return (t in table and t in activations and t not in excluded
                    and t not in graph_outputs)  # fmt: skip

        def concat_scale(t: str) -> str | None:
            """The Concat output whose scale ``t`` takes (read only by that Concat)."""
            users = consumers.get(t, [])
            if len(users) == 1 and users[0].op_type == "Concat" and users[0].output:
                out = users[0].output[0]
                if quantized_as_own(out) and id(users[0]) not in skip_node_ids:
                    return str(out)
            return None

        order = [i.name for i in g.input] + [o for n in nodes for o in n.output if o]
        for tensor in dict.fromkeys(order):
            if tensor in graph_outputs or tensor not in activations:
                continue
            users = consumers.get(tensor, [])
            if not users:
                continue
            scale_of: str | None = None
            prod = producer.get(tensor)
            if tensor not in dq_of and len(users) == 1:
                user = users[0]
                out = user.output[0] if user.output else ""
                if user.op_type in _FUSED_ACTIVATIONS and prod is not None and (
                    prod.op_type in _FUSING_PRODUCERS
                ):
                    # ReLU commutes with Q at any scale; Clip(0, b) only when its output's
                    # own pair follows (same scale), which a Concat reading it would replace
                    exact = user.op_type == "Relu" or (
                        user.op_type == "Clip" and _clip_min_is_zero(user, inits, const_nodes)
                        and concat_scale(out) is None
                    )
                    if exact and quantized_as_own(out) and id(user) not in skip_node_ids:
                        # Q commutes with ReLU / Clip(0, b) when the output is quantized with
                        # the same scale: quantizing the input with it changes nothing
                        scale_of = out
                    else:
                        summary.skipped[tensor] = (
                            f"fused into the {user.op_type} that reads it (TensorRT keeps "
                            "it in higher precision inside the fused layer)"
                        )
                        continue
                elif prod is not None and prod.op_type in QUANTIZABLE_OPS and (
                    _folds_into(user, tensor, activations)
                ):
                    summary.skipped[tensor] = (
                        f"the {user.op_type} that reads it folds into the {prod.op_type} "
                        "(TensorRT never materializes it)"
                    )
                    continue
                elif concat_scale(tensor) is not None:
                    scale_of = concat_scale(tensor)  # Q commutes with Concat; TensorRT shares it
            if tensor not in dq_of and tensor not in table and scale_of is None and (
                tensor not in aliases
            ):
                continue  # integer/shape tensors are not calibrated
            dq = activation_dq(tensor, scale_of)
            if dq is None:
                continue
            for user in users:  # every reader of the tensor (listed before any rewrite)
                if id(user) not in skip_node_ids:
                    rewire(user, tensor, dq)

    # drop float weights (initializers, Constant nodes, folded constant-only nodes) that
    # nothing reads any more
    keep_nodes = list(g.node)
    while True:
        used = _used_names([*keep_nodes, *new_nodes]) | {o.name for o in g.output}
        dead = [n for n in keep_nodes if (n.op_type == "Constant" or id(n) in const_ids)
                and not any(o in used for o in n.output)]  # fmt: skip
        if not dead:
            break
        dead_ids = {id(n) for n in dead}
        keep_nodes = [n for n in keep_nodes if id(n) not in dead_ids]
    del g.node[:]
    g.node.extend(keep_nodes)
    keep_inits = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep_inits)

    for name, why in summary.skipped.items():
        if why == "excluded" or why.startswith(("fused", "the ")):
            logger.info("Q/DQ: tensor %r stays in float: %s", name, why)
        else:
            logger.warning("Q/DQ: tensor %r stays in float: %s", name, why)

    # topological order: insert the new nodes, then sort (subgraph reads count as uses)
    all_nodes = list(g.node) + new_nodes
    available = {i.name for i in g.input} | {i.name for i in g.initializer}
    available |= {i.name for i in new_inits}
    ordered = _toposort(all_nodes, available)
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
            "kldiv_qdq_excluded": ",".join(sorted(excluded)),
            "kldiv_qdq_scale_from": json.dumps(summary.scale_from, sort_keys=True),
            "kldiv_qdq_options": f"weights={weights} placement={placement} bias={bias}",
        },
    )
    m.doc_string = (m.doc_string + "\n" if m.doc_string else "") + (
        f"Q/DQ inserted by kldiv: {len(summary.activations)} activations, "
        f"{len(summary.weights)} weights"
    )
    _check_qdq(m, original, label, qnode_tensor)
    return m


_NODE_IN_MESSAGE = (
    re.compile(r"node name: ([^\s)]+)"),
    re.compile(r"of node:?\s*name:\s*([^\s]+)"),
    re.compile(r"[Nn]ode \(([^)]+)\)"),
)


def _check_qdq(m: Any, original: Any, label: str, qnode_tensor: Mapping[str, str]) -> None:
    """``onnx.checker`` with full shape inference; a failure names the model and the node.

    A model whose FP32 form already fails the full check (strict shape inference of a
    custom or odd op) is held to the plain structural check, which its FP32 form passes.
    """
    import onnx

    try:
        onnx.checker.check_model(m, full_check=True)
        return
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        error: Exception = exc
    try:
        onnx.checker.check_model(original, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        logger.info("%s fails onnx's full check before Q/DQ (%s); checking structure only",
                    label, str(exc).splitlines()[0] if str(exc) else exc)  # fmt: skip
        try:
            onnx.checker.check_model(m)
            return
        except onnx.checker.ValidationError as exc2:
            error = exc2
    text = str(error).strip()
    node = next((mt.group(1) for p in _NODE_IN_MESSAGE if (mt := p.search(text))), None)
    node = node.rstrip(",.:;'\"") if node else None
    where = f" at node {node!r}" if node else ""
    fix = "report it with the model attached"
    if node and node in qnode_tensor:
        fix = f"keep that tensor in float with exclude=[{qnode_tensor[node]!r}] (--exclude)"
    elif node:
        fix = f"keep that node in float with exclude=[{node!r}] (--exclude), or report it"
    raise QuantizationError(
        f"{label}: the Q/DQ form of this model fails onnx.checker{where}: "
        f"{text.splitlines()[0] if text else error.__class__.__name__}; {fix}"
    ) from error


def _used_names(nodes: Iterable[Any]) -> set[str]:
    """Every tensor name read by ``nodes``, including reads from inside their subgraphs."""
    used: set[str] = set()
    for n in nodes:
        used |= _reads(n)
    return used


def _toposort(nodes: list[Any], available: set[str]) -> list[Any]:
    """Order ``nodes`` so every input is produced before use, otherwise keeping their order.

    Kahn's algorithm with the original position as priority. A name read inside a node's
    ``If``/``Loop``/``Scan`` subgraphs counts as an input of that node. Inputs produced by no
    node (graph inputs, initializers, names a subgraph defines itself) count as available.
    """
    import heapq

    producer = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    waiting = [0] * len(nodes)
    users: dict[int, list[int]] = {}
    for k, n in enumerate(nodes):
        deps = {producer[i] for i in _reads(n) if i in producer and i not in available}
        deps.discard(k)
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
