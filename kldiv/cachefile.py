"""TensorRT calibration cache files: pure parse/format, atomic read/write.

The format (``docs/cache-files.md``, ``shared/docs/cache-format.md``)::

    TRT-7000-EntropyCalibration2
    data: 3c008912
    (Unnamed Layer* 3) [Convolution]_output: 3d9d08d7

Line 1 is the header: ``TRT-<N>-<Algorithm>`` or the legacy calibrator's
``0 <cutoff> <quantile>`` (hex doubles, spaced or run together). Each further line is
``<name>: <hex>``, split at the line's **last** ``": "``; ``<hex>`` is the float32 bit pattern
of the scale, lowercase, unpadded (zero is ``0``).

:func:`parse_cache` and :func:`format_cache` are pure functions on ``str``;
:func:`read_cache` and :func:`write_cache` add the file (writes are atomic and never overwrite
without ``force``). A table parsed from a file TensorRT wrote formats back byte for byte.

Reading is streamed: :func:`read_cache` takes the file a chunk at a time and checks each
chunk's lines with NumPy, keeping only the names (packed, :class:`~kldiv.scales.PackedNames`)
and the bits (``array("I")``), so a cache of millions of entries reads at tens of MB/s in about
its own size of memory. A file with anything unusual (a bad or blank line, a duplicate name,
binary data, no header) is read again line by line, which names the problem.
"""

from __future__ import annotations

import logging
import os
import re
import struct
from array import array
from collections.abc import Iterable
from functools import partial
from pathlib import Path

import numpy as np

from ._io import atomic_write_text
from .defaults import (
    DEFAULT_ALGORITHM,
    DEFAULT_LEGACY_CUTOFF,
    DEFAULT_LEGACY_QUANTILE,
    DEFAULT_TRT_VERSION,
    TRT_MAJOR_RANGE,
)
from .errors import CacheFormatError, InputNotFoundError, NotAFileError, PresetError
from .scales import CacheHeader, CalibrationTable, PackedNames

__all__ = [
    "ALGORITHMS",
    "check_trt_version",
    "decode_cache_bytes",
    "format_cache",
    "header_for",
    "normalize_algorithm",
    "parse_cache",
    "parse_header",
    "read_cache",
    "trt_version_number",
    "write_cache",
]

logger = logging.getLogger(__name__)

#: Short algorithm names accepted by :func:`header_for` -> TensorRT's spelling in the header.
ALGORITHMS: dict[str, str] = {
    "entropy2": "EntropyCalibration2",
    "entropy": "EntropyCalibration",
    "minmax": "MinMaxCalibration",
}
_TRT_ALGORITHMS = {v.lower(): v for v in ALGORITHMS.values()}
_LEGACY_ALIASES = ("legacy", "legacycalibration", "legacycalibrator")


def normalize_algorithm(algorithm: str) -> str:
    """kldiv's name of a calibration algorithm: ``"entropy2"``, ``"entropy"``, ``"minmax"`` or
    ``"legacy"``.

    Where user-given algorithm names are read (options here, calibrators in trt_backend;
    :func:`parse_header` matches TensorRT's exact header spellings itself). Accepts kldiv's
    names, TensorRT's header spellings (``"EntropyCalibration2"``), with or without
    underscores, in any case.

    Raises
    ------
    ValueError
        For any other name, listing the valid ones.
    """
    key = str(algorithm).strip().lower().replace("_", "")
    if key in _LEGACY_ALIASES:
        return "legacy"
    for short, trt_name in ALGORITHMS.items():
        if key in (short, trt_name.lower()):
            return short
    raise ValueError(
        f"unknown calibration algorithm {algorithm!r}; use one of "
        f"{', '.join([*ALGORITHMS, 'legacy'])} (or TensorRT's {', '.join(ALGORITHMS.values())})"
    )

