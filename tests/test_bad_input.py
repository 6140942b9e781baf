"""Bad input fails before the work, never after it, through the CLI and the API alike.

Every refusal is checked to come before the model runs: a fixture makes creating an
onnxruntime runner fail the test. Exit codes are checked through ``main()`` and, for a sample,
through a fresh ``python -m kldiv.cli`` process.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

import kldiv.runners
from kldiv import cachefile
from kldiv.cachefile import format_cache, parse_cache, read_cache, write_cache
from kldiv.cli import main
from kldiv.collect import HistogramCollector
from kldiv.comparison import compare
from kldiv.errors import (
    DataSourceError,
    HistogramError,
    InputNotFoundError,
    NonFiniteError,
    NotAFileError,
    OutputExistsError,
    OutputFolderError,
    OverwriteInputError,
    PathError,
    PresetError,
)
from kldiv.examples import lenet_calibration_data, lenet_model_path
from kldiv.exports import read_table, to_dynamic_range_text, to_ort_json, usable_only
from kldiv.pipeline import calibrate, calibrate_histograms, collect_histograms
from kldiv.scales import CalibrationTable, PackedNames, amax_to_scale

MODEL = str(lenet_model_path())
REPO = Path(__file__).resolve().parent.parent


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the model, a folder of three batches, and their histogram file."""
    root = tmp_path_factory.mktemp("bad")
    (root / "data").mkdir()
    for i, b in enumerate(lenet_calibration_data()[:3]):
        np.save(root / "data" / f"b{i}.npy", b["input"])
    (root / "m.onnx").write_bytes(Path(MODEL).read_bytes())
    collect_histograms(MODEL, lenet_calibration_data()[:3]).save(root / "h.npz")
    return root


