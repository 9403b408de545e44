"""End-to-end check of torchvision's weight files in zoo: for each tv model, torchvision's own
module with seeded random weights (and random BatchNorm statistics) is saved in every form
torchvision's files come in (zip `.pth`, the legacy pre-1.6 stream format, `.safetensors`,
DataParallel's `module.` prefix, DenseNet's pre-0.3 keys, GoogLeNet with its aux heads), then
`zoo convert` + `zoo predict --json` run on one photo, and zoo's logits and top-5 are compared
with torchvision's own pipeline (PIL image, `weights.transforms()`: Resize(256) bilinear
antialiased, CenterCrop(224), ImageNet normalisation).

No real ImageNet weights can be fetched here: random weights in the real file forms are the
check. Run (needs torch, torchvision, safetensors and a release build of zoo):
    cargo build --release -p zoo-cli
    python scripts/tv_weights_check.py [--image PHOTO.jpg] [--only tv-resnet18,...]
Prints one line per model and form: the largest relative logit difference and whether the
top-5 agree; exits 1 if, for a lossless image (PNG; the default is a random one), any form is
off by more than 1e-4 or has another top-5. JPEG photos are decoded by different libraries
(Pillow's libjpeg-turbo, the Rust `image` crate's own decoder), which differ by a level at some
pixels: there the logits differ by about 1e-3, and random weights leave near-ties among the
top classes, so a JPEG passes with the same top-5 or one whose order differs only between
classes closer than twice the logit difference (`near-tie`).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import torch
import torchvision
from PIL import Image
from torchvision import transforms as T

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ZOO = os.path.join(ROOT, "target/release/zoo")

MODELS = {
    "tv-alexnet": "alexnet",
    "tv-vgg11": "vgg11",
    "tv-vgg11-bn": "vgg11_bn",
    "tv-vgg16": "vgg16",
    "tv-vgg16-bn": "vgg16_bn",
    "tv-googlenet": "googlenet",
    "tv-resnet18": "resnet18",
    "tv-resnet34": "resnet34",
    "tv-resnet50": "resnet50",
    "tv-resnet101": "resnet101",
    "tv-resnet152": "resnet152",
    "tv-densenet121": "densenet121",
    "tv-densenet169": "densenet169",
    "tv-densenet201": "densenet201",
}


def build(fn):
    """torchvision's module as its weights build it, with seeded random weights."""
    torch.manual_seed(0)
    if fn == "googlenet":
        # The published file carries the (untrained) aux heads; the model drops them.
        model = torchvision.models.googlenet(aux_logits=True, transform_input=True, init_weights=True)
    else:
        model = getattr(torchvision.models, fn)()
    g = torch.Generator().manual_seed(1)
    for name, buf in model.named_buffers():
        if name.endswith("running_mean"):
            buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
        elif name.endswith("running_var"):
            buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
    for name, p in model.named_parameters():
        if ".bn" in name or "norm" in name or name.endswith("bn.weight"):
            with torch.no_grad():
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def legacy_densenet_keys(state):
    """DenseNet's pre-0.3 key names (`norm1` -> `norm.1`), which torchvision's loader renames."""
    pattern = re.compile(r"^(.*denselayer\d+\.)(norm|relu|conv)([12])\.(weight|bias|running_mean|running_var)$")
    return {pattern.sub(r"\1\2.\3.\4", k): v for k, v in state.items()}


def forms(name, state, tmp):
    """Every file form of `state` that zoo should read, as (label, path)."""
    out = []
    path = os.path.join(tmp, "zip.pth")
    torch.save(state, path)
    out.append(("zip .pth", path))
    path = os.path.join(tmp, "legacy.pth")
    torch.save(state, path, _use_new_zipfile_serialization=False)
    out.append(("legacy .pth", path))
    from safetensors.torch import save_file
    path = os.path.join(tmp, "plain.safetensors")
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    out.append(("safetensors", path))
    path = os.path.join(tmp, "module.pth")
    torch.save({"module." + k: v for k, v in state.items()}, path)
    out.append(("module. prefix", path))
    if name.startswith("tv-densenet"):
        path = os.path.join(tmp, "densenet_legacy_keys.pth")
        torch.save(legacy_densenet_keys(state), path, _use_new_zipfile_serialization=False)
        out.append(("legacy DenseNet keys", path))
    return out


def compare_top5(zoo_names, zoo_logits, logits, classes):
    """zoo's printed top-5 against torchvision's: `same`, `near-tie` (the order differs only
    between classes whose torchvision logits are closer than twice the largest logit
    difference), or `DIFFERENT`."""
    want = logits.topk(5).indices.tolist()
    if zoo_names == [classes[i] for i in want]:
        return "same"
    got = zoo_logits.topk(5).indices.tolist()
    diff = float((zoo_logits - logits).abs().max())
    if all(abs(float(logits[g] - logits[w])) <= 2 * diff for g, w in zip(got, want)):
        return "near-tie"
    return "DIFFERENT"


def zoo_predict(name, weights, image, tmp):
    ckpt = os.path.join(tmp, "zoo.safetensors")
    subprocess.run([ZOO, "convert", "--model", name, weights, ckpt], check=True, capture_output=True)
    out = subprocess.run([ZOO, "predict", "--checkpoint", ckpt, image, "--json"], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)[0]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", default=None)
    parser.add_argument("--only", default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    names = args.only.split(",") if args.only else list(MODELS)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        image = args.image
        if image is None:
            image = os.path.join(tmp, "photo.png")
            torch.manual_seed(3)
            pixels = (torch.rand(375, 500, 3) * 255).byte().numpy()
            Image.fromarray(pixels).resize((500, 375)).save(image)
        lossless = not image.lower().endswith((".jpg", ".jpeg"))
        preprocess = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                                T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
        x = preprocess(Image.open(image).convert("RGB")).unsqueeze(0)
        classes = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"]
        for name in names:
            model = build(MODELS[name])
            with torch.no_grad():
                logits = model(x)
                if isinstance(logits, tuple):
                    logits = logits[0]
                logits = logits[0]
            for label, path in forms(name, model.state_dict(), tmp):
                got = zoo_predict(name, path, image, tmp)
                zl = torch.tensor(got["logits"])
                err = float((zl - logits).abs().max() / logits.abs().max())
                top5 = compare_top5([c for c, _ in got["top5"]], zl, logits, classes)
                ok = (top5 == "same" and err <= 1e-4) if lossless else top5 != "DIFFERENT"
                failures += not ok
                print(f"{name:15} {label:22} logits rel err {err:.2e}  top-5 {top5}"
                      f"{'' if ok else '  FAIL'}", flush=True)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, image {args.image or 'random 500x375'}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
