"""A small reader of the ONNX protobuf wire format.

It reads the graph facts a calibration needs without importing ``onnx``.

``import onnx`` costs 0.6-1.2 s in a fresh process (most of it initialising ``ml_dtypes``),
more than parsing the node list of a real model takes here. :func:`read_model` decodes a
serialized ``ModelProto`` into light objects that carry the same attribute names as onnx's
protos for what :mod:`kldiv.runners` reads (``graph.node[i].op_type``, ``.domain``,
``.input``, ``.output``, ``.attribute``; ``graph.initializer[i].name``; ``graph.input`` /
``output`` / ``value_info`` with their element types; ``opset_import``), so the same graph
rules run on either. Weights are never decoded, only skipped; a tensor's values are decoded on
demand (:func:`tensor_to_array`, the Clip limits) for the element types listed in
``_NUMPY_OF``.

Anything this reader does not handle raises :class:`WireFormatError`; callers then take the
``onnx`` path, which gives the usual results and error messages. That covers malformed or
truncated files, tensors whose data lives in external files, and uncommon element types.

:func:`with_outputs` returns the serialized model with extra graph outputs, by appending a
second ``graph`` field that holds only those outputs: protobuf merges repeated occurrences of
an embedded message field, appending their repeated fields.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

__all__ = ["WireFormatError", "read_model", "tensor_to_array", "with_outputs"]

# AttributeProto.AttributeType values (onnx.proto)
ATTR_FLOAT, ATTR_INT, ATTR_STRING, ATTR_TENSOR, ATTR_GRAPH = 1, 2, 3, 4, 5
ATTR_FLOATS, ATTR_INTS, ATTR_STRINGS, ATTR_TENSORS, ATTR_GRAPHS = 6, 7, 8, 9, 10
#: TensorProto.DataType -> NumPy dtype, for the values this reader decodes.
_NUMPY_OF = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32,
             7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32,
             13: np.uint64}


class WireFormatError(ValueError):
    """The bytes are not a ModelProto this reader handles (take the ``onnx`` path)."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise WireFormatError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireFormatError("varint too long")


def _fields(buf: bytes, start: int, end: int) -> Any:
    """``(field number, wire type, value)`` of each field.

    The value is an int for varints and fixed widths (their raw bits), ``(start, end)`` for
    length-delimited fields.
    """
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise WireFormatError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield field, wire, value
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > end:
                raise WireFormatError("length-delimited field runs past its message")
            yield field, wire, (pos, pos + n)
            pos += n
        elif wire == 5:
            if pos + 4 > end:
                raise WireFormatError("truncated fixed32")
            yield field, wire, int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        elif wire == 1:
            if pos + 8 > end:
                raise WireFormatError("truncated fixed64")
            yield field, wire, int.from_bytes(buf[pos : pos + 8], "little")
            pos += 8
        else:  # groups (3, 4) are not used by onnx.proto
            raise WireFormatError(f"unexpected wire type {wire}")
    if pos != end:
        raise WireFormatError("message runs past its end")


def _str(buf: bytes, span: Any) -> str:
    if not isinstance(span, tuple):
        raise WireFormatError("a string field is not length-delimited")
    return buf[span[0] : span[1]].decode("utf-8")


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


class Tensor:
    """A ``TensorProto``: name, data type, dims, and where its values are (decoded lazily)."""

    __slots__ = ("buf", "data_type", "dims", "external", "name", "span")

    def __init__(self, buf: bytes, span: tuple[int, int]) -> None:
        self.buf, self.span = buf, span
        self.name = ""
        self.data_type = 0
        self.dims: list[int] = []
        self.external = False
        for field, wire, v in _fields(buf, *span):
            if field == 8:
                self.name = _str(buf, v)
            elif field == 2 and wire == 0:
                self.data_type = v
            elif field == 1:
                if wire == 0:
                    self.dims.append(_signed64(v))
                else:
                    self.dims.extend(_packed_varints(buf, v))
            elif field == 14 and wire == 0 and v == 1:  # data_location: EXTERNAL
                self.external = True


def _packed_varints(buf: bytes, span: Any) -> list[int]:
    out = []
    pos, end = span
    while pos < end:
        v, pos = _varint(buf, pos)
        out.append(_signed64(v))
    return out


