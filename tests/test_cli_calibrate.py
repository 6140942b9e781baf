"""``kldiv calibrate`` and ``kldiv demo``: outputs equal the library's, errors are one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from kldiv.cachefile import read_cache
from kldiv.cli import main
from kldiv.data import Preprocess, write_batch_file
from kldiv.examples import lenet_calibration_data, lenet_model_path
from kldiv.pipeline import calibrate

MODEL = str(lenet_model_path())


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("calib")
    batches = lenet_calibration_data()[:6]
    (root / "npy").mkdir()
    (root / "batches").mkdir()
    for i, b in enumerate(batches):
        np.save(root / "npy" / f"b{i}.npy", b["input"])
        write_batch_file(root / "batches" / f"batch{i}", b["input"])
    return root, batches


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_demo_prints_table_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = _run(capsys, "demo")
    assert code == 0
    expected = calibrate(MODEL, lenet_calibration_data()).table
    for name in expected:
        assert name in out and expected.hex(name) in out
    assert list(tmp_path.iterdir()) == []
    code, out, _ = _run(capsys, "demo", "--out", "lenet.cache", "--trt-version", "8.6.1", "-q")
    assert code == 0
    written = read_cache(tmp_path / "lenet.cache")
    assert written == expected and written.header.text == "TRT-8601-EntropyCalibration2"


def test_calibrate_npy_and_batch_files_agree_with_library(tmp_path, capsys, data_dirs):
    root, batches = data_dirs
    out_a, out_b = tmp_path / "a.cache", tmp_path / "b.cache"
    code, out, _ = _run(capsys, "calibrate", MODEL, "--data", str(root / "npy"), "--out",
                        str(out_a), "--save-histograms", str(tmp_path / "h.npz"),
                        "--provenance", str(tmp_path / "p.json"))
    assert code == 0 and "conv1" in out and "wrote" in out
    assert read_cache(out_a) == calibrate(MODEL, batches).table
    code, *_ = _run(capsys, "calibrate", MODEL, "--data", str(root / "batches"), "--out",
                    str(out_b), "-q")
    assert code == 0 and out_a.read_text() == out_b.read_text()
    prov = json.loads((tmp_path / "p.json").read_text())
    assert prov["batches"] == 6 and prov["preset"] == "tensorrt"
    # recompute with another preset from the histograms only
    code, *_ = _run(capsys, "calibrate", "--from-histograms", str(tmp_path / "h.npz"),
                    "--preset", "modelopt", "--out", str(tmp_path / "m.cache"), "-q")
    assert code == 0
    assert read_cache(tmp_path / "m.cache") == calibrate(MODEL, batches, preset="modelopt").table
    # with global ranges, re-cutting the batches changes neither the histograms nor the cache
    for size, name in (("3", "r3.cache"), ("5", "r5.cache")):
        code, *_ = _run(capsys, "calibrate", MODEL, "--data", str(root / "npy"), "--batch-size",
                        size, "--range-policy", "global", "--out", str(tmp_path / name), "-q")
        assert code == 0
    assert (tmp_path / "r3.cache").read_text() == (tmp_path / "r5.cache").read_text()


def test_never_overwrites_without_force(tmp_path, capsys, data_dirs):
    root, _ = data_dirs
    target = tmp_path / "x.cache"
    target.write_text("keep me")
    code, _, err = _run(capsys, "calibrate", MODEL, "--data", str(root / "npy"), "--out",
                        str(target))
    assert code == 2 and "already exists" in err and "--force" in err
    assert target.read_text() == "keep me"
    code, *_ = _run(capsys, "calibrate", MODEL, "--data", str(root / "npy"), "--out",
                    str(target), "--force", "-q")
    assert code == 0 and target.read_text().startswith("TRT-")


def test_images_with_declared_preprocessing(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (16, 12), dtype=np.uint8), mode="L").save(
            tmp_path / "img" / f"{i}.png"
        )
    code, *_ = _run(capsys, "calibrate", MODEL, "--data", str(tmp_path / "img"), "--out",
                    str(tmp_path / "i.cache"), "--color", "L", "--resize", "8,8",
                    "--scale", str(1 / 255), "--batch-size", "2", "-q")
    assert code == 0
    pre = Preprocess(resize=(8, 8), color="L", scale=1 / 255)
    from kldiv.data import ImageFolder

    expected = calibrate(MODEL, ImageFolder(tmp_path / "img", pre, batch_size=2)).table
    assert read_cache(tmp_path / "i.cache") == expected


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_model", "missing.onnx: model file not found"),
        ("bad_model", "bad.onnx"),
        ("empty_folder", "empty: the folder holds no files"),
        ("bad_image", "broken.png: cannot decode"),
        ("wrong_shape", "batch 0: input 'input' has shape (2, 1, 9, 9)"),
        ("nan", "tensor 'input', batch 1"),
        ("no_data", "give MODEL and --data"),
    ],
)
def test_bad_input_one_line_and_nothing_written(tmp_path, capsys, case, message):
    model, data = MODEL, tmp_path / "data"
    data.mkdir()
    extra = []
    if case == "missing_model":
        model = str(tmp_path / "missing.onnx")
        np.save(data / "a.npy", np.ones((2, 1, 8, 8), np.float32))
    elif case == "bad_model":
        model = str(tmp_path / "bad.onnx")
        (tmp_path / "bad.onnx").write_bytes(b"not onnx at all")
        np.save(data / "a.npy", np.ones((2, 1, 8, 8), np.float32))
    elif case == "empty_folder":
        data = tmp_path / "empty"
        data.mkdir()
    elif case == "bad_image":
        (data / "broken.png").write_bytes(b"\x89PNG broken")
        extra = ["--resize", "8,8", "--color", "L"]
    elif case == "wrong_shape":
        np.save(data / "a.npy", np.ones((2, 1, 9, 9), np.float32))
    elif case == "nan":
        np.save(data / "a.npy", np.ones((2, 1, 8, 8), np.float32))
        np.save(data / "b.npy", np.full((2, 1, 8, 8), np.nan, np.float32))
    argv = ["calibrate", model, "--data", str(data)] if case != "no_data" else ["calibrate"]
    out = tmp_path / "out.cache"
    hist = tmp_path / "h.npz"
    code, _, err = _run(capsys, *argv, "--out", str(out), "--save-histograms", str(hist), *extra)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists() and not hist.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_overlap_flag_gives_the_same_cache(tmp_path):
    """``--overlap`` (the next batch's model run beside this one's fills) writes the same cache
    as ``--no-overlap``, byte for byte.
    """
    from pathlib import Path

    from kldiv.cli import main
    from kldiv.examples import lenet_model_path

    data = Path(lenet_model_path()).parent / "digits_calibration.npz"
    outs = []
    for flag in ("--overlap", "--no-overlap"):
        out = tmp_path / f"{flag}.cache"
        assert main(["calibrate", str(lenet_model_path()), "--data", str(data), "--out",
                     str(out), "--max-batches", "4", "-q", flag]) == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
