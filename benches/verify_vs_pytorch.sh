#!/usr/bin/env bash
# End-to-end ImageNet evaluation throughput: `fairnas verify` vs PyTorch (PIL + torchvision +
# DataLoader with 2 workers), EfficientNet-Lite0 on the 1000 shared sample photos, run one after
# the other on the same machine. Also peak RSS of fairnas verify on 100 vs 1000 images (the
# loader's memory must not grow with the dataset).
#
# Usage: benches/verify_vs_pytorch.sh VENV [BATCH]
#   VENV: a Python venv with torch, torchvision, numpy, pillow, safetensors
#         (python3 -m venv VENV && VENV/bin/pip install torch torchvision numpy pillow safetensors)
set -euo pipefail
VENV=${1:?usage: $0 VENV [BATCH]}
BATCH=${2:-64}
SHARED=${FAIRNAS_SHARED:-../shared}
IMAGES=$SHARED/data/imagenet-sample
WEIGHTS=$SHARED/data/weights/efficientnet-lite0-57934424.pth
cargo build --release --quiet
FAIRNAS=target/release/fairnas
rss() { /usr/bin/time -f "%M" "$@" 2>&1 >/dev/null | tail -1; }
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F)"
echo "== fairnas verify (batch $BATCH, 2 threads)"
$FAIRNAS --threads 2 verify --model efficientnet-lite0 --weights "$WEIGHTS" --val-dataset-root "$IMAGES" \
    --batch-size "$BATCH" --json | grep -E '"(top1|top5|wall_s|images_per_s|network_s|decode_s|waiting_for_data_s)"'
echo "== PyTorch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)') (DataLoader 2 workers, batch $BATCH, 2 threads)"
"$VENV/bin/python" benches/peers/verify_imagenet.py --images "$IMAGES" --weights "$WEIGHTS" \
    --workers 2 --threads 2 --batch-size "$BATCH" --json | grep -E '"(top1|top5|wall_s|images_per_s|network_s)"'
echo "== fairnas verify peak RSS (KiB), batch $BATCH: 100 images, then 1000"
rss $FAIRNAS --threads 2 verify --model efficientnet-lite0 --weights "$WEIGHTS" --val-dataset-root "$IMAGES" --batch-size "$BATCH" --limit 100
rss $FAIRNAS --threads 2 verify --model efficientnet-lite0 --weights "$WEIGHTS" --val-dataset-root "$IMAGES" --batch-size "$BATCH"
