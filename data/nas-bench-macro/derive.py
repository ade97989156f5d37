#!/usr/bin/env python3
"""Derives ground-truth.json from NAS-Bench-Macro's nas-bench-macro_cifar10.json (Apache-2.0,
LICENSE beside this file): the same keys and numbers, without the per-run accuracies
(`test_acc`), so the embedded copy is ~0.7 MB instead of 1.2 MB. Python's float repr round-trips,
so every value is the source's exact f64.

Usage: python3 data/nas-bench-macro/derive.py ../shared/data/nas-bench-macro/nas-bench-macro_cifar10.json
"""
import json
import os
import sys

source = json.load(open(sys.argv[1]))
derived = {k: {f: v[f] for f in ("mean_acc", "std", "params", "flops")} for k, v in sorted(source.items())}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ground-truth.json")
with open(out, "w") as f:
    f.write(json.dumps(derived, separators=(",", ":")) + "\n")
print(f"{out}: {len(derived)} architectures")
