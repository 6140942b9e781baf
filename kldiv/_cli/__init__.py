"""Subcommands of the ``kldiv`` CLI; each module defines ``register(subparsers)``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_BROKEN_PIPE",
    "EXIT_DIFFERENCES",
    "EXIT_OK",
    "add_verbosity",
    "algorithm_arg",
    "log_level",
    "run",
    "fraction_arg",
    "nonnegative_arg",
    "positive_arg",
    "subcommands",
    "trt_version_arg",
    "verbosity_parent",
    "whole_number_arg",
]


EXIT_OK = 0
EXIT_DIFFERENCES = 1
EXIT_BAD_INPUT = 2
#: Exit status when stdout is closed early (``kldiv cache show X | head``): 128 + SIGPIPE.
EXIT_BROKEN_PIPE = 141


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    """Add the top-level ``-v``/``-q`` of a command, which hold the defaults.

    The subcommands take their own (:func:`verbosity_parent`).
    """
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", default=False,
                        help="errors only: no progress bar, no table, no warnings")


def log_level(args: argparse.Namespace) -> int:
    """The logging level ``-q`` / ``-v`` / ``-vv`` ask for (``WARNING`` by default)."""
    if getattr(args, "quiet", False):
        return logging.ERROR
    return logging.WARNING - 10 * min(getattr(args, "verbose", 0), 2)


def _stdout_closed() -> int:
    """Stdout's reader went away (``| head``): stop quietly, as ``yes | head`` does."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush goes nowhere
    except (OSError, ValueError):  # pragma: no cover - stdout without a file descriptor
        pass
    return EXIT_BROKEN_PIPE


def run(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    *,
    prog: str,
    errors: tuple[type[BaseException], ...],
    configure: Callable[[int], None] | None = None,
) -> int:
    """Parse ``argv`` and run the chosen subcommand's ``func``; return the exit code.

    An argument error prints the usage of the subcommand it belongs to and returns 2, as does
    a missing subcommand (with the help). ``errors`` raised by the subcommand become one line
    on stderr (``PROG COMMAND: error: ...``) and exit 2; a closed stdout exits 141 quietly,
    Ctrl-C 130. ``configure(level)`` runs after logging is set up.
    """
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            owner = getattr(args, "_parser", parser)
            owner.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # argparse: --help, --version, or a usage error (exit 2)
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    level = log_level(args)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if configure is not None:
        configure(level)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return int(func(args) or EXIT_OK)
    except BrokenPipeError:
        return _stdout_closed()
    except errors as exc:
        print(f"{prog} {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def verbosity_parent() -> argparse.ArgumentParser:
    """The ``-v``/``-q`` options every command takes (a parent parser for ``add_parser``).

    Their defaults are suppressed, so ``kldiv -v calibrate ...`` and ``kldiv calibrate -v ...``
    both count: the top-level parser holds the defaults.
    """
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("output")
    g.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                   help="more log output (-vv for debug)")
    g.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="errors only: no progress bar, no table, no warnings")
    return p


def trt_version_arg(text: str) -> str:
    """Argparse type of ``--trt-version``: a TensorRT version kldiv writes headers for."""
    from ..cachefile import check_trt_version

    try:
        check_trt_version(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def algorithm_arg(text: str) -> str:
    """Argparse type of ``--algorithm``: the name normalized as a cache header writes it."""
    from ..cachefile import normalize_algorithm

    try:
        return normalize_algorithm(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def whole_number_arg(text: str) -> int:
    """Argparse type: an integer."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def positive_arg(text: str) -> int:
    """Argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def nonnegative_arg(text: str) -> int:
    """Argparse type: an integer >= 0."""
    value = whole_number_arg(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def fraction_arg(text: str) -> float:
    """Argparse type: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {value}")
    return value


class _Subcommands:
    """The action of ``add_subparsers()`` used by every kldiv command.

    It adds the shared ``-v``/``-q`` to every subcommand and remembers each subcommand's parser
    (its usage is printed for its argument errors).
    """

    def __init__(self, action: Any) -> None:
        self._action = action

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        kwargs["parents"] = [*kwargs.get("parents", ()), verbosity_parent()]
        parser: argparse.ArgumentParser = self._action.add_parser(name, **kwargs)
        parser.set_defaults(_parser=parser)
        return parser


def subcommands(parser: argparse.ArgumentParser, **kwargs: Any) -> _Subcommands:
    """``parser.add_subparsers(**kwargs)`` whose subcommands take ``-v``/``-q``."""
    return _Subcommands(parser.add_subparsers(**kwargs))
