"""Check a quantized model without TensorRT: FP32 vs Q/DQ on onnxruntime's CPU kernels.

:func:`evaluate` runs the FP32 model and its Q/DQ copy (see :func:`kldiv.qdq.to_qdq_onnx`)
batch by batch on the same data and reports, for any model:

- **per output**: cosine similarity, SQNR in dB (``10·log10(Σ fp32² / Σ (fp32 − int8)²)``),
  the largest and the mean absolute error, and the relative L2 error
  (``‖fp32 − int8‖ / ‖fp32‖``), over every element of every sample;
- **classification agreement and accuracy** only where they mean something: an output of
  shape ``[N, classes]`` (2-D, one row per sample, at least two classes); top-k only for
  ``k < classes``; labels validated before the run (one integer in ``[0, classes)`` per
  sample);
- the ONNX Runtime integer kernels the Q/DQ model actually ran (``QLinearConv``, ``QGemm``
  ...), so "INT8" is not just a claim.

:func:`rank_tensors` answers *which tensor hurts*: it quantizes one tensor at a time, the rest
of the model in float, ranks the tensors by the output error each causes alone, and proposes
an exclusion set (greedy from the ranking) that recovers most of the loss.

Only one batch of outputs is held at a time by :func:`evaluate` (the per-sample results are
kept: a few integers); :func:`rank_tensors` keeps its (bounded) batches and the FP32 outputs
in memory, since it runs them once per tensor.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .defaults import (
    DEFAULT_RANKING_ROWS,
    DEFAULT_SUGGEST_MAX,
    DEFAULT_SUGGEST_TARGET,
    DEFAULT_TOPK,
)
from .errors import DataSourceError, ModelError, QuantizationError

__all__ = [
    "ClassificationMetrics",
    "EvaluationReport",
    "OutputMetrics",
    "TensorImpact",
    "TensorRanking",
    "check_labels",
    "evaluate",
    "evaluate_many",
    "integer_ops",
    "rank_tensors",
    "resolve_exclusions",
    "topk_hits",
]

logger = logging.getLogger(__name__)

#: ONNX Runtime op types that compute in integers.
_INT_OPS = ("QLinear", "QGemm", "MatMulInteger", "ConvInteger", "QAttention", "DynamicQuantize")

#: Called as ``on_step(done, total)`` while :func:`rank_tensors` runs.
StepCallback = Callable[[int, int], None]


def _num(value: float) -> float | str:
    """A float for JSON: ``inf``/``-inf``/``nan`` as strings."""
    return value if math.isfinite(value) else str(value)


# ---------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------
@dataclass
class OutputMetrics:
    """How far one output of the quantized model is from FP32, over all samples.

    Attributes
    ----------
    name : str
        The output.
    shape : tuple of int
        Its shape in the first batch.
    cosine : float
        Cosine similarity of the two outputs, flattened (1 = same direction).
    sqnr_db : float
        ``10·log10(Σ a² / Σ (a − b)²)``, ``a`` FP32 and ``b`` quantized; ``inf`` when equal.
    max_abs_error, mean_abs_error : float
        Largest and mean ``|a − b|``.
    rel_l2 : float
        ``‖a − b‖₂ / ‖a‖₂``.
    elements : int
        Elements compared.
    nonfinite : int
        Elements left out because either model gave NaN or ±Inf there.
    """

    name: str
    shape: tuple[int, ...]
    cosine: float
    sqnr_db: float
    max_abs_error: float
    mean_abs_error: float
    rel_l2: float
    elements: int
    nonfinite: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict (``inf``/``nan`` as strings)."""
        return {
            "name": self.name, "shape": list(self.shape), "cosine": _num(self.cosine),
            "sqnr_db": _num(self.sqnr_db), "max_abs_error": _num(self.max_abs_error),
            "mean_abs_error": _num(self.mean_abs_error), "rel_l2": _num(self.rel_l2),
            "elements": self.elements, "nonfinite": self.nonfinite,
        }


