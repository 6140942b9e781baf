"""Run an ONNX model and hand out every activation TensorRT would calibrate.

:class:`OnnxRuntimeRunner` loads an ONNX model, finds the tensors TensorRT's ONNX parser would
create and calibrate, makes each one a graph output, and runs the model with onnxruntime on
CPU one batch at a time, yielding ``{tensor_name: array}``.

Which tensors
-------------
- **Graph inputs** (not initializers listed as inputs, as old exporters do) and **every node
  output** of the main graph, named by their ONNX value names — TensorRT's ONNX parser gives
  network tensors those names, so the names match a TensorRT cache.
- Only floating-point tensors (float32, float16, float64). Integer and boolean tensors
  (shapes, indices, masks) are never calibrated.
- **Not weights**: initializers, ``Constant`` node outputs, and every tensor computed only
  from them (a constant-only subgraph, e.g. PaddlePaddle exports that store weights in
  ``Constant`` nodes and transpose or scale them in the graph) are skipped. TensorRT folds
  these into weights.
- **Tensors inside ``If`` / ``Loop`` / ``Scan`` subgraphs are not collected.** onnxruntime
  cannot expose them as outputs of the main graph; TensorRT turns these into conditional /
  loop layers whose inner tensors it names its own way. The outputs of the ``If`` / ``Loop``
  node itself (main-graph values) are collected. The runner logs once how many inner tensors
  it left out.

Memory
------
Only one batch's activations are alive at a time: :meth:`OnnxRuntimeRunner.iter_activations`
yields one dict per batch and drops it before running the next.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _onnx_wire as _wire
from .defaults import DEFAULT_ORT_OPTIMIZATION
from .errors import DataSourceError, ModelError
from .graph import (
    GraphFacts,
    activation_bounds,
    scale_sources,
    value_aliases,
)

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = [
    "InputSpec",
    "OnnxRuntimeRunner",
    "activation_bounds",
    "calibration_tensor_names",
    "feed_samples",
    "input_specs",
    "prepare_feed",
    "split_feed",
    "load_model",
    "scale_sources",
    "value_aliases",
]

log = logging.getLogger(__name__)

#: ONNX element types of the tensors that are calibrated.
FLOAT_ELEM_TYPES = frozenset({1, 10, 11})
_FLOAT_DTYPES = (np.float32, np.float16, np.float64)
# ops whose output is not a function of their inputs
_NONDETERMINISTIC = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
     "Bernoulli"}
)
_OPT_LEVELS = ("disable", "basic", "extended", "all")
#: Opsets the runner is tested on.
TESTED_OPSETS = range(11, 22)


def _file_format(path: Path) -> str | None:
    """The serialization onnx itself picks for ``path`` by its suffix.

    ``None``: binary protobuf. onnx < 1.15 has no registry and reads binary protobuf only.
    """
    try:
        from onnx.serialization import registry
    except ImportError:  # pragma: no cover - onnx < 1.15
        return None
    fmt = registry.get_format_from_file_extension(path.suffix)
    return None if fmt in (None, "protobuf") else fmt


def load_model(model: Any) -> tuple[onnx.ModelProto, str, str]:
    """Load an ONNX model from a path, bytes or a ``ModelProto``.

    Returns
    -------
    model : onnx.ModelProto
        The model (external data loaded).
    label : str
        The path, or ``'<bytes>'`` / ``'<ModelProto>'``, for messages.
    sha256 : str
        Hex SHA-256 of the model file (or of the serialized model).

    Raises
    ------
    ModelError
        If the file is missing or is not a valid ONNX model.
    """
    import onnx

    if isinstance(model, onnx.ModelProto):
        data = model.SerializeToString()
        return model, "<ModelProto>", hashlib.sha256(data).hexdigest()
    if isinstance(model, (bytes, bytearray)):
        label = "<bytes>"
        data = bytes(model)
        try:
            proto = onnx.load_from_string(data)
        except Exception as exc:
            raise ModelError(f"{label}: not an ONNX model ({exc.__class__.__name__}: {exc})") from exc
    elif isinstance(model, (str, os.PathLike)):
        path = Path(model)
        label = str(path)
        if not path.is_file():
            raise ModelError(f"{path}: model file not found; give the path of an .onnx file")
        data = path.read_bytes()
        try:
            # parse the bytes already read (for the hash), in the format onnx.load would pick
            # for this suffix (textproto, JSON, ...); then any external data
            from onnx.external_data_helper import load_external_data_for_model

            fmt = _file_format(path)
            proto = (onnx.load_from_string(data) if fmt is None
                     else onnx.load_from_string(data, format=fmt))
            load_external_data_for_model(proto, str(path.parent))
        except Exception as exc:
            raise ModelError(
                f"{path}: cannot load it as an ONNX model ({exc.__class__.__name__}: {exc}); "
                "check that it is an .onnx file and not truncated"
            ) from exc
    else:
        raise ModelError(
            f"a model must be a path, bytes or onnx.ModelProto, not {type(model).__name__}"
        )
    if not proto.graph.node and not proto.graph.input:
        raise ModelError(f"{label}: the file parsed but holds an empty graph; is it an ONNX model?")
    return proto, label, hashlib.sha256(data).hexdigest()


def _graph_attrs(node: Any) -> list[Any]:
    graphs = []
    for a in node.attribute:
        if a.type == _wire.ATTR_GRAPH:  # == onnx.AttributeProto.GRAPH
            graphs.append(a.g)
        elif a.type == _wire.ATTR_GRAPHS:
            graphs.extend(a.graphs)
    return graphs


def _count_subgraph_values(graph: Any) -> int:
    n = 0
    for node in graph.node:
        n += sum(1 for o in node.output if o)
        for g in _graph_attrs(node):
            n += _count_subgraph_values(g)
    return n


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value whose type is known.

    After shape inference; for the wire reader's model, as declared in the file (the runner
    takes the others from onnxruntime).
    """
    if isinstance(model, _wire.Model):
        g = model.graph
        return {vi.name: vi.elem_type for vi in [*g.value_info, *g.input, *g.output]
                if vi.elem_type}
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as exc:  # noqa: BLE001 - custom ops, >2 GB models ...
        log.debug("shape inference failed (%s); types come from the first batch", exc)
        inferred = model
    types: dict[str, int] = {}
    g = inferred.graph
    for vi in [*g.value_info, *g.input, *g.output]:
        t = vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else 0
        if t:
            types[vi.name] = t
    return types


