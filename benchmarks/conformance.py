"""kldiv against real TensorRT caches whose model and calibration images are public.

Run: ``python benchmarks/conformance.py [--fixtures DIR] [--no-accuracy]``
(``DIR`` defaults to ``$KLDIV_FIXTURES``, else ``../shared/fixtures``).

For every case of :func:`kldiv.conformance.sampleint8_cases` (TensorRT's sampleINT8 caches:
TRT 7.0 and 5.1 EntropyCalibration2 with the ``tensorrt`` preset, the TRT 6 legacy cache with
``method="legacy"``) it rebuilds the batches TensorRT calibrated on, calibrates them with kldiv
and prints per cache entry: TensorRT's hex, kldiv's hex, the bin TensorRT's value implies under
kldiv's range, bins apart, float32 ulps apart, and why any ulps remain. Then sampleINT8's
accuracy on the MNIST test set (onnxruntime, CPU): FP32 top-1, and INT8 top-1 of the Q/DQ
model (:func:`kldiv.to_qdq_onnx`) with kldiv's reproduced scales and with TensorRT's own cached
scales, beside the figures NVIDIA's sampleINT8 README reports for TensorRT.

Another reproducible cache is one more :class:`kldiv.conformance.ConformanceCase` in
``EXTRA_CASES``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kldiv.cachefile import read_cache
from kldiv.conformance import ConformanceCase, run_case, sampleint8_accuracy, sampleint8_cases

REPO = Path(__file__).resolve().parents[1]

#: What NVIDIA's sampleINT8 README reports for TensorRT (NVIDIA/TensorRT,
#: samples/opensource/sampleINT8/README.md at commit 0d36bbb2, the README's first release, March
#: 2019, whose example CalibrationTable is the TRT 5.1 cache of this suite), "Running the sample",
#: example output of `./sample_int8 mnist`: FP32 and INT8 top-1 on "400 batches of size 100
#: starting at 100". Those batch files come from `caffe test` on lenet_train_test.prototxt
#: (TEST phase, batches of 100), so the 40,000 images are, by inference, the 10,000 test images
#: four times over.
README_TOP1 = {"fp32": 0.9904, "int8": 0.9908}


#: More reproducible caches: ``ConformanceCase(name, model, batches, cache[, method=...])``.
EXTRA_CASES: list[ConformanceCase] = []


def sampleint8(fixtures: Path) -> list[tuple[ConformanceCase, float]]:
    """sampleINT8's cases, each with the pixel scale its images were calibrated with (the
    accuracy runs use the same)."""
    scales = {"sampleINT8 TRT 7.0": 1 / 255}
    return [(c, scales.get(c.name, 2.0**-8)) for c in sampleint8_cases(fixtures)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fixtures", type=Path,
                    default=Path(os.environ.get("KLDIV_FIXTURES", REPO.parent / "shared" / "fixtures")))
    ap.add_argument("--no-accuracy", action="store_true", help="skip the MNIST accuracy runs")
    args = ap.parse_args(argv)

    reports = []
    for case in [c for c, _ in sampleint8(args.fixtures)] + EXTRA_CASES:
        report = run_case(case)
        reports.append(report)
        print(report.to_text())
        print(f"  batches: {case.notes}\n")

    entropy = [e for r in reports if r.case.method == "entropy" for e in r.entries]
    legacy = [e for r in reports if r.case.method == "legacy" for e in r.entries]
    print("Totals")
    print(f"  entropy (tensorrt preset): {sum(e.in_trt_bin for e in entropy)}/{len(entropy)} "
          f"in TensorRT's bin, {sum(e.identical for e in entropy)}/{len(entropy)} bit-identical, "
          f"at most {max(e.ulps_apart for e in entropy)} ulps; degenerate-window rule moves "
          f"{sum(e.bin_rule_off != e.kldiv_bin for e in entropy)} of {len(entropy)} bins")
    print(f"  legacy: {sum(e.in_trt_bin for e in legacy)}/{len(legacy)} on TensorRT's edge, "
          f"{sum(e.identical for e in legacy)}/{len(legacy)} bit-identical, "
          f"at most {max(e.ulps_apart for e in legacy)} ulps")

    if args.no_accuracy:
        return 0
    print("\nsampleINT8 accuracy, MNIST test set (10,000 images), onnxruntime CPU, "
          "Q/DQ export with per-channel int8 weights")
    print(f"  {'scales':<44}{'FP32 top-1':>12}{'INT8 top-1':>12}{'agree':>9}")
    for (case, scale), report in zip(sampleint8(args.fixtures), reports):
        ours = sampleint8_accuracy(args.fixtures, report.table, scale=scale)
        trt = read_cache(case.cache)
        theirs_table = report.table.copy()
        for name in trt:
            theirs_table.set_bits(name, trt.bits(name))
        if "pool2_flat" in theirs_table and "pool2" in trt:  # Flatten: pool2's scale
            theirs_table.set_bits("pool2_flat", trt.bits("pool2"))
        theirs = sampleint8_accuracy(args.fixtures, theirs_table, scale=scale)
        for label, acc in ((f"kldiv, {case.name}", ours),
                           (f"TensorRT's cache, {case.name}", theirs)):
            print(f"  {label:<44}{acc['fp32']:>12.4f}{acc['int8']:>12.4f}{acc['agreement']:>9.4f}")
    print(f"  {'sampleINT8 README (TensorRT engine)':<44}{README_TOP1['fp32']:>12.4f}"
          f"{README_TOP1['int8']:>12.4f}{'':>9}")
    print("  README: NVIDIA/TensorRT samples/opensource/sampleINT8/README.md (first release, "
          "March 2019, TRT 5.1 era),\n  example output of `./sample_int8 mnist`: 400 batches "
          "of 100 from its batch files (by inference the test set four times), on a GPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
