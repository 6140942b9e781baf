"""Histogram fills of CUDA arrays, on the GPU, with exactly the NumPy reference's counts.

:func:`fill_counts` takes a CuPy array, or anything exposing ``__cuda_array_interface__`` or
DLPack with a CUDA device (torch CUDA tensors, JAX arrays ...), fills the counts of the
documented bin rule on the device, and copies back only the counts and four numbers.
:class:`~kldiv.histogram.ActivationHistogram` and :class:`~kldiv.collect.HistogramCollector`
call it when handed such arrays, so ``collector.observe({"conv1": torch_cuda_tensor})`` works.

The bin rule is the one of :mod:`kldiv.histogram`, to the bit: ``|x|`` widened exactly to
float64 (float16 decoded from its bits), ``k = min(trunc(|x| * (num_bins / amax)),
num_bins - 1)`` with ``num_bins / amax`` rounded once on the host and the product rounded in
float64 on the device (one IEEE multiply, no fused operation around it); values above
``amax`` counted as over (and, with ``clip``, in the last bin); NaN/±Inf counted, never
binned.

How it is fast: each block keeps its histogram in shared memory (several copies, one per
group of warps, so that equal values do not serialise on one counter), each thread reads
16 bytes at a time, and counts the two hottest bins (0, the zeros after a ReLU, and the last,
saturated values) in registers; the blocks add their histograms into the device counts at
the end. Histograms too large for shared memory count straight into device memory.
``benchmarks/gpu_fill.py`` measures it.

CuPy is imported lazily: kldiv does not depend on it. Only CUDA float16/32/64 arrays are
accepted; other dtypes raise :class:`~kldiv.errors.HistogramError`.

PyTorch forward hooks
---------------------
Histogram a PyTorch model's activations where they are computed (recipe, tested in
``tests/test_gpu.py``)::

    collector = kldiv.HistogramCollector()
    acts = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: acts.__setitem__(name, out))
             for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.ReLU))]
    with torch.no_grad():
        for i, batch in enumerate(loader):
            model(batch.cuda())
            collector.observe({k: v.detach() for k, v in acts.items()}, batch=i)
            acts.clear()
    for h in hooks:
        h.remove()
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ._bins import _check_amax, _check_num_bins, _float_threshold
from .defaults import NUM_BINS
from .errors import HistogramError

__all__ = [
    "FillResult",
    "absmax_stats",
    "as_device_array",
    "count_at_least",
    "fill_counts",
    "to_host",
]

#: Threads per block of the fill kernel.
_THREADS = 512
#: Shared memory a block may use for its histogram copies (the default limit, no opt-in).
_SHARED_BYTES = 48 * 1024
#: Most copies of the histogram per block (one per group of warps).
_MAX_COPIES = 4

_SOURCE = r"""
__device__ __forceinline__ double kl_abs(float v) { return fabs((double)v); }
__device__ __forceinline__ double kl_abs(double v) { return fabs(v); }
__device__ __forceinline__ double kl_abs(unsigned short h) {
    unsigned int m = h & 0x7FFFu, e = m >> 10, f = m & 0x3FFu;
    if (e == 31u) return f ? __longlong_as_double(0x7FF8000000000000LL)
                           : __longlong_as_double(0x7FF0000000000000LL);
    if (e == 0u) return (double)f * 5.9604644775390625e-08;   /* f * 2**-24, exact */
    return ldexp((double)(f | 0x400u), (int)e - 25);          /* exact */
}

struct KlState {
    unsigned long long nonfinite, over, zeros, last;
    double max_over, max_abs;
};

/* One value into the histogram: shared-memory copies count in unsigned int, the global
   counts (no copies) in unsigned long long; the rule is the same. */
template <typename C>
__device__ __forceinline__ void kl_one(double a, double amax, double inv_w, unsigned int nb,
                                       int clip, C* hist, KlState& s) {
    if (a <= amax) {                               /* false for NaN and +Inf */
        unsigned int b = (unsigned int)__dmul_rn(a, inv_w);  /* one IEEE product; trunc == floor */
        b = min(b, nb - 1u);
        s.max_abs = fmax(s.max_abs, a);
        if (b == 0u) s.zeros++;
        else if (b == nb - 1u) s.last++;
        else atomicAdd(hist + b, (C)1);
    } else if (isfinite(a)) {
        s.over++;
        s.max_over = fmax(s.max_over, a);
        s.max_abs = fmax(s.max_abs, a);
        if (clip) s.last++;
    } else {
        s.nonfinite++;
    }
}

