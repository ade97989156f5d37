#!/usr/bin/env bash
# The ranking experiment of the ranking issue (README "Ranking quality"): NAS-Bench-Macro
# supernets trained with strict fairness and with uniform single-path sampling at equal compute
# (configs/ranking/*.json: the same number of path forward/backward passes and of updates per
# candidate), two seeds each, then `fairnas rank` over all 3969 canonical architectures.
#
# Usage: benches/ranking.sh CIFAR_DIR OUT_DIR [GROUND_TRUTH]
#   CIFAR_DIR: the extracted ../shared/data/cifar10/cifar10-jpg.tar.gz (train/ and test/)
# Re-running resumes: finished trainings and cached scores are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?CIFAR-10 folder}
OUT=${2:?output folder}
GT=${3:-${FAIRNAS_SHARED:-../shared}/data/nas-bench-macro/nas-bench-macro_cifar10.json}
THREADS=${THREADS:-2}
EVAL_LIMIT=${EVAL_LIMIT:-500}
SEEDS=${SEEDS:-"0 1"}
cargo build --release -q -p fairnas-cli
BIN=target/release/fairnas
mkdir -p "$OUT"
for seed in $SEEDS; do
  for sampler in strict uniform; do
    run="$OUT/$sampler-$seed"
    resume=()
    [ -f "$run/checkpoint.safetensors" ] && resume=(--resume)
    /usr/bin/time -f "$sampler seed $seed: training wall %e s" \
      "$BIN" --threads "$THREADS" train-supernet --config "configs/ranking/$sampler.json" \
      --data "$DATA" --seed "$seed" --out "$run" "${resume[@]}" --json > "$OUT/$sampler-$seed.train.json"
    /usr/bin/time -f "$sampler seed $seed: ranking wall %e s" \
      "$BIN" --threads "$THREADS" rank --supernet "$run" --ground-truth "$GT" \
      --eval-limit "$EVAL_LIMIT" --out "$run/rank" | tee "$OUT/$sampler-$seed.rank.txt"
  done
done
