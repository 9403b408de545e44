"""PyTorch side of `cargo xtask bench ops --torch PYTHON`: convolutions with bias on the given
shapes, forward and forward + backward (`y.sum().backward()`, gradients of input, weight and
bias), median of the steps after one warm-up, in milliseconds.

A case is NxCxHxW:OUT[:KERNEL:STRIDE:PADDING] (default 3:1:1). Prints one line per case:
RESULT conv <case as given> <forward ms> <forward+backward ms>.
Usage: python scripts/bench_conv_torch.py --steps 10 --cases 32x64x8x8:64,32x3x67x67:96:11:4:0
"""
import argparse
import statistics
import time

import torch


def median_ms(f, steps):
    f()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        f()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cases", required=True, help="NxCxHxW:OUT[:K:S:P],...")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    for case in a.cases.split(","):
        shape, out, *geometry = case.split(":")
        k, stride, padding = map(int, geometry) if geometry else (3, 1, 1)
        n, c, h, w = map(int, shape.split("x"))
        conv = torch.nn.Conv2d(c, int(out), k, stride=stride, padding=padding)
        x = torch.randn(n, c, h, w, requires_grad=True)

        def forward():
            with torch.no_grad():
                conv(x)

        def train():
            conv(x).sum().backward()

        fwd = median_ms(forward, a.steps)
        both = median_ms(train, a.steps)
        print(f"RESULT conv {case} {fwd:.3f} {both:.3f}", flush=True)


if __name__ == "__main__":
    main()
