"""PyTorch side of `cargo xtask bench models --torch PYTHON`: the notebook's definitions
(scripts/parity.py), the same cases and the same timing as zoo's benchmark.

Prints one line per case: RESULT <model> <input> <train img/s> <infer img/s> <peak RSS MiB>.
Usage: python scripts/bench_torch.py --batch 32 --steps 5 --cases alexnet:65,resnet18:32
"""
import argparse
import os
import resource
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
import parity  # noqa: E402


def build(name, size):
    make, (c, _) = parity.MODELS[name]
    seq = make()
    # AlexNet and VGG hard-code the first Linear for 224 px: size it for this input, as zoo does.
    first_linear = next((i for i, m in enumerate(seq) if isinstance(m, nn.Linear)), None)
    if name in ("alexnet", "vgg11", "vgg11-small") and first_linear is not None:
        with torch.no_grad():
            flat = seq[:first_linear](torch.zeros(1, c, size, size)).shape[1]
        seq[first_linear] = nn.Linear(flat, seq[first_linear].out_features)
    return parity.Wrapper(seq), c


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cases", required=True, help="model:size,...")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    for case in a.cases.split(","):
        name, size = case.split(":")
        size = int(size)
        model, c = build(name, size)
        x = torch.rand(a.batch, c, size, size) * 2 - 1
        y = torch.arange(a.batch) % 10
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        crit = nn.CrossEntropyLoss()
        model.train()
        train = []
        for i in range(a.steps + 1):
            t = time.perf_counter()
            opt.zero_grad()
            loss = crit(model(x), y)
            loss.backward()
            opt.step()
            if i > 0:
                train.append(time.perf_counter() - t)
        model.eval()
        infer = []
        with torch.no_grad():
            for i in range(a.steps + 1):
                t = time.perf_counter()
                model(x).numpy()
                if i > 0:
                    infer.append(time.perf_counter() - t)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"RESULT {name} {size} {a.batch / statistics.median(train):.1f} {a.batch / statistics.median(infer):.1f} {peak:.0f}", flush=True)


if __name__ == "__main__":
    main()
