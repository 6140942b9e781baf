"""Accuracy bookkeeping of runtime.py, checked against scikit-learn (no TensorRT needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trt_backend.runtime import RunResult, summarize_precisions, top1_agreement, topk_accuracy

sklearn_metrics = pytest.importorskip("sklearn.metrics")


@given(
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=6, max_value=12),
    st.integers(min_value=0, max_value=2**31 - 1),
)
def test_topk_matches_sklearn(n: int, classes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, classes)).astype(np.float32)  # ties have probability 0
    labels = rng.integers(0, classes, n)
    for k in (1, 5):
        expected = sklearn_metrics.top_k_accuracy_score(
            labels, logits, k=k, labels=np.arange(classes)
        )
        assert topk_accuracy(logits, labels, k) == pytest.approx(expected)


def test_agreement_counts_matching_argmax() -> None:
    ref = np.eye(4)[[0, 1, 2, 3, 0]]
    other = np.eye(4)[[0, 1, 3, 3, 1]]
    assert top1_agreement(other, ref) == pytest.approx(3 / 5)
    assert top1_agreement(ref, ref) == 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        top1_agreement(ref[:3], ref)


def test_label_count_mismatch() -> None:
    with pytest.raises(ValueError, match="labels"):
        topk_accuracy(np.zeros((3, 4)), np.zeros(2))


def test_summary_table() -> None:
    rng = np.random.default_rng(0)
    fp32 = rng.standard_normal((20, 10))
    labels = fp32.argmax(axis=1)
    int8 = fp32.copy()
    int8[:4] = -int8[:4]  # four samples change their top class
    results = {
        "fp32": RunResult({"prob": fp32, "aux": fp32}, [1.0, 3.0]),
        "int8": RunResult({"prob": int8, "aux": int8}, [0.5]),
    }
    report = summarize_precisions(results, labels, output="prob")
    fp32_row, int8_row = report.rows
    assert fp32_row.top1 == 1.0 and fp32_row.agreement == 1.0 and fp32_row.mean_ms == 2.0
    assert int8_row.top1 == pytest.approx(top1_agreement(int8, fp32))
    assert int8_row.agreement == pytest.approx(16 / 20)
    text = report.format()
    assert "fp32" in text and "int8" in text and "80.00" in text
    no_labels = summarize_precisions(results)
    assert math.isnan(no_labels.rows[0].top1) and no_labels.output == "prob"
    with pytest.raises(ValueError, match="no output"):
        summarize_precisions(results, output="logits")