class _Accumulator:
    """Running sums for :class:`OutputMetrics` (float64)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.shape: tuple[int, ...] | None = None
        self.saa = self.sbb = self.sab = self.see = self.sae = 0.0
        self.max_e = 0.0
        self.count = 0
        self.nonfinite = 0

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        if self.shape is None:
            self.shape = tuple(int(d) for d in a.shape)
        if a.shape != b.shape:
            raise ModelError(
                f"output {self.name!r}: the FP32 model gives shape {a.shape}, the quantized "
                f"model {b.shape}; they are not the same model"
            )
        x = np.asarray(a, np.float64).ravel()
        y = np.asarray(b, np.float64).ravel()
        ok = np.isfinite(x) & np.isfinite(y)
        if not ok.all():
            self.nonfinite += int((~ok).sum())
            x, y = x[ok], y[ok]
        e = x - y
        self.saa += float(x @ x)
        self.sbb += float(y @ y)
        self.sab += float(x @ y)
        self.see += float(e @ e)
        ae = np.abs(e)
        self.sae += float(ae.sum())
        if ae.size:
            self.max_e = max(self.max_e, float(ae.max()))
        self.count += int(x.size)

    @property
    def noise(self) -> float:
        """``Σ e² / Σ a²`` (0 when equal)."""
        if self.see == 0:
            return 0.0
        return self.see / self.saa if self.saa > 0 else math.inf

    def result(self) -> OutputMetrics:
        denom = math.sqrt(self.saa * self.sbb)
        if self.saa == 0 and self.sbb == 0:
            cosine = 1.0
        else:
            cosine = self.sab / denom if denom > 0 else 0.0
        noise = self.noise
        sqnr = math.inf if noise == 0 else (-10 * math.log10(noise) if math.isfinite(noise)
                                            else -math.inf)
        return OutputMetrics(
            name=self.name,
            shape=self.shape or (),
            cosine=cosine,
            sqnr_db=sqnr,
            max_abs_error=self.max_e,
            mean_abs_error=self.sae / self.count if self.count else 0.0,
            rel_l2=math.sqrt(noise) if math.isfinite(noise) else math.inf,
            elements=self.count,
            nonfinite=self.nonfinite,
        )


@dataclass
class ClassificationMetrics:
    """Top-k agreement with FP32 (and accuracy with labels) of a ``[N, classes]`` output.

    Attributes
    ----------
    output : str
        The output holding the class scores.
    classes : int
        Its number of classes.
    topk : tuple of int
        The k values reported (``k < classes``).
    topk_skipped : tuple of int
        Requested k values not reported because ``k >= classes`` (always 100 %).
    agreement : dict
        k -> fraction of samples whose FP32 top-1 class is in the quantized model's top-k.
    fp32_accuracy, quantized_accuracy : dict or None
        k -> top-k accuracy against the labels (None without labels).
    """

    output: str
    classes: int
    topk: tuple[int, ...]
    topk_skipped: tuple[int, ...] = ()
    agreement: dict[int, float] = field(default_factory=dict)
    fp32_accuracy: dict[int, float] | None = None
    quantized_accuracy: dict[int, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        def keyed(d: Mapping[int, float] | None) -> dict[str, float] | None:
            return None if d is None else {str(k): v for k, v in d.items()}

        return {
            "output": self.output, "classes": self.classes, "topk": list(self.topk),
            "topk_skipped": list(self.topk_skipped), "agreement": keyed(self.agreement),
            "fp32_accuracy": keyed(self.fp32_accuracy),
            "quantized_accuracy": keyed(self.quantized_accuracy),
        }


@dataclass
class EvaluationReport:
    """A quantized model against its FP32 original.

    Per-output metrics, classification agreement/accuracy where meaningful, and the integer
    kernels onnxruntime ran.

    Attributes
    ----------
    n : int
        Samples evaluated.
    batches : int
        Batches evaluated.
    outputs : dict of str to OutputMetrics
        Every output compared, in model order.
    classification : ClassificationMetrics or None
        Present when an output is ``[N, classes]`` (see the module notes).
    integer_ops : dict
        ONNX Runtime integer op type -> count in the optimized quantized graph.
    name : str
        What was evaluated (shown in the table).
    """

    n: int
    batches: int
    outputs: dict[str, OutputMetrics]
    classification: ClassificationMetrics | None = None
    integer_ops: dict[str, int] = field(default_factory=dict)
    name: str = "quantized"

    # shortcuts to the classification numbers (empty / None without a classification output)
    @property
    def topk(self) -> tuple[int, ...]:
        """The k values of the classification metrics (``()`` without)."""
        return self.classification.topk if self.classification else ()

    @property
    def agreement(self) -> dict[int, float]:
        """K -> top-k agreement with FP32 (``{}`` without a classification output)."""
        return dict(self.classification.agreement) if self.classification else {}

    @property
    def fp32_accuracy(self) -> dict[int, float] | None:
        """K -> FP32 top-k accuracy (None without labels)."""
        return self.classification.fp32_accuracy if self.classification else None

    @property
    def quantized_accuracy(self) -> dict[int, float] | None:
        """K -> quantized top-k accuracy (None without labels)."""
        return self.classification.quantized_accuracy if self.classification else None

    @property
    def max_abs_diff(self) -> float:
        """The largest absolute error over every output."""
        return max((o.max_abs_error for o in self.outputs.values()), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serializable dict."""
        return {
            "name": self.name,
            "n": self.n,
            "batches": self.batches,
            "outputs": {k: v.to_dict() for k, v in self.outputs.items()},
            "classification": None if self.classification is None
            else self.classification.to_dict(),
            "integer_ops": dict(self.integer_ops),
        }

    def to_text(self) -> str:
        """Return readable tables: per-output metrics, then classification (if any)."""
        rows = [("output", "shape (batch 0)", "cosine", "SQNR dB", "max |err|", "mean |err|", "rel L2")]
        for o in self.outputs.values():
            rows.append((
                o.name, "x".join(map(str, o.shape)), f"{o.cosine:.6f}", f"{o.sqnr_db:.2f}",
                f"{o.max_abs_error:.4g}", f"{o.mean_abs_error:.4g}", f"{o.rel_l2:.4g}",
            ))
        lines = _table(rows)
        c = self.classification
        if c is not None:
            head = ("", *[f"top-{k}" for k in c.topk])
            crow = [head, ("agreement with FP32", *[f"{c.agreement[k]:.2%}" for k in c.topk])]
            if c.fp32_accuracy is not None and c.quantized_accuracy is not None:
                crow.append(("FP32 accuracy", *[f"{c.fp32_accuracy[k]:.2%}" for k in c.topk]))
                crow.append((f"{self.name} accuracy",
                             *[f"{c.quantized_accuracy[k]:.2%}" for k in c.topk]))
            lines.append("")
            lines.append(f"classification ({c.output}: {c.classes} classes)")
            lines.extend(_table(crow, rule=False))
            if c.topk_skipped:
                lines.append(f"(top-{', '.join(map(str, c.topk_skipped))} not shown: "
                             f"k >= {c.classes} classes is always 100%)")
        nonfinite = sum(o.nonfinite for o in self.outputs.values())
        if nonfinite:
            lines.append(f"{nonfinite} NaN/Inf output elements left out of the metrics")
        ops = ", ".join(f"{k}×{v}" for k, v in sorted(self.integer_ops.items())) or "none"
        lines.append(f"samples: {self.n} in {self.batches} batches; "
                     f"onnxruntime integer kernels: {ops}")
        return "\n".join(lines)


