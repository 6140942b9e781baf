"""What the model's graph says about its tensors, read once from the ONNX model.

The threshold step needs three facts the histograms do not hold:

- **activation bounds**: outputs of a ``Clip`` with constant limits (ReLU6), which TensorRT
  writes with their bound (:func:`activation_bounds`);
- **scale sources**: pooling outputs, which TensorRT gives their input's scale
  (:func:`scale_sources`);
- **value aliases**: ``Reshape``/``Flatten``/``Transpose``/... outputs, which hold their
  source's values rearranged and take its final scale (:func:`value_aliases`).

:class:`GraphFacts` bundles them; :func:`kldiv.pipeline.collect_histograms` builds it from the
model (:meth:`GraphFacts.from_model`), the histogram file carries it, and
:func:`kldiv.pipeline.choose_thresholds` takes it as an argument. Whether each fact is used is
a rule of the preset (:class:`GraphRules`; the ``tensorrt`` preset applies all three).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _onnx_wire as _wire
from .errors import HistogramError

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = [
    "POOLING_OPS",
    "VALUE_PRESERVING_OPS",
    "GraphFacts",
    "GraphRules",
    "activation_bounds",
    "scale_sources",
    "value_aliases",
]

#: Keys of the facts in a histogram file's ``meta`` JSON (the names files have always used).
FACT_KEYS = ("activation_bounds", "scale_sources", "value_aliases")


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class GraphFacts:
    """Facts about the collected tensors read from the model's graph.

    Parameters
    ----------
    activation_bounds : mapping of str to float
        Tensor -> the bound ``max(|min|, |max|)`` of the ``Clip`` that produces it.
    scale_sources : mapping of str to str
        Pooling output -> its data input.
    value_aliases : mapping of str to str
        Tensor -> the collected tensor whose values it holds, rearranged (chains followed to
        their root).

    Examples
    --------
    >>> facts = GraphFacts(scale_sources={"pool": "conv"})
    >>> facts.restrict(["conv"]).scale_sources
    mappingproxy({})
    """

    activation_bounds: Mapping[str, float] = field(default_factory=dict)
    scale_sources: Mapping[str, str] = field(default_factory=dict)
    value_aliases: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bounds = {str(k): float(v) for k, v in self.activation_bounds.items()}
        for name, bound in bounds.items():
            if not (np.isfinite(bound) and bound > 0):
                raise HistogramError(
                    f"activation bound of {name!r} is {bound!r}; a Clip bound is finite and > 0"
                )
        object.__setattr__(self, "activation_bounds", _frozen(bounds))
        for key in ("scale_sources", "value_aliases"):
            pairs = {str(k): str(v) for k, v in getattr(self, key).items()}
            object.__setattr__(self, key, _frozen(pairs))

    @classmethod
    def from_model(cls, model: onnx.ModelProto, collected: Iterable[str]) -> GraphFacts:
        """Read the facts of ``model``'s main graph.

        Parameters
        ----------
        model : onnx.ModelProto
            The model.
        collected : iterable of str
            The calibratable tensors in network order (see
            :func:`kldiv.runners.calibration_tensor_names`); value aliases point only to these.

        Returns
        -------
        GraphFacts
        """
        return cls(
            activation_bounds=activation_bounds(model),
            scale_sources=scale_sources(model),
            value_aliases=value_aliases(model, collected),
        )

    def restrict(self, names: Iterable[str]) -> GraphFacts:
        """The facts about the tensors in ``names`` only (e.g. those collected)."""
        keep = set(names)
        return GraphFacts(
            activation_bounds={n: b for n, b in self.activation_bounds.items() if n in keep},
            scale_sources={n: s for n, s in self.scale_sources.items() if n in keep},
            value_aliases={n: s for n, s in self.value_aliases.items() if n in keep},
        )

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The facts as plain dicts (JSON), keyed as in a histogram file's ``meta``."""
        return {key: dict(getattr(self, key)) for key in FACT_KEYS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "graph facts") -> GraphFacts:
        """Facts from :meth:`to_dict`'s form (absent keys: no facts of that kind).

        Raises
        ------
        HistogramError
            A key that is not a mapping of names to bounds or names, naming ``where``.
        """
        parts: dict[str, Mapping[str, Any]] = {}
        for key in FACT_KEYS:
            value = data.get(key, {})
            if not isinstance(value, Mapping):
                raise HistogramError(f"{where}: {key} is not a mapping of tensor names")
            parts[key] = value
        try:
            return cls(**parts)
        except (TypeError, ValueError) as exc:
            raise HistogramError(f"{where}: {exc}") from None

    def __reduce__(self) -> tuple[type[GraphFacts], tuple[dict[str, Any], ...]]:
        # read-only views do not pickle; the facts travel as plain dicts (Dask, processes)
        return (
            GraphFacts,
            (dict(self.activation_bounds), dict(self.scale_sources), dict(self.value_aliases)),
        )

    def __bool__(self) -> bool:
        return bool(self.activation_bounds or self.scale_sources or self.value_aliases)


