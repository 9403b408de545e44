"""Reference values for the pooling tests (zoo-kernels' kernels, zoo-nn's ceil-mode MaxPool2d),
from PyTorch.

Run: python scripts/pool_reference.py  (needs torch). The inputs follow formulas the Rust
tests reproduce: x[i] = ((i * 37) % 23) / 7 - 1.5 (with ties), upstream grad g[j] = 0.1 * (j + 1).
"""
import torch
import torch.nn.functional as F


def inputs(shape):
    n = 1
    for d in shape:
        n *= d
    x = torch.tensor([((i * 37) % 23) / 7 - 1.5 for i in range(n)], dtype=torch.float32)
    return x.reshape(shape).requires_grad_(True)


def run(name, fn, shape):
    x = inputs(shape)
    y = fn(x)
    g = torch.tensor([0.1 * (j + 1) for j in range(y.numel())], dtype=torch.float32).reshape(y.shape)
    y.backward(g)
    fmt = lambda t: ", ".join(f"{v:.6}" for v in t.detach().flatten().tolist())
    print(f"// {name}: input {list(shape)} -> {list(y.shape)}")
    print(f"const {name}_OUT: &[f32] = &[{fmt(y)}];")
    print(f"const {name}_GRAD: &[f32] = &[{fmt(x.grad)}];")


print(f"// torch {torch.__version__}")
run("MAX_3_2_1", lambda x: F.max_pool2d(x, 3, 2, 1), (2, 2, 7, 6))
run("MAX_3_1_1", lambda x: F.max_pool2d(x, 3, 1, 1), (1, 2, 4, 5))
run("MAX_3_2_0", lambda x: F.max_pool2d(x, 3, 2, 0), (1, 1, 7, 7))
run("MAX_3_2_1_CEIL", lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True), (1, 2, 7, 8))
run("MAX_3_3_0_CEIL", lambda x: F.max_pool2d(x, 3, 3, 0, ceil_mode=True), (1, 1, 4, 5))
run("AVG_3_2_1", lambda x: F.avg_pool2d(x, 3, 2, 1), (2, 2, 7, 6))
run("AVG_2_2_0", lambda x: F.avg_pool2d(x, 2, 2, 0), (1, 2, 5, 4))
run("ADAPTIVE_3X2", lambda x: F.adaptive_avg_pool2d(x, (3, 2)), (1, 2, 7, 5))
