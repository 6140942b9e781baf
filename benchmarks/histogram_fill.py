"""Histogram fill throughput: kldiv's Numba kernel vs its NumPy reference vs peers.

One run prints a table (GB/s of input read, and the ratio to ``np.histogram`` measured in the
same run on the same array). Every implementation histograms ``|x|`` into 2048 bins over
``[0, absmax]``:

- ``kldiv numba``      ``ActivationHistogram(amax).fill(x)`` (the Numba kernel, chunks on
                       threads, private partials)
- ``kldiv numba kernel alone``  the same kernel called directly (:func:`kldiv._kernels.load`)
- ``kldiv numpy``      the same fill with ``KLDIV_KERNELS=numpy`` (the readable reference)
- ``np.histogram``     ``np.histogram(np.abs(x), bins=2048, range=(0, amax))`` (the baseline;
                       float16 is widened to float32 first, np.histogram refuses float16 edges)
- ``onnxruntime``      ``HistogramCollector.collect_absolute_value`` (its |x| path), if installed
- ``modelopt``         ``HistogramCalibrator.collect`` (torch.histc on CPU), if installed

Usage::

    python benchmarks/histogram_fill.py                       # 16M float32 elements
    python benchmarks/histogram_fill.py --elements 67108864 --threads 2 --repeat 5

Threads: ``--threads`` sets the kernels' thread count (``NUMBA_NUM_THREADS``, which kldiv's
kernels read; and torch's); NumPy is single-threaded.
The best of ``--repeat`` runs is reported.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np

from kldiv.defaults import NUM_BINS, NUM_QUANT_LEVELS
from kldiv.histogram import ActivationHistogram, absmax


def _best(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up (JIT compile / cache load, page faults)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _inputs(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    normal = rng.standard_normal(n, dtype=np.float32)
    relu = np.maximum(normal, 0.0)  # half exact zeros, like ReLU activations
    nchw = normal.reshape(-1, 64, 16, 16) if n % (64 * 256) == 0 else normal.reshape(-1, 1)
    return {
        "float32 normal": normal,
        "float32 relu (50% zeros)": relu,
        "float16 normal": normal.astype(np.float16),
        "float64 normal": normal.astype(np.float64),
        "float32 strided view (NCHW[:, ::2])": nchw[:, ::2],
    }


def _peers(x: np.ndarray, amax: float, threads: int) -> dict[str, Callable[[], object]]:
    peers: dict[str, Callable[[], object]] = {}
    try:
        from onnxruntime.quantization.calibrate import HistogramCollector
    except Exception:  # noqa: BLE001 - optional peer
        HistogramCollector = None
    if HistogramCollector is not None:

        def ort() -> object:
            collector = HistogramCollector("percentile", True, NUM_BINS, NUM_QUANT_LEVELS, 99.99, "same")
            collector.collect_absolute_value({"t": x})
            return collector

        peers["onnxruntime collect_absolute_value"] = ort
    try:
        import torch
        from modelopt.torch.quantization.calib.histogram import HistogramCalibrator
    except Exception:  # noqa: BLE001 - optional peer
        torch = None
    if torch is not None:
        torch.set_num_threads(threads)
        tx = torch.from_numpy(np.ascontiguousarray(x))

        def modelopt() -> object:
            calib = HistogramCalibrator(num_bins=NUM_BINS)
            calib.collect(tx)
            return calib

        peers["modelopt HistogramCalibrator.collect"] = modelopt
    return peers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=1 << 24)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="Numba/torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-peers", action="store_true", help="skip onnxruntime/modelopt")
    args = parser.parse_args(argv)

    if args.threads:
        os.environ["NUMBA_NUM_THREADS"] = str(args.threads)
    from kldiv import _kernels
    from kldiv._kernels import threads as kernel_threads

    threads = kernel_threads()
    numba = _kernels.load("numba")
    print(
        f"histogram fill, {NUM_BINS} bins of |x| over [0, absmax], {args.elements:,} elements, "
        f"numba threads={threads}, best of {args.repeat}"
    )
    header = f"{'input':38} {'implementation':40} {'GB/s':>8} {'vs np.histogram':>16}"
    print(header)
    print("-" * len(header))
    for label, x in _inputs(args.elements, args.seed).items():
        amax = absmax(x)
        nbytes = x.size * x.itemsize

        def ours(x: np.ndarray = x, amax: float = amax) -> object:
            return ActivationHistogram(amax, NUM_BINS).fill(x)

        def reference(x: np.ndarray = x, amax: float = amax) -> object:
            with _kernels.using("numpy"):
                return ActivationHistogram(amax, NUM_BINS).fill(x)

        def baseline(x: np.ndarray = x, amax: float = amax) -> object:
            a = np.abs(x)
            if a.dtype == np.float16:  # np.histogram cannot make 2048 float16 edges
                a = a.astype(np.float32)
            return np.histogram(a, bins=NUM_BINS, range=(0.0, amax))

        if not np.array_equal(ours().counts, reference().counts):  # type: ignore[attr-defined]
            raise SystemExit(f"{label}: numba and numpy fills disagree; not timing")
        rows: dict[str, Callable[[], object]] = {
            "np.histogram(np.abs(x)) [baseline]": baseline,
            "kldiv numba (ActivationHistogram.fill)": ours,
            "kldiv numba kernel alone": (
                lambda x=x, amax=amax: numba.fill_counts(x, amax, NUM_BINS, False)),
            "kldiv numpy reference": reference,
        }
        if not args.no_peers and label.startswith("float32") and "strided" not in label:
            rows.update(_peers(x, amax, threads))
        base = None
        for name, fn in rows.items():
            seconds = _best(fn, args.repeat)
            if base is None:
                base = seconds
            print(f"{label:38} {name:40} {nbytes / seconds / 1e9:8.2f} {base / seconds:15.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
