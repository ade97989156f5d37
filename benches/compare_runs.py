#!/usr/bin/env python3
"""Compare two `fairnas nas` output folders for identical results, timings and paths aside.

    python3 benches/compare_runs.py RUN_A RUN_B [--ignore-config]

What must agree, bit for bit:
- every tensor of every .safetensors file (names, dtypes, shapes and raw bytes; the header's
  `__metadata__`, which holds the run's config, is compared as JSON like the other files);
- every JSON / JSON-lines file and the front CSV/SVG, after removing what measures time
  (wall_s, images_per_s, measured latency, the stage timings), replacing RUN_A's path by
  RUN_B's, and dropping checkpoint SHA-256s (a checkpoint's bytes include its metadata).
With --ignore-config, the keys that hold a run's configuration (`config`, `space`) are dropped
too: for a refactor that changes how a config is recorded but not what it computes.
report.html is skipped (it shows wall times). Exits 1 on the first difference, naming it.

Standard library only, so it runs anywhere Python 3 does.
"""
import json
import struct
import sys
from pathlib import Path

TIMING_KEYS = {"wall_s", "images_per_s", "measured_latency_ms"}
CONFIG_KEYS = {"config", "space"}


def safetensors(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    data = raw[8 + n :]
    tensors = {
        name: (h["dtype"], h["shape"], data[h["data_offsets"][0] : h["data_offsets"][1]])
        for name, h in header.items()
    }
    return tensors, meta


def scrub(value, a, b, ignore):
    if isinstance(value, dict):
        return {
            k: scrub(v, a, b, ignore)
            for k, v in value.items()
            if k not in TIMING_KEYS and k != "checkpoint_sha256" and not (k in ignore)
        }
    if isinstance(value, list):
        return [scrub(v, a, b, ignore) for v in value]
    if isinstance(value, str):
        if value.startswith("{") or value.startswith("["):
            try:
                return scrub(json.loads(value), a, b, ignore)
            except json.JSONDecodeError:
                pass
        return value.replace(a, b)
    return value


def json_values(path, a, b, ignore):
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [scrub(json.loads(l), a, b, ignore) for l in text.splitlines() if l.strip()]
    return scrub(json.loads(text), a, b, ignore)


def main():
    args = [x for x in sys.argv[1:] if not x.startswith("--")]
    ignore = CONFIG_KEYS if "--ignore-config" in sys.argv else set()
    run_a, run_b = map(Path, args)
    checked = 0
    for fa in sorted(p for p in run_a.rglob("*") if p.is_file()):
        rel = fa.relative_to(run_a)
        fb = run_b / rel
        if rel.name == "report.html":
            continue
        if not fb.is_file():
            sys.exit(f"{rel}: missing in {run_b}")
        if fa.suffix == ".safetensors":
            (ta, ma), (tb, mb) = safetensors(fa), safetensors(fb)
            if ta.keys() != tb.keys():
                sys.exit(f"{rel}: tensor names differ")
            for name in ta:
                if ta[name] != tb[name]:
                    sys.exit(f"{rel}: tensor {name} differs")
            if scrub(ma, str(run_a), str(run_b), ignore) != scrub(mb, str(run_b), str(run_b), ignore):
                sys.exit(f"{rel}: metadata differs")
        elif fa.suffix in (".json", ".jsonl"):
            if json_values(fa, str(run_a), str(run_b), ignore) != json_values(fb, str(run_b), str(run_b), ignore):
                sys.exit(f"{rel}: values differ")
        elif fa.read_bytes() != fb.read_bytes():
            sys.exit(f"{rel}: bytes differ")
        checked += 1
    print(f"{checked} files agree ({run_a} vs {run_b}; timings, paths{', configs' if ignore else ''} aside)")


if __name__ == "__main__":
    main()
