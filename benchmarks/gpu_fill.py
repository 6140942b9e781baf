"""GPU histogram fill throughput (``kldiv.gpu``) against ``torch.histc`` and the CPU kernel.

Needs a CUDA GPU, CuPy and (for the comparison) torch; run it on the device machine. For each
input (2**28 values by default: 1 GiB of float32):

1. the counts of ``kldiv.gpu.fill_counts`` are checked equal, bin for bin, to the NumPy
   reference (``kldiv.histogram.fill_counts_reference`` on a host copy) and to the CPU kernel
   (``kldiv._kernels.resolve().fill_counts``), before anything is timed;
2. the GPU fill is timed with CUDA events (median of ``--repeat`` runs after warm-up; the
   time includes copying the counts back), as is ``torch.histc(|x|, 2048, 0, amax)`` (its
   counts are compared too: it bins in float32, so some values land one bin off);
3. the CPU kernel is timed on the host copy (best of 3), and a device-to-device copy gives
   the memory ceiling (bytes read + written).

Prints GB/s of input read (TB/s = 1000 GB/s) and the ratios, measured in the same run.

Usage::

    python benchmarks/gpu_fill.py                   # 2**28 values
    python benchmarks/gpu_fill.py --log2 24 --repeat 10
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from kldiv.defaults import NUM_BINS
from kldiv.histogram import fill_counts_reference


def _events_ms(cp, fn, repeat: int) -> float:
    for _ in range(3):
        fn()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(repeat):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log2", type=int, default=28, help="log2 of the values per input")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--bins", type=int, default=NUM_BINS)
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU kernel")
    ap.add_argument("--sweep", action="store_true",
                    help="also time other block sizes and histogram copies per block")
    args = ap.parse_args()

    import cupy as cp

    from kldiv import gpu

    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None
    n = 1 << args.log2
    props = cp.cuda.runtime.getDeviceProperties(0)
    print(f"device: {props['name'].decode()}, {props['multiProcessorCount']} SMs; "
          f"{n:,} values per input, {args.bins} bins")
    print(f"device-to-device copy: {_copy_gbs(cp, args.repeat):,.0f} GB/s (read + write)")
    rng = cp.random.default_rng(0)
    inputs = {
        "float32 normal": lambda: rng.standard_normal(n, dtype=cp.float32),
        "float32 ReLU (50% zeros)": lambda: cp.maximum(rng.standard_normal(n, dtype=cp.float32), 0),
        "float32 saturated (ReLU6, 10% at 6)": lambda: cp.clip(
            rng.standard_normal(n, dtype=cp.float32) * 4, 0, 6),
        "float16 normal": lambda: rng.standard_normal(n, dtype=cp.float32).astype(cp.float16),
        "float64 normal": lambda: rng.standard_normal(n // 2, dtype=cp.float64),
    }
    rows = [(label, *_measure(cp, gpu, torch, make(), args)) for label, make in inputs.items()]
    print()
    print(f"{'input':38s} {'kldiv GPU':>10s} {'torch.histc':>12s} {'CPU kernel':>11s} "
          f"{'GPU/histc':>9s} {'GPU/CPU':>8s}  counts")
    for label, gbs, hg, cg, eq, eqc, hd in rows:
        print(f"{label:38s} {gbs:10,.0f} {hg:12,.0f} {cg:11,.1f} {gbs / hg:9.2f} "
              f"{gbs / cg:8.0f}  = reference: {eq}, CPU kernel = reference: {eqc}, "
              f"histc max |diff| per bin: {hd}")
    print("(GB/s of input read; kldiv GPU time includes copying the counts back)")
    f32 = rows[0][1]
    print(f"float32 normal, 2**{args.log2} values: {f32 / 1000:.2f} TB/s "
          f"({'meets' if f32 >= 1500 else 'misses'} 1.5 TB/s), counts equal to the reference")
    if args.sweep:
        _sweep(cp, gpu, rng, n, args)


def _sweep(cp, gpu, rng, n, args):
    """GB/s of float32 normal / ReLU data for other launch shapes (the counts re-checked)."""
    normal = rng.standard_normal(n, dtype=cp.float32)
    relu = cp.maximum(normal, 0)
    amax = float(cp.abs(normal).max())
    want = {id(a): gpu.fill_counts(a, amax, args.bins)[0] for a in (normal, relu)}
    saved = gpu._THREADS, gpu._MAX_COPIES
    print("\nthreads copies  normal GB/s  ReLU GB/s")
    try:
        for threads in (256, 512, 1024):
            for copies in (1, 2, 4):
                gpu._THREADS, gpu._MAX_COPIES = threads, copies
                out = []
                for a in (normal, relu):
                    assert np.array_equal(gpu.fill_counts(a, amax, args.bins)[0], want[id(a)])
                    ms = _events_ms(cp, lambda a=a: gpu.fill_counts(a, amax, args.bins),
                                    args.repeat)
                    out.append(a.nbytes / ms / 1e6)
                print(f"{threads:7d} {copies:6d} {out[0]:12,.0f} {out[1]:10,.0f}")
    finally:
        gpu._THREADS, gpu._MAX_COPIES = saved


def _copy_gbs(cp, repeat: int) -> float:
    """Memory ceiling: a device-to-device copy of 1 GiB (bytes read + written)."""
    buf = cp.empty(1 << 28, cp.float32)
    dst = cp.empty_like(buf)
    ms = _events_ms(cp, lambda: dst.__setitem__(Ellipsis, buf), repeat)
    return 2 * buf.nbytes / ms / 1e6


def _measure(cp, gpu, torch, x, args):
    """Check the counts against the reference and the CPU kernel, then time everything."""
    amax = float(cp.abs(x).max())
    host = x.get()
    got = gpu.fill_counts(x, amax, args.bins)[0]
    want = fill_counts_reference(host, amax, args.bins)
    equal_ref = bool(np.array_equal(got, want.counts))
    if not equal_ref:
        raise SystemExit(f"GPU counts differ from the NumPy reference "
                         f"({int(np.abs(got - want.counts).sum())} counts)")
    cpu_gbs, equal_cpu = float("nan"), None
    if not args.no_cpu:
        from kldiv import _kernels

        kernels = _kernels.resolve()  # the CPU kernels kldiv uses (None: NumPy reference)
        if kernels is not None:
            cpu = kernels.fill_counts(host, amax, args.bins, False)[0]
            equal_cpu = bool(np.array_equal(cpu, want.counts))
            best = min(_timed(lambda: kernels.fill_counts(host, amax, args.bins, False))
                       for _ in range(3))
            cpu_gbs = host.nbytes / best / 1e9
    ms = _events_ms(cp, lambda: gpu.fill_counts(x, amax, args.bins), args.repeat)
    gbs = x.nbytes / ms / 1e6
    histc_gbs, histc_diff = float("nan"), None
    if torch is not None and x.dtype != cp.float16:
        t = torch.from_dlpack(x)
        hc = torch.histc(t.abs(), bins=args.bins, min=0.0, max=amax).cpu().numpy()
        histc_diff = int(np.abs(hc.astype(np.int64) - want.counts).max())
        hms = _events_ms(cp, lambda: torch.histc(t.abs(), bins=args.bins, min=0.0, max=amax),
                         args.repeat)
        histc_gbs = x.nbytes / hms / 1e6
    return gbs, histc_gbs, cpu_gbs, equal_ref, equal_cpu, histc_diff


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
