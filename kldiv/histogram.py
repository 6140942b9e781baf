"""Histograms of |activation|: :class:`ActivationHistogram` and the readable NumPy fill.

A histogram here is a small value object: int64 counts of ``|x|`` in ``num_bins`` equal bins
over ``[0, amax]``. It is filled from float16/32/64 arrays of any shape and strides, merged
with ``+``, compared exactly with ``==`` and approximately with :meth:`allclose`.

The bin-edge rule (the same in the NumPy reference and the Numba kernel)
    A finite value goes to bin ``k = min(floor(|x| * (num_bins / amax)), num_bins - 1)``,
    with ``|x|`` widened exactly to float64 first and both operations rounded in float64
    (``num_bins / amax`` once, then the product). Equivalently, bin ``k`` holds
    ``edges[k] <= |x| < edges[k+1]`` and the last bin also holds ``|x| == amax`` (as
    ``np.histogram`` does), where :func:`bin_edges` gives ``edges[0] = 0``,
    ``edges[num_bins] = amax`` and, for the inner edges, the smallest float64 that the
    expression puts in bin ``k`` — that is ``amax * k / num_bins`` moved by at most a few ulps
    (the documented correction that makes the edge array and the index expression agree
    exactly). Values above ``amax`` are *over* (see ``overflow``). When ``amax == 0`` (an
    all-zero tensor) every count is in bin 0.

Growth (how a histogram meets a batch that exceeds its range), set when it is built
    ``growth="fixed"`` (default) the range stays; values above it are an error, or with
    ``overflow="clip"`` are counted in the last bin.
    ``growth="pow2"``   TensorRT developer guide: start at the first batch's absmax; when a
    batch exceeds the range, double the range as often as needed, merging neighbouring bin
    pairs (``new[k] = old[2k] + old[2k+1]``; the upper half starts empty), then fill.
    ``growth="append"`` ModelOpt's ``HistogramCalibrator``: keep the bin width, append bins up
    to ``ceil(batch_absmax / width)`` (``num_bins`` grows).

    The collector's range policies (:data:`RANGE_POLICIES`, :class:`kldiv.HistogramCollector`)
    choose each histogram's growth: ``"pow2"`` and ``"append"`` as above, ``"fixed"`` and
    ``"global"`` (the global absmax of a first pass over all the data: :func:`absmax` per
    batch, then ``max``) a fixed range.

Implementation
    Fills and :func:`absmax` run the Numba kernels, or this module's NumPy reference, as
    :func:`kldiv._kernels.resolve` decides (the ``KLDIV_KERNELS`` environment variable);
    both give the same counts.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from . import _kernels
from ._bins import _check_amax, _check_num_bins, _float_threshold
from .defaults import NUM_BINS
from .errors import HistogramError, HistogramRangeError, NonFiniteError

__all__ = [
    "GROWTH_POLICIES",
    "RANGE_POLICIES",
    "ActivationHistogram",
    "FillStats",
    "absmax",
    "bin_edges",
    "clamp_edge",
    "count_at_least",
    "fill_counts_reference",
]

logger = logging.getLogger(__name__)

RangePolicy = Literal["fixed", "global", "pow2", "append"]
GrowthPolicy = Literal["fixed", "pow2", "append"]
NonFinitePolicy = Literal["raise", "drop"]
OverflowPolicy = Literal["raise", "clip"]

#: The collector's range policies (see the module docstring and docs/histograms.md).
RANGE_POLICIES: tuple[str, ...] = ("fixed", "global", "pow2", "append")
#: A histogram's growth policies, set when it is built (see the module docstring).
GROWTH_POLICIES: tuple[str, ...] = ("fixed", "pow2", "append")
_NONFINITE = ("raise", "drop")
_OVERFLOW = ("raise", "clip")
#: Most bins "append" growth may create (64 Mi bins = 512 MiB of counts per histogram).
MAX_APPEND_BINS = 1 << 26
#: Elements the NumPy reference widens to float64 at a time (bounded temporaries).
_REFERENCE_BLOCK = 1 << 18


# --------------------------------------------------------------------------- helpers
def _check_choice(name: str, value: str, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise HistogramError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}")


def bin_edges(amax: float, num_bins: int = NUM_BINS) -> np.ndarray:
    """The float64 bin edges of the documented rule (see the module docstring).

    ``edges[0] = 0``, ``edges[num_bins] = amax``, and ``edges[k]`` is the smallest float64
    ``a`` with ``floor(a * (num_bins / amax)) >= k``: the nominal ``amax * k / num_bins``
    corrected by a few ulps so that ``np.histogram(|x|, bins=edges)`` and the fill agree
    bin for bin. With ``amax == 0`` all edges are 0 (and all mass goes to bin 0).

    Parameters
    ----------
    amax : float
        Upper edge of the range (``edges[-1] == amax`` exactly).
    num_bins : int, default NUM_BINS
        Number of bins.

    Returns
    -------
    numpy.ndarray
        ``num_bins + 1`` float64 edges, strictly increasing when ``amax > 0``.
    """
    num_bins = _check_num_bins(num_bins)
    amax = _check_amax(amax, num_bins)
    k = np.arange(num_bins + 1, dtype=np.float64)
    if amax == 0.0:
        return np.zeros(num_bins + 1)
    inv_w = num_bins / amax
    edges = amax * (k / num_bins)
    inner = slice(1, num_bins)
    for _ in range(64):  # each pass moves every edge by one ulp; 1-3 passes in practice
        e = edges[inner]
        below = np.floor(e * inv_w) < k[inner]  # e is not yet in bin k: move up
        prev = np.nextafter(e, 0.0)
        above = np.floor(prev * inv_w) >= k[inner]  # a smaller value is already in bin k
        if not (below.any() or above.any()):
            break
        edges[inner] = np.where(below, np.nextafter(e, np.inf), np.where(above, prev, e))
    else:  # pragma: no cover - cannot happen for finite amax and sane num_bins
        raise HistogramError(f"could not derive bin edges for amax={amax!r}, {num_bins} bins")
    edges[0], edges[num_bins] = 0.0, amax
    return edges


def clamp_edge(amax: float, num_bins: int = NUM_BINS) -> float:
    """The smallest float64 ``a`` whose product ``a * (num_bins / amax)`` floors to ``num_bins``.

    Values in ``[clamp_edge(amax), amax]`` are the ones the bin rule's ``min(..., num_bins - 1)``
    *clamps* into the last bin (usually ``amax`` alone; a few float64 values below it when
    ``num_bins / amax`` rounds up). Their bin after the range doubles is one lower than
    binning them at the doubled range (``docs/histograms.md``, exact sharding). Returns
    ``inf`` when no value in range is clamped (``amax * (num_bins / amax)`` rounds below
    ``num_bins``) or when ``amax == 0``.

    Parameters
    ----------
    amax : float
        The histogram's range.
    num_bins : int, default NUM_BINS
        Number of bins.

    Returns
    -------
    float
    """
    num_bins = _check_num_bins(num_bins)
    amax = _check_amax(amax, num_bins)
    if amax == 0.0:
        return math.inf
    inv_w = num_bins / amax
    if math.floor(amax * inv_w) < num_bins:
        return math.inf
    edge = amax
    while True:  # a few ulps at most
        below = math.nextafter(edge, 0.0)
        if math.floor(below * inv_w) < num_bins:
            return edge
        edge = below


def count_at_least(values: ArrayLike, threshold: float) -> int:
    """How many finite values have ``|x| >= threshold`` (``threshold > 0``), in bounded blocks.

    The comparison is exact for every dtype: the threshold is rounded *up* to the array's
    float type (so ``x >= t`` in that type is ``float64(x) >= threshold``); integers are
    widened to float64.

    Parameters
    ----------
    values : array_like
        Activations (float16/32/64 or integer).
    threshold : float
        Positive.

    Returns
    -------
    int
    """
    arr = _as_input(values)
    if not threshold > 0:
        raise HistogramError(f"threshold must be > 0, got {threshold!r}")
    if math.isinf(threshold) or arr.size == 0:
        return 0
    if not isinstance(arr, np.ndarray):  # CUDA memory: counted there
        from .gpu import count_at_least as count_at_least_device

        return count_at_least_device(arr, threshold)
    if arr.dtype.kind == "f":
        t = _float_threshold(arr.dtype, threshold)
        if t is None:
            return 0
        inf = arr.dtype.type(np.inf)
        n = 0
        for block in _blocks(arr):
            n += int(np.count_nonzero((block >= t) & (block < inf)))
            n += int(np.count_nonzero((block <= -t) & (block > -inf)))
        return n
    return int(sum(np.count_nonzero(a >= threshold) for a in _reference_blocks(arr)))


def _as_array(values: ArrayLike) -> np.ndarray:
    arr = values if isinstance(values, np.ndarray) else np.asarray(values)
    if arr.dtype.kind == "f":
        if arr.dtype.itemsize not in (2, 4, 8):
            raise HistogramError(
                f"unsupported float dtype {arr.dtype}; convert to float32 or float64 first"
            )
        return arr
    if arr.dtype.kind in "iu":
        return arr
    raise HistogramError(
        f"activations must be a real numeric array (float16/32/64 or integer), got dtype "
        f"{arr.dtype}; convert with np.asarray(values, dtype=np.float32)"
    )


def _is_device_array(values: Any) -> bool:
    """Whether ``values`` lives in CUDA memory.

    ``__cuda_array_interface__``, or DLPack with a CUDA device: such arrays are filled on the GPU
    by :mod:`kldiv.gpu`. Asks no module.
    """
    if isinstance(values, np.ndarray):
        return False
    try:
        if getattr(values, "__cuda_array_interface__", None) is not None:
            return True
    except Exception:  # noqa: BLE001 - e.g. torch CPU tensors raise here
        pass
    device = getattr(values, "__dlpack_device__", None)
    if device is None:
        return False
    try:
        kind = int(device()[0])
    except Exception:  # noqa: BLE001
        return False
    return kind in (2, 13)  # kDLCUDA, kDLCUDAManaged


def _as_input(values: Any) -> Any:
    """A NumPy array (validated dtype), or, for CUDA memory, a checked CuPy view of it."""
    if _is_device_array(values):
        from .gpu import as_device_array

        return as_device_array(values)
    return _as_array(values)


def _blocks(arr: np.ndarray) -> Iterator[np.ndarray]:
    """``arr``'s values, 1-D, a bounded block at a time, in memory order."""
    it = np.nditer(  # type: ignore[call-overload]
        arr,
        flags=["external_loop", "buffered", "zerosize_ok"],
        op_flags=[["readonly"]],
        order="K",
        buffersize=_REFERENCE_BLOCK,
    )
    yield from it