template <typename T, typename V, int VN>
__device__ void kl_fill(const T* __restrict__ x, long long n, double amax, double inv_w,
                        int num_bins, int clip, int copies,
                        unsigned long long* __restrict__ counts,
                        unsigned long long* __restrict__ stats) {
    extern __shared__ unsigned int sh[];
    const unsigned int nb = (unsigned int)num_bins;
    for (int i = threadIdx.x; i < num_bins * copies; i += blockDim.x) sh[i] = 0u;
    __syncthreads();
    unsigned int* hist = copies ? sh + ((threadIdx.x >> 5) % copies) * num_bins : 0;
    KlState s = {0ull, 0ull, 0ull, 0ull, 0.0, 0.0};
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long nvec = ((((unsigned long long)x) % sizeof(V)) == 0) ? n / VN : 0;
    const V* xv = (const V*)x;
    for (long long i = tid; i < nvec; i += stride) {
        V v = xv[i];
        const T* e = (const T*)&v;
#pragma unroll
        for (int j = 0; j < VN; ++j) {
            double a = kl_abs(e[j]);
            if (copies) kl_one(a, amax, inv_w, nb, clip, hist, s);
            else kl_one(a, amax, inv_w, nb, clip, counts, s);
        }
    }
    for (long long i = nvec * VN + tid; i < n; i += stride) {
        double a = kl_abs(x[i]);
        if (copies) kl_one(a, amax, inv_w, nb, clip, hist, s);
        else kl_one(a, amax, inv_w, nb, clip, counts, s);
    }
    /* warp reductions, then one atomic per warp */
    unsigned long long m_over = __double_as_longlong(s.max_over);
    unsigned long long m_abs = __double_as_longlong(s.max_abs);
    for (int off = 16; off > 0; off >>= 1) {
        s.nonfinite += __shfl_down_sync(0xffffffffu, s.nonfinite, off);
        s.over += __shfl_down_sync(0xffffffffu, s.over, off);
        s.zeros += __shfl_down_sync(0xffffffffu, s.zeros, off);
        s.last += __shfl_down_sync(0xffffffffu, s.last, off);
        m_over = max(m_over, __shfl_down_sync(0xffffffffu, m_over, off));
        m_abs = max(m_abs, __shfl_down_sync(0xffffffffu, m_abs, off));
    }
    if ((threadIdx.x & 31) == 0) {
        if (s.nonfinite) atomicAdd(stats + 0, s.nonfinite);
        if (s.over) atomicAdd(stats + 1, s.over);
        if (m_over) atomicMax(stats + 2, m_over);   /* non-negative doubles order as bits */
        if (m_abs) atomicMax(stats + 3, m_abs);
        if (s.zeros) atomicAdd(counts + 0, s.zeros);
        if (s.last) atomicAdd(counts + (nb - 1u), s.last);
    }
    if (copies) {
        __syncthreads();
        for (int b = threadIdx.x; b < num_bins; b += blockDim.x) {
            unsigned long long t = 0ull;
            for (int c = 0; c < copies; ++c) t += sh[c * num_bins + b];
            if (t) atomicAdd(counts + b, t);
        }
    }
}

