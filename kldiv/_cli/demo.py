"""``kldiv demo``: the whole calibration job on the embedded LeNet-5 (scikit-learn digits).

Runs the model shipped in :mod:`kldiv.examples` over its calibration batches with onnxruntime,
histograms every activation, searches the thresholds and prints, per tensor, the histogram
range, the winning bin, the threshold (amax) and the TensorRT scale in hex. Nothing is written
unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
from typing import Any

from .calibrate import (
    _progress,
    add_table_options,
    check_table_options,
    format_summary,
    quiet,
    thresholds_and_table,
)

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add ``kldiv demo`` to the CLI."""
    p = subparsers.add_parser(
        "demo",
        help="calibrate the embedded LeNet-5 example end to end and print the scales",
        description=(
            "Calibrate the embedded LeNet-5 (trained on scikit-learn's digits) with "
            "onnxruntime and print each tensor's threshold and TensorRT scale. "
            "Writes nothing unless --out is given."
        ),
    )
    p.add_argument("--out", "-o", default=None, help="also write the TensorRT cache here")
    add_table_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``kldiv demo``."""
    from .._io import check_writable
    from ..cachefile import write_cache
    from ..defaults import NUM_BINS
    from ..examples import lenet_calibration_data, lenet_model_path
    from ..pipeline import collect_histograms

    check_table_options(args, NUM_BINS)
    if args.out is not None:
        check_writable(args.out, force=args.force, inputs=[lenet_model_path()], what="--out")
    batches = lenet_calibration_data()
    bar, on_batch = _progress(len(batches), quiet(args))
    try:
        collector = collect_histograms(lenet_model_path(), batches, on_batch=on_batch)
    finally:
        if bar is not None:
            bar.close()
    results, table = thresholds_and_table(collector, args)
    if not quiet(args):
        print("kldiv demo: LeNet-5 trained on scikit-learn's digits (kldiv/examples), "
              f"preset {args.preset!r}, method {args.method!r}")
        print(format_summary(results, collector, table))
    if args.out is not None:
        write_cache(table, args.out, force=args.force)
        print(f"wrote {args.out}")
    elif quiet(args):
        print(f"{len(table)} tensors calibrated ({table.header.text}); nothing written")
    return 0
