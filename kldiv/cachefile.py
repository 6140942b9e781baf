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
"""

from __future__ import annotations

import logging
import os
import re
import struct
from pathlib import Path

from ._io import atomic_write_text
from .defaults import (
    DEFAULT_ALGORITHM,
    DEFAULT_LEGACY_CUTOFF,
    DEFAULT_LEGACY_QUANTILE,
    DEFAULT_TRT_VERSION,
)
from .errors import CacheFormatError
from .scales import CacheHeader, CalibrationTable

__all__ = [
    "ALGORITHMS",
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
    bits = _parse_body_fast(body)
    if bits is None:
        bits, crlf_body = _parse_body(body, first_entry, path)
    else:
        crlf_body = bool(body) and body[0].endswith("\r")
    if crlf or crlf_body:
        provenance["line_endings"] = "crlf"
    # The values were checked to be 1-8 hex digits (< 2**32) and the names to hold no line
    # break, which is all CalibrationTable.set_bits validates; adopting the dict directly makes
    # parsing 10,000 entries several times faster (benchmarks/cache_io.py).
    return CalibrationTable._from_validated_bits(bits, header=header, provenance=provenance)


def _parse_body_fast(body: list[str]) -> dict[str, int] | None:
    """All entries at once when every line is well formed and names are unique; else None."""
    if not body:
        return {}
    text = "\n".join(body)
    pairs = _ENTRY_LINE.findall(text)
    if len(pairs) != len(body):
        return None
    bits = {name: int(value, 16) for name, value in pairs}
    if len(bits) != len(pairs) or any("\r" in name for name in bits):
        return None
    return bits


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
    FileNotFoundError
        If there is no such file.
    """
    p = Path(path)
    data = p.read_bytes()
    return parse_cache(data, path=str(p), allow_unknown_header=allow_unknown_header)


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
