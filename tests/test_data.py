"""kldiv.data: batch files (vs an independent struct codec), folders, images, rebatching."""

from __future__ import annotations

import itertools
import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kldiv.data import (
    ImageFolder,
    NpyFolder,
    Preprocess,
    SampleInt8BatchFiles,
    as_source,
    read_batch_file,
    rebatch,
    write_batch_file,
)
from kldiv.errors import DataSourceError, OutputExistsError

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402


def _struct_batch(data: np.ndarray, labels: np.ndarray | None) -> bytes:
    """sampleINT8's layout written with struct, independently of kldiv."""
    n, c, h, w = data.shape
    out = struct.pack("<4i", n, c, h, w)
    out += struct.pack(f"<{data.size}f", *data.astype(np.float64).ravel().tolist())
    if labels is not None:
        out += struct.pack(f"<{n}f", *labels.tolist())
    return out


# --------------------------------------------------------------------------- batch files
@settings(max_examples=20)
@given(
    shape=st.tuples(*(st.integers(1, 3) for _ in range(4))),
    seed=st.integers(0, 2**32 - 1),
    with_labels=st.booleans(),
)
def test_batch_file_matches_struct_codec(tmp_path_factory, shape, seed, with_labels):
    rng = np.random.default_rng(seed)
    data = rng.standard_normal(shape).astype(np.float32)
    labels = rng.integers(0, 10, shape[0]).astype(np.float32) if with_labels else None
    folder = tmp_path_factory.mktemp("bf")
    ref = folder / "ref"
    ref.write_bytes(_struct_batch(data, labels))
    got, got_labels = read_batch_file(ref)
    np.testing.assert_array_equal(got, data)
    if with_labels:
        np.testing.assert_array_equal(got_labels, labels)
    else:
        assert got_labels is None
    mine = write_batch_file(folder / "mine", data, labels)
    expected = _struct_batch(data, labels if with_labels else np.zeros(shape[0], np.float32))
    assert mine.read_bytes() == expected


def test_batch_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "batch0"
    write_batch_file(bad, np.ones((2, 1, 2, 2), np.float32))
    bad.write_bytes(bad.read_bytes()[:-5])
    with pytest.raises(DataSourceError, match="batch0.*truncated"):
        read_batch_file(bad)
    (tmp_path / "tiny").write_bytes(b"abc")
    with pytest.raises(DataSourceError, match="tiny.*too short"):
        read_batch_file(tmp_path / "tiny")
    with pytest.raises(OutputExistsError):
        write_batch_file(bad, np.ones((1, 1, 1, 1), np.float32))
    with pytest.raises(DataSourceError, match=r"\(N, C, H, W\)"):
        write_batch_file(tmp_path / "x", np.ones((2, 2), np.float32))


def test_sampleint8_folder_natural_order_and_labels(tmp_path):
    for i in (0, 2, 10, 1):
        write_batch_file(tmp_path / f"batch{i}", np.full((1, 1, 2, 2), i, np.float32), [i])
    src = SampleInt8BatchFiles(tmp_path)
    assert [float(b[0, 0, 0, 0]) for b in src] == [0, 1, 2, 10]
    assert [float(lab[0]) for lab in src.labels] == [0, 1, 2, 10]
    # as_source recognises batch files by their header
    auto = as_source(tmp_path)
    assert isinstance(auto, SampleInt8BatchFiles)


# --------------------------------------------------------------------------- npy folders
def test_npy_folder(tmp_path):
    np.save(tmp_path / "b10.npy", np.full((2, 3), 10.0))
    np.save(tmp_path / "b2.npy", np.full((2, 3), 2.0))
    np.savez(tmp_path / "b3.npz", x=np.full((1, 3), 3.0), y=np.zeros(1))
    batches = list(NpyFolder(tmp_path))
    assert float(batches[0][0, 0]) == 2.0  # natural order: b2, b3, b10
    assert set(batches[1]) == {"x", "y"}
    assert float(batches[2][0, 0]) == 10.0
    named = list(NpyFolder(tmp_path / "b2.npy", input_name="inp"))
    assert list(named[0]) == ["inp"]


def test_npy_folder_errors(tmp_path):
    with pytest.raises(DataSourceError, match="holds no .npy"):
        NpyFolder(tmp_path)
    with pytest.raises(DataSourceError, match="no such file"):
        NpyFolder(tmp_path / "missing")
    (tmp_path / "broken.npy").write_bytes(b"not numpy")
    with pytest.raises(DataSourceError, match="broken.npy"):
        list(NpyFolder(tmp_path))
    obj = tmp_path / "obj"
    obj.mkdir()
    np.save(obj / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataSourceError, match="o.npy"):
        list(NpyFolder(obj))


def test_as_source_kinds(tmp_path):
    arr = np.ones((2, 3), np.float32)
    assert next(iter(as_source(arr))) is arr
    assert next(iter(as_source({"x": arr})))["x"] is arr
    assert next(iter(as_source(arr, input_name="x")))["x"] is arr
    gen = ({"x": arr} for _ in range(2))
    assert as_source(gen) is gen
    with pytest.raises(DataSourceError, match="not a data source"):
        as_source(3)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataSourceError, match="neither"):
        as_source(tmp_path)


