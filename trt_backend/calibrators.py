"""TensorRT calibrators fed by kldiv data sources, capturing and replaying calibration caches.

:func:`make_calibrator` defines a subclass of the TensorRT calibrator base class chosen by
``algorithm`` *when it is called* (Polygraphy's habit), so this module imports without TensorRT.
The TensorRT-facing methods are thin; the logic lives in :class:`CalibrationFeed`, a plain
object (testable without TensorRT):

* batches come from any kldiv data source (an iterable of ``{input_name: array}``), are checked
  against the network's inputs and staged on the device (:mod:`trt_backend.device`), one
  reused buffer per input, freed when the data runs out or the calibrator is closed;
* ``write_calibration_cache`` captures the bytes TensorRT writes (:attr:`CalibrationFeed.captured`)
  and, when a ``cache`` path was given, writes them there;
* **replay**: a kldiv :class:`~kldiv.scales.CalibrationTable` is served as the cache, with the
  header rewritten for the running TensorRT version and the calibrator's algorithm
  (:func:`replay_cache_bytes`); TensorRT uses a cache only when that header matches.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kldiv.cachefile import (
    format_cache,
    header_for,
    normalize_algorithm,
    parse_cache,
    read_cache,
)
from kldiv.defaults import (
    DEFAULT_ALGORITHM,
    DEFAULT_CUDA_BACKEND,
    DEFAULT_LEGACY_CUTOFF,
    DEFAULT_LEGACY_QUANTILE,
)
from kldiv.errors import CacheFormatError, DataSourceError
from kldiv.scales import CalibrationTable

from . import _tensorrt
from ._tensorrt import CALIBRATOR_CLASSES, TrtVersion
from .device import CudaBackend, SpecsLike, StagingBuffers, TensorSpec, as_specs, check_batch

__all__ = [
    "CalibrationFeed",
    "check_cache_header",
    "make_calibrator",
    "normalize_algorithm",
    "replay_cache_bytes",
]

logger = logging.getLogger(__name__)


def replay_cache_bytes(
    table: CalibrationTable,
    trt_version: str | TrtVersion,
    algorithm: str = DEFAULT_ALGORITHM,
    *,
    cutoff: float = DEFAULT_LEGACY_CUTOFF,
    quantile: float = DEFAULT_LEGACY_QUANTILE,
) -> bytes:
    """The cache bytes to hand a given TensorRT: ``table``'s scales under that TensorRT's header.

    The table's own header (whatever TensorRT or tool wrote it) is replaced by
    ``header_for(trt_version, algorithm)``; the scales are written bit for bit.

    Parameters
    ----------
    table : CalibrationTable
        kldiv's scales (or a cache read with :func:`kldiv.cachefile.read_cache`).
    trt_version : str or TrtVersion
        The TensorRT that will read the cache (normally :func:`trt_backend._tensorrt.version`).
    algorithm : str, optional
        The calibrator's algorithm; the header names it.
    cutoff, quantile : float, optional
        The legacy calibrator's parameters (``algorithm="legacy"`` only).

    Returns
    -------
    bytes
        UTF-8 cache text.
    """
    algo = normalize_algorithm(algorithm)
    header = header_for(str(trt_version), algo, cutoff=cutoff, quantile=quantile)
    return format_cache(table, header=header).encode("utf-8")


def check_cache_header(
    data: bytes,
    trt_version: str | TrtVersion,
    algorithm: str = DEFAULT_ALGORITHM,
    *,
    path: str | None = None,
    cutoff: float = DEFAULT_LEGACY_CUTOFF,
    quantile: float = DEFAULT_LEGACY_QUANTILE,
) -> CalibrationTable:
    """Parse a cache and check that its header is the one ``trt_version`` expects.

    Returns
    -------
    CalibrationTable
        The parsed cache.

    Raises
    ------
    CacheFormatError
        If the cache cannot be read, or its header is for another TensorRT version or
        algorithm (TensorRT would ignore or reject it); the message says to replay it instead.
    """
    algo = normalize_algorithm(algorithm)
    table = parse_cache(data, path=path, allow_unknown_header=True)
    expected = header_for(str(trt_version), algo, cutoff=cutoff, quantile=quantile)
    found = table.header.text if table.header is not None else "(none)"
    if found != expected.text:
        raise CacheFormatError(
            f"cache header {found!r} is not the one TensorRT {trt_version} writes for "
            f"{algo} ({expected.text!r}); TensorRT would ignore or reject this cache",
            path=path,
            line=1,
            hint="pass it as replay=read_cache(path) (kldiv rewrites the header), or "
            "`kldiv-trt build MODEL --cache FILE`, or delete it to recalibrate",
        )
    return table


def _first_dim(batch: Mapping[str, Any]) -> int:
    for arr in batch.values():
        shape = np.shape(arr)
        if shape:
            return int(shape[0])
    return 1


class CalibrationFeed:
    """What a kldiv calibrator does, without TensorRT: batches, staging, cache capture/replay.

    Parameters
    ----------
    data : iterable of {input_name: array}, optional
        Calibration batches (any kldiv data source). Not needed when replaying.
    algorithm : str
        The calibrator's algorithm (names the cache header).
    trt_version : str or TrtVersion
        The running TensorRT (for the replayed header and for checking ``cache``).
    cache : path, optional
        A cache file: read (header checked) and served to TensorRT when it exists; written with
        what TensorRT writes when it does not.
    replay : CalibrationTable or path, optional
        kldiv scales to serve as the cache, under the running TensorRT's header.
    input_specs : sequence of TensorSpec or mapping, optional
        The network's inputs; by default taken from the first batch. :meth:`bind_inputs` sets
        them from the parsed network before a build.
    backend : str or CudaBackend
        CUDA binding for staging (``"cuda-python"`` default, ``"pycuda"``).
    force : bool
        Overwrite a differing ``cache`` file with what TensorRT writes.
    cutoff, quantile : float
        The legacy calibrator's regression cutoff and quantile.
    """

    def __init__(
        self,
        data: Iterable[Mapping[str, Any]] | None,
        *,
        algorithm: str,
        trt_version: str | TrtVersion,
        cache: str | os.PathLike[str] | None = None,
        replay: CalibrationTable | str | os.PathLike[str] | None = None,
        input_specs: SpecsLike | None = None,
        backend: str | CudaBackend = DEFAULT_CUDA_BACKEND,
        force: bool = False,
        cutoff: float = DEFAULT_LEGACY_CUTOFF,
        quantile: float = DEFAULT_LEGACY_QUANTILE,
    ) -> None:
        self.algorithm = normalize_algorithm(algorithm)
        self.trt_version = str(trt_version)
        self.cache_path = Path(cache) if cache is not None else None
        self.backend = backend
        self.force = force
        self.cutoff = float(cutoff)
        self.quantile = float(quantile)
        self.input_specs = input_specs
        self.captured: bytes | None = None
        self.error: BaseException | None = None
        self.batches_served = 0
        self._staging: StagingBuffers | None = None
        self._pending: Mapping[str, Any] | None = None
        self._served: bytes | None = None
        if replay is not None:
            table = replay if isinstance(replay, CalibrationTable) else read_cache(replay)
            self._served = replay_cache_bytes(
                table, self.trt_version, self.algorithm, cutoff=self.cutoff, quantile=self.quantile
            )
        elif self.cache_path is not None and self.cache_path.exists():
            raw = self.cache_path.read_bytes()
            check_cache_header(
                raw,
                self.trt_version,
                self.algorithm,
                path=str(self.cache_path),
                cutoff=self.cutoff,
                quantile=self.quantile,
            )
            self._served = raw
        if data is None and self._served is None:
            raise DataSourceError(
                "a calibrator needs calibration data, an existing cache file or a table to "
                "replay; pass data=..., cache=PATH or replay=table"
            )
        self._iter: Iterator[Mapping[str, Any]] | None = iter(data) if data is not None else None

    # -- batches ------------------------------------------------------------------------
    def _peek(self) -> Mapping[str, Any] | None:
        if self._pending is None and self._iter is not None:
            try:
                batch = next(self._iter)
            except StopIteration:
                self._iter = None
                return None
            if not isinstance(batch, Mapping):
                raise DataSourceError(
                    f"a calibration batch must be a mapping {{input_name: array}}, got "
                    f"{type(batch).__name__}; wrap arrays as {{'input': array}}"
                )
            self._pending = batch
        return self._pending

    @property
    def first_batch(self) -> Mapping[str, Any] | None:
        """The next batch to be served, without consuming it (None when there is none)."""
        return self._peek()

    @property
    def batch_size(self) -> int:
        """The first dimension of the first batch (1 when replaying without data)."""
        batch = self._peek()
        return 1 if batch is None else _first_dim(batch)

    def bind_inputs(
        self, specs: SpecsLike
    ) -> None:
        """Set the network's inputs and check the first batch against them now.

        Raises
        ------
        DataSourceError
            If the first batch's names, shapes or dtypes do not match the network.
        """
        self.input_specs = specs
        batch = self._peek()
        if batch is not None:
            check_batch(as_specs(specs), batch)

    def next_batch(self, names: Sequence[str]) -> list[int] | None:
        """Stage the next batch; return the device pointers in ``names`` order, or None at the end.

        Errors are recorded in :attr:`error` (TensorRT cannot carry a Python exception) and
        end calibration; :func:`trt_backend.engine.build_engine` raises them afterwards.
        """
        try:
            batch = self._peek()
            if batch is None:
                if self.batches_served == 0 and self._served is not None:
                    raise DataSourceError(
                        "TensorRT asked for calibration batches although a cache was served, "
                        "so it did not accept the cache (its header or tensor names do not "
                        "match this network); check the cache's tensor names against the "
                        "network, or pass data= so TensorRT can calibrate"
                    )
                self.close()
                return None
            self._pending = None
            if self._staging is None:
                specs = self.input_specs if self.input_specs is not None else _specs_of(batch)
                self._staging = StagingBuffers(specs, backend=self.backend)
            pointers = self._staging.stage(batch)
            unknown = [n for n in names if n not in pointers]
            if unknown:
                raise DataSourceError(
                    f"TensorRT asked for input(s) {unknown} that the batches do not have "
                    f"(they have {sorted(pointers)}); name the batch arrays after the network's "
                    "inputs"
                )
            self.batches_served += 1
            return [pointers[n] for n in names]
        except Exception as exc:  # noqa: BLE001 - TensorRT cannot carry it; re-raised after the build
            logger.error("calibration batch %d failed: %s", self.batches_served + 1, exc)
            self.error = exc
            self.close()
            return None

    # -- cache ----------------------------------------------------------------------------
    def read_cache(self) -> bytes | None:
        """The cache to serve TensorRT: the replayed table, an existing cache file, or None."""
        return self._served

    def write_cache(self, cache: Any) -> None:
        """Capture what TensorRT writes; write it to the ``cache`` path when one was given."""
        data = bytes(cache)
        self.captured = data
        path = self.cache_path
        if path is None:
            return
        from kldiv._io import atomic_write_bytes

        if path.exists():
            if path.read_bytes() == data:
                return
            if not self.force:
                logger.warning(
                    "not overwriting %s with the cache TensorRT wrote (it differs); pass "
                    "force=True to overwrite; the bytes are in calibrator.captured",
                    path,
                )
                return
        atomic_write_bytes(path, data, force=True)
        logger.info("wrote TensorRT's calibration cache to %s", path)

    def close(self) -> None:
        """Free the device buffers (idempotent)."""
        if self._staging is not None:
            staging, self._staging = self._staging, None
            staging.close()


def _specs_of(batch: Mapping[str, Any]) -> list[TensorSpec]:
    specs = []
    for name, arr in batch.items():
        a = np.asarray(arr)
        specs.append(TensorSpec(str(name), tuple(int(d) for d in a.shape), a.dtype))
    return specs


def make_calibrator(
    data: Iterable[Mapping[str, Any]] | None = None,
    algorithm: str = DEFAULT_ALGORITHM,
    cache: str | os.PathLike[str] | None = None,
    replay: CalibrationTable | str | os.PathLike[str] | None = None,
    *,
    input_specs: SpecsLike | None = None,
    backend: str | CudaBackend = DEFAULT_CUDA_BACKEND,
    force: bool = False,
    cutoff: float = DEFAULT_LEGACY_CUTOFF,
    quantile: float = DEFAULT_LEGACY_QUANTILE,
) -> Any:
    """Make a TensorRT INT8 calibrator (implicit quantization, TensorRT 8.6–10.x).

    Parameters
    ----------
    data : iterable of {input_name: array}, optional
        Calibration batches from any kldiv data source. Optional when replaying.
    algorithm : {'entropy2', 'entropy', 'minmax', 'legacy'}
        Picks the base class: ``IInt8EntropyCalibrator2`` (default), ``IInt8EntropyCalibrator``,
        ``IInt8MinMaxCalibrator``, ``IInt8LegacyCalibrator``.
    cache : path, optional
        Cache file to read (its header must match the running TensorRT and the algorithm) or,
        when absent, to write with the cache TensorRT produces.
    replay : CalibrationTable or path, optional
        kldiv's scales, served to TensorRT as the cache under the running TensorRT's header.
    input_specs, backend, force, cutoff, quantile
        See :class:`CalibrationFeed`.

    Returns
    -------
    tensorrt.IInt8Calibrator
        An instance of the subclass; ``.feed`` is its :class:`CalibrationFeed`, ``.captured`` the
        cache TensorRT wrote (bytes) once a build has run. Use it as a context manager (or call
        ``.close()``) to free device memory deterministically.

    Raises
    ------
    TensorRTUnavailableError
        Without TensorRT (the message names ``pip install "kldiv[trt]"``).
    TensorRTVersionError
        On TensorRT 11 and later, which removed calibrators: use the Q/DQ path.
    CacheFormatError
        If ``cache`` exists with a header for another TensorRT or algorithm.
    """
    trt = _tensorrt.load()
    v = _tensorrt.version()
    _tensorrt.require_implicit(v)
    algo = normalize_algorithm(algorithm)
    feed = CalibrationFeed(
        data,
        algorithm=algo,
        trt_version=v,
        cache=cache,
        replay=replay,
        input_specs=input_specs,
        backend=backend,
        force=force,
        cutoff=cutoff,
        quantile=quantile,
    )
    base = getattr(trt, CALIBRATOR_CLASSES[algo])
    return _subclass(base, algo)(feed)


def _subclass(base: Any, algo: str) -> Any:
    """Define the calibrator class on ``base`` (a TensorRT calibrator class)."""

    class KldivCalibrator(base):  # type: ignore[misc]
        """A TensorRT calibrator fed by kldiv (see :func:`make_calibrator`)."""

        algorithm = algo

        def __init__(self, feed: CalibrationFeed) -> None:
            base.__init__(self)  # TensorRT's trampoline needs the base initializer
            self.feed = feed

        def get_batch_size(self) -> int:
            return self.feed.batch_size

        def get_batch(self, names: list[str], *args: Any) -> list[int] | None:
            return self.feed.next_batch(names)

        def read_calibration_cache(self, *args: Any) -> bytes | None:
            return self.feed.read_cache()

        def write_calibration_cache(self, cache: Any, *args: Any) -> None:
            self.feed.write_cache(cache)

        @property
        def captured(self) -> bytes | None:
            return self.feed.captured

        def close(self) -> None:
            self.feed.close()

        def __enter__(self) -> Any:
            return self

        def __exit__(self, *exc: object) -> None:
            self.close()

        if algo == "legacy":

            def get_quantile(self) -> float:
                return self.feed.quantile

            def get_regression_cutoff(self) -> float:
                return self.feed.cutoff

            def read_histogram_cache(self, *args: Any) -> bytes | None:
                return None

            def write_histogram_cache(self, *args: Any) -> None:
                return None

    KldivCalibrator.__name__ = KldivCalibrator.__qualname__ = f"Kldiv{base.__name__[1:]}"
    return KldivCalibrator
