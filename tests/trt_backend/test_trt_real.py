"""End-to-end with a real TensorRT on a GPU (marked ``trt`` and ``gpu``; skipped, with the
reason, wherever TensorRT is missing - which is every machine this project has so far).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.trt, pytest.mark.gpu]


@pytest.fixture(scope="module")
def lenet() -> Any:
    examples = pytest.importorskip("kldiv.examples")
    return examples


def test_fp32_engine_runs(lenet: Any) -> None:
    from trt_backend import build_engine, run_engine

    batches, _ = lenet.lenet_eval_data()
    plan = build_engine(lenet.lenet_model_path(), "fp32")
    result = run_engine(plan, batches[:2])
    assert result.outputs and len(result.batch_ms) == 2


def test_crosscheck_on_lenet(lenet: Any, tmp_path: Path) -> None:
    from trt_backend import crosscheck

    result = crosscheck(lenet.lenet_model_path(), lenet.lenet_calibration_data())
    assert result.trt_cache.startswith(b"TRT-")
    written = result.write(tmp_path)
    assert written["tensorrt_cache"].read_bytes() == result.trt_cache


def test_replayed_kldiv_table_is_used(lenet: Any) -> None:
    from kldiv.pipeline import calibrate
    from trt_backend import build_engine

    table = calibrate(str(lenet.lenet_model_path()), lenet.lenet_calibration_data()).table
    assert build_engine(lenet.lenet_model_path(), "int8", table=table)


def test_compare_precisions_on_lenet(lenet: Any) -> None:
    from trt_backend import compare_precisions

    batches, labels = lenet.lenet_eval_data()
    report = compare_precisions(lenet.lenet_model_path(), batches, labels)
    assert [r.precision for r in report.rows] == ["fp32", "fp16", "int8"]
