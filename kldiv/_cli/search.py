"""``kldiv search``: thresholds from saved histograms, under one or several presets.

For researchers who want to see how a threshold was chosen and what changes when one
ambiguity of the pseudocode is resolved differently, without running the model again.
A thin shell over :func:`kldiv.pipeline.choose_thresholds`: the same thresholds ``kldiv calibrate
--from-histograms`` writes, including the graph's rules (a pooling output inherits its input's
scale, a Clip output its bound, a Reshape/Flatten output its source's final scale), shown as
such in the ``rule`` column, and ``minmax`` from the largest ``|x|`` seen.
"""

from __future__ import annotations

import argparse
import ast
import math
from typing import Any

from ..defaults import CLIP_WARN_FRACTION, DEFAULT_METHOD, DEFAULT_PRESET
from ..entropy import PRESETS
from ..errors import PresetError
from ..thresholds import METHODS, check_method_options

__all__ = ["register", "run", "parse_option"]


def parse_option(text: str) -> tuple[str, Any]:
    """Parse ``KEY=VALUE`` (VALUE as a Python literal when it is one, else a string).

    Examples
    --------
    >>> parse_option("grouping=floor")
    ('grouping', 'floor')
    >>> parse_option("threshold_offset=0")
    ('threshold_offset', 0)
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE such as grouping=floor, got {text!r}")
    try:
        value: Any = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


def register(subparsers: Any) -> None:
    """Add ``kldiv search`` to the CLI."""
    p = subparsers.add_parser(
        "search",
        help="thresholds from saved histograms, for one or several presets",
        description=(
            "Recompute thresholds from histograms saved by `kldiv calibrate --save-histograms` "
            "and print, per tensor and per preset, the chosen bin, amax, the share of values "
            f"the threshold clips (! above {100 * CLIP_WARN_FRACTION:g}%), scale and its "
            "TensorRT hex. Override any single option of the search with --option KEY=VALUE "
            "(see kldiv.entropy.EntropyOptions; --method legacy takes quantile=, "
            "regression_cutoff=)."
        ),
    )
    p.add_argument("histograms", metavar="H.npz", help="histogram file from --save-histograms")
    p.add_argument(
        "--preset",
        action="append",
        dest="presets",
        metavar="NAME",
        choices=tuple(PRESETS),
        help=f"entropy preset, one of {', '.join(PRESETS)}; repeat to compare several "
        f"(default {DEFAULT_PRESET})",
    )
    p.add_argument(
        "--method",
        default=DEFAULT_METHOD,
        choices=tuple(METHODS),
        help=f"threshold method (default {DEFAULT_METHOD}; presets apply to entropy only)",
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        type=parse_option,
        metavar="KEY=VALUE",
        help="override one option, e.g. grouping=floor, ties=last, threshold_offset=0",
    )
    p.add_argument(
        "--tensor", action="append", dest="tensors", metavar="NAME", help="only these tensors"
    )
    p.add_argument(
        "--curve",
        action="store_true",
        help="also print each divergence curve's minimum neighbourhood",
    )
    p.set_defaults(func=run)


def _rule(result: Any) -> str:
    source = result.options.get("source", "")
    if result.method == "inherited":
        return f"inherited from {source}"
    if result.method == "alias":
        return f"alias of {source} ({result.options.get('source_method', '?')})"
    if result.method == "activation-bound":
        return f"Clip bound {result.options.get('bound'):g}"
    if result.method == "minmax":
        return "largest |x| seen" if source == "largest |x| seen" else "histogram range"
    return "searched"


def _row(name: str, label: str, result: Any) -> tuple[str, ...]:
    best = "-"
    if result.bin_index is not None and len(result.divergence):
        best = f"{result.divergence_at(result.bin_index):.6g}"
    clipped = float(result.clipped_fraction)
    flag = " !" if clipped > CLIP_WARN_FRACTION else "  "
    return (
        name,
        label,
        "-" if result.bin_index is None else str(result.bin_index),
        f"{result.amax:.7g}",
        f"{float(result.scale):.7g}",
        result.scale_hex,
        best,
        ("-" if clipped != clipped else "0%" if clipped == 0 else f"{100 * clipped:.3g}%")
        + flag,
        _rule(result),
    )


def _table(rows: list[tuple[str, ...]]) -> str:
    head = ("tensor", "preset", "bin i", "amax", "scale", "hex", "min KL", "clipped", "rule")
    allrows = [head, *rows]
    width = [max(len(r[i]) for r in allrows) for i in range(len(head))]
    left = (0, 1, len(head) - 1)
    lines = [
        "  ".join(c.ljust(width[i]) if i in left else c.rjust(width[i])
                  for i, c in enumerate(r)).rstrip()
        for r in allrows
    ]
    lines.insert(1, "  ".join("-" * w for w in width))
    return "\n".join(lines)


def _neighbourhood(result: Any, span: int = 3) -> str:
    cands = list(result.candidates)
    if result.bin_index is None or result.bin_index not in cands:
        return ""
    k = cands.index(result.bin_index)
    parts = []
    for j in range(max(0, k - span), min(len(cands), k + span + 1)):
        d = float(result.divergence[j])
        mark = "*" if j == k else " "
        parts.append(
            f"{mark}i={cands[j]}: {d:.6g}" if math.isfinite(d) else f"{mark}i={cands[j]}: {d}"
        )
    return "    " + "  ".join(parts)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``kldiv search``."""
    from ..collect import HistogramCollector
    from ..pipeline import choose_thresholds
    from ..thresholds import clipping_outliers

    presets = args.presets or [DEFAULT_PRESET]
    if args.method != "entropy" and args.presets:
        raise PresetError("--preset applies to --method entropy only; drop --preset or the method")
    overrides = dict(args.option)
    if args.method != "entropy":
        check_method_options(args.method, overrides)
    collector = HistogramCollector.load(args.histograms)
    names = list(collector.names)
    if args.tensors:
        missing = [t for t in args.tensors if t not in names]
        if missing:
            raise PresetError(
                f"tensor(s) not in {args.histograms}: {', '.join(missing)}; "
                f"it holds {len(names)} tensors, e.g. {', '.join(names[:3])}"
            )
        names = args.tensors
    rows: list[tuple[str, ...]] = []
    curves: list[str] = []
    by_label: dict[str, dict[str, Any]] = {}
    for preset in presets if args.method == "entropy" else [DEFAULT_PRESET]:
        results = choose_thresholds(collector, preset=preset, method=args.method, **overrides)
        label = (preset if args.method == "entropy" else args.method) + (
            "+" + ",".join(f"{k}={v}" for k, v in overrides.items()) if overrides else ""
        )
        for name in names:
            result = results[name]
            rows.append(_row(name, label, result))
            by_label.setdefault(label, {})[name] = result
            if args.curve and result.method == "entropy":
                curves.append(f"{name} [{label}]\n{_neighbourhood(result)}")
    order = {n: i for i, n in enumerate(names)}
    rows.sort(key=lambda r: order[r[0]])  # each tensor's presets together
    print(_table(rows))
    if args.method == "minmax" and collector.meta.get("absmax_from_range"):
        print(f"note: {args.histograms} does not record the largest |x| of each tensor (an "
              "older file); minmax shows each histogram's range, an upper bound")
    for label, results in by_label.items():
        flagged = clipping_outliers(results)  # and a logged warning naming them
        if flagged:
            print(f"! [{label}] {len(flagged)} tensor(s) clip more than "
                  f"{100 * CLIP_WARN_FRACTION:g}% of their values: {', '.join(flagged)}")
    if curves:
        print("\nKL around the chosen candidate (* = chosen):")
        print("\n".join(curves))
    return 0
