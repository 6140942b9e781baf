"""Histogram fill kernel: this tree's against an older revision's, same process, interleaved.

The old ``kldiv/_kernels/*.py`` are taken from git (``--rev``) into a temporary package and
imported beside the current ones (the old kernel runs through Numba's JIT); this tree's kernel
runs through its JIT build and, when it builds, its ahead-of-time build
(:mod:`kldiv._kernels.aot`). All fill the same arrays, alternating, best of ``--repeat``, and
must give the same counts, or nothing is timed.

Run::

    python benchmarks/fill_kernel_ab.py                # against 8275a78 (before issue 4's rewrite)
    python benchmarks/fill_kernel_ab.py --rev HEAD~3
"""

from __future__ import annotations

import argparse
import functools
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
    """The revision's fill, as ``fill_counts(values, amax, num_bins, clip=...)``."""
    pkg = into / "oldkernels"
    pkg.mkdir()
    names = subprocess.run(
        ["git", "-C", str(REPO), "ls-tree", "--name-only", rev, "kldiv/_kernels/"],
        check=True, capture_output=True, text=True).stdout.split()
    for path in names:
        if not path.endswith(".py"):
            continue
        src = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{path}"],
                             check=True, capture_output=True, text=True).stdout
        # parent-package imports (``from ..histogram import``) resolve to today's kldiv
        (pkg / Path(path).name).write_text(src.replace("from ..", "from kldiv."))
    sys.path.insert(0, str(into))
    fill = importlib.import_module("oldkernels.fill")
    if hasattr(fill, "fill_counts"):  # revisions before the ahead-of-time build
        return fill.fill_counts
    dispatch = importlib.import_module("oldkernels.dispatch")
    return functools.partial(dispatch.fill_counts, build=dispatch.jit_kernels())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rev", default="8275a78")
    ap.add_argument("--elements", type=int, default=1 << 24)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    from kldiv._kernels import aot, dispatch

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
        fills = {"baseline": _old_kernels(args.rev, Path(tmp)),
                 "JIT": functools.partial(dispatch.fill_counts, build=dispatch.jit_kernels())}
        module = aot.load()
        if module is not None:
            fills["AOT"] = functools.partial(dispatch.fill_counts,
                                             build=dispatch.aot_kernels(module))
        print(f"fill kernel, {args.rev} (baseline) vs this tree's builds, {NUM_BINS} bins, "
              f"best of {args.repeat}, same process, interleaved; GB/s (ratio to baseline)")
        print(f"{'input':32}" + "".join(f"{k:>18}" for k in fills))
        for label, a in cases.items():
            parts = list(a) if a.ndim == 2 else [a]
            amax = float(np.abs(a.astype(np.float64)).max())
            for p in parts:  # same answer, and every kernel compiled/loaded before timing
                counts = [f(p, amax, NUM_BINS, clip=True).counts for f in fills.values()]
                if not all(np.array_equal(counts[0], c) for c in counts[1:]):
                    raise SystemExit(f"{label}: the kernels disagree; not timing")
            best = dict.fromkeys(fills, np.inf)
            for _ in range(args.repeat):
                for key, fill in fills.items():
                    t = time.perf_counter()
                    for p in parts:
                        fill(p, amax, NUM_BINS, clip=True)
                    best[key] = min(best[key], time.perf_counter() - t)
            gb = a.nbytes / 1e9
            cells = [f"{gb / best[k]:8.2f} ({best['baseline'] / best[k]:4.2f}x)" for k in fills]
            print(f"{label:32}" + "".join(f"{c:>18}" for c in cells))


if __name__ == "__main__":
    main()
