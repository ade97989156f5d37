#!/usr/bin/env python3
"""PyTorch eager (NCHW and channels_last) and onnxruntime peers of `fairnas bench` (CPU inference).

The networks are the independent PyTorch implementation of
crates/fairnas-model/tests/fixtures/generate_parity.py, with the same synthetic weights (seed, the
integer-hash generator both sides implement), so all three runtimes time the same function on
the same numbers. The model is exported to ONNX (opset 17) and run by onnxruntime's default CPU
provider with all graph optimisations and `--threads` intra-op threads; PyTorch runs in
inference_mode with `torch.set_num_threads(--threads)`. Protocol as `fairnas bench`: random
normal input, `--warmup` untimed passes, median of `--repeats` timed passes per batch size.

Set-up (once): python3 -m venv VENV && VENV/bin/pip install torch numpy pillow safetensors onnx onnxruntime onnxscript
Usage: VENV/bin/python benches/peers/inference_cpu.py --model fairnas-a --batch 1,8,32 --threads 2 [--json]
"""

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "crates", "fairnas-model", "tests", "fixtures"))
import generate_parity as ref  # noqa: E402

MODELS = {
    "fairnas-a": lambda: ref.fairnas("a"),
    "fairnas-b": lambda: ref.fairnas("b"),
    "fairnas-c": lambda: ref.fairnas("c"),
    "fairnas-a-se-1.0": lambda: ref.fairnas("a", 1.0),
    "fairnas-c-se-1.0": lambda: ref.fairnas("c", 1.0),
    "efficientnet-lite0": ref.lite0,
}


def build(name, seed):
    net = MODELS[name]().eval()
    state = {}
    for key, t in net.state_dict().items():
        state[key] = t if key.endswith("num_batches_tracked") else torch.from_numpy(
            ref.synthetic_values(key, tuple(t.shape), seed))
    net.load_state_dict(state, strict=True)
    return net


def median_ms(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    ms = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ms), min(ms), max(ms)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="fairnas-a", choices=sorted(MODELS))
    ap.add_argument("--batch", default="1,8,32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime as ort

    net = build(args.model, args.seed)
    batches = [int(b) for b in args.batch.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        dummy = torch.randn(1, 3, 224, 224)
        torch.onnx.export(net, (dummy,), path, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}}, opset_version=17, dynamo=False)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        net_cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
        results = []
        for b in batches:
            x = torch.randn(b, 3, 224, 224)
            xn = x.numpy()
            with torch.inference_mode():
                torch_out = net(x).numpy()
                t_med, t_min, t_max = median_ms(lambda: net(x), args.warmup, args.repeats)
                x_cl = x.contiguous(memory_format=torch.channels_last)
                cl_agree = float(np.abs(net_cl(x_cl).numpy() - torch_out).max() / np.abs(torch_out).max())
                c_med, c_min, c_max = median_ms(lambda: net_cl(x_cl), args.warmup, args.repeats)
            ort_out = session.run(None, {"x": xn})[0]
            o_med, o_min, o_max = median_ms(lambda: session.run(None, {"x": xn}), args.warmup, args.repeats)
            agree = float(np.abs(ort_out - torch_out).max() / np.abs(torch_out).max())
            results.append({"batch": b,
                            "torch": {"median_ms": t_med, "min_ms": t_min, "max_ms": t_max,
                                      "images_per_s": b / (t_med / 1e3)},
                            "torch_channels_last": {"median_ms": c_med, "min_ms": c_min, "max_ms": c_max,
                                                    "images_per_s": b / (c_med / 1e3),
                                                    "max_rel_vs_nchw": cl_agree},
                            "onnxruntime": {"median_ms": o_med, "min_ms": o_min, "max_ms": o_max,
                                            "images_per_s": b / (o_med / 1e3)},
                            "ort_vs_torch_max_rel": agree})
            if not args.json:
                print(f"{args.model} batch {b:3}: torch {t_med:9.2f} ms ({b / (t_med / 1e3):7.1f} img/s)  "
                      f"torch channels_last {c_med:9.2f} ms ({b / (c_med / 1e3):7.1f} img/s)  "
                      f"onnxruntime {o_med:9.2f} ms ({b / (o_med / 1e3):7.1f} img/s)  outputs agree {agree:.1e}")
    if args.json:
        print(json.dumps({"model": args.model, "threads": args.threads, "torch": torch.__version__,
                          "onnxruntime": ort.__version__, "seed": args.seed, "results": results}, indent=2))


if __name__ == "__main__":
    main()
