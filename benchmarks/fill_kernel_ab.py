"""Histogram fill kernel: this tree's against an older revision's, same process, interleaved.

The old ``kldiv/_kernels/fill.py`` and ``_jit.py`` are taken from git (``--rev``) into a
temporary package and imported beside the current ones; both fill the same arrays, alternating,
best of ``--repeat``. Both must give the same counts, or nothing is timed.

Run::

    python benchmarks/fill_kernel_ab.py                # against 8275a78 (before issue 4's rewrite)
    python benchmarks/fill_kernel_ab.py --rev HEAD~3
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from kldiv.defaults import NUM_BINS

REPO = Path(__file__).resolve().parents[1]


def _old_kernels(rev: str, into: Path):
    pkg = into / "oldkernels"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in ("fill.py", "_jit.py"):
        src = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:kldiv/_kernels/{name}"],
                             check=True, capture_output=True, text=True).stdout
        # parent-package imports (``from ..histogram import``) resolve to today's kldiv
        (pkg / name).write_text(src.replace("from ..", "from kldiv."))
    sys.path.insert(0, str(into))
    return importlib.import_module("oldkernels.fill")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rev", default="8275a78")
    ap.add_argument("--elements", type=int, default=1 << 24)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    from kldiv._kernels import fill as new

    rng = np.random.default_rng(0)
    x = rng.standard_normal(args.elements).astype(np.float32)
    cases = {
        "float32 normal": x,
        "float32 ReLU (50% zeros)": np.maximum(x, 0),
        "float64 normal": x.astype(np.float64),
        "float16 normal": x.astype(np.float16),
        "float32, 1 MiB tensors x 16": x[: 16 * (1 << 18)].reshape(16, 1 << 18),
    }
    with tempfile.TemporaryDirectory() as tmp:
        old = _old_kernels(args.rev, Path(tmp))
        print(f"fill kernel, {args.rev} (baseline) vs this tree, {NUM_BINS} bins, "
              f"best of {args.repeat}, same process, interleaved")
        print(f"{'input':32}{'baseline GB/s':>15}{'this GB/s':>12}{'ratio':>8}")
        for label, a in cases.items():
            parts = list(a) if a.ndim == 2 else [a]
            amax = float(np.abs(a.astype(np.float64)).max())
            for p in parts:  # same answer, and both kernels compiled/loaded before timing
                o, n = old.fill_counts(p, amax, NUM_BINS, clip=True), new.fill_counts(
                    p, amax, NUM_BINS, clip=True)
                if not np.array_equal(o.counts, n.counts):
                    raise SystemExit(f"{label}: the kernels disagree; not timing")
            best = {"old": np.inf, "new": np.inf}
            for _ in range(args.repeat):
                for key, mod in (("old", old), ("new", new)):
                    t = time.perf_counter()
                    for p in parts:
                        mod.fill_counts(p, amax, NUM_BINS, clip=True)
                    best[key] = min(best[key], time.perf_counter() - t)
            gb = a.nbytes / 1e9
            print(f"{label:32}{gb / best['old']:>15.2f}{gb / best['new']:>12.2f}"
                  f"{best['old'] / best['new']:>7.2f}x")


if __name__ == "__main__":
    main()
