"""kldiv.data: letterbox / pad_to, 16-bit PNGs, mixed folders, data-loader scripts, batch axes,
sample counting.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from kldiv.data import (
    ImageFolder,
    NpyFolder,
    Preprocess,
    ScriptSource,
    as_source,
    count_samples,
    infer_batch_axes,
    parse_batch_axes,
    rebatch,
    take_batches,
)
from kldiv.errors import DataSourceError

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402


# --------------------------------------------------------------------------- letterbox / pad
def _rgb(path, h, w, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


@pytest.mark.parametrize("position", ["center", "top-left"])
def test_letterbox_resizes_keeping_ratio_and_pads(tmp_path, position):
    pixels = _rgb(tmp_path / "a.png", 10, 20)
    pre = Preprocess(letterbox=(8, 8), pad_value=(114, 0, 7), pad_position=position,
                     layout="NHWC")
    got = pre.load(tmp_path / "a.png")
    assert got.shape == (8, 8, 3)
    # fits inside 8x8: scale min(8/10, 8/20) = 0.4 -> 4x8, resized by Pillow (bilinear)
    inner = np.asarray(Image.fromarray(pixels).resize((8, 4), Image.Resampling.BILINEAR),
                       np.float32)
    top = 2 if position == "center" else 0
    np.testing.assert_array_equal(got[top : top + 4], inner)
    pad_rows = [r for r in range(8) if not top <= r < top + 4]
    assert len(pad_rows) == 4
    np.testing.assert_array_equal(got[pad_rows], np.broadcast_to([114, 0, 7], (4, 8, 3)))


def test_pad_to_and_normalization_order(tmp_path):
    pixels = _rgb(tmp_path / "a.png", 3, 5)
    pre = Preprocess(pad_to=(4, 7), pad_value=127.5, pad_position="top-left",
                     scale=1 / 255, mean=0.5, std=0.5)
    got = pre.load(tmp_path / "a.png")  # NCHW
    assert got.shape == (3, 4, 7)
    ref = ((pixels.astype(np.float32) * np.float32(1 / 255) - 0.5) / 0.5).transpose(2, 0, 1)
    np.testing.assert_allclose(got[:, :3, :5], ref, rtol=1e-6)
    # the pad value is in pixel units: 127.5 is exactly 0 after (x/255 - 0.5)/0.5
    np.testing.assert_allclose(got[:, 3, :], 0, atol=1e-6)
    np.testing.assert_allclose(got[:, :, 5:], 0, atol=1e-6)
    with pytest.raises(DataSourceError, match="larger than pad_to 2x7"):
        Preprocess(pad_to=(2, 7)).load(tmp_path / "a.png")
    with pytest.raises(DataSourceError, match="resize or letterbox, not both"):
        Preprocess(resize=8, letterbox=8)
    with pytest.raises(DataSourceError, match="pad_value has 3 values"):
        Preprocess(color="L", pad_value=(1, 2, 3))
    with pytest.raises(DataSourceError, match="pad_position"):
        Preprocess(pad_position="bottom")
    assert Preprocess.from_dict(pre.to_dict()) == pre


# --------------------------------------------------------------------------- 16-bit PNG
def _png16(path, pixels, filters=(0,)):
    """A 16-bit PNG written here with struct/zlib, each row with a chosen PNG filter."""
    h, w, c = pixels.shape
    color = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    raw = pixels.astype(">u2").reshape(h, w * c).view(np.uint8).reshape(h, -1).astype(np.int64)
    bpp = 2 * c
    out = bytearray()
    for y in range(h):
        f = filters[y % len(filters)]
        line = raw[y]
        prev = raw[y - 1] if y else np.zeros_like(line)
        left = np.concatenate([np.zeros(bpp, np.int64), line[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int64), prev[:-bpp]])
        if f == 0:
            enc = line
        elif f == 1:
            enc = line - left
        elif f == 2:
            enc = line - prev
        elif f == 3:
            enc = line - (left + prev) // 2
        else:
            p = left + prev - upleft
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
            enc = line - pred
        out.append(f)
        out.extend((enc % 256).astype(np.uint8).tobytes())

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(bytes(out))) + chunk(b"IEND", b""))


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_16bit_png_full_precision(tmp_path, channels):
    rng = np.random.default_rng(channels)
    pixels = rng.integers(0, 65536, (7, 6, channels)).astype(np.uint16)
    _png16(tmp_path / "deep.png", pixels, filters=(0, 1, 2, 3, 4))
    if channels == 3:  # Pillow itself keeps only the high byte of 16-bit RGB
        assert np.asarray(Image.open(tmp_path / "deep.png")).dtype == np.uint8
    got = Preprocess(layout="NHWC", color="RGB").load(tmp_path / "deep.png")
    color = pixels[:, :, :3] if channels >= 3 else np.repeat(pixels, 3, axis=2)
    ref = color.astype(np.float32) * np.float32(255 / 65535)
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    eight_bit = (color >> 8).astype(np.float32)  # what keeping the high byte would give
    assert np.abs(got - eight_bit).max() > 0.5


def test_16bit_gray_png_from_pillow(tmp_path):
    values = (np.arange(48).reshape(6, 8) * 1301).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "g.png")
    got = Preprocess(color="L", layout="NHWC").load(tmp_path / "g.png")
    np.testing.assert_allclose(got[:, :, 0], values * np.float32(255 / 65535), rtol=1e-6)
    assert got.max() > 255 * 0.9 and len(np.unique(got)) == 48  # not clipped to 8 bits
    resized = Preprocess(resize=(3, 4), color="L").load(tmp_path / "g.png")
    assert resized.shape == (1, 3, 4) and resized.max() <= 255


# --------------------------------------------------------------------------- mixed folders
def test_folder_mixing_kinds_is_an_error(tmp_path):
    _rgb(tmp_path / "a.png", 4, 4)
    np.save(tmp_path / "b.npy", np.zeros((1, 3), np.float32))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataSourceError) as err:
        as_source(tmp_path, preprocess=Preprocess())
    msg = str(err.value)
    assert "mixes kinds of data" in msg and "1 images" in msg and "1 .npy/.npz files" in msg
    assert "notes.txt" in msg and "move the others out" in msg


# --------------------------------------------------------------------------- scripts
def test_data_loader_script(tmp_path):
    script = tmp_path / "loader.py"
    script.write_text(
        "import numpy as np\n"
        "def load_data():\n"
        "    for i in range(3):\n"
        "        yield {'x': np.full((2, 4), i, np.float32)}\n"
        "def other():\n"
        "    return [{'x': np.ones((1, 4))}]\n"
        "def bad_items():\n"
        "    return [np.ones((1, 4))]\n"
        "def boom():\n"
        "    raise RuntimeError('no disk')\n"
        "def not_iterable():\n"
        "    return 3\n"
    )
    src = ScriptSource(script)
    first = [b["x"][0, 0] for b in src]
    assert first == [0, 1, 2] and [b["x"][0, 0] for b in src] == first  # re-iterable
    assert [b["x"].shape for b in as_source(f"{script}:other")] == [(1, 4)]
    assert [b["x"].shape for b in as_source(str(script), batch_size=3)] == [(3, 4), (3, 4)]
    with pytest.raises(DataSourceError, match="batch 0 is a ndarray, not a dict"):
        list(ScriptSource(f"{script}:bad_items"))
    with pytest.raises(DataSourceError, match=r"boom\(\) raised RuntimeError: no disk"):
        list(ScriptSource(f"{script}:boom"))
    with pytest.raises(DataSourceError, match="returned int, not an iterable"):
        list(ScriptSource(f"{script}:not_iterable"))
    with pytest.raises(DataSourceError, match="has no function 'nope'.*defines"):
        ScriptSource(f"{script}:nope")
    with pytest.raises(DataSourceError, match="not found"):
        ScriptSource(tmp_path / "missing.py")
    broken = tmp_path / "broken.py"
    broken.write_text("import numpy as np\nraise ImportError('needs cv2')\n")
    with pytest.raises(DataSourceError, match="broken.py failed to import.*needs cv2"):
        ScriptSource(broken)


# --------------------------------------------------------------------------- batch axes
def test_infer_batch_axes_rules():
    # one dynamic input: its first dynamic axis
    assert infer_batch_axes({"x": ("N", 3, 224, 224)}) == {"x": 0}
    assert infer_batch_axes({"x": (1, 3, "h", "w")}) == {"x": 0}  # not its dynamic height
    assert infer_batch_axes({"x": (-1, 3, "?", "?"), "im": (1, 2)}) == {"x": 0, "im": None}
    # a symbol shared by several inputs is the batch; static state and scalars are not batched
    vad = {"x": ("B", "T"), "state": (2, "B", 128), "sr": (), "h": (1, 1, 128)}
    assert infer_batch_axes(vad) == {"x": 0, "state": 1, "sr": None, "h": None}
    # every input fixed: a fixed-batch model, axis 0
    assert infer_batch_axes({"a": (4, 3), "b": (4, 1)}) == {"a": 0, "b": 0}
    # declarations win; negative axes count from the end
    assert infer_batch_axes(vad, ["h=1", "x=none"]) == {"x": None, "state": 1, "sr": None,
                                                        "h": 1}
    assert infer_batch_axes(vad, {"state": -2})["state"] == 1
    with pytest.raises(DataSourceError, match=r"state=5: input 'state' has rank 3.*0\.\.2"):
        infer_batch_axes(vad, ["state=5"])
    with pytest.raises(DataSourceError, match=r"names \['hidden'\], not inputs"):
        infer_batch_axes(vad, ["hidden=0"])
    with pytest.raises(DataSourceError, match="expected NAME=AXIS"):
        parse_batch_axes(["state:1"])
    with pytest.raises(DataSourceError, match="give an integer axis"):
        parse_batch_axes(["state=one"])


def test_rebatch_along_batch_axes_leaves_unbatched_inputs_alone():
    rng = np.random.default_rng(0)
    batches = []
    for n in (3, 4):
        batches.append({
            "x": rng.normal(size=(n, 5)),
            "state": rng.normal(size=(2, n, 6)),
            "h": rng.normal(size=(1, 1, 8)),
            "sr": np.array(16000, np.int64),
        })
    axes = {"x": 0, "state": 1, "h": None, "sr": None}
    out = list(rebatch(batches, 2, batch_axes=axes))
    assert [o["x"].shape[0] for o in out] == [2, 2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([o["x"] for o in out]),
                                  np.concatenate([b["x"] for b in batches]))
    np.testing.assert_array_equal(np.concatenate([o["state"] for o in out], axis=1),
                                  np.concatenate([b["state"] for b in batches], axis=1))
    # each output batch takes the unbatched inputs from the first batch it draws from
    firsts = [0, 0, 1, 1]  # samples 0-1, 2|3, 4-5, 6 -> batches 0, 0, 1, 1
    for o, src in zip(out, firsts):
        np.testing.assert_array_equal(o["h"], batches[src]["h"])
        assert o["sr"] == 16000
    with pytest.raises(DataSourceError, match="'sr'.*sr=none if it is not batched"):
        list(rebatch(batches, 2))  # axis 0 everywhere: the scalar has none
    no_sr = [{k: v for k, v in b.items() if k != "sr"} for b in batches]
    with pytest.raises(DataSourceError, match="--batch-axis NAME=none"):
        list(rebatch(no_sr, 2))  # axis 0 everywhere: x has 3 samples, state 2, h 1


def test_count_samples_and_take_batches(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((5, 2), np.float32))
    np.savez(tmp_path / "b.npz", x=np.zeros((3, 2), np.float32), h=np.zeros((1, 1, 4)))
    src = NpyFolder(tmp_path)
    assert count_samples(src, {"x": 0, "h": None}) == 8
    images = tmp_path / "img"
    images.mkdir()
    for i in range(5):
        _rgb(images / f"{i}.png", 4, 4, seed=i)
    folder = ImageFolder(images, Preprocess(), batch_size=2)
    assert count_samples(folder) == 5
    assert count_samples([{"x": np.zeros((4, 1))}, np.zeros((2, 1))]) == 6
    assert count_samples(iter([np.zeros((2, 1))])) is None
    taken = take_batches(folder, 2)
    assert len(taken) == 2 and [b.shape[0] for b in taken] == [2, 2]
    with pytest.raises(DataSourceError, match="max_batches must be >= 1"):
        take_batches(folder, 0)
