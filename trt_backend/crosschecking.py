"""Cross-check kldiv's scales against TensorRT's own calibration, on the same batches.

:func:`crosscheck` calibrates the model twice on one list of batches: with TensorRT's entropy2
calibrator (building an INT8 engine and capturing the cache TensorRT writes) and with kldiv's
``tensorrt`` preset (:func:`kldiv.pipeline.calibrate`), then compares the two tables with
:func:`kldiv.comparison.compare` (ratios are TensorRT / kldiv). :func:`assemble` does the
comparison from a captured cache, so it is usable (and tested) without TensorRT.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kldiv._io import atomic_write_bytes, atomic_write_text, check_writable
from kldiv.cachefile import parse_cache
from kldiv.comparison import ComparisonReport, compare
from kldiv.defaults import (
    DEFAULT_ALGORITHM,
    DEFAULT_CUDA_BACKEND,
    DEFAULT_PRESET,
    DEFAULT_WORKSPACE,
)
from kldiv.scales import CalibrationTable

from . import _tensorrt
from .calibrators import replay_cache_bytes
from .device import CudaBackend
from .errors import EngineBuildError

__all__ = ["OUTPUT_FILES", "CrosscheckResult", "assemble", "check_outputs", "crosscheck"]

logger = logging.getLogger(__name__)

#: Files :meth:`CrosscheckResult.write` creates in the output folder.
OUTPUT_FILES = {
    "report": "crosscheck.txt",
    "json": "crosscheck.json",
    "plot": "crosscheck.png",
    "tensorrt_cache": "tensorrt.cache",
    "kldiv_cache": "kldiv.cache",
}


def check_outputs(
    out_dir: str | os.PathLike[str], *, force: bool = False,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
) -> dict[str, Path]:
    """Check, before any work, that every file of :data:`OUTPUT_FILES` can be written there.

    Existing files need ``force``; an input (``inputs``) is never written over.

    Returns
    -------
    dict of str -> Path
        The output paths, keyed as :data:`OUTPUT_FILES`.
    """
    folder = Path(out_dir)
    paths = {key: folder / name for key, name in OUTPUT_FILES.items()}
    for p in paths.values():
        check_writable(p, force=force, inputs=tuple(inputs))
    return paths


@dataclass
class CrosscheckResult:
    """kldiv's table, TensorRT's table, and their comparison.

    Attributes
    ----------
    ours : CalibrationTable
        kldiv's scales.
    theirs : CalibrationTable
        TensorRT's scales, parsed from :attr:`trt_cache`.
    trt_cache : bytes
        The cache TensorRT wrote, byte for byte.
    report : ComparisonReport
        ``compare(ours, theirs)``: ratios are TensorRT / kldiv.
    trt_version : str
        The TensorRT that calibrated.
    algorithm : str
        TensorRT's calibrator (``entropy2``).
    """

    ours: CalibrationTable
    theirs: CalibrationTable
    trt_cache: bytes
    report: ComparisonReport
    trt_version: str
    algorithm: str = DEFAULT_ALGORITHM

    def to_text(self, *, max_rows: int | None = None) -> str:
        """The report as text: what was compared, then the comparison table."""
        head = [
            f"kldiv vs TensorRT {self.trt_version} ({self.algorithm} calibrator)",
            (
                f"kldiv: {len(self.ours)} tensors; TensorRT cache: {len(self.theirs)} tensors "
                f"(header {self.theirs.header.text if self.theirs.header else None!r})"
            ),
            "ratios are TensorRT / kldiv",
            "",
        ]
        return "\n".join(head) + self.report.to_text(max_rows=max_rows)

    def write(self, out_dir: str | os.PathLike[str], *, force: bool = False) -> dict[str, Path]:
        """Write the report (text, JSON, plot when matplotlib is installed) and both caches.

        ``tensorrt.cache`` holds TensorRT's bytes verbatim; ``kldiv.cache`` holds kldiv's scales
        under the same TensorRT's header, ready to replay. Files are written atomically and
        never overwritten without ``force``.

        Returns
        -------
        dict of str -> Path
            What was written, keyed as :data:`OUTPUT_FILES`.
        """
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        paths = check_outputs(out_dir, force=force)
        written: dict[str, Path] = {}
        written["report"] = atomic_write_text(paths["report"], self.to_text() + "\n", force=force)
        written["json"] = atomic_write_text(paths["json"], self.report.to_json() + "\n", force=force)
        written["tensorrt_cache"] = atomic_write_bytes(
            paths["tensorrt_cache"], self.trt_cache, force=force
        )
        ours = replay_cache_bytes(self.ours, self.trt_version, self.algorithm)
        written["kldiv_cache"] = atomic_write_bytes(paths["kldiv_cache"], ours, force=force)
        from kldiv.plots import plot_comparison  # imports matplotlib only when plotting

        try:
            plot_comparison(self.report, paths["plot"], labels=("kldiv", "TensorRT"), force=force)
        except ImportError:
            logger.warning(
                "matplotlib is not installed; no plot written (pip install \"kldiv[plot]\")"
            )
        else:
            written["plot"] = paths["plot"]
        return written


def assemble(
    ours: CalibrationTable,
    trt_cache: bytes,
    *,
    trt_version: str,
    algorithm: str = DEFAULT_ALGORITHM,
    histograms: Mapping[str, Any] | Any | None = None,
) -> CrosscheckResult:
    """Parse TensorRT's cache and compare it with kldiv's table (no TensorRT needed).

    Parameters
    ----------
    ours : CalibrationTable
        kldiv's table.
    trt_cache : bytes
        The cache TensorRT wrote (``calibrator.captured``).
    trt_version : str
        The TensorRT that wrote it.
    algorithm : str, optional
        The calibrator used.
    histograms : optional
        Passed to :func:`kldiv.comparison.compare` for differences in bins.
    """
    trt_cache = bytes(trt_cache)
    theirs = parse_cache(trt_cache)
    report = compare(ours, theirs, histograms=histograms)
    return CrosscheckResult(ours, theirs, trt_cache, report, str(trt_version), algorithm)


def crosscheck(
    model: str | os.PathLike[str],
    data: Iterable[Mapping[str, Any]],
    *,
    preset: str = DEFAULT_PRESET,
    workspace: int = DEFAULT_WORKSPACE,
    backend: str | CudaBackend = DEFAULT_CUDA_BACKEND,
) -> CrosscheckResult:
    """Calibrate with TensorRT's entropy2 calibrator and with kldiv on the same batches; compare.

    Parameters
    ----------
    model : path
        ONNX model.
    data : iterable of {input_name: array}
        Calibration batches; materialized once so both calibrations see the same batches.
    preset : str, optional
        kldiv's preset (default ``"tensorrt"``).
    workspace : int, optional
        TensorRT workspace limit, bytes.
    backend : str or CudaBackend, optional
        CUDA binding for staging.

    Returns
    -------
    CrosscheckResult

    Raises
    ------
    TensorRTUnavailableError, TensorRTVersionError
        Without TensorRT, or on TensorRT 11 (no calibrators to cross-check against).
    """
    from kldiv.pipeline import calibrate

    from .engine import build_calibrated

    v = _tensorrt.version()
    _tensorrt.require_implicit(v)
    batches = list(data)
    _, captured = build_calibrated(model, batches, workspace=workspace, backend=backend)
    if captured is None:
        raise EngineBuildError(
            "TensorRT built the engine without writing a calibration cache; this should not "
            "happen with a fresh calibrator - please report it with TensorRT's log"
        )
    ours = calibrate(os.fspath(model), batches, preset=preset).table
    return assemble(ours, captured, trt_version=str(v))