def tensor_to_array(t: Tensor) -> np.ndarray:
    """The values of a :class:`Tensor` (as ``onnx.numpy_helper.to_array`` gives them).

    Raises
    ------
    WireFormatError
        External data, strings, or an element type outside ``_NUMPY_OF``.
    """
    if t.external:
        raise WireFormatError(f"tensor {t.name!r} has external data")
    dtype = _NUMPY_OF.get(t.data_type)
    if dtype is None:
        raise WireFormatError(f"tensor {t.name!r}: data type {t.data_type} is not decoded here")
    buf = t.buf
    raw: bytes | None = None
    typed: list[Any] = []
    for field, wire, v in _fields(buf, *t.span):
        if field == 9 and wire == 2:
            raw = bytes(buf[v[0] : v[1]])
        elif field == 4:  # float_data (packed fixed32 or one fixed32)
            typed.extend(_fixed(buf, wire, v, "<f", 4))
        elif field == 10:  # double_data
            typed.extend(_fixed(buf, wire, v, "<d", 8))
        elif field in (5, 7, 11):  # int32_data, int64_data, uint64_data (varints)
            vals = [v] if wire == 0 else _packed_unsigned(buf, v)
            typed.extend(vals)
    count = int(np.prod(t.dims, dtype=np.int64)) if t.dims else 1
    if raw is not None:
        arr: np.ndarray = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
    elif t.data_type == 10:  # float16 kept as its bits in int32_data
        arr = np.array(typed, dtype=np.uint16).view(np.float16)
    elif t.data_type in (1, 11):
        arr = np.array(typed, dtype=dtype)
    else:  # integers from varints: reinterpret as the signed/unsigned type
        arr = np.array([x & ((1 << 64) - 1) for x in typed], dtype=np.uint64)
        arr = arr.view(np.int64).astype(dtype) if np.dtype(dtype).kind in "ib" \
            else arr.astype(dtype)
    if arr.size != count:
        raise WireFormatError(f"tensor {t.name!r}: {arr.size} values for dims {t.dims}")
    return arr.reshape(t.dims)


def _fixed(buf: bytes, wire: int, v: Any, fmt: str, width: int) -> list[float]:
    if wire == 2:
        lo, hi = v
        return list(struct.unpack(f"<{(hi - lo) // width}{fmt[1]}", buf[lo:hi]))
    raw = int(v).to_bytes(width, "little")
    return list(struct.unpack(fmt, raw))


def _packed_unsigned(buf: bytes, span: Any) -> list[int]:
    out = []
    pos, end = span
    while pos < end:
        v, pos = _varint(buf, pos)
        out.append(v)
    return out


class Attribute:
    """An ``AttributeProto``: name, type and the value fields a calibration reads."""

    __slots__ = ("f", "floats", "g", "graphs", "i", "ints", "name", "s", "t", "type")

    def __init__(self, buf: bytes, span: tuple[int, int]) -> None:
        self.name = ""
        self.type = 0
        self.f = 0.0
        self.i = 0
        self.s = b""
        self.t: Tensor | None = None
        self.g: Graph | None = None
        self.floats: list[float] = []
        self.ints: list[int] = []
        self.graphs: list[Graph] = []
        for field, wire, v in _fields(buf, *span):
            if field == 1:
                self.name = _str(buf, v)
            elif field == 20 and wire == 0:
                self.type = v
            elif field == 2 and wire == 5:
                self.f = struct.unpack("<f", v.to_bytes(4, "little"))[0]
            elif field == 3 and wire == 0:
                self.i = _signed64(v)
            elif field == 4 and wire == 2:
                self.s = bytes(buf[v[0] : v[1]])
            elif field == 5 and wire == 2:
                self.t = Tensor(buf, v)
                if self.t.external:
                    raise WireFormatError(f"attribute {self.name!r} has external data")
            elif field == 6 and wire == 2:
                self.g = Graph(buf, v)
            elif field == 7:
                self.floats.extend(_fixed(buf, wire, v, "<f", 4))
            elif field == 8:
                self.ints.extend([_signed64(v)] if wire == 0 else _packed_varints(buf, v))
            elif field == 10 and wire == 2:  # tensors: only whether they are external
                if Tensor(buf, v).external:
                    raise WireFormatError("an attribute tensor has external data")
            elif field == 11 and wire == 2:
                self.graphs.append(Graph(buf, v))

    def value(self) -> Any:
        """The value, as ``onnx.helper.get_attribute_value`` returns it for these types."""
        if self.type == ATTR_FLOAT:
            return self.f
        if self.type == ATTR_INT:
            return self.i
        if self.type == ATTR_STRING:
            return self.s
        if self.type == ATTR_FLOATS:
            return list(self.floats)
        if self.type == ATTR_INTS:
            return list(self.ints)
        if self.type == ATTR_TENSOR:
            return self.t
        if self.type == ATTR_GRAPH:
            return self.g
        if self.type == ATTR_GRAPHS:
            return list(self.graphs)
        raise WireFormatError(f"attribute {self.name!r} of type {self.type} is not decoded here")


class Node:
    """A ``NodeProto``."""

    __slots__ = ("attribute", "domain", "input", "name", "op_type", "output")

    def __init__(self, buf: bytes, span: tuple[int, int]) -> None:
        self.input: list[str] = []
        self.output: list[str] = []
        self.name = self.op_type = self.domain = ""
        self.attribute: list[Attribute] = []
        for field, _, v in _fields(buf, *span):
            if field == 1:
                self.input.append(_str(buf, v))
            elif field == 2:
                self.output.append(_str(buf, v))
            elif field == 3:
                self.name = _str(buf, v)
            elif field == 4:
                self.op_type = _str(buf, v)
            elif field == 7:
                self.domain = _str(buf, v)
            elif field == 5:
                self.attribute.append(Attribute(buf, v))


