#!/bin/sh
# The standing GPU check, run on the GPU machine from the unpacked bundle of
# `cargo xtask cuda-build`:
#   tar -xJf dist/cuda/fairnas-cuda.tar.xz -C /tmp && /tmp/fairnas-cuda/gpu-check.sh "$OUT" [extra gpu-check args]
# 1. finds the CUDA libraries the binary links (the toolkit's folder first, then PyTorch's wheels)
#    and says where; 2. runs `fairnas gpu-check` (ops vs CPU, kernel timings, FairNAS-A, and
#    the real EfficientNet-Lite0 checkpoint on real photos when the bundle carries them in
#    real-data/); 3. runs the PyTorch peer on the same device and prints the combined table.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-$HERE/out}
[ $# -gt 0 ] && shift
mkdir -p "$OUT"
BIN="$HERE/fairnas"

echo "== CUDA libraries"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt"
PYLIBS=$(python3 -c 'import os, nvidia; print(" ".join(os.path.join(p, d) for p in nvidia.__path__ for d in sorted(os.listdir(p))))' 2>/dev/null)
CANDIDATES="/usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu"
for d in $PYLIBS; do CANDIDATES="$CANDIDATES $d/lib"; done
LIBPATH=""
for lib in libcuda.so.1 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libcudart.so.13; do
  found=""
  for d in $CANDIDATES; do
    if [ -e "$d/$lib" ]; then found="$d"; break; fi
  done
  if [ -z "$found" ]; then
    echo "$lib: NOT FOUND in $CANDIDATES"
  else
    echo "$lib: $found"
    case ":$LIBPATH:" in *":$found:"*) ;; *) LIBPATH="$LIBPATH:$found" ;; esac
  fi
done
export LD_LIBRARY_PATH="${LIBPATH#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
ldd "$BIN" | grep -E "cuda|cublas|curand|nvrtc|not found"

echo "$LD_LIBRARY_PATH" > "$HERE/ld_library_path"

# Large intermediate files stay in WORK; the reports and logs go to OUT.
WORK=$(mktemp -d)
REAL=""
if [ -d "$HERE/real-data/photos" ]; then
  REAL="--real-weights $HERE/real-data/efficientnet-lite0.pth --real-images $HERE/real-data/photos"
else
  echo "no real-data/ in the bundle: the real-checkpoint check does not run"
fi
echo "== fairnas gpu-check"
# shellcheck disable=SC2086 # REAL is a list of arguments (bundle paths have no spaces)
"$BIN" gpu-check --out "$WORK" $REAL "$@" > "$OUT/fairnas-gpu-check.log" 2>&1
status=$?
cat "$OUT/fairnas-gpu-check.log"
echo "== PyTorch peer"
PYTHONUNBUFFERED=1 python3 "$HERE/torch_gpu.py" --out "$WORK" > "$OUT/torch-peer.log" 2>&1
cat "$OUT/torch-peer.log"
cp "$WORK/gpu-check.json" "$WORK/torch.json" "$OUT/" 2>/dev/null
exit $status