extern "C" __global__ void kl_fill_f32(const float* x, long long n, double amax, double inv_w,
        int num_bins, int clip, int copies, unsigned long long* counts,
        unsigned long long* stats) {
    kl_fill<float, float4, 4>(x, n, amax, inv_w, num_bins, clip, copies, counts, stats);
}
extern "C" __global__ void kl_fill_f64(const double* x, long long n, double amax, double inv_w,
        int num_bins, int clip, int copies, unsigned long long* counts,
        unsigned long long* stats) {
    kl_fill<double, double2, 2>(x, n, amax, inv_w, num_bins, clip, copies, counts, stats);
}
extern "C" __global__ void kl_fill_f16(const unsigned short* x, long long n, double amax,
        double inv_w, int num_bins, int clip, int copies, unsigned long long* counts,
        unsigned long long* stats) {
    kl_fill<unsigned short, uint4, 8>(x, n, amax, inv_w, num_bins, clip, copies, counts, stats);
}
"""

_KERNELS = {2: "kl_fill_f16", 4: "kl_fill_f32", 8: "kl_fill_f64"}


def _cupy() -> Any:
    try:
        import cupy
    except ImportError:
        raise HistogramError(
            "CUDA arrays are histogrammed with CuPy, which is not installed: pip install "
            "cupy-cuda12x (or cupy-cuda13x), or copy the array to the host first"
        ) from None
    return cupy


@functools.cache
def _kernel(name: str, device: int) -> Any:
    cp = _cupy()
    with cp.cuda.Device(device):
        module = cp.RawModule(code=_SOURCE, options=("--std=c++14",))
        return module.get_function(name)


@functools.cache
def _sm_count(device: int) -> int:
    cp = _cupy()
    return int(cp.cuda.runtime.getDeviceProperties(device)["multiProcessorCount"])


def _dtype_name(values: Any) -> str:
    return str(getattr(values, "dtype", type(values).__name__))


def as_device_array(values: Any) -> Any:
    """A CuPy view (no copy) of a CUDA array of float16/32/64.

    Parameters
    ----------
    values : cupy.ndarray, or an object with ``__cuda_array_interface__`` or DLPack
        E.g. a torch CUDA tensor.

    Returns
    -------
    cupy.ndarray

    Raises
    ------
    HistogramError
        CuPy missing, or a dtype other than float16/32/64 (bfloat16, integers, complex ...).
    """
    cp = _cupy()
    if isinstance(values, cp.ndarray):
        arr = values
    else:
        try:
            if getattr(values, "__cuda_array_interface__", None) is not None:
                arr = cp.asarray(values)
            else:
                arr = cp.from_dlpack(values)
        except Exception as exc:  # noqa: BLE001 - e.g. torch bfloat16 has no such export
            raise HistogramError(
                f"cannot histogram a CUDA array of dtype {_dtype_name(values)} "
                f"({exc.__class__.__name__}: {exc}); convert it to float32 first "
                "(torch: tensor.float())"
            ) from None
    if arr.dtype.kind != "f" or arr.dtype.itemsize not in (2, 4, 8):
        given = arr.dtype if values is arr else _dtype_name(values)  # torch.bfloat16, not |V2
        raise HistogramError(
            f"cannot histogram a CUDA array of dtype {given}: the GPU fill takes float16, "
            "float32 or float64; convert it first (cupy: x.astype(cupy.float32), torch: "
            "tensor.float())"
        )
    return arr


#: What a fill returns: counts, NaN/±Inf seen, values above amax, their largest, largest |x|.
FillResult = tuple[np.ndarray, int, int, float, float]


def _launch(arr: Any, amax: float, inv_w: float, num_bins: int, clip: bool) -> FillResult:
    cp = _cupy()
    x = arr if arr.flags.c_contiguous else cp.ascontiguousarray(arr)  # one device copy
    if x.dtype.itemsize == 2:
        x = x.view(cp.uint16)
    n = int(x.size)
    device = int(x.device.id)
    counts = cp.zeros(num_bins, dtype=cp.uint64)
    stats = cp.zeros(4, dtype=cp.uint64)
    if n:
        copies = min(_MAX_COPIES, _SHARED_BYTES // (4 * num_bins))
        per_block = _THREADS * (16 // x.dtype.itemsize)
        blocks = max(1, min(-(-n // per_block), _sm_count(device) * (2048 // _THREADS)))
        kernel = _kernel(_KERNELS[arr.dtype.itemsize], device)
        kernel(
            (blocks,), (_THREADS,),
            (x, np.int64(n), np.float64(amax), np.float64(inv_w), np.int32(num_bins),
             np.int32(bool(clip)), np.int32(copies), counts, stats),
            shared_mem=4 * num_bins * copies,
        )
    host_counts = counts.get().astype(np.int64)
    s = stats.get()
    return (host_counts, int(s[0]), int(s[1]), float(s[2:3].view(np.float64)[0]),
            float(s[3:4].view(np.float64)[0]))


def fill_counts(
    values: Any, amax: float, num_bins: int = NUM_BINS, *, clip: bool = False
) -> FillResult:
    """Counts of ``|values|`` under the documented bin rule, computed on the GPU.

    The twin of :func:`kldiv.histogram.fill_counts_reference` for CUDA arrays: the same
    counts, NaN/±Inf count, over-range count, largest over-range and largest finite ``|x|``
    (``kldiv.histogram.FillStats(*fill_counts(...))`` gives the reference's object). Only the
    counts (``num_bins`` int64) and four numbers are copied to the host. A non-contiguous
    array is first copied once on the device.

    Parameters
    ----------
    values : CUDA array
        CuPy, or anything exposing ``__cuda_array_interface__`` / DLPack (torch CUDA tensors);
        float16, float32 or float64.
    amax : float
        Range ``[0, amax]``.
    num_bins : int, default NUM_BINS
        Number of bins.
    clip : bool, default False
        Count values above ``amax`` in the last bin.

    Returns
    -------
    tuple
        ``(counts, n_nonfinite, n_over, max_over, max_abs)``: int64 counts, two ints, two
        floats.
    """
    arr = as_device_array(values)
    num_bins = _check_num_bins(num_bins)
    amax = _check_amax(amax, num_bins)
    return _launch(arr, amax, num_bins / amax if amax > 0 else 0.0, num_bins, clip)


def absmax_stats(values: Any) -> tuple[float, int]:
    """``(largest finite |x|, number of NaN/±Inf)`` of a CUDA array, in one pass."""
    arr = as_device_array(values)
    big = float(np.finfo(np.float64).max)
    _, n_nonfinite, _, _, max_abs = _launch(arr, big, 0.0, 1, False)
    return max_abs, n_nonfinite


def count_at_least(values: Any, threshold: float) -> int:
    """How many finite values of a CUDA array have ``|x| >= threshold``.

    Exact, as :func:`kldiv.histogram.count_at_least`.
    """
    cp = _cupy()
    arr = as_device_array(values)
    t = _float_threshold(arr.dtype, threshold)
    if t is None:
        return 0
    inf = arr.dtype.type(np.inf)
    n = cp.count_nonzero((arr >= t) & (arr < inf)) + cp.count_nonzero((arr <= -t) & (arr > -inf))
    return int(n)


def to_host(values: Any) -> np.ndarray:
    """A NumPy copy of a CUDA array (used on error paths only)."""
    return np.asarray(as_device_array(values).get())