@pytest.fixture()
def no_model_run(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Creating an onnxruntime runner records it; tests assert nothing was created."""
    created: list[str] = []

    class Refuse:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            created.append("runner")
            raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(kldiv.runners, "OnnxRuntimeRunner", Refuse)
    return created


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# -- 1. options and paths, checked before the model runs ------------------------------------------
BAD_OPTIONS = [
    # (extra argv, text in the one-line error or the usage error)
    (["--trt-version", "abc"], "not a TensorRT version: 'abc'"),
    (["--trt-version", "12.0"], "TensorRT 5.x to 10.x"),
    (["--algorithm", "junk"], "unknown calibration algorithm 'junk'"),
    (["--num-bins", "1000000000"], "above the limit of 65,536 bins"),
    (["--num-bins", "0"], "positive whole number"),
    (["--preset", "mxnet"], "preset 'mxnet' with 2048 bins"),
    (["--preset", "mxnet", "--num-bins", "8000"], "odd number of bins"),
    (["--preset", "nope"], "invalid choice: 'nope'"),
    (["--max-batches", "0"], "--max-batches must be >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--method", "percentile", "--percentile", "0", "--algorithm", "entropy2"],
     "--percentile=0.0 must be above 0 and at most 100"),
    (["--percentile", "99"], "--percentile applies to --method percentile only"),
    (["--method", "percentile"], "no TensorRT calibrator computes percentile thresholds"),
    (["--method", "mse"], "no TensorRT calibrator computes mse thresholds"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_OPTIONS)
def test_calibrate_options_refused_before_the_model(
    work: Path, capsys: pytest.CaptureFixture[str], no_model_run: list[str],
    extra: list[str], message: str,
) -> None:
    out = work / "x.cache"
    code, _, err = _cli(capsys, "calibrate", MODEL, "--data", str(work / "data"), "--out",
                        str(out), *extra)
    assert code == 2
    assert message in err
    assert not no_model_run and not out.exists()
    if err.startswith("usage:"):  # argparse: the sub-command's own usage, then the error
        assert err.startswith("usage: kldiv calibrate")
    else:
        _one_line(err)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"trt_version": "abc"}, PresetError, "not a TensorRT version"),
        ({"trt_version": "12.0"}, PresetError, "5.x to 10.x"),
        ({"algorithm": "junk"}, PresetError, "unknown calibration algorithm"),
        ({"num_bins": 10**9}, HistogramError, "above the limit"),
        ({"preset": "mxnet"}, HistogramError, "preset 'mxnet' with 2048 bins"),
        ({"max_batches": 0}, PresetError, "max_batches must be >= 1"),
        ({"batch_size": 0}, PresetError, "batch_size must be >= 1"),
        ({"method": "percentile", "options": {"percentile": 0.0}, "algorithm": "entropy2"},
         PresetError, "above 0 and at most 100"),
        ({"method": "percentile"}, PresetError, "no TensorRT calibrator computes percentile"),
        ({"method": "mse"}, PresetError, "no TensorRT calibrator computes mse"),
    ],
)
def test_api_refuses_the_same_options_before_the_model(
    work: Path, no_model_run: list[str], kwargs: dict[str, Any], error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        calibrate(MODEL, str(work / "data"), **kwargs)
    assert not no_model_run
    assert issubclass(error, ValueError)  # bad input stays a ValueError for callers


def test_collect_histograms_checks_its_options_first(work: Path, no_model_run: list[str]) -> None:
    for kwargs in ({"num_bins": 10**9}, {"max_batches": 0}, {"batch_size": 0},
                   {"range_policy": "bogus"}, {"nonfinite": "ignore"}):
        with pytest.raises(ValueError):
            collect_histograms(MODEL, str(work / "data"), **kwargs)
    with pytest.raises(HistogramError, match="above the limit"):
        HistogramCollector(num_bins=10**9)
    assert not no_model_run


def test_percentile_and_mse_write_the_header_asked_for(work: Path) -> None:
    collector = HistogramCollector.load(work / "h.npz")
    for method in ("percentile", "mse"):
        with pytest.raises(PresetError, match="--algorithm entropy2"):
            calibrate_histograms(collector, method=method)
        table = calibrate_histograms(collector, method=method, algorithm="entropy2").table
        assert table.header.text == "TRT-100900-EntropyCalibration2"
        assert table.provenance["method"] == method
    # a newer TensorRT: its header number, written as given
    table = calibrate_histograms(collector, trt_version="110000").table
    assert table.header.text == "TRT-110000-EntropyCalibration2"


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_out_folder_missing_or_a_folder(
    work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model_run: list[str],
    force: list[str],
) -> None:
    base = ["calibrate", MODEL, "--data", str(work / "data"), *force]
    code, _, err = _cli(capsys, *base, "--out", str(tmp_path / "no" / "x.cache"))
    assert code == 2 and "folder" in _one_line(err) and "does not exist" in err
    code, _, err = _cli(capsys, *base, "--out", str(tmp_path))
    assert code == 2 and f"--out {tmp_path} is a folder" in _one_line(err)
    assert not no_model_run and list(tmp_path.iterdir()) == []
    table = CalibrationTable.from_amaxes({"x": 1.0})
    with pytest.raises(OutputFolderError, match="does not exist"):
        write_cache(table, tmp_path / "no" / "x.cache")
    with pytest.raises(NotAFileError, match="is a folder"):
        write_cache(table, tmp_path, force=True)
    assert isinstance(NotAFileError("x"), IsADirectoryError)
    assert isinstance(OutputFolderError("x"), FileNotFoundError)


def test_preset_checked_against_the_histogram_file(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = work / "mx.cache"
    code, _, err = _cli(capsys, "calibrate", "--from-histograms", str(work / "h.npz"),
                        "--preset", "mxnet", "--out", str(out))
    assert code == 2 and "preset 'mxnet' with 2048 bins" in _one_line(err)
    assert not out.exists()


def test_from_histograms_with_model_or_data_is_an_error(
    work: Path, capsys: pytest.CaptureFixture[str], no_model_run: list[str]
) -> None:
    h, out = str(work / "h.npz"), str(work / "y.cache")
    for given in ([MODEL], ["--data", str(work / "data")], [MODEL, "--data", str(work / "data")]):
        code, _, err = _cli(capsys, "calibrate", *given, "--from-histograms", h, "--out", out)
        assert code == 2 and "--from-histograms replaces running the model" in _one_line(err)
    with pytest.raises(DataSourceError, match="calibrate_histograms"):
        calibrate(None, str(work / "data"))  # saved histograms have their own function
    assert not no_model_run and not Path(out).exists()


def test_errors_exit_2_from_a_fresh_process(work: Path, tmp_path: Path) -> None:
    """The exit status as a shell sees it, and the message on stderr only."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cases = [
        ["--trt-version", "12.0"],
        ["--out", str(work / "m.onnx"), "--force"],
        ["--max-batches", "0"],
    ]
    for extra in cases:
        argv = ["calibrate", str(work / "m.onnx"), "--data", str(work / "data")]
        if "--out" not in extra:
            argv += ["--out", str(tmp_path / "x.cache")]
        run = subprocess.run([sys.executable, "-m", "kldiv.cli", *argv, *extra],
                             capture_output=True, text=True, env=env, timeout=120, check=False)
        assert run.returncode == 2, run.stderr
        assert run.stdout == "" and "error:" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "x.cache").exists()


