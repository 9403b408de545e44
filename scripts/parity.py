"""Parity fixtures: the reference notebook's PyTorch definitions, filled with weights from a
formula the Rust tests reproduce, run on fixed inputs in eval and train mode.

Run: python scripts/parity.py  (needs torch; only to regenerate tests/fixtures/parity.json and
tests/fixtures/cifar_densenet.pt). The definitions below are the notebook's, verbatim apart from
indentation (the notebook export lost it) and a `blocks` argument on res_net for ResNet-34.

Weights (zoo name = state-dict key without `model.`; i = flat index; h = 64-bit FNV-1a of the
name; u(i, h) = splitmix64(i + h * 0x9E3779B97F4A7C15) >> 11, divided by 2^53; s = 2u - 1):
  conv / linear weight  s * sqrt(3 / fan_in)
  bias                  0.1 s
  BatchNorm weight      1 + 0.1 s
  BatchNorm bias        0.1 s
  running_mean          0.1 s
  running_var           1 + 0.5 |s|
Input: x[i] = s(i, FNV-1a("input")), shape (2, C, H, W) at the notebook's input size.
Integer hashing (exact in NumPy and Rust) rather than trigonometry keeps both sides bit-equal,
and the pseudo-random values keep training-mode BatchNorm well conditioned.
"""
import json
import math
import os

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def alexnet():
    return nn.Sequential(
        nn.Conv2d(3, 96, kernel_size=11, stride=4, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(96, 256, kernel_size=5, padding=2), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Flatten(),
        nn.Linear(6400, 4096), nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(4096, 4096), nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(4096, 10))


def vgg_block(num_convs, in_channels, out_channels):
    layers = []
    for _ in range(num_convs):
        layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
        layers.append(nn.ReLU())
        in_channels = out_channels
    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


def vgg(conv_arch):
    conv_blks = []
    in_channels = 3
    for (num_convs, out_channels) in conv_arch:
        conv_blks.append(vgg_block(num_convs, in_channels, out_channels))
        in_channels = out_channels
    return nn.Sequential(
        *conv_blks, nn.Flatten(),
        nn.Linear(out_channels * 7 * 7, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 10))


conv_arch = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))
ratio = 4
conv_arch_small = [(pair[0], pair[1] // ratio) for pair in conv_arch]


def nin_block(in_channels, out_channels, kernel_size, strides, padding):
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, strides, padding),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU())


def nin_net(init=3):
    return nn.Sequential(
        nin_block(init, 96, kernel_size=11, strides=4, padding=0),
        nn.MaxPool2d(3, stride=2),
        nin_block(96, 256, kernel_size=5, strides=1, padding=2),
        nn.MaxPool2d(3, stride=2),
        nin_block(256, 384, kernel_size=3, strides=1, padding=1),
        nn.MaxPool2d(3, stride=2),
        nn.Dropout(0.5),
        nin_block(384, 10, kernel_size=3, strides=1, padding=1),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten())


class Inception(nn.Module):
    def __init__(self, in_channels, c1, c2, c3, c4, **kwargs):
        super(Inception, self).__init__(**kwargs)
        self.p1_1 = nn.Conv2d(in_channels, c1, kernel_size=1)
        self.p2_1 = nn.Conv2d(in_channels, c2[0], kernel_size=1)
        self.p2_2 = nn.Conv2d(c2[0], c2[1], kernel_size=3, padding=1)
        self.p3_1 = nn.Conv2d(in_channels, c3[0], kernel_size=1)
        self.p3_2 = nn.Conv2d(c3[0], c3[1], kernel_size=5, padding=2)
        self.p4_1 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.p4_2 = nn.Conv2d(in_channels, c4, kernel_size=1)

    def forward(self, x):
        p1 = F.relu(self.p1_1(x))
        p2 = F.relu(self.p2_2(F.relu(self.p2_1(x))))
        p3 = F.relu(self.p3_2(F.relu(self.p3_1(x))))
        p4 = F.relu(self.p4_2(self.p4_1(x)))
        return torch.cat((p1, p2, p3, p4), dim=1)


