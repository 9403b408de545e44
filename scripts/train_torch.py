"""PyTorch side of the accuracy comparison: trains the notebook's definitions (scripts/parity.py)
with the recipe of a zoo run, read from that run's config.toml, on the same data folders, and
writes a metrics.csv with zoo's columns.

Same as zoo: the initialisation scheme, SGD/AdamW with weight decay on weights only (unless the
run decays 1-d parameters too), momentum/Nesterov, the per-step schedule (constant, step,
cosine with linear warm-up, one-cycle: zoo's formulas), label smoothing, random crop with zero
padding and horizontal flip at the native resolution, bilinear resize, normalisation, the EMA of
all tensors with the same warm-up, batch size, epochs, per-class subsets, full test set.
Not the same: the random numbers (PyTorch's generator, seeded with the run's seed or --seed).

Usage:
  python scripts/train_torch.py --config runs/cpu/resnet18-cifar10/config.toml \
      --data data --seed 1 --out runs/torch/resnet18-cifar10-seed1
Needs torch, numpy and pillow.
"""
import argparse
import gzip
import math
import os
import sys
import time
import tomllib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
import bench_torch  # noqa: E402  (build(): the notebook's model with AlexNet/VGG's first Linear sized)

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(root, dataset, train):
    if dataset in ("mnist", "fashion-mnist"):
        prefix = "train" if train else "t10k"
        images = read_idx(os.path.join(root, dataset, f"{prefix}-images-idx3-ubyte.gz"))
        labels = read_idx(os.path.join(root, dataset, f"{prefix}-labels-idx1-ubyte.gz"))
        return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
    from PIL import Image
    folder = os.path.join(root, dataset, "train" if train else "test")
    classes = sorted(os.listdir(folder))
    images, labels = [], []
    for k, name in enumerate(classes):
        for file in sorted(os.listdir(os.path.join(folder, name))):
            with Image.open(os.path.join(folder, name, file)) as im:
                images.append(np.asarray(im.convert("RGB")).transpose(2, 0, 1))
            labels.append(k)
    return torch.from_numpy(np.stack(images)), torch.tensor(labels)


def per_class_prefix(images, labels, n):
    if n is None:
        return images, labels
    keep, seen = [], {}
    for i, y in enumerate(labels.tolist()):
        if seen.get(y, 0) < n:
            seen[y] = seen.get(y, 0) + 1
            keep.append(i)
    keep = torch.tensor(keep)
    return images[keep], labels[keep]


def initialise(model, scheme):
    for m in model.modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        if scheme == "xavier-uniform":
            nn.init.xavier_uniform_(m.weight)
        elif scheme == "kaiming-normal-fan-out":
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
        elif scheme == "kaiming-normal-fan-in":
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif scheme != "pytorch-default":
            raise SystemExit(f"unknown init scheme {scheme}")


def cosine(a, b, t):
    return b + (a - b) * 0.5 * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0)))


