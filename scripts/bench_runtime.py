"""Deployment runtimes' side of `cargo xtask bench models --peer ort|openvino`: the notebook's
definitions (scripts/parity.py) and torchvision's for the `tv-` models, exported to ONNX by
PyTorch (opset 17, evaluation mode, dynamic batch), then run by ONNX Runtime or OpenVINO with
2 threads and one synchronous request, timed as zoo's inference is (median of the steps after
the warm-up).

Prints one line per case: RESULT <model> <input> - <infer img/s> <peak RSS MiB> (the same format
as scripts/bench_torch.py; training is not timed).
Usage: python scripts/bench_runtime.py --peer ort --batch 1 --steps 20 --cases resnet18:224
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_torch import build, peak_rss_mib  # noqa: E402


def export(name, size, path):
    model, c = build(name, size)
    model.eval()
    x = torch.zeros(1, c, size, size)
    torch.onnx.export(model, (x,), path, input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    return c


def ort_runner(path, threads):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return lambda x: session.run(["logits"], {"images": x})[0]


def openvino_runner(path, threads):
    import openvino as ov
    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
              "INFERENCE_PRECISION_HINT": "f32"}
    compiled = core.compile_model(path, "CPU", config)
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})[compiled.output(0)]



def main():
    p = argparse.ArgumentParser()
    p.add_argument("--peer", choices=["ort", "openvino"], required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--cases", required=True, help="model:size,...")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    for case in a.cases.split(","):
        name, size = case.split(":")
        size = int(size)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.onnx")
            c = export(name, size, path)
            run = (ort_runner if a.peer == "ort" else openvino_runner)(path, a.threads)
            x = (np.random.default_rng(0).random((a.batch, c, size, size), dtype=np.float32) * 2 - 1)
            times = []
            for i in range(a.steps + a.warmup):
                t = time.perf_counter()
                run(x)
                if i >= a.warmup:
                    times.append(time.perf_counter() - t)
        peak = peak_rss_mib()
        print(f"RESULT {name} {size} - {a.batch / statistics.median(times):.1f} {peak:.0f}", flush=True)


if __name__ == "__main__":
    main()
