"""Subcommands of the ``kldiv`` CLI; each module defines ``register(subparsers)``."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = [
    "algorithm_arg",
    "fraction_arg",
    "nonnegative_arg",
    "positive_arg",
    "subcommands",
    "trt_version_arg",
    "verbosity_parent",
    "whole_number_arg",
]


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