def calibration_tensor_names(
    model: onnx.ModelProto, *, include_constants: bool = False
) -> tuple[list[str], list[str], int]:
    """The tensors TensorRT would calibrate, in network order.

    Parameters
    ----------
    model : onnx.ModelProto
        The model.
    include_constants : bool, optional
        Also list floating tensors computed only from initializers / ``Constant`` nodes.

    Returns
    -------
    inputs : list of str
        Floating graph inputs (initializers excluded).
    outputs : list of str
        Node outputs of the main graph that are floating or of unknown type (unknown ones are
        filtered by dtype at run time), constant-only ones excluded.
    n_subgraph : int
        How many values live inside ``If``/``Loop``/``Scan`` subgraphs (not collected).
    """
    g = model.graph
    const = {t.name for t in g.initializer} | {t.values.name for t in g.sparse_initializer}
    types = _elem_types(model)
    inputs = [
        vi.name for vi in g.input
        if vi.name not in const and types.get(vi.name, 0) in FLOAT_ELEM_TYPES
    ]
    outputs: list[str] = []
    seen = set(inputs)
    n_sub = 0
    for node in g.node:
        subgraphs = _graph_attrs(node)
        n_sub += sum(_count_subgraph_values(s) for s in subgraphs)
        ins = [i for i in node.input if i]
        is_const = node.op_type == "Constant" or (
            bool(ins)
            and all(i in const for i in ins)
            and not subgraphs
            and node.op_type not in _NONDETERMINISTIC
        )
        for o in node.output:
            if not o:
                continue
            if is_const:
                const.add(o)
                if not include_constants:
                    continue
            t = types.get(o, 0)
            if (t == 0 or t in FLOAT_ELEM_TYPES) and o not in seen:
                outputs.append(o)
                seen.add(o)
    return inputs, outputs, n_sub


_ORT_FLOAT_TYPES = ("tensor(float)", "tensor(float16)", "tensor(double)")
#: Suffixes onnx reads as binary protobuf (others may be text formats: onnx reads those).
_BINARY_SUFFIXES = frozenset({".onnx", ".pb"})


def _graph_facts(
    model: Any, include_constants: bool
) -> tuple[dict[str, float], dict[str, str], list[str], list[str], int]:
    """Clip bounds, pooling sources and the calibrated tensors of a model.

    The model is an onnx proto or the wire reader's.
    """
    bounds = activation_bounds(model)
    sources = scale_sources(model)
    inputs, outputs, n_sub = calibration_tensor_names(model, include_constants=include_constants)
    return bounds, sources, inputs, outputs, n_sub


def _load_in_thread(data: bytes) -> Future[Any]:
    """``onnx``'s ``ModelProto`` of ``data``, parsed in a daemon thread.

    For the stage planner, which needs onnx's shape inference; errors are raised by
    ``result()``.
    """
    future: Future[Any] = Future()

    def work() -> None:
        try:
            future.set_result(load_model(data)[0])
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            future.set_exception(exc)

    threading.Thread(target=work, name="kldiv-onnx-load", daemon=True).start()
    return future


def _read_without_onnx(model: Any, include_constants: bool) -> Any:
    """``(model, label, sha256, bytes, graph facts)`` read by :mod:`kldiv._onnx_wire`.

    ``None`` when onnx must read it (an onnx proto, a text format, external data, anything the
    wire reader does not handle; onnx then gives the usual errors).
    """
    if isinstance(model, (bytes, bytearray)):
        label, data = "<bytes>", bytes(model)
    elif isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if path.suffix.lower() not in _BINARY_SUFFIXES or not path.is_file():
            return None
        label, data = str(path), path.read_bytes()
    else:
        return None
    try:
        wire = _wire.read_model(data)
        if not wire.graph.node and not wire.graph.input:
            return None  # onnx's path names the error
        facts = _graph_facts(wire, include_constants)
    except _wire.WireFormatError as exc:
        log.debug("%s: read with onnx (%s)", label, exc)
        return None
    return wire, label, hashlib.sha256(data).hexdigest(), data, facts


