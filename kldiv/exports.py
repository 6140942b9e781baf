"""A calibration table in the formats around TensorRT, each with its reader where it has one.

========================  =============================  ====================================
format                    writer                         reader
========================  =============================  ====================================
TensorRT cache            :func:`kldiv.cachefile.format_cache`  :func:`kldiv.cachefile.parse_cache`
dynamic-range text        :func:`to_dynamic_range_text`  :func:`read_dynamic_range_text`
NVDLA calibration JSON    :func:`to_nvdla_json`          :func:`read_nvdla_json`
ONNX Runtime TRT-EP       :func:`write_ort_tables`,      :func:`read_ort_flatbuffers`,
                          :func:`to_ort_json`,           :func:`read_ort_json`,
                          :func:`to_ort_text`            :func:`read_ort_text`
CSV / JSON + provenance   :func:`to_csv`, :func:`to_json`  :func:`read_csv`, :func:`read_json`
Q/DQ ONNX                 :func:`to_qdq_onnx` (kldiv.qdq)
========================  =============================  ====================================

:func:`read_table` recognizes any of them from the file's content; :func:`write_table`
writes any of them by name (:data:`FORMATS`), atomically.

Every export goes through the table's scales (``amax = scale * 127`` via
:func:`kldiv.scales.scale_to_amax`); readers of amax formats rebuild the scale with
:func:`kldiv.scales.amax_to_scale`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._io import atomic_write_bytes, atomic_write_text, check_writable
from .cachefile import (
    _checked_text,
    decode_cache_bytes,
    format_cache,
    parse_cache,
    parse_header,
    read_cache,
    read_input_bytes,
)
from .errors import CacheFormatError, NotAFileError
from .scales import CalibrationTable

if TYPE_CHECKING:  # pragma: no cover
    from .qdq import to_qdq_onnx

__all__ = [
    "FORMATS",
    "detect_format",
    "format_table",
    "read_csv",
    "read_dynamic_range_text",
    "read_json",
    "read_nvdla_json",
    "read_ort_flatbuffers",
    "read_ort_json",
    "read_ort_text",
    "read_table",
    "to_csv",
    "to_dynamic_range_text",
    "to_json",
    "to_nvdla_json",
    "to_ort_json",
    "to_ort_text",
    "to_qdq_onnx",
    "usable_only",
    "write_ort_tables",
    "write_table",
]

logger = logging.getLogger(__name__)

#: Format names understood by :func:`read_table` / :func:`write_table` (and the CLI's --to).
FORMATS: tuple[str, ...] = (
    "trt",
    "dynamic-range",
    "nvdla-json",
    "ort",
    "ort-json",
    "ort-text",
    "ort-flatbuffers",
    "csv",
    "json",
)

_ORT_HINT = 'install ONNX Runtime and flatbuffers: pip install "kldiv[onnx]" flatbuffers'
_DECIMAL = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?(?:inf|nan)",
                      re.IGNORECASE)


def __getattr__(name: str) -> Any:
    # to_qdq_onnx lives in kldiv.qdq (imports onnx); load it only when asked for.
    if name == "to_qdq_onnx":
        from .qdq import to_qdq_onnx as func

        globals()[name] = func
        return func
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _amax_text(amax: float) -> str:
    """Shortest decimal that reads back as the same float64 (``repr``)."""
    return repr(float(amax))


def _decimal(value: str, *, path: str | None, line: int, what: str) -> float:
    v = value.strip()
    if not _DECIMAL.fullmatch(v):
        raise CacheFormatError(
            f"{what} {value!r} is not a decimal number", path=path, line=line,
            hint="each line must be '<name>:<amax>' with a decimal amax such as 5.43116",
        )
    return float(v)


def _text_lines(text: str | bytes, path: str | None) -> list[str]:
    text = _checked_text(text, path, empty_hint="nothing to read; check the path",
                        binary_hint="this reader takes a text file")
    lines = text.split("\n")
    return [ln.removesuffix("\r") for ln in lines]


def _table_from_pairs(
    pairs: Iterable[tuple[int, str, float]], *, path: str | None, fmt: str
) -> CalibrationTable:
    table = CalibrationTable(provenance={"format": fmt, **({"source": path} if path else {})})
    where: dict[str, int] = {}
    for lineno, name, amax in pairs:
        if not name:
            raise CacheFormatError("empty tensor name", path=path, line=lineno,
                                   hint="every entry needs a tensor name")
        if name in where:
            raise CacheFormatError(
                f"duplicate tensor name {name!r} (first on line {where[name]})", path=path,
                line=lineno, hint="keep one value per tensor",
            )
        where[name] = lineno
        table.set_amax(name, amax)
    return table


# -- dynamic-range text (sampleINT8API) ---------------------------------------------------------
def usable_only(table: CalibrationTable, fmt: str) -> CalibrationTable:
    """``table`` without the scales TensorRT cannot use (NaN, -Inf, negative).

    A warning names them; ``table`` itself is returned when there are none, else
    :meth:`CalibrationTable.without` them (``provenance["excluded"]`` lists them).

    The amax formats (dynamic range, NVDLA and ONNX Runtime tables) would carry such a scale as
    a bare ``NaN`` (not JSON) or as ``lowest > highest``; their writers leave it out, and the
    reader of the file then reports the tensor as missing instead of using a wrong range.
    """
    bad = table.unusable()
    if not bad:
        return table
    names = ", ".join(f"{n} ({why})" for n, why in list(bad.items())[:5])
    logger.warning(
        "%d scale(s) TensorRT cannot use are left out of the %s output: %s%s", len(bad), fmt,
        names, ", ..." if len(bad) > 5 else "",
    )
    return table.without(bad)


def to_dynamic_range_text(table: CalibrationTable, *, colon_replacement: str | None = None) -> str:
    """Return ``name:amax`` lines as TensorRT's sampleINT8API reads them.

    Parameters
    ----------
    table : CalibrationTable
        The scales; each line holds ``scale * 127`` in the shortest decimal that reads back.
    colon_replacement : str, optional
        sampleINT8API splits each line at its *first* ``:``, so a name containing ``:`` would be
        misread. By default such names raise; give a replacement (``"_"``) to rename them.

    Scales TensorRT cannot use (NaN, -Inf, negative) are left out, with a warning
    (:func:`usable_only`).

    Raises
    ------
    CacheFormatError
        If a name contains ``:`` and no ``colon_replacement`` was given.
    """
    table = usable_only(table, "dynamic-range")
    out = []
    for name in table:
        written = name
        if ":" in name:
            if colon_replacement is None:
                raise CacheFormatError(
                    f"tensor name {name!r} contains ':', which sampleINT8API's reader splits on",
                    hint="pass colon_replacement='_' (CLI: --colon-replacement _) and rename the "
                    "tensors the same way in the network",
                )
            written = name.replace(":", colon_replacement)
        out.append(f"{written}:{_amax_text(table.amax(name))}\n")
    return "".join(out)


def read_dynamic_range_text(text: str | bytes, *, path: str | None = None) -> CalibrationTable:
    """Read ``name:amax`` dynamic-range text (no header); the scale is ``amax_to_scale(amax)``.

    Lines split at their *last* ``:`` (the value never holds one); blank lines are skipped.
    """
    return _read_name_amax_lines(text, path=path, sep=":", fmt="dynamic-range")


def _read_name_amax_lines(
    text: str | bytes, *, path: str | None, sep: str, fmt: str
) -> CalibrationTable:
    """``<name><sep><decimal amax>`` lines, split at the last ``sep``; blank lines skipped."""
    def pairs() -> Iterable[tuple[int, str, float]]:
        for i, line in enumerate(_text_lines(text, path), start=1):
            if not line.strip():
                continue
            name, found, value = line.rpartition(sep)
            if not found:
                raise CacheFormatError(f"no {sep!r} in {line[:60]!r}", path=path, line=i,
                                       hint=f"each line must be '<name>{sep}<amax>'")
            yield i, name, _decimal(value, path=path, line=i, what="amax")

    return _table_from_pairs(pairs(), path=path, fmt=fmt)


# -- NVDLA calibration JSON (nvdla/sw umd/utils/calibdata/calib_txt_to_json.py) -----------------
def to_nvdla_json(table: CalibrationTable) -> str:
    """Return the NVDLA calibration JSON of ``table``, as nvdla/sw's ``calib_txt_to_json.py``.

    Each tensor maps to ``{"scale": float32 scale, "min": 0, "max": 0, "offset": 0}`` in table
    order, printed the way that Python-2 script printed it (``indent=4``, ``", "`` item
    separator) plus the final newline of the file committed to nvdla/sw, so the output equals
    nvdla/sw's own conversion byte for byte.
    Unlike that script, names containing ``:`` are kept (it silently drops them). Scales
    TensorRT cannot use are left out, with a warning (:func:`usable_only`).
    """
    table = usable_only(table, "nvdla-json")
    root = {
        name: {"scale": float(table[name]), "min": 0, "max": 0, "offset": 0} for name in table
    }
    return json.dumps(root, indent=4, separators=(", ", ": ")) + "\n"


def _load_json(text: str | bytes, path: str | None) -> Any:
    if isinstance(text, (bytes, bytearray)):
        text = decode_cache_bytes(bytes(text), path=path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CacheFormatError(f"invalid JSON: {exc.msg}", path=path, line=exc.lineno,
                               hint="check the file is complete JSON") from None


def _json_line(text: str | bytes, key: str) -> int | None:
    s = text.decode("utf-8", "replace") if isinstance(text, (bytes, bytearray)) else text
    at = s.find(json.dumps(key))
    return s.count("\n", 0, at) + 1 if at >= 0 else None


def read_nvdla_json(text: str | bytes, *, path: str | None = None) -> CalibrationTable:
    """Read NVDLA calibration JSON; each ``scale`` becomes the exact float32 scale."""
    data = _load_json(text, path)
    if not isinstance(data, dict):
        raise CacheFormatError("NVDLA calibration JSON must be an object keyed by tensor name",
                               path=path, line=1, hint="is this an ONNX Runtime or kldiv JSON?")
    table = CalibrationTable(provenance={"format": "nvdla-json",
                                         **({"source": path} if path else {})})
    for name, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("scale"), (int, float)):
            raise CacheFormatError(
                f"entry {name!r} has no numeric 'scale'", path=path, line=_json_line(text, name),
                hint='each value must look like {"scale": 0.0123, "min": 0, "max": 0, "offset": 0}',
            )
        table[name] = np.float32(entry["scale"])
    return table


# -- ONNX Runtime TensorRT-EP tables ----------------------------------------------------------
def _ort_amax(table: CalibrationTable, name: str) -> np.float32:
    """The float32 amax ONNX Runtime stores (TensorData holds float32 arrays)."""
    with np.errstate(over="ignore"):
        amax: np.float32 = np.float32(table.amax(name))
    return amax


def to_ort_text(table: CalibrationTable) -> str:
    """ONNX Runtime's *text* ``calibration.cache``: ``name amax`` lines sorted by name.

    Same bytes as ``onnxruntime.quantization.quant_utils.write_calibration_table`` writes for
    a symmetric range ``[-amax, amax]``. Not a TensorRT cache, despite the file name.
    Scales TensorRT cannot use are left out, with a warning (:func:`usable_only`).
    """
    table = usable_only(table, "ort-text")
    return "".join(f"{n} {float(_ort_amax(table, n))!r}\n" for n in sorted(table))


def read_ort_text(text: str | bytes, *, path: str | None = None) -> CalibrationTable:
    """Read ONNX Runtime's text ``calibration.cache`` (``name amax``; split at the last space)."""
    return _read_name_amax_lines(text, path=path, sep=" ", fmt="ort-text")


