"""``kldiv evaluate``: FP32 vs the Q/DQ model built from a cache, on onnxruntime CPU."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..defaults import DEFAULT_QDQ_BIAS, DEFAULT_QDQ_WEIGHTS, DEFAULT_TOPK

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``evaluate`` subcommand."""
    p = subparsers.add_parser(
        "evaluate",
        help="compare the Q/DQ (INT8) model built from a cache with FP32 on onnxruntime",
        description=(
            "Insert the cache's scales into MODEL as QuantizeLinear/DequantizeLinear nodes "
            "(int8, zero point 0, per-channel weights), run FP32 and Q/DQ with onnxruntime on "
            "CPU, and print top-1/top-5 agreement with FP32 (and accuracy with --labels). "
            "Without MODEL/--cache/--data it runs on the embedded LeNet example."
        ),
    )
    p.add_argument("model", nargs="?", help="FP32 ONNX model (default: the embedded LeNet)")
    p.add_argument("--cache", "--table", dest="cache", help="TensorRT calibration cache")
    p.add_argument("--data", help="evaluation data: .npy/.npz folder or file, batch files")
    p.add_argument(
        "--labels", help="labels, one per sample in data order: .npy, .npz (key 'y') or text"
    )
    p.add_argument("--batch-size", type=int, default=None, help="re-cut the data into batches")
    p.add_argument("--output", help="model output holding class scores (default: the first)")
    p.add_argument("--topk", type=int, nargs="+", default=list(DEFAULT_TOPK),
                   help=f"k values (default {' '.join(map(str, DEFAULT_TOPK))})")
    p.add_argument(
        "--placement",
        choices=("inputs", "all", "both"),
        default="both",
        help="Q/DQ on the inputs of weighted ops only (TensorRT's explicit-quantization "
        "placement), on every calibrated tensor (like implicit INT8; onnxruntime then runs "
        "QLinearConv/QGemm), or both, one table each (default)",
    )
    p.add_argument("--weights", choices=("per_channel", "per_tensor"),
                   default=DEFAULT_QDQ_WEIGHTS)
    p.add_argument("--bias", choices=("float", "int32"), default=DEFAULT_QDQ_BIAS)
    p.add_argument(
        "--save-qdq",
        type=Path,
        help="also write the Q/DQ model here (atomic; the first placement evaluated)",
    )
    p.add_argument("--force", action="store_true", help="overwrite --save-qdq if it exists")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def _labels(path: str) -> np.ndarray:
    from ..errors import DataSourceError

    p = Path(path)
    if not p.is_file():
        raise DataSourceError(f"labels file {p} does not exist")
    if p.suffix == ".npy":
        labels: np.ndarray = np.load(p, allow_pickle=False)
        return labels
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as f:
            for key in ("y", "labels", "label"):
                if key in f:
                    found: np.ndarray = f[key]
                    return found
        raise DataSourceError(f"{p} has no array named 'y', 'labels' or 'label'")
    try:
        return np.loadtxt(p, dtype=np.int64, ndmin=1)
    except ValueError as exc:
        raise DataSourceError(f"{p}: labels must be one integer per line ({exc})") from exc


def run(args: argparse.Namespace) -> int:
    """Run ``kldiv evaluate``."""
    from .._io import atomic_write_bytes, check_writable
    from ..cachefile import read_cache
    from ..data import as_source
    from ..errors import DataSourceError
    from ..evaluate import evaluate
    from ..qdq import load_onnx, to_qdq_onnx

    if args.save_qdq is not None:
        check_writable(args.save_qdq, force=args.force)
    labels = None
    if args.model is None:
        from .. import examples

        model_path: Any = examples.lenet_model_path()
        data: Any = None
        if args.data is None:
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
    if args.data is not None:
        data = as_source(args.data, batch_size=args.batch_size)
    elif data is None:
        raise DataSourceError("give evaluation data: --data PATH")
    if args.labels is not None:
        labels = _labels(args.labels)

    fp32 = load_onnx(model_path)
    placements = ("inputs", "all") if args.placement == "both" else (args.placement,)
    reports = []
    for placement in placements:
        qdq = to_qdq_onnx(fp32, table, weights=args.weights, placement=placement, bias=args.bias)
        name = f"INT8 Q/DQ ({placement})"
        reports.append(evaluate(fp32, qdq, data, labels, topk=args.topk, output=args.output,
                                name=name))  # fmt: skip
        if args.save_qdq is not None and placement == placements[0]:
            atomic_write_bytes(args.save_qdq, qdq.SerializeToString(), force=args.force)
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        for placement, r in zip(placements, reports):
            print(f"{r.name}: {_PLACEMENT_TEXT[placement]}")
            print(r.to_text() + "\n")
    return 0


_PLACEMENT_TEXT = {
    "inputs": "Q/DQ on the inputs of Conv/Gemm/MatMul, as TensorRT >= 10.1 expects them",
    "all": "Q/DQ on every calibrated tensor, like implicit INT8 (op+ReLU fused)",
}
