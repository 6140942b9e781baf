"""Peak memory and time of a calibration under ``max_memory`` budgets, same histograms.

Model: PP-OCRv6 det small (``PP-OCRv6_det_small.onnx`` from the ``rapidocr==3.10.0`` wheel:
``pip download --no-deps rapidocr==3.10.0`` and unzip ``rapidocr/models/...``), or any
``--model``. Inputs: seeded images, normalised like PP-OCR's det preprocessing, ``--batches``
batches of ``--batch-size`` at ``--size``². Each contender runs in a fresh subprocess, which
reports its wall time and peak resident memory (``ru_maxrss``):

- ``plain``: onnxruntime inference of the same batches (default session), outputs dropped;
- ``no budget``: ``collect_histograms(..., max_memory=None)`` (every activation of a batch at
  once);
- ``default``: ``collect_histograms(...)`` with ``kldiv.defaults.DEFAULT_MAX_MEMORY``;
- ``--budgets`` (MiB): more budgets.

Every budgeted run's histograms are checked equal (counts, ranges, absmax, every tensor) to
the unbudgeted run's before the table is printed.

Run::

    python benchmarks/bounded_memory.py --model /tmp/PP-OCRv6_det_small.onnx
    python benchmarks/bounded_memory.py --model M.onnx --budgets 256,1024 --batches 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _batches(args):
    rng = np.random.default_rng(0)
    for _ in range(args.batches):
        x = rng.random((args.batch_size, 3, args.size, args.size), dtype=np.float32)
        yield {"x": ((x - 0.45) / 0.225).astype(np.float32)}


def child(args) -> None:
    import resource

    from kldiv.defaults import DEFAULT_MAX_MEMORY

    t = time.perf_counter()
    if args.child == "plain":
        import onnxruntime as ort

        sess = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        for b in _batches(args):
            sess.run(None, {name: b["x"]})
    else:
        from kldiv.pipeline import collect_histograms

        budget = {"none": None, "default": DEFAULT_MAX_MEMORY}.get(args.child)
        if budget is None and args.child not in ("none",):
            budget = int(float(args.child) * 2**20)
        name = _input_name(args.model)
        data = [{name: b["x"]} for b in _batches(args)]
        c = collect_histograms(args.model, data, max_memory=budget)
        c.save(args.out, force=True)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak}))


def _input_name(model: str) -> str:
    import onnx

    m = onnx.load(model, load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    return next(i.name for i in m.graph.input if i.name not in inits)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=False)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--budgets", default="", help="more budgets, MiB, comma-separated")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.model is None:
        try:
            import rapidocr  # type: ignore[import-not-found]

            args.model = str(Path(rapidocr.__file__).parent / "models" / "PP-OCRv6_det_small.onnx")
        except ImportError:
            raise SystemExit("give --model (PP-OCRv6_det_small.onnx from the rapidocr==3.10.0 "
                             "wheel)") from None
    if args.child:
        child(args)
        return
    from kldiv.collect import HistogramCollector
    from kldiv.defaults import DEFAULT_MAX_MEMORY

    tmp = Path(tempfile.mkdtemp(prefix="kldiv-mem-"))
    contenders = ["plain", "none", "default"] + [b for b in args.budgets.split(",") if b]
    rows = {}
    for who in contenders:
        out = tmp / f"{who}.npz"
        cmd = [sys.executable, __file__, "--model", args.model, "--batches", str(args.batches),
               "--batch-size", str(args.batch_size), "--size", str(args.size),
               "--child", who, "--out", str(out)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows[who] = json.loads(res.stdout.strip().splitlines()[-1])
    ref = HistogramCollector.load(tmp / "none.npz")
    for who in contenders[2:]:
        got = HistogramCollector.load(tmp / f"{who}.npz")
        assert got.names == ref.names
        for n in ref:
            if not (got[n] == ref[n] and got.absmax(n) == ref.absmax(n)):
                raise SystemExit(f"budget {who}: tensor {n!r} differs from the unbudgeted run")
    print(f"{Path(args.model).name}: {args.batches} batches of {args.batch_size} at "
          f"{args.size}x{args.size}; {len(ref)} tensors; default budget "
          f"{DEFAULT_MAX_MEMORY // 2**20} MiB")
    base = rows["none"]
    print(f"{'run':14s} {'peak MB':>9s} {'seconds':>8s} {'time vs no budget':>18s}")
    for who, r in rows.items():
        label = {"plain": "plain ORT", "none": "no budget", "default": "default"}.get(
            who, f"{who} MiB")
        print(f"{label:14s} {r['peak_mb']:9.0f} {r['seconds']:8.1f} "
              f"{r['seconds'] / base['seconds']:17.2f}x")
    print("every budgeted run's histograms equal the unbudgeted run's (checked)")


if __name__ == "__main__":
    main()
