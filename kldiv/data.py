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
- :func:`as_source` turns a path, an array, a dict or an iterable into a source;
  :func:`rebatch` re-cuts any source into batches of a given size.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
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
    "DataSource",
    "ImageFolder",
    "NpyFolder",
    "Preprocess",
    "SampleInt8BatchFiles",
    "as_source",
    "read_batch_file",
    "rebatch",
    "write_batch_file",
]

log = logging.getLogger(__name__)

#: One batch: ``{input_name: array}``, or a bare array for a model with one input.
Batch = Union[Mapping[str, np.ndarray], np.ndarray]  # noqa: UP007 (runtime alias, py3.10)
#: Any iterable of batches.
DataSource = Iterable[Batch]

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

    Steps, in this order: decode → convert to ``color`` → ``resize`` → ``center_crop`` →
    float32 → ``x * scale`` → ``(x - mean) / std`` (per channel) → ``layout``.

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

    Examples
    --------
    ImageNet in torchvision style, and TF-style ``(x - 127) / 128``:

    >>> imagenet = Preprocess(resize=256, center_crop=224, scale=1 / 255,
    ...                       mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    >>> tf_style = Preprocess(resize=(224, 224), mean=127.0, std=128.0)
    """

    resize: int | tuple[int, int] | None = None
    center_crop: int | tuple[int, int] | None = None
    color: str = "RGB"
    scale: float = 1.0
    mean: float | tuple[float, ...] = 0.0
    std: float | tuple[float, ...] = 1.0
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        color = str(self.color).upper()
        if color not in ("RGB", "BGR", "L"):
            raise DataSourceError(f"color must be RGB, BGR or L, got {self.color!r}")
        layout = str(self.layout).upper()
        if layout not in ("NCHW", "NHWC"):
            raise DataSourceError(f"layout must be NCHW or NHWC, got {self.layout!r}")
        std = _floats(self.std, "std")
        if std is not None and any(s == 0 for s in std):
            raise DataSourceError(f"std must not contain 0, got {self.std!r}")
        object.__setattr__(self, "color", color)
        object.__setattr__(self, "layout", layout)
        object.__setattr__(self, "resize", self.resize if isinstance(self.resize, (int, type(None)))
                           else _pair(self.resize, "resize"))
        object.__setattr__(self, "center_crop", _pair(self.center_crop, "center_crop"))
        object.__setattr__(self, "mean", _floats(self.mean, "mean"))
        object.__setattr__(self, "std", std)
        channels = 1 if color == "L" else 3
        for name in ("mean", "std"):
            vals = getattr(self, name)
            if len(vals) == 3 and channels == 1:
                raise DataSourceError(f"{name} has 3 values but color='L' has one channel")

    # -- configuration -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict (the config file format)."""
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> Preprocess:
        """Build from a dict with the constructor's keys (unknown keys are an error)."""
        known = {"resize", "center_crop", "color", "scale", "mean", "std", "layout"}
        unknown = set(config) - known
        if unknown:
            raise DataSourceError(
                f"unknown preprocessing keys {sorted(unknown)}; allowed: {sorted(known)}"
            )
        kw = dict(config)
        for k in ("resize", "center_crop"):
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
        """Decode one image file and return it prepared, without batch axis (CHW or HWC)."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im.load()
                img = im.convert("L" if self.color == "L" else "RGB")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DataSourceError(
                f"{path}: cannot decode the image ({exc.__class__.__name__}: {exc}); "
                "remove the file or convert it to PNG/JPEG"
            ) from exc
        return self.apply(img)

    def apply(self, img: Any) -> np.ndarray:
        """Prepare a decoded PIL image (mode ``RGB`` or ``L``); returns CHW or HWC float32."""
        from PIL import Image

        if self.resize is not None:
            w, h = img.size
            if isinstance(self.resize, int):
                short = min(w, h)
                nw, nh = round(w * self.resize / short), round(h * self.resize / short)
            else:
                nh, nw = self.resize
            if (nw, nh) != (w, h):
                img = img.resize((max(nw, 1), max(nh, 1)), Image.Resampling.BILINEAR)
        if self.center_crop is not None:
            ch, cw = _pair(self.center_crop, "center_crop") or (0, 0)
            w, h = img.size
            if ch > h or cw > w:
                raise DataSourceError(
                    f"center_crop {ch}x{cw} is larger than the resized image {h}x{w}; "
                    "resize to at least the crop size"
                )
            left, top = (w - cw) // 2, (h - ch) // 2
            img = img.crop((left, top, left + cw, top + ch))
        x = np.asarray(img, dtype=np.float32)
        if x.ndim == 2:
            x = x[:, :, None]
        if self.color == "BGR":
            x = x[:, :, ::-1]
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
# generic helpers
# ---------------------------------------------------------------------------------------
def as_source(
    obj: Any,
    *,
    preprocess: Preprocess | None = None,
    batch_size: int | None = None,
    input_name: str | None = None,
) -> DataSource:
    """Turn ``obj`` into a data source.

    Parameters
    ----------
    obj : path-like, numpy.ndarray, mapping or iterable
        - a folder or file: ``.npy``/``.npz`` → :class:`NpyFolder`; images →
          :class:`ImageFolder` (``preprocess`` required); otherwise sampleINT8 batch files →
          :class:`SampleInt8BatchFiles`;
        - an array: one batch for the model's only input (or ``input_name``);
        - a mapping ``{input_name: array}``: one batch;
        - any other iterable: returned as it is (each item a batch).
    preprocess : Preprocess, optional
        For image folders.
    batch_size : int, optional
        Images per batch for image folders; for other sources, re-cut with :func:`rebatch`.
    input_name : str, optional
        Name bare arrays feed.

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
        path = Path(obj)
        if not path.exists():
            raise DataSourceError(f"{path}: no such file or folder; give calibration data")
        files = [path] if path.is_file() else _list_files(
            path, None, what="files", hint="put calibration data there"
        )
        suffixes = {f.suffix.lower() for f in files}
        if suffixes & {".npy", ".npz"}:
            source = NpyFolder(path, input_name=input_name)
        elif suffixes & set(IMAGE_EXTENSIONS):
            if preprocess is None:
                raise DataSourceError(
                    f"{path} holds images: declare their preprocessing (--preprocess FILE, or "
                    "--resize/--crop/--color/--scale/--mean/--std/--layout; "
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
                f"(first file: {files[0]}); convert the data to one of these"
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
        return _Rebatched(source, batch_size)
    return source


class _Rebatched:
    """Re-iterable wrapper around :func:`rebatch`."""

    def __init__(self, source: DataSource, batch_size: int) -> None:
        if batch_size < 1:
            raise DataSourceError(f"batch_size must be >= 1, got {batch_size}")
        self.source = source
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[Batch]:
        return rebatch(self.source, self.batch_size)


def rebatch(source: DataSource, batch_size: int) -> Iterator[Batch]:
    """Re-cut a source into batches of ``batch_size`` samples along axis 0.

    Holds at most one output batch plus one input batch. Every input of a batch must have
    the same number of samples; the last batch may be smaller.

    Parameters
    ----------
    source : iterable
        Batches (dicts or bare arrays; not mixed).
    batch_size : int
        Samples per output batch.

    Yields
    ------
    dict or numpy.ndarray
        Batches of the same kind as the input.
    """
    if batch_size < 1:
        raise DataSourceError(f"batch_size must be >= 1, got {batch_size}")
    pending: list[dict[Any, np.ndarray]] = []
    have = 0
    bare = None
    for i, item in enumerate(source):
        is_bare = not isinstance(item, Mapping)
        if bare is None:
            bare = is_bare
        elif bare != is_bare:
            raise DataSourceError(f"batch {i}: mixes bare arrays and dicts; use one kind")
        d = (
            {None: np.asarray(item)}
            if is_bare
            else {k: np.asarray(v) for k, v in dict(item).items()}
        )
        sizes = {k: (v.shape[0] if v.ndim else None) for k, v in d.items()}
        if None in sizes.values() or len(set(sizes.values())) != 1:
            raise DataSourceError(
                f"batch {i}: cannot re-batch inputs with sample counts {sizes}; every input "
                "needs the same leading batch dimension"
            )
        n = int(next(iter(sizes.values())) or 0)
        pending.append(d)
        have += n
        while have >= batch_size:
            out, pending, have = _take(pending, batch_size, have)
            yield out[None] if bare else out
    if have:
        out = {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
        yield out[None] if bare else out


def _take(
    pending: list[dict[Any, np.ndarray]], n: int, have: int
) -> tuple[dict[Any, np.ndarray], list[dict[Any, np.ndarray]], int]:
    """Split the first ``n`` samples off ``pending``."""
    taken: list[dict[Any, np.ndarray]] = []
    need = n
    rest = list(pending)
    while need:
        head = rest[0]
        size = next(iter(head.values())).shape[0]
        if size <= need:
            taken.append(head)
            rest.pop(0)
            need -= size
        else:
            taken.append({k: v[:need] for k, v in head.items()})
            rest[0] = {k: v[need:] for k, v in head.items()}
            need = 0
    out = (
        taken[0]
        if len(taken) == 1
        else {k: np.concatenate([t[k] for t in taken]) for k in taken[0]}
    )
    return out, rest, have - n
