#!/usr/bin/env bash
# Data parallelism on one machine: the strictly fair NAS-Bench-Macro step (3 paths) with a global
# batch of 64 as (a) 1 process x 2 threads, one BN batch of 64; (b) 1 process x 2 threads
# accumulating 2 shards of 32 (the math of (c)); (c) 2 MPI ranks x 1 thread, 32 each. Alternating
# rounds; seconds per step from the run's own wall time (state.json), real CIFAR-10 images of
# data/cifar10-nas decoded in memory. Outputs go to a temporary folder.
# Usage: benches/distributed_step.sh [ROUNDS] [STEPS]   (needs MPICH: see docs/DISTRIBUTED.md)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
STEPS=${2:-12}
export UCX_TLS=self,sm
cargo build --release -q -p fairnas-cli --features mpi --target-dir target/mpi
BIN=target/mpi/release/fairnas
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
grep -m1 "model name" /proc/cpuinfo
report() {
  python3 -c "import json; s=json.load(open('$TMP/$1/state.json')); print(f\"$1 {s['accumulator']['wall_s']/$STEPS:.3f} s/step\")"
}
train() { # out, then the step's flags
  local out=$TMP/$1; shift
  rm -rf "$out"
  echo train-supernet --data data/cifar10-nas --out "$out" --max-steps "$STEPS" --json "$@"
}
for round in $(seq "$ROUNDS"); do
  echo "-- round $round"
  "$BIN" --threads 2 $(train batch64 --batch-size 64) >/dev/null && report batch64
  "$BIN" --threads 2 $(train accumulate2x32 --batch-size 32 --accumulate 2) >/dev/null && report accumulate2x32
  mpiexec -n 2 -hosts localhost -iface lo "$BIN" --threads 1 $(train ranks2x32 --batch-size 32) >/dev/null &&
    report ranks2x32
done
