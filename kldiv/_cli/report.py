"""``kldiv report``: one self-contained HTML file showing how every threshold was chosen."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..defaults import DEFAULT_METHOD, DEFAULT_PRESET
from ..thresholds import METHODS
from .search import parse_option

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add ``kldiv report`` to the CLI."""
    p = subparsers.add_parser(
        "report",
        help="an HTML report of every tensor's threshold (works offline)",
        description=(
            "Write one self-contained HTML file (no network needed) from saved histograms: a "
            "summary (tensors, preset, flagged tensors and their clipped share, coverage of each "
            "cache), a sortable table of every tensor, and per tensor the histogram with every "
            "threshold marked, the KL curve with kldiv's minimum and each cache's bin, and P "
            "against Q. Plots are drawn by the page when a row is opened."
        ),
    )
    p.add_argument("histograms", metavar="HIST.npz", help="histogram file (--save-histograms)")
    p.add_argument("--model", help="the ONNX model: operator types and graph rules")
    p.add_argument("--cache", action="append", default=[], metavar="C",
                   help="a TensorRT calibration cache to compare (repeatable)")
    p.add_argument("--table", action="append", default=[], metavar="T",
                   help="any table kldiv reads, format recognized from content (repeatable)")
    p.add_argument("--eval", dest="evaluations", metavar="results.json",
                   help="results of `kldiv evaluate --json` to show in the summary")
    p.add_argument("--preset", default=DEFAULT_PRESET,
                   help=f"kldiv's preset (default {DEFAULT_PRESET}); the others are shown too")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=tuple(METHODS),
                   help=f"kldiv's threshold method (default {DEFAULT_METHOD})")
    p.add_argument("--option", action="append", default=[], type=parse_option,
                   metavar="KEY=VALUE",
                   help="an option of kldiv's preset or method, as kldiv search takes it "
                        "(e.g. zeros=keep); repeatable")
    p.add_argument("--out", required=True, metavar="report.html", help="the HTML file to write")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``kldiv report``."""
    from ..report import write_report

    bar: Any = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            try:
                from tqdm import tqdm
            except ImportError:  # pragma: no cover - tqdm comes with the onnx extra
                return
            bar = tqdm(total=total, unit="tensor", desc="report", file=sys.stderr,
                       disable=None, leave=False)
        bar.update(done - bar.n)

    try:
        path = write_report(
            args.histograms, args.out, model=args.model, caches=args.cache, tables=args.table,
            evaluations=args.evaluations, preset=args.preset, method=args.method,
            options=dict(args.option), force=args.force, progress=progress,
        )
    finally:
        if bar is not None:
            bar.close()
    size = path.stat().st_size
    print(f"report written to {path} ({size / 1e6:.2f} MB)")
    return 0
