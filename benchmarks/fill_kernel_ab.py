"""Fill and threshold-search kernels: this tree's against an older revision's, same process.

The old ``kldiv/_kernels/*.py`` are taken from git (``--rev``) into a temporary package and
imported beside the current ones. The old revision runs through its Numba JIT build and, when
it has one and it builds (revisions with ``kldiv/_kernels/aot.py``, which was its default), its
ahead-of-time build, compiled into the temporary folder. This tree's kernels run as
:func:`kldiv._kernels.resolve` runs them (Numba's JIT). All fill the same arrays and search the
same histograms, alternating, best of ``--repeat``, and must give the same counts and the same
chosen bins, or nothing is timed.

Run::

    python benchmarks/fill_kernel_ab.py                     # against e1ee954
    python benchmarks/fill_kernel_ab.py --rev HEAD~3 --no-search
    python benchmarks/fill_kernel_ab.py --rev main --no-search   # a revision of this layout
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kldiv import _kernels
from kldiv.defaults import NUM_BINS
from kldiv.entropy import PRESETS, kernel_search

REPO = Path(__file__).resolve().parents[1]


def _old_sources(rev: str, into: Path) -> Path:
    """The revision's kernel package, its parent-package imports pointed at today's kldiv."""
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
        src = src.replace("from .. import", "from kldiv import").replace("from ..", "from kldiv.")
        # defaults that moved since (the old build choice is passed explicitly below)
        src = src.replace("from kldiv.defaults import DEFAULT_KERNELS", 'DEFAULT_KERNELS = "auto"')
        (pkg / Path(path).name).write_text(src)
    sys.path.insert(0, str(into))
    return pkg


def _old_builds(rev: str, into: Path) -> dict[str, tuple[Callable[..., Any], Any]]:
    """``{label: (fill(values, amax, num_bins, clip) -> counts, search(counts, opts) -> bin)}``
    for each build of the revision."""
    pkg = _old_sources(rev, into)
    if (pkg / "wrappers.py").exists():  # revisions since the one-knob layout: fill only
        wrappers = importlib.import_module("oldkernels.wrappers")
        return {"base JIT": (lambda v, a, n, c: wrappers.fill_counts(v, a, n, c)[0], None)}
    fill = importlib.import_module("oldkernels.fill")
    if hasattr(fill, "fill_counts"):  # revisions before the dispatch module: fill only
        return {"base JIT": (lambda v, a, n, c: fill.fill_counts(v, a, n, clip=c).counts, None)}
    dispatch = importlib.import_module("oldkernels.dispatch")
    builds = {"base JIT": dispatch.jit_kernels()}
    try:
        aot = importlib.import_module("oldkernels.aot")
    except ImportError:
        aot = None
    if aot is not None:
        os.environ[aot.KERNEL_DIR_ENV] = str(into / "aot")
        start = time.perf_counter()
        module = aot.load()
        if module is not None:
            builds["base AOT"] = dispatch.aot_kernels(module)
            print(f"(the revision's ahead-of-time build: {time.perf_counter() - start:.1f} s)")
    out = {}
    for label, build in builds.items():
        out[label] = (
            lambda v, a, n, c, b=build: dispatch.fill_counts(v, a, n, clip=c, build=b).counts,
            lambda counts, opts, b=build: dispatch.search(counts, opts, build=b),
        )
    return out


def _best_of(contenders: dict[str, Callable[[], Any]], repeat: int) -> dict[str, float]:
    best = dict.fromkeys(contenders, np.inf)
    for _ in range(repeat):
        for key, run in contenders.items():
            t = time.perf_counter()
            run()
            best[key] = min(best[key], time.perf_counter() - t)
    return best


def _row(label: str, best: dict[str, float], unit: Callable[[float], str]) -> str:
    base = [k for k in best if k.startswith("base")]
    cells = [unit(best[k]) for k in best]
    ratios = [f"{best[b] / best['this tree']:.2f}x vs {b}" for b in base]
    return f"{label:32}" + "".join(f"{c:>14}" for c in cells) + "   " + ", ".join(ratios)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rev", default="e1ee954")
    ap.add_argument("--elements", type=int, default=1 << 24)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--histograms", type=int, default=20, help="histograms per search case")
    ap.add_argument("--no-search", action="store_true")
    args = ap.parse_args()
    new = _kernels.load("numba")

    rng = np.random.default_rng(0)
    x = rng.standard_normal(args.elements).astype(np.float32)
    fills = {
        "float32 normal": x,
        "float32 ReLU (50% zeros)": np.maximum(x, 0),
        "float64 normal": x.astype(np.float64),
        "float16 normal": x.astype(np.float16),
        "float32, 1 MiB tensors x 16": x[: 16 * (1 << 18)].reshape(16, 1 << 18),
        "float32, 16 KiB tensors x 256": x[: 256 * (1 << 12)].reshape(256, 1 << 12),
    }
    with tempfile.TemporaryDirectory() as tmp:
        old = _old_builds(args.rev, Path(tmp))
        contenders: dict[str, tuple[Callable[..., Any], Any]] = {
            **old,
            "this tree": (lambda v, a, n, c: new.fill_counts(v, a, n, c)[0],
                          functools.partial(kernel_search, kernels=new)),
        }
        print(f"{args.rev} (base) vs this tree, same process, interleaved, best of "
              f"{args.repeat}; {NUM_BINS} bins")
        print(f"{'fill, GB/s':32}" + "".join(f"{k:>14}" for k in contenders))
        for label, a in fills.items():
            parts = list(a) if a.ndim == 2 else [a]
            amax = float(np.abs(a.astype(np.float64)).max())
            for p in parts:  # same answer, and every kernel compiled/loaded before timing
                counts = [fill(p, amax, NUM_BINS, True) for fill, _ in contenders.values()]
                if not all(np.array_equal(counts[0], c) for c in counts[1:]):
                    raise SystemExit(f"{label}: the kernels disagree; not timing")
            best = _best_of({k: (lambda f=f, parts=parts, amax=amax: [
                f(p, amax, NUM_BINS, True) for p in parts]) for k, (f, _) in contenders.items()},
                args.repeat)
            print(_row(label, best, lambda s, a=a: f"{a.nbytes / 1e9 / s:8.2f}"))
        searchers = {k: s for k, (_, s) in contenders.items() if s is not None}
        if args.no_search or len(searchers) < 2:
            return
        hists = []
        for k in range(args.histograms):
            v = rng.standard_normal(50_000) if k % 2 else rng.laplace(size=50_000)
            v = np.maximum(v, 0) if k % 3 == 0 else v
            hists.append(np.histogram(np.abs(v), bins=NUM_BINS)[0].astype(np.int64))
        print(f"{'search, ms per histogram':32}" + "".join(f"{k:>14}" for k in searchers))
        for preset in ("tensorrt", "gtc2017", "modelopt"):
            opts = PRESETS[preset]
            chosen = [[int(s(h, opts)[2]) for h in hists] for s in searchers.values()]
            if not all(c == chosen[0] for c in chosen[1:]):
                raise SystemExit(f"{preset}: the searches disagree; not timing")
            best = _best_of({k: (lambda s=s, opts=opts: [s(h, opts) for h in hists])
                             for k, s in searchers.items()}, args.repeat)
            print(_row(f"{preset} preset", best,
                       lambda s: f"{s / len(hists) * 1e3:8.3f}"))


if __name__ == "__main__":
    main()
