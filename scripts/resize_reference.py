"""Reference values for zoo-core's bilinear resize test, from PyTorch.

Run: python scripts/resize_reference.py  (needs torch). Input x[i] = (i * 7 % 11) / 10.
"""
import torch
import torch.nn.functional as F

x = torch.tensor([(i * 7 % 11) / 10 for i in range(2 * 3 * 4)], dtype=torch.float32).reshape(1, 2, 3, 4)
print(f"// torch {torch.__version__}")
for name, size in [("UP_5X7", (5, 7)), ("DOWN_2X3", (2, 3))]:
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
    vals = ", ".join(f"{v:.6}" for v in y.flatten().tolist())
    print(f"const {name}: &[f32] = &[{vals}];")