def _reference_blocks(arr: np.ndarray) -> Iterator[np.ndarray]:
    """|x| as float64, a bounded block at a time (never a full-size temporary)."""
    for block in _blocks(arr):
        yield np.abs(block.astype(np.float64))


class FillStats:
    """What one fill pass saw besides the counts (the reference's and the kernels')."""

    __slots__ = ("counts", "max_abs", "max_over", "n_nonfinite", "n_over")

    def __init__(
        self,
        counts: np.ndarray,
        n_nonfinite: int,
        n_over: int,
        max_over: float,
        max_abs: float,
    ) -> None:
        self.counts = counts  # int64, shape (num_bins,)
        self.n_nonfinite = n_nonfinite  # NaN / +Inf / -Inf seen (never binned)
        self.n_over = n_over  # finite values with |x| > amax
        self.max_over = max_over  # largest finite |x| above amax (0.0 when none)
        self.max_abs = max_abs  # largest finite |x| of all (0.0 when none)


def fill_counts_reference(
    values: ArrayLike, amax: float, num_bins: int = NUM_BINS, *, clip: bool = False
) -> FillStats:
    """The NumPy reference fill: counts of ``|values|`` under the documented bin rule.

    For finite ``a = |float64(x)|`` with ``a <= amax`` the bin is
    ``min(floor(a * (num_bins / amax)), num_bins - 1)`` (bin 0 when ``amax == 0``). NaN/±Inf
    are counted and skipped; finite ``a > amax`` are counted as over (and, with ``clip``, put
    in the last bin). Works a bounded block at a time (never a full-size temporary).

    Parameters
    ----------
    values : array_like
        Activations of any shape, float16/32/64 or integer.
    amax : float
        Range ``[0, amax]``.
    num_bins : int, default NUM_BINS
        Number of bins.
    clip : bool, default False
        Count values above ``amax`` in the last bin.

    Returns
    -------
    FillStats
        ``counts`` (int64) plus ``n_nonfinite``, ``n_over``, ``max_over``, ``max_abs``.
    """
    arr = _as_array(values)
    num_bins = _check_num_bins(num_bins)
    amax = _check_amax(amax, num_bins)
    inv_w = num_bins / amax if amax > 0 else 0.0
    counts = np.zeros(num_bins, dtype=np.int64)
    n_nonfinite = n_over = 0
    max_over = max_abs = 0.0
    for a in _reference_blocks(arr):
        finite = np.isfinite(a)
        n_nonfinite += int(a.size - np.count_nonzero(finite))
        a = a[finite]
        over = a > amax
        if over.any():
            n_over += int(np.count_nonzero(over))
            max_over = max(max_over, float(a[over].max()))
        if a.size:
            max_abs = max(max_abs, float(a.max()))
        inside = a[~over]
        idx = np.minimum(np.floor(inside * inv_w).astype(np.int64), num_bins - 1)
        counts += np.bincount(idx, minlength=num_bins)
        if clip:
            counts[-1] += int(np.count_nonzero(over))
    return FillStats(counts, n_nonfinite, n_over, max_over, max_abs)


