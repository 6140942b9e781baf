"""``kldiv report`` and ``kldiv explain`` on a synthetic model of many tensors.

Writes a histogram file of N tensors (default 500: Laplace, Gaussian, post-ReLU with its zero
spike, sparse, constant and all-zero tensors, 2048 bins each, with pow2-style ranges) and a
TensorRT-format cache of the ``gtc2017`` preset's scales for them (so that many tensors sit in
another bin), then measures, against the issue's targets:

- ``kldiv report`` (the CLI, in a fresh process): seconds and file size;
- the report in headless Chromium (when installed): navigation to load event, the page's own
  ready time, and opening 20 tensors' plots;
- ``kldiv explain`` of one tensor with the cache, and with a value no variant reproduces (the
  whole option space searched), in fresh processes (Python start included).

Usage: python benchmarks/report_scale.py [--tensors 500] [--keep DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from kldiv.cachefile import write_cache  # noqa: E402
from kldiv.collect import HistogramCollector  # noqa: E402
from kldiv.defaults import NUM_BINS  # noqa: E402
from kldiv.entropy import search_threshold  # noqa: E402
from kldiv.histogram import ActivationHistogram  # noqa: E402
from kldiv.scales import CalibrationTable  # noqa: E402


def synthetic(n: int, seed: int = 0) -> HistogramCollector:
    """``n`` histograms of |x| shaped like a CNN's activations."""
    rng = np.random.default_rng(seed)
    c = HistogramCollector()
    kinds = ["laplace", "gauss", "relu", "relu", "sparse", "laplace", "const", "zero"]
    for t in range(n):
        kind = kinds[t % len(kinds)] if t % 97 else "zero"
        size = int(rng.integers(20_000, 200_000))
        scale = float(rng.lognormal(0.0, 1.0))
        if kind == "laplace":
            x = rng.laplace(0, scale, size)
        elif kind == "gauss":
            x = rng.normal(0, scale, size)
        elif kind == "relu":
            x = np.maximum(rng.normal(0, scale, size), 0)
        elif kind == "sparse":
            x = rng.choice(np.arange(0, 17) / 16.0 * scale, size)
        elif kind == "const":
            x = np.full(size, scale)
        else:
            x = np.zeros(size)
        h = ActivationHistogram.from_values(x[: size // 10], growth="pow2")  # the "first batch"
        h.fill(x)
        name = f"block{t // 8}/{kind}_{t}"
        c._hists[name] = h
        c._absmax[name] = float(np.abs(x).max())
    c.batches = 10
    return c


def run(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    took = time.perf_counter() - start
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr}")
    return took, p.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tensors", type=int, default=500)
    ap.add_argument("--keep", type=Path, help="write the files here (default: a temp folder)")
    args = ap.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="kldiv-report-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    hist_path, cache_path, html = folder / "h.npz", folder / "other.cache", folder / "r.html"

    collector = synthetic(args.tensors)
    collector.save(hist_path, force=True)
    table = CalibrationTable(
        (n, search_threshold(h, "gtc2017").scale) for n, h in collector.items() if h.amax > 0
    )
    write_cache(table, cache_path, force=True)
    # values a third of a bin off every grid: no variant reproduces them, the whole option
    # space is searched (explain's slowest case)
    offgrid_path = folder / "offgrid.cache"
    write_cache(CalibrationTable.from_amaxes(
        (n, search_threshold(h, "tensorrt").amax + h.bin_width / 3)
        for n, h in collector.items() if h.amax > 0), offgrid_path, force=True)
    kldiv = [sys.executable, "-m", "kldiv.cli"]
    print(f"{args.tensors} tensors x {NUM_BINS} bins; files in {folder}")
    print(f"{'measure':<58}{'seconds':>9}{'target':>8}{'of target':>11}")

    def row(what: str, s: float, target: float) -> None:
        print(f"{what:<58}{s:>9.2f}{target:>8.0f}{s / target:>10.1%}")

    took, _ = run([*kldiv, "report", str(hist_path), "--cache", str(cache_path),
                   "--out", str(html), "--force"])
    row("kldiv report (fresh process)", took, 60)
    print(f"  report file size: {html.stat().st_size / 1e6:.2f} MB "
          f"({html.stat().st_size / args.tensors / 1e3:.1f} kB per tensor)")
    name = next(n for n, h in collector.items() if h.amax > 0 and "relu" in n)
    took, _ = run([*kldiv, "explain", str(hist_path), name, "--cache", str(cache_path)])
    row(f"kldiv explain {name} --cache (fresh process)", took, 2)
    took, _ = run([*kldiv, "explain", str(hist_path), name, "--cache", str(offgrid_path)])
    row(f"kldiv explain {name}, no variant reproduces the value", took, 2)
    took, _ = run([*kldiv, "explain", str(hist_path), name])
    row(f"kldiv explain {name} (no cache)", took, 2)

    from _chromium import Browser, find_chromium

    binary = find_chromium()
    if binary is None:
        print("headless Chromium not found: browser timings skipped (apt-get install chromium)")
        return
    with Browser(binary) as b:
        load = b.open(html)
        ready = b.eval("kldivReport.ready && kldivReport.readyMs") / 1000.0
        row("browser: navigation to load event", load, 5)
        row("browser: page script ready (performance.now)", ready, 5)
        start = time.perf_counter()
        b.eval("for (let i = 0; i < 20; i++) kldivReport.open(i * 7)")
        row("browser: open 20 tensors' plots", time.perf_counter() - start, 5)
        start = time.perf_counter()
        b.eval("kldivReport.sortBy(Array.from(document.querySelectorAll('#tensor-table thead th'))"
               ".findIndex(th => th.textContent === 'clipped'))")
        row("browser: sort the table by clipped share", time.perf_counter() - start, 5)
        errors = b.console_errors() + b.eval("kldivReport.errors") + b.eval("kldivReport.problems()")
        print(f"  console errors / drawing problems: {errors or 'none'}")
        b.screenshot(folder / "screenshot.png")
        print(f"  screenshot: {folder / 'screenshot.png'}")


if __name__ == "__main__":
    main()
