"""The ``kldiv`` command line.

Each subcommand lives in a module of :mod:`kldiv._cli` that defines ``register(subparsers)``;
each is a thin shell over one public function. Exit codes: 0 success, 1 differences found
where the user asked to fail on them, 2 bad input (a one-line message on stderr; an argument
error prints the usage of the subcommand it belongs to). Every command takes ``-v``/``-q``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from . import __version__
from ._cli import subcommands
from .errors import KernelChoiceError, KldivError

__all__ = ["main", "EXIT_OK", "EXIT_DIFFERENCES", "EXIT_BAD_INPUT"]

EXIT_OK = 0
EXIT_DIFFERENCES = 1
EXIT_BAD_INPUT = 2
#: Exit status when stdout is closed early (``kldiv cache show X | head``): 128 + SIGPIPE.
EXIT_BROKEN_PIPE = 141

# Modules under kldiv._cli, each with register(subparsers). Missing ones are skipped.
_COMMAND_MODULES = ("demo", "calibrate", "evaluate", "search", "cache", "report", "explain")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="kldiv",
        description="TensorRT-compatible INT8 entropy calibration you can read and check.",
    )
    parser.add_argument("--version", action="version", version=f"kldiv {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", default=False,
                        help="errors only: no progress bar, no table, no warnings")
    sub = subcommands(parser, dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"._cli.{name}", __package__)
        except ModuleNotFoundError as exc:
            if exc.name == f"{__package__}._cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def _log_level(args: argparse.Namespace) -> int:
    if getattr(args, "quiet", False):
        return logging.ERROR
    return logging.WARNING - 10 * min(getattr(args, "verbose", 0), 2)


def _stdout_closed() -> int:
    """stdout's reader went away (``| head``): stop quietly, as ``yes | head`` does."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush goes nowhere
    except (OSError, ValueError):  # pragma: no cover - stdout without a file descriptor
        pass
    return EXIT_BROKEN_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``kldiv`` command line; return the exit code."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            owner = getattr(args, "_parser", parser)
            owner.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # argparse: --help, --version, or a usage error (exit 2)
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    level = _log_level(args)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # the one-time kernel compile (a few seconds) is announced, not a silent pause
    logging.getLogger("kldiv._kernels._jit").setLevel(
        level if level > logging.WARNING else min(level, logging.INFO)
    )
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return int(func(args) or EXIT_OK)
    except BrokenPipeError:
        return _stdout_closed()
    except (
        KldivError, KernelChoiceError, FileNotFoundError, IsADirectoryError, PermissionError
    ) as exc:
        print(f"kldiv {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("kldiv: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