# -- 2. nothing silently wrong -------------------------------------------------------------------
def test_drop_nonfinite_counts_per_tensor(
    work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    a = np.load(work / "data" / "b0.npy")
    a[0, 0, 0, 0] = np.inf  # one pixel: NaN/Inf spread through the network
    np.save(data / "b0.npy", a)
    np.save(data / "b1.npy", np.load(work / "data" / "b1.npy"))
    prov, hist = tmp_path / "p.json", tmp_path / "h.npz"
    code, out, _ = _cli(capsys, "calibrate", MODEL, "--data", str(data), "--out",
                        str(tmp_path / "x.cache"), "--drop-nonfinite", "--provenance", str(prov),
                        "--save-histograms", str(hist))
    assert code == 0
    dropped = json.loads(prov.read_text())["nonfinite_dropped"]
    assert dropped["input"] == 1 and len(dropped) > 5
    # the counts are those of the activations, counted independently
    runner = kldiv.runners.OnnxRuntimeRunner(MODEL)
    acts = runner.run(runner.prepare({"input": a}))
    for name, count in dropped.items():
        if name in acts:
            assert count == int(np.count_nonzero(~np.isfinite(acts[name]))), name
    assert "NaN/Inf dropped" in out and f"{sum(dropped.values()):,} NaN/Inf values" in out
    loaded = HistogramCollector.load(hist)
    assert {n: c for n, c in loaded.dropped.items() if n in dropped} == dropped
    table = calibrate(MODEL, [{"input": a}], nonfinite="drop").table
    assert table.provenance["nonfinite_dropped"]["input"] == 1


def test_a_tensor_with_nothing_left_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "nan"
    data.mkdir()
    np.save(data / "b0.npy", np.full((2, 1, 8, 8), np.nan, np.float32))
    code, _, err = _cli(capsys, "calibrate", MODEL, "--data", str(data), "--out",
                        str(tmp_path / "x.cache"), "--drop-nonfinite")
    assert code == 2
    assert "tensor 'input': all 128 of its values were NaN/Inf" in _one_line(err)
    assert not (tmp_path / "x.cache").exists()
    with pytest.raises(NonFiniteError, match="tensor 'input': all 128"):
        calibrate(MODEL, [{"input": np.full((2, 1, 8, 8), np.nan, np.float32)}],
                  nonfinite="drop")


def test_search_minmax_is_the_largest_value_seen(
    work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    h = work / "h.npz"
    code, out, _ = _cli(capsys, "search", str(h), "--method", "minmax")
    assert code == 0
    rows = {ln.split()[0]: ln.split() for ln in out.strip().splitlines()[2:]}
    code, *_ = _cli(capsys, "calibrate", "--from-histograms", str(h), "--method", "minmax",
                    "--out", str(tmp_path / "mm.cache"), "-q")
    assert code == 0
    table = read_cache(tmp_path / "mm.cache")
    collector = HistogramCollector.load(h)
    grown = 0
    for name in table:
        assert rows[name][5] == table.hex(name), name  # one answer ...
        assert table.bits(name) == int(np.float32(amax_to_scale(collector.absmax(name))).view(
            np.uint32)), name  # ... the largest |x| seen
        grown += collector.absmax(name) < collector[name].amax
    assert grown > 0  # the histogram ranges differ from it: the test can tell them apart


def test_old_histogram_file_without_absmax(
    work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with np.load(work / "h.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k not in ("absmax", "dropped")}
    arrays["version"] = np.array(1, dtype=np.int64)
    old = tmp_path / "old.npz"
    np.savez(old, **arrays)
    with caplog.at_level(logging.WARNING):
        loaded = HistogramCollector.load(old)
    assert "does not record the largest |x|" in caplog.text
    assert loaded.meta["absmax_from_range"] is True
    assert all(loaded.absmax(n) == loaded[n].amax for n in loaded)
    code, out, _ = _cli(capsys, "search", str(old), "--method", "minmax")
    assert code == 0 and "note:" in out and "upper bound" in out


def test_value_alias_takes_its_source_final_scale(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = calibrate(MODEL, lenet_calibration_data()[:3]).table
    # flatten = Flatten(pool2); pool2 inherits relu2 (the tensorrt preset's pooling rule)
    assert table.bits("flatten") == table.bits("pool2") == table.bits("relu2")
    assert table.provenance["thresholds_of_value_aliases"] == {"flatten": "pool2"}
    code, out, _ = _cli(capsys, "search", str(work / "h.npz"), "--tensor", "pool2", "--tensor",
                        "flatten")
    assert code == 0
    assert "inherited from relu2" in out and "alias of pool2 (inherited)" in out
    rows = {ln.split()[0]: ln.split() for ln in out.strip().splitlines()[2:]}
    assert rows["flatten"][5] == rows["pool2"][5]
    code, out, _ = _cli(capsys, "demo", "-q")
    assert code == 0


# -- 3. nothing the user owns is lost ------------------------------------------------------------
def test_outputs_never_replace_inputs(
    work: Path, capsys: pytest.CaptureFixture[str], no_model_run: list[str]
) -> None:
    model, data = work / "m.onnx", work / "data"
    before = model.read_bytes(), (data / "b0.npy").read_bytes()
    for argv in (
        ["calibrate", str(model), "--data", str(data), "--out", str(model), "--force"],
        ["calibrate", str(model), "--data", str(data / "b0.npy"), "--out",
         str(data / "b0.npy"), "--force"],
        ["calibrate", str(model), "--data", str(data), "--out", str(work / "z.cache"),
         "--save-histograms", str(model), "--force"],
        ["calibrate", "--from-histograms", str(work / "h.npz"), "--out", str(work / "h.npz"),
         "--force"],
    ):
        code, _, err = _cli(capsys, *argv)
        assert code == 2 and "kldiv never writes over its inputs" in _one_line(err)
    with pytest.raises(OverwriteInputError, match="also an input"):
        calibrate(str(model), str(data), save_histograms=str(model), force=True)
    assert not no_model_run
    assert (model.read_bytes(), (data / "b0.npy").read_bytes()) == before


def test_cache_convert_never_replaces_its_input(
    trt_caches: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.cache"
    src.write_bytes((trt_caches / "sampleint8-mnist-trt7000.cache").read_bytes())
    code, _, err = _cli(capsys, "cache", "convert", str(src), "--to", "trt", "-o", str(src),
                        "--force")
    assert code == 2 and "also an input" in err
    assert src.read_bytes() == (trt_caches / "sampleint8-mnist-trt7000.cache").read_bytes()


def test_path_errors_are_kldiv_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for reader in (read_cache, read_table):
        with pytest.raises(NotAFileError, match="folder"):
            reader(tmp_path)
        with pytest.raises(InputNotFoundError, match="no such"):
            reader(tmp_path / "missing.cache")
    with pytest.raises(NotAFileError):
        HistogramCollector.load(tmp_path)
    with pytest.raises(InputNotFoundError):
        HistogramCollector.load(tmp_path / "missing.npz")
    err = PathError("x")
    assert isinstance(err, OSError) and str(err) == "x"
    assert issubclass(OverwriteInputError, ValueError) and issubclass(OutputExistsError, OSError)
    code, _, err_text = _cli(capsys, "cache", "show", str(tmp_path))
    assert code == 2 and "is a folder" in _one_line(err_text)
    assert "Errno" not in err_text


# -- 4. histogram files are validated --------------------------------------------------------------
def _damaged(work: Path, tmp_path: Path, **changes: Any) -> Path:
    with np.load(work / "h.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value(arrays) if callable(value) else value
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


def _with_row(t: int, fn: Any) -> Any:
    def change(a: dict[str, np.ndarray]) -> np.ndarray:
        counts = a["counts"].copy()
        fn(counts[t])
        return counts

    return change


HISTOGRAM_DAMAGE = [
    ({"names": lambda a: np.array(["conv1"] + list(a["names"][1:]))},
     "tensor 'conv1' appears twice"),
    ({"amax": lambda a: np.where(np.arange(a["amax"].size) == 1, 0.0, a["amax"])},
     "tensor 'conv1': range amax 0 (an all-zero tensor) but counts above bin 0"),
    ({"counts": _with_row(2, lambda row: row.__setitem__(5, -3))},
     "tensor 'relu1': counts must be >= 0"),
    ({"counts": lambda a: a["counts"].astype(np.float64)}, "counts must be an integer array"),
    ({"counts": lambda a: a["counts"][0]}, "counts must be an integer array of 13 rows"),
    ({"amax": lambda a: a["amax"][:3]}, "amax must be a 1-D float array of 13 values"),
    ({"amax": lambda a: np.where(np.arange(a["amax"].size) == 4, np.nan, a["amax"])},
     "tensor 'conv2': amax nan is not a finite number"),
    ({"num_bins": lambda a: a["num_bins"] * 0}, "num_bins 0 is outside"),
    ({"version": np.array(99)}, "version 99 is newer than this kldiv reads"),
    ({"version": np.array(0)}, "unknown histogram file version 0"),
    ({"counts": None}, "no 'counts' array in the archive"),
    ({"names": lambda a: np.arange(a["amax"].size)}, "names must be a 1-D array of str"),
]


@pytest.mark.parametrize(("changes", "message"), HISTOGRAM_DAMAGE)
def test_histogram_file_validated_on_load(
    work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    changes: dict[str, Any], message: str,
) -> None:
    path = _damaged(work, tmp_path, **changes)
    with pytest.raises(HistogramError, match=message.replace("(", r"\(").replace(")", r"\)")):
        HistogramCollector.load(path)
    for argv in (["search", str(path)],
                 ["calibrate", "--from-histograms", str(path), "--out", str(tmp_path / "x")]):
        code, _, err = _cli(capsys, *argv)
        assert code == 2 and message in _one_line(err) and str(path) in err
    assert not (tmp_path / "x").exists()


# -- 5. scales TensorRT cannot use ---------------------------------------------------------------
@pytest.fixture()
def odd_table() -> CalibrationTable:
    t = CalibrationTable()
    t.set_bits("good", 0x3C010A14)
    t.set_bits("nan", 0x7FC00000)
    t.set_bits("minus_inf", 0xFF800000)
    t.set_bits("negative", 0xBC010A14)
    t.set_bits("plus_inf", 0x7F800000)  # TensorRT writes it: usable
    t.set_bits("zero", 0)
    return t


def test_unusable_scales_flagged_and_left_out(
    odd_table: CalibrationTable, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert odd_table.unusable() == {"nan": "nan", "minus_inf": "-inf", "negative": "negative"}
    path = tmp_path / "odd.cache"
    write_cache(odd_table, path)
    code, out, _ = _cli(capsys, "cache", "show", str(path))
    assert code == 0
    assert "nan: 1; -inf: 1; negative: 1" in out and "TensorRT cannot use 3 of these" in out
    flagged = {ln.split()[0] for ln in out.splitlines() if ln.endswith("(unusable)")}
    assert flagged == {"nan", "minus_inf", "negative"}
    for fmt in ("dynamic-range", "ort-json", "ort-text", "nvdla-json"):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            code, out, _ = _cli(capsys, "cache", "convert", str(path), "--to", fmt)
        assert code == 0 and "3 scale(s) TensorRT cannot use" in caplog.text, fmt
        for name in ("nan", "minus_inf", "negative"):
            assert f"{name}:" not in out and f'"{name}"' not in out and f"{name} " not in out, fmt
        assert "NaN" not in out, fmt
    constants: list[str] = []
    doc = json.loads(to_ort_json(odd_table), parse_constant=lambda c: constants.append(c) or 0)
    assert set(doc) == {"good", "plus_inf", "zero"}
    # +inf (which TensorRT itself writes) stays as ONNX Runtime's own writer spells it
    assert sorted(constants) == ["-Infinity", "Infinity"]
    del doc["plus_inf"]
    for entry in doc.values():
        assert entry["lowest"]["data"] <= entry["highest"]["data"]
    with caplog.at_level(logging.WARNING):
        text = to_dynamic_range_text(odd_table)
    assert [ln.split(":")[0] for ln in text.splitlines()] == ["good", "plus_inf", "zero"]
    assert "left out" in caplog.text
    # as a shell sees it: the warning on stderr, the exact bits kept in a TensorRT cache
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "kldiv.cli", "cache", "convert", str(path),
                          "--to", "trt"], capture_output=True, text=True, env=env, timeout=120,
                         check=False)
    assert run.returncode == 0 and "3 scale(s) TensorRT cannot use" in run.stderr
    assert parse_cache(run.stdout) == odd_table


def test_usable_only_is_the_table_without_the_unusable(
    odd_table: CalibrationTable, caplog: pytest.LogCaptureFixture
) -> None:
    bad = ["nan", "minus_inf", "negative"]
    with caplog.at_level(logging.WARNING):
        kept = usable_only(odd_table, "dynamic-range")
    assert "3 scale(s) TensorRT cannot use are left out of the dynamic-range output" in caplog.text
    assert kept == odd_table.without(bad) and list(kept) == ["good", "plus_inf", "zero"]
    assert kept.bits_array().tolist() == [0x3C010A14, 0x7F800000, 0]
    assert kept.header is odd_table.header and kept.provenance["excluded"] == bad
    assert "excluded" not in odd_table.provenance and len(odd_table) == 6
    assert usable_only(kept, "dynamic-range") is kept


def test_compare_worst_is_the_real_worst(odd_table: CalibrationTable) -> None:
    good = CalibrationTable()
    for name in odd_table:
        good.set_bits(name, 0x3C010A14)
    good.set_bits("good", 0x3C810A14)  # a finite ratio of 2
    r = compare(good, odd_table)
    assert r.worst is not None and r.worst.name in ("minus_inf", "negative")
    assert r.worst.agreement == "negative"
    assert r.counts["negative"] == 2 and r.counts["nonfinite"] == 2
    assert "worst: " + r.worst.name + " (negative)" in r.to_text()
    finite = compare(good, good.copy())
    assert finite.worst is None


# -- 6. CLI manners --------------------------------------------------------------------------------
def test_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    table = CalibrationTable.from_bits((f"tensor_{i}", 0x3C010A14 + i) for i in range(20000))
    path = tmp_path / "big.cache"
    write_cache(table, path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        f"{sys.executable} -m kldiv.cli cache show {path} | head -n 3",
        shell=True, capture_output=True, text=True, env=env, timeout=120, check=False,
    )
    assert run.stdout.splitlines()[0] == f"file: {path}"
    assert "Traceback" not in run.stderr and "BrokenPipe" not in run.stderr


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["search", "h.npz", "--bogus"], "usage: kldiv search"),
        (["cache", "show", "x.cache", "--bogus"], "usage: kldiv cache show"),
        (["compare", "a", "b", "--max-rows", "-1"], "usage: kldiv compare"),
        (["calibrate", "--out", "x", "--num-bins", "many"], "usage: kldiv calibrate"),
        (["evaluate", "--bogus"], "usage: kldiv evaluate"),
    ],
)
def test_argument_errors_print_the_subcommand_usage(
    capsys: pytest.CaptureFixture[str], argv: list[str], usage: str
) -> None:
    code, _, err = _cli(capsys, *argv)
    assert code == 2 and err.startswith(usage)


def test_verbosity_on_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    from kldiv.cli import build_parser

    parser = build_parser()
    commands = {"demo": [], "calibrate": ["--out", "x"], "evaluate": [], "search": ["h.npz"],
                "cache": [], "compare": ["a", "b"]}
    for command, rest in commands.items():
        assert parser.parse_args([command, *rest, "-q"]).quiet is True, command
        assert parser.parse_args([command, *rest, "-v"]).verbose == 1, command
        args = parser.parse_args([command, *rest, "-vv", "-q"])
        assert (args.verbose, args.quiet) == (2, True), command
        assert parser.parse_args([command, *rest]).quiet is False, command
    for action in ("show", "convert"):
        rest = ["x"] + (["--to", "csv"] if action == "convert" else [])
        assert parser.parse_args(["cache", action, *rest, "-v"]).verbose == 1
    assert parser.parse_args(["-v", "search", "h.npz"]).verbose == 1  # before the command too
    code, out, _ = _cli(capsys, "calibrate", "--help")
    assert code == 0 and "{tensorrt,gtc2017,modelopt,mxnet}" in out


def test_kldiv_trt_version(capsys: pytest.CaptureFixture[str]) -> None:
    from trt_backend.cli import main as trt_main

    assert trt_main(["--version"]) == 0  # an exit code, as kldiv's main returns
    assert capsys.readouterr().out.startswith("kldiv-trt ")


# -- 7. big caches: the fast reader agrees with the line-by-line one -------------------------------
@pytest.mark.parametrize("ending", ["\n", "\r\n"])
def test_chunked_reader_equals_line_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    rng = np.random.default_rng(3)
    names = [f"t{i}: {'é' if i % 7 == 0 else ''}x" for i in range(3000)]  # ': ' inside, UTF-8
    bits = rng.integers(0, 2**32, size=len(names), dtype=np.uint64).tolist()
    lines = [f"{n}: {b:x}" for n, b in zip(names, bits)]
    text = ending.join(["TRT-8601-EntropyCalibration2", *lines]) + ending
    path = tmp_path / "t.cache"
    path.write_bytes(text.encode())
    monkeypatch.setattr(cachefile, "_CHUNK", 997)  # many chunk edges, mid-line and mid-UTF-8
    fast = read_cache(path)
    slow = cachefile._parse_text(text, None, False)
    assert isinstance(fast._names, PackedNames)
    assert fast == slow and list(fast) == names and [fast.bits(n) for n in names] == bits
    assert fast.provenance.get("line_endings") == ("crlf" if ending == "\r\n" else None)
    assert format_cache(fast) == text.replace("\r\n", "\n")
    no_final = text.rstrip("\r\n")
    assert parse_cache(no_final) == slow  # a last line without a line break
    # a packed table unpacks on change, and the change is seen
    fast.set_bits("new", 1)
    del fast[names[0]]
    assert list(fast)[-1] == "new" and names[0] not in fast and len(fast) == len(names)


def test_bad_big_cache_still_names_the_line(tmp_path: Path) -> None:
    from kldiv.errors import CacheFormatError

    body = [f"t{i}: {i:x}" for i in range(5000)]
    body[4321] = "t4321 3c010a14"
    path = tmp_path / "bad.cache"
    path.write_text("TRT-8601-EntropyCalibration2\n" + "\n".join(body) + "\n")
    with pytest.raises(CacheFormatError, match=":4323: no ': '"):
        read_cache(path)
    body[4321] = "t17: 1"
    path.write_text("TRT-8601-EntropyCalibration2\n" + "\n".join(body) + "\n")
    with pytest.raises(CacheFormatError, match="duplicate tensor name 't17'"):
        read_cache(path)


def test_compare_of_packed_tables_matches_dict_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    names = [f"n{i}" for i in range(5000)]
    a = CalibrationTable.from_bits(zip(names, rng.integers(0x3A000000, 0x3F000000, 5000).tolist()))
    shuffled = list(rng.permutation(names[:4000])) + ["extra"]
    b = CalibrationTable.from_bits((n, a.bits(n) + (1 if i % 3 else 0)) for i, n in
                                   enumerate(shuffled) if n != "extra")
    b.set_bits("extra", 5)
    write_cache(a, tmp_path / "a.cache")
    write_cache(b, tmp_path / "b.cache")
    r = compare(read_cache(tmp_path / "a.cache"), read_cache(tmp_path / "b.cache"))
    assert r.only_in_a == names[4000:] and r.only_in_b == ["extra"] and not r.same_order
    assert len(r.tensors) == 4000
    for t in r.tensors:
        assert t.bits_b == b.bits(t.name) and t.bits_a == a.bits(t.name)
        assert t.ulps == (b.bits(t.name) - a.bits(t.name))
    assert r.n_bit_identical == sum(a.bits(n) == b.bits(n) for n in names[:4000])
    assert math.isfinite(r.median_ratio)