def _table(rows: Sequence[Sequence[str]], rule: bool = True) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in rows
    ]
    if rule:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


# ---------------------------------------------------------------------------------------
# sessions
# ---------------------------------------------------------------------------------------
def _session(model: Any, *, optimized_path: str | None = None) -> Any:
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # idle threads that spin between runs steal the cores the next run needs
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        _session(model, optimized_path=path)
        return _integer_ops_in(path)


def _integer_ops_in(path: str) -> dict[str, int]:
    """The integer op types (and counts) of the optimized model a session wrote to ``path``."""
    import onnx

    optimized = onnx.load(path, load_external_data=False)
    counts = Counter(n.op_type for n in optimized.graph.node)
    return {k: v for k, v in counts.items() if k.startswith(_INT_OPS)}


def _is_session(model: Any) -> bool:
    """Whether ``model`` is an onnxruntime session already (not a model to load)."""
    return hasattr(model, "run") and hasattr(model, "get_outputs")


def topk_hits(scores: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """Whether ``target`` is among the k largest scores of each row (ties: lowest index)."""
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    hits: np.ndarray = (top == target[:, None]).any(axis=1)
    return hits


# ---------------------------------------------------------------------------------------
# labels and the classification output
# ---------------------------------------------------------------------------------------
def check_labels(
    labels: Any, *, samples: int | None = None, classes: int | None = None, where: str = "labels"
) -> np.ndarray:
    """Validate labels: one non-negative integer per sample, below the number of classes.

    Parameters
    ----------
    labels : array-like
        One class index per sample (integers, or floats holding integers, as in sampleINT8
        batch files).
    samples : int, optional
        The number of samples the data holds, when known.
    classes : int, optional
        The number of classes of the scored output, when known.
    where : str
        What the labels are (a file name), for messages.

    Returns
    -------
    numpy.ndarray
        int64, shape ``(len,)``.

    Raises
    ------
    DataSourceError
        Naming the problem and the fix.
    """
    y = np.asarray(labels)
    if y.ndim != 1:
        if y.ndim == 2 and 1 in y.shape:
            y = y.reshape(-1)
        else:
            raise DataSourceError(
                f"{where}: shape {y.shape}; give one class index per sample (a 1-D array)"
            )
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            bad = int(np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))[0])
            raise DataSourceError(
                f"{where}: label {bad} is {y[bad]!r}, not a class index; give integer labels"
            )
    elif y.dtype.kind not in "iub":
        raise DataSourceError(f"{where}: labels of dtype {y.dtype}; give integer class indices")
    y = y.astype(np.int64)
    if samples is not None and len(y) != samples:
        raise DataSourceError(
            f"{where}: {len(y)} labels for {samples} samples; give exactly one label per "
            "sample, in data order"
        )
    if y.size and y.min() < 0:
        bad = int(np.argmin(y))
        raise DataSourceError(
            f"{where}: label {bad} is {int(y[bad])}; class indices start at 0"
        )
    if classes is not None and y.size and y.max() >= classes:
        bad = int(np.argmax(y))
        raise DataSourceError(
            f"{where}: label {bad} is {int(y[bad])}, but the scored output has {classes} "
            f"classes (0..{classes - 1}); check the labels file or --output"
        )
    return y


def _static_classes(session: Any, output: str) -> tuple[int | None, int | None]:
    """(rank, classes) of an output as the model declares it (None where unknown)."""
    for o in session.get_outputs():
        if o.name == output:
            shape = o.shape
            if shape is None:
                return None, None
            rank = len(shape)
            classes = shape[1] if rank == 2 and isinstance(shape[1], int) else None
            return rank, classes
    return None, None


def _classification_output(
    session: Any, output: str | None, labels_given: bool, classification: bool | None
) -> str | None:
    """The output scored as classes, checked against what the model declares."""
    names = [o.name for o in session.get_outputs()]
    if output is not None and output not in names:
        close = difflib.get_close_matches(output, names, n=3)
        raise ModelError(
            f"the model has no output {output!r}; outputs: {names}"
            + (f" (did you mean {close[0]!r}?)" if close else "")
        )
    if classification is False:
        if labels_given:
            raise DataSourceError("labels need a classification output; drop classification=False")
        return None
    name = output or names[0]
    rank, classes = _static_classes(session, name)
    explicit = output is not None or classification is True or labels_given
    if rank is not None and rank != 2:
        if explicit:
            raise DataSourceError(
                f"output {name!r} has rank {rank}; top-k agreement and accuracy need class "
                "scores of shape [N, classes]. Name a 2-D output with --output, or drop "
                "--labels/--topk: the per-output metrics are reported for every output anyway"
            )
        return None
    if classes is not None and classes < 2:
        if explicit:
            raise DataSourceError(
                f"output {name!r} has {classes} class; top-k needs at least 2 classes"
            )
        return None
    return name


