"""Check a quantized model without TensorRT: FP32 vs Q/DQ on onnxruntime's CPU kernels.

:func:`evaluate` runs the FP32 model and its Q/DQ copy (see :func:`kldiv.qdq.to_qdq_onnx`)
batch by batch on the same data and reports, the way TensorRT's sampleINT8 does:

- **top-k agreement with FP32**: the fraction of samples whose FP32 top-1 class is among the
  quantized model's top-k classes (top-1 agreement = same predicted class);
- **top-k accuracy** of both models when labels are given;
- the ONNX Runtime integer kernels the Q/DQ model actually ran (``QLinearConv``, ``QGemm``
  ...), so "INT8" is not just a claim.

Only one batch of outputs is held at a time (the per-sample results are kept: a few integers).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .defaults import DEFAULT_TOPK
from .errors import DataSourceError, ModelError

__all__ = ["EvaluationReport", "evaluate", "integer_ops", "topk_hits"]

logger = logging.getLogger(__name__)

#: ONNX Runtime op types that compute in integers.
_INT_OPS = ("QLinear", "QGemm", "MatMulInteger", "ConvInteger", "QAttention", "DynamicQuantize")


@dataclass
class EvaluationReport:
    """Agreement of a quantized model with its FP32 original (and accuracy when labels exist).

    Attributes
    ----------
    n : int
        Samples evaluated.
    topk : tuple of int
        The k values reported.
    agreement : dict
        k -> fraction of samples whose FP32 top-1 class is in the quantized model's top-k.
    fp32_accuracy, quantized_accuracy : dict or None
        k -> top-k accuracy against the labels (None without labels).
    max_abs_diff : float
        Largest absolute difference between the two models' outputs.
    integer_ops : dict
        ONNX Runtime integer op type -> count in the optimized quantized graph.
    name : str
        What was evaluated (shown in the table).
    """

    n: int
    topk: tuple[int, ...]
    agreement: dict[int, float]
    fp32_accuracy: dict[int, float] | None = None
    quantized_accuracy: dict[int, float] | None = None
    max_abs_diff: float = 0.0
    integer_ops: dict[str, int] = field(default_factory=dict)
    name: str = "quantized"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serializable dict."""
        return {
            "name": self.name,
            "n": self.n,
            "topk": list(self.topk),
            "agreement": {str(k): v for k, v in self.agreement.items()},
            "fp32_accuracy": None
            if self.fp32_accuracy is None
            else {str(k): v for k, v in self.fp32_accuracy.items()},
            "quantized_accuracy": None
            if self.quantized_accuracy is None
            else {str(k): v for k, v in self.quantized_accuracy.items()},
            "max_abs_diff": self.max_abs_diff,
            "integer_ops": dict(self.integer_ops),
        }

    def to_text(self) -> str:
        """Return a readable table."""
        rows = [("", *[f"top-{k}" for k in self.topk])]
        rows.append(("agreement with FP32", *[f"{self.agreement[k]:.2%}" for k in self.topk]))
        if self.fp32_accuracy is not None and self.quantized_accuracy is not None:
            rows.append(("FP32 accuracy", *[f"{self.fp32_accuracy[k]:.2%}" for k in self.topk]))
            rows.append(
                (f"{self.name} accuracy", *[f"{self.quantized_accuracy[k]:.2%}" for k in self.topk])
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
            )
            for r in rows
        ]
        ops = ", ".join(f"{k}×{v}" for k, v in sorted(self.integer_ops.items())) or "none"
        lines.append(f"samples: {self.n}; max |output difference|: {self.max_abs_diff:.4g}")
        lines.append(f"onnxruntime integer kernels: {ops}")
        return "\n".join(lines)


def _session(model: Any, *, optimized_path: str | None = None) -> Any:
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if optimized_path is not None:
        opts.optimized_model_filepath = optimized_path
    if isinstance(model, onnx.ModelProto):
        source: Any = model.SerializeToString()
    elif isinstance(model, (bytes, bytearray)):
        source = bytes(model)
    else:
        source = os.fspath(model)
        if not Path(source).is_file():
            raise ModelError(f"ONNX model {source} does not exist; check the path")
    try:
        return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        where = source if isinstance(source, str) else "the model given"
        raise ModelError(f"onnxruntime cannot load {where}: {exc}") from exc