_TRT_HEADER = re.compile(r"TRT-([0-9]+)-([A-Za-z0-9_]+)")
_LEGACY_SPACED = re.compile(r"0 ([0-9a-fA-F]{1,16}) ([0-9a-fA-F]{1,16})")
_LEGACY_RUN_TOGETHER = re.compile(r"0([0-9a-fA-F]{16})([0-9a-fA-F]{16})")
_HEX = re.compile(r"[0-9a-fA-F]{1,8}")
# One well-formed entry line; the greedy name makes the split fall at the line's last ": ".
_ENTRY_LINE = re.compile(r"^(.+): ([0-9a-fA-F]{1,8})\r?$", re.MULTILINE)
_DECIMAL = re.compile(r"\s*[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?\s*")
_VERSION = re.compile(r"\s*v?([0-9]+)\.([0-9]+)(?:\.([0-9]+))?(?:\.[0-9]+)*\s*")

_HEADER_HINT = (
    "the first line must be a TensorRT header such as 'TRT-8601-EntropyCalibration2' or a "
    "legacy '0 <cutoff> <quantile>'; write one with kldiv.cachefile.header_for(...) or "
    "`kldiv cache convert FILE --to trt --trt-version X`"
)


# -- headers ----------------------------------------------------------------------------------
def trt_version_number(trt_version: str | int) -> int:
    """Return the number TensorRT writes in a cache header for a TensorRT version.

    Up to 9.x: ``major*1000 + minor*100 + patch``; from 10.0: ``major*10000 + minor*100 +
    patch`` (cache-format.md).

    Parameters
    ----------
    trt_version : str or int
        ``"8.6.1"``, ``"10.9"`` (patch 0), ``"8.6.1.6"`` (build ignored), or an int that is
        already a header number (returned as is).

    Returns
    -------
    int
        The header number, e.g. ``8601`` or ``100900``.

    Raises
    ------
    ValueError
        If the version cannot be encoded.

    Examples
    --------
    >>> trt_version_number("8.6.1"), trt_version_number("10.9"), trt_version_number("10.14.1")
    (8601, 100900, 101401)
    """
    if isinstance(trt_version, int) and not isinstance(trt_version, bool):
        if trt_version < 0:
            raise ValueError(f"TensorRT version number must be >= 0, got {trt_version}")
        return trt_version
    m = _VERSION.fullmatch(str(trt_version))
    if m is None:
        raise ValueError(
            f"not a TensorRT version: {trt_version!r}; write it like '8.6.1' or '10.9.0'"
        )
    major, minor, patch = int(m[1]), int(m[2]), int(m[3] or 0)
    if patch > 99 or minor > 99:
        raise ValueError(f"TensorRT version {trt_version!r} has a minor or patch above 99")
    if major >= 10:
        return major * 10000 + minor * 100 + patch
    if minor > 9:
        raise ValueError(
            f"TensorRT {trt_version!r}: before 10.0 the header number is "
            "major*1000+minor*100+patch, which cannot hold a minor above 9"
        )
    return major * 1000 + minor * 100 + patch


def check_trt_version(trt_version: str | int) -> int:
    """Check a TensorRT version given by a user and return its cache header number.

    A version string must be one whose header numbering kldiv knows: major
    ``TRT_MAJOR_RANGE`` (5 to 10, the span of the real caches it was checked on). For another
    TensorRT, give the header number that TensorRT writes (the ``N`` of ``TRT-N-...`` in a
    cache it made) as a number: ``110000`` or ``"110000"``; it is written as is.

    Raises
    ------
    PresetError
        (a ``ValueError``) for text that is not a version, or a major version outside the range;
        the message says what to pass instead.

    Examples
    --------
    >>> check_trt_version("8.6.1"), check_trt_version("110000")
    (8601, 110000)
    """
    text = str(trt_version).strip()
    if isinstance(trt_version, int) and not isinstance(trt_version, bool) or text.isdigit():
        number = int(text)
        if number < 1000:
            raise PresetError(
                f"TensorRT header number {number} is too small (TensorRT 8.6.1 writes 8601, "
                "10.9.0 writes 100900); write the version like '8.6.1'"
            )
        return number
    lo, hi = TRT_MAJOR_RANGE
    m = _VERSION.fullmatch(text)
    if m is None:
        raise PresetError(
            f"not a TensorRT version: {trt_version!r}; write it like '8.6.1' or '10.9.0' "
            f"(TensorRT {lo} to {hi})"
        )
    if not lo <= int(m[1]) <= hi:
        raise PresetError(
            f"TensorRT {text}: kldiv writes cache headers for TensorRT {lo}.x to {hi}.x; for "
            "another version give the header number that TensorRT writes (the N of its "
            "caches' first line TRT-N-...), e.g. --trt-version 110000"
        )
    try:
        return trt_version_number(text)
    except ValueError as exc:
        raise PresetError(str(exc)) from None