def _fill_stats(arr: Any, amax: float, num_bins: int, clip: bool) -> FillStats:
    if not isinstance(arr, np.ndarray):  # CUDA memory (see _as_input): filled there
        from .gpu import fill_counts as fill_counts_device

        return FillStats(*fill_counts_device(arr, amax, num_bins, clip=clip))
    kernels = _kernels.resolve()
    if kernels is None:
        return fill_counts_reference(arr, amax, num_bins, clip=clip)
    return FillStats(*kernels.fill_counts(arr, amax, num_bins, clip))


def _nonfinite_error(arr: Any, where: str) -> NonFiniteError:
    """Build the detailed error (only on the error path is a full-size mask made)."""
    if not isinstance(arr, np.ndarray):  # CUDA memory: inspected on the host, on error only
        from .gpu import to_host

        arr = to_host(arr)
    n_nan = int(np.count_nonzero(np.isnan(arr)))
    n_posinf = int(np.count_nonzero(np.isposinf(arr)))
    n_neginf = int(np.count_nonzero(np.isneginf(arr)))
    bad = np.argwhere(~np.isfinite(arr))
    first = tuple(int(i) for i in bad[0]) if bad.size else None
    place = f" in {where}" if where else ""
    return NonFiniteError(
        f"{n_nan + n_posinf + n_neginf} non-finite value(s){place} (NaN: {n_nan}, "
        f"+Inf: {n_posinf}, -Inf: {n_neginf}; first at index {first}) in an array of shape "
        f"{arr.shape}; fix the model/data, or pass nonfinite='drop' to skip them",
        n_nan=n_nan,
        n_posinf=n_posinf,
        n_neginf=n_neginf,
        first_index=first,
        where=where,
    )