def google_net():
    b1 = nn.Sequential(nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3),
                       nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b2 = nn.Sequential(nn.Conv2d(64, 64, kernel_size=1),
                       nn.ReLU(),
                       nn.Conv2d(64, 192, kernel_size=3, padding=1),
                       nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b3 = nn.Sequential(Inception(192, 64, (96, 128), (16, 32), 32),
                       Inception(256, 128, (128, 192), (32, 96), 64),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b4 = nn.Sequential(Inception(480, 192, (96, 208), (16, 48), 64),
                       Inception(512, 160, (112, 224), (24, 64), 64),
                       Inception(512, 128, (128, 256), (24, 64), 64),
                       Inception(512, 112, (144, 288), (32, 64), 64),
                       Inception(528, 256, (160, 320), (32, 128), 128),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b5 = nn.Sequential(Inception(832, 256, (160, 320), (32, 128), 128),
                       Inception(832, 384, (192, 384), (48, 128), 128),
                       nn.AdaptiveAvgPool2d((1, 1)),
                       nn.Flatten())
    return nn.Sequential(b1, b2, b3, b4, b5, nn.Linear(1024, 10))


class Residual(nn.Module):
    def __init__(self, input_channels, num_channels, use_1x1conv=False, strides=1):
        super().__init__()
        self.conv1 = nn.Conv2d(input_channels, num_channels, kernel_size=3, padding=1, stride=strides)
        self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1)
        if use_1x1conv:
            self.conv3 = nn.Conv2d(input_channels, num_channels, kernel_size=1, stride=strides)
        else:
            self.conv3 = None
        self.bn1 = nn.BatchNorm2d(num_channels)
        self.bn2 = nn.BatchNorm2d(num_channels)

    def forward(self, X):
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        Y += X
        return F.relu(Y)


def res_net(blocks=(2, 2, 2, 2)):
    b1 = nn.Sequential(nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3),
                       nn.BatchNorm2d(64), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))

    def resnet_block(input_channels, num_channels, num_residuals, first_block=False):
        blk = []
        for i in range(num_residuals):
            if i == 0 and not first_block:
                blk.append(Residual(input_channels, num_channels, use_1x1conv=True, strides=2))
            else:
                blk.append(Residual(num_channels, num_channels))
        return blk

    b2 = nn.Sequential(*resnet_block(64, 64, blocks[0], first_block=True))
    b3 = nn.Sequential(*resnet_block(64, 128, blocks[1]))
    b4 = nn.Sequential(*resnet_block(128, 256, blocks[2]))
    b5 = nn.Sequential(*resnet_block(256, 512, blocks[3]))
    return nn.Sequential(b1, b2, b3, b4, b5,
                         nn.AdaptiveAvgPool2d((1, 1)),
                         nn.Flatten(), nn.Linear(512, 10))


def conv_block(input_channels, num_channels):
    return nn.Sequential(
        nn.BatchNorm2d(input_channels), nn.ReLU(),
        nn.Conv2d(input_channels, num_channels, kernel_size=3, padding=1))


class DenseBlock(nn.Module):
    def __init__(self, num_convs, input_channels, num_channels):
        super(DenseBlock, self).__init__()
        layer = []
        for i in range(num_convs):
            layer.append(conv_block(num_channels * i + input_channels, num_channels))
        self.net = nn.Sequential(*layer)

    def forward(self, X):
        for blk in self.net:
            Y = blk(X)
            X = torch.cat((X, Y), dim=1)
        return X


def transition_block(input_channels, num_channels):
    return nn.Sequential(
        nn.BatchNorm2d(input_channels), nn.ReLU(),
        nn.Conv2d(input_channels, num_channels, kernel_size=1),
        nn.AvgPool2d(kernel_size=2, stride=2))