@dataclass(frozen=True)
class InputSpec:
    """A model input: name, shape, dtype and batch axis.

    The shape holds ints (``str`` for a symbolic dim, ``None`` for an unknown one); the batch
    axis is the axis its samples run along (``None``: not batched, fed as given — recurrent
    state, scalars; see :func:`kldiv.data.infer_batch_axes`).
    """

    name: str
    shape: tuple[int | str | None, ...]
    dtype: np.dtype
    batch_axis: int | None = 0

    def __post_init__(self) -> None:
        if not self.shape and self.batch_axis is not None:
            object.__setattr__(self, "batch_axis", None)

    @property
    def batch_dim(self) -> int | None:
        """The fixed batch size, or ``None`` when dynamic (or the input is not batched)."""
        if self.batch_axis is None:
            return None
        d = self.shape[self.batch_axis]
        return d if isinstance(d, int) and d > 0 else None

    def describe(self) -> str:
        """``name: float32[N,3,224,224]``."""
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        batch = "" if self.batch_axis is not None else " (not batched)"
        return f"{self.name}: {self.dtype}[{dims}]{batch}"

    def samples(self, array: np.ndarray) -> int | None:
        """Samples in a prepared ``array`` (``None`` for an input that is not batched)."""
        if self.batch_axis is None or array.ndim <= self.batch_axis:
            return None
        return int(array.shape[self.batch_axis])

    def check(self, array: Any, *, where: str) -> np.ndarray:
        """Return ``array`` ready to feed, or raise a :class:`DataSourceError` naming ``where``.

        A float array of another float width is cast (float64 → float32); a sample without
        batch axis gets one (batched inputs only); rank, fixed dims and dtype kind must match.
        """
        arr = np.asarray(array)
        want = np.dtype(self.dtype)
        if arr.dtype != want:
            if arr.dtype.kind == want.kind or (arr.dtype.kind in "iu" and want.kind in "iu"):
                arr = arr.astype(want)
            else:
                hint = (
                    "; images must be preprocessed to float (declare scale/mean/std)"
                    if arr.dtype == np.uint8 and want.kind == "f"
                    else ""
                )
                raise DataSourceError(
                    f"{where}: input {self.name!r} has dtype {arr.dtype}, the model expects "
                    f"{want}{hint}"
                )
        if self.batch_axis is not None and len(self.shape) and arr.ndim == len(self.shape) - 1:
            arr = np.expand_dims(arr, self.batch_axis)
        if arr.ndim != len(self.shape):
            raise DataSourceError(
                f"{where}: input {self.name!r} has shape {arr.shape}, the model expects "
                f"{self.describe()} (rank {len(self.shape)})"
            )
        for axis, (got, want_d) in enumerate(zip(arr.shape, self.shape)):
            if axis == self.batch_axis and isinstance(want_d, int) and want_d > 0:
                if got % want_d:
                    raise DataSourceError(
                        f"{where}: input {self.name!r} has {got} samples; the model's batch "
                        f"size is fixed at {want_d}, so give a multiple of {want_d}"
                    )
            elif isinstance(want_d, int) and want_d > 0 and got != want_d:
                raise DataSourceError(
                    f"{where}: input {self.name!r} has shape {arr.shape}, the model expects "
                    f"{self.describe()} (axis {axis}: {got} != {want_d})"
                )
        if arr.size == 0:
            raise DataSourceError(f"{where}: input {self.name!r} is empty (shape {arr.shape})")
        return arr


def input_specs(
    session: Any, model: Any = None, batch_axes: Any = None
) -> list[InputSpec]:
    """The :class:`InputSpec` of each input of an onnxruntime session.

    Batch axes are inferred from the shapes (:func:`kldiv.data.infer_batch_axes`) and
    ``batch_axes`` declarations.

    Parameters
    ----------
    session : onnxruntime.InferenceSession
        The session.
    model : onnx.ModelProto, optional
        Its model; inputs that are initializers (old exporters list weights as inputs) are
        left out.
    batch_axes : mapping or iterable of ``NAME=AXIS``, optional
        Declared batch axes (``None``: not batched).

    Raises
    ------
    DataSourceError
        For a declared name that is not an input, or an axis it does not have.
    """
    from .data import infer_batch_axes

    init_names = {t.name for t in model.graph.initializer} if model is not None else set()
    raw = [i for i in session.get_inputs() if i.name not in init_names]
    shapes = {i.name: tuple(d if isinstance(d, (int, str)) else None for d in i.shape)
              for i in raw}
    axes = infer_batch_axes(shapes, batch_axes)
    return [
        InputSpec(i.name, shapes[i.name], np.dtype(_ort_type_to_numpy(i.type)), axes[i.name])
        for i in raw
    ]


def prepare_feed(
    specs: list[InputSpec], batch: Any, *, index: int = 0
) -> dict[str, np.ndarray]:
    """Check one batch against ``specs`` and return the feed dict.

    See :meth:`OnnxRuntimeRunner.prepare`.
    """
    where = f"batch {index}"
    names = [s.name for s in specs]
    if not isinstance(batch, Mapping):
        if len(specs) != 1:
            raise DataSourceError(
                f"{where}: a bare array was given but the model has inputs {names}; "
                "give a dict {input_name: array}"
            )
        batch = {names[0]: batch}
    missing = [n for n in names if n not in batch]
    extra = [k for k in batch if k not in names]
    if missing or extra:
        raise DataSourceError(
            f"{where}: the model's inputs are {names}, the batch has {list(batch)}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unknown {extra}" if extra else "")
        )
    feed = {s.name: s.check(batch[s.name], where=where) for s in specs}
    sizes = {s.name: s.samples(feed[s.name]) for s in specs if s.batch_axis is not None}
    if len(set(sizes.values())) > 1:
        axes = {s.name: s.batch_axis for s in specs}
        raise DataSourceError(
            f"{where}: inputs disagree on the batch size: {sizes} (batch axes {axes}). "
            "If an input is not batched (recurrent state, a scalar), declare it with "
            "--batch-axis NAME=none; if its batch runs along another axis, --batch-axis "
            "NAME=AXIS (batch_axes={NAME: AXIS or None} in Python)"
        )
    return feed


def feed_samples(specs: list[InputSpec], feed: Mapping[str, np.ndarray]) -> int:
    """Samples in a prepared feed: the batch size of its batched inputs (1 if none is)."""
    for s in specs:
        n = s.samples(feed[s.name]) if s.name in feed else None
        if n is not None:
            return n
    return 1