def _double_hex(x: float) -> str:
    return format(struct.unpack(">Q", struct.pack(">d", float(x)))[0], "x")


def _hex_double(text: str) -> float:
    return float(struct.unpack(">d", int(text, 16).to_bytes(8, "big"))[0])


def header_for(
    trt_version: str | int = DEFAULT_TRT_VERSION,
    algorithm: str = DEFAULT_ALGORITHM,
    *,
    cutoff: float = DEFAULT_LEGACY_CUTOFF,
    quantile: float = DEFAULT_LEGACY_QUANTILE,
) -> CacheHeader:
    """Return the cache header a given TensorRT version writes for a calibration algorithm.

    TensorRT only uses a cache whose header matches its own version and the calibrator's
    algorithm, so a cache handed to TensorRT needs the header of the TensorRT that reads it.

    Parameters
    ----------
    trt_version : str or int, optional
        TensorRT version (``"8.6.1"``, ``"10.9.0"``, ``"10.9"``) or a header number.
    algorithm : str, optional
        ``"entropy2"``, ``"entropy"``, ``"minmax"`` or ``"legacy"``; TensorRT's spellings
        (``"EntropyCalibration2"``, ``"MinMaxCalibration"`` ...) are accepted too.
    cutoff, quantile : float, optional
        The legacy calibrator's regression cutoff and quantile (``algorithm="legacy"`` only).

    Returns
    -------
    CacheHeader
        With ``text`` ready to write and the parsed fields filled.

    Notes
    -----
    The legacy header is written spaced (``0 3ff0000000000000 3fefffeb074a771d``, as the TRT 7.2
    MLPerf file) for TensorRT 7 and later, and run together (as the TensorRT 6.0.1 release's
    ``LegacyCalibrationTable``) before 7; this split is inferred from those two real files.

    Examples
    --------
    >>> header_for("10.9.0", "entropy2").text
    'TRT-100900-EntropyCalibration2'
    >>> header_for("8.6.1", "MinMaxCalibration").text
    'TRT-8601-MinMaxCalibration'
    """
    number = trt_version_number(trt_version)
    short = normalize_algorithm(algorithm)
    if short == "legacy":
        major = number // 10000 if number >= 100000 else number // 1000
        sep = " " if major >= 7 else ""
        text = sep.join(["0", _double_hex(cutoff), _double_hex(quantile)])
        if sep == "" and len(text) != 33:
            text = " ".join(["0", _double_hex(cutoff), _double_hex(quantile)])
        return CacheHeader(
            text=text, kind="legacy", version_number=None, cutoff=float(cutoff),
            quantile=float(quantile),
        )
    name = ALGORITHMS[short]
    return CacheHeader(
        text=f"TRT-{number}-{name}", kind="trt", version_number=number, algorithm=name
    )