# --------------------------------------------------------------------------- rebatching
@settings(max_examples=30)
@given(
    sizes=st.lists(st.integers(1, 7), min_size=1, max_size=6),
    batch_size=st.integers(1, 9),
    bare=st.booleans(),
)
def test_rebatch_preserves_samples(sizes, batch_size, bare):
    start = np.cumsum([0, *sizes])
    chunks = [np.arange(a, b, dtype=np.float32)[:, None] for a, b in itertools.pairwise(start)]
    source = chunks if bare else [{"x": c, "y": -c} for c in chunks]
    out = list(rebatch(source, batch_size))
    xs = [o if bare else o["x"] for o in out]
    np.testing.assert_array_equal(np.concatenate(xs)[:, 0], np.arange(start[-1]))
    assert all(len(x) == batch_size for x in xs[:-1])
    assert 1 <= len(xs[-1]) <= batch_size
    if not bare:
        for o in out:
            np.testing.assert_array_equal(o["y"], -o["x"])


def test_rebatch_errors():
    with pytest.raises(DataSourceError, match="same batch size.*--batch-axis NAME=none"):
        list(rebatch([{"x": np.ones((2, 1)), "y": np.ones((3, 1))}], 2))
    with pytest.raises(DataSourceError, match="mixes"):
        list(rebatch([np.ones((2, 1)), {"x": np.ones((2, 1))}], 2))


# --------------------------------------------------------------------------- images
def _image(path, h, w, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(pixels, mode=mode).save(path)
    return pixels


def test_preprocess_matches_numpy(tmp_path):
    pixels = _image(tmp_path / "a.png", 6, 8)
    pre = Preprocess(center_crop=(4, 2), color="BGR", scale=1 / 255,
                     mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0), layout="NCHW")
    got = pre.load(tmp_path / "a.png")
    crop = pixels[1:5, 3:5, ::-1].astype(np.float32) * np.float32(1 / 255)
    ref = ((crop - np.float32([0.1, 0.2, 0.3])) / np.float32([0.5, 0.25, 2.0])).transpose(2, 0, 1)
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    tf = Preprocess(mean=127, std=128, layout="NHWC").load(tmp_path / "a.png")
    np.testing.assert_allclose(tf, (pixels.astype(np.float32) - 127) / 128, rtol=1e-6)


def test_preprocess_resize_shorter_side_and_gray(tmp_path):
    _image(tmp_path / "wide.png", 20, 40)
    got = Preprocess(resize=10).load(tmp_path / "wide.png")
    assert got.shape == (3, 10, 20)
    got = Preprocess(resize=(8, 9), color="L", layout="NHWC").load(tmp_path / "wide.png")
    assert got.shape == (8, 9, 1)
    with pytest.raises(DataSourceError, match="larger than"):
        Preprocess(center_crop=50).load(tmp_path / "wide.png")


def test_preprocess_config_files(tmp_path):
    cfg = {"resize": [8, 8], "scale": 0.5, "mean": [1, 2, 3], "layout": "nhwc"}
    (tmp_path / "p.json").write_text(json.dumps(cfg))
    pre = Preprocess.from_file(tmp_path / "p.json")
    assert pre.resize == (8, 8) and pre.layout == "NHWC" and pre.mean == (1.0, 2.0, 3.0)
    assert Preprocess.from_dict(pre.to_dict()) == pre
    (tmp_path / "p.toml").write_text('center_crop = 4\ncolor = "BGR"\n')
    assert Preprocess.from_file(tmp_path / "p.toml").center_crop == (4, 4)
    (tmp_path / "bad.json").write_text('{"rezise": 3}')
    with pytest.raises(DataSourceError, match="bad.json.*rezise"):
        Preprocess.from_file(tmp_path / "bad.json")
    with pytest.raises(DataSourceError, match="color"):
        Preprocess(color="CMYK")
    with pytest.raises(DataSourceError, match="std"):
        Preprocess(std=(1, 0, 1))


def test_image_folder_batches_and_errors(tmp_path):
    for i in range(5):
        _image(tmp_path / f"img{i}.png", 10 + i, 12, seed=i)
    src = ImageFolder(tmp_path, Preprocess(resize=(8, 8)), batch_size=2)
    shapes = [b.shape for b in src]
    assert shapes == [(2, 3, 8, 8), (2, 3, 8, 8), (1, 3, 8, 8)] and len(src) == 3
    with pytest.raises(DataSourceError, match="different sizes"):
        list(ImageFolder(tmp_path, Preprocess(), batch_size=5))
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(DataSourceError, match="corrupt.jpg.*cannot decode"):
        list(ImageFolder(tmp_path, Preprocess(resize=(8, 8)), batch_size=8))
    with pytest.raises(DataSourceError, match="declare their preprocessing"):
        as_source(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataSourceError, match="empty.*holds no images"):
        ImageFolder(empty, Preprocess())