def integer_ops(model: Any) -> dict[str, int]:
    """Return the integer op types (and counts) onnxruntime's CPU optimizer makes of ``model``."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        _session(model, optimized_path=path)
        optimized = onnx.load(path, load_external_data=False)
    counts = Counter(n.op_type for n in optimized.graph.node)
    return {k: v for k, v in counts.items() if k.startswith(_INT_OPS)}


def topk_hits(scores: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """Whether ``target`` is among the k largest scores of each row (ties: lowest index)."""
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    hits: np.ndarray = (top == target[:, None]).any(axis=1)
    return hits


def evaluate(
    fp32_model: Any,
    qdq_model: Any,
    data: Iterable[Any],
    labels: Sequence[int] | np.ndarray | None = None,
    *,
    topk: Sequence[int] = DEFAULT_TOPK,
    output: str | None = None,
    name: str = "INT8 (Q/DQ)",
) -> EvaluationReport:
    """Compare a Q/DQ model with its FP32 original on the same data (onnxruntime, CPU).

    Parameters
    ----------
    fp32_model, qdq_model : path, bytes or onnx.ModelProto
        The original model and its quantized copy.
    data : iterable
        Batches ``{input_name: array}`` (any kldiv data source).
    labels : array-like of int, optional
        One class per sample, in data order; enables accuracy.
    topk : sequence of int, optional
        The k values to report (default 1 and 5).
    output : str, optional
        Which model output holds the class scores (default: the first). Scores are reshaped
        to ``(batch, -1)``.
    name : str, optional
        Label of the quantized model in the table.

    Returns
    -------
    EvaluationReport

    Raises
    ------
    DataSourceError
        If the data is empty, or the labels do not match the number of samples.
    ModelError
        If a model cannot be loaded or run, or has no output named ``output``.
    """
    ks = tuple(sorted({int(k) for k in topk}))
    if not ks or ks[0] < 1:
        raise DataSourceError(f"topk must be positive integers, got {tuple(topk)}")
    s32 = _session(fp32_model)
    sq = _session(qdq_model)
    out_name = output or s32.get_outputs()[0].name
    if out_name not in {o.name for o in s32.get_outputs()}:
        raise ModelError(
            f"the model has no output {out_name!r}; outputs: {[o.name for o in s32.get_outputs()]}"
        )
    agree = {k: 0 for k in ks}
    top_fp32: list[np.ndarray] = []
    top_q: list[np.ndarray] = []
    n = 0
    max_diff = 0.0
    inputs = [i.name for i in s32.get_inputs()]
    for i, batch in enumerate(data):
        if not isinstance(batch, Mapping):
            if len(inputs) != 1:
                raise DataSourceError(
                    f"batch {i} is a bare array but the model has inputs {inputs}; give "
                    "batches as {input_name: array}"
                )
            batch = {inputs[0]: batch}
        try:
            a = s32.run([out_name], batch)[0]
            b = sq.run([out_name], batch)[0]
        except Exception as exc:
            raise ModelError(f"batch {i}: onnxruntime failed: {exc}") from exc
        a = a.reshape(len(a), -1)
        b = b.reshape(len(b), -1)
        ref = a.argmax(axis=1)
        for k in ks:
            agree[k] += int(topk_hits(b, ref, k).sum())
        if labels is not None:
            kmax = min(ks[-1], a.shape[1])
            top_fp32.append(np.argsort(-a, axis=1, kind="stable")[:, :kmax])
            top_q.append(np.argsort(-b, axis=1, kind="stable")[:, :kmax])
        max_diff = max(max_diff, float(np.max(np.abs(a - b))) if a.size else 0.0)
        n += len(a)
    if n == 0:
        raise DataSourceError("the evaluation data holds no samples; give at least one batch")
    report = EvaluationReport(
        n=n,
        topk=ks,
        agreement={k: agree[k] / n for k in ks},
        max_abs_diff=max_diff,
        integer_ops=integer_ops(qdq_model),
        name=name,
    )
    if labels is not None:
        y = np.asarray(labels).reshape(-1)
        if len(y) != n:
            raise DataSourceError(
                f"{len(y)} labels for {n} samples; give exactly one label per sample, in data order"
            )
        t32, tq = np.concatenate(top_fp32), np.concatenate(top_q)
        report.fp32_accuracy = {k: float((t32[:, :k] == y[:, None]).any(1).mean()) for k in ks}
        report.quantized_accuracy = {k: float((tq[:, :k] == y[:, None]).any(1).mean()) for k in ks}
    return report
