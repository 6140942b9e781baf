"""The data options shared by the commands that run a model.

``kldiv calibrate``, ``kldiv evaluate`` and ``kldiv-trt crosscheck`` take them: where the
data is, how images are prepared, how batches are cut.

Anything that calibrates also evaluates: the same flags, the same config file, the same
sources (:func:`kldiv.data.as_source`).
"""

from __future__ import annotations

import argparse
from typing import Any

from . import whole_number_arg

__all__ = [
    "add_data_options",
    "batch_axes_from_args",
    "check_data_args",
    "preprocess_from_args",
    "source_from_args",
]


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None


def _size(text: str) -> int | tuple[int, int]:
    try:
        parts = [int(t) for t in text.lower().replace("x", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or H,W, got {text!r}") from None
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return (parts[0], parts[1])
    raise argparse.ArgumentTypeError(f"expected N or H,W, got {text!r}")


def _count_of(option: str) -> Any:
    """An argparse type for ``--batch-size``/``--max-batches``.

    The same check (and message) as the Python API's (:func:`kldiv._checks.check_count`).
    """
    def count(text: str) -> int:
        from .._checks import check_count
        from ..errors import PresetError

        value = whole_number_arg(text)
        try:
            checked = check_count(option.lstrip("-").replace("-", "_"), value, option=option)
        except PresetError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        assert checked is not None
        return checked

    return count


def add_data_options(
    p: argparse.ArgumentParser, *, data_help: str = "the data", batch_size_help: str | None = None
) -> None:
    """Add ``--data``, ``--data-loader-script``, batching and image-preprocessing options."""
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        help=f"{data_help}: a folder or file of .npy/.npz (one batch per file; .npz keys are "
        "input names), images (declare the preprocessing below), or TensorRT sampleINT8 batch "
        "files. One kind per folder",
    )
    g.add_argument(
        "--data-loader-script", metavar="FILE.py[:FUNC]",
        help="a Python file whose function (default load_data) returns or yields "
        "{input_name: array} dicts, one per batch (Polygraphy's convention); instead of --data",
    )
    g.add_argument(
        "--batch-size", type=_count_of("--batch-size"), default=None,
        help=batch_size_help or "samples per batch (images per batch for image folders); "
        "other sources are re-cut along each input's batch axis",
    )
    g.add_argument("--max-batches", type=_count_of("--max-batches"), default=None,
                   help="use only the first N batches (N >= 1)")
    g.add_argument(
        "--batch-axis", action="append", default=[], metavar="NAME=AXIS",
        help="an input's batch axis (repeatable); NAME=none for an input that is not batched "
        "(recurrent state, a scalar), fed as given. Default: inferred from the model (the "
        "symbolic dimension the inputs share)",
    )
    g.add_argument("--input-name", default=None,
                   help="the input that bare arrays (.npy files, images) feed; default: the "
                   "model's only input")
    pre = p.add_argument_group(
        "image preprocessing (image folders only; flags override --preprocess)"
    )
    pre.add_argument("--preprocess", metavar="FILE",
                     help="JSON/TOML file with the keys below (resize, center_crop, letterbox, "
                     "pad_to, pad_value, pad_position, color, scale, mean, std, layout)")
    pre.add_argument("--resize", type=_size, help="N (shorter side) or H,W")
    pre.add_argument("--crop", type=_size, help="center crop N or H,W")
    pre.add_argument("--letterbox", type=_size, metavar="H,W",
                     help="resize to fit inside H,W keeping the aspect ratio, then pad to H,W")
    pre.add_argument("--pad-to", type=_size, metavar="H,W",
                     help="pad (never resize) to H,W after resize/crop")
    pre.add_argument("--pad-value", type=_floats, metavar="V[,V,V]",
                     help="padding in pixel units 0-255, before --scale/--mean/--std "
                     "(default 0; 127.5 is 0 after (x/255-0.5)/0.5)")
    pre.add_argument("--pad-position", choices=("center", "top-left"),
                     help="image centered in the padding (default) or in the top-left corner")
    pre.add_argument("--color", choices=("RGB", "BGR", "L"), help="channel order (default RGB)")
    pre.add_argument("--scale", type=float, help="multiply pixels (0-255) by this first")
    pre.add_argument("--mean", type=_floats, help="subtract, per channel: 0.485,0.456,0.406")
    pre.add_argument("--std", type=_floats, help="then divide, per channel")
    pre.add_argument("--layout", choices=("NCHW", "NHWC"), help="default NCHW")


def preprocess_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~kldiv.data.Preprocess` the flags (and ``--preprocess`` file) declare.

    ``None`` when none is given.
    """
    from ..data import Preprocess

    keys = {
        "resize": args.resize, "center_crop": args.crop, "letterbox": args.letterbox,
        "pad_to": args.pad_to, "pad_value": args.pad_value, "pad_position": args.pad_position,
        "color": args.color, "scale": args.scale, "mean": args.mean, "std": args.std,
        "layout": args.layout,
    }
    given = {k: v for k, v in keys.items() if v is not None}
    if args.preprocess:
        base = Preprocess.from_file(args.preprocess).to_dict()
        base.update(given)
        return Preprocess.from_dict(base)
    return Preprocess.from_dict(given) if given else None


def batch_axes_from_args(args: argparse.Namespace) -> dict[str, int | None]:
    """The ``--batch-axis`` declarations, parsed (names are checked against the model later)."""
    from ..data import parse_batch_axes

    return parse_batch_axes(args.batch_axis)


def check_data_args(args: argparse.Namespace, *, required: bool = True) -> None:
    """Refuse contradictory or missing data options (before anything runs)."""
    from ..errors import DataSourceError

    if args.data and args.data_loader_script:
        raise DataSourceError("give --data or --data-loader-script, not both")
    if required and not (args.data or args.data_loader_script):
        raise DataSourceError("give the data: --data PATH or --data-loader-script FILE.py[:FUNC]")


def source_from_args(
    args: argparse.Namespace, *, batch_axes: Any = None, limit: bool = True
) -> Any:
    """The data source the options describe.

    ``None`` when neither ``--data`` nor ``--data-loader-script`` is given.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed options of :func:`add_data_options`.
    batch_axes : mapping, optional
        The model's batch axes (declared and inferred), used when re-cutting batches.
    limit : bool
        Apply ``--max-batches`` here (``False`` when the caller applies it itself).
    """
    from ..data import ScriptSource, as_source, take_batches

    check_data_args(args, required=False)
    preprocess = preprocess_from_args(args)
    if args.data_loader_script:
        source: Any = ScriptSource(args.data_loader_script)
        if args.batch_size is not None:
            source = as_source(source, batch_size=args.batch_size, batch_axes=batch_axes)
    elif args.data:
        source = as_source(args.data, preprocess=preprocess, batch_size=args.batch_size,
                           input_name=args.input_name, batch_axes=batch_axes)
    else:
        return None
    return take_batches(source, args.max_batches) if limit else source


def _inputs_without_onnx(model: Any) -> dict[str, tuple[int | str | None, ...]] | None:
    """The graph inputs' shapes of a binary model file, read by :mod:`kldiv._onnx_wire`.

    ``None`` for anything that reader does not handle (onnx then reads it, with its errors).
    """
    import os
    from pathlib import Path

    from .. import _onnx_wire as wire

    if not isinstance(model, (str, os.PathLike)) or Path(model).suffix.lower() != ".onnx":
        return None
    try:
        graph = wire.read_model(Path(model).read_bytes()).graph
    except (OSError, wire.WireFormatError):
        return None
    if not graph.input and not graph.node:
        return None
    inits = {t.name for t in graph.initializer}
    return {vi.name: vi.dims or () for vi in graph.input if vi.name not in inits}


def model_batch_axes(model: Any, declared: Any = None) -> dict[str, int | None]:
    """Each input's batch axis for an ONNX model file.

    From its graph inputs (weights are not loaded) and ``--batch-axis`` declarations (see
    :func:`kldiv.data.infer_batch_axes`).

    Raises
    ------
    DataSourceError
        For a declared name that is not an input, or an axis it does not have.
    ModelError
        If the file is not an ONNX model.
    """
    import os

    from ..data import infer_batch_axes
    from ..errors import ModelError

    wire = _inputs_without_onnx(model)
    if wire is not None:
        return infer_batch_axes(wire, declared)
    import onnx

    if isinstance(model, onnx.ModelProto):
        proto = model
    else:
        try:
            proto = onnx.load(os.fspath(model), load_external_data=False)
        except FileNotFoundError:
            raise ModelError(f"{model}: model file not found; give the path of an .onnx file") from None
        except Exception as exc:
            raise ModelError(
                f"{model}: cannot load it as an ONNX model ({exc.__class__.__name__}: {exc})"
            ) from exc
    inits = {t.name for t in proto.graph.initializer}
    shapes: dict[str, tuple[int | str | None, ...]] = {}
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim if vi.type.HasField("tensor_type") else []
        shapes[vi.name] = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims
        )
    return infer_batch_axes(shapes, declared)
