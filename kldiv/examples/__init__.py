"""The embedded example: a LeNet-5 trained on scikit-learn's digits, with its data.

Shipped as package data (well under 1 MB), made by :mod:`kldiv.examples.train_lenet`:

- ``lenet5_digits.onnx``: opset 13, input :data:`INPUT_NAME` (``N×1×8×8`` float32, pixel
  values ``/16`` so in [0, 1]), output :data:`OUTPUT_NAME` (``N×10`` logits), dynamic batch,
  every tensor named after its layer (``conv1``, ``relu1``, ``pool1`` ... ``fc3``).
  Held-out accuracy is in the model's metadata (:func:`lenet_heldout_accuracy`).
- ``digits_calibration.npz``: 256 training images under the model's input name (``input``), so
  ``kldiv calibrate lenet5_digits.onnx --data digits_calibration.npz`` works as it is.
- ``digits_eval.npz``: the 360 held-out images (``x``) and their labels (``y``).

Examples
--------
>>> from kldiv.examples import lenet_calibration_data, INPUT_NAME
>>> batches = lenet_calibration_data()
>>> len(batches), batches[0][INPUT_NAME].shape
(32, (8, 1, 8, 8))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..defaults import DEFAULT_BATCH_SIZE

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "lenet_calibration_data",
    "lenet_eval_data",
    "lenet_heldout_accuracy",
    "lenet_model_path",
]

#: Name of the LeNet's input tensor (``N×1×8×8`` float32 in [0, 1]).
INPUT_NAME = "input"
#: Name of the LeNet's output tensor (``N×10`` logits).
OUTPUT_NAME = "logits"

_HERE = Path(__file__).resolve().parent
_MODEL = "lenet5_digits.onnx"
_CALIBRATION = "digits_calibration.npz"
_EVAL = "digits_eval.npz"


def _file(name: str) -> Path:
    path = _HERE / name
    if not path.is_file():
        raise FileNotFoundError(
            f"the embedded example file {path} is missing; reinstall kldiv, or recreate it with "
            "`python -m kldiv.examples.train_lenet --force` (needs torch)"
        )
    return path


def _batches(x: np.ndarray, batch_size: int) -> list[dict[str, np.ndarray]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [{INPUT_NAME: x[i : i + batch_size]} for i in range(0, len(x), batch_size)]


def lenet_model_path() -> Path:
    """Return the path of the shipped ONNX model ``lenet5_digits.onnx``."""
    return _file(_MODEL)


def lenet_calibration_data(batch_size: int = DEFAULT_BATCH_SIZE) -> list[dict[str, np.ndarray]]:
    """Return the 256 calibration images as batches ``{INPUT_NAME: array}``.

    Parameters
    ----------
    batch_size : int, optional
        Images per batch (default 8, giving 32 batches); the last batch may be smaller.

    Returns
    -------
    list of dict
        Each ``{INPUT_NAME: float32 array of shape (b, 1, 8, 8)}``.
    """
    with np.load(_file(_CALIBRATION), allow_pickle=False) as f:
        x = f[INPUT_NAME]
    return _batches(x, batch_size)


def lenet_eval_data(
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Return the 360 held-out images as batches, and their labels.

    Parameters
    ----------
    batch_size : int, optional
        Images per batch (default 8, giving 45 batches).

    Returns
    -------
    batches : list of dict
        Each ``{INPUT_NAME: float32 array of shape (b, 1, 8, 8)}``.
    labels : numpy.ndarray
        int64 labels 0–9, one per image, in batch order.
    """
    with np.load(_file(_EVAL), allow_pickle=False) as f:
        x, y = f["x"], f["y"]
    return _batches(x, batch_size), y


def lenet_heldout_accuracy() -> float:
    """Return the held-out accuracy recorded in the model's metadata when it was trained."""
    import onnx

    model = onnx.load(str(lenet_model_path()), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    return float(props["heldout_accuracy"])
