"""Thresholds, scales and calibration tables.

``amax`` (also "threshold" ``T`` or "dynamic range") is the largest magnitude represented
without saturation; ``scale`` is what TensorRT stores: ``scale = float32(float32(T) / 127)``.
The conversion between the two lives **only** here (:func:`amax_to_scale`,
:func:`scale_to_amax`); every other module calls these.

A :class:`CalibrationTable` keeps, per tensor and in order, the exact float32 bit pattern of the
scale, because that is what a TensorRT cache holds (including ``0``, infinities and NaN
payloads), plus the cache header and the provenance of the numbers.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from itertools import compress
from typing import Any, overload

import numpy as np

from .defaults import INT8_MAX

__all__ = [
    "CacheHeader",
    "CalibrationTable",
    "PackedNames",
    "ThresholdResult",
    "amax_to_scale",
    "bits_to_scale",
    "clipped_fraction",
    "hex_to_scale",
    "scale_problem",
    "scale_to_amax",
    "scale_to_bits",
    "scale_to_hex",
]

_F32 = np.float32


def amax_to_scale(amax: float | np.floating[Any], *, divisor: int = INT8_MAX) -> np.float32:
    """Return TensorRT's float32 scale for threshold ``amax``.

    TensorRT's order of operations (algorithm.md §4): round the threshold to float32, divide by
    127 in float32.

    Parameters
    ----------
    amax : float
        The threshold ``T`` (non-negative; ``inf`` and ``nan`` pass through).
    divisor : int, optional
        127 for TensorRT (default); 128 reproduces PPQ (algorithm.md #13).

    Returns
    -------
    numpy.float32
        The scale.

    Examples
    --------
    >>> scale_to_hex(amax_to_scale(1.000244140625))
    '3c010a14'
    """
    with np.errstate(over="ignore", invalid="ignore"):
        return _F32(_F32(amax) / _F32(divisor))


def scale_to_amax(scale: float | np.floating[Any], *, divisor: int = INT8_MAX) -> float:
    """Return the threshold ``amax = scale * 127`` (as a Python float, computed in float64).

    Parameters
    ----------
    scale : float
        A float32 scale as stored in a cache.
    divisor : int, optional
        The divisor the scale was made with (127 for TensorRT).

    Returns
    -------
    float
        The threshold.
    """
    return float(_F32(scale)) * float(divisor)


def scale_to_bits(scale: float | np.floating[Any]) -> int:
    """Return the IEEE-754 bit pattern of ``float32(scale)`` as an unsigned int."""
    return int(np.array(scale, dtype=_F32).view(np.uint32))


def bits_to_scale(bits: int) -> np.float32:
    """Return the float32 whose IEEE-754 bit pattern is ``bits`` (NaN payloads kept)."""
    if not 0 <= bits <= 0xFFFFFFFF:
        raise ValueError(f"float32 bit pattern out of range: {bits:#x}; it must fit in 32 bits")
    return np.array(bits, dtype=np.uint32).view(_F32)[()]


def scale_to_hex(scale: float | np.floating[Any]) -> str:
    """Format a scale as TensorRT writes it: lowercase hex of the float32 bits, no padding.

    Examples
    --------
    >>> scale_to_hex(0.0)
    '0'
    >>> scale_to_hex(float("inf"))
    '7f800000'
    """
    return format(scale_to_bits(scale), "x")


def hex_to_scale(text: str) -> np.float32:
    """Parse TensorRT's hex scale (``'3c010a14'``, ``'0'``) back to the exact float32.

    Raises
    ------
    ValueError
        If ``text`` is not 1–8 hex digits.
    """
    t = text.strip()
    if not 1 <= len(t) <= 8 or any(c not in "0123456789abcdefABCDEF" for c in t):
        raise ValueError(
            f"not a TensorRT scale: {text!r}; expected 1 to 8 hex digits such as '3c010a14'"
        )
    return bits_to_scale(int(t, 16))


@dataclass(frozen=True)
class CacheHeader:
    """The first line of a calibration cache.

    Parameters
    ----------
    text : str
        The header line exactly as read or to be written (no line ending).
    kind : {'trt', 'legacy', 'unknown'}
        ``trt`` for ``TRT-<N>-<Algorithm>``, ``legacy`` for the legacy calibrator's
        ``0 <cutoff> <quantile>`` (spaced or run together), ``unknown`` for anything else.
    version_number : int or None
        ``<N>`` of a ``trt`` header (``7000``, ``100900``).
    algorithm : str or None
        ``<Algorithm>`` of a ``trt`` header (``EntropyCalibration2`` ...).
    cutoff, quantile : float or None
        The legacy calibrator's regression cutoff and quantile.
    """

    text: str
    kind: str = "unknown"
    version_number: int | None = None
    algorithm: str | None = None
    cutoff: float | None = None
    quantile: float | None = None

    @property
    def trt_version(self) -> str | None:
        """The TensorRT version ``'major.minor.patch'`` encoded in ``version_number``.

        Up to 9.x the number is ``major*1000 + minor*100 + patch``; from 10.0 it is
        ``major*10000 + minor*100 + patch`` (cache-format.md).
        """
        n = self.version_number
        if n is None:
            return None
        if n >= 100000:
            return f"{n // 10000}.{n // 100 % 100}.{n % 100}"
        return f"{n // 1000}.{n // 100 % 10}.{n % 100}"


class CalibrationTable(MutableMapping[str, np.float32]):
    """Ordered mapping from tensor name to its float32 scale, with header and provenance.

    The exact float32 bit pattern of each scale is kept, so a table read from a cache writes
    back byte for byte. ``table[name]`` is the scale; :meth:`amax` and :meth:`amaxes` give the
    thresholds through :func:`scale_to_amax`.

    Parameters
    ----------
    scales : mapping or iterable of (name, scale), optional
        Initial entries, in order.
    header : CacheHeader, optional
        The cache header read from a file, or to write.
    provenance : dict, optional
        Where the numbers came from (method, preset, options, model hash, data fingerprint,
        kldiv version ...). Free-form JSON-serializable values.

    Examples
    --------
    >>> t = CalibrationTable.from_amaxes({"data": 1.0})
    >>> scale_to_hex(t["data"])
    '3c010204'
    """

    # Storage is columnar: the names in order and the float32 bit patterns in an
    # ``array("I")`` (4 bytes a tensor), with a name -> position dict built only when a name is
    # looked up or the table changes. A table read from a file keeps its names packed (one
    # UTF-8 buffer and an offset array, :class:`PackedNames`) until it is changed, so a
    # 6.7-million-entry cache takes about its file size in memory (benchmarks/cache_io.py).

    def __init__(
        self,
        scales: Mapping[str, float | np.floating[Any]]
        | Iterable[tuple[str, float | np.floating[Any]]] = (),
        *,
        header: CacheHeader | None = None,
        provenance: Mapping[str, Any] | None = None,
    ) -> None:
        self._names: list[str] | PackedNames = []
        self._bitarr = array("I")
        self._pos: dict[str, int] | None = {}
        self.header = header
        self.provenance = dict(provenance or {})
        items = scales.items() if isinstance(scales, Mapping) else scales
        for name, value in items:
            self[name] = value

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_amaxes(
        cls,
        amaxes: Mapping[str, float] | Iterable[tuple[str, float]],
        *,
        header: CacheHeader | None = None,
        provenance: Mapping[str, Any] | None = None,
    ) -> CalibrationTable:
        """Build a table from thresholds; each scale is :func:`amax_to_scale` of its amax."""
        items = amaxes.items() if isinstance(amaxes, Mapping) else amaxes
        return cls(
            ((n, amax_to_scale(a)) for n, a in items), header=header, provenance=provenance
        )

    @classmethod
    def from_bits(
        cls,
        bits: Iterable[tuple[str, int]],
        *,
        header: CacheHeader | None = None,
        provenance: Mapping[str, Any] | None = None,
    ) -> CalibrationTable:
        """Build a table from exact float32 bit patterns (as parsed from a cache)."""
        table = cls(header=header, provenance=provenance)
        for name, b in bits:
            table.set_bits(name, b)
        return table

    @classmethod
    def _from_validated_columns(
        cls,
        names: list[str] | PackedNames,
        bits: array[int],
        *,
        header: CacheHeader | None = None,
        provenance: Mapping[str, Any] | None = None,
    ) -> CalibrationTable:
        """Adopt ``names`` and ``bits`` (an ``array("I")``) without per-entry checks.

        The caller guarantees the names are unique str without line breaks and
        ``len(names) == len(bits)``; :mod:`kldiv.cachefile` validates while parsing. Not
        public API.
        """
        if bits.typecode != "I" or len(names) != len(bits):
            raise ValueError("names and an array('I') of the same length are required")
        table = cls(header=header, provenance=provenance)
        table._names = names
        table._bitarr = bits
        table._pos = None
        return table

    def _index(self) -> dict[str, int]:
        pos = self._pos
        if pos is None:
            pos = self._pos = {n: i for i, n in enumerate(self._names)}
        return pos

    def _at(self, name: str) -> int:
        try:
            return self._index()[name]
        except (KeyError, TypeError):
            raise KeyError(name) from None

    # -- mapping protocol ---------------------------------------------------------------
    def __getitem__(self, name: str) -> np.float32:
        return bits_to_scale(self._bitarr[self._at(name)])

    def __setitem__(self, name: str, scale: float | np.floating[Any]) -> None:
        if not isinstance(name, str):
            raise TypeError(f"tensor names are str, got {type(name).__name__}")
        self._put(name, scale_to_bits(scale))

    def _thaw(self) -> list[str]:
        """The names as a list, to change them (a packed table unpacks once)."""
        if not isinstance(self._names, list):
            self._names = list(self._names)
        return self._names

    def _put(self, name: str, bits: int) -> None:
        if "\n" in name or "\r" in name:
            raise ValueError(f"tensor name {name!r} contains a line break; caches cannot hold it")
        names = self._thaw()
        pos = self._index()
        i = pos.get(name)
        if i is None:
            pos[name] = len(names)
            names.append(name)
            self._bitarr.append(bits)
        else:
            self._bitarr[i] = bits

    def __delitem__(self, name: str) -> None:
        i = self._at(name)
        del self._thaw()[i]
        del self._bitarr[i]
        self._pos = None

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._index()

    def __eq__(self, other: object) -> bool:
        """Same names in the same order with bit-identical scales (header/provenance ignored)."""
        if not isinstance(other, CalibrationTable):
            return NotImplemented
        if self._bitarr != other._bitarr:
            return False
        a, b = self._names, other._names
        if isinstance(a, PackedNames) and isinstance(b, PackedNames):
            return a.blob == b.blob
        return list(a) == list(b)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        head = self.header.text if self.header is not None else None
        return f"CalibrationTable({len(self)} tensors, header={head!r})"

    # -- values -------------------------------------------------------------------------
    def bits(self, name: str) -> int:
        """The float32 bit pattern of ``name``'s scale."""
        return self._bitarr[self._at(name)]

    def bits_array(self) -> np.ndarray:
        """Every scale's float32 bit pattern, in order, as a read-only ``uint32`` array.

        ``table.bits_array().view(np.float32)`` gives all scales at once, for work on large
        tables without a Python object per entry.
        """
        out = np.frombuffer(self._bitarr, dtype=np.uint32).copy() if len(self) else np.empty(
            0, dtype=np.uint32
        )  # a copy: a view would pin the array's size
        out.flags.writeable = False
        return out

    def set_bits(self, name: str, bits: int) -> None:
        """Set ``name``'s scale from an exact float32 bit pattern."""
        bits_to_scale(bits)  # validates the range
        if not isinstance(name, str):
            raise TypeError(f"tensor names are str, got {type(name).__name__}")
        self._put(name, int(bits))

    def hex(self, name: str) -> str:
        """``name``'s scale as TensorRT writes it (see :func:`scale_to_hex`)."""
        return format(self._bitarr[self._at(name)], "x")

    def amax(self, name: str) -> float:
        """``name``'s threshold, ``scale * 127``."""
        return scale_to_amax(self[name])

    def set_amax(self, name: str, amax: float) -> None:
        """Set ``name``'s scale from a threshold through :func:`amax_to_scale`."""
        self[name] = amax_to_scale(amax)

    def scales(self) -> dict[str, np.float32]:
        """All scales, in order."""
        values = self.bits_array().view(_F32)
        return dict(zip(self._names, values))

    def amaxes(self) -> dict[str, float]:
        """All thresholds, in order."""
        values = self.bits_array().view(_F32).astype(np.float64) * float(INT8_MAX)
        return dict(zip(self._names, values.tolist()))

    def copy(self) -> CalibrationTable:
        """A shallow copy (same header object, copied provenance dict)."""
        names = self._names if isinstance(self._names, PackedNames) else list(self._names)
        return CalibrationTable._from_validated_columns(
            names, array("I", self._bitarr), header=self.header,
            provenance=self.provenance,
        )

    def without(self, names: Iterable[str]) -> CalibrationTable:
        """A copy without the entries ``names`` (names the table lacks are ignored).

        TensorRT runs a layer in INT8 only when every tensor it reads and writes has a scale, so
        a cache written from the result leaves the layers around the dropped tensors in higher
        precision. The header is kept; ``provenance["excluded"]`` lists the names dropped
        (added to any list already there).
        """
        drop = set(names)
        keep = [n not in drop for n in self._names]
        t = CalibrationTable._from_validated_columns(
            list(compress(self._names, keep)),
            array("I", compress(self._bitarr, keep)),
            header=self.header, provenance=self.provenance,
        )
        dropped = [n for n in self._names if n in drop]
        if dropped:
            t.provenance["excluded"] = [*t.provenance.get("excluded", []), *dropped]
        return t

    def is_finite(self, name: str) -> bool:
        """Whether ``name``'s scale is a finite number."""
        return math.isfinite(float(self[name]))

    def unusable(self) -> dict[str, str]:
        """Tensors whose scale TensorRT cannot use, and why: ``"nan"``, ``"-inf"`` or
        ``"negative"`` (sign bit set, ``-0`` included). ``+inf`` and ``0`` are not listed:
        TensorRT itself writes them (see :func:`scale_problem`)."""
        bits = self.bits_array()
        bad = np.flatnonzero(bits >= 0x7F800001)  # NaN (any sign) or sign bit set
        return {self._names[i]: scale_problem(int(bits[i])) or "" for i in bad.tolist()}


class PackedNames(Sequence[str]):
    """Tensor names packed in one UTF-8 buffer, each followed by ``"\\n"``: ~1 byte a
    character plus 8 bytes of offset a name, where a list of str takes ~50 bytes more a name.

    Parameters
    ----------
    blob : bytes or bytearray
        The names, UTF-8, each followed by ``b"\\n"`` (names hold no line break).
    offsets : numpy.ndarray
        int64, ``len(names) + 1`` entries: name ``i`` is ``blob[offsets[i]:offsets[i+1] - 1]``.
    """

    _BLOCK = 1 << 16  # names decoded at a time while iterating

    def __init__(self, blob: bytes | bytearray, offsets: np.ndarray) -> None:
        self.blob = blob
        self.offsets = offsets

    def __len__(self) -> int:
        return int(self.offsets.size) - 1

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> list[str]: ...

    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("name index out of range")
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1]) - 1
        return self.blob[lo:hi].decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        off = self.offsets
        for start in range(0, len(self), self._BLOCK):
            stop = min(start + self._BLOCK, len(self))
            part = self.blob[int(off[start]) : int(off[stop]) - 1].decode("utf-8")
            yield from part.split("\n")