def to_ort_json(table: CalibrationTable) -> str:
    """ONNX Runtime's ``calibration.json``: ``{name: {"lowest": -amax, "highest": amax}}``.

    The same bytes as ONNX Runtime's writer produces from ``TensorData`` holding float32
    0-d arrays (each value ``{"data": x, "dtype": "float32", "CLS": "numpy.array"}``), in table
    order. Scales TensorRT cannot use are left out, with a warning (:func:`usable_only`).
    """
    table = usable_only(table, "ort-json")

    def num(x: np.float32) -> dict[str, Any]:
        return {"data": float(x), "dtype": "float32", "CLS": "numpy.array"}

    root = {}
    for n in table:
        a = _ort_amax(table, n)
        root[n] = {"lowest": num(-a), "highest": num(a), "CLS": "TensorData"}
    return json.dumps(root)


def _ort_value(v: Any) -> float:
    if isinstance(v, dict) and "data" in v:
        v = v["data"]
    if isinstance(v, list):
        v = np.max(np.asarray(v, dtype=np.float64)) if v else 0.0
    if isinstance(v, str):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    raise TypeError(type(v).__name__)


def read_ort_json(text: str | bytes, *, path: str | None = None) -> CalibrationTable:
    """Read ONNX Runtime's ``calibration.json``.

    The amax is ``max(highest, lowest)``: the value ONNX Runtime hands the TensorRT EP (its
    writer takes the max of the two, not of their magnitudes).
    """
    data = _load_json(text, path)
    if not isinstance(data, dict):
        raise CacheFormatError("ONNX Runtime calibration JSON must be an object", path=path,
                               line=1, hint="expected {name: {lowest, highest}}")

    def pairs() -> Iterable[tuple[int, str, float]]:
        for name, entry in data.items():
            line = _json_line(text, name) or 1
            try:
                values = [_ort_value(entry[k]) for k in ("highest", "lowest") if k in entry]
            except (TypeError, ValueError, KeyError):
                values = []
            if not isinstance(entry, dict) or not values:
                raise CacheFormatError(
                    f"entry {name!r} has no numeric 'highest'/'lowest'", path=path, line=line,
                    hint='each value must look like {"lowest": -1.5, "highest": 1.5}',
                )
            yield line, name, max(values)

    return _table_from_pairs(pairs(), path=path, fmt="ort-json")


