#!/usr/bin/env python3
"""What the compiled depthwise forward kernels should cost on an H100/H200, read without a GPU.

For each of the GPU check's depthwise layers (FairNAS-A, batch 256) and each tiled-kernel
variant (strip height r2/r4/r8, plain or de-interleaved stride-2 rows), from the compiler's
resource report and the SASS:

- blocks per multiprocessor (registers, shared memory, 2048 threads), i.e. occupancy;
- the share of computed outputs that are real (tiles overhang 28- and 56-wide planes);
- three floors, each the time the whole launch needs for one resource alone: device memory
  (bytes in + out at the copy bandwidth the check measured), shared-memory wavefronts
  (tap reads + staging stores, one 128-byte wavefront per cycle per SM), and issue slots
  (SASS instructions per thread up to the first store, plus the stores, 4 schedulers per SM).

The measured time cannot beat the largest floor; the gap above it is latency the resident
warps fail to hide, so low occupancy shows up there. Writes a Markdown table; with --measured
it puts a gpu-check.json's medians beside the floors (for calibration against the 2026-11-28
H200 run, whose kernels are today's `_v4` ones).

Usage (nvcc from `cargo xtask cuda-build`'s toolchain, cuobjdump from the triton wheel):
    nvcc -cubin -arch=sm_90 -O3 -std=c++17 -Xptxas -v crates/fairnas-ops/src/cuda/kernels.cu \
        -o /tmp/k.cubin 2> /tmp/ptxas.txt
    python3 benches/gpu/tile_model.py --ptxas /tmp/ptxas.txt --cubin /tmp/k.cubin \
        --cuobjdump .../triton/backends/nvidia/bin/cuobjdump \
        --measured benches/gpu/results/h200-2026-11-28-gpu-check.json
"""
import argparse
import json
import math
import re
import subprocess

# H200 SXM (H100 SXM: the same SM count, clock and limits; 3.35 TB/s instead of 4.8).
SMS = 132
CLOCK_HZ = 1.98e9
REGS_PER_SM = 65536
SMEM_PER_SM = 228 * 1024
SMEM_RESERVED_PER_BLOCK = 1024
TILE_W, BLOCK_Y = 32, 8

# (channels, input size, kernel, stride) of the check's layers, batch 256; out = in / stride.
LAYERS = [
    (32, 112, 3, 1),
    (48, 112, 7, 2),
    (96, 56, 3, 1),
    (96, 56, 7, 2),
    (240, 28, 3, 1),
    (240, 28, 7, 1),
]
BATCH = 256
# Measured time over the largest floor for the six kernels the 2026-11-28 H200 run timed
# (today's `_v4`): 1.32-1.36 for the stride-1 ones (full occupancy), 1.51 for the two k7 s2
# ones (38-50%). A prediction is the floor times this range.
FAST, SLOW = 1.32, 1.51


def ptxas_report(path):
    """Kernel name -> (registers, static shared bytes)."""
    out, current = {}, None
    for line in open(path):
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            current = m.group(1)
        m = re.search(r"Used (\d+) registers.*?(\d+) bytes smem", line)
        if m and current:
            out[current] = (int(m.group(1)), int(m.group(2)))
    return out


def issued_per_thread(cuobjdump, cubin, kernel, rows):
    """SASS instructions up to the first global store, plus one store path's worth per row. The
    pair-reading kernels (`_v4pr`) hold two copies of the tap loop (one per column parity) of
    which a block runs one."""
    sass = subprocess.run([cuobjdump, "-sass", "-fun", kernel, cubin], capture_output=True, text=True, check=True).stdout
    ops = re.findall(r"^\s+/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", sass, re.M)
    first_store = next(i for i, op in enumerate(ops) if op.startswith("STG"))
    if "_v4pr" in kernel:
        barrier = next(i for i, op in enumerate(ops) if op.startswith("BAR"))
        first_store = barrier + (first_store - barrier) // 2
    return first_store + 6 * rows  # ReLU6 epilogue: FFMA, 2 FMNMX, address, STG, predicate


