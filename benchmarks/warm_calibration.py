"""One warm process: wall and CPU time of a calibration against its floor, by variant.

The kernels are loaded first and every variant runs in the same process, passes
interleaved, so the figures leave out start-up (imports, Numba's cache load) and show what
the fills cost on top of the model run, and how the variants use the cores:

- ``exposed``: kldiv's session (every calibrated tensor an output), outputs dropped.
- ``serial``: ``kldiv.calibrate`` with the defaults (a batch's tensors fill on
  :func:`kldiv._kernels.threads` threads).
- ``overlap``: the same with ``overlap=True``.
- ``*-1fill``: the same with a batch's tensors filled on the calling thread only.

Run::

    python benchmarks/warm_calibration.py                       # wide ResNet, 512 inputs
    python benchmarks/warm_calibration.py --channels 32,64,128 --passes 5
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibrate_e2e import Batches, build_resnet  # noqa: E402


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--channels", default="64,128,256")
    ap.add_argument("--inputs", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--passes", type=int, default=3)
    args = ap.parse_args()

    import onnxruntime  # noqa: F401

    import kldiv
    import kldiv.collect as collect
    from kldiv.histogram import ActivationHistogram
    from kldiv.runners import OnnxRuntimeRunner

    n_batches = args.inputs // args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        channels = tuple(int(c) for c in args.channels.split(","))
        model = str(build_resnet(Path(tmp) / "resnet.onnx", channels=channels))  # type: ignore[arg-type]
        t, c = time.perf_counter(), _cpu()
        ActivationHistogram.from_values(np.arange(100, dtype=np.float32))
        kldiv.calibrate(model, Batches(2, args.batch_size), preset="tensorrt")
        print(f"# ResNet {args.channels}, {args.inputs} inputs in batches of "
              f"{args.batch_size}; kernels loaded and a first calibration in "
              f"{time.perf_counter() - t:.2f} s ({_cpu() - c:.2f} s CPU)")
        pool = collect._fill_pool()
        variants = ["exposed", "serial", "overlap", "serial-1fill", "overlap-1fill"]
        got: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
        for p in range(args.passes):
            for mode in variants if p % 2 == 0 else variants[::-1]:
                collect._fill_pool = (lambda: None) if mode.endswith("1fill") else (lambda: pool)
                data = Batches(n_batches, args.batch_size)
                t, c = time.perf_counter(), _cpu()
                if mode == "exposed":
                    runner = OnnxRuntimeRunner(model, fetch_aliases=False)
                    names = runner._outputs
                    for feed in data:
                        runner.session.run(names, feed)
                else:
                    kldiv.calibrate(model, data, preset="tensorrt",
                                    overlap=mode.startswith("overlap"))
                got[mode].append((time.perf_counter() - t, _cpu() - c))
        collect._fill_pool = lambda: pool
    print(f"{'variant':<16}{'wall s':>14}{'CPU s':>14}{'wall / exposed':>18}")
    base = [w for w, _ in got["exposed"]]
    for mode in variants:
        walls = [w for w, _ in got[mode]]
        cpus = [c for _, c in got[mode]]
        ratios = [w / b for w, b in zip(walls, base)]
        print(f"{mode:<16}{min(walls):>7.2f}-{max(walls):<6.2f}{min(cpus):>7.2f}-{max(cpus):<6.2f}"
              f"{min(ratios):>11.2f}-{max(ratios):.2f}")


if __name__ == "__main__":
    main()
