"""``kldiv calibrate``: ONNX model + calibration data → TensorRT calibration cache.

A thin shell over :func:`kldiv.pipeline.collect_histograms`,
:func:`~kldiv.pipeline.choose_thresholds` and :func:`~kldiv.pipeline.build_table`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

from ..defaults import (
    CLIP_WARN_FRACTION,
    DEFAULT_LEGACY_CUTOFF,
    DEFAULT_LEGACY_QUANTILE,
    DEFAULT_METHOD,
    DEFAULT_PRESET,
    DEFAULT_RANGE_POLICY,
    DEFAULT_TRT_VERSION,
    NUM_BINS,
)
from ..errors import DataSourceError, PresetError
from ..thresholds import METHODS, check_method_options
from ._data_args import add_data_options

__all__ = [
    "add_table_options", "format_summary", "method_options", "register", "run",
    "thresholds_and_table",
]


def _fraction(text: str) -> float:
    """A number in (0, 1] (the legacy calibrator's quantile and cutoff)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is outside (0, 1]")
    return value


def add_table_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``calibrate`` and ``demo``: how thresholds and the header are made."""
    p.add_argument("--preset", default=DEFAULT_PRESET,
                   help=f"entropy preset (default {DEFAULT_PRESET}; see kldiv.entropy.PRESETS)")
    p.add_argument("--method", default=DEFAULT_METHOD,
                   choices=tuple(METHODS),
                   help=f"threshold method (default {DEFAULT_METHOD})")
    p.add_argument("--percentile", type=float, default=None,
                   help="percentile for --method percentile (default kldiv.defaults)")
    p.add_argument("--quantile", type=_fraction, default=None,
                   help=f"quantile for --method legacy, in (0, 1] (default "
                        f"{DEFAULT_LEGACY_QUANTILE}, TensorRT's sampleINT8)")
    p.add_argument("--regression-cutoff", type=_fraction, default=None,
                   help=f"regression cutoff for --method legacy (default "
                        f"{DEFAULT_LEGACY_CUTOFF}; below 1.0 is refused: its effect is unknown)")
    p.add_argument("--trt-version", default=DEFAULT_TRT_VERSION,
                   help=f"TensorRT version whose cache header is written (default "
                        f"{DEFAULT_TRT_VERSION})")
    p.add_argument("--algorithm", default=None,
                   help="header algorithm (entropy2, entropy, minmax; default from --method)")
    p.add_argument("--no-activation-bounds", action="store_true",
                   help="search Clip/ReLU6 outputs too, instead of writing their bound as "
                        "TensorRT does (tensorrt preset)")
    p.add_argument("--no-pooling-inherits", action="store_true",
                   help="search pooling outputs too, instead of giving them their input's "
                        "scale as TensorRT does (tensorrt preset)")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--quiet", "-q", action="store_true",
                   help="no progress bar and no table; one line on success")


def register(subparsers: Any) -> None:
    """Add ``kldiv calibrate`` to the CLI."""
    p = subparsers.add_parser(
        "calibrate",
        help="calibrate an ONNX model with onnxruntime and write a TensorRT cache",
        description=(
            "Run MODEL with onnxruntime over calibration data, histogram every activation "
            "TensorRT calibrates, choose thresholds and write a TensorRT calibration cache. "
            "The output appears only when complete."
        ),
    )
    p.add_argument("model", nargs="?", help="the .onnx model (not needed with --from-histograms)")
    p.add_argument("--out", "-o", required=True, help="the calibration cache to write")
    p.add_argument("--save-histograms", metavar="H.npz",
                   help="also save the histograms (recompute later with --from-histograms)")
    p.add_argument("--from-histograms", metavar="H.npz",
                   help="skip the model: recompute thresholds from saved histograms")
    p.add_argument("--provenance", metavar="FILE.json",
                   help="also write the provenance (model hash, data fingerprint ...) as JSON")
    p.add_argument("--range-policy", default=DEFAULT_RANGE_POLICY,
                   choices=("pow2", "append", "global"),
                   help=f"histogram range policy (default {DEFAULT_RANGE_POLICY})")
    p.add_argument("--num-bins", type=int, default=NUM_BINS, help=f"bins (default {NUM_BINS})")
    p.add_argument("--drop-nonfinite", action="store_true",
                   help="skip NaN/Inf activations instead of stopping with an error")
    add_data_options(p, data_help="calibration data")
    add_table_options(p)
    p.set_defaults(func=run)


def _progress(total: int | None, quiet: bool) -> tuple[Any, Any]:
    """A tqdm bar on stderr (off when not a terminal or quiet) and its callback."""
    if quiet or not sys.stderr.isatty():
        return None, None
    try:
        from tqdm import tqdm
    except ImportError:
        return None, None
    bar = tqdm(total=total, unit="batch", file=sys.stderr, desc="calibrating", leave=False)

    def on_batch(index: int, samples: int) -> None:
        bar.update(1)
        bar.set_postfix(samples=samples, refresh=False)

    return bar, on_batch


def method_options(args: argparse.Namespace) -> dict[str, Any]:
    """The threshold method's options from ``--percentile/--quantile/...``, checked (raises
    :class:`~kldiv.errors.PresetError` before any model runs)."""
    options: dict[str, Any] = {}
    if args.method == "percentile" and args.percentile is not None:
        options["percentile"] = args.percentile
    legacy = {"quantile": getattr(args, "quantile", None),
              "regression_cutoff": getattr(args, "regression_cutoff", None)}
    given = {k: v for k, v in legacy.items() if v is not None}
    if given and args.method != "legacy":
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise PresetError(f"{flags} apply to --method legacy only")
    if args.method == "legacy":
        options.update(given)
    check_method_options(args.method, options)
    return options


def thresholds_and_table(collector: Any, args: argparse.Namespace) -> tuple[Any, Any]:
    """Per-tensor thresholds and the table, from parsed ``--preset/--method/...`` options."""
    from ..pipeline import calibrate_histograms

    options = method_options(args)
    if args.no_activation_bounds:
        options["activation_bounds"] = False
    if args.no_pooling_inherits:
        options["pooling_inherits"] = False
    return calibrate_histograms(
        collector, preset=args.preset, method=args.method, options=options,
        trt_version=args.trt_version, algorithm=args.algorithm,
    )


def format_summary(results: Mapping[str, Any], collector: Any, table: Any) -> str:
    """The summary table: tensor, histogram range, bin index, amax, scale, its hex, and the
    share of the values the threshold clips (``!`` above
    :data:`~kldiv.defaults.CLIP_WARN_FRACTION`)."""
    rows = [("tensor", "range R", "bin", "amax", "scale", "hex", "clipped")]
    flagged = []
    for name, r in results.items():
        clipped = float(r.clipped_fraction)
        flag = clipped > CLIP_WARN_FRACTION
        if flag:
            flagged.append(name)
        rows.append((
            name,
            f"{collector[name].amax:.6g}",
            "-" if r.bin_index is None else str(r.bin_index),
            f"{r.amax:.6g}",
            f"{float(r.scale):.6g}",
            table.hex(name),
            _percent(clipped) + (" !" if flag else "  "),
        ))
    width = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(width[i]) if i == 0 else c.rjust(width[i]) for i, c in enumerate(row))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in width))
    meta = collector.meta
    foot = [f"{len(results)} tensors; header {table.header.text}"]
    if flagged:
        foot.append(
            f"! {len(flagged)} tensor(s) clip more than {_percent(CLIP_WARN_FRACTION).strip()} "
            f"of their values: {', '.join(flagged)} (see docs/fidelity.md, \"Clipping\")"
        )
    if "model_sha256" in meta:
        foot.append(
            f"model {meta.get('model')} (sha256 {str(meta['model_sha256'])[:12]}); "
            f"{meta.get('batches')} batches, {meta.get('samples')} samples "
            f"(fingerprint {str(meta.get('data_fingerprint'))[:12]}); {meta.get('seconds')} s"
        )
    return "\n".join([*lines, *foot])


def _percent(fraction: float) -> str:
    """A clipped fraction as a short percentage (``0.0123%``, ``99.9%``, ``0%``)."""
    if fraction != fraction:  # NaN: no histogram
        return "-"
    if fraction == 0:
        return "0%"
    return f"{100 * fraction:.3g}%"


def run(args: argparse.Namespace) -> int:
    """Entry point of ``kldiv calibrate``."""
    from .._io import atomic_write_text, check_writable
    from ..cachefile import write_cache
    from ..collect import HistogramCollector
    from ..pipeline import collect_histograms
    from ._data_args import batch_axes_from_args, model_batch_axes, source_from_args

    method_options(args)  # bad method options fail before any model runs
    outputs = [args.out, args.save_histograms, args.provenance]
    for path in outputs:
        if path is not None:
            check_writable(path, force=args.force)
    if len({p for p in outputs if p is not None}) != sum(p is not None for p in outputs):
        raise DataSourceError("--out, --save-histograms and --provenance must be different files")
    if args.from_histograms:
        collector = HistogramCollector.load(args.from_histograms)
    else:
        if not args.model or not (args.data or args.data_loader_script):
            raise DataSourceError(
                "give MODEL and --data PATH or --data-loader-script FILE.py (or "
                "--from-histograms H.npz to skip the model)"
            )
        declared = batch_axes_from_args(args)
        source = source_from_args(
            args, batch_axes=model_batch_axes(args.model, declared), limit=False
        )
        total = len(source) if hasattr(source, "__len__") else None
        if total is not None and args.max_batches is not None:
            total = min(total, args.max_batches)
        bar, on_batch = _progress(total, args.quiet)
        try:
            collector = collect_histograms(
                args.model, source, num_bins=args.num_bins, range_policy=args.range_policy,
                max_batches=args.max_batches,
                nonfinite="drop" if args.drop_nonfinite else "raise", on_batch=on_batch,
                batch_axes=declared,
            )
        finally:
            if bar is not None:
                bar.close()
    results, table = thresholds_and_table(collector, args)
    if args.from_histograms:
        table.provenance["histograms"] = str(args.from_histograms)
    if args.save_histograms:
        collector.save(args.save_histograms, force=args.force)
    if args.provenance:
        atomic_write_text(args.provenance,
                          json.dumps(table.provenance, indent=2, sort_keys=True) + "\n",
                          force=args.force)
    write_cache(table, args.out, force=args.force)
    if args.quiet:
        print(f"wrote {args.out} ({len(table)} tensors, {table.header.text})")
    else:
        print(format_summary(results, collector, table))
        print(f"wrote {args.out}")
    return 0