def blocks_per_sm(regs, smem, warps):
    alloc = math.ceil(regs / 8) * 8 * 32 * warps
    by_regs = REGS_PER_SM // alloc
    by_smem = SMEM_PER_SM // (smem + SMEM_RESERVED_PER_BLOCK)
    return min(by_regs, by_smem, 64 // warps, 32)


def model(c, size, k, s, rows, split, regs, smem, issued, copy_gbs, tile_w=TILE_W, block_y=BLOCK_Y, pairs=False):
    ho = wo = size // s
    threads = tile_w * block_y
    warps = math.ceil(threads / 32)
    tiles = math.ceil(wo / tile_w) * math.ceil(ho / (block_y * rows))
    blocks = BATCH * c * tiles
    useful = ho * wo / (tiles * warps * 32 * rows)
    in_w = (tile_w - 1) * s + k
    in_h = (block_y * rows - 1) * s + k
    patch_w = ((in_w + 6) // 4) * 4
    strip = (rows - 1) * s + k
    # Tap reads: STRIP x K per thread; the plain stride-2 layout hits every bank twice; pairs:
    # (K + 2) // 2 64-bit reads per row, 2 wavefronts each.
    if pairs:
        tap_wavefronts = warps * strip * ((k + 2) // 2) * 2
    else:
        tap_wavefronts = warps * strip * k * (2 if (s == 2 and not split) else 1)
    chunks = in_h * patch_w // 4
    store_wavefronts = math.ceil(chunks / 32) * 4  # a float4 (or two float2) store: 512 B per warp
    lds_us = blocks * (tap_wavefronts + store_wavefronts) / (SMS * CLOCK_HZ) * 1e6
    dram_us = BATCH * c * (size * size + ho * wo) * 4 / (copy_gbs * 1e9) * 1e6
    issue_us = blocks * warps * issued / (SMS * 4 * CLOCK_HZ) * 1e6
    bps = blocks_per_sm(regs, smem, warps)
    return {
        "useful": useful,
        "regs": regs,
        "blocks_per_sm": bps,
        "occupancy": bps * warps / 64,
        "dram_us": dram_us,
        "lds_us": lds_us,
        "issue_us": issue_us,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ptxas", required=True)
    ap.add_argument("--cubin", required=True)
    ap.add_argument("--cuobjdump", required=True)
    ap.add_argument("--copy-gbs", type=float, default=4191.0, help="copy bandwidth (the H200's, 2026-11-28)")
    ap.add_argument("--measured", help="a gpu-check.json: its medians beside the floors")
    args = ap.parse_args()
    report = ptxas_report(args.ptxas)
    measured = {}
    if args.measured:
        for t in json.load(open(args.measured))["timings"]:
            measured[(t["name"], t["shape"])] = t["median_ms"] * 1e3
    print(
        "| layer | kernel | regs | blocks/SM | useful | issued/thread | DRAM us | LDS us | issue us | floor us "
        "| predicted % of copy | measured us |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c, size, k, s in LAYERS:
        shape = f"{BATCH}x{c}x{size}x{size} k{k} s{s}"
        auto = 8 if size // s >= 48 else 4 if size // s >= 24 else 2
        rows_of = []
        for rows in (2, 4, 8):
            layouts = [(False, False, False), (False, True, False)]
            if s == 2:
                layouts += [(True, False, False), (True, True, False), (False, True, True)]
            for split, row_staging, pairs in layouts:
                suffix = "_v4" + ("s" if split else "") + ("p" if pairs else "") + ("r" if row_staging else "")
                name = f"dw_forward_tiled_k{k}_s{s}_r{rows}{suffix}"
                if name not in report:
                    continue
                regs, smem = report[name]
                issued = issued_per_thread(args.cuobjdump, args.cubin, name, rows)
                m = model(c, size, k, s, rows, split, regs, smem, issued, args.copy_gbs, pairs=pairs)
                floor = max(m["dram_us"], m["lds_us"], m["issue_us"])
                # The 2026-11-28 check timed Auto's kernel of then (plain rows, chunk staging:
                # today's `_v4`) as "tiled".
                old = rows == auto and suffix == "_v4"
                seen = measured.get(("depthwise+bn+relu6 fwd (tiled)", shape)) if old else None
                # Auto: row staging, at stride 2 the taps read in pairs.
                now = rows == auto and row_staging and (pairs or s == 1)
                tag = " (auto)" if now else " (2026-11-28)" if old else ""
                rows_of.append((name, tag, m, issued, floor, seen))
        # The fitted 28-wide tile, where one covers the plane.
        ho = size // s
        fit = (7, 8) if ho % 56 == 0 else (4, 7) if ho % 28 == 0 else None
        if fit:
            rows, block_y = fit
            name = f"dw_forward_tiled_k{k}_s{s}_r{rows}_v4{'p' if s == 2 else ''}r_w28x{block_y}"
            regs, smem = report[name]
            issued = issued_per_thread(args.cuobjdump, args.cubin, name, rows)
            m = model(c, size, k, s, rows, False, regs, smem, issued, args.copy_gbs, 28, block_y, pairs=s == 2)
            rows_of.append((name, "", m, issued, max(m["dram_us"], m["lds_us"], m["issue_us"]), None))
        for name, tag, m, issued, floor, seen in rows_of:
                print(
                    f"| {shape} | `{name}`{tag} | {m['regs']} | {m['blocks_per_sm']} ({m['occupancy']:.0%}) | "
                    f"{m['useful']:.0%} | {issued} | {m['dram_us']:.0f} | {m['lds_us']:.0f} | {m['issue_us']:.0f} | {floor:.0f} | "
                    f"{100 * m['dram_us'] / (floor * SLOW):.0f}-{100 * m['dram_us'] / (floor * FAST):.0f} | "
                    f"{'' if seen is None else f'{seen:.0f}'} |"
                )


if __name__ == "__main__":
    main()