def _empty_error(where: str) -> HistogramError:
    place = f" ({where})" if where else ""
    return HistogramError(
        f"no values: the tensor is empty{place}; check the batch, or pass allow_empty=True "
        "to accept empty batches"
    )


def absmax(values: ArrayLike, *, nonfinite: NonFinitePolicy = "raise") -> float:
    """Largest finite ``|x|`` of an array, without a full-size temporary of ``|x|``.

    The first pass of the ``"global"`` range policy: take ``max(absmax(b) for b in batches)``.

    Parameters
    ----------
    values : array_like
        Activations, float16/32/64 or integer, any shape and strides.
    nonfinite : {"raise", "drop"}, default "raise"
        NaN/±Inf raise :class:`~kldiv.errors.NonFiniteError`, or are ignored.

    Returns
    -------
    float
        0.0 for an all-zero array.
    """
    _check_choice("nonfinite", nonfinite, _NONFINITE)
    arr = _as_input(values)
    if arr.size == 0:
        raise _empty_error("")
    kernels = _kernels.resolve()
    if not isinstance(arr, np.ndarray):
        from .gpu import absmax_stats as absmax_stats_device

        mx, bad = absmax_stats_device(arr)
    elif kernels is None:
        mx, bad = 0.0, 0
        for a in _reference_blocks(arr):
            finite = np.isfinite(a)
            bad += int(a.size - np.count_nonzero(finite))
            if finite.any():
                mx = max(mx, float(a[finite].max()))
    else:
        mx, bad = kernels.absmax(arr)
    if bad and nonfinite == "raise":
        raise _nonfinite_error(arr, "")
    return mx


