"""Reference values for zoo-core's optimiser and loss tests, from PyTorch.

Run: python scripts/optim_reference.py  (needs torch). Parameter p0 = [1.0, -2.0, 0.5, 3.0],
loss = sum(c * p^2) with c = [1, 2, 3, 0.5], three steps at lr 0.1.
"""
import torch
import torch.nn.functional as F

print(f"// torch {torch.__version__}")
c = torch.tensor([1.0, 2.0, 3.0, 0.5])
cases = {
    "SGD_PLAIN": lambda p: torch.optim.SGD([p], lr=0.1),
    "SGD_MOMENTUM_WD": lambda p: torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01),
    "SGD_NESTEROV": lambda p: torch.optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True),
    "ADAMW": lambda p: torch.optim.AdamW([p], lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01),
}
for name, make in cases.items():
    p = torch.tensor([1.0, -2.0, 0.5, 3.0], requires_grad=True)
    opt = make(p)
    for _ in range(3):
        opt.zero_grad()
        (c * p * p).sum().backward()
        opt.step()
    print(f"const {name}: [f32; 4] = [{', '.join(f'{v:.7}' for v in p.tolist())}];")
logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
y = torch.tensor([0, 1])
print(f"const CE_PLAIN: f32 = {F.cross_entropy(logits, y).item():.7};")
print(f"const CE_SMOOTH_01: f32 = {F.cross_entropy(logits, y, label_smoothing=0.1).item():.7};")