def parse_header(
    line: str, *, path: str | None = None, line_number: int = 1, allow_unknown: bool = False
) -> CacheHeader:
    """Parse a cache's first line (without its line ending) into a :class:`CacheHeader`.

    Parameters
    ----------
    line : str
        The header line.
    path : str, optional
        File name for error messages.
    line_number : int, optional
        Line number for error messages.
    allow_unknown : bool, optional
        Return ``kind="unknown"`` for a line in none of the known forms instead of raising.

    Raises
    ------
    CacheFormatError
        If the line is not a known header and ``allow_unknown`` is false.
    """
    m = _TRT_HEADER.fullmatch(line)
    if m is not None:
        algorithm = _TRT_ALGORITHMS.get(m[2].lower())
        if algorithm == m[2]:
            return CacheHeader(
                text=line, kind="trt", version_number=int(m[1]), algorithm=algorithm
            )
        if not allow_unknown:
            raise CacheFormatError(
                f"unknown calibration algorithm {m[2]!r} in header {line!r}",
                path=path,
                line=line_number,
                hint=f"TensorRT writes one of {', '.join(ALGORITHMS.values())} "
                "(exact spelling); pass allow_unknown_header=True to read the entries anyway",
            )
    m = _LEGACY_SPACED.fullmatch(line) or _LEGACY_RUN_TOGETHER.fullmatch(line)
    if m is not None:
        cutoff, quantile = m.groups()[-2:]
        return CacheHeader(
            text=line, kind="legacy", cutoff=_hex_double(cutoff), quantile=_hex_double(quantile)
        )
    if allow_unknown:
        return CacheHeader(text=line, kind="unknown")
    raise CacheFormatError(
        f"unknown cache header {_shorten(line)!r}", path=path, line=line_number,
        hint=_HEADER_HINT + "; or pass allow_unknown_header=True to keep it as it is",
    )


