"""Time parse_cache / format_cache on a 10,000-entry cache against a plain str.split pass.

Run: ``python benchmarks/cache_io.py [--entries 10000] [--repeat 20]``. Prints the best time of
each over ``--repeat`` runs and its ratio to the baseline measured in the same run (target from
issue 3: parse and format each <= 50 ms for 10,000 entries).
"""

from __future__ import annotations

import argparse
import random
import timeit

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--entries", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=20)
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


if __name__ == "__main__":
    main()