# ---------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------
class _ClassAcc:
    def __init__(self, output: str, ks: tuple[int, ...], labels: np.ndarray | None) -> None:
        self.output = output
        self.ks_requested = ks
        self.labels = labels
        self.classes: int | None = None
        self.ks: tuple[int, ...] = ()
        self.agree: dict[int, int] = {}
        self.hits32: dict[int, int] = {}
        self.hitsq: dict[int, int] = {}
        self.n = 0
        self.active = True

    def add(self, a: np.ndarray, b: np.ndarray, samples: int, index: int) -> None:
        if not self.active:
            return
        if a.ndim != 2 or a.shape[0] != samples or a.shape[1] < 2:
            if self.labels is not None:
                raise DataSourceError(
                    f"batch {index}: output {self.output!r} has shape {a.shape}, not [N={samples}"
                    ", classes]; labels need class scores, one row per sample"
                )
            self.active = False
            return
        if self.classes is None:
            self.classes = int(a.shape[1])
            self.ks = tuple(k for k in self.ks_requested if k < self.classes) or (1,)
            self.agree = {k: 0 for k in self.ks}
            self.hits32 = {k: 0 for k in self.ks}
            self.hitsq = {k: 0 for k in self.ks}
            if self.labels is not None:
                check_labels(self.labels, classes=self.classes)
        ref = a.argmax(axis=1)
        for k in self.ks:
            self.agree[k] += int(topk_hits(b, ref, k).sum())
        if self.labels is not None:
            y = self.labels[self.n : self.n + samples]
            if len(y) < samples:
                raise DataSourceError(
                    f"batch {index}: the data holds more than the {len(self.labels)} labels "
                    "given; give exactly one label per sample, in data order"
                )
            for k in self.ks:
                self.hits32[k] += int(topk_hits(a, y, k).sum())
                self.hitsq[k] += int(topk_hits(b, y, k).sum())
        self.n += samples

    def result(self, n: int) -> ClassificationMetrics | None:
        if not self.active or self.classes is None:
            return None
        if self.labels is not None and len(self.labels) != n:
            raise DataSourceError(
                f"{len(self.labels)} labels for {n} samples; give exactly one label per "
                "sample, in data order"
            )
        out = ClassificationMetrics(
            output=self.output, classes=self.classes, topk=self.ks,
            topk_skipped=tuple(k for k in self.ks_requested if k not in self.ks),
            agreement={k: self.agree[k] / n for k in self.ks},
        )
        if self.labels is not None:
            out.fp32_accuracy = {k: self.hits32[k] / n for k in self.ks}
            out.quantized_accuracy = {k: self.hitsq[k] / n for k in self.ks}
        return out


def _topks(topk: Sequence[int]) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(k) for k in topk}))
    except (TypeError, ValueError):
        raise DataSourceError(f"topk must be positive integers, got {topk!r}") from None
    if not ks or ks[0] < 1:
        raise DataSourceError(f"topk must be positive integers, got {tuple(topk)}")
    return ks


def evaluate_many(
    fp32_model: Any,
    quantized: Mapping[str, Any],
    data: Iterable[Any],
    labels: Sequence[int] | np.ndarray | None = None,
    *,
    topk: Sequence[int] = DEFAULT_TOPK,
    output: str | None = None,
    classification: bool | None = None,
    batch_axes: Any = None,
    max_batches: int | None = None,
    count_integer_ops: bool = True,
) -> dict[str, EvaluationReport]:
    """Compare several quantized models with one FP32 original, running FP32 once per batch.

    Parameters are those of :func:`evaluate`; ``quantized`` maps a name to each model, and
    ``fp32_model`` may also be an onnxruntime ``InferenceSession`` of the original (reused,
    not built again). ``count_integer_ops``: count the integer ops onnxruntime's optimizer
    makes of each quantized model (from the graph its session writes).

    Returns
    -------
    dict of str to EvaluationReport
        In the order of ``quantized``.
    """
    ks = _topks(topk)  # bad options fail before any session is built
    with tempfile.TemporaryDirectory() as tmp:
        # each quantized session writes the graph it optimized: its integer ops are counted
        # from that file, without a second session of the same model
        written = {name: os.path.join(tmp, f"{k}.onnx") if count_integer_ops else None
                   for k, name in enumerate(quantized)}
        s32 = fp32_model if _is_session(fp32_model) else _session(fp32_model)
        sessions = {name: _session(m, optimized_path=written[name])
                    for name, m in quantized.items()}
        counted = _compare(s32, sessions, data, labels, ks=ks, output=output,
                           classification=classification, batch_axes=batch_axes,
                           max_batches=max_batches)
        n, batches, accs, cls, cls_out = counted
        ops = {name: _integer_ops_in(path) if path is not None else {}
               for name, path in written.items()}
    return {
        name: EvaluationReport(
            n=n,
            batches=batches,
            outputs={o: a.result() for o, a in accs[name].items()},
            classification=cls[name].result(n) if cls_out else None,
            integer_ops=ops[name],
            name=name,
        )
        for name in quantized
    }


