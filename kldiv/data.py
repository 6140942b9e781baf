"""Calibration data sources.

A *data source* is any iterable whose items are batches: ``{input_name: numpy.ndarray}``
dicts (one array per model input), or, for a model with a single input, a bare array. Nothing
here loads a whole data set: every source reads one batch at a time, so calibration runs in
constant memory.

Sources offered here
--------------------
- :class:`NpyFolder` — a folder (or a single file) of ``.npy`` / ``.npz`` files, one batch per
  file; ``.npz`` keys are input names, a ``.npy`` array feeds the model's only input.
- :class:`ImageFolder` — image files decoded with Pillow and prepared by a declared
  :class:`Preprocess` (resize, center crop, RGB/BGR/L, scale, mean/std, NCHW/NHWC).
- :class:`SampleInt8BatchFiles` — TensorRT sampleINT8 batch files (:func:`read_batch_file`,
  :func:`write_batch_file`).
- :class:`ScriptSource` — a Python file's function returning any iterable of feed dicts
  (Polygraphy's ``--data-loader-script file.py[:func]`` convention, default ``load_data``).
- :func:`as_source` turns a path, an array, a dict or an iterable into a source;
  :func:`rebatch` re-cuts any source into batches of a given size; :func:`take_batches`
  stops after a number of batches; :func:`count_samples` counts samples without running.

Batch axis per input
--------------------
Not every input is batched: recurrent state (``h``, ``c`` of shape ``[1, 1, 128]``), a state
whose batch is its second axis (``[2, B, 128]``), a scalar sample rate. A *batch-axes*
mapping ``{input_name: axis or None}`` says where each input's batch axis is (``None``: not
batched, fed as given). :func:`infer_batch_axes` derives it from the model's input shapes;
:func:`parse_batch_axes` reads ``NAME=AXIS`` declarations. Re-cutting batches
(:func:`rebatch`) touches batched inputs only.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import re
import struct
import sys
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from ._io import atomic_write_bytes
from .defaults import DEFAULT_BATCH_SIZE
from .errors import DataSourceError

__all__ = [
    "IMAGE_EXTENSIONS",
    "Batch",
    "BatchAxes",
    "DataSource",
    "ImageFolder",
    "NpyFolder",
    "Preprocess",
    "SampleInt8BatchFiles",
    "ScriptSource",
    "as_source",
    "count_samples",
    "infer_batch_axes",
    "parse_batch_axes",
    "read_batch_file",
    "rebatch",
    "take_batches",
    "write_batch_file",
]

log = logging.getLogger(__name__)

#: One batch: ``{input_name: array}``, or a bare array for a model with one input.
Batch = Union[Mapping[str, np.ndarray], np.ndarray]  # noqa: UP007 (runtime alias, py3.10)
#: Any iterable of batches.
DataSource = Iterable[Batch]
#: ``{input_name: batch axis}``; ``None``: the input is not batched (fed as given).
BatchAxes = Mapping[str, Union[int, None]]  # noqa: UP007 (runtime alias, py3.10)

#: File name endings :class:`ImageFolder` reads (lower case).
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
)

_NATURAL = re.compile(r"(\d+)")


def _natural_key(path: Path) -> list[Any]:
    """Sort key putting ``batch2`` before ``batch10``."""
    return [int(t) if t.isdigit() else t for t in _NATURAL.split(path.name)]


def _list_files(path: Path, suffixes: Sequence[str] | None, *, what: str, hint: str) -> list[Path]:
    """Files under ``path`` (recursively, natural order) with one of ``suffixes``."""
    if not path.exists():
        raise DataSourceError(f"{path}: no such file or folder; {hint}")
    if path.is_file():
        return [path]
    files = sorted(
        (
            p
            for p in path.rglob("*")
            if p.is_file()
            and not p.name.startswith(".")
            and (suffixes is None or p.suffix.lower() in suffixes)
        ),
        key=lambda p: ([*p.relative_to(path).parent.parts], _natural_key(p)),
    )
    if not files:
        raise DataSourceError(f"{path}: the folder holds no {what}; {hint}")
    return files


# ---------------------------------------------------------------------------------------
# .npy / .npz
# ---------------------------------------------------------------------------------------
class NpyFolder:
    """Batches from ``.npy`` / ``.npz`` files, one batch per file, in natural file order.

    Parameters
    ----------
    path : path-like
        A folder (searched recursively) or a single ``.npy`` / ``.npz`` file.
    input_name : str, optional
        The input a ``.npy`` array feeds. When omitted, a ``.npy`` file yields a bare array,
        which :func:`kldiv.calibrate` gives to the model's only input.

    Notes
    -----
    Files are opened with ``allow_pickle=False``. An ``.npz`` file's keys are input names.
    A file that does not load raises :class:`~kldiv.errors.DataSourceError` naming the file.
    """

    def __init__(self, path: str | os.PathLike[str], *, input_name: str | None = None) -> None:
        self.path = Path(path)
        self.input_name = input_name
        self.files = _list_files(
            self.path,
            (".npy", ".npz"),
            what=".npy or .npz files",
            hint="save each batch with numpy.save / numpy.savez, or point --data elsewhere",
        )

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return f"NpyFolder({str(self.path)!r}, {len(self.files)} files)"

    def __iter__(self) -> Iterator[Batch]:
        for f in self.files:
            try:
                if f.suffix.lower() == ".npz":
                    with np.load(f, allow_pickle=False) as z:
                        batch: Batch = {k: z[k] for k in z.files}
                    if not batch:
                        raise DataSourceError(f"{f}: the .npz file holds no arrays")
                else:
                    arr = np.load(f, allow_pickle=False)
                    batch = arr if self.input_name is None else {self.input_name: arr}
            except DataSourceError:
                raise
            except Exception as exc:
                raise DataSourceError(
                    f"{f}: cannot read it as a NumPy file ({exc.__class__.__name__}: {exc}); "
                    "remove or re-save it with numpy.save(..., allow_pickle=False)"
                ) from exc
            yield batch


# ---------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------
def _pair(value: int | Sequence[int] | None, what: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, (int, np.integer)):
        v = int(value)
        return (v, v)
    vals = tuple(int(v) for v in value)
    if len(vals) != 2:
        raise DataSourceError(f"{what} must be one int or (height, width), got {value!r}")
    return (vals[0], vals[1])


def _floats(value: float | Sequence[float] | None, what: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, (int, float, np.floating, np.integer)):
        return (float(value),)
    vals = tuple(float(v) for v in value)
    if len(vals) not in (1, 3):
        raise DataSourceError(f"{what} must hold 1 or 3 numbers (per channel), got {value!r}")
    return vals


@dataclass(frozen=True)
class Preprocess:
    """The image preprocessing a model expects, declared explicitly.

    Steps, in this order: decode → convert to ``color`` → ``resize`` or ``letterbox`` →
    ``center_crop`` → float32 → pad (``letterbox`` / ``pad_to``, with ``pad_value``) →
    ``x * scale`` → ``(x - mean) / std`` (per channel) → ``layout``.

    Parameters
    ----------
    resize : int or (height, width), optional
        An int resizes the shorter side to it, keeping the aspect ratio (torchvision's rule);
        a pair resizes to exactly that size. Bilinear. ``None``: no resize.
    center_crop : int or (height, width), optional
        Crop the center to this size (after resizing). ``None``: no crop.
    color : {'RGB', 'BGR', 'L'}
        Channel order; ``'L'`` is one gray channel.
    scale : float
        Multiplier applied to the 0–255 pixel values first (``1/255`` for [0, 1] input).
    mean, std : float or sequence of 3 floats
        Subtracted, then divided, per channel, after ``scale`` (same units as ``x * scale``).
    layout : {'NCHW', 'NHWC'}
        Layout of the batch.
    letterbox : int or (height, width), optional
        Resize to fit inside this size keeping the aspect ratio (bilinear), then pad to
        exactly this size with ``pad_value`` (YOLO-style detectors, OCR recognizers). Not
        together with ``resize``.
    pad_to : int or (height, width), optional
        Pad (never resize) to this size with ``pad_value``, after any resize and crop; an
        image larger than it is an error.
    pad_value : float or sequence of 3 floats
        The padding, in pixel units (0–255, before ``scale``/``mean``/``std``; per channel in
        ``color`` order). Default 0 (black). A model normalized as ``(x/255 - 0.5)/0.5``
        padded with zeros after normalization needs ``pad_value=127.5``.
    pad_position : {'center', 'top-left'}
        Where the image sits in the padded canvas: centered (YOLO letterbox) or in the top
        left corner, padding at the bottom and right (PaddleOCR).

    Notes
    -----
    16-bit images (PNG) are read at full precision and mapped to the 0–255 scale as
    ``x * 255 / 65535`` (float, no rounding), so the same ``scale``/``mean``/``std`` hold for
    8- and 16-bit files. Resizing 16-bit images is bilinear on float pixels.

    Examples
    --------
    ImageNet in torchvision style, and TF-style ``(x - 127) / 128``:

    >>> imagenet = Preprocess(resize=256, center_crop=224, scale=1 / 255,
    ...                       mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    >>> tf_style = Preprocess(resize=(224, 224), mean=127.0, std=128.0)
    >>> yolo = Preprocess(letterbox=640, pad_value=114, scale=1 / 255)
    """

    resize: int | tuple[int, int] | None = None
    center_crop: int | tuple[int, int] | None = None
    color: str = "RGB"
    scale: float = 1.0
    mean: float | tuple[float, ...] = 0.0
    std: float | tuple[float, ...] = 1.0
    layout: str = "NCHW"
    letterbox: int | tuple[int, int] | None = None
    pad_to: int | tuple[int, int] | None = None
    pad_value: float | tuple[float, ...] = 0.0
    pad_position: str = "center"

    def __post_init__(self) -> None:
        color = str(self.color).upper()
        if color not in ("RGB", "BGR", "L"):
            raise DataSourceError(f"color must be RGB, BGR or L, got {self.color!r}")
        layout = str(self.layout).upper()
        if layout not in ("NCHW", "NHWC"):
            raise DataSourceError(f"layout must be NCHW or NHWC, got {self.layout!r}")
        position = str(self.pad_position).lower().replace("_", "-")
        if position not in ("center", "top-left"):
            raise DataSourceError(
                f"pad_position must be 'center' or 'top-left', got {self.pad_position!r}"
            )
        std = _floats(self.std, "std")
        if std is not None and any(s == 0 for s in std):
            raise DataSourceError(f"std must not contain 0, got {self.std!r}")
        if self.letterbox is not None and self.resize is not None:
            raise DataSourceError(
                "give resize or letterbox, not both: letterbox resizes (keeping the aspect "
                "ratio) and pads to its size"
            )
        object.__setattr__(self, "color", color)
        object.__setattr__(self, "layout", layout)
        object.__setattr__(self, "pad_position", position)
        object.__setattr__(self, "resize", self.resize if isinstance(self.resize, (int, type(None)))
                           else _pair(self.resize, "resize"))
        for name in ("center_crop", "letterbox", "pad_to"):
            pair = _pair(getattr(self, name), name)
            if pair is not None and min(pair) < 1:
                raise DataSourceError(f"{name} must be positive, got {getattr(self, name)!r}")
            object.__setattr__(self, name, pair)
        object.__setattr__(self, "mean", _floats(self.mean, "mean"))
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "pad_value", _floats(self.pad_value, "pad_value"))
        channels = 1 if color == "L" else 3
        for name in ("mean", "std", "pad_value"):
            vals = getattr(self, name)
            if len(vals) == 3 and channels == 1:
                raise DataSourceError(f"{name} has 3 values but color='L' has one channel")

    # -- configuration -------------------------------------------------------------------
    _KEYS = ("resize", "center_crop", "color", "scale", "mean", "std", "layout", "letterbox",
             "pad_to", "pad_value", "pad_position")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict (the config file format)."""
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> Preprocess:
        """Build from a dict with the constructor's keys (unknown keys are an error)."""
        known = set(cls._KEYS)
        unknown = set(config) - known
        if unknown:
            raise DataSourceError(
                f"unknown preprocessing keys {sorted(unknown)}; allowed: {sorted(known)}"
            )
        kw = dict(config)
        for k in ("resize", "center_crop", "letterbox", "pad_to"):
            if isinstance(kw.get(k), list):
                kw[k] = tuple(kw[k])
        return cls(**kw)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Preprocess:
        """Read a JSON (``.json``) or TOML (``.toml``) config file; see :meth:`from_dict`.

        Example file: ``{"resize": 256, "center_crop": 224, "scale": 0.00392156862745098,
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "layout": "NCHW"}``.
        """
        p = Path(path)
        try:
            raw = p.read_bytes()
            if p.suffix.lower() == ".toml":
                try:
                    tomllib = importlib.import_module("tomllib")
                except ImportError:
                    raise DataSourceError(
                        f"{p}: reading TOML needs Python 3.11 or later; write the config as JSON"
                    ) from None
                config = tomllib.loads(raw.decode("utf-8"))
            else:
                config = json.loads(raw.decode("utf-8"))
        except FileNotFoundError:
            raise DataSourceError(f"{p}: preprocessing config file not found") from None
        except DataSourceError:
            raise
        except Exception as exc:
            raise DataSourceError(f"{p}: cannot parse the preprocessing config ({exc})") from exc
        if not isinstance(config, dict):
            raise DataSourceError(f"{p}: the preprocessing config must be an object/table")
        try:
            return cls.from_dict(config)
        except DataSourceError as exc:
            raise DataSourceError(f"{p}: {exc}") from None

    # -- application ---------------------------------------------------------------------
    def load(self, path: str | os.PathLike[str]) -> np.ndarray:
        """Decode one image file and return it prepared, without batch axis (CHW or HWC).

        8-bit images go through Pillow's ``RGB``/``L`` conversion; 16-bit ones (gray, RGB,
        with or without alpha) are read at full precision (see the class notes).
        """
        from PIL import Image, UnidentifiedImageError

        try:
            wide = _read_png16(path)
            if wide is not None:
                return self.apply(wide)
            with Image.open(path) as im:
                im.load()
                if im.mode.startswith("I;16") or (im.mode == "I" and im.format == "PNG"):
                    return self.apply(np.asarray(im).astype(np.float32)[:, :, None])
                if im.mode in ("I", "F"):
                    raise DataSourceError(
                        f"{path}: {im.mode!r} images (32-bit integer or float pixels) have no "
                        "declared pixel range; save the prepared arrays as .npy instead"
                    )
                img = im.convert("L" if self.color == "L" else "RGB")
        except DataSourceError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, zlib.error) as exc:
            raise DataSourceError(
                f"{path}: cannot decode the image ({exc.__class__.__name__}: {exc}); "
                "remove the file or convert it to PNG/JPEG"
            ) from exc
        return self.apply(img)

    def _geometry(self, img: Any) -> Any:
        """Resize / letterbox-resize / center-crop one PIL image (any mode)."""
        from PIL import Image

        w, h = img.size
        target: tuple[int, int] | None = None
        if self.resize is not None:
            if isinstance(self.resize, int):
                short = min(w, h)
                target = (round(w * self.resize / short), round(h * self.resize / short))
            else:
                target = (self.resize[1], self.resize[0])
        elif self.letterbox is not None:
            lh, lw = self.letterbox  # type: ignore[misc]
            r = min(lh / h, lw / w)
            target = (min(lw, max(1, round(w * r))), min(lh, max(1, round(h * r))))
        if target is not None and target != (w, h):
            img = img.resize((max(target[0], 1), max(target[1], 1)), Image.Resampling.BILINEAR)
        if self.center_crop is not None:
            ch, cw = self.center_crop  # type: ignore[misc]
            w, h = img.size
            if ch > h or cw > w:
                raise DataSourceError(
                    f"center_crop {ch}x{cw} is larger than the resized image {h}x{w}; "
                    "resize to at least the crop size"
                )
            left, top = (w - cw) // 2, (h - ch) // 2
            img = img.crop((left, top, left + cw, top + ch))
        return img

    def _pad(self, x: np.ndarray) -> np.ndarray:
        """Pad an HWC float image to ``letterbox`` / ``pad_to`` with ``pad_value``."""
        size = self.letterbox if self.letterbox is not None else self.pad_to
        if self.letterbox is not None and self.pad_to is not None:
            size = (max(self.letterbox[0], self.pad_to[0]),  # type: ignore[index]
                    max(self.letterbox[1], self.pad_to[1]))  # type: ignore[index]
        if size is None:
            return x
        th, tw = size  # type: ignore[misc]
        h, w = x.shape[:2]
        if h > th or w > tw:
            raise DataSourceError(
                f"the image is {h}x{w} after resizing, larger than pad_to {th}x{tw}; "
                "resize or letterbox it first"
            )
        if (h, w) == (th, tw):
            return x
        top, left = ((th - h) // 2, (tw - w) // 2) if self.pad_position == "center" else (0, 0)
        canvas = np.empty((th, tw, x.shape[2]), np.float32)
        canvas[...] = np.asarray(self.pad_value, np.float32)
        canvas[top : top + h, left : left + w] = x
        return canvas

    def apply(self, img: Any) -> np.ndarray:
        """Prepare a decoded image; returns CHW or HWC float32.

        ``img`` is a PIL image of mode ``RGB`` or ``L`` (8-bit), or a float ``H×W×C`` array
        of 16-bit pixel values (0–65535; C = 1 or 3), which is mapped to 0–255 first.
        """
        from PIL import Image

        if isinstance(img, np.ndarray):
            wide = img.astype(np.float32) * np.float32(255.0 / 65535.0)
            planes = [
                np.asarray(self._geometry(Image.fromarray(wide[:, :, c], mode="F")),
                           dtype=np.float32)
                for c in range(wide.shape[2])
            ]
            x = np.stack(planes, axis=-1)
            if self.color == "L" and x.shape[2] == 3:  # ITU-R 601-2 luma, as Pillow's "L"
                x = (x @ np.array([0.299, 0.587, 0.114], np.float32))[:, :, None]
            elif self.color != "L" and x.shape[2] == 1:
                x = np.repeat(x, 3, axis=2)
        else:
            x = np.asarray(self._geometry(img), dtype=np.float32)
            if x.ndim == 2:
                x = x[:, :, None]
        if self.color == "BGR":
            x = x[:, :, ::-1]
        x = self._pad(x)
        if self.scale != 1.0:
            x = x * np.float32(self.scale)
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        if np.any(mean != 0):
            x = x - mean
        if np.any(std != 1):
            x = x / std
        if self.layout == "NCHW":
            x = np.transpose(x, (2, 0, 1))
        return np.ascontiguousarray(x, dtype=np.float32)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _read_png16(path: str | os.PathLike[str]) -> np.ndarray | None:
    """A 16-bit PNG as a float32 ``H×W×C`` array of 0–65535 values (alpha dropped).

    ``None`` for any other file.

    Pillow decodes 16-bit RGB PNGs to 8 bits, so those are decoded here (zlib and the five
    PNG row filters); gray ones too, for one code path.
    """
    with open(path, "rb") as fh:
        head = fh.read(33)
    if len(head) < 33 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", head[16:29])
    if depth != 16:
        return None
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(color)
    if channels is None:
        raise DataSourceError(f"{path}: 16-bit PNG with color type {color} is not valid PNG")
    if interlace:
        raise DataSourceError(
            f"{path}: interlaced 16-bit PNG is not supported; re-save it without interlacing"
        )
    data = Path(path).read_bytes()
    pos, chunks = 8, []
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            chunks.append(data[pos + 8 : pos + 8 + length])
        elif kind == b"IEND":
            break
        pos += 12 + length
    bpp = 2 * channels
    stride = width * bpp
    raw = np.frombuffer(zlib.decompress(b"".join(chunks)), np.uint8)
    if raw.size != height * (stride + 1):
        raise DataSourceError(f"{path}: truncated PNG data; re-save the image")
    rows = raw.reshape(height, stride + 1)
    out = np.empty((height, stride), np.uint8)
    prev = np.zeros(stride, np.int32)
    for y in range(height):
        kind_f = int(rows[y, 0])
        line = rows[y, 1:].astype(np.int32)
        if kind_f == 0:
            cur = line
        elif kind_f == 1:  # Sub: cumulative along the row, per byte of the pixel
            cur = (line.reshape(width, bpp).cumsum(axis=0) & 255).reshape(-1)
        elif kind_f == 2:  # Up
            cur = (line + prev) & 255
        elif kind_f in (3, 4):  # Average, Paeth: sequential along the row
            cur = line.copy()
            left = np.zeros(bpp, np.int32)
            up_left = np.zeros(bpp, np.int32)
            for i in range(0, stride, bpp):
                up = prev[i : i + bpp]
                if kind_f == 3:
                    pred = (left + up) >> 1
                else:
                    p = left + up - up_left
                    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - up_left)
                    pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
                left = (line[i : i + bpp] + pred) & 255
                cur[i : i + bpp] = left
                up_left = up
        else:
            raise DataSourceError(f"{path}: row {y} has PNG filter {kind_f}; the file is damaged")
        out[y] = cur
        prev = cur
    pixels = out.view(">u2").reshape(height, width, channels).astype(np.float32)
    if channels in (2, 4):  # drop alpha
        pixels = pixels[:, :, : channels - 1]
    return pixels


class ImageFolder:
    """Batches of images decoded with Pillow and prepared by a declared :class:`Preprocess`.

    Parameters
    ----------
    path : path-like
        A folder, searched recursively for files ending in :data:`IMAGE_EXTENSIONS`, in
        natural order; or a single image file.
    preprocess : Preprocess
        How to turn an image into the model's input. Required: there is no safe guess.
    batch_size : int, optional
        Images per batch (the last batch may be smaller).
    input_name : str, optional
        The input the batches feed; omitted, batches are bare arrays for a one-input model.

    Notes
    -----
    All images in a batch must come out the same size (use ``resize`` and/or
    ``center_crop``); a file that does not decode raises
    :class:`~kldiv.errors.DataSourceError` naming it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        preprocess: Preprocess,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        input_name: str | None = None,
    ) -> None:
        if not isinstance(preprocess, Preprocess):
            raise DataSourceError(
                "ImageFolder needs preprocess=Preprocess(...): declare resize, crop, color, "
                "scale, mean/std and layout as the model expects"
            )
        if batch_size < 1:
            raise DataSourceError(f"batch_size must be >= 1, got {batch_size}")
        self.path = Path(path)
        self.preprocess = preprocess
        self.batch_size = int(batch_size)
        self.input_name = input_name
        self.files = _list_files(
            self.path,
            IMAGE_EXTENSIONS,
            what=f"images ({', '.join(IMAGE_EXTENSIONS)})",
            hint="put calibration images there, or point --data elsewhere",
        )

    def __len__(self) -> int:
        return (len(self.files) + self.batch_size - 1) // self.batch_size

    def __repr__(self) -> str:
        return f"ImageFolder({str(self.path)!r}, {len(self.files)} images, {self.preprocess})"

    def __iter__(self) -> Iterator[Batch]:
        for start in range(0, len(self.files), self.batch_size):
            chunk = self.files[start : start + self.batch_size]
            images = [self.preprocess.load(f) for f in chunk]
            shapes = {im.shape for im in images}
            if len(shapes) > 1:
                detail = ", ".join(f"{f.name}: {im.shape}" for f, im in zip(chunk, images))
                raise DataSourceError(
                    f"images of one batch came out in different sizes ({detail}); "
                    "declare resize=(H, W) or center_crop so they all match"
                )
            arr = np.stack(images)
            yield arr if self.input_name is None else {self.input_name: arr}


# ---------------------------------------------------------------------------------------
# TensorRT sampleINT8 batch files
# ---------------------------------------------------------------------------------------
_HEADER = np.dtype("<i4")
_FLOAT = np.dtype("<f4")


def read_batch_file(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """Read one TensorRT sampleINT8 batch file.

    The format (TensorRT ``samples/common/BatchStream.h``): four little-endian int32
    ``N, C, H, W``; then ``N*C*H*W`` float32 values (NCHW); then ``N`` float32 labels.
    Files without the labels are accepted too.

    Parameters
    ----------
    path : path-like
        The batch file.

    Returns
    -------
    data : numpy.ndarray
        float32, shape ``(N, C, H, W)``.
    labels : numpy.ndarray or None
        float32, shape ``(N,)``, or ``None`` when the file holds no labels.

    Raises
    ------
    DataSourceError
        If the file is too short, the header is not four positive ints, or the size does not
        match the header.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise DataSourceError(f"{p}: batch file not found") from None
    if len(raw) < 16:
        raise DataSourceError(
            f"{p}: {len(raw)} bytes is too short for a sampleINT8 batch file "
            "(it starts with four int32 N, C, H, W)"
        )
    dims = np.frombuffer(raw, dtype=_HEADER, count=4)
    if np.any(dims <= 0):
        raise DataSourceError(
            f"{p}: header N,C,H,W = {tuple(int(d) for d in dims)} is not four positive ints; "
            "this is not a sampleINT8 batch file"
        )
    n, c, h, w = (int(d) for d in dims)
    n_data = n * c * h * w
    with_labels = 16 + 4 * (n_data + n)
    without = 16 + 4 * n_data
    if len(raw) not in (with_labels, without):
        raise DataSourceError(
            f"{p}: {len(raw)} bytes, but header N,C,H,W = {n},{c},{h},{w} needs {with_labels} "
            f"(with {n} labels) or {without} (without); the file is truncated or not a batch file"
        )
    data = np.frombuffer(raw, dtype=_FLOAT, count=n_data, offset=16).reshape(n, c, h, w)
    labels = None
    if len(raw) == with_labels:
        labels = np.frombuffer(raw, dtype=_FLOAT, count=n, offset=16 + 4 * n_data).copy()
    return data.astype(np.float32, copy=True), labels


def write_batch_file(
    path: str | os.PathLike[str],
    data: np.ndarray,
    labels: np.ndarray | Sequence[float] | None = None,
    *,
    force: bool = False,
) -> Path:
    """Write one TensorRT sampleINT8 batch file (see :func:`read_batch_file`), atomically.

    Parameters
    ----------
    path : path-like
        Destination.
    data : array_like
        Shape ``(N, C, H, W)``; written as little-endian float32.
    labels : array_like, optional
        ``N`` labels; TensorRT's reader expects them, so zeros are written when omitted.
    force : bool, optional
        Overwrite an existing file.

    Returns
    -------
    pathlib.Path
        The file written.
    """
    arr = np.asarray(data)
    if arr.ndim != 4 or 0 in arr.shape:
        raise DataSourceError(
            f"sampleINT8 batch data must be a non-empty (N, C, H, W) array, got shape {arr.shape}"
        )
    n = arr.shape[0]
    lab = np.zeros(n, dtype=_FLOAT) if labels is None else np.asarray(labels, dtype=_FLOAT)
    if lab.shape != (n,):
        raise DataSourceError(f"labels must have shape ({n},) to match the data, got {lab.shape}")
    blob = (
        np.asarray(arr.shape, dtype=_HEADER).tobytes()
        + np.ascontiguousarray(arr, dtype=_FLOAT).tobytes()
        + lab.tobytes()
    )
    return atomic_write_bytes(path, blob, force=force)


class SampleInt8BatchFiles:
    """Batches from TensorRT sampleINT8 batch files (``batch0``, ``batch1``, ...).

    Parameters
    ----------
    path : path-like or sequence of path-like
        A folder (every regular file in it, natural order, hidden files skipped), one file,
        or an explicit list of files.
    input_name : str, optional
        The input the data feeds; omitted, batches are bare arrays for a one-input model.

    Attributes
    ----------
    labels : list of numpy.ndarray or None
        After iteration, the labels of each batch read (``None`` entries for files without).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        input_name: str | None = None,
    ) -> None:
        if isinstance(path, (str, os.PathLike)):
            self.path: Path | None = Path(path)
            self.files = _list_files(
                self.path,
                None,
                what="batch files",
                hint="write them with kldiv.data.write_batch_file or point --data elsewhere",
            )
        else:
            self.path = None
            self.files = [Path(p) for p in path]
            if not self.files:
                raise DataSourceError("no sampleINT8 batch files given")
        self.input_name = input_name
        self.labels: list[np.ndarray | None] = []

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return f"SampleInt8BatchFiles({len(self.files)} files)"

    def __iter__(self) -> Iterator[Batch]:
        self.labels = []
        for f in self.files:
            data, labels = read_batch_file(f)
            self.labels.append(labels)
            yield data if self.input_name is None else {self.input_name: data}


def _looks_like_batch_file(path: Path) -> bool:
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(16)
    except OSError:
        return False
    if len(head) < 16:
        return False
    dims = np.frombuffer(head, dtype=_HEADER)
    if np.any(dims <= 0) or np.any(dims > 1 << 20):
        return False
    n = int(np.prod(dims.astype(np.int64)))
    return size in (16 + 4 * n, 16 + 4 * (n + int(dims[0])))


# ---------------------------------------------------------------------------------------
# a Python data-loader script
# ---------------------------------------------------------------------------------------
class ScriptSource:
    """Batches from a function in a Python file: any iterable of ``{input_name: array}``.

    The convention of Polygraphy's ``--data-loader-script``: ``file.py`` names the file and
    its function ``load_data``; ``file.py:func`` names another function. The function is
    called with no arguments each time the source is iterated (so a generator function gives
    a fresh pass every time); it may return a list, a generator, or any iterable of dicts.

    Parameters
    ----------
    spec : str or path-like
        ``path/to/file.py`` or ``path/to/file.py:function``.

    Raises
    ------
    DataSourceError
        At construction: the file is missing, does not import (its exception is named), or
        has no such callable. While iterating: the function fails, returns something that is
        not iterable, or yields an item that is not a dict of arrays (the item is named).
    """

    def __init__(self, spec: str | os.PathLike[str]) -> None:
        text = os.fspath(spec)
        path_text, func = text, "load_data"
        head, sep, tail = text.rpartition(":")
        if sep and tail and head and not tail.startswith(("/", "\\")) and head.endswith(".py"):
            path_text, func = head, tail
        self.path = Path(path_text)
        self.func_name = func
        if not self.path.is_file():
            raise DataSourceError(
                f"data-loader script {self.path} not found; give file.py or file.py:function"
            )
        name = f"_kldiv_data_loader_{abs(hash(str(self.path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(name, self.path)
        if module_spec is None or module_spec.loader is None:
            raise DataSourceError(f"data-loader script {self.path}: not a Python file")
        module = importlib.util.module_from_spec(module_spec)
        sys.path.insert(0, str(self.path.resolve().parent))
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            raise DataSourceError(
                f"data-loader script {self.path} failed to import "
                f"({exc.__class__.__name__}: {exc}); fix the script"
            ) from exc
        finally:
            sys.path.pop(0)
        fn = getattr(module, func, None)
        if not callable(fn):
            found = sorted(k for k, v in vars(module).items()
                           if callable(v) and not k.startswith("_") and
                           getattr(v, "__module__", None) == name)
            raise DataSourceError(
                f"data-loader script {self.path} has no function {func!r}"
                + (f" (it defines {found})" if found else "")
                + f"; define {func}() returning an iterable of {{input_name: array}} dicts, or "
                "name the function: file.py:function"
            )
        self._fn = fn

    def __repr__(self) -> str:
        return f"ScriptSource({str(self.path)!r}:{self.func_name})"

    def __iter__(self) -> Iterator[Batch]:
        where = f"data-loader script {self.path}:{self.func_name}"
        try:
            items = self._fn()
        except Exception as exc:
            raise DataSourceError(
                f"{where}() raised {exc.__class__.__name__}: {exc}; fix the script"
            ) from exc
        if isinstance(items, (Mapping, np.ndarray)) or not isinstance(items, Iterable):
            raise DataSourceError(
                f"{where}() returned {type(items).__name__}, not an iterable of batches; "
                "return (or yield) {input_name: array} dicts, one per batch"
            )
        index = -1
        iterator = iter(items)
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                break
            except DataSourceError:
                raise
            except Exception as exc:
                raise DataSourceError(
                    f"{where}: producing batch {index + 1} raised {exc.__class__.__name__}: "
                    f"{exc}; fix the script"
                ) from exc
            index += 1
            if not isinstance(item, Mapping) or not all(isinstance(k, str) for k in item):
                raise DataSourceError(
                    f"{where}: batch {index} is a {type(item).__name__}, not a dict "
                    "{input_name: array}; yield one dict per batch"
                )
            yield {k: np.asarray(v) for k, v in item.items()}
        if index < 0:
            raise DataSourceError(f"{where}() yielded no batches; yield at least one dict")


# ---------------------------------------------------------------------------------------
# batch axes
# ---------------------------------------------------------------------------------------
def parse_batch_axes(items: Iterable[str] | Mapping[str, Any] | None) -> dict[str, int | None]:
    """Read batch-axis declarations.

    ``NAME=AXIS`` strings, ``NAME=none`` for an input that is not batched, or a mapping
    ``{name: axis or None}``.

    Raises
    ------
    DataSourceError
        For a malformed declaration (it is quoted, with the expected form).
    """
    if items is None:
        return {}
    pairs = list(items.items()) if isinstance(items, Mapping) else []
    if not isinstance(items, Mapping):
        for text in items:
            name, sep, axis = str(text).rpartition("=")
            if not sep or not name:
                raise DataSourceError(
                    f"batch axis {text!r}: expected NAME=AXIS (an integer) or NAME=none"
                )
            pairs.append((name, axis))
    out: dict[str, int | None] = {}
    for name, axis in pairs:
        if axis is None or str(axis).strip().lower() in ("none", "-", ""):
            out[str(name)] = None
            continue
        try:
            out[str(name)] = int(axis)
        except (TypeError, ValueError):
            raise DataSourceError(
                f"batch axis of {name!r} is {axis!r}: give an integer axis, or none for an "
                "input that is not batched"
            ) from None
    return out


def infer_batch_axes(
    shapes: Mapping[str, Sequence[int | str | None]],
    declared: Mapping[str, int | None] | Iterable[str] | None = None,
) -> dict[str, int | None]:
    """Each input's batch axis, from the model's input shapes and any declarations.

    Rules, in order:

    1. a declared axis wins (``None``: not batched); it must exist in the input's rank
       (negative axes count from the end) and the name must be an input;
    2. a scalar is not batched;
    3. a symbolic dimension (``dim_param``) shared by two or more inputs is the batch
       dimension: each input holding it is batched along it (``state [2, B, 128]`` with
       ``x [B, T]``: axis 1 and 0);
    4. other inputs with a symbolic or unknown dimension (``None``, or an int ``<= 0`` as
       some exporters write) are batched along axis 0, the leading axis (a ``[1, 3, h, w]``
       detector input is batched along axis 0, not along its dynamic height);
    5. inputs whose shape is fully fixed are not batched when some other input has a
       dynamic dimension (recurrent state ``h [1, 1, 128]``); when every input is fixed,
       all are batched along axis 0 (a fixed-batch model).

    A wrong guess shows as "inputs disagree on the batch size" on the first batch, with the
    ``--batch-axis`` fix in the message.

    Parameters
    ----------
    shapes : mapping of str to sequence
        Input name -> shape; ``str`` for a symbolic dimension, ``None`` for an unknown one.
    declared : mapping or iterable of ``NAME=AXIS`` strings, optional
        Declarations (see :func:`parse_batch_axes`).

    Returns
    -------
    dict of str to int or None
        In the order of ``shapes``.

    Raises
    ------
    DataSourceError
        For a declared name that is not an input or an axis the input does not have.
    """
    decl = parse_batch_axes(declared)
    unknown = [n for n in decl if n not in shapes]
    if unknown:
        raise DataSourceError(
            f"--batch-axis names {unknown}, not inputs of the model; its inputs are "
            f"{list(shapes)}"
        )
    counts: dict[str, int] = {}
    for shape in shapes.values():
        for sym in {d for d in shape if isinstance(d, str)}:
            counts[sym] = counts.get(sym, 0) + 1
    shared = [s for s, c in counts.items() if c >= 2]
    # the batch symbol: shared by the most inputs; ties go to the one met first at the lowest axis
    batch_sym = None
    if shared:
        order = {s: min(i for shape in shapes.values() for i, d in enumerate(shape) if d == s)
                 for s in shared}
        batch_sym = max(shared, key=lambda s: (counts[s], -order[s]))
    def fixed(d: Any) -> bool:
        return isinstance(d, (int, np.integer)) and bool(d > 0)

    any_dynamic = any(not fixed(d) for shape in shapes.values() for d in shape)
    out: dict[str, int | None] = {}
    for name, shape in shapes.items():
        rank = len(shape)
        if name in decl:
            axis = decl[name]
            if axis is not None:
                if not -rank <= axis < rank:
                    dims = ",".join("?" if d is None else str(d) for d in shape)
                    raise DataSourceError(
                        f"--batch-axis {name}={axis}: input {name!r} has rank {rank} "
                        f"(shape [{dims}]), so axis {axis} does not exist; give 0..{rank - 1}"
                        f" or {name}=none if it is not batched"
                    )
                axis %= rank
            out[name] = axis
        elif rank == 0:
            out[name] = None
        elif batch_sym is not None and batch_sym in shape:
            out[name] = list(shape).index(batch_sym)
        elif not all(fixed(d) for d in shape):
            out[name] = 0
        else:
            out[name] = None if any_dynamic else 0
    return out


def _axis_len(arr: np.ndarray, axis: int | None) -> int | None:
    if axis is None or arr.ndim <= axis:
        return None
    return int(arr.shape[axis])


def _cut(arr: np.ndarray, axis: int, start: int, stop: int | None) -> np.ndarray:
    index = (slice(None),) * axis + (slice(start, stop),)
    return arr[index]


# ---------------------------------------------------------------------------------------
# generic helpers
# ---------------------------------------------------------------------------------------
def _classify_folder(path: Path, files: Sequence[Path]) -> str:
    """``'npy'``, ``'images'`` or ``'batch'`` for a folder; mixed kinds are an error."""
    kinds: dict[str, list[Path]] = {}
    for f in files:
        suffix = f.suffix.lower()
        kind = ("npy" if suffix in (".npy", ".npz")
                else "images" if suffix in IMAGE_EXTENSIONS else "other")
        kinds.setdefault(kind, []).append(f)
    if len(kinds) == 1:
        kind = next(iter(kinds))
        return "batch" if kind == "other" else kind
    label = {"npy": ".npy/.npz files", "images": "images", "other": "other files"}
    detail = "; ".join(
        f"{len(fs)} {label[k]} (e.g. {fs[0].relative_to(path) if path.is_dir() else fs[0]})"
        for k, fs in sorted(kinds.items())
    )
    raise DataSourceError(
        f"{path} mixes kinds of data: {detail}. kldiv reads one kind per folder; move the "
        "others out (or into separate folders) and point --data at one kind"
    )


def as_source(
    obj: Any,
    *,
    preprocess: Preprocess | None = None,
    batch_size: int | None = None,
    input_name: str | None = None,
    batch_axes: BatchAxes | None = None,
) -> DataSource:
    """Turn ``obj`` into a data source.

    Parameters
    ----------
    obj : path-like, numpy.ndarray, mapping or iterable
        - a folder or file: ``.npy``/``.npz`` → :class:`NpyFolder`; images →
          :class:`ImageFolder` (``preprocess`` required); otherwise sampleINT8 batch files →
          :class:`SampleInt8BatchFiles`. A folder mixing these kinds is an error;
        - a ``.py`` file, or ``file.py:function`` → :class:`ScriptSource`;
        - an array: one batch for the model's only input (or ``input_name``);
        - a mapping ``{input_name: array}``: one batch;
        - any other iterable: returned as it is (each item a batch).
    preprocess : Preprocess, optional
        For image folders.
    batch_size : int, optional
        Images per batch for image folders; for other sources, re-cut with :func:`rebatch`.
    input_name : str, optional
        Name bare arrays feed.
    batch_axes : mapping of str to int or None, optional
        Each input's batch axis for re-cutting (see :func:`infer_batch_axes`); default axis 0.

    Returns
    -------
    iterable
        The source.

    Raises
    ------
    DataSourceError
        For a path that holds nothing usable, or an object that is not iterable.
    """
    source: DataSource
    if isinstance(obj, (str, os.PathLike)):
        text = os.fspath(obj)
        path = Path(text)
        if path.suffix == ".py" or (":" in text and text.rpartition(":")[0].endswith(".py")):
            source = ScriptSource(text)
            return source if batch_size is None else _Rebatched(source, batch_size, batch_axes)
        if not path.exists():
            raise DataSourceError(f"{path}: no such file or folder; give calibration data")
        files = [path] if path.is_file() else _list_files(
            path, None, what="files", hint="put calibration data there"
        )
        kind = _classify_folder(path, files)
        if kind == "npy":
            source = NpyFolder(path, input_name=input_name)
        elif kind == "images":
            if preprocess is None:
                raise DataSourceError(
                    f"{path} holds images: declare their preprocessing (--preprocess FILE, or "
                    "--resize/--letterbox/--crop/--color/--scale/--mean/--std/--layout; "
                    "Preprocess(...) in Python)"
                )
            return ImageFolder(
                path, preprocess, batch_size=batch_size or DEFAULT_BATCH_SIZE, input_name=input_name
            )
        elif _looks_like_batch_file(files[0]):
            source = SampleInt8BatchFiles(path, input_name=input_name)
        else:
            raise DataSourceError(
                f"{path}: found neither .npy/.npz files, images, nor sampleINT8 batch files "
                f"(first file: {files[0]}); convert the data to one of these, or write a "
                "data-loader script (--data-loader-script file.py)"
            )
    elif isinstance(obj, np.ndarray):
        source = [obj if input_name is None else {input_name: obj}]
    elif isinstance(obj, Mapping):
        source = [obj]
    elif isinstance(obj, Iterable):
        source = obj
    else:
        raise DataSourceError(
            f"calibration data of type {type(obj).__name__} is not a data source; give a path, "
            "an array, a dict {input_name: array} or an iterable of them"
        )
    if batch_size is not None:
        return _Rebatched(source, batch_size, batch_axes)
    return source


class _Rebatched:
    """Re-iterable wrapper around :func:`rebatch`."""

    def __init__(
        self, source: DataSource, batch_size: int, batch_axes: BatchAxes | None = None
    ) -> None:
        if batch_size < 1:
            raise DataSourceError(f"batch_size must be >= 1, got {batch_size}")
        self.source = source
        self.batch_size = batch_size
        self.batch_axes = batch_axes

    def __repr__(self) -> str:
        return f"rebatch({self.source!r}, {self.batch_size})"

    def __iter__(self) -> Iterator[Batch]:
        return rebatch(self.source, self.batch_size, batch_axes=self.batch_axes)


class _Taken:
    """Re-iterable: the first ``n`` batches of a source."""

    def __init__(self, source: DataSource, n: int) -> None:
        self.source = source
        self.n = n

    def __repr__(self) -> str:
        return f"take_batches({self.source!r}, {self.n})"

    def __len__(self) -> int:
        try:
            return min(self.n, len(self.source))  # type: ignore[arg-type]
        except TypeError:
            raise TypeError("the source has no length") from None

    def __iter__(self) -> Iterator[Batch]:
        if self.n <= 0:
            return
        for i, item in enumerate(self.source):
            yield item
            if i + 1 >= self.n:
                return


def take_batches(source: DataSource, max_batches: int | None) -> DataSource:
    """The first ``max_batches`` batches of ``source`` (re-iterable if ``source`` is).

    ``None`` returns ``source`` unchanged.

    Raises
    ------
    DataSourceError
        If ``max_batches`` is below 1.
    """
    if max_batches is None:
        return source
    if max_batches < 1:
        raise DataSourceError(f"max_batches must be >= 1, got {max_batches}")
    return _Taken(source, int(max_batches))


def rebatch(
    source: DataSource, batch_size: int, *, batch_axes: BatchAxes | None = None
) -> Iterator[Batch]:
    """Re-cut a source into batches of ``batch_size`` samples along each input's batch axis.

    Holds at most one output batch plus one input batch. Every batched input of a batch must
    have the same number of samples; the last batch may be smaller. Inputs that are not
    batched (``batch_axes[name] is None``) are passed through as given: each output batch
    takes them from the first input batch it draws samples from.

    Parameters
    ----------
    source : iterable
        Batches (dicts or bare arrays; not mixed).
    batch_size : int
        Samples per output batch.
    batch_axes : mapping of str to int or None, optional
        Input name -> batch axis (``None``: not batched). Inputs not named use axis 0.

    Yields
    ------
    dict or numpy.ndarray
        Batches of the same kind as the input.
    """
    if batch_size < 1:
        raise DataSourceError(f"batch_size must be >= 1, got {batch_size}")
    axes_of: Mapping[Any, int | None] = dict(batch_axes or {})
    pending: list[dict[Any, np.ndarray]] = []
    have = 0
    bare = None
    axes: dict[Any, int | None] = {}
    for i, item in enumerate(source):
        is_bare = not isinstance(item, Mapping)
        if bare is None:
            bare = is_bare
        elif bare != is_bare:
            raise DataSourceError(f"batch {i}: mixes bare arrays and dicts; use one kind")
        d: dict[Any, np.ndarray] = (
            {None: np.asarray(item)}
            if is_bare
            else {k: np.asarray(v) for k, v in dict(item).items()}
        )
        axes = {k: (0 if k is None else axes_of.get(k, 0)) for k in d}
        sizes = {k: _axis_len(v, axes[k]) for k, v in d.items() if axes[k] is not None}
        bad = [k for k, n in sizes.items() if n is None]
        if bad:
            raise DataSourceError(
                f"batch {i}: input {bad[0]!r} (shape {d[bad[0]].shape}) has no axis "
                f"{axes[bad[0]]} to re-batch along; declare its batch axis (--batch-axis "
                f"{bad[0]}=AXIS, or {bad[0]}=none if it is not batched)"
            )
        if not sizes or len(set(sizes.values())) != 1:
            raise DataSourceError(
                f"batch {i}: cannot re-batch inputs with sample counts {sizes}; batched inputs "
                "need the same batch size. Declare inputs that are not batched (recurrent "
                "state, scalars) with --batch-axis NAME=none, or give each one's batch axis "
                "with --batch-axis NAME=AXIS (batch_axes={...} in Python)"
            )
        n = int(next(iter(sizes.values())) or 0)
        pending.append(d)
        have += n
        while have >= batch_size:
            out, pending, have = _take(pending, batch_size, have, axes)
            yield out[None] if bare else out
    if have:
        out = {
            k: (pending[0][k] if axes[k] is None
                else np.concatenate([p[k] for p in pending], axis=axes[k]))
            for k in pending[0]
        }
        yield out[None] if bare else out


def _take(
    pending: list[dict[Any, np.ndarray]], n: int, have: int, axes: Mapping[Any, int | None]
) -> tuple[dict[Any, np.ndarray], list[dict[Any, np.ndarray]], int]:
    """Split the first ``n`` samples off ``pending`` (along each batched input's axis)."""
    taken: list[dict[Any, np.ndarray]] = []
    need = n
    rest = list(pending)
    batched = [k for k in rest[0] if axes.get(k) is not None]

    def size(d: dict[Any, np.ndarray]) -> int:
        k = batched[0]
        return int(d[k].shape[axes[k]])  # type: ignore[index]

    while need:
        head = rest[0]
        if size(head) <= need:
            taken.append(head)
            rest.pop(0)
            need -= size(head)
        else:
            taken.append({k: (v if axes.get(k) is None else _cut(v, axes[k], 0, need))  # type: ignore[arg-type]
                          for k, v in head.items()})
            rest[0] = {k: (v if axes.get(k) is None else _cut(v, axes[k], need, None))  # type: ignore[arg-type]
                       for k, v in head.items()}
            need = 0
    out = (
        taken[0]
        if len(taken) == 1
        else {
            k: (taken[0][k] if axes.get(k) is None
                else np.concatenate([t[k] for t in taken], axis=axes[k]))
            for k in taken[0]
        }
    )
    return out, rest, have - n


def count_samples(source: DataSource, batch_axes: BatchAxes | None = None) -> int | None:
    """The number of samples ``source`` holds, counted without decoding it, or ``None``.

    Known for image folders (files), ``.npy``/``.npz`` folders (array headers), sampleINT8
    batch files (headers), lists and tuples of batches, and re-cut or truncated wrappers of
    these; ``None`` for generators and scripts (count them by iterating).
    """
    axes = dict(batch_axes or {})

    def batched_len(batch: Any) -> int | None:
        if not isinstance(batch, Mapping):
            arr = np.asarray(batch)
            return int(arr.shape[0]) if arr.ndim else 1
        for k, v in batch.items():
            axis = axes.get(k, 0)
            shape = v.shape if isinstance(v, _Shape) else np.shape(v)
            if axis is not None and len(shape) > axis:
                return int(shape[axis])
        return 1

    try:
        if isinstance(source, ImageFolder):
            return len(source.files)
        if isinstance(source, _Rebatched):
            return count_samples(source.source, batch_axes)
        if isinstance(source, _Taken):
            inner = source.source
            if isinstance(inner, (list, tuple)):
                return sum(batched_len(b) or 0 for b in inner[: source.n])
            return None
        if isinstance(source, SampleInt8BatchFiles):
            total = 0
            for f in source.files:
                with open(f, "rb") as fh:
                    total += int(np.frombuffer(fh.read(4), dtype=_HEADER)[0])
            return total
        if isinstance(source, NpyFolder):
            total = 0
            for f in source.files:
                shapes = _npy_shapes(f)
                if source.input_name is None and f.suffix.lower() == ".npy":
                    shape = shapes[""]
                    total += int(shape[0]) if shape else 1
                else:
                    total += batched_len({k: _Shape(s) for k, s in shapes.items()}) or 0
            return total
        if isinstance(source, (list, tuple)):
            return sum(batched_len(b) or 0 for b in source)
    except (OSError, ValueError, zipfile.BadZipFile):
        return None
    return None


class _Shape:
    """Stands for an array in :func:`count_samples`: only ``shape`` is read."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape


def _npy_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Array shapes of a ``.npy`` (key ``''``) or ``.npz`` file, from the headers only."""
    from numpy.lib import format as npformat

    def header(fh: Any) -> tuple[int, ...]:  # a file or a zip member
        version = npformat.read_magic(fh)
        reader = (npformat.read_array_header_1_0 if version == (1, 0)
                  else npformat.read_array_header_2_0)
        return tuple(reader(fh)[0])

    if path.suffix.lower() == ".npy":
        with open(path, "rb") as npy:
            return {"": header(npy)}
    out = {}
    with zipfile.ZipFile(path) as z:
        for member in z.namelist():
            if member.endswith(".npy"):
                with z.open(member) as fh:
                    out[member[:-4]] = header(fh)
    return out
