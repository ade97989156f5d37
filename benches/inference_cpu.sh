#!/usr/bin/env bash
# CPU inference: `fairnas bench` vs PyTorch eager and onnxruntime (benches/peers/inference_cpu.py,
# the PyTorch reference exported by torch.onnx), and onnxruntime and OpenVINO on OUR exported ONNX
# file (fairnas-data's deploy_onnx example, benches/peers/onnx_roundtrip.py: the same graph for
# every runtime), on the same networks and synthetic weights, alternating per model and round in
# one run on the same machine; prints a markdown table of the medians over rounds (images/s) and
# the ratios, and the matmul peak our GFLOP/s are measured against.
# Usage: benches/inference_cpu.sh [VENV] [ROUNDS]   (VENV: a venv with torch + onnxruntime; made if absent)
#   MODELS="fairnas-a fairnas-c fairnas-a-se-1.0" BATCH=1,8,32 THREADS=2 REPEATS=10 BIN=target/release/fairnas
#   ONNX_DIR=/tmp/fairnas-inference-onnx (our exported files)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-target/peer-venv}
ROUNDS=${2:-2}
THREADS=${THREADS:-2}
BATCH=${BATCH:-1,8,32}
REPEATS=${REPEATS:-10}
MODELS=${MODELS:-"fairnas-a fairnas-c fairnas-a-se-1.0"}
BIN=${BIN:-target/release/fairnas}
ONNX_DIR=${ONNX_DIR:-/tmp/fairnas-inference-onnx}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" && "$VENV/bin/pip" install -q torch numpy pillow safetensors onnx onnxruntime onnxscript openvino
fi
[ "$BIN" = target/release/fairnas ] && cargo build --release -q -p fairnas-cli
# shellcheck disable=SC2086
cargo run --release -q -p fairnas-data --example deploy_onnx "$ONNX_DIR" $MODELS > /dev/null
LOG=$(mktemp)
for round in $(seq "$ROUNDS"); do
  for model in $MODELS; do
    "$BIN" --threads "$THREADS" bench --model "$model" --batch "$BATCH" --repeats "$REPEATS" \
      --matmul-peak --json | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))' >> "$LOG"
    "$VENV/bin/python" benches/peers/inference_cpu.py --model "$model" --batch "$BATCH" \
      --threads "$THREADS" --repeats "$REPEATS" --json | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))' >> "$LOG"
    "$VENV/bin/python" benches/peers/onnx_roundtrip.py "$ONNX_DIR" --models "$model" --time "$BATCH" \
      --threads "$THREADS" --repeats "$REPEATS" --json | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))' >> "$LOG"
  done
done
python3 - "$LOG" <<'PY'
import json, statistics, sys
ours, torch, ort, peaks = {}, {}, {}, []
file_ort, file_ov, file_ov_default, versions = {}, {}, {}, None
for line in open(sys.argv[1]):
    r = json.loads(line)
    if "versions" in r:
        versions = r["versions"]
        for m in r["models"]:
            for b, s in m["images_per_s"].items():
                key = (m["model"], int(b))
                file_ort.setdefault(key, []).append(s["onnxruntime"])
                file_ov.setdefault(key, []).append(s["openvino"])
                file_ov_default.setdefault(key, []).append(s["openvino-default-precision"])
    elif r.get("implementation") == "fairnas-rs":
        peaks.append(r["matmul_peak_gflop_per_s"])
        for b in r["results"]:
            ours.setdefault((r["model"], b["batch"]), []).append((b["images_per_s"], b["fraction_of_matmul_peak"]))
    else:
        for b in r["results"]:
            # PyTorch in its best layout for this row: NCHW or channels_last.
            best = max(b["torch"]["images_per_s"], b["torch_channels_last"]["images_per_s"])
            torch.setdefault((r["model"], b["batch"]), []).append(best)
            ort.setdefault((r["model"], b["batch"]), []).append(b["onnxruntime"]["images_per_s"])
med = statistics.median
print(f"matmul peak: median {med(peaks):.1f} GFLOP/s (runs: {', '.join(f'{p:.1f}' for p in peaks)})\n")
print(f"our file's runtimes: {versions}\n")
print("| model | batch | fairnas | PyTorch eager (best of NCHW, channels_last) | onnxruntime (torch.onnx file) | onnxruntime (our file) | OpenVINO f32 (our file) | OpenVINO default precision (our file) | ours / torch | ours / best ort | ours / OpenVINO f32 | of matmul peak |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for key in ours:
    o = med(v for v, _ in ours[key]); f = med(f for _, f in ours[key])
    t, x = med(torch[key]), med(ort[key])
    fo, fv, fd = med(file_ort[key]), med(file_ov[key]), med(file_ov_default[key])
    print(f"| {key[0]} | {key[1]} | {o:.1f} | {t:.1f} | {x:.1f} | {fo:.1f} | {fv:.1f} | {fd:.1f} | {o / t:.2f} | "
          f"{o / max(x, fo):.2f} | {o / fv:.2f} | {100 * f:.1f}% |")
PY
rm -f "$LOG"