def _compare(
    s32: Any, sessions: Mapping[str, Any], data: Iterable[Any], labels: Any, *,
    ks: tuple[int, ...], output: str | None, classification: bool | None, batch_axes: Any,
    max_batches: int | None,
) -> tuple[int, int, dict[str, dict[str, _Accumulator]], dict[str, _ClassAcc], str | None]:
    """Run FP32 and every quantized session over the data.

    Returns ``(samples, batches, per-output accumulators, classification accumulators,
    classification output)``.
    """
    from .data import count_samples
    from .runners import feed_samples, input_specs, prepare_feed

    specs = input_specs(s32, None, batch_axes)
    out_names = [o.name for o in s32.get_outputs()]
    cls_out = _classification_output(s32, output, labels is not None, classification)
    y = None
    if labels is not None:
        _, classes = _static_classes(s32, cls_out) if cls_out else (None, None)
        axes = {s.name: s.batch_axis for s in specs}
        known = count_samples(data, axes)
        if known is not None and max_batches is not None:
            known = None  # a truncated source: counted as it runs
        y = check_labels(labels, samples=known, classes=classes)
    accs = {name: {o: _Accumulator(o) for o in out_names} for name in sessions}
    cls = {name: _ClassAcc(cls_out, ks, y) for name in sessions} if cls_out else {}
    n = 0
    batches = 0
    for index, batch in enumerate(data):
        if max_batches is not None and index >= max_batches:
            break
        feed = prepare_feed(specs, batch, index=index)
        samples = feed_samples(specs, feed)
        try:
            ref = s32.run(out_names, feed)
        except Exception as exc:
            raise ModelError(f"batch {index}: onnxruntime failed on the FP32 model: {exc}") from exc
        for name, sess in sessions.items():
            try:
                got = sess.run(out_names, feed)
            except Exception as exc:
                raise ModelError(f"batch {index}: onnxruntime failed on {name}: {exc}") from exc
            for o, a, b in zip(out_names, ref, got):
                accs[name][o].add(a, b)
                if o == cls_out:
                    cls[name].add(np.asarray(a), np.asarray(b), samples, index)
        n += samples
        batches += 1
    if n == 0:
        raise DataSourceError("the evaluation data holds no samples; give at least one batch")
    return n, batches, accs, cls, cls_out


