"""The one place where kldiv's defaults live.

Every other module imports its defaults from here; nothing else spells these numbers.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CLIP_WARN_FRACTION",
    "COMPARE_RTOL",
    "COMPARE_ULP_TOLERANCE",
    "DEFAULT_ALGORITHM",
    "DEFAULT_SCHEDULER_TIMEOUT",
    "DEFAULT_SHARDS_PER_WORKER",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_CUDA_BACKEND",
    "DEFAULT_EXPLAIN_MAX_CHANGES",
    "DEFAULT_LEGACY_CUTOFF",
    "DEFAULT_LEGACY_QUANTILE",
    "DEFAULT_MAX_MEMORY",
    "DEFAULT_METHOD",
    "DEFAULT_ORT_OPTIMIZATION",
    "DEFAULT_OVERLAP",
    "DEFAULT_PERCENTILE",
    "DEFAULT_PRECISION",
    "DEFAULT_PRESET",
    "DEFAULT_QDQ_BIAS",
    "DEFAULT_QDQ_WEIGHTS",
    "DEFAULT_RANGE_POLICY",
    "DEFAULT_TOPK",
    "DEFAULT_TRT_VERSION",
    "DEFAULT_WORKSPACE",
    "EXPLAIN_MATCH_BINS",
    "MIN_TABLE_COVERAGE",
    "INT8_MAX",
    "MAX_NUM_BINS",
    "NUM_BINS",
    "NUM_QUANT_LEVELS",
    "TRT_MAJOR_RANGE",
]

#: Number of histogram bins TensorRT's entropy calibrator uses (GTC 2017; algorithm.md §4).
NUM_BINS: Final[int] = 2048
#: Number of quantization levels on one side of zero for symmetric int8 (|x| histogram).
NUM_QUANT_LEVELS: Final[int] = 128
#: Largest int8 magnitude; the scale is ``amax / INT8_MAX`` (algorithm.md #13).
INT8_MAX: Final[int] = 127
#: Preset used when none is named.
DEFAULT_PRESET: Final[str] = "tensorrt"
#: TensorRT version whose cache header is written when none is named.
DEFAULT_TRT_VERSION: Final[str] = "10.9.0"
#: Calibration algorithm named in cache headers when none is given.
DEFAULT_ALGORITHM: Final[str] = "entropy2"
#: Threshold method when none is named (see kldiv.thresholds.METHODS).
DEFAULT_METHOD: Final[str] = "entropy"
#: Top-k agreements ``kldiv evaluate`` reports when none are named.
DEFAULT_TOPK: Final[tuple[int, ...]] = (1, 5)
#: Q/DQ export: weight quantization ("per_channel" or "per_tensor") when none is named.
DEFAULT_QDQ_WEIGHTS: Final[str] = "per_channel"
#: Applying a table: the smallest fraction of the model's calibratable tensors it must cover
#: (a genuine TensorRT cache covers 80-100 %; a table for another model, almost none).
MIN_TABLE_COVERAGE: Final[float] = 0.5
#: Q/DQ export: bias handling ("float" kept, or "int32" quantized) when none is named.
DEFAULT_QDQ_BIAS: Final[str] = "float"
#: Percentile used by the ``percentile`` method when none is named.
DEFAULT_PERCENTILE: Final[float] = 99.99
#: Batch size of calibration batches when none is named.
DEFAULT_BATCH_SIZE: Final[int] = 8
#: Regression cutoff of the legacy calibrator (``method="legacy"``) and of its cache header
#: when none is given: TensorRT leaves it to the user; 1.0 is what TensorRT's sampleINT8 legacy
#: cache (``legacy-mnist-trt6.cache``) and the MLPerf 3D-UNet legacy cache hold.
DEFAULT_LEGACY_CUTOFF: Final[float] = 1.0
#: Quantile of the legacy calibrator and of its cache header when none is given: TensorRT
#: leaves it to the user; 1 - 1e-6 is what TensorRT's sampleINT8 legacy cache holds (the
#: MLPerf 3D-UNet legacy cache holds 0.99999).
DEFAULT_LEGACY_QUANTILE: Final[float] = 0.999999
#: Summaries flag (and the log warns about) a tensor whose threshold clips more than this
#: fraction of its histogram's mass: three times the largest share TensorRT's own sampleINT8
#: thresholds clip (1.6 %, pool1); the degenerate KL = 0 minimum clips 99 % (docs/fidelity.md).
CLIP_WARN_FRACTION: Final[float] = 0.05

# --- histograms ---
# (Which implementation fills and searches, KLDIV_KERNELS=auto|numba|numpy, defaults to
# kldiv._kernels.DEFAULT_MODE: the kernel layer imports nothing of kldiv, so its one default
# lives there.)
#: Range policy of histogram collection when none is named: the TensorRT developer guide's
#: "first batch's absmax, grown by powers of two" (see kldiv.histogram).
DEFAULT_RANGE_POLICY: Final[str] = "pow2"

#: ``kldiv.compare``: scales within this many float32 ULPs count as agreeing to rounding ("ulp").
COMPARE_ULP_TOLERANCE: Final[int] = 4
#: ``kldiv.compare``: amaxes within this relative difference count as "close".
COMPARE_RTOL: Final[float] = 0.01

# --- end-to-end calibration ---
#: onnxruntime graph optimization level of the calibration runner. Requested outputs are never
#: fused away, so every level yields the same tensors (values equal to float rounding); "all" is
#: the fastest
#: (benchmarks/calibrate_e2e.py).
DEFAULT_ORT_OPTIMIZATION: Final[str] = "all"
#: Run the model on the next batch while the current batch's histograms fill, where two
#: batches of activations fit the memory budget (same counts, same errors in the same order).
#: Off: on 2 cores the serial run, whose fills use both cores (a batch's tensors on two
#: threads), was as fast or faster, with one batch less held (benchmarks/calibrate_e2e.py,
#: kldiv vs kldiv-overlap; docs/performance.md).
DEFAULT_OVERLAP: Final[bool] = False
#: TensorRT builder workspace (memory-pool limit, bytes) when none is named (trt_backend).
DEFAULT_WORKSPACE: Final[int] = 1 << 30
#: Engine precision trt_backend builds when none is named (and no cache/table is given).
DEFAULT_PRECISION: Final[str] = "fp32"
#: CUDA binding trt_backend stages buffers with when none is named ("cuda-python", "pycuda").
DEFAULT_CUDA_BACKEND: Final[str] = "cuda-python"

# --- limits of user options ---
#: Most histogram bins a calibration accepts (``--num-bins``): 32x TensorRT's 2048 and 8x
#: MXNet's 8001. Each tensor keeps its int64 counts in memory and the entropy search grows with
#: the square of the bin count (kldiv._checks.check_num_bins).
MAX_NUM_BINS: Final[int] = 1 << 16
#: Oldest and newest TensorRT major versions whose cache header number kldiv writes from a
#: version string (the real caches it was checked on span 5.1 to 10.14; a newer TensorRT's
#: header number can be given as a number).
TRT_MAJOR_RANGE: Final[tuple[int, int]] = (5, 10)

# --- distributed calibration (kldiv.distributed) ---
#: Shards per worker when a sharded calibration is not told how many. More shards balance
#: load and make a retried shard cheaper, but each costs a task, a first batch that grows the
#: ranges again, and its result's transfer (~10-90 ms each in benchmarks/sharded.py).
DEFAULT_SHARDS_PER_WORKER: Final[int] = 2
#: Seconds to wait for a Dask scheduler to answer (``--scheduler``) before giving up.
DEFAULT_SCHEDULER_TIMEOUT: Final[float] = 10.0
#: Bytes of activations a calibration holds at once (``--max-memory``): above it the model
#: runs in stages (kldiv.runners.OnnxRuntimeRunner, max_memory). Chosen with
#: benchmarks/bounded_memory.py.
DEFAULT_MAX_MEMORY: Final[int] = 512 * 2**20

# --- ranking tensors: kldiv.evaluate.rank_tensors / kldiv evaluate --per-tensor ---
#: Fraction of the quantization loss the suggested exclusion set should recover.
DEFAULT_SUGGEST_TARGET: Final[float] = 0.8
#: Most tensors the suggested exclusion set may leave in float.
DEFAULT_SUGGEST_MAX: Final[int] = 32
#: Rows of the ranking shown as text.
DEFAULT_RANKING_ROWS: Final[int] = 20

# --- explaining scales: kldiv explain / kldiv report ---
#: ``kldiv explain``: most option fields changed together when looking for the options that
#: reproduce a given (TensorRT) threshold.
DEFAULT_EXPLAIN_MAX_CHANGES: Final[int] = 3
#: ``kldiv explain``: a variant of the search reproduces a given threshold when its own lies
#: within this many histogram bins of it (TensorRT's values sit on bin centres, 1 bin apart).
EXPLAIN_MATCH_BINS: Final[float] = 0.25
