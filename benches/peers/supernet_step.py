"""PyTorch peer of `fairnas bench-step`: one strictly fair supernet step (m paths forward and
backward on the same batch, gradients accumulated, ONE SGD update) on the NAS-Bench-Macro
supernet, timed in PyTorch eager on the CPU.

The network mirrors fairnas-supernet's (docs/FAIRNAS.md section 7): stem conv3x3(3->32)+BN+ReLU,
8 layers of {skip, MBConv k3 e3, MBConv k5 e6} (ReLU, symmetric padding; skip = identity, or a
strided 1x1 conv + BN when the shape changes; residual on MBConvs when shape is kept),
head conv1x1(->1280)+BN+ReLU, global average pool, FC(1280->10). SGD momentum 0.9, Nesterov,
weight decay 4e-5 except BN parameters and biases, cross-entropy.

Usage (see benches/supernet_step.sh, which runs this next to our binary):
    python3 supernet_step.py --batch 64 --steps 10 --warmup 2 --threads 2 [--json]
Prints the median step time and steps/s.
"""

import argparse
import json
import random
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

LAYERS = [(64, 2), (64, 1), (128, 2), (128, 1), (128, 1), (256, 2), (256, 1), (256, 1)]


def conv_bn(i, o, k, s, groups=1, act=True):
    mods = [nn.Conv2d(i, o, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(o)]
    if act:
        mods.append(nn.ReLU(inplace=True))
    return nn.Sequential(*mods)


class MBConv(nn.Module):
    def __init__(self, i, o, k, e, s):
        super().__init__()
        h = i * e
        self.body = nn.Sequential(conv_bn(i, h, 1, 1), conv_bn(h, h, k, s, groups=h), conv_bn(h, o, 1, 1, act=False))
        self.residual = s == 1 and i == o

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class Skip(nn.Module):
    def __init__(self, i, o, s):
        super().__init__()
        self.project = conv_bn(i, o, 1, s, act=False) if (i != o or s != 1) else None

    def forward(self, x):
        return x if self.project is None else self.project(x)


class Supernet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 32, 3, 1)
        layers, c = [], 32
        for o, s in LAYERS:
            layers.append(nn.ModuleList([Skip(c, o, s), MBConv(c, o, 3, 3, s), MBConv(c, o, 5, 6, s)]))
            c = o
        self.layers = nn.ModuleList(layers)
        self.head = conv_bn(c, 1280, 1, 1)
        self.classifier = nn.Linear(1280, 10)

    def forward(self, x, path):
        x = self.stem(x)
        for candidates, choice in zip(self.layers, path):
            x = candidates[choice](x)
        x = self.head(x).mean((2, 3))
        return self.classifier(x)


def strict_fair_paths(rng, layers=8, choices=3):
    columns = []
    for _ in range(layers):
        p = list(range(choices))
        rng.shuffle(p)
        columns.append(p)
    return [[columns[l][k] for l in range(layers)] for k in range(choices)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = Supernet().train()
    decay = [p for n, p in net.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in net.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 4e-5}, {"params": no_decay, "weight_decay": 0.0}],
        lr=0.01, momentum=0.9, nesterov=True,
    )
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    rng = random.Random(0)
    times = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        for path in strict_fair_paths(rng):
            F.cross_entropy(net(x, path), y).backward()
        opt.step()
        elapsed = time.perf_counter() - start
        if step >= args.warmup:
            times.append(elapsed)
    result = {
        "peer": "pytorch-eager",
        "torch": torch.__version__,
        "threads": args.threads,
        "batch": args.batch,
        "paths_per_step": 3,
        "steps": args.steps,
        "median_step_s": statistics.median(times),
        "min_step_s": min(times),
        "max_step_s": max(times),
        "steps_per_s": 1.0 / statistics.median(times),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"PyTorch {torch.__version__} eager, {args.threads} threads, batch {args.batch}: "
              f"median {result['median_step_s']*1000:.0f} ms/step "
              f"(min {result['min_step_s']*1000:.0f}, max {result['max_step_s']*1000:.0f}), "
              f"{result['steps_per_s']:.3f} steps/s")


if __name__ == "__main__":
    main()