class ValueInfo:
    """A ``ValueInfoProto``: name, and for tensors the element type and shape.

    ``elem_type`` 0 is unknown; ``dims`` is ``None`` without a shape, else each dim an int,
    a ``dim_param`` name, or ``None``.
    """

    __slots__ = ("dims", "elem_type", "name")

    def __init__(self, buf: bytes, span: tuple[int, int]) -> None:
        self.name = ""
        self.elem_type = 0
        self.dims: tuple[int | str | None, ...] | None = None
        for field, wire, v in _fields(buf, *span):
            if field == 1:
                self.name = _str(buf, v)
            elif field == 2 and wire == 2:  # TypeProto
                for f2, w2, v2 in _fields(buf, *v):
                    if f2 == 1 and w2 == 2:  # tensor_type
                        for f3, w3, v3 in _fields(buf, *v2):
                            if f3 == 1 and w3 == 0:
                                self.elem_type = v3
                            elif f3 == 2 and w3 == 2:  # TensorShapeProto
                                self.dims = tuple(_dim(buf, v4) for f4, w4, v4
                                                  in _fields(buf, *v3) if f4 == 1 and w4 == 2)


def _dim(buf: bytes, span: tuple[int, int]) -> int | str | None:
    """A ``TensorShapeProto.Dimension``: its ``dim_value``, its ``dim_param``, or ``None``."""
    for field, wire, v in _fields(buf, *span):
        if field == 1 and wire == 0:
            return _signed64(v)
        if field == 2 and wire == 2:
            return _str(buf, v) or None
    return None


class _SparseValues:
    __slots__ = ("values",)

    def __init__(self, values: Tensor) -> None:
        self.values = values


class Graph:
    """A ``GraphProto``: nodes, initializers, inputs, outputs, value infos."""

    __slots__ = ("initializer", "input", "node", "output", "sparse_initializer", "value_info")

    def __init__(self, buf: bytes, span: tuple[int, int]) -> None:
        self.node: list[Node] = []
        self.initializer: list[Tensor] = []
        self.sparse_initializer: list[_SparseValues] = []
        self.input: list[ValueInfo] = []
        self.output: list[ValueInfo] = []
        self.value_info: list[ValueInfo] = []
        for field, wire, v in _fields(buf, *span):
            if wire != 2:
                continue
            if field == 1:
                self.node.append(Node(buf, v))
            elif field == 5:
                t = Tensor(buf, v)
                if t.external:
                    raise WireFormatError(f"initializer {t.name!r} has external data")
                self.initializer.append(t)
            elif field == 15:
                for f2, w2, v2 in _fields(buf, *v):
                    if f2 == 1 and w2 == 2:
                        values = Tensor(buf, v2)
                        if values.external:
                            raise WireFormatError("a sparse initializer has external data")
                        self.sparse_initializer.append(_SparseValues(values))
            elif field == 11:
                self.input.append(ValueInfo(buf, v))
            elif field == 12:
                self.output.append(ValueInfo(buf, v))
            elif field == 13:
                self.value_info.append(ValueInfo(buf, v))


class OpsetId:
    """An ``OperatorSetIdProto``."""

    __slots__ = ("domain", "version")

    def __init__(self, buf: bytes, span: tuple[int, int]) -> None:
        self.domain = ""
        self.version = 0
        for field, wire, v in _fields(buf, *span):
            if field == 1:
                self.domain = _str(buf, v)
            elif field == 2 and wire == 0:
                self.version = _signed64(v)


class Model:
    """A ``ModelProto``: its graph and opsets (what a calibration reads of it)."""

    __slots__ = ("graph", "opset_import")

    def __init__(self, graph: Graph, opset_import: list[OpsetId]) -> None:
        self.graph = graph
        self.opset_import = opset_import


def read_model(data: bytes) -> Model:
    """Decode the graph of a serialized ``ModelProto``.

    Raises
    ------
    WireFormatError
        Anything this reader does not handle (see the module docstring).
    """
    graph: Graph | None = None
    opsets = []
    try:
        for field, wire, v in _fields(data, 0, len(data)):
            if field == 7 and wire == 2:
                if graph is not None:
                    raise WireFormatError("two graph fields")  # legal, but merge is onnx's job
                graph = Graph(data, v)
            elif field == 8 and wire == 2:
                opsets.append(OpsetId(data, v))
    except UnicodeDecodeError as exc:
        raise WireFormatError(f"a name is not UTF-8 ({exc})") from None
    if graph is None:
        raise WireFormatError("no graph")
    return Model(graph, opsets)


def _key(field: int, wire: int) -> bytes:
    return _encode_varint((field << 3) | wire)


def _encode_varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _delimited(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _encode_varint(len(payload)) + payload


def with_outputs(data: bytes, names: list[str]) -> bytes:
    """``data`` (a serialized ModelProto) with ``names`` added as graph outputs.

    The outputs are untyped (``ValueInfoProto(name=...)``, as onnxruntime accepts them).
    """
    outputs = b"".join(_delimited(12, _delimited(1, n.encode("utf-8"))) for n in names)
    return data + _delimited(7, outputs)
