"""Sharded calibration on Dask: 1 and 2 local workers against one process, same data.

The model is the benchmark ResNet of ``calibrate_e2e.py`` (seeded weights, nothing
downloaded); the data are seeded batches saved one per ``.npy`` file (the distributed run
shards by file). One run:

1. one process: :func:`kldiv.pipeline.collect_histograms` over the folder;
2. a ``LocalCluster`` of 1 worker, then of 2 workers (one thread each, onnxruntime given the
   cores divided among the workers): :func:`kldiv.distributed.collect_histograms_distributed`;

each sharded result is checked **equal** to the one-process histograms (every tensor, counts,
range and absmax) before anything is timed; then each is timed ``--repeat`` times (best
reported; cluster start-up excluded and reported apart; the worker sessions are warm, as in a
long run). From the same run (the three runs interleaved ``--repeat`` times, best of each: other load on
the machine then hits all three alike): the one-process cost per batch, the sharded overhead per shard
(1 worker against one process, divided by the shards), the merge's cost, and what N machines
would give: ``T(N) = first batch + (batches - 1) * per batch / N + shards * overhead / N +
merge``.

Run::

    python benchmarks/sharded.py                   # 48 batches of 8, default shards
    python benchmarks/sharded.py --batches 96 --shards 16 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from calibrate_e2e import INPUT, SHAPE, build_resnet


def _same(a, b) -> None:
    assert a.names == b.names, "tensor lists differ"
    for n in a:
        if not (a[n] == b[n] and a.absmax(n) == b.absmax(n)):
            raise SystemExit(f"NOT EQUAL: tensor {n!r}")
    assert a.meta["data_fingerprint"] == b.meta["data_fingerprint"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--shards", type=int, default=None,
                    help="shards after the first batch (default: DEFAULT_SHARDS_PER_WORKER "
                         "per worker)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import distributed

    from kldiv.defaults import DEFAULT_SHARDS_PER_WORKER
    from kldiv.distributed import collect_histograms_distributed, local_cluster_options
    from kldiv.pipeline import collect_histograms

    tmp = Path(tempfile.mkdtemp(prefix="kldiv-sharded-"))
    model = build_resnet(tmp / "resnet.onnx")
    data = tmp / "data"
    data.mkdir()
    rng = np.random.default_rng(1)
    for i in range(args.batches):
        x = rng.standard_normal((args.batch_size, *SHAPE)).astype(np.float32)
        np.save(data / f"batch{i:05d}.npy", x)
    print(f"model {model.name}, {args.batches} batches of {args.batch_size} "
          f"({INPUT} {SHAPE}), shards: {args.shards or 'default'}; {os.cpu_count()} CPUs")

    one = collect_histograms(model, data)  # warm-up + reference
    runs = {"one process": lambda: collect_histograms(model, data)}
    starts, clusters = {}, []
    for workers in (1, 2):
        t0 = time.perf_counter()
        cluster = distributed.LocalCluster(**local_cluster_options(workers))
        client = distributed.Client(cluster)
        clusters.append((client, cluster))
        starts[workers] = time.perf_counter() - t0
        threads = max(1, (os.cpu_count() or 1) // workers)

        def run(client=client, threads=threads):
            return collect_histograms_distributed(
                model, data, client=client, shards=args.shards, intra_op_num_threads=threads)

        _same(run(), one)  # equality first (also warms each worker's session)
        runs[f"{workers} worker{'s' if workers > 1 else ''}"] = run
    times: dict[str, float] = {k: float("inf") for k in runs}
    for _ in range(args.repeat):  # interleaved, so that load from elsewhere hits all alike
        for k, fn in runs.items():
            times[k] = min(times[k], _timed(fn)[0])
    for client, cluster in clusters:
        client.close()
        cluster.close()

    # the merge alone (driver side), on the real shard results
    from kldiv.distributed import run_shard, shard_source
    from kldiv.shard import merge_shards as merge
    from kldiv.shard import shard_bases

    payload = str(model.resolve())
    import hashlib

    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    from kldiv.data import as_source

    pieces = shard_source(as_source(data), args.shards or DEFAULT_SHARDS_PER_WORKER)
    fill = {"num_bins": 2048, "nonfinite": "raise"}
    opts = {"include_constants": False, "graph_optimization_level": "all",
            "intra_op_num_threads": None}
    first, _ = run_shard(payload, sha, pieces[0][1], 0, {}, opts, fill)
    base = shard_bases(first)
    results = [first] + [run_shard(payload, sha, p, lo, base, opts, fill)[0]
                         for lo, p in pieces[1:]]
    t_merge, (merged, reruns) = _timed(lambda: merge(results))
    assert not reruns
    _same_hists(merged, one)

    t_one = times["one process"]
    per_batch = t_one / args.batches
    overhead = (times["1 worker"] - t_one) / (
        (args.shards or DEFAULT_SHARDS_PER_WORKER) + 1)
    print()
    print(f"{'run':14s} {'seconds':>8s} {'vs one process':>15s}")
    for k, v in times.items():
        print(f"{k:14s} {v:8.2f} {v / t_one:14.2f}x")
    print(f"(cluster start: 1 worker {starts[1]:.1f} s, 2 workers {starts[2]:.1f} s, "
          "not included)")
    print(f"\nper batch (one process): {per_batch * 1000:.1f} ms; sharded overhead per shard: "
          f"{overhead * 1000:.0f} ms; merge of {len(results)} shards: {t_merge * 1000:.1f} ms")
    print("N machines (each as fast as this one, cores as here), "
          "T(N) = per batch + (batches-1)*per batch/N + shards*overhead/N + merge:")
    for n in (1, 2, 4, 8, 16, 64):
        shards = max(args.shards or DEFAULT_SHARDS_PER_WORKER * n, n)
        t = per_batch + (args.batches - 1) * per_batch / n + shards * max(overhead, 0) / n
        t += t_merge * shards / len(results)
        print(f"  N={n:3d}: {t:7.2f} s ({t_one / t:5.1f}x one process)")
    print("all sharded histograms equal the one-process histograms (checked before timing)")


def _same_hists(a, b) -> None:
    for n in b:
        if n in a and not (a[n] == b[n]):
            raise SystemExit(f"merge NOT EQUAL: tensor {n!r}")


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


if __name__ == "__main__":
    main()
