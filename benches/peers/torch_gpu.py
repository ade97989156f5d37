#!/usr/bin/env python3
"""PyTorch peer of `fairnas gpu-check` on the same GPU, same run.

Builds FairNAS-A in PyTorch (the independent implementation of
crates/fairnas-model/tests/fixtures/generate_parity.py, imported from beside this file in the
bundle or from the repository), loads the same synthetic weights (seed 0, the integer-hash
generator both sides implement), and:

1. runs the 8 images `fairnas gpu-check` wrote to OUT/fairnas_a_io.safetensors and compares its
   logits with ours (strict fp32: TF32 off in cuDNN and cuBLAS);
2. times batch-B inference in eager mode (inference_mode, cudnn.benchmark) with CUDA events,
   NCHW and channels-last, strict fp32 and PyTorch's default (cuDNN convolutions in TF32);
3. writes OUT/torch.json and prints the combined table with OUT/gpu-check.json.

Usage: python3 torch_gpu.py --out OUT [--batch 256] [--repeats 20]
"""

import argparse
import json
import os
import statistics
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
for candidate in (HERE, os.path.join(HERE, "..", "..", "crates", "fairnas-model", "tests", "fixtures")):
    if os.path.exists(os.path.join(candidate, "generate_parity.py")):
        sys.path.insert(0, candidate)
        break
import generate_parity as ref  # noqa: E402


def build(seed=0):
    net = ref.fairnas("a").eval()
    sd = net.state_dict()
    new = {}
    for key, t in sd.items():
        if key.endswith("num_batches_tracked"):
            new[key] = t
        else:
            new[key] = torch.from_numpy(ref.synthetic_values(key, tuple(t.shape), seed))
    net.load_state_dict(new, strict=True)
    return net


def set_tf32(on):
    torch.backends.cudnn.allow_tf32 = on
    torch.backends.cuda.matmul.allow_tf32 = on


def time_forward(net, batch, repeats, channels_last):
    xs = [torch.randn(batch, 3, 224, 224, device="cuda") for _ in range(2)]
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    else:
        net = net.to(memory_format=torch.contiguous_format)
    with torch.inference_mode():
        for i in range(5):
            net(xs[i % 2])
        torch.cuda.synchronize()
        ms = []
        for i in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            net(xs[i % 2])
            end.record()
            end.synchronize()
            ms.append(start.elapsed_time(end))
    med = statistics.median(ms)
    return {"median_ms": med, "min_ms": min(ms), "max_ms": max(ms), "images_per_s": batch / (med / 1e3)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    dev = torch.cuda.get_device_name(0)
    net = build().cuda()
    result = {"device": dev, "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
              "batch": args.batch}

    io_path = os.path.join(args.out, "fairnas_a_io.safetensors")
    if os.path.exists(io_path):
        from safetensors.numpy import load_file
        io = load_file(io_path)
        set_tf32(False)
        with torch.inference_mode():
            logits = net(torch.from_numpy(io["input"]).cuda()).float().cpu().numpy()
        ours, exact = io["logits"], io["logits_f64_cpu"]
        scale = np.abs(exact).max()
        result["logits_torch_vs_f64_max_rel"] = float(np.abs(logits - exact).max() / scale)
        result["logits_ours_vs_torch_max_rel"] = float(np.abs(ours - logits).max() / np.abs(logits).max())
        result["top1_agree"] = int((ours.argmax(1) == logits.argmax(1)).sum())
    else:
        print(f"no {io_path}: run fairnas gpu-check first for the logits comparison", file=sys.stderr)

    runs = {}
    for precision, tf32 in (("fp32", False), ("default-tf32", True)):
        set_tf32(tf32)
        for layout, cl in (("nchw", False), ("channels-last", True)):
            runs[f"{precision}/{layout}"] = time_forward(net, args.batch, args.repeats, cl)
            r = runs[f"{precision}/{layout}"]
            print(f"torch {precision:13} {layout:14} {r['median_ms']:8.2f} ms  {r['images_per_s']:8.0f} img/s",
                  file=sys.stderr)
    set_tf32(False)
    result["runs"] = runs
    with open(os.path.join(args.out, "torch.json"), "w") as f:
        json.dump(result, f, indent=2)

    ours_path = os.path.join(args.out, "gpu-check.json")
    if not os.path.exists(ours_path):
        return
    with open(ours_path) as f:
        ours = json.load(f)
    print()
    print(f"# GPU check: {ours['device']} | torch {torch.__version__} cuDNN {result['cudnn']}")
    failed = [c for c in ours["checks"] if not c["pass"]]
    worst = max(ours["checks"], key=lambda c: c["rel_l2"] / c["limit_rel_l2"])
    print(f"correctness: {len(ours['checks'])} checks, {len(failed)} failed; worst rel L2 {worst['rel_l2']:.2e} "
          f"({worst['name']}); limits {ours['limits']}")
    for c in failed:
        print(f"  FAILED {c['name']}: rel L2 {c['rel_l2']:.2e} max rel {c['max_rel']:.2e} unwritten {c['nan']}")
    if "logits_ours_vs_torch_max_rel" in result:
        print(f"FairNAS-A logits, 8 images: ours vs torch fp32 max rel {result['logits_ours_vs_torch_max_rel']:.2e}, "
              f"torch vs f64 {result['logits_torch_vs_f64_max_rel']:.2e}, top-1 agree {result['top1_agree']}/8")
    if ours.get("copy_gb_per_s"):
        print(f"device-to-device copy: {ours['copy_gb_per_s']:.0f} GB/s")
        print(f"| kernel | shape (batch {ours['batch']}) | median ms | GB/s | of copy bw |")
        print("|---|---|---:|---:|---:|")
        for t in ours["timings"]:
            print(f"| {t['name']} | {t['shape']} | {t['median_ms']:.3f} | {t['gb_per_s']:.0f} | "
                  f"{100 * t['of_copy_bandwidth']:.0f}% |")
    if ours.get("fairnas_a_images_per_s"):
        o = ours["fairnas_a_images_per_s"]
        print(f"| FairNAS-A batch {ours['batch']} | images/s | ratio ours/torch |")
        print("|---|---:|---:|")
        print(f"| fairnas (candle + our kernels, fp32) | {o:.0f} | 1.00 |")
        for name, r in runs.items():
            print(f"| torch eager {name} | {r['images_per_s']:.0f} | {o / r['images_per_s']:.2f} |")


if __name__ == "__main__":
    main()
