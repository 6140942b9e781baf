"""End-to-end calibration: kldiv vs plain inference vs onnxruntime's entropy calibrator.

Same model, same inputs, same machine, one run. Each contender runs in its own fresh
subprocess; its wall time (after imports) and peak RSS (``VmHWM``) are measured there.

- ``plain``: onnxruntime inference of the inputs (default session options), outputs dropped.
- ``kldiv``: ``kldiv.calibrate(model, data, preset="tensorrt")``, the public call that
  ``kldiv calibrate`` makes (model load, data fingerprint, histograms, search, table), with
  the kernels users get by default: Numba's JIT, machine code from kldiv's on-disk cache
  (warmed in a subprocess before any contender runs, so no contender pays the compile).
- ``kldiv-parts``: the same work spelled out (``OnnxRuntimeRunner`` + ``HistogramCollector``
  + the search), timed by part: model run / histograms / search.
- ``ort-entropy``: ``onnxruntime.quantization.calibrate.create_calibrator(...,
  CalibrationMethod.Entropy, extra_options={"num_bins": 2048})``, ``collect_data``,
  ``compute_data``.
- ``kldiv-overlap``: the same with ``overlap=True`` (the next batch's model run goes ahead
  in a thread while this batch's histograms fill, where two batches of activations fit the
  memory budget); ``kldiv-unbudgeted``: the same with ``max_memory=None`` (a batch whose
  activations exceed the default budget runs in stages otherwise; ``exposed`` never does).
- ``exposed``: the floor of kldiv's design: onnxruntime with kldiv's session options and
  every tensor kldiv calibrates as an output (the session of ``OnnxRuntimeRunner``), the
  outputs dropped. ``kldiv / exposed`` is what the histograms, the search and the set-up
  add to that.
- ``kldiv`` again with 64 and with 1,024 batches: peak memory must not depend on the count.

Models: the ResNet below (``--model resnet``, the default), or a real one: ``--model
PP-OCRv6_det_small.onnx`` (or the ``rapidocr-3.10.0`` wheel it ships in, ``pip download
--no-deps rapidocr==3.10.0``), run over rendered text pages (``--pages``, ``--page-size``;
PIL's default font, PP-OCR's normalisation ``(x / 255 - 0.5) / 0.5``).

``--runs N`` repeats the contenders N times, interleaved (plain, exposed, kldiv, onnxruntime,
then again), and prints each figure and ratio as a range over the runs; ratios are taken
within a run.

The model is a CIFAR-style ResNet (3x32x32 input; stages of 32/64/128 channels, two basic
blocks each; batch-norm folded into the convolutions, as in deployed models) built with
``onnx.helper`` from seeded weights, so nothing is downloaded. Inputs are seeded normal noise
generated batch by batch (no contender holds the data set). ``--channels 64,128,256`` builds
the same network twice as wide: four times the compute and twice the activations, closer to
the reference measurement the targets were set against (plain inference 3.6 s / 0.16 GB, onnxruntime's calibrator
51 s / 6.1 GB).

Run::

    python benchmarks/calibrate_e2e.py                 # 1,024 inputs, batches of 8
    python benchmarks/calibrate_e2e.py --quick         # 128 inputs, no long run
    python benchmarks/calibrate_e2e.py --channels 64,128,256 --long-batches 0
    python benchmarks/calibrate_e2e.py --channels 64,128,256 --inputs 512 --runs 3 \
        --contenders plain,exposed,kldiv,kldiv-overlap,ort-entropy --long-batches 0
    python benchmarks/calibrate_e2e.py --model rapidocr-3.10.0-py3-none-any.whl --pages 16 \
        --runs 3 --contenders plain,exposed,kldiv,kldiv-unbudgeted,kldiv-overlap
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from kldiv.defaults import DEFAULT_BATCH_SIZE, NUM_BINS

INPUT = "input"
SHAPE = (3, 32, 32)


# --------------------------------------------------------------------------- the model
def build_resnet(
    path: Path, seed: int = 0, channels: tuple[int, int, int] = (32, 64, 128)
) -> Path:
    """Write a small deterministic ResNet (opset 13) with stages of ``channels`` to ``path``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    counter = [0]

    def conv(x: str, cin: int, cout: int, k: int, stride: int, relu: bool) -> str:
        counter[0] += 1
        i = counter[0]
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(
            np.float32
        )
        b = (rng.standard_normal(cout) * 0.05).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")])
        out = f"conv{i}"
        nodes.append(helper.make_node(
            "Conv", [x, f"w{i}", f"b{i}"], [out], kernel_shape=[k, k], strides=[stride] * 2,
            pads=[k // 2] * 4,
        ))
        if relu:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"]))
            out = f"relu{i}"
        return out

    x = conv(INPUT, 3, channels[0], 3, 1, True)
    cin = channels[0]
    for stage, cout in enumerate(channels):
        for block in range(2):
            stride = 2 if (stage > 0 and block == 0) else 1
            y = conv(x, cin, cout, 3, stride, True)
            y = conv(y, cout, cout, 3, 1, False)
            short = x if (stride == 1 and cin == cout) else conv(x, cin, cout, 1, stride, False)
            name = f"add_s{stage}b{block}"
            nodes.append(helper.make_node("Add", [y, short], [name]))
            nodes.append(helper.make_node("Relu", [name], [f"{name}_relu"]))
            x, cin = f"{name}_relu", cout
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    wf = (rng.standard_normal((10, cin)) * 0.1).astype(np.float32)
    inits.extend([numpy_helper.from_array(wf, "wf"),
                  numpy_helper.from_array(np.zeros(10, np.float32), "bf")])
    nodes.append(helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], transB=1))
    graph = helper.make_graph(
        nodes, "small_resnet",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", *SHAPE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


class Batches:
    """Seeded inputs, generated one batch at a time (re-iterable, sized)."""

    def __init__(self, n_batches: int, batch_size: int, seed: int = 1) -> None:
        self.n_batches, self.batch_size, self.seed = n_batches, batch_size, seed

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        for _ in range(self.n_batches):
            yield {INPUT: rng.standard_normal((self.batch_size, *SHAPE)).astype(np.float32)}


PPOCR_MEMBER = "rapidocr/models/PP-OCRv6_det_small.onnx"
WORDS = ("kldiv", "TensorRT", "INT8", "calibration", "entropy", "2048", "bins", "KL(P||Q)",
         "threshold", "onnxruntime", "PP-OCRv6", "histogram", "scale", "0.0039", "page",
         "invoice", "total", "date", "quantity", "Nr.", "amount", "signature")


class Pages:
    """Rendered text pages (PP-OCR det input: NCHW float32, ``(x / 255 - 0.5) / 0.5``),
    rendered one batch at a time from a seed (re-iterable, sized).
    """

    def __init__(self, n_batches: int, batch_size: int, hw: tuple[int, int], seed: int = 1
                 ) -> None:
        self.n_batches, self.batch_size, self.hw, self.seed = n_batches, batch_size, hw, seed

    def __len__(self) -> int:
        return self.n_batches

    def page(self, rng: np.random.Generator) -> np.ndarray:
        from PIL import Image, ImageDraw, ImageFont

        h, w = self.hw
        img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(215, 256, 3)))
        draw = ImageDraw.Draw(img)
        y = int(rng.integers(8, 24))
        while y < h - 20:
            size = int(rng.integers(12, 30))
            font = ImageFont.load_default(size=size)
            x = int(rng.integers(8, 40))
            line = " ".join(rng.choice(WORDS, int(rng.integers(2, 9))))
            draw.text((x, y), line, font=font,
                      fill=tuple(int(v) for v in rng.integers(0, 90, 3)))
            y += size + int(rng.integers(4, 20))
        x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1)
        return (x / 255.0 - 0.5) / 0.5

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        for _ in range(self.n_batches):
            yield {"x": np.stack([self.page(rng) for _ in range(self.batch_size)])}