# --------------------------------------------------------------------------- the value object
class ActivationHistogram:
    """Int64 counts of ``|x|`` in ``num_bins`` equal bins over ``[0, amax]``.

    Bin-edge rule: a finite ``|x|`` (widened to float64) goes to bin
    ``min(floor(|x| * (num_bins / amax)), num_bins - 1)`` in float64 arithmetic; equivalently
    bin ``k`` holds ``edges[k] <= |x| < edges[k+1]`` and the last bin also holds
    ``|x| == amax`` (like ``np.histogram``), where :attr:`edges` are the nominal
    ``amax * k / num_bins`` corrected by a few ulps to agree exactly with that expression
    (:func:`bin_edges`). With ``amax == 0`` (an all-zero tensor) all counts are in bin 0.
    Values above ``amax`` follow the histogram's ``growth`` (and the fill's ``overflow``).

    Parameters
    ----------
    amax : float
        Upper edge of the range (the histogram's range ``R``), finite and >= 0.
    num_bins : int, default NUM_BINS (2048)
        Number of bins.
    counts : array_like, optional
        Initial counts (validated as by :meth:`from_counts`); zeros when omitted.
    growth : {"fixed", "pow2", "append"}, default "fixed"
        What a fill does when a batch exceeds the range (see the module docstring):
        ``"fixed"`` keeps the range (the fill's ``overflow`` decides), ``"pow2"`` doubles it
        merging bin pairs (TensorRT), ``"append"`` adds bins of the same width (ModelOpt).

    Notes
    -----
    Fill with :meth:`fill`, grow explicitly with :meth:`grow_to`. The growth policy belongs to
    the histogram: it is kept by :meth:`copy` and by ``+`` (the left operand's), and is not
    part of ``==``. Merge with ``+``, ``+=`` or ``sum([...])``: ranges and bin counts must be
    equal (:class:`~kldiv.errors.HistogramRangeError` otherwise). ``==`` is exact;
    :meth:`allclose` compares with tolerances. ``counts`` and ``edges`` are read-only.

    Examples
    --------
    >>> import numpy as np
    >>> h = ActivationHistogram(4.0, num_bins=4).fill(np.array([-4.0, 0.5, 1.0, 3.99]))
    >>> h.counts.tolist()
    [1, 1, 0, 2]
    """

    __slots__ = ("_amax", "_counts", "_growth", "_num_bins")
    __hash__ = None  # type: ignore[assignment]  # mutable (fill, +=)

    def __init__(
        self,
        amax: float,
        num_bins: int = NUM_BINS,
        counts: ArrayLike | None = None,
        *,
        growth: GrowthPolicy = "fixed",
    ) -> None:
        _check_choice("growth", growth, GROWTH_POLICIES)
        self._growth: GrowthPolicy = growth
        num_bins = _check_num_bins(num_bins)
        self._amax = _check_amax(amax, num_bins)
        self._num_bins = num_bins
        if counts is None:
            self._counts = np.zeros(num_bins, dtype=np.int64)
        else:
            checked = _validate_counts(counts)
            if checked.size != num_bins:
                raise HistogramError(
                    f"counts has {checked.size} bins but num_bins={num_bins}; "
                    "pass counts of length num_bins (or omit num_bins)"
                )
            self._counts = checked

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_counts(
        cls, counts: ArrayLike, amax: float, *, growth: GrowthPolicy = "fixed"
    ) -> ActivationHistogram:
        """Build from existing counts (1-D, integer-valued, >= 0) over ``[0, amax]``.

        Parameters
        ----------
        counts : array_like
            One count per bin; integer dtype, or whole-valued floats below 2**53.
        amax : float
            Upper edge of the range.
        growth : {"fixed", "pow2", "append"}, default "fixed"
            Growth policy of later fills.

        Returns
        -------
        ActivationHistogram
        """
        checked = _validate_counts(counts)
        return cls(amax, checked.size, checked, growth=growth)

    @classmethod
    def from_values(
        cls,
        values: ArrayLike,
        *,
        amax: float | None = None,
        num_bins: int = NUM_BINS,
        growth: GrowthPolicy = "fixed",
        nonfinite: NonFinitePolicy = "raise",
        overflow: OverflowPolicy = "raise",
        where: str = "",
    ) -> ActivationHistogram:
        """Histogram of ``|values|``; ``amax=None`` takes the data's own absmax as the range.

        This is also how the growth policies start: the first batch sets the range
        (``from_values(batch, growth="pow2")``), later batches grow it (``fill(batch)``).

        Parameters
        ----------
        values : array_like
            Activations of any shape (float16/32/64 or integer); must not be empty.
        amax : float, optional
            Range to use; default the largest finite ``|x|`` (0 for all-zero data).
        num_bins : int, default NUM_BINS
            Number of bins.
        growth : {"fixed", "pow2", "append"}, default "fixed"
            Growth policy (see the class docstring).
        nonfinite : {"raise", "drop"}, default "raise"
            NaN/±Inf raise :class:`~kldiv.errors.NonFiniteError` or are skipped.
        overflow : {"raise", "clip"}, default "raise"
            With an explicit ``amax`` and fixed growth: values above it raise or go to the
            last bin.
        where : str, optional
            Names the tensor/batch in error messages.

        Returns
        -------
        ActivationHistogram
        """
        arr = _as_input(values)
        if arr.size == 0:
            raise _empty_error(where)
        if amax is None:
            amax = absmax(arr, nonfinite=nonfinite)
        hist = cls(amax, num_bins, growth=growth)
        return hist.fill(arr, nonfinite=nonfinite, overflow=overflow, where=where)

    # ----------------------------------------------------------------- properties
    @property
    def counts(self) -> np.ndarray:
        """Int64 counts, shape ``(num_bins,)``, read-only view."""
        view: np.ndarray = self._counts.view()
        view.flags.writeable = False
        return view

    @property
    def amax(self) -> float:
        """Upper edge of the range (``edges[-1]``)."""
        return self._amax

    @property
    def num_bins(self) -> int:
        """Number of bins."""
        return self._num_bins

    @property
    def growth(self) -> GrowthPolicy:
        """The growth policy: ``"fixed"``, ``"pow2"`` or ``"append"``."""
        return self._growth

    @property
    def bin_width(self) -> float:
        """``amax / num_bins``."""
        return self._amax / self._num_bins

    @property
    def edges(self) -> np.ndarray:
        """Float64 bin edges (``num_bins + 1``), read-only; see the class docstring."""
        edges = bin_edges(self._amax, self._num_bins)
        edges.flags.writeable = False
        return edges

    @property
    def total(self) -> int:
        """Total count."""
        return int(self._counts.sum())

    def to_numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """``(counts, edges)`` as ``np.histogram`` returns them (copies, writeable)."""
        return self._counts.copy(), bin_edges(self._amax, self._num_bins)

    def copy(self) -> ActivationHistogram:
        """An independent copy."""
        return ActivationHistogram(
            self._amax, self._num_bins, self._counts.copy(), growth=self._growth
        )

    # ----------------------------------------------------------------- filling
    def fill(
        self,
        values: ArrayLike,
        *,
        nonfinite: NonFinitePolicy = "raise",
        overflow: OverflowPolicy = "raise",
        allow_empty: bool = False,
        where: str = "",
    ) -> ActivationHistogram:
        """Add ``|values|`` to the counts; returns ``self``.

        Parameters
        ----------
        values : array_like
            Activations of any shape and strides (float16/32/64 or integer). Never copied
            whole; ``|x|`` is never materialized for the whole tensor.
        nonfinite : {"raise", "drop"}, default "raise"
            NaN/±Inf raise :class:`~kldiv.errors.NonFiniteError` (with counts and the first
            index), or are skipped.
        overflow : {"raise", "clip"}, default "raise"
            When ``max|x| > amax`` and the histogram's growth is ``"fixed"``: raise
            :class:`~kldiv.errors.HistogramRangeError`, or count the values in the last bin.
            (With ``"pow2"``/``"append"`` growth the range grows instead.)
        allow_empty : bool, default False
            Accept a zero-size array (a no-op) instead of raising.
        where : str, optional
            Names the tensor/batch in error messages.

        Returns
        -------
        ActivationHistogram
            ``self``. On error, ``self`` is unchanged.
        """
        self._observe(values, nonfinite, overflow, allow_empty, where)
        return self

    def observe(
        self,
        values: ArrayLike,
        *,
        nonfinite: NonFinitePolicy = "raise",
        overflow: OverflowPolicy = "raise",
        allow_empty: bool = False,
        where: str = "",
    ) -> float:
        """Fill like :meth:`fill`, and return the largest finite ``|x|`` of ``values``.

        One pass over the data gives both (the collector uses it: no separate max pass).
        Parameters, errors and the growth rules are those of :meth:`fill`.

        Returns
        -------
        float
            The largest finite ``|x|`` seen (0.0 for an empty array). On error, ``self`` is
            unchanged.
        """
        return self._observe(values, nonfinite, overflow, allow_empty, where)[0]

    def _observe(
        self, values: ArrayLike, nonfinite: str, overflow: str, allow_empty: bool, where: str
    ) -> tuple[float, int]:
        """:meth:`observe`, and the number of NaN/±Inf values the fill skipped."""
        _check_choice("nonfinite", nonfinite, _NONFINITE)
        _check_choice("overflow", overflow, _OVERFLOW)
        arr = _as_input(values)
        if arr.size == 0:
            if allow_empty:
                return 0.0, 0
            raise _empty_error(where)
        grows = self._growth != "fixed"
        clip = overflow == "clip" and not grows
        stats = _fill_stats(arr, self._amax, self._num_bins, clip)
        if stats.n_nonfinite and nonfinite == "raise":
            raise _nonfinite_error(arr, where)
        if stats.n_over:
            if grows:
                grown = self.copy().grow_to(stats.max_over)
                stats = _fill_stats(arr, grown._amax, grown._num_bins, False)
                self._amax, self._num_bins, self._counts = (
                    grown._amax,
                    grown._num_bins,
                    grown._counts,
                )
            elif overflow == "raise":
                place = f" in {where}" if where else ""
                hint = "pass a larger amax, overflow='clip', or growth='pow2'/'append'"
                raise HistogramRangeError(
                    f"{stats.n_over} value(s){place} exceed the histogram range "
                    f"amax={self._amax!r} (largest |x| = {stats.max_over!r}); {hint}"
                )
        self._counts += stats.counts
        return stats.max_abs, stats.n_nonfinite

    def grow_to(self, amax: float, policy: GrowthPolicy | None = None) -> ActivationHistogram:
        """Grow the range in place so that it covers ``amax``; returns ``self``.

        Parameters
        ----------
        amax : float
            The value the range must cover (``self.amax >= amax`` afterwards).
        policy : {"pow2", "append"}, optional
            Default: the histogram's growth, or ``"pow2"`` for a fixed-range histogram (an
            explicit call grows it anyway; its growth stays ``"fixed"`` for later fills).
            ``"pow2"``: double the range ``d`` times (the fewest that cover ``amax``) and
            merge ``2**d`` neighbouring bins into one (``num_bins`` is kept; the upper part
            starts empty). ``"append"``: keep the bin width ``w`` and grow ``num_bins`` to
            ``ceil(amax / w)`` (ModelOpt); the new range is ``num_bins * w``.
            A histogram with ``amax == 0`` holds only zeros, so it simply takes the new range
            (all counts stay in bin 0) under either policy.

        Returns
        -------
        ActivationHistogram
            ``self``.
        """
        if policy is None:
            policy = "pow2" if self._growth == "fixed" else self._growth
        _check_choice("policy", policy, ("pow2", "append"))
        target = _check_amax(amax, self._num_bins)
        if target <= self._amax:
            return self
        if self._amax == 0.0:
            self._amax = target
            return self
        if policy == "pow2":
            doublings = 0
            new_amax = self._amax
            while new_amax < target:
                new_amax *= 2.0
                doublings += 1
            if not math.isfinite(new_amax):
                raise HistogramError(
                    f"cannot double amax={self._amax!r} up to {target!r} without overflow"
                )
            group = 1 << doublings
            padded = np.zeros(-(-self._num_bins // group) * group, dtype=np.int64)
            padded[: self._num_bins] = self._counts
            merged = padded.reshape(-1, group).sum(axis=1)
            counts = np.zeros(self._num_bins, dtype=np.int64)
            counts[: merged.size] = merged
            self._amax, self._counts = new_amax, counts
        else:
            width = self._amax / self._num_bins
            new_bins = max(self._num_bins, math.ceil(target / width))
            while new_bins * width < target:  # rounding: make sure the range covers amax
                new_bins += 1
            if new_bins > MAX_APPEND_BINS:
                raise HistogramError(
                    f"append growth from amax={self._amax!r} to {target!r} would need "
                    f"{new_bins:,} bins (limit {MAX_APPEND_BINS:,}); use growth='pow2', "
                    "or a fixed range from a first pass over the data (range_policy='global')"
                )
            counts = np.zeros(new_bins, dtype=np.int64)
            counts[: self._num_bins] = self._counts
            self._amax, self._num_bins, self._counts = new_bins * width, new_bins, counts
        logger.debug(
            "histogram range grown to %r (%s, %d bins)", self._amax, policy, self._num_bins
        )
        return self

    # ----------------------------------------------------------------- merging / comparing
    def _check_compatible(self, other: ActivationHistogram) -> None:
        if self._num_bins != other._num_bins or self._amax != other._amax:
            raise HistogramRangeError(
                f"cannot merge histograms with different ranges: amax={self._amax!r} with "
                f"{self._num_bins} bins vs amax={other._amax!r} with {other._num_bins} bins; "
                "grow the smaller one first (h.grow_to(other.amax)) or collect "
                "both with the same fixed range"
            )

    def __add__(self, other: object) -> ActivationHistogram:
        if isinstance(other, numbers.Integral) and not isinstance(other, bool) and other == 0:
            return self.copy()  # so that sum([...]) works
        if not isinstance(other, ActivationHistogram):
            return NotImplemented
        self._check_compatible(other)
        return ActivationHistogram(
            self._amax, self._num_bins, self._counts + other._counts, growth=self._growth
        )

    __radd__ = __add__

    def __iadd__(self, other: object) -> ActivationHistogram:  # noqa: PYI034
        if not isinstance(other, ActivationHistogram):
            return NotImplemented
        self._check_compatible(other)
        self._counts = self._counts + other._counts
        return self

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ActivationHistogram):
            return NotImplemented
        return (
            self._amax == other._amax
            and self._num_bins == other._num_bins
            and bool(np.array_equal(self._counts, other._counts))
        )

    def allclose(self, other: ActivationHistogram, rtol: float = 1e-9, atol: float = 0.0) -> bool:
        """Same bin count, ``amax`` and counts equal within ``rtol``/``atol`` (``np.allclose``).

        Parameters
        ----------
        other : ActivationHistogram
            Histogram to compare with.
        rtol, atol : float
            Tolerances for ``amax`` and for each count.

        Returns
        -------
        bool
        """
        if not isinstance(other, ActivationHistogram):
            raise TypeError(f"allclose needs an ActivationHistogram, got {type(other).__name__}")
        return (
            self._num_bins == other._num_bins
            and math.isclose(self._amax, other._amax, rel_tol=rtol, abs_tol=atol)
            and bool(np.allclose(self._counts, other._counts, rtol=rtol, atol=atol))
        )

    def __repr__(self) -> str:
        return (
            f"ActivationHistogram(amax={self._amax!r}, num_bins={self._num_bins}, "
            f"total={self.total})"
        )


def _validate_counts(counts: ArrayLike) -> np.ndarray:
    arr = np.asarray(counts)
    if arr.ndim != 1 or arr.size == 0:
        raise HistogramError(
            f"counts must be a non-empty 1-D array, got shape {arr.shape}; pass one count per bin"
        )
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iuf":
        raise HistogramError(f"counts must be integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.floor(arr)) or np.any(arr >= 2.0**53):
            raise HistogramError(
                "counts must be whole numbers: got fractional, non-finite or huge float counts; "
                "histogram counts are integers (float32 counts saturate at 2**24)"
            )
    elif arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise HistogramError("counts exceed the int64 range")
    if np.any(arr < 0):
        raise HistogramError(
            f"counts must be >= 0, found {int(np.count_nonzero(arr < 0))} negative bin(s)"
        )
    return arr.astype(np.int64, copy=True)
