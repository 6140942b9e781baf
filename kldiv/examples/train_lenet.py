"""Train the embedded LeNet-5 on scikit-learn's digits and write the files kldiv ships.

This is the script that made ``lenet5_digits.onnx``, ``digits_calibration.npz`` and
``digits_eval.npz`` in this folder. It needs PyTorch (CPU) at build time only; the shipped
files need nothing but onnx/onnxruntime. Run it again with::

    python -m kldiv.examples.train_lenet --out-dir kldiv/examples --force

What it does, step by step:

1. ``sklearn.datasets.load_digits()``: 1,797 grey 8×8 images of the digits 0–9, pixel values
   0–16. Scaled to [0, 1] (``x / 16``), shaped ``N×1×8×8`` float32.
2. A stratified split with a fixed seed: 360 held-out images for evaluation, the rest for
   training. The calibration set is 256 images drawn from the *training* split (calibration
   data should look like deployment data but is never the evaluation data).
3. A LeNet-5-style CNN for 8×8 inputs (padding keeps the first two convolutions' spatial
   size)::

       conv1 3×3, 6 ch, pad 1 → relu1 → pool1 2×2 (4×4)
       conv2 3×3, 16 ch, pad 1 → relu2 → pool2 2×2 (2×2)
       flatten (64) → fc1 120 → relu3 → fc2 84 → relu4 → fc3 10 = logits

   trained with Adam (deterministic seed, one thread).
4. The trained weights are written into an ONNX graph built directly with ``onnx.helper``
   (opset 13, dynamic batch ``N``, every tensor named after its layer: ``conv1``, ``relu1``
   ... ``logits``), so the graph is exactly what this file says and needs no exporter. The
   script checks that onnxruntime reproduces PyTorch's logits before writing anything.
5. Files are written atomically; existing files are kept unless ``--force`` is given.

The held-out accuracy is stored in the ONNX model's metadata (``heldout_accuracy``), and the
test-suite checks that onnxruntime reproduces it from the shipped files.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import _CALIBRATION, _EVAL, _MODEL, INPUT_NAME, OUTPUT_NAME

__all__ = [
    "INPUT_NAME",
    "N_CALIBRATION",
    "N_EVAL",
    "OPSET",
    "OUTPUT_NAME",
    "SEED",
    "TrainResult",
    "build_onnx",
    "load_split",
    "main",
    "train",
]

#: ONNX opset of the shipped model.
OPSET = 13
#: Seed of the split, the initial weights and the batch order.
SEED = 0
#: Training epochs of the shipped model.
EPOCHS = 40
#: Held-out images used for evaluation.
N_EVAL = 360
#: Training images shipped as calibration data.
N_CALIBRATION = 256

MODEL_FILE = _MODEL
CALIBRATION_FILE = _CALIBRATION
EVAL_FILE = _EVAL


def load_split(seed: int = SEED) -> dict[str, np.ndarray]:
    """Return the digits data split into train / eval / calibration arrays.

    Returns
    -------
    dict
        ``x_train, y_train, x_eval, y_eval, x_cal`` (images ``N×1×8×8`` float32 in [0, 1],
        labels int64).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / np.float32(16.0))[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_eval, y_train, y_eval = train_test_split(
        x, y, test_size=N_EVAL, stratify=y, random_state=seed
    )
    rng = np.random.default_rng(seed)
    cal_idx = rng.choice(len(x_train), size=N_CALIBRATION, replace=False)
    return {
        "x_train": np.ascontiguousarray(x_train),
        "y_train": y_train,
        "x_eval": np.ascontiguousarray(x_eval),
        "y_eval": y_eval,
        "x_cal": np.ascontiguousarray(x_train[np.sort(cal_idx)]),
    }


@dataclass
class TrainResult:
    """Trained weights (numpy, keyed like ``conv1.weight``) and held-out accuracy."""

    weights: dict[str, np.ndarray]
    accuracy: float
    epochs: int


def train(split: dict[str, np.ndarray], *, seed: int = SEED, epochs: int = EPOCHS) -> TrainResult:
    """Train the LeNet-5 with PyTorch (CPU) and return its weights and held-out accuracy."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    model = nn.Sequential()
    model.add_module("conv1", nn.Conv2d(1, 6, 3, padding=1))
    model.add_module("relu1", nn.ReLU())
    model.add_module("pool1", nn.MaxPool2d(2))
    model.add_module("conv2", nn.Conv2d(6, 16, 3, padding=1))
    model.add_module("relu2", nn.ReLU())
    model.add_module("pool2", nn.MaxPool2d(2))
    model.add_module("flatten", nn.Flatten())
    model.add_module("fc1", nn.Linear(64, 120))
    model.add_module("relu3", nn.ReLU())
    model.add_module("fc2", nn.Linear(120, 84))
    model.add_module("relu4", nn.ReLU())
    model.add_module("fc3", nn.Linear(84, 10))

    xt = torch.from_numpy(split["x_train"])
    yt = torch.from_numpy(split["y_train"])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.split(torch.randperm(len(xt), generator=gen), 32):
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(split["x_eval"])).argmax(1).numpy()
    accuracy = float((pred == split["y_eval"]).mean())
    weights = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    return TrainResult(weights=weights, accuracy=accuracy, epochs=epochs)


def build_onnx(weights: dict[str, np.ndarray], *, metadata: dict[str, str] | None = None) -> Any:
    """Return the LeNet-5 as an ``onnx.ModelProto`` holding ``weights`` as initializers."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node(
            "Conv",
            [INPUT_NAME, "conv1.weight", "conv1.bias"],
            ["conv1"],
            name="conv1",
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        helper.make_node(
            "MaxPool", ["relu1"], ["pool1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]
        ),
        helper.make_node(
            "Conv",
            ["pool1", "conv2.weight", "conv2.bias"],
            ["conv2"],
            name="conv2",
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
        helper.make_node(
            "MaxPool", ["relu2"], ["pool2"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]
        ),
        helper.make_node("Flatten", ["pool2"], ["flatten"], name="flatten", axis=1),
        helper.make_node(
            "Gemm", ["flatten", "fc1.weight", "fc1.bias"], ["fc1"], name="fc1", transB=1
        ),
        helper.make_node("Relu", ["fc1"], ["relu3"], name="relu3"),
        helper.make_node(
            "Gemm", ["relu3", "fc2.weight", "fc2.bias"], ["fc2"], name="fc2", transB=1
        ),
        helper.make_node("Relu", ["fc2"], ["relu4"], name="relu4"),
        helper.make_node(
            "Gemm", ["relu4", "fc3.weight", "fc3.bias"], [OUTPUT_NAME], name="fc3", transB=1
        ),
    ]
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), name=k) for k, v in weights.items()]
    graph = helper.make_graph(
        nodes,
        "lenet5_digits",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="kldiv.examples.train_lenet",
        doc_string="LeNet-5-style CNN trained on scikit-learn's digits (8x8, x/16).",
    )
    model.ir_version = 8  # readable by every onnxruntime that supports opset 13
    if metadata:
        helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    return model


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    savez: Callable[..., None] = np.savez_compressed  # **arrays: names, not its keywords
    savez(buf, **arrays)
    return buf.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    """Train, check against onnxruntime, and write the three shipped files."""
    import onnxruntime as ort

    from kldiv._io import atomic_write_bytes, check_writable

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    args = parser.parse_args(argv)

    out = args.out_dir
    for name in (MODEL_FILE, CALIBRATION_FILE, EVAL_FILE):
        check_writable(out / name, force=args.force)

    split = load_split(args.seed)
    result = train(split, seed=args.seed, epochs=args.epochs)
    model = build_onnx(
        result.weights,
        metadata={
            "heldout_accuracy": f"{result.accuracy:.6f}",
            "heldout_images": str(N_EVAL),
            "seed": str(args.seed),
            "epochs": str(result.epochs),
            "preprocessing": "sklearn load_digits images / 16, N x 1 x 8 x 8 float32",
        },
    )
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = sess.run([OUTPUT_NAME], {INPUT_NAME: split["x_eval"]})[0]
    ort_acc = float((logits.argmax(1) == split["y_eval"]).mean())
    if ort_acc != result.accuracy:
        raise RuntimeError(f"onnxruntime accuracy {ort_acc} != torch accuracy {result.accuracy}")

    atomic_write_bytes(out / MODEL_FILE, model.SerializeToString(), force=args.force)
    atomic_write_bytes(
        out / CALIBRATION_FILE, _npz_bytes(**{INPUT_NAME: split["x_cal"]}), force=args.force
    )
    atomic_write_bytes(
        out / EVAL_FILE, _npz_bytes(x=split["x_eval"], y=split["y_eval"]), force=args.force
    )
    print(f"held-out accuracy {result.accuracy:.4f} on {N_EVAL} images; wrote {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
