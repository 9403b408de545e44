"""Parity fixtures for torchvision's networks: `torchvision.models.<name>(num_classes=10)` with
weights from the formula of `scripts/parity.py` (keyed by torchvision's state-dict names, which
are zoo's), run on its fixed input at 128 px in eval and train mode (at 64 px the last stage normalises
eight values per channel, and training-mode results of the deepest networks drift apart by
float rounding alone).

Run: python scripts/tv_parity.py  (needs torch and torchvision; only to regenerate
crates/zoo-resnet/tests/fixtures/tv_resnet.json, which `cargo test -p zoo-resnet` compares with).
"""
import json
import os
import sys

import torch
import torchvision

sys.path.insert(0, os.path.dirname(__file__))
from parity import fill, inputs  # noqa: E402

NAMES = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
SIZE = 128


def record(name):
    model = getattr(torchvision.models, name)(num_classes=10)
    fill(model, prefix="")
    x = inputs(3, SIZE)
    model.eval()
    with torch.no_grad():
        eval_logits = model(x)
    model.train()
    with torch.no_grad():
        train_logits = model(x)
    running = {
        k: float(v.double().sum())
        for k, v in model.state_dict().items()
        if k.endswith("running_mean") or k.endswith("running_var")
    }
    return {
        "eval_logits": eval_logits.flatten().tolist(),
        "train_logits": train_logits.flatten().tolist(),
        "running_sums": running,
    }


def main():
    out = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "size": SIZE,
        "models": {name: record(name) for name in NAMES},
    }
    path = os.path.join(os.path.dirname(__file__), "../crates/zoo-resnet/tests/fixtures/tv_resnet.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f)
    print("wrote", path)


if __name__ == "__main__":
    main()
