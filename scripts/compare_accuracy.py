"""Accuracy side by side: zoo and PyTorch train the same networks with the same improved recipe
(zoo's config.toml, read by scripts/train_torch.py) for each seed, and a markdown table gives
both frameworks' best validation accuracy (raw weights or EMA, the better), final accuracy,
means and the difference of the means.

Usage (from the repository root, after `cargo build --release -p zoo-cli`):
  python scripts/compare_accuracy.py --models resnet18,densenet --seeds 0,1 \
      [--reuse runs/cpu] [--zoo target/release/zoo] [--data data] [--out runs/compare]
--reuse takes zoo's runs from a matrix folder when their seed matches (the `cpu` matrix trains
seed 0), instead of training them again. Runs already complete are not run again. Needs torch.
"""
import argparse
import csv
import os
import subprocess
import sys
import tomllib


def read_metrics(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    best = max(max(float(r["valid_acc"]), float(r["valid_acc_ema"] or 0)) for r in rows)
    final = rows[-1]
    last = max(float(final["valid_acc"]), float(final["valid_acc_ema"] or 0))
    minutes = sum(float(r["wall_seconds"]) for r in rows) / 60
    return best, last, len(rows), minutes


def epochs_of(config):
    with open(config, "rb") as f:
        return tomllib.load(f)["recipe"]["epochs"]


def complete(folder, config):
    metrics = os.path.join(folder, "metrics.csv")
    if not os.path.isfile(metrics):
        return False
    with open(metrics) as f:
        return len(f.readlines()) - 1 >= epochs_of(config)


def dataset_of(model):
    return "mnist" if model == "nin-mnist" else "cifar10"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", required=True)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--zoo", default="target/release/zoo")
    p.add_argument("--data", default="data")
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--reuse", default=None, help="a matrix run folder (runs/cpu) with seed-0 runs")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    rows = []
    for model in a.models.split(","):
        zoo_results, torch_results = [], []
        for seed in [int(s) for s in a.seeds.split(",")]:
            name = f"{model}-{dataset_of(model)}"
            zoo_dir = os.path.join(a.out, "zoo", f"{name}-seed{seed}")
            if a.reuse and os.path.isfile(os.path.join(a.reuse, name, "config.toml")):
                with open(os.path.join(a.reuse, name, "config.toml"), "rb") as f:
                    if tomllib.load(f)["seed"] == seed:
                        zoo_dir = os.path.join(a.reuse, name)
            config = os.path.join(zoo_dir, "config.toml")
            if not (os.path.isfile(config) and complete(zoo_dir, config)):
                print(f"== zoo {model} seed {seed}", flush=True)
                subprocess.run([a.zoo, "train", model, "--recipe", "improved", "--seed", str(seed),
                                "--data-dir", a.data, "--run-dir", zoo_dir, "--resume"], check=True)
            zoo_results.append(read_metrics(os.path.join(zoo_dir, "metrics.csv")))
            torch_dir = os.path.join(a.out, "torch", f"{name}-seed{seed}")
            if not complete(torch_dir, config):
                print(f"== torch {model} seed {seed}", flush=True)
                subprocess.run([sys.executable, os.path.join(here, "train_torch.py"), "--config", config,
                                "--data", a.data, "--seed", str(seed), "--out", torch_dir,
                                "--threads", str(a.threads)], check=True)
            torch_results.append(read_metrics(os.path.join(torch_dir, "metrics.csv")))
        rows.append((model, zoo_results, torch_results))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    lines = ["| model | epochs | zoo best (per seed) | zoo mean | PyTorch best (per seed) | PyTorch mean | "
             "zoo - PyTorch | zoo minutes / run | PyTorch minutes / run |",
             "|---|---:|---|---:|---|---:|---:|---:|---:|"]
    for model, z, t in rows:
        zb, tb = [r[0] for r in z], [r[0] for r in t]
        lines.append(
            f"| `{model}` | {z[0][2]} | {', '.join(f'{v:.4f}' for v in zb)} | {mean(zb):.4f} | "
            f"{', '.join(f'{v:.4f}' for v in tb)} | {mean(tb):.4f} | {100 * (mean(zb) - mean(tb)):+.1f} pt | "
            f"{mean([r[3] for r in z]):.1f} | {mean([r[3] for r in t]):.1f} |")
    table = "\n".join(lines)
    print(table)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "compare.md"), "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