def scale_problem(bits: int) -> str | None:
    """Why TensorRT cannot use the scale with these float32 bits, or ``None`` when it can.

    ``"nan"`` for NaN, ``"-inf"`` for negative infinity, ``"negative"`` for any other value
    with the sign bit set (``-0`` included). Zero and ``+inf`` are usable: TensorRT writes
    them itself (an all-zero tensor; a tensor it never calibrated).
    """
    if bits & 0x7FFFFFFF > 0x7F800000:
        return "nan"
    if bits == 0xFF800000:
        return "-inf"
    if bits & 0x80000000:
        return "negative"
    return None


def clipped_fraction(counts: Any, hist_amax: float, threshold: float) -> float:
    """The fraction of a ``|x|`` histogram's mass above ``threshold``.

    Bins entirely above the threshold count whole; the bin the threshold falls in counts
    pro rata (its values taken as spread evenly over the bin). A threshold on a bin edge (the
    legacy and percentile rules) is exact; one in the middle of bin ``m`` (the entropy
    search's ``(m + 0.5) * w``) counts half of bin ``m``.

    Parameters
    ----------
    counts : array_like
        The histogram's counts over ``[0, hist_amax]``.
    hist_amax : float
        The histogram's range ``R``.
    threshold : float
        The threshold ``T``.

    Returns
    -------
    float
        In ``[0, 1]``; 0 when ``T >= R``; NaN for an empty histogram.

    Examples
    --------
    >>> clipped_fraction([6, 2, 1, 1], 4.0, 2.5)   # half of bin 2 and all of bin 3
    0.15
    """
    c = np.asarray(counts, dtype=np.float64)
    total = float(c.sum())
    if total <= 0 or not math.isfinite(total):
        return math.nan
    n = c.size
    if not threshold < hist_amax or hist_amax <= 0:
        return 0.0
    pos = max(float(threshold), 0.0) / hist_amax * n
    if abs(pos - round(pos)) < 1e-9 * max(1.0, pos):  # on an edge, up to rounding
        pos = float(round(pos))
    j = int(math.floor(pos))
    if j >= n:  # a threshold a rounding below the range's top: nothing is clipped
        return 0.0
    above = float(c[j + 1:].sum()) + float(c[j]) * ((j + 1) - pos)
    return min(1.0, max(0.0, above / total))