def lr_at(schedule, base, step, total, per_epoch):
    kind = schedule["kind"]
    s = float(step)
    if kind == "constant":
        return base
    if kind == "step":
        return base * schedule["gamma"] ** ((step // per_epoch) // max(schedule["every_epochs"], 1))
    if kind == "cosine":
        warmup = schedule.get("warmup_epochs", 0.0) * per_epoch
        if s < warmup:
            return base * (s + 1) / warmup
        return cosine(base, base * schedule.get("min_factor", 0.0), (s - warmup) / max(total - warmup, 1))
    if kind == "one-cycle":
        initial = base / schedule.get("div_factor", 25.0)
        low = initial / schedule.get("final_div_factor", 1e4)
        up = max(schedule.get("pct_start", 0.3) * total - 1, 1)
        if s <= up:
            return cosine(initial, base, s / up)
        return cosine(base, low, (s - up) / max(total - 1 - up, 1))
    raise SystemExit(f"unknown schedule {kind}")


def augment(batch, crop_padding, hflip, gen):
    out = batch.clone()
    n, _, h, w = batch.shape
    if crop_padding:
        p = crop_padding
        padded = F.pad(batch, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=gen)
        for i in range(n):
            out[i] = padded[i, :, dy[i]: dy[i] + h, dx[i]: dx[i] + w]
    if hflip:
        flip = torch.rand(n, generator=gen) < 0.5
        out[flip] = out[flip].flip(-1)
    return out


def to_input(batch_u8, size, mean, std):
    x = batch_u8.float() / 255.0
    x = (x - mean) / std
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x


def evaluate(model, images, labels, size, mean, std, batch, flip=False):
    """Mean loss, accuracy and (with flip) the accuracy of the summed logits of each image and
    its mirror image (None without)."""
    model.eval()
    loss_sum, hits, flip_hits = 0.0, 0, 0
    with torch.no_grad():
        for i in range(0, len(labels), batch):
            x = to_input(images[i: i + batch], size, mean, std)
            y = labels[i: i + batch]
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            hits += (logits.argmax(1) == y).sum().item()
            if flip:
                both = logits + model(torch.flip(x, dims=[3]))
                flip_hits += (both.argmax(1) == y).sum().item()
    return loss_sum / len(labels), hits / len(labels), (flip_hits / len(labels) if flip else None)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True, help="a zoo run's config.toml")
    p.add_argument("--data", default="data")
    p.add_argument("--seed", type=int, default=None, help="default: the run's seed")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True, help="folder for metrics.csv")
    a = p.parse_args()
    with open(a.config, "rb") as f:
        c = tomllib.load(f)
    torch.set_num_threads(a.threads)
    seed = c["seed"] if a.seed is None else a.seed
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    r = c["recipe"]
    size = c["input_size"]
    model, channels = bench_torch.build(c["model"], size)
    initialise(model, c["init"])
    train_x, train_y = per_class_prefix(*load_split(a.data, c["dataset"], True), c.get("train_per_class"))
    valid_x, valid_y = per_class_prefix(*load_split(a.data, c["dataset"], False), c.get("valid_per_class"))
    mean = torch.tensor(c["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(c["std"]).view(1, -1, 1, 1)
    opt = r["optimizer"]
    decay_1d = r.get("decay_1d_params", False)
    decay = [q for q in model.parameters() if decay_1d or q.ndim > 1]
    no_decay = [q for q in model.parameters() if not (decay_1d or q.ndim > 1)]
    groups = [{"params": decay, "weight_decay": opt.get("weight_decay", 0.0)},
              {"params": no_decay, "weight_decay": 0.0}]
    if opt["kind"] == "sgd":
        optimizer = torch.optim.SGD(groups, lr=r["learning_rate"], momentum=opt.get("momentum", 0.0),
                                    nesterov=opt.get("nesterov", False))
    else:
        optimizer = torch.optim.AdamW(groups, lr=r["learning_rate"], betas=(opt["beta1"], opt["beta2"]),
                                      eps=opt["eps"])
    ema_decay = r.get("ema_decay")
    ema = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()} if ema_decay else None
    aug = c.get("augment", {})
    batch = c["batch_size"]
    per_epoch = math.ceil(len(train_y) / batch)
    total = per_epoch * r["epochs"]
    criterion = nn.CrossEntropyLoss(label_smoothing=r.get("label_smoothing", 0.0))
    os.makedirs(a.out, exist_ok=True)
    rows = []
    step = 0
    print(f"torch {torch.__version__}: {c['model']} on {c['dataset']} ({len(train_y)} train, "
          f"{len(valid_y)} valid) at {size} px, seed {seed}", flush=True)
    for epoch in range(r["epochs"]):
        wall = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_y), generator=gen)
        loss_sum, hits, seen, train_seconds = 0.0, 0, 0, 0.0
        lr = r["learning_rate"]
        for b in range(per_epoch):
            idx = order[b * batch: (b + 1) * batch]
            xb = augment(train_x[idx], aug.get("crop_padding"), aug.get("hflip", False), gen)
            started = time.perf_counter()
            lr = lr_at(r["schedule"], r["learning_rate"], step, total, per_epoch)
            for g in optimizer.param_groups:
                g["lr"] = lr
            x = to_input(xb, size, mean, std)
            y = train_y[idx]
            logits = model(x)
            loss = criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if r.get("clip_grad_norm"):
                nn.utils.clip_grad_norm_(model.parameters(), r["clip_grad_norm"])
            optimizer.step()
            step += 1
            if ema is not None:
                d = min(ema_decay, (1 + step) / (10 + step))
                with torch.no_grad():
                    for k, v in model.state_dict().items():
                        if k in ema:
                            ema[k].mul_(d).add_(v.detach(), alpha=1 - d)
            train_seconds += time.perf_counter() - started
            loss_sum += loss.item() * len(y)
            hits += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            if not math.isfinite(loss.item()):
                raise SystemExit(f"loss {loss.item()} at epoch {epoch + 1} batch {b + 1}")
        flip = bool(r.get("eval_flip", False))
        v_loss, v_acc, v_flip = evaluate(model, valid_x, valid_y, size, mean, std, 256, flip)
        e_loss = e_acc = e_flip = None
        if ema is not None:
            live = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.load_state_dict({**live, **ema})
            e_loss, e_acc, e_flip = evaluate(model, valid_x, valid_y, size, mean, std, 256, flip)
            model.load_state_dict(live)
        row = dict(epoch=epoch + 1, train_loss=loss_sum / seen, train_acc=hits / seen, valid_loss=v_loss,
                   valid_acc=v_acc, valid_loss_ema=e_loss, valid_acc_ema=e_acc, lr=lr,
                   seconds=train_seconds, wall_seconds=time.perf_counter() - wall,
                   images_per_sec=seen / train_seconds, valid_acc_flip=v_flip,
                   valid_acc_ema_flip=e_flip)
        rows.append(row)
        print(f"epoch {epoch + 1}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  valid loss "
              f"{v_loss:.4f} acc {v_acc:.4f}" + (f"  EMA acc {e_acc:.4f}" if e_acc is not None else "")
              + (f"  flip-TTA acc {v_flip:.4f}" if v_flip is not None else "")
              + f"  {row['wall_seconds']:.0f}s", flush=True)
        with open(os.path.join(a.out, "metrics.csv.tmp"), "w") as f:
            f.write(",".join(row.keys()) + "\n")
            for x in rows:
                f.write(",".join("" if v is None else f"{v:.6g}" for v in x.values()) + "\n")
        os.replace(os.path.join(a.out, "metrics.csv.tmp"), os.path.join(a.out, "metrics.csv"))


if __name__ == "__main__":
    main()
