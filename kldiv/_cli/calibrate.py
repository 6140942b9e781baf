"""``kldiv calibrate``: ONNX model + calibration data → TensorRT calibration cache.

A thin shell over :func:`kldiv.pipeline.calibrate` (or, with ``--from-histograms``,
:func:`kldiv.pipeline.calibrate_histograms`): it parses the options, checks them and the
output paths before any work, shows a progress bar, and prints and writes the
:class:`~kldiv.pipeline.Calibration` it gets back.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..defaults import (
    CLIP_WARN_FRACTION,
    DEFAULT_LEGACY_CUTOFF,
    DEFAULT_LEGACY_QUANTILE,
    DEFAULT_MAX_MEMORY,
    DEFAULT_METHOD,
    DEFAULT_OVERLAP,
    DEFAULT_PRESET,
    DEFAULT_RANGE_POLICY,
    DEFAULT_SCHEDULER_TIMEOUT,
    DEFAULT_TRT_VERSION,
    NUM_BINS,
)
from ..entropy import PRESETS
from ..errors import DataSourceError, KldivError, PresetError
from ..thresholds import METHODS, check_percentile
from . import algorithm_arg, fraction_arg, trt_version_arg, whole_number_arg
from ._data_args import add_data_options

__all__ = [
    "add_table_options",
    "check_table_options",
    "format_summary",
    "method_options",
    "quiet",
    "register",
    "run",
    "table_kwargs",
]


def _num_bins(text: str) -> int:
    from .._checks import check_num_bins

    try:
        return check_num_bins(whole_number_arg(text), option="--num-bins")
    except KldivError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _percentile(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 99.99, got {text!r}") from None
    try:
        return check_percentile(value, option="--percentile")
    except KldivError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def quiet(args: argparse.Namespace) -> bool:
    """Whether ``-q`` was given (to the command or before it)."""
    return bool(getattr(args, "quiet", False))


def _bytes(text: str) -> int | None:
    t = text.strip().lower()
    if t in ("none", "0", "inf", "unlimited"):
        return None
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    t = t.removesuffix("ib").removesuffix("b")
    scale = units.get(t[-1:], 1)
    try:
        value = float(t[:-1] if t[-1:] in units else t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a size such as 512M or 2G (or 'none'), got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"the size must be positive, got {text!r}")
    return int(value)


def add_table_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``calibrate`` and ``demo``: how thresholds and the header are made."""
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=tuple(PRESETS),
                   help=f"entropy preset: {', '.join(PRESETS)} (default {DEFAULT_PRESET}; "
                        "see docs/threshold-search.md)")
    p.add_argument("--method", default=DEFAULT_METHOD,
                   choices=tuple(METHODS),
                   help=f"threshold method (default {DEFAULT_METHOD})")
    p.add_argument("--percentile", type=_percentile, default=None,
                   help="percentile for --method percentile, above 0 and at most 100 "
                        "(default kldiv.defaults.DEFAULT_PERCENTILE)")
    p.add_argument("--quantile", type=fraction_arg, default=None,
                   help=f"quantile for --method legacy, in (0, 1] (default "
                        f"{DEFAULT_LEGACY_QUANTILE}, TensorRT's sampleINT8)")
    p.add_argument("--regression-cutoff", type=fraction_arg, default=None,
                   help=f"regression cutoff for --method legacy (default "
                        f"{DEFAULT_LEGACY_CUTOFF}; below 1.0 is refused: its effect is unknown)")
    p.add_argument("--trt-version", default=DEFAULT_TRT_VERSION, type=trt_version_arg,
                   help=f"TensorRT version whose cache header is written, 5.x to 10.x, or the "
                        f"header number a newer TensorRT writes (default {DEFAULT_TRT_VERSION})")
    p.add_argument("--algorithm", default=None, type=algorithm_arg,
                   help="calibrator named in the header: entropy2, entropy, minmax or legacy "
                        "(default from --method: minmax for minmax, legacy for legacy, else "
                        "entropy2; required for percentile and mse, which no TensorRT "
                        "calibrator computes)")
    p.add_argument("--no-activation-bounds", action="store_true",
                   help="search Clip/ReLU6 outputs too, instead of writing their bound as "
                        "TensorRT does (tensorrt preset)")
    p.add_argument("--no-pooling-inherits", action="store_true",
                   help="search pooling outputs too, instead of giving them their input's "
                        "scale as TensorRT does (tensorrt preset)")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")


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
    p.add_argument("--num-bins", type=_num_bins, default=NUM_BINS,
                   help=f"bins (default {NUM_BINS}; at most kldiv.defaults.MAX_NUM_BINS)")
    p.add_argument("--drop-nonfinite", action="store_true",
                   help="skip NaN/Inf activations instead of stopping with an error (counted "
                        "per tensor in the summary and the provenance)")
    p.add_argument("--max-memory", type=_bytes, default=DEFAULT_MAX_MEMORY, metavar="SIZE",
                   help="activations held at once, e.g. 512M, 2G, or 'none' (default "
                        f"{DEFAULT_MAX_MEMORY // 2**20}M); above it the model runs in stages, "
                        "with the same histograms")
    p.add_argument("--overlap", action=argparse.BooleanOptionalAction, default=DEFAULT_OVERLAP,
                   help="run the model on the next batch while this one's histograms fill, "
                        "where two batches fit --max-memory (pays on machines whose cores the "
                        "model run leaves idle; same histograms)")
    d = p.add_argument_group("distributed (Dask; pip install 'kldiv[dist]')")
    d.add_argument("--workers", type=int, metavar="N",
                   help="shard the data over N worker processes on this machine (a Dask "
                        "LocalCluster); the histograms equal the one-process ones")
    d.add_argument("--scheduler", metavar="ADDRESS",
                   help="shard the data over the workers of a running Dask scheduler "
                        "(tcp://host:8786); the model path must exist on every worker")
    d.add_argument("--scheduler-timeout", type=float, default=DEFAULT_SCHEDULER_TIMEOUT,
                   metavar="S", help="seconds to wait for --scheduler to answer (default "
                                     f"{DEFAULT_SCHEDULER_TIMEOUT:g})")
    d.add_argument("--shards", type=int, metavar="K",
                   help="shards after the first batch (default: 2 per worker)")
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
    """The threshold method's options from ``--percentile/--quantile/...``.

    Raises :class:`~kldiv.errors.PresetError` for a flag of another method; the values are
    checked by :func:`check_table_options`, before any model runs.
    """
    options: dict[str, Any] = {}
    if args.percentile is not None and args.method != "percentile":
        raise PresetError(
            f"--percentile applies to --method percentile only (the method is {args.method}); "
            "drop --percentile or add --method percentile"
        )
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
    return options