def dense_net():
    b1 = nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3),
        nn.BatchNorm2d(64), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    num_channels, growth_rate = 64, 32
    num_convs_in_dense_blocks = [4, 4, 4, 4]
    blks = []
    for i, num_convs in enumerate(num_convs_in_dense_blocks):
        blks.append(DenseBlock(num_convs, num_channels, growth_rate))
        num_channels += num_convs * growth_rate
        if i != len(num_convs_in_dense_blocks) - 1:
            blks.append(transition_block(num_channels, num_channels // 2))
            num_channels = num_channels // 2
    return nn.Sequential(
        b1, *blks,
        nn.BatchNorm2d(num_channels), nn.ReLU(),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(num_channels, 10))


class Wrapper(nn.Module):
    """The notebook's `AlexNet()`, `ResNet()`, ... classes: `self.model = <sequential>`."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


MODELS = {
    "alexnet": (lambda: alexnet(), (3, 224)),
    "vgg11": (lambda: vgg(conv_arch), (3, 224)),
    "vgg11-small": (lambda: vgg(conv_arch_small), (3, 224)),
    "nin": (lambda: nin_net(), (3, 224)),
    "nin-mnist": (lambda: nin_net(init=1), (1, 224)),
    "googlenet": (lambda: google_net(), (3, 96)),
    "resnet18": (lambda: res_net(), (3, 224)),
    "resnet34": (lambda: res_net((3, 4, 6, 3)), (3, 224)),
    "densenet": (lambda: dense_net(), (3, 224)),
}


MASK = (1 << 64) - 1


def fnv1a(text):
    h = 0xCBF29CE484222325
    for b in text.encode():
        h = ((h ^ b) * 0x100000001B3) & MASK
    return h


def signed_uniform(n, key):
    """s = 2u - 1 for i in 0..n, u from splitmix64(i + fnv1a(key) * golden)."""
    with np.errstate(over="ignore"):
        z = np.arange(n, dtype=np.uint64) + np.uint64((fnv1a(key) * 0x9E3779B97F4A7C15) & MASK)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return torch.from_numpy(2.0 * u - 1.0)


def formula(key, shape, kind, fan_in=1):
    s = signed_uniform(math.prod(shape), key)
    if kind == "weight":
        v = s * math.sqrt(3.0 / fan_in)
    elif kind == "bn_weight":
        v = 1 + 0.1 * s
    elif kind == "running_var":
        v = 1 + 0.5 * s.abs()
    else:
        v = 0.1 * s
    return v.to(torch.float32).reshape(shape)


def fill(model, prefix="model."):
    """Every state-dict tensor of `model` by `formula`, named as zoo names it (the key without
    `prefix`: the notebook's wrapper attribute)."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if key.endswith("num_batches_tracked"):
                continue
            owner = modules[key.rsplit(".", 1)[0]]
            name = key[len(prefix):]
            is_bn = isinstance(owner, nn.BatchNorm2d)
            if key.endswith("running_mean"):
                kind = "running_mean"
            elif key.endswith("running_var"):
                kind = "running_var"
            elif key.endswith("weight"):
                kind = "bn_weight" if is_bn else "weight"
            else:
                kind = "bias"
            fan_in = math.prod(t.shape[1:]) if kind == "weight" else 1
            t.copy_(formula(name, tuple(t.shape), kind, fan_in))


def inputs(c, size):
    return signed_uniform(2 * c * size * size, "input").to(torch.float32).reshape(2, c, size, size)


def main():
    torch.manual_seed(0)
    out = {"torch": torch.__version__, "models": {}}
    for name, (make, (c, size)) in MODELS.items():
        model = Wrapper(make())
        fill(model)
        x = inputs(c, size)
        model.eval()
        with torch.no_grad():
            eval_logits = model(x)
        record = {"eval_logits": eval_logits.flatten().tolist()}
        if name == "densenet":
            # The notebook saves DataParallel state dicts: every key starts with `module.`.
            sd = {"module." + k: v.clone() for k, v in model.state_dict().items()}
            torch.save(sd, os.path.join(os.path.dirname(__file__), "../tests/fixtures/cifar_densenet.pt"))
        has_dropout = any(isinstance(m, nn.Dropout) for m in model.modules())
        if not has_dropout:
            model.train()
            with torch.no_grad():
                train_logits = model(x)
            record["train_logits"] = train_logits.flatten().tolist()
            record["running"] = {
                k[len("model."):]: {"sum": float(v.double().sum()), "head": v.flatten()[:8].tolist()}
                for k, v in model.state_dict().items()
                if k.endswith("running_mean") or k.endswith("running_var")
            }
        out["models"][name] = record
        print(name, "eval logits", [round(v, 5) for v in record["eval_logits"][:4]])
    path = os.path.join(os.path.dirname(__file__), "../tests/fixtures/parity.json")
    with open(path, "w") as f:
        json.dump(out, f)
    print("wrote", path)


if __name__ == "__main__":
    main()
