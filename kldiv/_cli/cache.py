"""``kldiv cache show``, ``kldiv cache convert`` and ``kldiv compare``."""

from __future__ import annotations

import argparse
import logging
import sys
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from ..cachefile import header_for
from ..defaults import DEFAULT_ALGORITHM, DEFAULT_TRT_VERSION
from ..exports import FORMATS, format_table, read_table, write_table
from ..scales import CacheHeader, CalibrationTable
from . import algorithm_arg, nonnegative_arg, subcommands, trt_version_arg

__all__ = ["register"]

_FAIL_ON = ("any", "names", "bits", "ulp", "close", "header")


def register(subparsers: Any) -> None:
    """Add the ``cache`` group (``show``, ``convert``) and ``compare`` to the CLI."""
    cache = subparsers.add_parser(
        "cache", help="read, show and convert TensorRT calibration caches and relatives",
        description="Read, show and convert TensorRT calibration caches and related tables.",
    )
    sub = subcommands(cache, dest="cache_command", metavar="ACTION")
    cache.set_defaults(func=lambda args: (cache.print_help(), 2)[1])

    show = sub.add_parser("show", help="header, versions, each tensor's amax and scale")
    show.add_argument("file", help="a cache or any table kldiv reads (format auto-detected)")
    _add_from(show)
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")
    show.set_defaults(func=_show)

    conv = sub.add_parser("convert", help="convert a table to another format")
    conv.add_argument("file")
    _add_from(conv)
    conv.add_argument("--to", required=True, choices=[f for f in FORMATS if f != "ort-flatbuffers"],
                      help="output format ('ort' writes ONNX Runtime's three files into a folder)")
    conv.add_argument("-o", "--output", help="output file (folder for --to ort); default stdout")
    conv.add_argument("--trt-version", type=trt_version_arg,
                      help=f"TensorRT version for the header (--to trt), e.g. 8.6.1 "
                      f"(default: the input's, else {DEFAULT_TRT_VERSION})")
    conv.add_argument("--algorithm", type=algorithm_arg,
                      help="entropy2, entropy, minmax or legacy (--to trt; "
                      f"default: the input's, else {DEFAULT_ALGORITHM})")
    conv.add_argument("--colon-replacement", help="rename ':' in names (--to dynamic-range)")
    conv.add_argument("--force", action="store_true", help="overwrite existing output")
    conv.set_defaults(func=_convert)

    cmp_ = subparsers.add_parser(
        "compare", help="compare two calibration tables tensor by tensor",
        description="Compare two tables (any format kldiv reads). Exit 0, or 1 when "
        "--fail-on finds differences, 2 on bad input.",
    )
    cmp_.add_argument("a")
    cmp_.add_argument("b")
    cmp_.add_argument("--match", choices=("name", "position"), default="name")
    cmp_.add_argument("--normalize-colons", action="store_true",
                      help="match names with ':' replaced by '_' on both sides")
    cmp_.add_argument("--fail-on", choices=_FAIL_ON,
                      help="exit 1 when differences of this kind exist")
    cmp_.add_argument("--plot", metavar="PNG", help="write a ratio plot (needs kldiv[plot])")
    cmp_.add_argument("--force", action="store_true", help="overwrite an existing --plot file")
    cmp_.add_argument("--json", action="store_true", help="print the full report as JSON")
    cmp_.add_argument("--all", action="store_true",
                      help="list every tensor (default: only those not bit-identical)")
    cmp_.add_argument("--max-rows", type=nonnegative_arg, default=50,
                      help="rows to print (default 50)")
    cmp_.set_defaults(func=_compare)


def _add_from(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="from_format", default="auto",
                   choices=("auto", *FORMATS), help="input format (default: detect)")
    p.add_argument("--allow-unknown-header", action="store_true",
                   help="read a TensorRT cache whose first line is no known header")


def _read(path: str, args: argparse.Namespace) -> CalibrationTable:
    return read_table(path, format=getattr(args, "from_format", "auto"),
                      allow_unknown_header=getattr(args, "allow_unknown_header", False))


#: Flags of ``cache show``: usable oddities, then the scales TensorRT cannot use.
_FLAGS = ("zero", "inf", "nan", "-inf", "negative")
_UNUSABLE = ("nan", "-inf", "negative")


def _flag_codes(bits: np.ndarray) -> np.ndarray:
    """Per scale: 0 none, else 1 + index in :data:`_FLAGS`."""
    codes = np.zeros(bits.size, dtype=np.int8)
    codes[bits == 0] = 1
    codes[bits == 0x7F800000] = 2
    codes[(bits & 0x80000000) != 0] = 5  # negative, -0 included
    codes[bits == 0xFF800000] = 4
    codes[(bits & 0x7FFFFFFF) > 0x7F800000] = 3  # NaN, either sign
    return codes


def warn_unusable(table: CalibrationTable, what: str) -> dict[str, str]:
    """Log a warning naming the scales TensorRT cannot use; return them."""
    bad = table.unusable()
    if bad:
        kinds = {k: sum(1 for v in bad.values() if v == k) for k in _UNUSABLE}
        names = ", ".join(list(bad)[:5]) + (", ..." if len(bad) > 5 else "")
        logging.getLogger("kldiv.cache").warning(
            "%s: %d scale(s) TensorRT cannot use (%s): %s", what, len(bad),
            ", ".join(f"{k} {n}" for k, n in kinds.items() if n), names,
        )
    return bad