def _real_model(path: Path, into: Path) -> Path:
    """An .onnx path as given; from a .whl, the PP-OCRv6 det small model it ships."""
    if path.suffix != ".whl":
        return path
    import zipfile

    with zipfile.ZipFile(path) as whl:
        out = into / Path(PPOCR_MEMBER).name
        out.write_bytes(whl.read(PPOCR_MEMBER))
    return out


def _data(args: argparse.Namespace, n_batches: int):
    if args.pages_hw:
        return Pages(n_batches, args.batch_size, tuple(args.pages_hw))
    return Batches(n_batches, args.batch_size)


# --------------------------------------------------------------------------- contenders
def _peak_mb() -> float:
    """This process's peak resident memory, in MiB.

    Linux: ``VmHWM`` of ``/proc/self/status``, the high-water mark of this process's own
    address space. Not ``ru_maxrss``: across fork + exec the kernel carries the pre-exec
    image's peak into it, so a child's ``ru_maxrss`` is never below its parent's resident
    size at spawn time (a child of a 300 MB parent reports 312 MB where VmHWM says 10 MB).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:  # pragma: no cover - not Linux
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child_plain(model: str, data: Batches) -> dict:
    import onnxruntime as ort

    imported = _peak_mb()
    t0 = time.perf_counter()
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    for feed in data:
        sess.run(None, feed)
    return {"seconds": time.perf_counter() - t0, "import_mb": imported}


def child_exposed(model: str, data: Batches) -> dict:
    """kldiv's model run alone: its session (every calibrated tensor an output, its session
    options), outputs dropped; no histograms, no search.
    """
    import onnxruntime  # noqa: F401

    from kldiv.runners import OnnxRuntimeRunner

    imported = _peak_mb()
    t0 = time.perf_counter()
    runner = OnnxRuntimeRunner(model, fetch_aliases=False)  # as kldiv.calibrate builds it
    names = runner._outputs
    for feed in data:
        runner.session.run(names, feed)
    return {"seconds": time.perf_counter() - t0, "outputs": len(names), "import_mb": imported}


def child_kldiv(model: str, data: Batches) -> dict:
    """What users run: ``kldiv.calibrate(model, data, preset="tensorrt")``, nothing else."""
    import onnxruntime  # noqa: F401  (imports counted before the clock starts, as for plain)

    import kldiv

    imported = _peak_mb()
    t0 = time.perf_counter()
    table = kldiv.calibrate(model, data, preset="tensorrt").table
    return {"seconds": time.perf_counter() - t0, "tensors": len(table), "import_mb": imported}


def _child_kldiv_with(**options: object):  # type: ignore[no-untyped-def]
    def child(model: str, data: Batches) -> dict:
        import onnxruntime  # noqa: F401

        import kldiv

        imported = _peak_mb()
        t0 = time.perf_counter()
        table = kldiv.calibrate(model, data, preset="tensorrt", **options).table
        return {"seconds": time.perf_counter() - t0, "tensors": len(table),
                "import_mb": imported}
    return child


def child_kldiv_parts(model: str, data: Batches) -> dict:
    """The same work by its parts, timed separately (sequential)."""
    import onnxruntime  # noqa: F401

    from kldiv.collect import HistogramCollector
    from kldiv.pipeline import attach_graph_facts, calibrate_histograms
    from kldiv.runners import OnnxRuntimeRunner

    imported = _peak_mb()
    t0 = time.perf_counter()
    runner = OnnxRuntimeRunner(model, fetch_aliases=False)  # as kldiv.calibrate runs it
    collector = HistogramCollector()
    t_run = t_hist = 0.0
    for index, batch in enumerate(data):
        a = time.perf_counter()
        acts = runner.run(runner.prepare(batch, index=index), index=index)
        b = time.perf_counter()
        collector.observe(acts, batch=index)
        t_hist += time.perf_counter() - b
        t_run += b - a
        del acts
    attach_graph_facts(collector, runner)  # as kldiv.calibrate does
    s = time.perf_counter()
    table = calibrate_histograms(collector).table
    t_search = time.perf_counter() - s
    total = time.perf_counter() - t0
    return {"seconds": total, "run": t_run, "hist": t_hist, "search": t_search,
            "tensors": len(table), "import_mb": imported}


def child_ort_entropy(model: str, data: Batches) -> dict:
    from onnxruntime.quantization.calibrate import (
        CalibrationDataReader,
        CalibrationMethod,
        create_calibrator,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(data)

        def get_next(self):
            return next(self.it, None)

    imported = _peak_mb()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cal = create_calibrator(
            model, augmented_model_path=os.path.join(tmp, "augmented.onnx"),
            calibrate_method=CalibrationMethod.Entropy, extra_options={"num_bins": NUM_BINS},
        )
        cal.collect_data(Reader())
        ranges = cal.compute_data()
    return {"seconds": time.perf_counter() - t0, "tensors": len(ranges.data),
            "import_mb": imported}


CHILDREN = {
    "plain": child_plain,
    "kldiv": child_kldiv,
    "kldiv-parts": child_kldiv_parts,
    "exposed": child_exposed,
    "kldiv-overlap": _child_kldiv_with(overlap=True),
    "kldiv-unbudgeted": _child_kldiv_with(max_memory=None),
    "ort-entropy": child_ort_entropy,
}


def _prepare_kernels() -> str:
    """Warm kldiv's kernel cache in a subprocess (so no contender pays a one-time compile);
    say which kernels ``kldiv`` uses and how long the warm-up took.
    """
    code = ("import time, numpy as np; t = time.perf_counter()\n"
            "import kldiv\n"
            "from kldiv import _kernels\n"
            "h = kldiv.ActivationHistogram.from_values(np.arange(1 << 17, dtype=np.float32))\n"
            "kldiv.search_threshold(h)\n"
            "k = _kernels.resolve()\n"
            "print('numpy' if k is None else k.name, _kernels.cache_dir(), "
            "round(time.perf_counter() - t, 1))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout.split()
    name, folder, seconds = out[-3:]
    return f"{name} (cache {folder}; warm-up took {seconds} s before this run)"


def measure(mode: str, model: Path, n_batches: int, batch_size: int,
            extra: tuple[str, ...] = ()) -> dict:
    """Run one contender in a fresh subprocess; return its report plus peak RSS."""
    cmd = [sys.executable, __file__, "--child", mode, "--model", str(model),
           "--batches", str(n_batches), "--batch-size", str(batch_size), *extra]
    start = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    report["process_seconds"] = time.perf_counter() - start
    return report


def _span(values: list[float], fmt: str = ".2f") -> str:
    """``a–b`` over runs (one value when there is one run)."""
    lo, hi = min(values), max(values)
    return f"{lo:{fmt}}" if len(values) == 1 or f"{lo:{fmt}}" == f"{hi:{fmt}}" \
        else f"{lo:{fmt}}–{hi:{fmt}}"


def _load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet",
                    help="'resnet' (built here), an .onnx file, or the rapidocr-3.10.0 wheel "
                         "(its PP-OCRv6 det small model)")
    ap.add_argument("--inputs", type=int, default=1024, help="ResNet inputs")
    ap.add_argument("--pages", type=int, default=32, help="rendered pages (a real model)")
    ap.add_argument("--page-size", default="640x480", help="page height x width")
    ap.add_argument("--batch-size", type=int,
                    help=f"default {DEFAULT_BATCH_SIZE} for the ResNet, 1 for pages")
    ap.add_argument("--runs", type=int, default=1, help="interleaved repetitions")
    ap.add_argument("--contenders", default="plain,exposed,kldiv,kldiv-parts,ort-entropy", help="comma-separated, run in this order in each run")
    ap.add_argument("--long-batches", type=int, default=1024,
                    help="batches of the long kldiv run (memory must not grow); 0 to skip")
    ap.add_argument("--quick", action="store_true", help="128 inputs, no long run")
    ap.add_argument("--channels", default="32,64,128",
                    help="channels of the three stages (64,128,256: 4x the compute, 2x the "
                         "activations)")
    ap.add_argument("--skip-ort", action="store_true", help="skip onnxruntime's calibrator")
    ap.add_argument("--child", choices=sorted(CHILDREN))
    ap.add_argument("--batches", type=int)
    ap.add_argument("--pages-hw", type=int, nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        report = CHILDREN[args.child](args.model, _data(args, args.batches))
        report["peak_mb"] = _peak_mb()
        print(json.dumps(report))
        return

    real = args.model != "resnet"
    if args.batch_size is None:
        args.batch_size = 1 if real else DEFAULT_BATCH_SIZE
    if args.quick:
        args.inputs, args.long_batches = 128, 0
    contenders = [c for c in args.contenders.split(",") if c]
    unknown = [c for c in contenders if c not in CHILDREN]
    if unknown:
        raise SystemExit(f"unknown contenders {unknown}; choose from {sorted(CHILDREN)}")
    if args.skip_ort:
        contenders = [c for c in contenders if c != "ort-entropy"]
    extra: tuple[str, ...] = ()
    with tempfile.TemporaryDirectory() as tmp:
        if real:
            model = _real_model(Path(args.model), Path(tmp))
            hw = tuple(int(v) for v in args.page_size.lower().split("x"))
            extra = ("--pages-hw", str(hw[0]), str(hw[1]))
            n_batches = args.pages // args.batch_size
            print(f"# {model.name}, {n_batches * args.batch_size} rendered pages of "
                  f"{hw[0]}x{hw[1]} in {n_batches} batches of {args.batch_size}; "
                  f"{os.cpu_count()} CPUs; python {sys.version.split()[0]}")
        else:
            channels = tuple(int(c) for c in args.channels.split(","))
            model = build_resnet(Path(tmp) / "small_resnet.onnx", channels=channels)  # type: ignore[arg-type]
            n_batches = args.inputs // args.batch_size
            print(f"# small ResNet (3x32x32, {'/'.join(map(str, channels))} channels), "
                  f"{args.inputs} inputs in "
                  f"{n_batches} batches of {args.batch_size}; {os.cpu_count()} CPUs; "
                  f"python {sys.version.split()[0]}")
        print(f"  kernels: {_prepare_kernels()}", flush=True)
        scipy = importlib.util.find_spec("scipy") is not None
        print(f"  SciPy {'installed: Numba imports its BLAS module when the kernels load' if scipy else 'not installed'}"
              f" ({sys.prefix})", flush=True)
        print(f"  {_load()} at the start", flush=True)
        runs: list[dict[str, dict]] = []
        for run in range(args.runs):
            rows = {}
            for mode in contenders:
                rows[mode] = measure(mode, model, n_batches, args.batch_size, extra)
                print(f"  run {run + 1}: {mode} {rows[mode]['seconds']:.2f} s, "
                      f"{rows[mode]['peak_mb']:.0f} MB", flush=True)
            runs.append(rows)
        mem_rows = {}
        if args.long_batches and not real and "kldiv" in contenders:
            for nb in (64, args.long_batches):
                mem_rows[nb] = measure("kldiv", model, nb, args.batch_size)
                print(f"  measured kldiv, {nb} batches: {mem_rows[nb]['peak_mb']:.0f} MB",
                      flush=True)
        print(f"  {_load()} at the end")

    def col(mode: str, key: str) -> list[float]:
        return [r[mode][key] for r in runs if mode in r]

    def ratio(a: str, b: str, key: str = "seconds") -> list[float]:
        return [r[a][key] / r[b][key] for r in runs if a in r and b in r]

    shown = [m for m in contenders if m != "kldiv-parts"]
    print()
    print(f"{args.runs} run(s), ranges over the runs")
    print(f"{'contender':<16}{'seconds':>16}{'peak MB':>14}")
    for mode in shown:
        print(f"{mode:<16}{_span(col(mode, 'seconds')):>16}{_span(col(mode, 'peak_mb'), '.0f'):>14}")
    print()
    if "exposed" in contenders and "kldiv" in contenders:
        print(f"kldiv / exposed (every tensor an output, outputs dropped): "
              f"{_span(ratio('kldiv', 'exposed'))}x (target <= 1.15)")
    if "plain" in contenders:
        for mode in ("exposed", "kldiv"):
            if mode in contenders:
                print(f"{mode} / plain inference: {_span(ratio(mode, 'plain'))}x time, "
                      f"{_span(ratio(mode, 'plain', 'peak_mb'))}x peak memory")
    if "ort-entropy" in contenders and "kldiv" in contenders:
        print(f"onnxruntime entropy (2048 bins) / kldiv: {_span(ratio('ort-entropy', 'kldiv'))}x "
              f"time (target >= 10x), {_span(ratio('ort-entropy', 'kldiv', 'peak_mb'))}x "
              "peak memory (target >= 20x)")
    for mode, what in (("kldiv-overlap", "with overlap"), ("kldiv-unbudgeted", "without a budget")):
        if mode in contenders and "kldiv" in contenders:
            print(f"kldiv {what} / kldiv: {_span(ratio(mode, 'kldiv'))}x time, "
                  f"{_span(ratio(mode, 'kldiv', 'peak_mb'))}x peak memory; "
                  f"{mode} / exposed: {_span(ratio(mode, 'exposed'))}x")
    if "kldiv-parts" in contenders:
        parts = runs[-1]["kldiv-parts"]
        print(f"kldiv by parts (last run, {parts['seconds']:.2f} s, sequential): model run with "
              f"every tensor as output {parts['run']:.2f} s, histograms {parts['hist']:.2f} s "
              f"(incl. loading the kernels), threshold search {parts['search']:.2f} s "
              f"({parts['tensors']} tensors)")
    if mem_rows:
        (n1, r1), (n2, r2) = sorted(mem_rows.items())
        print(f"kldiv peak memory: {n1} batches {r1['peak_mb']:.0f} MB, {n2} batches "
              f"{r2['peak_mb']:.0f} MB (ratio {r2['peak_mb'] / r1['peak_mb']:.2f}; "
              f"{r1['seconds']:.1f} s / {r2['seconds']:.1f} s)")


if __name__ == "__main__":
    main()
