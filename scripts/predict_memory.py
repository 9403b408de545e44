"""Peak memory of one 224 px image's prediction: `zoo predict` against ONNX Runtime running the
file `zoo export` wrote, each in a process of its own, measured by `/usr/bin/time` (maximum
resident set size). The networks are torchvision's with seeded random weights (converted with
`zoo convert`), so no download is needed; the memory does not depend on the values. The ONNX
Runtime process is what a Python user would deploy: onnxruntime, numpy and Pillow, no torch;
2 intra-op threads, the default arena. Both processes must agree on the top class.

Run (needs torch, torchvision, onnx, onnxruntime and Pillow, and a release build of zoo):
    cargo build --release -p zoo-cli
    python scripts/predict_memory.py [--only tv-resnet18,...]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
from onnx_check import ZOO, randomised  # noqa: E402

MODELS = ["tv-alexnet", "tv-vgg16", "tv-googlenet", "tv-resnet18", "tv-resnet50",
          "tv-densenet121"]

# The ONNX Runtime side: the image prepared by the evaluation transform the file's metadata
# carries (resize, or resize the shorter side and centre-crop; then the mean and std), one run;
# prints the top class.
ORT_PREDICT = """
import json, sys
import numpy as np, onnxruntime as ort
from PIL import Image
path, image = sys.argv[1], sys.argv[2]
options = ort.SessionOptions()
options.intra_op_num_threads = 2
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map
mean, std = np.array(json.loads(meta["mean"])), np.array(json.loads(meta["std"]))
t = json.loads(meta["eval_transform"])
img = Image.open(image).convert("RGB")
if t.get("resize_shorter"):
    scale = t["resize_shorter"] / min(img.size)
    img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), Image.BILINEAR)
    left, top = (img.size[0] - t["width"]) // 2, (img.size[1] - t["height"]) // 2
    img = img.crop((left, top, left + t["width"], top + t["height"]))
else:
    img = img.resize((t["width"], t["height"]), Image.BILINEAR)
x = np.asarray(img)
x = ((x / 255.0 - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)
print(int(session.run(["logits"], {"images": x})[0][0].argmax()))
"""


def peak_mib(command, env):
    """(maximum RSS in MiB, stdout) of `command` under /usr/bin/time."""
    out = subprocess.run(["/usr/bin/time", "-f", "PEAK_KB %M"] + command, env=env,
                         capture_output=True, text=True, check=True)
    kb = [line for line in out.stderr.splitlines() if line.startswith("PEAK_KB")][-1]
    return int(kb.split()[1]) / 1024, out.stdout


def measure(name, tmp, env):
    import torch
    model, _ = randomised(name, 224)
    weights, ckpt = os.path.join(tmp, "w.pth"), os.path.join(tmp, "zoo.safetensors")
    onnx_path, image = os.path.join(tmp, "model.onnx"), os.path.join(tmp, "image.jpg")
    torch.save(model.state_dict(), weights)
    subprocess.run([ZOO, "convert", "--model", name, weights, ckpt], check=True,
                   capture_output=True)
    subprocess.run([ZOO, "export", "--checkpoint", ckpt, "--onnx", onnx_path], check=True,
                   capture_output=True)
    # An image the transform does not resize (its shorter side already the size it resizes to),
    # so both sides see the same pixels: random weights leave the logits close together.
    meta = {p.key: p.value for p in onnx.load(onnx_path).metadata_props}
    side = json.loads(meta["eval_transform"]).get("resize_shorter") or 224
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image, quality=95)
    zoo_mib, zoo_out = peak_mib([ZOO, "predict", "--json", "--device", "cpu", "--checkpoint",
                                 ckpt, image], env)
    ort_mib, ort_out = peak_mib([sys.executable, "-c", ORT_PREDICT, onnx_path, image], env)
    zoo_top = int(np.argmax(json.loads(zoo_out)[0]["logits"]))
    return zoo_mib, ort_mib, zoo_top == int(ort_out.strip()), os.path.getsize(ckpt) / 2**20


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default=None)
    args = parser.parse_args()
    models = args.only.split(",") if args.only else MODELS
    env = dict(os.environ, RAYON_NUM_THREADS="2", OMP_NUM_THREADS="2")
    cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    print(f"CPU: {cpu}; peak resident memory of one 224 px prediction, MiB")
    imports = "import numpy, onnxruntime; from PIL import Image"
    baseline, _ = peak_mib([sys.executable, "-c", imports], env)
    print(f"(the ONNX Runtime process's Python, numpy, onnxruntime and Pillow alone: {baseline:.0f})")
    print("| model | weights MiB | zoo predict | ONNX Runtime | zoo/ORT | same top class |")
    print("|---|---:|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            zoo_mib, ort_mib, same, weights = measure(name, tmp, env)
            print(f"| `{name}` | {weights:.0f} | {zoo_mib:.0f} | {ort_mib:.0f} | "
                  f"{zoo_mib / ort_mib:.2f} | {'yes' if same else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
