"""PyTorch side of `cargo xtask bench models --torch PYTHON`: the notebook's definitions
(scripts/parity.py) and torchvision's for the `tv-` models, the same cases and the same timing as
zoo's benchmark.

Prints one line per case: RESULT <model> <input> <train img/s> <infer img/s> <peak RSS MiB>
(train `-` when not timed: --infer-only, or a case that cannot train, with a SKIP line saying why).
Usage: python scripts/bench_torch.py --batch 32 --steps 5 --cases alexnet:65,resnet18:32
       python scripts/bench_torch.py --device cuda --warmup 3 ...   (scripts/device-check.sh)
"""
import argparse
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
import parity  # noqa: E402


def build(name, size):
    if name.startswith("tv-"):
        # torchvision's networks as zoo's tv- models are: ImageNet's 1000 classes, GoogLeNet as
        # its weights build it (no aux heads, transform_input on).
        import torchvision
        fn = name[3:].replace("-", "_")
        kwargs = dict(aux_logits=False, transform_input=True, init_weights=False) if fn == "googlenet" else {}
        return getattr(torchvision.models, fn)(**kwargs), 3
    make, (c, _) = parity.MODELS[name]
    seq = make()
    # AlexNet and VGG hard-code the first Linear for 224 px: size it for this input, as zoo does.
    first_linear = next((i for i, m in enumerate(seq) if isinstance(m, nn.Linear)), None)
    if name in ("alexnet", "vgg11", "vgg11-small") and first_linear is not None:
        with torch.no_grad():
            flat = seq[:first_linear](torch.zeros(1, c, size, size)).shape[1]
        seq[first_linear] = nn.Linear(flat, seq[first_linear].out_features)
    return parity.Wrapper(seq), c


def peak_rss_mib():
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss: Linux keeps that
    across execve, so a script started by a large process (xtask after a VGG case) would report
    its parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cases", required=True, help="model:size,...")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--infer-only", action="store_true", help="time inference only")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    for case in a.cases.split(","):
        name, size = case.split(":")
        size = int(size)
        model, c = build(name, size)
        dev = torch.device(a.device)
        model = model.to(dev)
        x = (torch.rand(a.batch, c, size, size) * 2 - 1).to(dev)
        y = (torch.arange(a.batch) % 10).to(dev)

        def sync():
            if dev.type == "cuda":
                torch.cuda.synchronize()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        crit = nn.CrossEntropyLoss()
        model.train()
        train = []
        try:
            for i in range(0 if a.infer_only else a.steps + a.warmup):
                sync()
                t = time.perf_counter()
                opt.zero_grad()
                loss = crit(model(x), y)
                loss.backward()
                opt.step()
                sync()
                if i >= a.warmup:
                    train.append(time.perf_counter() - t)
        except (RuntimeError, ValueError) as e:
            print(f"SKIP {name} {size} train: {e}", flush=True)
            train = []
        model.eval()
        infer = []
        with torch.no_grad():
            for i in range(a.steps + a.warmup):
                t = time.perf_counter()
                model(x).cpu().numpy()
                if i >= a.warmup:
                    infer.append(time.perf_counter() - t)
        peak = peak_rss_mib()
        train_ips = f"{a.batch / statistics.median(train):.1f}" if train else "-"
        print(f"RESULT {name} {size} {train_ips} {a.batch / statistics.median(infer):.1f} {peak:.0f}", flush=True)


if __name__ == "__main__":
    main()