# -- parsing ----------------------------------------------------------------------------------
def _shorten(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def decode_cache_bytes(data: bytes, *, path: str | None = None) -> str:
    """Decode a cache file's bytes as UTF-8, or raise :class:`CacheFormatError` naming the line.

    Parameters
    ----------
    data : bytes
        The file contents.
    path : str, optional
        The file name, for the message.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise CacheFormatError(
            f"not a text file: byte {data[exc.start]:#04x} at offset {exc.start} is not UTF-8",
            path=path,
            line=line,
            hint="a calibration cache is the text file TensorRT writes; check that this is not "
            "an engine, a plan or an ONNX Runtime calibration.flatbuffers file",
        ) from None


def _looks_like(line: str) -> str:
    """A hint naming the format a line that is not a cache entry seems to come from."""
    _name, sep, value = line.rpartition(":")
    if sep and _DECIMAL.fullmatch(value):
        return (
            "this looks like dynamic-range text (name:amax); read it with "
            "kldiv.exports.read_dynamic_range_text"
        )
    if line.lstrip().startswith(("{", "[")):
        return "this looks like JSON; read NVDLA or ONNX Runtime JSON with kldiv.exports"
    _name, sep, value = line.rpartition(" ")
    if sep and _DECIMAL.fullmatch(value):
        return (
            "this looks like ONNX Runtime's text calibration.cache (name amax); read it with "
            "kldiv.exports.read_ort_text"
        )
    return "each line after the header must be '<name>: <hex float32 bits>', e.g. 'conv1: 3c88edfc'"


def _checked_text(
    text: str | bytes, path: str | None, *, empty_hint: str, binary_hint: str,
    warn_bom: bool = False,
) -> str:
    """A text file's contents, decoded, without a byte-order mark; empty or binary files
    raise :class:`CacheFormatError` (with ``empty_hint`` / ``binary_hint``, naming the line of
    the first NUL)."""
    if isinstance(text, (bytes, bytearray)):
        text = decode_cache_bytes(bytes(text), path=path)
    if text.startswith("\ufeff"):
        if warn_bom:
            logger.warning("%s: skipping a UTF-8 byte-order mark", path or "cache")
        text = text[1:]
    if not text.strip():
        raise CacheFormatError("the file is empty", path=path, line=1, hint=empty_hint)
    nul = text.find("\x00")
    if nul >= 0:
        raise CacheFormatError(
            "binary data (a NUL character) in the file", path=path,
            line=text.count("\n", 0, nul) + 1, hint=binary_hint,
        )
    return text


def parse_cache(
    text: str | bytes, *, path: str | None = None, allow_unknown_header: bool = False
) -> CalibrationTable:
    """Parse the text of a TensorRT calibration cache.

    Parameters
    ----------
    text : str or bytes
        The whole file. CRLF line endings, a missing final newline, a UTF-8 BOM and blank
        lines are accepted (such files do not format back byte for byte: :func:`format_cache`
        writes what TensorRT writes).
    path : str, optional
        File name, used in error messages and recorded in ``provenance["source"]``.
    allow_unknown_header : bool, optional
        Keep a first line in none of the known header forms as ``CacheHeader(kind="unknown")``
        (or, when the first line is already an entry, read the file as having no header)
        instead of raising.

    Returns
    -------
    CalibrationTable
        Entries in file order with the exact float32 bit patterns; ``header`` filled.

    Raises
    ------
    CacheFormatError
        On an empty file, binary data, an unknown header, a line that is not
        ``<name>: <hex>``, an empty name or a duplicate name. The error names the line.

    Examples
    --------
    >>> t = parse_cache("TRT-7000-EntropyCalibration2\\nprob: 3c010a14\\n")
    >>> t.header.trt_version, t.hex("prob"), round(t.amax("prob"), 6)
    ('7.0.0', '3c010a14', 1.000244)
    """
    if not isinstance(text, (str, bytes, bytearray)):
        raise TypeError(f"parse_cache takes the file's text (str), got {type(text).__name__}")
    if isinstance(text, str):
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: the line-by-line reader names the line
            data = None
    else:
        data = bytes(text)
    if data is not None:
        table = _parse_chunks([data], path, allow_unknown_header)
        if table is not None:
            return table
    return _parse_text(text, path, allow_unknown_header)


def _parse_text(
    text: str | bytes, path: str | None, allow_unknown_header: bool
) -> CalibrationTable:
    """The whole text at once, line by line: names the first bad line of a damaged file (and
    reads the rarer forms: blank lines, a first line that is already an entry)."""
    text = _checked_text(
        text, path,
        empty_hint="TensorRT writes the cache after calibrating; recalibrate or check the path",
        binary_hint="a calibration cache is the text file TensorRT writes; check that this is "
        "not an engine or a flatbuffers file",
        warn_bom=True,
    )
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    crlf = False
    first = lines[0]
    if first.endswith("\r"):
        first, crlf = first[:-1], True
    first_entry = 2
    header = None
    try:
        header = parse_header(first, path=path, line_number=1)
    except CacheFormatError:
        if _entry_like(first):
            if not allow_unknown_header:
                raise CacheFormatError(
                    "the header line is missing: line 1 is already an entry", path=path, line=1,
                    hint=_HEADER_HINT,
                ) from None
            first_entry = 1
        elif allow_unknown_header:
            header = CacheHeader(text=first, kind="unknown")
        else:
            raise
    provenance: dict[str, object] = {"format": "tensorrt-cache"}
    if path is not None:
        provenance["source"] = str(path)
    body = lines[first_entry - 1 :]
    bits, crlf_body = _parse_body(body, first_entry, path)
    if crlf or crlf_body:
        provenance["line_endings"] = "crlf"
    return CalibrationTable._from_validated_columns(
        list(bits), array("I", bits.values()), header=header, provenance=provenance
    )


#: Bytes of a cache read at a time (the reader holds one chunk and the table, never the file).
_CHUNK = 4 << 20
_HEX_VALUE = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_VALUE[_c] = _i
for _i, _c in enumerate(b"ABCDEF", start=10):
    _HEX_VALUE[_c] = _i


def _parse_chunks(
    chunks: Iterable[bytes], path: str | None, allow_unknown_header: bool
) -> CalibrationTable | None:
    """The fast reader: a cache whose every line after the header is a well formed entry,
    read a chunk at a time with NumPy (no Python object per entry but its name).

    Returns None for anything unusual (a bad or blank line, a duplicate name, binary data, no
    header ...): :func:`_parse_text` then reads the whole text line by line and names the
    problem, or reads the rarer forms.
    """
    it = iter(chunks)
    head = b""
    for chunk in it:
        head += chunk
        if b"\n" in head:
            break
    bom = head.startswith(b"\xef\xbb\xbf")
    if bom:
        head = head[3:]
    first, newline, rest = head.partition(b"\n")
    if not newline or b"\x00" in first:
        return None
    try:
        first_line = first.decode("utf-8")
    except UnicodeDecodeError:
        return None
    crlf = first_line.endswith("\r")
    if crlf:
        first_line = first_line[:-1]
    try:
        header = parse_header(first_line, path=path, line_number=1)
    except CacheFormatError:
        if not allow_unknown_header or _entry_like(first_line) or not first_line.strip():
            return None
        header = CacheHeader(text=first_line, kind="unknown")
    names = _Packer()
    bits = array("I")
    hashes: list[np.ndarray] = []
    state = {"crlf": crlf}
    carry = rest
    for chunk in it:
        block = carry + chunk
        cut = block.rfind(b"\n") + 1
        carry = block[cut:]
        if cut and not _parse_block(block[:cut], names, bits, hashes, state):
            return None
    if carry and not carry.endswith(b"\n"):
        carry += b"\n"  # the last line has no line break
    if carry and not _parse_block(carry, names, bits, hashes, state):
        return None
    if hashes:
        h = np.concatenate(hashes)
        hashes.clear()
        h.sort()
        duplicate = bool(np.any(h[1:] == h[:-1]))
        del h
        if duplicate:  # a duplicate name (or a hash collision): read line by line
            return None
    provenance: dict[str, object] = {"format": "tensorrt-cache"}
    if path is not None:
        provenance["source"] = str(path)
    if state["crlf"]:
        provenance["line_endings"] = "crlf"
    if bom:  # said here, once: a file the line reader takes over warns there
        logger.warning("%s: skipping a UTF-8 byte-order mark", path or "cache")
    return CalibrationTable._from_validated_columns(
        names.packed(), bits, header=header, provenance=provenance
    )


class _Packer:
    """Collects names as :class:`~kldiv.scales.PackedNames` a block at a time."""

    def __init__(self) -> None:
        self.blob = bytearray()
        self.lengths: list[np.ndarray] = []

    def add(self, blob: bytes, lengths: np.ndarray) -> None:
        self.blob += blob
        self.lengths.append(lengths)

    def packed(self) -> PackedNames:
        offsets = np.zeros(sum(x.size for x in self.lengths) + 1, dtype=np.int64)
        if self.lengths:  # in place: no temporary the size of the table
            np.concatenate(self.lengths, out=offsets[1:], casting="unsafe")
            self.lengths.clear()
            offsets[1:] += 1  # each name's LF
            np.cumsum(offsets, out=offsets)
        return PackedNames(self.blob, offsets)


def _parse_block(
    block: bytes, names: _Packer, bits: array[int], hashes: list[np.ndarray],
    state: dict[str, bool],
) -> bool:
    """Append the entries of ``block`` (whole lines, ending with LF); False if any line is not
    ``<name>: <1-8 hex digits>`` (CRLF allowed), or the block is not text."""
    if b"\x00" in block:
        return False
    a = np.frombuffer(block, dtype=np.uint8)
    nl = np.flatnonzero(a == 10)
    starts = np.empty_like(nl)
    starts[0] = 0
    starts[1:] = nl[:-1] + 1
    ends = nl.copy()  # line end without the CR of a CRLF
    has_cr = nl > starts
    has_cr[has_cr] = a[nl[has_cr] - 1] == 13
    ends[has_cr] -= 1
    n_cr = int(np.count_nonzero(has_cr))
    if block.count(b"\r") != n_cr:
        return False  # a CR inside a line
    if n_cr:
        state["crlf"] = True
    # The line's last ": " is followed by 1-8 hex digits: it lies within the line's last ten
    # bytes, and the nearest to the end there is the last one.
    if np.any(ends - starts < 4):  # shorter than "x: 0" (a blank line, say)
        return False
    sep = np.full(nl.size, -1, dtype=nl.dtype)
    for width in range(1, 9):
        at = np.maximum(ends - width - 2, 0)
        hit = (sep < 0) & (a[at] == 58) & (a[at + 1] == 32)
        sep[hit] = at[hit]
    width = ends - sep - 2  # hex digits
    if np.any(sep <= starts):  # no ": " near the end (sep -1), or an empty name
        return False
    values = np.zeros(nl.size, dtype=np.uint32)
    for j in range(8):
        more = width > j
        if not more.any():
            break
        digit = _HEX_VALUE[a[np.minimum(sep + 2 + j, a.size - 1)]]
        if np.any(digit[more] == 255):
            return False
        values = np.where(more, (values << np.uint32(4)) | digit, values)
    try:
        block.decode("utf-8")  # names must be text (the rest was checked to be ASCII)
    except UnicodeDecodeError:
        return False
    # keep each name and its LF: drop the bytes [sep, nl) of every line (": <hex>" and CR)
    keep = np.ones(a.size, dtype=bool)
    for j in range(11):
        pos = sep + j
        keep[pos[pos < nl]] = False
    packed = a[keep].tobytes()
    parts = packed.split(b"\n")
    parts.pop()
    hashes.append(np.fromiter(map(hash, parts), dtype=np.int64, count=len(parts)))
    names.add(packed, (sep - starts).astype(np.int32))
    bits.frombytes(values.astype("=u4", copy=False).tobytes())
    return True


def _parse_body(
    body: list[str], first_entry: int, path: str | None
) -> tuple[dict[str, int], bool]:
    """Line by line, naming the first bad line."""
    crlf = False
    bits: dict[str, int] = {}
    where: dict[str, int] = {}
    hexmatch = _HEX.fullmatch
    for lineno, line in enumerate(body, start=first_entry):
        if line.endswith("\r"):
            line, crlf = line[:-1], True
        if not line or line.isspace():
            logger.debug("%s:%d: skipping a blank line", path or "cache", lineno)
            continue
        name, sep, value = line.rpartition(": ")
        if not sep or hexmatch(value) is None or not name:
            _raise_entry_error(line, lineno, path, name, sep, value)
        if "\r" in name:
            raise CacheFormatError(
                "a carriage return inside the line", path=path, line=lineno,
                hint="line endings must be LF or CRLF; a lone CR splits no line",
            )
        if name in bits:
            raise CacheFormatError(
                f"duplicate tensor name {_shorten(name)!r} (first on line {where[name]})",
                path=path, line=lineno,
                hint="a cache holds one scale per tensor; delete one of the two lines",
            )
        bits[name] = int(value, 16)
        where[name] = lineno
    return bits, crlf


def _entry_like(line: str) -> bool:
    name, sep, value = line.rstrip("\r").rpartition(": ")
    return bool(sep and name and _HEX.fullmatch(value))


def _raise_entry_error(
    line: str, lineno: int, path: str | None, name: str, sep: str, value: str
) -> None:
    if not sep:
        raise CacheFormatError(
            f"no ': ' separating a name from a value in {_shorten(line)!r}", path=path,
            line=lineno, hint=_looks_like(line),
        )
    if not name:
        raise CacheFormatError(
            f"empty tensor name in {_shorten(line)!r}", path=path, line=lineno,
            hint="each entry must be '<name>: <hex>' with a non-empty name",
        )
    if not value:
        raise CacheFormatError(
            f"tensor {_shorten(name)!r} has no value (truncated line?)", path=path, line=lineno,
            hint="the value is the scale's float32 bits in hex, e.g. '3c010a14'",
        )
    raise CacheFormatError(
        f"value {_shorten(value, 20)!r} of tensor {_shorten(name)!r} is not 1 to 8 hex digits",
        path=path, line=lineno,
        hint="the value is the scale's float32 bits in hex, e.g. '3c010a14' (zero is '0'); "
        + _looks_like(line),
    )


# -- formatting -------------------------------------------------------------------------------
def _as_header(header: CacheHeader | str) -> CacheHeader:
    if isinstance(header, CacheHeader):
        return header
    return parse_header(str(header), allow_unknown=True)


def format_cache(table: CalibrationTable, *, header: CacheHeader | str | None = None) -> str:
    """Return the text TensorRT would write for ``table``.

    Parameters
    ----------
    table : CalibrationTable
        The scales (exact float32 bit patterns), in order.
    header : CacheHeader or str, optional
        The header to write; default ``table.header``, else :func:`header_for` with the
        defaults (``DEFAULT_TRT_VERSION``, ``DEFAULT_ALGORITHM``).

    Returns
    -------
    str
        Header line, one ``name: hex`` line per tensor, LF line endings, final newline.

    Raises
    ------
    CacheFormatError
        If a name cannot be written (empty, or containing NUL or a line break).
    """
    if header is None:
        header = table.header
    if header is None:
        header = header_for()
        logger.info("no header given; writing %s", header.text)
    head = _as_header(header)
    if "\n" in head.text or "\r" in head.text:
        raise CacheFormatError(
            f"header {head.text!r} contains a line break", hint="use kldiv.cachefile.header_for"
        )
    parts = [head.text, "\n"]
    for name in table:
        if not name or "\x00" in name:
            raise CacheFormatError(
                f"tensor name {name!r} cannot be written to a cache",
                hint="rename the tensor: names must be non-empty and hold no NUL character",
            )
        parts.append(f"{name}: {table.bits(name):x}\n")
    return "".join(parts)


# -- files ------------------------------------------------------------------------------------
def read_cache(
    path: str | os.PathLike[str], *, allow_unknown_header: bool = False
) -> CalibrationTable:
    """Read a TensorRT calibration cache file (see :func:`parse_cache`).

    Raises
    ------
    CacheFormatError
        If the file is not a readable cache; the message names the file and the line.
    InputNotFoundError, NotAFileError
        If there is no such file, or the path is a folder (``FileNotFoundError`` /
        ``IsADirectoryError`` subclasses).
    """
    p = Path(path)
    read_input_bytes(p, what="calibration cache", probe=True)
    with open(p, "rb") as fh:
        table = _parse_chunks(iter(partial(fh.read, _CHUNK), b""), str(p), allow_unknown_header)
    if table is not None:
        return table
    return _parse_text(p.read_bytes(), str(p), allow_unknown_header)


def read_input_bytes(
    path: str | os.PathLike[str], *, what: str = "file", probe: bool = False
) -> bytes:
    """The bytes of an input file, with kldiv's errors for a missing file or a folder
    (``probe``: only check that it can be opened, return ``b""``)."""
    p = Path(path)
    if p.is_dir():
        raise NotAFileError(
            f"{p} is a folder, not a {what}; give the file itself", path=str(p)
        )
    try:
        if probe:
            with open(p, "rb"):
                return b""
        return p.read_bytes()
    except FileNotFoundError:
        raise InputNotFoundError(
            f"{p}: no such {what}; check the path", path=str(p)
        ) from None


def write_cache(
    table: CalibrationTable,
    path: str | os.PathLike[str],
    *,
    header: CacheHeader | str | None = None,
    force: bool = False,
) -> Path:
    """Write ``table`` as a TensorRT cache, atomically (temporary file, then rename).

    Parameters
    ----------
    table : CalibrationTable
        The scales.
    path : path-like
        Output file.
    header : CacheHeader or str, optional
        See :func:`format_cache`. Use :func:`header_for` to target a TensorRT version.
    force : bool, optional
        Overwrite an existing file.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    OutputExistsError
        If ``path`` exists and ``force`` is false.
    """
    return atomic_write_text(path, format_cache(table, header=header), force=force)