def evaluate(
    fp32_model: Any,
    qdq_model: Any,
    data: Iterable[Any],
    labels: Sequence[int] | np.ndarray | None = None,
    *,
    topk: Sequence[int] = DEFAULT_TOPK,
    output: str | None = None,
    classification: bool | None = None,
    batch_axes: Any = None,
    max_batches: int | None = None,
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
        One class per sample, in data order; enables accuracy. Validated before the run
        (length when the source can be counted, range when the class count is declared).
    topk : sequence of int, optional
        The k values to report (default 1 and 5); only ``k < classes`` are reported.
    output : str, optional
        The output holding class scores (default: the first, when it is ``[N, classes]``).
        Per-output metrics cover every output regardless.
    classification : bool, optional
        ``False``: no classification metrics; ``True``: require them. Default: where the
        output's shape allows.
    batch_axes : mapping or iterable of ``NAME=AXIS``, optional
        Declared batch axes (``None``: not batched); the rest are inferred
        (:func:`kldiv.data.infer_batch_axes`).
    max_batches : int, optional
        Stop after this many batches.
    name : str, optional
        Label of the quantized model in the table.

    Returns
    -------
    EvaluationReport

    Raises
    ------
    DataSourceError
        If the data is empty, or the labels are not one class index per sample.
    ModelError
        If a model cannot be loaded or run, or has no output named ``output``.
    """
    return evaluate_many(
        fp32_model, {name: qdq_model}, data, labels, topk=topk, output=output,
        classification=classification, batch_axes=batch_axes, max_batches=max_batches,
    )[name]


# ---------------------------------------------------------------------------------------
# exclusions
# ---------------------------------------------------------------------------------------
def resolve_exclusions(model: Any, exclude: Iterable[str]) -> set[str]:
    """Turn ``--exclude`` items (tensor names, node names, op types) into tensor names.

    The names are those :func:`kldiv.qdq.to_qdq_onnx` leaves in float, as
    :func:`kldiv.qdq.resolve_exclusions` gives them; an empty ``exclude`` gives an empty set
    without loading the model.

    Raises
    ------
    QuantizationError
        For an item that is no tensor, node or op type of the model (close names are
        suggested).
    """
    items = [str(e) for e in exclude]
    if not items:
        return set()
    from .qdq import resolve_exclusions as resolve

    return resolve(model, items)


def _proto(model: Any) -> Any:
    import onnx

    from .runners import load_model

    return model if isinstance(model, onnx.ModelProto) else load_model(model)[0]


# ---------------------------------------------------------------------------------------
# which tensor hurts
# ---------------------------------------------------------------------------------------
_MASK_PREFIX = "kldiv_mask__"
_WEIGHT_MASK = "kldiv_mask__weights"


def _switchable(fp32: Any, qdq: Any) -> tuple[Any, dict[str, str], int]:
    """The Q/DQ model with a switch per quantized activation ``t``.

    A switch covers its Q/DQ pair, the weights of the layers reading it, and the quantized
    inputs and weights of the layer writing it.

    Every ``DequantizeLinear`` fed by a ``QuantizeLinear`` of activation ``t`` gets a
    ``Where(switch_t, dq, t)`` after it; the weight ``DequantizeLinear`` of a layer whose data
    input is that dequantized ``t`` gets ``Where(switch_t, dq, float_weight)``; the layer
    writing ``t`` reads its quantized inputs and weights through ``Where(switch_t, ..., float)``.
    So switching ``t`` off is what excluding ``t`` does (:func:`kldiv.qdq.to_qdq_onnx`
    ``exclude=``) and what dropping ``t`` from a TensorRT cache does: the layers writing and
    reading ``t`` run in higher precision, weights included. Weights of layers with no
    quantized input share one switch. Switches are scalar bool graph inputs: all on is the Q/DQ model (the same
    numbers; onnxruntime's Q/DQ fusions round differently), all off the FP32 model.

    Returns
    -------
    model : onnx.ModelProto
    switches : dict
        Activation tensor -> its switch input name, in graph order.
    weights : int
        Weight DQs given a switch (a weight whose float original is not found by name
        stays quantized in every run).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(qdq)
    g = m.graph
    inits = {i.name for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    float_consts: dict[str, Any] = {t.name: t for t in fp32.graph.initializer}
    for node in fp32.graph.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    float_consts[node.output[0]] = a.t
    switches: dict[str, str] = {}
    dq_tensor: dict[str, str] = {}  # dequantized activation name -> the activation
    weight_float: dict[str, str] = {}  # dequantized weight name -> its float initializer
    new_nodes: list[Any] = []
    new_inits: list[Any] = []
    n_weights = 0
    for node in list(g.node):
        if node.op_type != "DequantizeLinear" or not node.output:
            continue
        q = producers.get(node.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            tensor = q.input[0]
            switch = switches.setdefault(tensor, f"{_MASK_PREFIX}{len(switches)}")
            out = node.output[0]
            dq_tensor[out] = tensor
            node.output[0] = out + "__kldiv_switched"
            new_nodes.append(helper.make_node("Where", [switch, node.output[0], tensor], [out]))
    for node in list(g.node):
        if node.op_type != "DequantizeLinear" or not node.output:
            continue
        src = node.input[0]
        if src not in inits or node.output[0].endswith("__kldiv_switched"):
            continue
        base = src[: -len("_quantized")] if src.endswith("_quantized") else None
        w = float_consts.get(base) if base else None
        if w is None or w.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16,
                                            TensorProto.DOUBLE):
            continue
        out = node.output[0]
        # the switch of the activation the reading layer quantizes, if any
        switch = _WEIGHT_MASK
        for layer in readers.get(out, []):
            for i in layer.input:
                if i in dq_tensor:
                    switch = switches[dq_tensor[i]]
                    break
        fname = f"{base}__kldiv_float"
        new_inits.append(numpy_helper.from_array(numpy_helper.to_array(w), fname))
        node.output[0] = out + "__kldiv_switched"
        new_nodes.append(helper.make_node("Where", [switch, node.output[0], fname], [out]))
        weight_float[out] = fname
        n_weights += 1
    # the layer writing a switched tensor is quantized only while that switch is on too
    # (kldiv.qdq.to_qdq_onnx leaves the writer of an excluded tensor unquantized)
    for tensor, switch in switches.items():
        writer = producers.get(tensor)
        if writer is None:
            continue
        for k, name in enumerate(writer.input):
            plain = dq_tensor.get(name) or weight_float.get(name)
            if plain is None:
                continue
            gated = f"{name}__kldiv_for_{switch}"
            new_nodes.append(helper.make_node("Where", [switch, name, plain], [gated]))
            writer.input[k] = gated
    g.node.extend(new_nodes)
    g.initializer.extend(new_inits)
    for name in [*switches.values(), _WEIGHT_MASK]:
        g.input.append(helper.make_tensor_value_info(name, TensorProto.BOOL, []))
    from .qdq import _toposort

    ordered = _toposort(list(g.node), {i.name for i in g.input} | {i.name for i in g.initializer})
    del g.node[:]
    g.node.extend(ordered)
    return m, switches, n_weights


@dataclass
class TensorImpact:
    """The output error one tensor's quantization causes alone.

    The tensor, and the layers reading and writing it, in INT8; every other tensor and weight in
    float.

    Attributes
    ----------
    tensor : str
        The activation tensor.
    noise : float
        Mean over outputs of ``Σ (a − b)² / Σ a²`` (``a`` FP32, ``b`` with this tensor
        quantized): the squared relative L2 error.
    sqnr_db : float
        ``−10·log10(noise)``.
    agreement : float or None
        Top-1 agreement with FP32 (classification outputs only).
    """

    tensor: str
    noise: float
    sqnr_db: float
    agreement: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        return {"tensor": self.tensor, "noise": _num(self.noise), "sqnr_db": _num(self.sqnr_db),
                "agreement": self.agreement}


@dataclass
class TensorRanking:
    """What :func:`rank_tensors` measured.

    Attributes
    ----------
    impacts : list of TensorImpact
        Worst first (largest ``noise``; ties by lower agreement).
    all_quantized : TensorImpact
        Every tensor quantized (tensor ``"*"``), weights too: the starting point.
    suggested : list of str
        The exclusion set: the fewest top-ranked tensors whose return to float recovers
        ``target`` of the loss (or, failing that within ``max_suggest``, the best prefix).
    suggested_result : TensorImpact
        Every tensor quantized except ``suggested`` (tensor ``"suggested"``).
    criterion : str
        ``"top-1 agreement"`` or ``"output noise"``: what the loss and its recovery measure.
    recovered : float
        Fraction of the loss the suggestion recovers (1 = back to FP32).
    target : float
        The recovery asked for.
    samples, batches : int
        Data used.
    seconds : float
        Wall time of the ranking.
    runs : int
        Forward passes over the data (one per tensor, plus the baselines and the greedy
        steps): the cost grows linearly with the number of tensors.
    weights_switched : int
        Weight tensors the measurement could return to float (the rest stayed quantized in
        every run).
    method : str
        How the impact was measured, in words.
    """

    impacts: list[TensorImpact]
    all_quantized: TensorImpact
    suggested: list[str]
    suggested_result: TensorImpact
    criterion: str
    recovered: float
    target: float
    samples: int
    batches: int
    seconds: float
    runs: int
    weights_switched: int
    method: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        return {
            "method": self.method, "criterion": self.criterion,
            "impacts": [i.to_dict() for i in self.impacts],
            "all_quantized": self.all_quantized.to_dict(),
            "suggested": list(self.suggested),
            "suggested_result": self.suggested_result.to_dict(),
            "recovered": _num(self.recovered), "target": self.target,
            "samples": self.samples, "batches": self.batches, "seconds": self.seconds,
            "runs": self.runs, "weights_switched": self.weights_switched,
        }

    def to_text(self, max_rows: int = DEFAULT_RANKING_ROWS) -> str:
        """The ranking (worst first) and the suggestion."""
        has_agree = self.all_quantized.agreement is not None
        head = ("rank", "tensor", "SQNR dB", "rel L2", *(["top-1 agree"] if has_agree else []))
        rows = [head]

        def row(label: str, i: TensorImpact) -> tuple[str, ...]:
            rel = math.sqrt(i.noise) if math.isfinite(i.noise) else math.inf
            extra = [f"{i.agreement:.2%}"] if has_agree and i.agreement is not None else (
                [""] if has_agree else [])
            return (label, i.tensor, f"{i.sqnr_db:.2f}", f"{rel:.4g}", *extra)

        for k, imp in enumerate(self.impacts[:max_rows], 1):
            rows.append(row(str(k), imp))
        lines = [self.method, *_table(rows)]
        if len(self.impacts) > max_rows:
            lines.append(f"... {len(self.impacts) - max_rows} more tensors")
        lines.append("")
        lines.extend(_table([head, row("", self.all_quantized),
                             row("", self.suggested_result)]))
        lines.append(
            f"suggested --exclude ({len(self.suggested)} of {len(self.impacts)} tensors left in "
            f"float; recovers {self.recovered:.0%} of the {self.criterion} lost, target "
            f"{self.target:.0%}):"
        )
        lines.append("  " + (" ".join(self.suggested) if self.suggested else "(none)"))
        lines.append(
            f"{self.runs} runs over {self.samples} samples ({self.batches} batches) in "
            f"{self.seconds:.1f} s ({self.seconds / max(self.runs, 1):.2f} s per run: the cost "
            "is one run per tensor)"
        )
        return "\n".join(lines)


def rank_tensors(
    fp32_model: Any,
    qdq_model: Any,
    data: Iterable[Any],
    *,
    output: str | None = None,
    batch_axes: Any = None,
    max_batches: int | None = None,
    target: float = DEFAULT_SUGGEST_TARGET,
    max_suggest: int = DEFAULT_SUGGEST_MAX,
    on_step: StepCallback | None = None,
) -> TensorRanking:
    """Rank the quantized activations of a Q/DQ model by the output error each causes alone.

    Method: the Q/DQ model gets a switch per quantized activation ``t``
    (``Where(s, DQ(Q(t)), t)``, and the same on the weights of the layers reading ``t`` and on
    the quantized inputs and weights of the layer writing it: what excluding ``t`` leaves in
    float); onnxruntime runs it once per tensor
    with only that switch on, over the same batches, and compares every output with FP32
    (:class:`TensorImpact`). One session, no model rebuilt: the cost is one forward pass over
    the data per tensor, linear in the tensor count. The switched model computes the same
    numbers as the Q/DQ model with its fusions off; onnxruntime's optimized Q/DQ kernels
    (``QLinearConv`` ...) round differently, so the real model's figures differ a little.

    The suggested exclusion set is greedy from the ranking: with everything quantized, the
    worst tensors are switched back to float one at a time until the criterion (top-1
    agreement for a classification output that loses any, else the output noise) has
    recovered ``target`` of its loss.

    Parameters
    ----------
    fp32_model, qdq_model : path, bytes or onnx.ModelProto
        The FP32 model and its Q/DQ copy (:func:`kldiv.qdq.to_qdq_onnx`).
    data : iterable
        Batches; the first ``max_batches`` are held in memory and reused for every run.
    output : str, optional
        The classification output (default: the first, when it is ``[N, classes]``).
    batch_axes : mapping or iterable of ``NAME=AXIS``, optional
        Declared batch axes.
    max_batches : int, optional
        Batches to use (default all).
    target : float
        Fraction of the loss the suggestion should recover (default 0.8).
    max_suggest : int
        Most tensors the suggestion may leave in float.
    on_step : callable, optional
        ``on_step(done, total)`` after each run (progress bars).

    Returns
    -------
    TensorRanking

    Raises
    ------
    DataSourceError
        If the data is empty.
    QuantizationError
        If the Q/DQ model holds no activation Q/DQ pair.
    """
    from .runners import feed_samples, input_specs, prepare_feed

    if not 0 < target <= 1:
        raise DataSourceError(f"target must be in (0, 1], got {target}")
    start = time.perf_counter()
    fp32 = _proto(fp32_model)
    qdq = _proto(qdq_model)
    switched, switches, n_weights = _switchable(fp32, qdq)
    if not switches:
        raise QuantizationError(
            "the Q/DQ model quantizes no activation; nothing to rank (is the table empty or "
            "for another model?)"
        )
    s32 = _session(fp32)
    ssw = _session(switched)
    specs = input_specs(s32, None, batch_axes)
    out_names = [o.name for o in s32.get_outputs()]
    cls_out = _classification_output(s32, output, False, None)
    feeds: list[dict[str, np.ndarray]] = []
    refs: list[list[np.ndarray]] = []
    samples = 0
    for index, batch in enumerate(data):
        if max_batches is not None and index >= max_batches:
            break
        feed = prepare_feed(specs, batch, index=index)
        feeds.append(feed)
        refs.append(s32.run(out_names, feed))
        samples += feed_samples(specs, feed)
    if not feeds:
        raise DataSourceError("the data holds no batches; give at least one")
    cls_index = out_names.index(cls_out) if cls_out else None
    if cls_index is not None:
        first = refs[0][cls_index]
        if first.ndim != 2 or first.shape[0] != feed_samples(specs, feeds[0]):
            cls_index = None
    tensors = list(switches)
    total_runs = len(tensors) + 1 + min(max_suggest, len(tensors))
    runs = 0
    true_ = np.array(True)
    false_ = np.array(False)

    def measure(label: str, on: set[str], weights: bool) -> TensorImpact:
        nonlocal runs
        masks = {switches[t]: (true_ if t in on else false_) for t in tensors}
        masks[_WEIGHT_MASK] = true_ if weights else false_
        accs = [_Accumulator(o) for o in out_names]
        agree = 0
        for feed, ref in zip(feeds, refs):
            got = ssw.run(out_names, {**feed, **masks})
            for acc, a, b in zip(accs, ref, got):
                acc.add(a, b)
            if cls_index is not None:
                agree += int((got[cls_index].argmax(1) == ref[cls_index].argmax(1)).sum())
        runs += 1
        if on_step is not None:
            on_step(runs, total_runs)
        noise = float(np.mean([a.noise for a in accs]))
        sqnr = math.inf if noise == 0 else -10 * math.log10(noise)
        return TensorImpact(label, noise, sqnr, agree / samples if cls_index is not None else None)

    everything = measure("all quantized", set(tensors), True)
    impacts = [measure(t, {t}, False) for t in tensors]
    impacts.sort(key=lambda i: (-i.noise, i.agreement if i.agreement is not None else 0.0))

    use_agreement = everything.agreement is not None and everything.agreement < 1.0
    criterion = "top-1 agreement" if use_agreement else "output noise"

    def recovery(r: TensorImpact) -> float:
        if use_agreement:
            lost = 1.0 - (everything.agreement or 0.0)
            return ((r.agreement or 0.0) - (everything.agreement or 0.0)) / lost
        if everything.noise == 0:
            return 1.0
        return (everything.noise - r.noise) / everything.noise

    best = (0.0, 0, everything)
    chosen: list[str] = []
    for k in range(1, min(max_suggest, len(impacts)) + 1):
        chosen = [i.tensor for i in impacts[:k]]
        r = measure("suggested", set(tensors) - set(chosen), True)
        rec = recovery(r)
        if rec > best[0] + 1e-12:
            best = (rec, k, r)
        if rec >= target:
            break
    rec, k, result = best
    result = TensorImpact("suggested", result.noise, result.sqnr_db, result.agreement)
    if on_step is not None:
        on_step(total_runs, total_runs)
    return TensorRanking(
        impacts=impacts,
        all_quantized=TensorImpact("all quantized", everything.noise, everything.sqnr_db,
                                   everything.agreement),
        suggested=[i.tensor for i in impacts[:k]],
        suggested_result=result,
        criterion=criterion,
        recovered=rec,
        target=target,
        samples=samples,
        batches=len(feeds),
        seconds=round(time.perf_counter() - start, 2),
        runs=runs,
        weights_switched=n_weights,
        method=(
            f"per-tensor impact: each of {len(tensors)} quantized activations alone (Q/DQ on "
            "that tensor, and the layers reading and writing it quantized; every other tensor "
            "and weight in float), compared with FP32 on every output"
        ),
    )
