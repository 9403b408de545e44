"""`zoo export` checked by ONNX Runtime against PyTorch: for every registry model, PyTorch's
module (the notebook's definitions from scripts/parity.py, torchvision's for the `tv-` models)
with seeded random weights and random BatchNorm statistics is saved as a state dict, converted
(`zoo convert`), exported (`zoo export`), and the `.onnx` file run by ONNX Runtime at batch 1
and 3; its logits must equal PyTorch's evaluation-mode logits within 1e-5 relative (largest
difference over the largest logit). Also checks the file's contract: opset 17, `images` ->
`logits` with a symbolic batch, and the metadata.

Run (needs torch, torchvision, onnx and onnxruntime, and a release build of zoo):
    cargo build --release -p zoo-cli
    python scripts/onnx_check.py [--only tv-resnet50,...]
Exits 1 if any model is off.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_torch import build  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ZOO = os.path.join(ROOT, "target/release/zoo")

# Registry name -> export side: the notebook's networks at the `cpu` preset sizes, torchvision's
# at ImageNet's 224 (where AlexNet's and VGG's adaptive pooling is expressible).
NOTEBOOK = {"alexnet": 65, "vgg11": 32, "vgg11-small": 32, "nin": 67, "nin-mnist": 67,
            "googlenet": 32, "resnet18": 32, "resnet34": 32, "densenet": 32}
TORCHVISION = ["tv-alexnet", "tv-vgg11", "tv-vgg11-bn", "tv-vgg16", "tv-vgg16-bn", "tv-googlenet",
               "tv-resnet18", "tv-resnet34", "tv-resnet50", "tv-resnet101", "tv-resnet152",
               "tv-densenet121", "tv-densenet169", "tv-densenet201"]


def randomised(name, size):
    """The PyTorch module with random running statistics (so BatchNorm is not the identity)."""
    torch.manual_seed(0)
    model, c = build(name, size)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, buf in model.named_buffers():
            if key.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.2)
            elif key.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
    return model.eval(), c


def check(name, size, tmp):
    model, c = randomised(name, size)
    weights = os.path.join(tmp, "weights.pth")
    torch.save(model.state_dict(), weights)
    ckpt = os.path.join(tmp, "zoo.safetensors")
    convert = [ZOO, "convert", "--model", name, weights, ckpt]
    if not name.startswith("tv-"):
        convert += ["--input-size", str(size)]
    subprocess.run(convert, check=True, capture_output=True)
    path = os.path.join(tmp, "model.onnx")
    subprocess.run([ZOO, "export", "--checkpoint", ckpt, "--onnx", path], check=True, capture_output=True)
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    assert proto.opset_import[0].version == 17
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["model"] == name and len(json.loads(meta["classes"])) > 0
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (1, 3):
        x = torch.rand(batch, c, size, size, generator=torch.Generator().manual_seed(batch)) * 2 - 1
        with torch.no_grad():
            want = model(x).numpy()
        got = session.run(["logits"], {"images": x.numpy()})[0]
        worst = max(worst, float(np.abs(got - want).max() / np.abs(want).max()))
    return worst


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    cases = list(NOTEBOOK.items()) + [(n, 224) for n in TORCHVISION]
    if args.only:
        cases = [(n, s) for n, s in cases if n in args.only.split(",")]
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, size in cases:
            err = check(name, size, tmp)
            ok = err <= 1e-5
            failures += not ok
            print(f"{name:15} {size:4} px  ONNX Runtime vs PyTorch logits rel err {err:.2e}"
                  f"{'' if ok else '  FAIL'}", flush=True)
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, onnx {onnx.__version__}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