@dataclass(frozen=True, eq=False)
class ThresholdResult:
    """The threshold chosen for one histogram, and how it was chosen.

    Parameters
    ----------
    amax : float
        The threshold ``T`` (float64, before the float32 rounding of the scale).
    bin_index : int or None
        The winning candidate ``i`` of an entropy search (``None`` for other methods and for
        an all-zero tensor).
    scale : numpy.float32
        ``amax_to_scale(amax, divisor=...)``: what TensorRT would store.
    method : str
        ``'entropy'``, ``'minmax'``, ``'percentile'`` or ``'mse'``.
    preset : str or None
        The preset name of an entropy search.
    options : dict
        Every option the result depends on.
    divergence : numpy.ndarray
        The whole curve: divergence of each candidate (KL for entropy, MSE for mse; empty for
        methods without a search).
    candidates : numpy.ndarray
        The candidate ``i`` of each ``divergence`` entry.
    histogram : object
        The histogram searched.
    explainer : callable, optional
        ``explainer(i) -> (P, Q)``; used by :meth:`distributions`.
    clipped_fraction : float, optional
        The fraction of the histogram's mass above ``amax``: what the threshold saturates.
        Computed from ``histogram`` by :func:`clipped_fraction` when not given (NaN without a
        histogram); a method that knows it exactly (minmax: ``amax`` is the largest ``|x|``
        seen, so 0) passes it.
    """

    amax: float
    bin_index: int | None
    scale: np.float32
    method: str
    preset: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    divergence: np.ndarray = field(default_factory=lambda: np.empty(0))
    candidates: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    histogram: Any = field(default=None, repr=False)
    explainer: Any = field(default=None, repr=False)
    clipped_fraction: float = None  # type: ignore[assignment]  # filled in __post_init__

    def __post_init__(self) -> None:
        if self.clipped_fraction is None:
            h = self.histogram
            value = (
                math.nan if h is None or not hasattr(h, "counts")
                else clipped_fraction(h.counts, h.amax, self.amax)
            )
            object.__setattr__(self, "clipped_fraction", value)

    @property
    def scale_hex(self) -> str:
        """The scale as TensorRT writes it in a cache (see :func:`scale_to_hex`)."""
        return scale_to_hex(self.scale)

    def divergence_at(self, i: int) -> float:
        """The divergence of candidate ``i``."""
        pos = np.flatnonzero(self.candidates == i)
        if pos.size == 0:
            raise ValueError(f"{i} is not a candidate of this search; see .candidates")
        return float(self.divergence[pos[0]])

    def distributions(self, i: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The normalized ``P`` and ``Q`` of candidate ``i`` (default: the winner).

        Raises
        ------
        ValueError
            If this result does not come from an entropy search.
        """
        if self.explainer is None:
            raise ValueError(
                f"a {self.method!r} result has no P/Q distributions; only entropy searches do"
            )
        if i is None:
            if self.bin_index is None:
                raise ValueError("no winning candidate (all-zero tensor); pass i explicitly")
            i = self.bin_index
        return self.explainer(int(i))  # type: ignore[no-any-return]