def _show(args: argparse.Namespace) -> int:
    table = _read(args.file, args)
    h = table.header
    if args.json:
        from ..exports import to_json

        warn_unusable(table, args.file)
        sys.stdout.write(to_json(table))
        return 0
    out = [f"file: {args.file}"]
    if h is None:
        out.append("header: (none)")
    else:
        out.append(f"header: {h.text!r} ({h.kind})")
        if h.kind == "trt":
            out.append(f"TensorRT: {h.trt_version} (number {h.version_number}); "
                       f"algorithm: {h.algorithm}")
        elif h.kind == "legacy":
            out.append(f"legacy calibrator: cutoff {h.cutoff!r}, quantile {h.quantile!r}")
    bits = table.bits_array()
    codes = _flag_codes(bits)
    count = np.bincount(codes, minlength=len(_FLAGS) + 1)
    n = {f: int(count[i + 1]) for i, f in enumerate(_FLAGS)}
    out.append(f"tensors: {len(table)}; zero: {n['zero']}; inf: {n['inf']}; nan: {n['nan']}; "
               f"-inf: {n['-inf']}; negative: {n['negative']}")
    unusable = sum(n[k] for k in _UNUSABLE)
    if unusable:
        out.append(f"TensorRT cannot use {unusable} of these scales (NaN, -Inf or negative; "
                   "flagged below): recalibrate those tensors or fix the file")
    if table.provenance.get("format"):
        out.append(f"format: {table.provenance['format']}")
    width = 6
    for name in table:
        width = max(width, len(name))
        if width >= 70:
            width = 70
            break
    out.append("")
    out.append(f"{'tensor':<{width}}  {'hex':>8}  {'scale':>14}  {'amax':>14}  flag")
    write = sys.stdout.write
    write("\n".join(out) + "\n")
    labels = ("", *(f + " (unusable)" if f in _UNUSABLE else f for f in _FLAGS))
    names = iter(table)
    step = 4096  # rows formatted and written at a time
    for start in range(0, len(table), step):
        part = slice(start, start + step)
        block = [
            f"{name:<{width}}  {b:>8x}  {x:>14.8g}  {x * 127.0:>14.8g}  {labels[c]}".rstrip()
            for name, b, x, c in zip(islice(names, step), bits[part].tolist(),
                                     bits[part].view(np.float32).tolist(), codes[part].tolist())
        ]
        write("\n".join(block) + "\n")
    return 0


def _target_header(table: CalibrationTable, args: argparse.Namespace) -> CacheHeader | None:
    old = table.header
    if args.trt_version is None and args.algorithm is None:
        if old is not None and old.kind in ("trt", "legacy"):
            return old
        return header_for()
    from ..cachefile import check_trt_version

    version: str | int = check_trt_version(args.trt_version) if args.trt_version else (
        old.version_number if old is not None and old.version_number is not None
        else DEFAULT_TRT_VERSION
    )
    algorithm = args.algorithm or (
        old.algorithm if old is not None and old.algorithm else DEFAULT_ALGORITHM
    )
    try:
        return header_for(version, algorithm)
    except ValueError as exc:
        from ..errors import CacheFormatError

        raise CacheFormatError(str(exc), hint="see kldiv cache convert --help") from None


def _convert(args: argparse.Namespace) -> int:
    table = _read(args.file, args)
    options: dict[str, Any] = {}
    if args.output is not None:
        from .._io import check_writable

        if args.to == "ort":
            for name in ("calibration.flatbuffers", "calibration.json", "calibration.cache"):
                check_writable(Path(args.output) / name, force=args.force, inputs=[args.file])
        else:
            check_writable(args.output, force=args.force, inputs=[args.file], what="--output")
    if args.to in ("trt", "csv", "json"):  # exact bits kept; the other formats leave them out
        warn_unusable(table, args.file)
    if args.to == "trt":
        options["header"] = _target_header(table, args)
    elif args.trt_version or args.algorithm:
        print("kldiv cache convert: error: --trt-version/--algorithm only apply to --to trt",
              file=sys.stderr)
        return 2
    if args.to == "dynamic-range" and args.colon_replacement is not None:
        options["colon_replacement"] = args.colon_replacement
    if args.output is None:
        if args.to == "ort":
            print("kldiv cache convert: error: --to ort writes three files; give a folder "
                  "with -o DIR", file=sys.stderr)
            return 2
        sys.stdout.write(format_table(table, args.to, **options))
        return 0
    try:
        paths = write_table(table, args.output, format=args.to, force=args.force, **options)
    except ImportError as exc:
        print(f"kldiv cache convert: error: {exc}", file=sys.stderr)
        return 2
    for p in paths:
        print(f"wrote {p}", file=sys.stderr)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from ..comparison import compare

    if args.plot:
        from .._io import check_writable

        check_writable(args.plot, force=args.force, inputs=[args.a, args.b], what="--plot")
    a, b = _read(args.a, args), _read(args.b, args)
    report = compare(a, b, match=args.match,
                     normalize={":": "_"} if args.normalize_colons else None)
    if args.json:
        sys.stdout.write(report.to_json())
    else:
        sys.stdout.write(report.to_text(max_rows=args.max_rows,
                                        only_differences=not args.all))
    if args.plot:
        from ..plots import plot_comparison

        try:
            plot_comparison(report, args.plot, labels=(Path(args.a).name, Path(args.b).name), force=args.force)
        except ImportError as exc:
            print(f"kldiv compare: error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.fail_on and report.differs(args.fail_on):
        return 1
    return 0

