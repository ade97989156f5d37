#!/usr/bin/env python3
"""PyTorch + PIL + torchvision peer of `fairnas verify` on a flat folder of <wnid>_*.JPEG images.

Used for two things:
  * the reference accuracy `fairnas verify` must match (EfficientNet-Lite0 from the real
    efficientnet_pytorch checkpoint, its own protocol: bicubic resize 256, center crop 224,
    (x - 127) / 128);
  * the throughput peer of BENCHMARKS.md: a torch DataLoader with N workers feeding the model in
    inference mode, timed end to end (dataset listing to the last batch).

The network is generate_parity.lite0() (an independent PyTorch implementation of the block
family, crates/fairnas-model/tests/fixtures/generate_parity.py) loaded through the
efficientnet_pytorch -> canonical name map of generate_checkpoints.py.

Setup (once): python3 -m venv VENV && VENV/bin/pip install torch torchvision numpy pillow safetensors
Run from the repository root:
    VENV/bin/python benches/peers/verify_imagenet.py --images ../shared/data/imagenet-sample \
        --weights ../shared/data/weights/efficientnet-lite0-57934424.pth --workers 2 --threads 2 --json
"""
import argparse
import json
import os
import sys
import time
from collections import OrderedDict

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "crates/fairnas-model/tests/fixtures")
sys.path.insert(0, FIXTURES)
sys.path.insert(0, os.path.join(FIXTURES, "checkpoints"))
from generate_parity import lite0  # noqa: E402
from generate_checkpoints import canon_effnet  # noqa: E402

WNIDS = [line.split("\t")[0] for line in
         open(os.path.join(ROOT, "crates/fairnas-data/assets/imagenet_classes.tsv")).read().splitlines()]
INDEX = {w: i for i, w in enumerate(WNIDS)}


class FlatWnidFolder(torch.utils.data.Dataset):
    def __init__(self, root, transform, limit=None):
        exts = (".jpg", ".jpeg", ".png")
        files = sorted(f for f in os.listdir(root) if f.lower().endswith(exts))
        if limit:
            files = files[:limit]
        self.items = [(os.path.join(root, f), INDEX[f.split("_")[0]]) for f in files]
        self.transform = transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        with open(path, "rb") as f:
            img = Image.open(f).convert("RGB")
        return self.transform(img), label


def inception_normalise(img):
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float()
    return (x - 127.0) / 128.0


def build_lite0(weights):
    src = torch.load(weights, map_location="cpu", weights_only=True)
    net = lite0().eval()
    ref = net.state_dict()
    sd = OrderedDict((canon_effnet(k), v) for k, v in src.items())
    for k, v in ref.items():
        sd.setdefault(k, v)
    net.load_state_dict(sd, strict=True)
    return net


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    net = build_lite0(args.weights)
    transform = transforms.Compose([
        transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(224),
        inception_normalise,
    ])
    data = FlatWnidFolder(args.images, transform, args.limit)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, shuffle=False,
                                         num_workers=args.workers)
    top1 = top5 = seen = 0
    network = 0.0
    with torch.inference_mode():
        for x, y in loader:
            t = time.perf_counter()
            logits = net(x)
            network += time.perf_counter() - t
            pred = logits.topk(5, 1, True, True).indices
            correct = pred.eq(y.view(-1, 1))
            top1 += int(correct[:, :1].sum())
            top5 += int(correct.sum())
            seen += len(y)
    wall = time.perf_counter() - started
    result = {
        "images": seen, "top1": 100.0 * top1 / seen, "top5": 100.0 * top5 / seen,
        "top1_correct": top1, "top5_correct": top5, "wall_s": wall, "images_per_s": seen / wall,
        "network_s": network, "workers": args.workers, "threads": args.threads,
        "batch_size": args.batch_size, "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2) if args.json else
          f"top-1 {result['top1']:.2f}% top-5 {result['top5']:.2f}% ({seen} images) "
          f"wall {wall:.1f}s {result['images_per_s']:.1f} images/s (network {network:.1f}s)")


if __name__ == "__main__":
    main()