def split_feed(
    specs: list[InputSpec], feed: dict[str, np.ndarray]
) -> Iterator[dict[str, np.ndarray]]:
    """Split a feed along each batched input's axis when the model's batch size is fixed.

    Inputs that are not batched go whole into every piece.
    """
    fixed = [s.batch_dim for s in specs if s.batch_dim]
    n = feed_samples(specs, feed)
    if not fixed or n <= fixed[0]:
        yield feed
        return
    step = fixed[0]
    axes = {s.name: s.batch_axis for s in specs}
    for start in range(0, n, step):
        piece = {}
        for k, v in feed.items():
            axis = axes.get(k)
            piece[k] = v if axis is None else v[(slice(None),) * axis + (slice(start, start + step),)]
        yield piece


class OnnxRuntimeRunner:
    """Run an ONNX model with onnxruntime and yield every calibratable activation.

    Parameters
    ----------
    model : path-like, bytes or onnx.ModelProto
        The model (opsets 11–21 tested; dynamic batch supported; a fixed batch size B takes
        any multiple of B, run B samples at a time).
    graph_optimization_level : {'all', 'extended', 'basic', 'disable'}
        onnxruntime's optimizations (default :data:`~kldiv.defaults.DEFAULT_ORT_OPTIMIZATION`,
        ``'all'``). Fusions never remove a tensor that is requested as an output, so every
        level yields the same tensors; values agree to float rounding (optimized convolution
        kernels round differently, by a few ulp). ``'all'`` is the fastest in
        ``benchmarks/calibrate_e2e.py``; ``'disable'`` reproduces onnxruntime's own calibrators
        bit for bit.
    include_constants : bool, optional
        Also collect floating tensors computed only from weights (default ``False``).
    intra_op_num_threads : int, optional
        onnxruntime's thread count (default: onnxruntime's choice, all cores).
    providers : sequence of str, optional
        Execution providers (default CPU only).
    fetch_aliases : bool, default True
        Also fetch tensors that only rearrange another collected tensor's values (see
        :func:`value_aliases` and :attr:`value_aliases`). ``False`` leaves them out of the
        activations (their histograms equal their source's); :func:`kldiv.calibrate` does
        that.
    batch_axes : mapping or iterable of ``NAME=AXIS``, optional
        Declared batch axes (``None``: the input is not batched and is fed as given); the
        others are inferred from the model (:func:`kldiv.data.infer_batch_axes`).
    max_memory : int, optional
        Bytes of activations :meth:`run_parts` may hold at once. When a batch's activations
        exceed it, the graph is cut into consecutive stages (each a session of its own, each
        node computed once) whose exposed tensors plus the tensors passed between stages fit;
        the stages run one after another and each stage's activations are handed out and
        dropped before the next runs. ``None``: everything at once (:meth:`run`).

    Attributes
    ----------
    input_specs : list of InputSpec
        The model's inputs.
    tensor_names : list of str
        Tensors yielded, in network order (an unknown-typed tensor that turns out not to be
        floating is dropped from this list on the first batch).
    model_sha256 : str
        SHA-256 of the model file.
    graph : kldiv.graph.GraphFacts
        Clip bounds, pooling sources and value aliases of the calibrated tensors.
    activation_bounds, scale_sources, value_aliases : dict
        The same facts as plain dicts. ``value_aliases``: collected tensors that are
        rearrangements of another collected tensor -> that tensor (found whatever
        ``fetch_aliases`` says).
    network_order : list of str
        Every calibratable tensor in network order, aliases included.

    Examples
    --------
    >>> runner = OnnxRuntimeRunner("model.onnx")            # doctest: +SKIP
    >>> for acts in runner.iter_activations(batches):       # doctest: +SKIP
    ...     print({k: v.shape for k, v in acts.items()})
    """

    def __init__(
        self,
        model: Any,
        *,
        graph_optimization_level: str = DEFAULT_ORT_OPTIMIZATION,
        include_constants: bool = False,
        intra_op_num_threads: int | None = None,
        providers: Iterable[str] | None = None,
        fetch_aliases: bool = True,
        batch_axes: Any = None,
        max_memory: int | None = None,
    ) -> None:
        import onnxruntime as ort

        if graph_optimization_level not in _OPT_LEVELS:
            raise ModelError(
                f"graph_optimization_level must be one of {_OPT_LEVELS}, "
                f"got {graph_optimization_level!r}"
            )
        budget = None if max_memory is None else int(max_memory)
        if budget is not None and budget <= 0:
            raise ModelError(f"max_memory must be a positive number of bytes, got {max_memory!r}")
        # A model file is read without onnx when the wire reader handles it (importing onnx
        # costs more than the rest of the set-up); anything else goes through onnx.
        read = _read_without_onnx(model, include_constants)
        if read is not None:
            proto, self.label, self.model_sha256, data, facts = read
        else:
            proto, self.label, self.model_sha256 = load_model(model)
            data = None
            facts = _graph_facts(proto, include_constants)
        #: Graph facts TensorRT uses (read once here, so the model is not parsed twice).
        self.activation_bounds, self.scale_sources, inputs, outputs, n_sub = facts
        opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
        self.opset = opsets.get("ai.onnx")
        if self.opset is not None and self.opset not in TESTED_OPSETS:
            log.info("%s: opset %s is outside the tested range 11-21", self.label, self.opset)
        if n_sub:
            log.warning(
                "%s: %d tensors inside If/Loop/Scan subgraphs are not collected (onnxruntime "
                "cannot expose them; the If/Loop outputs themselves are collected)",
                self.label, n_sub,
            )
        self.network_order = [*inputs, *outputs]
        #: What the graph says about the calibrated tensors (read once, while parsed).
        self.graph = GraphFacts(
            activation_bounds=self.activation_bounds,
            scale_sources=self.scale_sources,
            value_aliases=value_aliases(proto, self.network_order),
        )
        self.value_aliases = dict(self.graph.value_aliases)
        if not fetch_aliases:
            outputs = [o for o in outputs if o not in self.value_aliases]
        self._input_floats = set(inputs)
        self._outputs = outputs
        self.tensor_names = [*inputs, *outputs]
        self._checked_dtypes = False

        existing = {o.name for o in proto.graph.output}
        if data is not None:
            # the file's bytes plus a second graph field holding the outputs (merged on parse)
            augmented = _wire.with_outputs(data, [n for n in outputs if n not in existing])
            del data
        else:
            # Every tensor becomes a graph output. Added to the model itself and taken off
            # again once serialized: a copy of the proto would hold the weights a third time.
            import onnx

            declared = len(proto.graph.output)
            try:
                for name in outputs:
                    if name not in existing:
                        proto.graph.output.append(onnx.ValueInfoProto(name=name))
                augmented = proto.SerializeToString()
            finally:
                del proto.graph.output[declared:]
        opts = ort.SessionOptions()
        opts.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[graph_optimization_level]
        if intra_op_num_threads:
            opts.intra_op_num_threads = int(intra_op_num_threads)
        opts.log_severity_level = 3
        # onnxruntime's idle threads spin after each run by default; the histogram kernels
        # then fight them for the cores (tens of times slower on 2 cores). Let them sleep.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        # With every tensor a graph output, the memory pattern (one block planned for the
        # run's tensors) keeps its own copy of the outputs' space: ~40 MB more peak on the
        # benchmark ResNet (benchmarks/calibrate_e2e.py), no faster. Allocate per run instead.
        opts.enable_mem_pattern = False
        try:
            self.session = ort.InferenceSession(
                augmented,
                sess_options=opts,
                providers=list(providers or ["CPUExecutionProvider"]),
            )
        except Exception as exc:
            raise ModelError(
                f"{self.label}: onnxruntime cannot load the model ({exc.__class__.__name__}: "
                f"{str(exc).strip()}); check it with onnx.checker.check_model"
            ) from exc
        del augmented
        if read is not None:
            self._take_types_from_session()
        self.max_memory = budget
        #: Exposed tensor -> (shape with named dims, bytes per element), from onnxruntime.
        self._output_shapes = {
            o.name: (tuple(o.shape or ()), _ort_item_size(o.type))
            for o in self.session.get_outputs()
        }
        self._input_dims = {i.name: tuple(i.shape or ()) for i in self.session.get_inputs()}
        # The stage planner reads onnx's ModelProto. A file read without onnx is parsed by onnx
        # only when a batch may not fit: at once (in a thread) when onnxruntime's shapes cannot
        # size every tensor, else on the first batch that exceeds the budget.
        self._source = model
        self._proto = proto if budget is not None and read is None else None
        self._proto_loader: Future[Any] | None = None
        if budget is not None and read is not None and not self._shapes_known():
            self._proto_loader = _load_in_thread(read[3])
        self._opts = opts
        self._providers = list(providers or ["CPUExecutionProvider"])
        self._plans: dict[tuple[Any, ...], _Plan] = {}
        self.input_specs: list[InputSpec] = input_specs(self.session, proto, batch_axes)
        #: Input name -> batch axis (``None``: not batched), inferred or declared.
        self.batch_axes: dict[str, int | None] = {s.name: s.batch_axis for s in self.input_specs}

    def __repr__(self) -> str:
        return f"OnnxRuntimeRunner({self.label!r}, {len(self.tensor_names)} tensors)"

    def _take_types_from_session(self) -> None:
        """Drop the exposed tensors onnxruntime types as non-floating, and their aliases.

        Read without shape inference, their types were unknown: these are the same tensors the
        first batch's dtype check keeps after onnx's shape inference.
        """
        types = {o.name: o.type for o in self.session.get_outputs()}
        dropped = {n for n in self._outputs if types.get(n, _ORT_FLOAT_TYPES[0])
                   not in _ORT_FLOAT_TYPES}
        if not dropped:
            return
        # a value-preserving op keeps its input's dtype: an alias of a dropped tensor is not
        # floating either
        dropped |= {n for n, src in self.value_aliases.items() if src in dropped}
        log.debug("dropping %d non-float tensors (onnxruntime's types)", len(dropped))
        self._outputs = [n for n in self._outputs if n not in dropped]
        self.tensor_names = [n for n in self.tensor_names if n not in dropped]
        self.network_order = [n for n in self.network_order if n not in dropped]
        self.value_aliases = {n: s for n, s in self.value_aliases.items() if n not in dropped}

    # -- input checks ----------------------------------------------------------------------
    def prepare(self, batch: Any, *, index: int = 0) -> dict[str, np.ndarray]:
        """Check one batch against :attr:`input_specs` and return the feed dict.

        Parameters
        ----------
        batch : dict or numpy.ndarray
            ``{input_name: array}``; a bare array when the model has exactly one input.
        index : int
            The batch's position in the data, for messages.

        Raises
        ------
        DataSourceError
            Missing or unknown input names, wrong rank, fixed dims or dtype kind.
        """
        return prepare_feed(self.input_specs, batch, index=index)

    # -- running ---------------------------------------------------------------------------
    def split(self, feed: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """Split a feed along the batch axes when the model's batch size is fixed."""
        return split_feed(self.input_specs, feed)

    def samples(self, feed: Mapping[str, np.ndarray]) -> int:
        """Samples in a prepared feed (1 when no input is batched)."""
        return feed_samples(self.input_specs, feed)

    def run(self, feed: Mapping[str, np.ndarray], *, index: int = 0) -> dict[str, np.ndarray]:
        """Run one prepared feed (see :meth:`prepare`); return ``{tensor: activation}``.

        The feed must fit the model's batch size (use :meth:`iter_activations` to split).
        """
        try:
            arrays = self.session.run(self._outputs, dict(feed))
        except Exception as exc:
            raise ModelError(
                f"{self.label}: onnxruntime failed on batch {index} "
                f"(shapes {({k: v.shape for k, v in feed.items()})}): "
                f"{exc.__class__.__name__}: {str(exc).strip()}"
            ) from exc
        acts: dict[str, np.ndarray] = {n: feed[n] for n in self.tensor_names if n in self._input_floats}
        for name, arr in zip(self._outputs, arrays):
            acts[name] = arr
        if not self._checked_dtypes:
            self._drop_non_float(acts)
        return acts

    def run_parts(
        self, feed: Mapping[str, np.ndarray], *, index: int = 0
    ) -> Iterator[dict[str, np.ndarray]]:
        """Run one prepared feed and yield its activations in parts that fit ``max_memory``.

        With no budget, or when the batch's activations fit it, yields :meth:`run`'s dict
        once. Otherwise the model runs stage by stage (see ``max_memory``); each yielded dict
        is emptied when the next stage starts, so hold on to nothing from it.
        """
        if self.max_memory is None:
            yield self.run(feed, index=index)
            return
        plan = self._plan_for(feed)
        if plan.stages is None:
            acts = self.run(feed, index=index)
            held = sum(int(a.nbytes) for a in acts.values())
            if held > self.max_memory and plan.sized_by_session:
                # the sizes were wrong (a shape onnxruntime declared is not what it computed):
                # later batches of this shape run in stages planned by onnx
                log.warning("%s: batch %d held %s of activations, above max_memory %s; the "
                            "next batches of its shape run in stages", self.label, index,
                            _fmt_bytes(held), _fmt_bytes(self.max_memory))
                self._plans[_feed_key(feed)] = _make_plan(
                    self._model_proto(), feed, self._outputs, self.max_memory, self._opts,
                    self._providers, self.label)
            yield acts
            return
        env: dict[str, Any] = dict(feed)
        first = {n: feed[n] for n in self.tensor_names if n in self._input_floats}
        for k, stage in enumerate(plan.stages):
            try:
                outs = stage.session.run(stage.outputs, {n: env[n] for n in stage.inputs})
            except Exception as exc:
                raise ModelError(
                    f"{self.label}: onnxruntime failed on batch {index}, stage {k + 1} of "
                    f"{len(plan.stages)}: {exc.__class__.__name__}: {str(exc).strip()}"
                ) from exc
            acts = dict(first) if k == 0 else {}
            for name, arr in zip(stage.outputs, outs):
                if name in stage.keep:
                    env[name] = arr
                if name in stage.exposed and isinstance(arr, np.ndarray) and \
                        arr.dtype.type in _FLOAT_DTYPES:
                    acts[name] = arr
            del outs
            for name in stage.release:
                env.pop(name, None)
            yield acts
            acts.clear()

    def _plan_for(self, feed: Mapping[str, np.ndarray]) -> _Plan:
        key = _feed_key(feed)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= 4:
                self._plans.clear()
            assert self.max_memory is not None
            sizes = self.activation_sizes(feed)
            held = None if sizes is None else _feed_bytes(feed) + sum(sizes.values())
            if sizes is not None and held is not None and held <= self.max_memory:
                plan = _Plan(None, sizes, held, sized_by_session=True)  # onnx is not needed
            else:
                plan = _make_plan(self._model_proto(), feed, self._outputs, self.max_memory,
                                  self._opts, self._providers, self.label)
            self._plans[key] = plan
        return plan

    def fits_twice(self, feed: Mapping[str, np.ndarray]) -> bool:
        """Whether two runs of ``feed`` may be alive at once under :attr:`max_memory`.

        Always without a budget; under one, when the whole batch runs at once and twice its
        feed and activations fit (the next batch's run overlapping this one's fills).

        Parameters
        ----------
        feed : mapping of str to numpy.ndarray
            A prepared feed (see :meth:`prepare`).

        Returns
        -------
        bool
            ``True`` when a second batch like this one fits beside it.
        """
        if self.max_memory is None:
            return True
        plan = self._plan_for(feed)
        return plan.stages is None and 2 * plan.held <= self.max_memory

    def _model_proto(self) -> Any:
        """The model as onnx's ``ModelProto``, for the stage planner (parsed once)."""
        if self._proto is None and self._proto_loader is not None:
            self._proto = self._proto_loader.result()
            self._proto_loader = None
        if self._proto is None:
            proto, _, sha = load_model(self._source)
            if sha != self.model_sha256:
                raise ModelError(
                    f"{self.label}: the model file changed while it was calibrated; "
                    "calibrate again"
                )
            self._proto = proto
        return self._proto

    def _shapes_known(self) -> bool:
        """Whether every exposed tensor's size follows from the inputs' dims alone."""
        named = {d: 1 for dims in self._input_dims.values() for d in dims if isinstance(d, str)}
        return all(_elements(self._output_shapes.get(n, ((None,), 0))[0], named) is not None
                   for n in self._outputs)

    def activation_sizes(self, feed: Mapping[str, np.ndarray]) -> dict[str, int] | None:
        """Bytes of each exposed tensor for this feed, from onnxruntime's output shapes.

        A dim is a number or one of the inputs' named dims (``'N'``), read from the feed.
        ``None`` when a dim is anything else (unknown, computed, named by no input) or when
        one name stands for two sizes in the feed: then only a run or onnx's shape inference
        can tell.

        Parameters
        ----------
        feed : mapping of str to numpy.ndarray
            A prepared feed (see :meth:`prepare`).

        Returns
        -------
        dict of str to int, or None
            ``{tensor: bytes}`` for every tensor :meth:`run` fetches from the session.
        """
        bound: dict[str, int] = {}
        for name, dims in self._input_dims.items():
            if name not in feed:
                continue
            for d, n in zip(dims, feed[name].shape):
                if isinstance(d, str) and bound.setdefault(d, int(n)) != int(n):
                    return None
        sizes: dict[str, int] = {}
        for name in self._outputs:
            dims, item = self._output_shapes.get(name, ((None,), 0))
            count = _elements(dims, bound)
            if count is None:
                return None
            sizes[name] = count * item
        return sizes

    def _drop_non_float(self, acts: dict[str, np.ndarray]) -> None:
        """Drop unknown-typed outputs that turned out not to be floating (first batch only)."""
        keep = []
        for name, arr in list(acts.items()):
            if isinstance(arr, np.ndarray) and arr.dtype.type in _FLOAT_DTYPES:
                keep.append(name)
            else:
                del acts[name]
        if len(keep) != len(self.tensor_names):
            log.debug("dropping %d non-float tensors", len(self.tensor_names) - len(keep))
            kept = set(keep)
            self._outputs = [n for n in self._outputs if n in kept]
            self.tensor_names = [n for n in self.tensor_names if n in kept]
        self._checked_dtypes = True

    def iter_activations(self, source: Iterable[Any]) -> Iterator[dict[str, np.ndarray]]:
        """Check, run and yield the activations of each batch of ``source``, one at a time.

        Batches larger than a fixed model batch size are split and yielded piece by piece.
        """
        for index, batch in enumerate(source):
            feed = self.prepare(batch, index=index)
            for chunk in self.split(feed):
                yield self.run(chunk, index=index)

    __call__ = iter_activations


@dataclass
class _Stage:
    session: Any
    inputs: list[str]
    outputs: list[str]
    exposed: frozenset[str]
    keep: frozenset[str]  # outputs later stages read
    release: list[str]  # tensors no later stage reads, dropped after this stage


@dataclass
class _Plan:
    stages: list[_Stage] | None  # None: the whole model at once fits
    sizes: dict[str, int]
    held: int  # bytes of one batch's feed and exposed activations (estimated)
    sized_by_session: bool = False  # from onnxruntime's output shapes, not onnx's inference


_ELEM_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}


