"""The ``kldiv-trt`` command line.

Thin shells over :func:`~trt_backend.crosschecking.crosscheck` and
:func:`~trt_backend.engine.build_engine`.

``kldiv-trt crosscheck MODEL --data PATH --out-dir D`` writes the comparison (text, JSON, plot)
and both caches; ``kldiv-trt build MODEL --cache FILE --out model.engine`` builds an INT8 engine
from a kldiv (or any TensorRT) cache, its header rewritten for the running TensorRT. Exit codes:
0 success, 2 bad input or no TensorRT (one line on stderr, naming ``pip install "kldiv[trt]"``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from kldiv._cli import EXIT_OK, add_verbosity, nonnegative_arg, run, subcommands
from kldiv.errors import KldivError

__all__ = ["build_parser", "main"]


def _crosscheck(args: argparse.Namespace) -> int:
    from kldiv._cli._data_args import (
        batch_axes_from_args,
        check_data_args,
        model_batch_axes,
        source_from_args,
    )

    from . import _tensorrt
    from .crosschecking import check_outputs, crosscheck

    _tensorrt.require_implicit(_tensorrt.version())  # no TensorRT: exit 2 with the install hint
    check_data_args(args)
    # every output writable, none of them an input, before TensorRT calibrates for minutes
    check_outputs(args.out_dir, force=args.force, inputs=(args.model, args.data))
    axes = model_batch_axes(args.model, batch_axes_from_args(args))
    data = cast("Iterable[Mapping[str, Any]]", source_from_args(args, batch_axes=axes))
    result = crosscheck(args.model, data, preset=args.preset, workspace=args.workspace)
    written = result.write(args.out_dir, force=args.force)
    print(result.to_text(max_rows=args.max_rows))
    for key, path in written.items():
        print(f"wrote {key}: {path}")
    return EXIT_OK


def _build(args: argparse.Namespace) -> int:
    from kldiv._io import atomic_write_bytes, check_writable
    from kldiv.cachefile import read_cache

    from . import _tensorrt
    from .engine import build_engine

    _tensorrt.load()  # no TensorRT: exit 2 with the install hint, before reading anything
    check_writable(args.out, force=args.force, inputs=(args.model, args.cache), what="--out")
    table = read_cache(args.cache, allow_unknown_header=True) if args.cache else None
    precision = "int8" if (table is not None or args.qdq) else args.precision
    plan = build_engine(
        args.model,
        precision,
        table=table,
        qdq=args.qdq,
        workspace=args.workspace,
        algorithm=args.algorithm,
    )
    atomic_write_bytes(args.out, plan, force=args.force)
    print(f"wrote a {precision} engine ({len(plan)} bytes) to {args.out}")
    return EXIT_OK


def _trt_version_text() -> str:
    """The installed TensorRT's version, or why there is none (no import of TensorRT here)."""
    from importlib.metadata import PackageNotFoundError, version

    from .errors import INSTALL_HINT

    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-cu11", "tensorrt_libs"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return f"not installed ({INSTALL_HINT})"


class _VersionAction(argparse._VersionAction):
    """``--version``, its text (package metadata look-ups) made only when it is given."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from kldiv import __version__

        self.version = f"kldiv-trt {__version__} (TensorRT: {_trt_version_text()})"
        super().__call__(parser, *args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The ``kldiv-trt`` argument parser."""
    from kldiv._cli._data_args import add_data_options
    from kldiv.defaults import (
        DEFAULT_ALGORITHM,
        DEFAULT_PRECISION,
        DEFAULT_PRESET,
        DEFAULT_WORKSPACE,
    )

    from .engine import PRECISIONS

    parser = argparse.ArgumentParser(
        prog="kldiv-trt", description="Feed kldiv's scales to TensorRT and cross-check them."
    )
    parser.add_argument("--version", action=_VersionAction)
    add_verbosity(parser)
    sub = subcommands(parser, dest="command", metavar="COMMAND")

    p = sub.add_parser("crosscheck", help="TensorRT's entropy2 calibration vs kldiv's, same data")
    p.add_argument("model", help="ONNX model")
    p.add_argument("--out-dir", required=True, help="folder for the report and both caches")
    p.add_argument("--preset", default=DEFAULT_PRESET, help=f"kldiv preset (default: {DEFAULT_PRESET})")
    add_data_options(p, data_help="calibration data, fed to both TensorRT and kldiv")
    p.add_argument("--workspace", type=int, default=DEFAULT_WORKSPACE, help="bytes")
    p.add_argument("--max-rows", type=nonnegative_arg, default=40, help="rows of the printed table")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(func=_crosscheck)

    b = sub.add_parser("build", help="build a TensorRT engine (INT8 from a cache)")
    b.add_argument("model", help="ONNX model")
    b.add_argument("--cache", help="calibration cache (kldiv's or TensorRT's) for INT8")
    b.add_argument("--out", required=True, help="engine file to write")
    b.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION,
                   help="without --cache")
    b.add_argument("--qdq", action="store_true", help="explicit Q/DQ path (TensorRT >= 10.1)")
    b.add_argument("--algorithm", default=DEFAULT_ALGORITHM,
                   help="calibrator named in the cache header")
    b.add_argument("--workspace", type=int, default=DEFAULT_WORKSPACE, help="bytes")
    b.add_argument("--force", action="store_true", help="overwrite --out")
    b.set_defaults(func=_build)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``kldiv-trt``; return the exit code."""
    return run(build_parser(), argv, prog="kldiv-trt",
               errors=(KldivError, FileNotFoundError, PermissionError, ValueError))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