def _ort_modules() -> tuple[Any, Any]:
    try:
        from onnxruntime.quantization.calibrate import TensorData
        from onnxruntime.quantization.quant_utils import write_calibration_table
    except ImportError as exc:
        raise ImportError(
            f"writing ONNX Runtime tables needs onnxruntime ({exc}); {_ORT_HINT}"
        ) from exc
    return TensorData, write_calibration_table


def write_ort_tables(
    table: CalibrationTable, folder: str | os.PathLike[str], *, force: bool = False
) -> list[Path]:
    """Write ``calibration.flatbuffers``, ``calibration.json`` and ``calibration.cache``.

    Uses ONNX Runtime's own writer (``onnxruntime.quantization.quant_utils.
    write_calibration_table``) on symmetric ranges ``[-amax, amax]``, into a temporary folder;
    each file is then moved into ``folder`` atomically, never overwriting without ``force``.

    Returns
    -------
    list of pathlib.Path
        The three files written.

    Raises
    ------
    ImportError
        If onnxruntime or flatbuffers is missing (the message says what to install).
    OutputExistsError
        If one of the files exists and ``force`` is false (nothing is written then).
    """
    TensorData, write_calibration_table = _ort_modules()
    table = usable_only(table, "ort")
    out = Path(folder)
    names = ["calibration.flatbuffers", "calibration.json", "calibration.cache"]
    for n in names:
        check_writable(out / n, force=force)
    cache = {}
    for n in table:
        a = _ort_amax(table, n)
        cache[n] = TensorData(lowest=np.array(-a, dtype=np.float32),
                              highest=np.array(a, dtype=np.float32))
    tmp = tempfile.mkdtemp(prefix=".kldiv-ort-")
    try:
        try:
            write_calibration_table(cache, dir=tmp)
        except ImportError as exc:
            raise ImportError(f"ONNX Runtime's table writer needs flatbuffers ({exc}); "
                              f"{_ORT_HINT}") from exc
        return [atomic_write_bytes(out / n, (Path(tmp) / n).read_bytes(), force=force)
                for n in names]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_ort_flatbuffers(data: bytes, *, path: str | None = None) -> CalibrationTable:
    """Read ONNX Runtime's ``calibration.flatbuffers`` with its generated ``TrtTable`` classes."""
    try:
        from onnxruntime.quantization.CalTableFlatBuffers.TrtTable import TrtTable
    except ImportError as exc:
        raise ImportError(f"reading calibration.flatbuffers needs onnxruntime ({exc}); "
                          f"{_ORT_HINT}") from exc
    try:
        root = TrtTable.GetRootAsTrtTable(data, 0)
        items = []
        for i in range(root.DictLength()):
            kv = root.Dict(i)
            items.append((kv.Key().decode("utf-8"), kv.Value().decode("utf-8")))
    except Exception as exc:  # noqa: BLE001 - flatbuffers raises assorted errors on garbage
        raise CacheFormatError(
            f"not an ONNX Runtime calibration.flatbuffers file ({exc.__class__.__name__})",
            path=path, hint="expected the TrtTable written by ONNX Runtime's quantization tools",
        ) from None

    def pairs() -> Iterable[tuple[int, str, float]]:
        for i, (k, v) in enumerate(items, start=1):
            yield i, k, _decimal(v, path=path, line=i, what="value")

    return _table_from_pairs(pairs(), path=path, fmt="ort-flatbuffers")


