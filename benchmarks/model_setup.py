"""A calibration's set-up: reading the model and creating its session, with and without onnx.

``OnnxRuntimeRunner(path)`` reads a model file with :mod:`kldiv._onnx_wire` (no ``import
onnx``); ``onnx`` reads what that reader does not handle. This times both paths in fresh
processes, interleaved, from after ``import onnxruntime`` to a runner ready to run (the onnx
path forced by reading the file through onnx first, as a caller holding a ``ModelProto``
would, the import included), and says whether ``onnx`` / ``ml_dtypes`` were imported.

Run::

    python benchmarks/model_setup.py MODEL.onnx [--runs 5]
    python benchmarks/model_setup.py rapidocr-3.10.0-py3-none-any.whl   # PP-OCRv6 det small
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibrate_e2e import _real_model  # noqa: E402


def child(path: str, how: str) -> dict:
    import onnxruntime  # noqa: F401  (not counted: both paths need it)

    t0 = time.perf_counter()
    from kldiv.runners import OnnxRuntimeRunner

    if how == "onnx":
        import onnx

        model = onnx.load(path)
    else:
        model = path
    runner = OnnxRuntimeRunner(model, fetch_aliases=False)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "tensors": len(runner.tensor_names),
            "onnx": "onnx" in sys.modules, "ml_dtypes": "ml_dtypes" in sys.modules}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--child", choices=("wire", "onnx"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.model, args.child)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = _real_model(Path(args.model), Path(tmp))
        times: dict[str, list[float]] = {"wire": [], "onnx": []}
        info = {}
        for _ in range(args.runs):
            for how in times:
                out = subprocess.run([sys.executable, __file__, str(model), "--child", how],
                                     check=True, capture_output=True, text=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                times[how].append(r["seconds"])
                info[how] = r
    print(f"# {model.name}, {args.runs} fresh processes each, interleaved; load average "
          + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    for how, label in (("wire", "kldiv's wire reader"), ("onnx", "onnx (import + load)")):
        t = sorted(times[how])
        print(f"{label:<24} set-up {t[0]:.3f}-{t[-1]:.3f} s (median {t[len(t) // 2]:.3f}); "
              f"{info[how]['tensors']} tensors; onnx imported: {info[how]['onnx']}, "
              f"ml_dtypes: {info[how]['ml_dtypes']}")
    ratios = sorted(o / w for o, w in zip(times["onnx"], times["wire"]))
    print(f"onnx path / wire reader, per run: {ratios[0]:.1f}-{ratios[-1]:.1f}x")


if __name__ == "__main__":
    main()
