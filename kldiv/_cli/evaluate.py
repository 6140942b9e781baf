"""``kldiv evaluate``: FP32 vs the Q/DQ model built from a cache, on onnxruntime CPU."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..defaults import (
    DEFAULT_QDQ_BIAS,
    DEFAULT_QDQ_WEIGHTS,
    DEFAULT_RANKING_ROWS,
    DEFAULT_SUGGEST_MAX,
    DEFAULT_SUGGEST_TARGET,
    DEFAULT_TOPK,
)
from . import fraction_arg, positive_arg
from ._data_args import add_data_options

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``evaluate`` subcommand."""
    p = subparsers.add_parser(
        "evaluate",
        help="compare the Q/DQ (INT8) model built from a cache with FP32 on onnxruntime",
        description=(
            "Insert the cache's scales into MODEL as QuantizeLinear/DequantizeLinear nodes "
            "(int8, zero point 0, per-channel weights), run FP32 and Q/DQ with onnxruntime on "
            "CPU and print, per output, cosine similarity, SQNR, max/mean absolute error and "
            "relative L2 error; top-k agreement with FP32 (and accuracy with --labels) for "
            "[N, classes] outputs. --per-tensor ranks the tensors by the error each causes "
            "alone and suggests which to leave in float. Without MODEL/--cache/--data it runs "
            "on the embedded LeNet example."
        ),
    )
    p.add_argument("model", nargs="?", help="FP32 ONNX model (default: the embedded LeNet)")
    p.add_argument("--cache", "--table", dest="cache", help="TensorRT calibration cache")
    add_data_options(p, data_help="evaluation data")
    q = p.add_argument_group("metrics")
    q.add_argument(
        "--labels", help="labels, one class index per sample in data order: .npy, .npz (key "
        "'y') or text (one integer per line); checked before the run"
    )
    q.add_argument("--output", help="the output holding class scores [N, classes] (default: "
                   "the first, when it has that shape); every output gets the other metrics")
    q.add_argument("--topk", type=int, nargs="+", default=list(DEFAULT_TOPK),
                   help=f"k values (default {' '.join(map(str, DEFAULT_TOPK))}); only k < "
                   "classes are shown")
    q.add_argument("--json", action="store_true", help="print the results as JSON")
    z = p.add_argument_group("Q/DQ model")
    z.add_argument(
        "--placement",
        choices=("inputs", "all", "both"),
        default="both",
        help="Q/DQ on the inputs of weighted ops only (TensorRT's explicit-quantization "
        "placement), on every calibrated tensor (like implicit INT8; onnxruntime then runs "
        "QLinearConv/QGemm), or both, one table each (default)",
    )
    z.add_argument("--weights", choices=("per_channel", "per_tensor"),
                   default=DEFAULT_QDQ_WEIGHTS)
    z.add_argument("--bias", choices=("float", "int32"), default=DEFAULT_QDQ_BIAS)
    z.add_argument(
        "--exclude", nargs="+", default=[], metavar="NAME|OP_TYPE",
        help="tensors, nodes or op types to leave in float: no Q/DQ in the model, and left "
        "out of --out's cache (TensorRT then runs those layers in higher precision)",
    )
    z.add_argument("--save-qdq", type=Path,
                   help="also write the Q/DQ model here (atomic; the first placement evaluated)")
    z.add_argument("--out", "-o", type=Path,
                   help="write the cache without the --exclude tensors here (atomic)")
    z.add_argument("--force", action="store_true",
                   help="overwrite --save-qdq / --out; apply a table the coverage check refuses")
    r = p.add_argument_group("which tensor hurts")
    r.add_argument(
        "--per-tensor", action="store_true",
        help="rank the quantized activations by the output error each causes alone (one run "
        "per tensor, the rest in float) and suggest an exclusion set",
    )
    r.add_argument("--per-tensor-batches", type=positive_arg, default=None, metavar="N",
                   help="batches used for the ranking (held in memory; default: all)")
    r.add_argument("--suggest-target", type=fraction_arg, default=DEFAULT_SUGGEST_TARGET,
                   metavar="F", help="fraction of the loss the suggested exclusions should "
                   f"recover (default {DEFAULT_SUGGEST_TARGET})")
    r.add_argument("--suggest-max", type=positive_arg, default=DEFAULT_SUGGEST_MAX, metavar="N",
                   help="most tensors the suggestion may leave in float "
                   f"(default {DEFAULT_SUGGEST_MAX})")
    r.add_argument("--rows", type=positive_arg, default=DEFAULT_RANKING_ROWS,
                   help=f"ranking rows shown (default {DEFAULT_RANKING_ROWS})")
    p.set_defaults(func=run)


