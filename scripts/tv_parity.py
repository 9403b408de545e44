"""Parity fixtures for torchvision's networks, one per family crate: each network built as
`torchvision.models` builds it for its ImageNet weights, with 10 classes (GoogLeNet:
`googlenet(num_classes=10, aux_logits=False, transform_input=True, init_weights=False)`), its
weights from the formula of `scripts/parity.py` (keyed by torchvision's state-dict names, which
are zoo's), run on the formula input in eval and in train mode. The training-mode pass leaves the
Dropout modules in evaluation (the identity): zoo draws its masks from another generator, so the
Rust tests build the same network with dropout 0 for that pass.

A fixture (`crates/zoo-<family>/tests/fixtures/tv_<family>.json`) holds per network the logits
of both passes, the sum of every BatchNorm running statistic after the training pass and (all
families but ResNet, whose test checks names by hand) the state dict's names and shapes, without
the `num_batches_tracked` buffers, which zoo has none of: as a tree of module paths
(`{"features": {"0": {"weight": [64, 3, 11, 11], ...}}}`), and as the count and FNV-1a digest
of its sorted `name:d0,d1,..` lines (`zoo_nn::testing::state_dict_digest`). DenseNet-169 and
-201 record the digest only, without the tree and the running sums (together 110 KB of JSON for
1,852 tensors, built by the same code as DenseNet-121's, which the fixture details).

Input sizes: ResNet and DenseNet 128 px (at 64 px their last stages normalise eight values per
channel in training mode, where the deepest ResNets drift apart by float rounding alone);
AlexNet 128 px (3x3 maps before its 6x6 adaptive pooling, which upsamples); VGG 96 px (3x3 maps
into its 7x7 adaptive pooling); GoogLeNet 100 px (odd lengths, so that its ceil-mode poolings
round up where floor mode would not).

Run: python scripts/tv_parity.py [family ...]  (needs torch and torchvision; every family by
default; only to regenerate the fixtures, which `cargo test -p zoo-<family>` compares with).
"""
import json
import os
import sys

import torch
import torchvision
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from parity import fill, fnv1a, inputs  # noqa: E402

# family: networks, input size, whether the state dict's names and shapes are recorded, and the
# networks whose tree and running sums are (None: all)
FAMILIES = {
    "resnet": (["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"], 128, False, None),
    "alexnet": (["alexnet"], 128, True, None),
    "vgg": (["vgg11", "vgg11_bn", "vgg16", "vgg16_bn"], 96, True, None),
    "googlenet": (["googlenet"], 100, True, None),
    "densenet": (["densenet121", "densenet169", "densenet201"], 128, True, ["densenet121"]),
}


def build(name):
    if name == "googlenet":
        return torchvision.models.googlenet(
            num_classes=10, aux_logits=False, transform_input=True, init_weights=False
        )
    return getattr(torchvision.models, name)(num_classes=10)


def state_tree(model):
    """The state dict's shapes nested by module path, `num_batches_tracked` left out."""
    tree = {}
    for key, t in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        *path, leaf = key.split(".")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = list(t.shape)
    return tree


def state_digest(model):
    """The count and FNV-1a digest of the sorted `name:d0,d1,..` lines of the state dict."""
    shapes = {k: t.shape for k, t in model.state_dict().items()}
    lines = [
        f"{k}:{','.join(map(str, shapes[k]))}\n"
        for k in sorted(shapes)
        if not k.endswith("num_batches_tracked")
    ]
    return {"tensors": len(lines), "fnv1a": f"{fnv1a(''.join(lines)):016x}"}


def record(name, size, keys, detailed):
    model = build(name)
    fill(model, prefix="")
    x = inputs(3, size)
    model.eval()
    with torch.no_grad():
        eval_logits = model(x)
    model.train()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    with torch.no_grad():
        train_logits = model(x)
    running = {
        k: float(v.double().sum())
        for k, v in model.state_dict().items()
        if k.endswith("running_mean") or k.endswith("running_var")
    }
    out = {
        "eval_logits": eval_logits.flatten().tolist(),
        "train_logits": train_logits.flatten().tolist(),
    }
    if detailed:
        out["running_sums"] = running
    if keys:
        out["state_dict_digest"] = state_digest(model)
        if detailed:
            out["state_dict"] = state_tree(model)
    return out


def main():
    families = sys.argv[1:] or list(FAMILIES)
    for family in families:
        names, size, keys, detailed = FAMILIES[family]
        models = {
            name: record(name, size, keys, detailed is None or name in detailed)
            for name in names
        }
        out = {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "size": size,
            "models": models,
        }
        path = os.path.join(
            os.path.dirname(__file__),
            f"../crates/zoo-{family}/tests/fixtures/tv_{family}.json",
        )
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(out, f)
        print("wrote", path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