@dataclass(frozen=True)
class GraphRules:
    """Which graph facts set a tensor's threshold instead of its own search.

    Parameters
    ----------
    activation_bounds : bool
        A tensor the graph bounds (``Clip`` with constant limits, i.e. ReLU6) gets its bound as
        threshold when every ``|x|`` seen is within it, as TensorRT does (all 35 ReLU6 outputs
        of the MLPerf SSD-MobileNet cache are exactly ``6/127``).
    pooling_inherits : bool
        A pooling output gets its input's final scale, as TensorRT does (every real entropy
        cache with pooling, TensorRT 5.1 to 10.3).
    alias_inherits : bool
        A value alias (``Reshape``, ``Flatten``, ...) gets its source's final scale, whichever
        rule set it.

    Notes
    -----
    For ``method="entropy"`` the rules are fields of the preset's
    :class:`~kldiv.entropy.EntropyOptions` (``PRESETS["tensorrt"]`` turns the first two on), so
    a preset name and its object give the same table; other methods use these defaults.
    """

    activation_bounds: bool = False
    pooling_inherits: bool = False
    alias_inherits: bool = True

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The rule names (also option names of :class:`~kldiv.entropy.EntropyOptions`)."""
        return ("activation_bounds", "pooling_inherits", "alias_inherits")


def _to_array(tensor: Any) -> np.ndarray:
    """A tensor's values, from onnx's protos or the wire reader's.

    ``onnx.numpy_helper.to_array`` for onnx's protos, the wire reader's decoder for its own
    (:mod:`kldiv._onnx_wire`).
    """
    if isinstance(tensor, _wire.Tensor):
        return _wire.tensor_to_array(tensor)
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor)


def _attr_value(attr: Any) -> Any:
    """``onnx.helper.get_attribute_value``, for onnx's protos and the wire reader's."""
    if isinstance(attr, _wire.Attribute):
        return attr.value()
    import onnx

    return onnx.helper.get_attribute_value(attr)


def activation_bounds(model: onnx.ModelProto) -> dict[str, float]:
    """Outputs whose range the graph itself bounds: ``Clip`` with constant limits.

    TensorRT writes such tensors with the activation's bound, not a searched threshold: in the
    MLPerf SSD-MobileNet cache (TensorRT 7.2) all 35 ``Relu6`` outputs hold exactly ``6/127``
    (algorithm.md §4). ReLU6 reaches ONNX as ``Clip(0, 6)``.

    Parameters
    ----------
    model : onnx.ModelProto
        The model (main graph only; subgraphs are not collected anyway).

    Returns
    -------
    dict of str to float
        Tensor name -> ``max(|min|, |max|)`` for each ``Clip`` whose limits are constants
        (attributes before opset 11; initializers or ``Constant`` outputs from opset 11) and
        finite.
    """
    g = model.graph
    # only the Clip limits are needed: converting every weight would copy the whole model
    wanted = {i for n in g.node if n.op_type == "Clip" for i in n.input[1:3] if i}
    consts: dict[str, np.ndarray] = {
        t.name: _to_array(t) for t in g.initializer if t.name in wanted
    }
    for node in g.node:
        if node.op_type == "Constant" and node.output and node.output[0] in wanted:
            for a in node.attribute:
                if a.name == "value" and a.type == _wire.ATTR_TENSOR:
                    consts[node.output[0]] = _to_array(a.t)
                elif a.name in ("value_float", "value_floats"):
                    consts[node.output[0]] = np.asarray(_attr_value(a), dtype=np.float64)
    bounds: dict[str, float] = {}
    for node in g.node:
        if node.op_type != "Clip" or node.domain not in ("", "ai.onnx") or not node.output:
            continue
        attrs = {a.name: _attr_value(a) for a in node.attribute}
        limits: list[float] = []
        if "min" in attrs or "max" in attrs:  # opset < 11
            limits = [float(attrs.get("min", -np.inf)), float(attrs.get("max", np.inf))]
        else:
            for name in list(node.input[1:3]) + [""] * (3 - len(node.input)):
                if not name:
                    limits.append(np.inf)  # an absent limit: unbounded on that side
                elif name in consts and consts[name].size == 1:
                    limits.append(float(consts[name].reshape(())))
                else:
                    limits = []  # computed at run time: no static bound
                    break
        if len(limits) == 2:
            bound = max(abs(limits[0]), abs(limits[1]))
            if np.isfinite(bound) and bound > 0:
                bounds[node.output[0]] = bound
    return bounds


#: Ops whose output TensorRT gives its input's scale (see :func:`scale_sources`).
POOLING_OPS = frozenset({"MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool"})


def scale_sources(model: onnx.ModelProto) -> dict[str, str]:
    """Pooling outputs and the tensor whose scale TensorRT gives them: their input.

    In every real entropy cache we hold that has pooling, the pooled tensor carries exactly its
    input's scale: sampleINT8 MNIST (TensorRT 5.1 and 7.0) ``pool1 = conv1``, ``pool2 =
    conv2``; NVDLA ResNet-50 (5.1) ``pool1 = conv1`` and the average pool ``pool5 = res5c``;
    MLPerf ResNet-50 (6.0, 7.2) ``MaxPool_0 = Relu_0``; a YOLO cache (10.3) three chained
    MaxPools equal to the convolution before them.

    Parameters
    ----------
    model : onnx.ModelProto
        The model (main graph).

    Returns
    -------
    dict of str to str
        Output name -> data-input name, for every ``MaxPool`` / ``AveragePool`` /
        ``GlobalMaxPool`` / ``GlobalAveragePool`` of the default domain, in network order.
    """
    return {
        node.output[0]: node.input[0]
        for node in model.graph.node
        if node.op_type in POOLING_OPS
        and node.domain in ("", "ai.onnx")
        and node.output
        and node.input
        and node.input[0]
    }


#: Ops whose output holds exactly the values of their (first) input, only rearranged.
VALUE_PRESERVING_OPS = frozenset(
    {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"}
)


def value_aliases(model: onnx.ModelProto, collected: Iterable[str]) -> dict[str, str]:
    """Tensors that hold exactly the values of another collected tensor, and that tensor.

    The output of ``Identity``, ``Reshape``, ``Flatten``, ``Squeeze``, ``Unsqueeze`` or
    ``Transpose`` is a rearrangement of its data input: the same multiset of values in every
    batch, hence the same absmax, the same range growth and the same histogram, count for
    count. Such tensors need not be fetched from onnxruntime nor histogrammed; the collector
    copies the source's histogram (:meth:`~kldiv.collect.HistogramCollector.alias`).

    Parameters
    ----------
    model : onnx.ModelProto
        The model (main graph).
    collected : iterable of str
        The tensors being collected; only sources among them are used.

    Returns
    -------
    dict of str to str
        Output name -> the collected tensor it copies, chains followed to their root
        (``Transpose -> Reshape -> Flatten`` all point to the tensor before the Transpose),
        in network order.
    """
    names = set(collected)
    aliases: dict[str, str] = {}
    for node in model.graph.node:
        if (
            node.op_type in VALUE_PRESERVING_OPS
            and node.domain in ("", "ai.onnx")
            and len(node.output) == 1
            and node.input
            and node.output[0] in names
        ):
            src = aliases.get(node.input[0], node.input[0])
            if src in names and src != node.output[0]:
                aliases[node.output[0]] = src
    return aliases