def _tensor_sizes(proto: onnx.ModelProto, feed: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Bytes of every value whose shape shape inference derives for this feed's shapes."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    for vi in m.graph.input:
        if vi.name in feed:
            dims = vi.type.tensor_type.shape.dim
            del dims[:]
            for d in feed[vi.name].shape:
                dims.add().dim_value = int(d)
    try:
        m = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - custom ops ...
        log.debug("shape inference failed (%s); stage sizes are estimates", exc)
    sizes: dict[str, int] = {}
    for vi in [*m.graph.value_info, *m.graph.output, *m.graph.input]:
        tt = vi.type.tensor_type
        if not (tt.elem_type and tt.HasField("shape")):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        if all(d >= 0 for d in dims):
            sizes[vi.name] = int(np.prod(dims, dtype=np.int64)) * _ELEM_BYTES.get(tt.elem_type, 8)
    for name, arr in feed.items():
        sizes[name] = int(arr.nbytes)
    return sizes


def _make_plan(
    proto: onnx.ModelProto,
    feed: Mapping[str, np.ndarray],
    exposed: list[str],
    budget: int,
    opts: Any,
    providers: list[str],
    label: str,
) -> _Plan:
    """Cut the graph into consecutive stages whose exposed and passed tensors fit ``budget``."""
    import onnx
    import onnxruntime as ort

    sizes = _tensor_sizes(proto, feed)
    g = proto.graph
    exposed_set = set(exposed)
    known = [sizes[n] for n in exposed if n in sizes]
    unknown_size = max(known) if known else 0
    feed_bytes = _feed_bytes(feed)

    def size(name: str) -> int:
        return sizes.get(name, unknown_size)

    total = feed_bytes + sum(size(n) for n in exposed)
    if total <= budget:
        return _Plan(None, sizes, total)
    if any(_graph_attrs(node) for node in g.node):
        raise ModelError(
            f"{label}: the model has If/Loop/Scan nodes, which cannot be cut into stages; "
            f"its activations ({_fmt_bytes(total)} per batch) exceed max_memory "
            f"({_fmt_bytes(budget)}): raise the budget or lower the batch size"
        )
    inits = {t.name for t in g.initializer}
    produced_by: dict[str, int] = {}
    last_use: dict[str, int] = {}
    for i, node in enumerate(g.node):
        for t in node.input:
            if t:
                last_use[t] = i
        for t in node.output:
            if t:
                produced_by[t] = i
    n_nodes = len(g.node)
    for o in g.output:
        last_use[o.name] = n_nodes  # graph outputs live to the end
    costs = _StageCosts(g, size, exposed_set, last_use, produced_by, inits)
    # greedy cut in node order
    cuts: list[tuple[int, int]] = []
    start = 0
    while start < n_nodes:
        end = start
        while end < n_nodes:
            if costs(start, end + 1) > budget:
                break
            end += 1
        if end == start:  # even one node does not fit
            big = max((o for o in costs.outputs[start] if o), key=size, default="?")
            need = costs(start, start + 1)
            raise ModelError(
                f"{label}: max_memory={_fmt_bytes(budget)} is too small for even one tensor: "
                f"{big!r} alone needs {_fmt_bytes(size(big))} ({_fmt_bytes(need)} with the "
                f"tensors its node reads); raise --max-memory or lower the batch size"
            )
        cuts.append((start, end))
        start = end
    from onnx.utils import Extractor

    inferred = onnx.ModelProto()
    inferred.CopyFrom(proto)
    try:
        inferred = onnx.shape_inference.infer_shapes(inferred, strict_mode=False)
    except Exception:  # noqa: BLE001
        pass
    extractor = Extractor(inferred)
    # Each stage session would keep its own arena at its peak: the stages' peaks would add up.
    # Without the arena, a stage's memory returns to the system when the run ends.
    opts.enable_cpu_mem_arena = False
    stages: list[_Stage] = []
    graph_inputs = [vi.name for vi in g.input if vi.name not in inits]
    for k, (lo, hi) in enumerate(cuts):
        nodes = g.node[lo:hi]
        made = {t for n in nodes for t in n.output if t}
        needed = []
        for n in nodes:
            for t in n.input:
                if t and t not in made and t not in inits and t not in needed:
                    needed.append(t)
        later = {t for t in made if last_use.get(t, -1) >= hi}
        outs = [t for n in nodes for t in n.output if t and (t in exposed_set or t in later)]
        outs = list(dict.fromkeys(outs))
        sub = extractor.extract_model(needed or graph_inputs[:1], outs)
        sub.opset_import.extend([])  # keep the model's opsets (the extractor copies them)
        try:
            session = ort.InferenceSession(sub.SerializeToString(), sess_options=opts,
                                           providers=providers)
        except Exception as exc:
            raise ModelError(
                f"{label}: onnxruntime cannot load stage {k + 1} of {len(cuts)} "
                f"({exc.__class__.__name__}: {str(exc).strip()}); raise max_memory so the "
                "model runs whole"
            ) from exc
        release = [t for t in {*needed, *made} if last_use.get(t, -1) < hi]
        stages.append(_Stage(session, needed, outs, frozenset(outs) & exposed_set,
                             frozenset(later), release))
    log.info("%s: activations of %.0f MiB per batch, run in %d stages under max_memory %.0f "
             "MiB", label, total / 2**20, len(stages), budget / 2**20)
    return _Plan(stages, sizes, total)


def _fmt_bytes(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


class _StageCosts:
    """Bytes held while stage ``lo:hi`` runs: ``costs(lo, hi)``.

    Its inputs from before, its outputs that are exposed or read later (onnxruntime frees
    the others as it goes), and the tensors made before it and read after it. The graph is
    read once into plain lists and arrays, so the greedy cut's many calls stay cheap.
    """

    def __init__(self, g: Any, size: Any, exposed: set[str], last_use: Mapping[str, int],
                 produced_by: Mapping[str, int], inits: set[str]) -> None:
        self.outputs = [tuple(node.output) for node in g.node]
        self.inputs = [tuple(node.input) for node in g.node]
        self.size = size
        self.exposed = exposed
        self.last_use = last_use
        self.produced_by = produced_by
        self.inits = inits
        names = list(produced_by)
        self._made_at = np.array([produced_by[t] for t in names], np.int64)
        self._read_until = np.array([last_use.get(t, -1) for t in names], np.int64)
        self._bytes = np.array([size(t) for t in names], np.int64)

    def __call__(self, lo: int, hi: int) -> int:
        size, last_use = self.size, self.last_use
        made: set[str] = set()
        cost = 0
        for outs in self.outputs[lo:hi]:
            for t in outs:
                if t:
                    made.add(t)
                    if t in self.exposed or last_use.get(t, -1) >= hi:
                        cost += size(t)
        seen: set[str] = set()
        for ins in self.inputs[lo:hi]:
            for t in ins:
                if t and t not in made and t not in self.inits and t not in seen:
                    seen.add(t)
                    cost += size(t)
        # tensors made before and read after the stage stay held too (unless read in it)
        held = (self._made_at < lo) & (self._read_until >= hi)
        cost += int(self._bytes[held].sum())
        for t in seen:
            j = self.produced_by.get(t)
            if j is not None and j < lo and last_use.get(t, -1) >= hi:
                cost -= size(t)
        return cost


def _elements(dims: tuple[Any, ...], bound: Mapping[str, int]) -> int | None:
    """Elements of a shape whose dims are numbers or names in ``bound``; else ``None``."""
    count = 1
    for d in dims:
        if isinstance(d, int) and d >= 0:
            count *= d
        elif isinstance(d, str) and d in bound:
            count *= bound[d]
        else:
            return None
    return count


def _feed_key(feed: Mapping[str, np.ndarray]) -> tuple[Any, ...]:
    """Names, shapes and dtypes of a feed: what a plan depends on."""
    return tuple((n, feed[n].shape, feed[n].dtype.str) for n in sorted(feed))


def _feed_bytes(feed: Mapping[str, np.ndarray]) -> int:
    return sum(int(a.nbytes) for a in feed.values())


def _ort_item_size(ort_type: str) -> int:
    """Bytes per element of an onnxruntime tensor type (8 for types numpy lacks)."""
    try:
        return int(np.dtype(_ort_type_to_numpy(ort_type)).itemsize)
    except ModelError:
        return 8


def _ort_type_to_numpy(ort_type: str) -> Any:
    table = {
        "tensor(float)": np.float32, "tensor(float16)": np.float16,
        "tensor(double)": np.float64, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
        "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
        "tensor(int16)": np.int16, "tensor(uint16)": np.uint16,
    }
    if ort_type not in table:
        raise ModelError(f"model input of type {ort_type} is not supported")
    return table[ort_type]