# -- CSV / JSON with provenance -----------------------------------------------------------------
_CSV_FIELDS = ["name", "scale_hex", "scale", "amax"]
_JSON_FORMAT = "kldiv-calibration-table"


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def to_csv(table: CalibrationTable) -> str:
    """CSV with columns ``name, scale_hex, scale, amax``, after ``#`` lines for header/provenance.

    ``scale_hex`` is the exact float32 bit pattern (what :func:`read_csv` reads back); ``scale``
    and ``amax`` are decimal for people and spreadsheets.
    """
    buf = io.StringIO()
    buf.write("# kldiv calibration table\n")
    if table.header is not None:
        buf.write(f"# header: {table.header.text}\n")
    buf.write(f"# provenance: {json.dumps(table.provenance, sort_keys=True, default=str)}\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(_CSV_FIELDS)
    for n in table:
        w.writerow([n, table.hex(n), repr(float(table[n])), repr(table.amax(n))])
    return buf.getvalue()


def read_csv(text: str | bytes, *, path: str | None = None) -> CalibrationTable:
    """Read :func:`to_csv` output (``scale_hex`` exact; or ``amax`` when no hex column)."""
    lines = _text_lines(text, path)
    header = None
    provenance: dict[str, Any] = {}
    body_start = 0
    for i, line in enumerate(lines):
        if not line.startswith("#"):
            body_start = i
            break
        if line.startswith("# header: "):
            header = parse_header(line[len("# header: "):], path=path, line_number=i + 1,
                                  allow_unknown=True)
        elif line.startswith("# provenance: "):
            try:
                provenance = json.loads(line[len("# provenance: "):])
            except json.JSONDecodeError:
                raise CacheFormatError("unreadable provenance line", path=path, line=i + 1,
                                       hint="it must be '# provenance: {json}'") from None
    rows = csv.reader(lines[body_start:])
    try:
        fields = next(rows)
    except StopIteration:
        fields = []
    if "name" not in fields or not ({"scale_hex", "amax"} & set(fields)):
        raise CacheFormatError("CSV needs a 'name' column and 'scale_hex' or 'amax'", path=path,
                               line=body_start + 1, hint="write it with kldiv.exports.to_csv")
    table = CalibrationTable(header=header, provenance=provenance)
    for i, row in enumerate(rows, start=body_start + 2):
        if not row:
            continue
        if len(row) != len(fields):
            raise CacheFormatError(f"{len(row)} fields where the header has {len(fields)}",
                                   path=path, line=i, hint="quote names holding commas")
        rec = dict(zip(fields, row))
        name = rec["name"]
        if not name or name in table:
            raise CacheFormatError(f"empty or duplicate tensor name {name!r}", path=path, line=i,
                                   hint="one row per tensor")
        if "scale_hex" in rec:
            try:
                table.set_bits(name, int(rec["scale_hex"], 16))
                continue
            except ValueError:
                raise CacheFormatError(f"scale_hex {rec['scale_hex']!r} is not hex", path=path,
                                       line=i, hint="e.g. 3c010a14") from None
        table.set_amax(name, _decimal(rec["amax"], path=path, line=i, what="amax"))
    return table


def to_json(table: CalibrationTable) -> str:
    """JSON with the header, the provenance and, per tensor, its exact hex, scale and amax."""
    h = table.header
    doc = {
        "format": _JSON_FORMAT,
        "version": 1,
        "header": None if h is None else {
            "text": h.text, "kind": h.kind, "version_number": h.version_number,
            "trt_version": h.trt_version, "algorithm": h.algorithm,
            "cutoff": h.cutoff, "quantile": h.quantile,
        },
        "provenance": table.provenance,
        "tensors": [
            {"name": n, "scale_hex": table.hex(n), "scale": _finite_or_none(float(table[n])),
             "amax": _finite_or_none(table.amax(n))}
            for n in table
        ],
    }
    return json.dumps(doc, indent=2, default=str) + "\n"


def read_json(text: str | bytes, *, path: str | None = None) -> CalibrationTable:
    """Read :func:`to_json` output; scales come back bit for bit from ``scale_hex``."""
    doc = _load_json(text, path)
    if not isinstance(doc, dict) or doc.get("format") != _JSON_FORMAT:
        raise CacheFormatError(f"not a {_JSON_FORMAT} JSON document", path=path, line=1,
                               hint="write it with kldiv.exports.to_json")
    hd = doc.get("header")
    header = None if not hd else parse_header(hd["text"], path=path, allow_unknown=True)
    table = CalibrationTable(header=header, provenance=doc.get("provenance") or {})
    for k, rec in enumerate(doc.get("tensors", []), start=1):
        try:
            name, bits = rec["name"], int(rec["scale_hex"], 16)
            if name in table:
                raise ValueError("duplicate")
            table.set_bits(name, bits)
        except (KeyError, TypeError, ValueError) as exc:
            raise CacheFormatError(f"tensor #{k} is malformed ({exc})", path=path,
                                   line=_json_line(text, str(rec.get("name", ""))) if
                                   isinstance(rec, dict) else None,
                                   hint="each tensor needs a unique 'name' and 'scale_hex'") from None
    return table


# -- any format -----------------------------------------------------------------------------------
def detect_format(data: bytes, *, path: str | None = None) -> str:
    """Guess which of :data:`FORMATS` ``data`` is in, from the content (and the file name)."""
    if path is not None and str(path).endswith(".flatbuffers"):
        return "ort-flatbuffers"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:  # binary: ONNX Runtime's flatbuffers, or garbage
        try:
            if len(read_ort_flatbuffers(data)) > 0:
                return "ort-flatbuffers"
        except (CacheFormatError, ImportError):
            pass
        return "trt"  # the cache reader then says what is wrong with the bytes
    stripped = text.lstrip("\ufeff \t\r\n")
    if stripped.startswith("{"):
        try:
            doc = json.loads(stripped)
        except json.JSONDecodeError:
            return "json"
        if isinstance(doc, dict) and doc.get("format") == _JSON_FORMAT:
            return "json"
        first = next(iter(doc.values()), None) if isinstance(doc, dict) else None
        if isinstance(first, dict) and ("highest" in first or "lowest" in first):
            return "ort-json"
        return "nvdla-json"
    if stripped.startswith(("# kldiv", "name,")):
        return "csv"
    first_line = stripped.split("\n", 1)[0].rstrip("\r")
    try:
        parse_header(first_line)
        return "trt"
    except CacheFormatError:
        pass
    if _DECIMAL.fullmatch(first_line.rpartition(":")[2].strip()) and ":" in first_line:
        return "dynamic-range"
    if _DECIMAL.fullmatch(first_line.rpartition(" ")[2].strip()) and " " in first_line:
        return "ort-text"
    return "trt"


_READERS = {
    "dynamic-range": read_dynamic_range_text,
    "nvdla-json": read_nvdla_json,
    "ort-text": read_ort_text,
    "ort-json": read_ort_json,
    "csv": read_csv,
    "json": read_json,
}


def _starts_like_a_cache(path: Path) -> bool:
    """Whether ``path`` opens with a TensorRT cache header (read from its first 64 KiB)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return False  # the reader below reports it
    first = head.split(b"\n", 1)[0].removeprefix(b"\xef\xbb\xbf").rstrip(b"\r")
    try:
        parse_header(first.decode("utf-8"))
    except (UnicodeDecodeError, CacheFormatError):
        return False
    return True


def read_table(
    path: str | os.PathLike[str], *, format: str = "auto", allow_unknown_header: bool = False
) -> CalibrationTable:
    """Read a table from any supported file; ``format="auto"`` recognizes it from its content.

    For an ONNX Runtime folder (``format="ort"`` or a directory), ``calibration.flatbuffers`` in
    it is read.
    """
    p = Path(path)
    if p.is_dir() or format == "ort":
        folder, p = p, p / "calibration.flatbuffers"
        format = "ort-flatbuffers"
        if folder.is_dir() and not p.is_file():
            raise NotAFileError(
                f"{folder} is a folder without calibration.flatbuffers; give a calibration "
                "cache file (a folder is read only as ONNX Runtime's output)", path=str(folder),
            )
    if format in ("auto", "trt") and _starts_like_a_cache(p):
        return read_cache(p, allow_unknown_header=allow_unknown_header)  # streamed
    data = read_input_bytes(p, what="calibration table")
    fmt = detect_format(data, path=str(p)) if format == "auto" else format
    if fmt == "trt":
        return parse_cache(data, path=str(p), allow_unknown_header=allow_unknown_header)
    if fmt == "ort-flatbuffers":
        return read_ort_flatbuffers(data, path=str(p))
    reader = _READERS.get(fmt)
    if reader is None:
        raise CacheFormatError(f"unknown format {format!r}",
                               hint=f"use one of auto, {', '.join(FORMATS)}")
    return reader(data, path=str(p))


def write_table(
    table: CalibrationTable,
    path: str | os.PathLike[str],
    *,
    format: str = "trt",
    force: bool = False,
    **options: Any,
) -> list[Path]:
    """Write ``table`` in ``format`` (one of :data:`FORMATS`) atomically; return the paths.

    ``format="ort"`` treats ``path`` as a folder and writes ONNX Runtime's three files;
    ``options`` go to the format's writer (``header=`` for ``trt``, ``colon_replacement=`` for
    ``dynamic-range``).
    """
    if format == "ort":
        return write_ort_tables(table, path, force=force)
    return [atomic_write_text(path, format_table(table, format, **options), force=force)]


def format_table(table: CalibrationTable, format: str = "trt", **options: Any) -> str:
    """Return ``table`` as text in ``format`` (any of :data:`FORMATS` but the ORT binary ones)."""
    if format in ("ort", "ort-flatbuffers"):
        raise CacheFormatError(f"{format!r} is not a text format",
                               hint="write ONNX Runtime's files with write_table(format='ort')")
    writers = {
        "trt": lambda t: format_cache(t, **options),
        "dynamic-range": lambda t: to_dynamic_range_text(t, **options),
        "nvdla-json": to_nvdla_json,
        "ort-json": to_ort_json,
        "ort-text": to_ort_text,
        "csv": to_csv,
        "json": to_json,
    }
    writer = writers.get(format)
    if writer is None:
        raise CacheFormatError(f"unknown output format {format!r}",
                               hint=f"use one of {', '.join(FORMATS)}")
    return writer(table)