def _labels(path: str) -> np.ndarray:
    from ..errors import DataSourceError

    p = Path(path)
    if not p.is_file():
        raise DataSourceError(f"labels file {p} does not exist")
    try:
        if p.suffix == ".npy":
            return np.asarray(np.load(p, allow_pickle=False))
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as f:
                for key in ("y", "labels", "label"):
                    if key in f:
                        return np.asarray(f[key])
            raise DataSourceError(f"{p} has no array named 'y', 'labels' or 'label'")
        return np.loadtxt(p, dtype=np.int64, ndmin=1)
    except DataSourceError:
        raise
    except (ValueError, OSError) as exc:
        raise DataSourceError(
            f"{p}: cannot read labels ({exc}); give .npy/.npz or one integer per line"
        ) from exc


def _bar(total: int, desc: str, quiet: bool) -> tuple[Any, Any]:
    if quiet or not sys.stderr.isatty():
        return None, None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None, None
    bar = tqdm(total=total, unit="run", file=sys.stderr, desc=desc, leave=False)

    def step(done: int, total_: int) -> None:
        bar.total = total_
        bar.n = done
        bar.refresh()

    return bar, step


def run(args: argparse.Namespace) -> int:
    """Run ``kldiv evaluate``."""
    from .._io import atomic_write_bytes, check_writable
    from ..cachefile import read_cache, write_cache
    from ..data import count_samples
    from ..errors import DataSourceError
    from ..evaluate import (
        _classification_output,
        _session,
        _static_classes,
        check_labels,
        evaluate_many,
        rank_tensors,
        resolve_exclusions,
    )
    from ..qdq import load_onnx, to_qdq_onnx
    from ..runners import input_specs
    from ._data_args import batch_axes_from_args, check_data_args, source_from_args

    # -- every option and input checked before anything runs ------------------------------
    for path in (args.save_qdq, args.out):
        if path is not None:
            check_writable(path, force=args.force)
    if args.save_qdq is not None and args.out is not None and args.save_qdq == args.out:
        raise DataSourceError("--save-qdq and --out must be different files")
    check_data_args(args, required=args.model is not None)
    labels = None
    if args.model is None:
        from .. import examples

        model_path: Any = examples.lenet_model_path()
        data: Any = None
        if not (args.data or args.data_loader_script):
            data, labels = examples.lenet_eval_data()
        if args.cache is None:
            from ..pipeline import calibrate

            table = calibrate(model_path, examples.lenet_calibration_data()).table
        else:
            table = read_cache(args.cache)
    else:
        model_path = args.model
        if args.cache is None:
            raise DataSourceError("give the calibration cache: --cache FILE")
        table = read_cache(args.cache)
        data = None
    fp32 = load_onnx(model_path)
    session = _session(fp32)
    declared = batch_axes_from_args(args)
    specs = input_specs(session, fp32, declared)
    axes = {s.name: s.batch_axis for s in specs}
    source = source_from_args(args, batch_axes=axes)
    if source is not None:
        data = source
    excluded = resolve_exclusions(fp32, args.exclude)
    if args.labels is not None:
        labels = _labels(args.labels)
    if labels is not None:
        cls_out = _classification_output(session, args.output, True, None)
        classes = _static_classes(session, cls_out)[1] if cls_out else None
        labels = check_labels(labels, samples=count_samples(data, axes), classes=classes,
                              where=str(args.labels or "labels"))

    # -- Q/DQ models and their evaluation ---------------------------------------------------
    placements = ("inputs", "all") if args.placement == "both" else (args.placement,)
    models = {}
    for placement in placements:
        models[f"INT8 Q/DQ ({placement})"] = to_qdq_onnx(
            fp32, table, weights=args.weights, placement=placement, bias=args.bias,
            exclude=excluded, force=args.force,
        )
    reports = evaluate_many(session, models, data, labels, topk=args.topk, output=args.output,
                            batch_axes=declared)  # the FP32 session above, not a second one
    if args.save_qdq is not None:
        atomic_write_bytes(args.save_qdq, next(iter(models.values())).SerializeToString(),
                           force=args.force)
    written_cache = None
    if args.out is not None:
        kept = table.without(excluded)
        write_cache(kept, args.out, force=args.force)
        written_cache = (len(kept), len(table))

    # -- which tensor hurts -----------------------------------------------------------------
    ranking = None
    verified = None
    if args.per_tensor:
        first_name, first_model = next(iter(models.items()))
        bar, step = _bar(0, "ranking tensors", bool(getattr(args, "quiet", False)))
        try:
            ranking = rank_tensors(
                fp32, first_model, data, output=args.output, batch_axes=declared,
                max_batches=args.per_tensor_batches, target=args.suggest_target,
                max_suggest=args.suggest_max, on_step=step,
            )
        finally:
            if bar is not None:
                bar.close()
        placement = placements[0]
        suggested = to_qdq_onnx(
            fp32, table, weights=args.weights, placement=placement, bias=args.bias,
            exclude=excluded | set(ranking.suggested),
            force=args.force,
        )
        name = f"INT8 Q/DQ ({placement}), suggested tensors in float"
        verified = evaluate_many(fp32, {name: suggested}, data, labels, topk=args.topk,
                                 output=args.output, batch_axes=declared,
                                 max_batches=args.per_tensor_batches)[name]

    # -- report -----------------------------------------------------------------------------
    if args.json:
        doc: dict[str, Any] = {
            "reports": [r.to_dict() for r in reports.values()],
            "excluded": sorted(excluded),
        }
        if ranking is not None and verified is not None:
            doc["per_tensor"] = ranking.to_dict()
            doc["suggested_report"] = verified.to_dict()
        if written_cache is not None:
            doc["cache_written"] = {"path": str(args.out), "tensors": written_cache[0],
                                    "of": written_cache[1]}
        print(json.dumps(doc, indent=2))
        return 0
    for placement, rep in zip(placements, reports.values()):
        print(f"{rep.name}: {_PLACEMENT_TEXT[placement]}")
        print(rep.to_text() + "\n")
    if excluded:
        print(f"left in float (--exclude; with the layers writing and reading them): "
              f"{len(excluded)} tensors: "
              f"{', '.join(sorted(excluded)[:12])}{' ...' if len(excluded) > 12 else ''}")
    if ranking is not None and verified is not None:
        print(ranking.to_text(max_rows=args.rows))
        print()
        print(f"{verified.name} (real Q/DQ model, onnxruntime):")
        print(verified.to_text())
    if written_cache is not None:
        print(f"wrote {args.out} ({written_cache[0]} of {written_cache[1]} tensors)")
    return 0


_PLACEMENT_TEXT = {
    "inputs": "Q/DQ on the inputs of Conv/Gemm/MatMul, as TensorRT >= 10.1 expects them",
    "all": "Q/DQ on every calibrated tensor, like implicit INT8 (op+ReLU fused)",
}
