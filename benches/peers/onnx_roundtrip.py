#!/usr/bin/env python3
"""onnxruntime and OpenVINO run the ONNX files fairnas-rs exports, against our own logits.

The files and references come from the `deploy_onnx` example of fairnas-data
(`<model>.onnx` + `<model>.reference.safetensors` holding `input` and our `logits`):
EfficientNet-Lite0 with its real checkpoint on real photos, and FairNAS-A, FairNAS-A-SE (1.0),
FairNAS-B-SE-0.5-transfer and a NAS-Bench-Macro sub-network with projecting skips on synthetic
weights. Each runtime loads OUR file (no re-export): onnxruntime with every graph optimisation
(ORT_ENABLE_ALL), OpenVINO's CPU plugin with f32 inference precision (its default on CPUs with
bf16 or AMX units is bf16, which is a different function; the timing below says which precision
it ran). Agreement is the largest absolute logit difference over the largest logit magnitude,
the measure of the Rust tests (tolerance 1e-4), and the share of equal top-1 classes.

With --time, each runtime is also timed on the same file (median of --repeats passes after
--warmup, --threads intra-op threads) at the batch sizes given, for the CPU inference benchmark.

Set-up (once): python3 -m venv VENV && VENV/bin/pip install numpy safetensors onnx onnxruntime openvino
Usage:
  cargo run --release -p fairnas-data --example deploy_onnx DIR
  VENV/bin/python benches/peers/onnx_roundtrip.py DIR [--models a,b] [--time 1,8,32] [--threads 2] [--json]
"""

import argparse
import glob
import json
import os
import statistics
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
from safetensors.numpy import load_file

TOLERANCE = 1e-4


def onnxruntime_session(path, threads):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"input": x})[0]


def openvino_model(path, threads, precision):
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision,
              "PERFORMANCE_HINT": "LATENCY"}
    compiled = core.compile_model(core.read_model(path), "CPU", config)
    request = compiled.create_infer_request()

    def run(x):
        request.infer({0: x})
        return request.get_output_tensor(0).data.copy()
    return run


def agreement(got, want):
    scale = max(float(np.abs(want).max()), 1e-12)
    rel = float(np.abs(got - want).max()) / scale
    top1 = float((got.argmax(1) == want.argmax(1)).mean())
    return rel, top1


def median_ms(fn, x, warmup, repeats):
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def check(path, args):
    name = os.path.basename(path)[: -len(".onnx")]
    ref = load_file(path[: -len(".onnx")] + ".reference.safetensors")
    x, want = ref["input"], ref["logits"]
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    row = {"model": name, "file": path, "bytes": os.path.getsize(path), "nodes": len(model.graph.node),
           "opset": model.opset_import[0].version, "images": int(x.shape[0]),
           "preprocessing": {k: v for k, v in meta.items() if k.startswith("preprocessing.")}}
    runtimes = {"onnxruntime": onnxruntime_session(path, args.threads),
                "openvino": openvino_model(path, args.threads, "f32")}
    for runtime, run in runtimes.items():
        rel, top1 = agreement(run(x), want)
        row[runtime] = {"max_relative_difference": rel, "top1_agreement": top1, "within_tolerance": rel <= TOLERANCE}
    if args.time:
        # OpenVINO's own default precision too: its best configuration on this CPU.
        runtimes["openvino-default-precision"] = openvino_model(path, args.threads, _default_precision())
        row["images_per_s"] = {}
        for batch in args.time:
            xb = np.ascontiguousarray(np.resize(x, (batch,) + x.shape[1:]))
            row["images_per_s"][batch] = {
                runtime: 1e3 * batch / median_ms(run, xb, args.warmup, args.repeats)
                for runtime, run in runtimes.items()}
    return row


def _default_precision():
    return ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dir", help="the deploy_onnx example's output folder")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--time", type=lambda s: [int(b) for b in s.split(",")], default=None,
                   help="batch sizes to time each runtime at, e.g. 1,8,32")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--models", type=lambda s: s.split(","), default=None,
                   help="only these models (file names without .onnx), e.g. fairnas-a,fairnas-c")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    files = sorted(glob.glob(os.path.join(args.dir, "*.onnx")))
    if args.models:
        files = [f for f in files if os.path.basename(f)[: -len(".onnx")] in args.models]
    if not files:
        sys.exit(f"no .onnx files in {args.dir}: run the deploy_onnx example first")
    rows = [check(f, args) for f in files]
    versions = {"onnxruntime": ort.__version__, "openvino": ov.__version__, "onnx": onnx.__version__,
                "openvino_default_cpu_precision": str(_default_precision())}
    if args.json:
        print(json.dumps({"versions": versions, "tolerance": TOLERANCE, "models": rows}, indent=2))
    else:
        print(f"versions: {versions}; tolerance {TOLERANCE:g} (max |difference| / max |logit|)\n")
        print("| model | file size | nodes | images | onnxruntime rel. diff | OpenVINO (f32) rel. diff | top-1 agreement (ort / ov) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            o, v = r["onnxruntime"], r["openvino"]
            print(f"| {r['model']} | {r['bytes'] / 1e6:.2f} MB ({r['bytes']} B) | {r['nodes']} | {r['images']} | "
                  f"{o['max_relative_difference']:.1e} | {v['max_relative_difference']:.1e} | "
                  f"{100 * o['top1_agreement']:.0f}% / {100 * v['top1_agreement']:.0f}% |")
        for r in rows:
            for batch, speeds in r.get("images_per_s", {}).items():
                print(f"{r['model']} batch {batch}: " + ", ".join(f"{k} {s:.1f} img/s" for k, s in speeds.items()))
    bad = [r["model"] for r in rows if not (r["onnxruntime"]["within_tolerance"] and r["openvino"]["within_tolerance"])]
    if bad:
        sys.exit(f"outside the tolerance: {', '.join(bad)}")


if __name__ == "__main__":
    main()