def _table_options(args: argparse.Namespace) -> dict[str, Any]:
    options = method_options(args)
    if args.no_activation_bounds:
        options["activation_bounds"] = False
    if args.no_pooling_inherits:
        options["pooling_inherits"] = False
    return options


def check_table_options(args: argparse.Namespace, num_bins: int | None) -> None:
    """Before any work: the method, preset, options and header options fit together."""
    from .._checks import check_header_choice, check_options

    check_options(method=args.method, preset=args.preset, options=_table_options(args),
                  num_bins=num_bins)
    check_header_choice(args.trt_version, args.algorithm, args.method)


def table_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`kldiv.calibrate` and :func:`kldiv.calibrate_histograms`.

    Those given by ``--preset/--method/--percentile/.../--trt-version/--algorithm``.
    """
    return {"preset": args.preset, "method": args.method, "options": _table_options(args),
            "trt_version": args.trt_version, "algorithm": args.algorithm}


def format_summary(calibration: Any) -> str:
    """The summary table of a :class:`~kldiv.pipeline.Calibration`.

    Per tensor: histogram range, bin index, amax, scale, its hex, the share of the values the
    threshold clips (``!`` above :data:`~kldiv.defaults.CLIP_WARN_FRACTION`) and, when NaN/Inf
    values were dropped, how many.
    """
    results, collector, table = calibration.results, calibration.histograms, calibration.table
    dropped: dict[str, int] = dict(getattr(collector, "dropped", {}) or {})
    dropped.update(collector.meta.get("nonfinite_dropped", {}))
    show_dropped = any(dropped.values())
    rows: list[tuple[str, ...]] = [("tensor", "range R", "bin", "amax", "scale", "hex", "clipped")]
    if show_dropped:
        rows[0] += ("NaN/Inf dropped",)
    flagged = []
    for name, r in results.items():
        clipped = float(r.clipped_fraction)
        flag = clipped > CLIP_WARN_FRACTION
        if flag:
            flagged.append(name)
        row: tuple[str, ...] = (
            name,
            f"{collector[name].amax:.6g}",
            "-" if r.bin_index is None else str(r.bin_index),
            f"{r.amax:.6g}",
            f"{float(r.scale):.6g}",
            table.hex(name),
            _percent(clipped) + (" !" if flag else "  "),
        )
        if show_dropped:
            row += (f"{dropped.get(name, 0):,}",)
        rows.append(row)
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
    if show_dropped:
        hit = {n: c for n, c in dropped.items() if c}
        foot.append(f"--drop-nonfinite: {sum(hit.values()):,} NaN/Inf values dropped in "
                    f"{len(hit)} tensors (listed in the provenance, nonfinite_dropped)")
    if "model_sha256" in meta:
        foot.append(
            f"model {meta.get('model')} (sha256 {str(meta['model_sha256'])[:12]}); "
            f"{meta.get('batches')} batches, {meta.get('samples')} samples "
            f"(fingerprint {str(meta.get('data_fingerprint'))[:12]}); {meta.get('seconds')} s"
            + (f"; peak memory {meta['peak_memory_mb']:.0f} MB"
               if meta.get("peak_memory_mb") is not None else "")
        )
    return "\n".join([*lines, *foot])


def _calibrate_here(args: argparse.Namespace) -> Any:
    """One process: :func:`kldiv.pipeline.calibrate` with a progress bar."""
    from ..pipeline import calibrate
    from ._data_args import batch_axes_from_args, model_batch_axes, source_from_args

    declared = batch_axes_from_args(args)
    source = source_from_args(args, batch_axes=model_batch_axes(args.model, declared),
                              limit=False)
    total = len(source) if hasattr(source, "__len__") else None
    if total is not None and args.max_batches is not None:
        total = min(total, args.max_batches)
    bar, on_batch = _progress(total, quiet(args))
    try:
        return calibrate(
            args.model, source, num_bins=args.num_bins, range_policy=args.range_policy,
            max_batches=args.max_batches, max_memory=args.max_memory, overlap=args.overlap,
            nonfinite="drop" if args.drop_nonfinite else "raise", on_batch=on_batch,
            batch_axes=declared,
            save_histograms=args.save_histograms, force=args.force, **table_kwargs(args),
        )
    finally:
        if bar is not None:
            bar.close()


def _calibrate_distributed(args: argparse.Namespace) -> Any:
    """Histograms sharded over Dask workers (:func:`kldiv.distributed.calibrate_distributed`).

    A progress bar runs over all shards.
    """
    from ..distributed import calibrate_distributed
    from ._data_args import preprocess_from_args

    if args.data_loader_script or args.batch_axis:
        raise DataSourceError(
            "--data-loader-script and --batch-axis run in one process; drop --workers/"
            "--scheduler, or give --data"
        )
    if args.workers is not None and args.scheduler is not None:
        raise DataSourceError("give --workers N or --scheduler ADDRESS, not both")
    if args.range_policy != "pow2":
        raise DataSourceError(
            f"--range-policy {args.range_policy} is not sharded; use pow2 (the default) with "
            "--workers/--scheduler, or run in one process"
        )
    bar, _ = _progress(None, quiet(args))

    def on_progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()

    try:
        return calibrate_distributed(
            args.model, args.data, workers=args.workers, scheduler=args.scheduler,
            shards=args.shards, timeout=args.scheduler_timeout, num_bins=args.num_bins,
            batch_size=args.batch_size,
            preprocess=preprocess_from_args(args), max_batches=args.max_batches,
            max_memory=args.max_memory,
            nonfinite="drop" if args.drop_nonfinite else "raise", on_progress=on_progress,
            save_histograms=args.save_histograms, force=args.force, **table_kwargs(args),
        )
    finally:
        if bar is not None:
            bar.close()


def _percent(fraction: float) -> str:
    """A clipped fraction as a short percentage (``0.0123%``, ``99.9%``, ``0%``)."""
    if fraction != fraction:  # NaN: no histogram
        return "-"
    if fraction == 0:
        return "0%"
    return f"{100 * fraction:.3g}%"


def run(args: argparse.Namespace) -> int:
    """Entry point of ``kldiv calibrate``."""
    from .._io import atomic_write_text, check_writable, same_file
    from ..cachefile import write_cache
    from ..pipeline import calibrate_histograms
    from ._data_args import check_data_args

    if args.from_histograms and (args.model or args.data or args.data_loader_script):
        given = " and ".join(x for x, v in (("MODEL", args.model), ("--data", args.data),
                                            ("--data-loader-script", args.data_loader_script))
                             if v)
        verb = "were" if " and " in given else "was"
        raise DataSourceError(
            f"--from-histograms replaces running the model, but {given} {verb} given too; drop "
            f"{given} to recompute from {args.from_histograms}, or drop --from-histograms"
        )
    if not args.from_histograms and (
        not args.model or not (args.data or args.data_loader_script)
    ):
        raise DataSourceError(
            "give MODEL and --data PATH or --data-loader-script FILE.py (or --from-histograms "
            "H.npz to skip the model)"
        )
    check_data_args(args, required=False)
    check_table_options(args, None if args.from_histograms else args.num_bins)
    outputs = {"--out": args.out, "--save-histograms": args.save_histograms,
               "--provenance": args.provenance}
    script = (args.data_loader_script or "").rpartition(".py")
    inputs = [args.model, args.data, args.from_histograms, args.preprocess,
              script[0] + script[1] if script[1] else None]
    for what, path in outputs.items():
        if path is not None:
            check_writable(path, force=args.force, inputs=inputs, what=what)
    written = [p for p in outputs.values() if p is not None]
    if any(same_file(a, b) for i, a in enumerate(written) for b in written[i + 1:]):
        raise DataSourceError("--out, --save-histograms and --provenance must be different files")
    if args.from_histograms:
        calibration = calibrate_histograms(args.from_histograms, **table_kwargs(args))
        if args.save_histograms:
            calibration.histograms.save(args.save_histograms, force=args.force)
    else:
        if args.workers is not None or args.scheduler is not None:
            calibration = _calibrate_distributed(args)
        else:
            calibration = _calibrate_here(args)
    table = calibration.table
    if args.provenance:
        atomic_write_text(args.provenance,
                          json.dumps(table.provenance, indent=2, sort_keys=True) + "\n",
                          force=args.force)
    write_cache(table, args.out, force=args.force)
    if quiet(args):
        dropped = sum(table.provenance.get("nonfinite_dropped", {}).values())
        note = f"; {dropped:,} NaN/Inf values dropped" if dropped else ""
        header = table.header.text if table.header is not None else "no header"
        print(f"wrote {args.out} ({len(table)} tensors, {header}{note})")
    else:
        print(format_summary(calibration))
        print(f"wrote {args.out}")
    return 0
