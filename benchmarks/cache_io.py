"""Time parse_cache / format_cache on a 10,000-entry cache against a plain str.split pass, and
read and compare a large cache (6.7 million entries, ~270 MB) in fresh processes.

Run: ``python benchmarks/cache_io.py [--entries 10000] [--repeat 20] [--large-entries 6700000]``
(``--large-entries 0`` skips the large rows). Prints the best time of each over ``--repeat`` runs
and its ratio to the baseline measured in the same run. Targets: parse and format each <= 50 ms
for 10,000 entries; reading the large cache >= 50 MB/s with a peak resident memory
<= 3x the file size, and comparing two of them in under a minute.

The large file is written to a temporary folder and removed afterwards. Each large row runs in
a new Python process, which reports its own wall and CPU time and its peak resident set size
(``ru_maxrss``) before and after the work; the baseline row reads the same file with
``open().read()`` and splits it into lines, the least any reader of the text does. Wall times on
a shared machine vary; the CPU time shows what the reader itself costs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path

from kldiv.cachefile import format_cache, header_for, parse_cache
from kldiv.scales import CalibrationTable


def make_table(n: int, seed: int = 0) -> CalibrationTable:
    """n tensors with realistic ONNX-style names (some with ':' and ': ') and random scales."""
    rng = random.Random(seed)
    kinds = [
        "/model/layer{i}/Conv_output_0",
        "(Unnamed Layer* {i}) [Shuffle]_output",
        "input_tensor:{i}",
        "%x.{i} : Tensor = aten::relu(%y)",
        "onnx::Mul_{i}",
    ]
    entries = []
    for i in range(n):
        bits = (
            rng.choice([0, 0x7F800000])
            if rng.random() < 0.01
            else rng.randrange(0x3A000000, 0x3F000000)
        )
        entries.append((kinds[i % len(kinds)].format(i=i), bits))
    return CalibrationTable.from_bits(entries, header=header_for("10.9.0"))


_CHILD = r"""
import json, resource, sys, time
def rss(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
what, paths = sys.argv[1], sys.argv[2:]
if what != "baseline":
    from kldiv.cachefile import read_cache
    from kldiv.comparison import compare
before = rss()
wall, cpu = time.perf_counter(), time.process_time()
if what == "baseline":
    with open(paths[0], "rb") as fh:
        n = len(fh.read().split(b"\n"))
elif what == "read":
    n = len(read_cache(paths[0]))
else:
    r = compare(read_cache(paths[0]), read_cache(paths[1]))
    text = r.to_text(max_rows=50, only_differences=True)
    n = len(r.tensors)
print(json.dumps({"n": n, "wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
                  "rss_before": before, "rss_peak": rss()}))
"""


def _child(what: str, *paths: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", _CHILD, what, *map(str, paths)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def write_large(path: Path, n: int, seed: int) -> int:
    """Write an ``n``-entry cache of :func:`make_table`'s names (streamed); return its size."""
    rng = random.Random(seed)
    kinds = ["/model/layer{i}/Conv_output_0", "(Unnamed Layer* {i}) [Shuffle]_output",
             "input_tensor:{i}", "%x.{i} : Tensor = aten::relu(%y)", "onnx::Mul_{i}"]
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("TRT-100900-EntropyCalibration2\n")
        for start in range(0, n, 100_000):
            fh.write("".join(
                f"{kinds[i % 5].format(i=i)}: {rng.randrange(0x3A000000, 0x3F000000):x}\n"
                for i in range(start, min(n, start + 100_000))
            ))
    return path.stat().st_size


def large_rows(n: int) -> None:
    """Read and compare an ``n``-entry cache, each in a fresh process (see the module doc)."""
    with tempfile.TemporaryDirectory(prefix="kldiv-cache-io-") as tmp:
        a, b = Path(tmp) / "a.cache", Path(tmp) / "b.cache"
        size = write_large(a, n, 1)
        write_large(b, n, 2)
        mb = size / 1e6
        rows = [("baseline: read + split lines", _child("baseline", a)),
                ("read_cache", _child("read", a)),
                ("compare (two files, read + report)", _child("compare", a, b))]
    base = rows[0][1]
    print(f"\n{n:,} entries, {mb:.0f} MB per file (fresh process per row)")
    print(f"{'operation':<36} {'wall s':>7} {'cpu s':>6} {'MB/s wall':>9} {'MB/s cpu':>8} "
          f"{'x base':>6} {'peak MB':>8} {'peak/file':>9} {'target':>12}")
    for name, r in rows:
        files = 2 if name.startswith("compare") else 1
        rate = mb * files / r["cpu"]
        wall_rate = mb * files / r["wall"]
        peak = r["rss_peak"] / (size * files)
        target = ""
        if name.startswith("read_cache"):  # >= 50 MB/s (wall, and CPU alone), peak <= 3x
            target = ("ok" if wall_rate >= 50 else "SLOW wall") if peak <= 3 else "MEMORY"
            if target != "ok" and rate >= 50 and peak <= 3:
                target += ", cpu ok"
        elif name.startswith("compare"):
            target = "ok" if r["wall"] < 60 else "SLOW"
        print(f"{name:<36} {r['wall']:>7.2f} {r['cpu']:>6.2f} {wall_rate:>9.0f} {rate:>8.0f} "
              f"{r['cpu'] / base['cpu']:>6.1f} {r['rss_peak'] / 1e6:>8.0f} {peak:>9.2f} "
              f"{target:>12}")
    print("peak = the process's peak resident set size, interpreter and imports included "
          f"(before the work: {rows[1][1]['rss_before'] / 1e6:.0f} MB for read_cache)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--entries", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--large-entries", type=int, default=6_700_000,
                    help="entries of the large cache rows (0: skip them)")
    args = ap.parse_args()
    table = make_table(args.entries)
    text = format_cache(table)
    assert parse_cache(text) == table

    def baseline() -> object:
        return [line.rpartition(": ") for line in text.split("\n")]

    rows = [
        ("baseline: str.split + rpartition", baseline),
        ("parse_cache", lambda: parse_cache(text)),
        ("format_cache", lambda: format_cache(table)),
    ]
    times = {name: min(timeit.repeat(f, number=1, repeat=args.repeat)) for name, f in rows}
    base = times[rows[0][0]]
    print(f"{args.entries} entries, {len(text):,} bytes, best of {args.repeat}")
    print(f"{'operation':<36} {'ms':>9} {'x baseline':>11} {'target':>8}")
    for name, _ in rows:
        target = "" if name.startswith("baseline") else ("ok" if times[name] <= 0.050 else "SLOW")
        print(f"{name:<36} {times[name] * 1e3:>9.2f} {times[name] / base:>11.1f} {target:>8}")
    if args.large_entries:
        large_rows(args.large_entries)


if __name__ == "__main__":
    main()
