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
import sys
from collections.abc import Sequence

from . import __version__
from ._cli import (
    EXIT_BAD_INPUT,
    EXIT_BROKEN_PIPE,
    EXIT_DIFFERENCES,
    EXIT_OK,
    add_verbosity,
    run,
    subcommands,
)
from .errors import KernelChoiceError, KldivError

__all__ = ["main", "EXIT_OK", "EXIT_DIFFERENCES", "EXIT_BAD_INPUT", "EXIT_BROKEN_PIPE"]

# Modules under kldiv._cli, each with register(subparsers). Missing ones are skipped.
_COMMAND_MODULES = ("demo", "calibrate", "evaluate", "search", "cache", "report", "explain")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="kldiv",
        description="TensorRT-compatible INT8 entropy calibration you can read and check.",
    )
    parser.add_argument("--version", action="version", version=f"kldiv {__version__}")
    add_verbosity(parser)
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


def _announce_compiles(level: int) -> None:
    """The one-time kernel compile (a few seconds) is announced, not a silent pause."""
    logging.getLogger("kldiv._kernels._jit").setLevel(
        level if level > logging.WARNING else min(level, logging.INFO)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``kldiv`` command line; return the exit code."""
    return run(
        build_parser(), argv, prog="kldiv", configure=_announce_compiles,
        errors=(KldivError, KernelChoiceError, FileNotFoundError, IsADirectoryError,
                PermissionError),
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
