#!/usr/bin/env bash
# One strictly fair NAS-Bench-Macro supernet step (3 paths, batch 64, one SGD update): ours vs
# the same step in PyTorch eager, alternating in one run on the same machine.
# Usage: benches/supernet_step.sh [VENV] [ROUNDS]   (VENV: a venv with torch; see benches/peers)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-target/peer-venv}
ROUNDS=${2:-3}
THREADS=${THREADS:-2}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" && "$VENV/bin/pip" install -q torch
fi
cargo build --release -q -p fairnas-cli
for round in $(seq "$ROUNDS"); do
  target/release/fairnas --threads "$THREADS" bench-step --batch 64 --steps 10 --warmup 2 --json
  "$VENV/bin/python" benches/peers/supernet_step.py --batch 64 --steps 10 --warmup 2 --threads "$THREADS" --json
done
