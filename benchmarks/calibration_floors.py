"""The floors under issue 4's targets, measured: what any calibration of these models must pay.

For the two ResNets of ``calibrate_e2e.py`` (32/64/128 and 64/128/256 channels), this prints:

- the bytes of one batch of every calibrated activation (what the runner hands over per batch,
  and, times the batches, what the histograms must read);
- this machine's bare read rate (``np.max`` over 400 MiB, one thread and two), so the time a
  single read of all activations would take;
- resident memory step by step in a fresh process (``VmRSS``): onnxruntime, ``import kldiv``,
  ``import onnx``, the runner (model proto + session), the kernels; and, in another fresh
  process, what plain inference's session costs (``InferenceSession`` of the file).

Run::

    python benchmarks/calibration_floors.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibrate_e2e import Batches, build_resnet  # noqa: E402

WIDTHS = ((32, 64, 128), (64, 128, 256))
N_BATCHES = 128
BATCH_SIZE = 8


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")  # pragma: no cover - not Linux


def child(model: str) -> dict:
    """Fresh process: resident memory after each step, and one batch's activation bytes."""
    import onnxruntime  # noqa: F401

    steps = {"onnxruntime": _rss_mb()}
    import kldiv  # noqa: F401

    steps["import kldiv"] = _rss_mb()
    import onnx  # noqa: F401

    steps["import onnx"] = _rss_mb()
    from kldiv.runners import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(model, fetch_aliases=False)  # as kldiv.calibrate runs it
    steps["runner"] = _rss_mb()
    from kldiv import _kernels

    kernels = _kernels.resolve()
    build = "numpy" if kernels is None else kernels.name
    steps[f"kernels ({build})"] = _rss_mb()
    batch = next(iter(Batches(1, BATCH_SIZE)))
    acts = runner.run(runner.prepare(batch, index=0), index=0)
    return {"steps": steps, "tensors": len(acts),
            "batch_bytes": int(sum(a.nbytes for a in acts.values()))}


def child_plain(model: str) -> dict:
    """Fresh process: what plain inference's session adds (default session options)."""
    import onnxruntime as ort

    before = _rss_mb()
    ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return {"session_mb": _rss_mb() - before}


def read_rates() -> dict[str, float]:
    """GB/s of ``np.max`` over 400 MiB of float32, one thread and two (best of 7)."""
    x = np.random.default_rng(0).standard_normal(100 << 20, dtype=np.float32)
    halves = [x[: x.size // 2], x[x.size // 2:]]
    pool = ThreadPoolExecutor(2)
    rates = {}
    for name, fn in (("1 thread", lambda: x.max()),
                     ("2 threads", lambda: list(pool.map(np.max, halves)))):
        fn()
        best = np.inf
        for _ in range(7):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        rates[name] = x.nbytes / best / 1e9
    return rates


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] in ("--child", "--child-plain"):
        fn = child if sys.argv[1] == "--child" else child_plain
        print(json.dumps(fn(sys.argv[2])))
        return
    rates = read_rates()
    print("bare read rate (np.max, 400 MiB float32): "
          + ", ".join(f"{k} {v:.2f} GB/s" for k, v in rates.items()))
    with tempfile.TemporaryDirectory() as tmp:
        for channels in WIDTHS:
            model = build_resnet(Path(tmp) / f"m{channels[0]}.onnx", channels=channels)
            out = subprocess.run([sys.executable, __file__, "--child", str(model)],
                                 check=True, capture_output=True, text=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            plain = subprocess.run([sys.executable, __file__, "--child-plain", str(model)],
                                   check=True, capture_output=True, text=True)
            session_mb = json.loads(plain.stdout.strip().splitlines()[-1])["session_mb"]
            total = r["batch_bytes"] * N_BATCHES
            print(f"\nResNet {'/'.join(map(str, channels))} (model file "
                  f"{model.stat().st_size / 2**20:.1f} MiB): {r['tensors']} tensors, one batch "
                  f"of {BATCH_SIZE} = {r['batch_bytes'] / 2**20:.1f} MiB; {N_BATCHES} batches "
                  f"= {total / 1e9:.2f} GB, a bare read of it {total / 1e9 / rates['2 threads']:.2f}"
                  " s on 2 threads")
            prev = None
            for step, mb in r["steps"].items():
                delta = "" if prev is None else f" ({mb - prev:+.0f})"
                print(f"  {step:<20} {mb:6.0f} MB{delta}")
                prev = mb
            print(f"  (plain inference's own session of this model: {session_mb:+.0f} MB)")


if __name__ == "__main__":
    main()
