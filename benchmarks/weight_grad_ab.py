#!/usr/bin/env python
"""Weight gradients on the engine's micro-kernel against BLAS (Note [Weight gradients on
the engine kernel]), paired in one process.

Part 1, the product alone: `_C._outer_sum(a, b)` (a^T b, a [K, G], b [K, R], float32) on
each backend in turn, 5 alternations of best-of-7, median; GFLOP/s and the share of the
FMA peak given by --peak (benchmarks/floor.py measures it).
Part 2, a whole training step of fusedrnn alone (forward, backward, SGD), the backend
switched each round (`_C._set_weight_grad`), median of the per-round ratios blas / engine.

    flock /tmp/fusedrnn-bench.lock python benchmarks/weight_grad_ab.py --peak 460
"""
import argparse
import statistics
import time

import torch

from benchlib.timing import training_loop
from fusedrnn import _C

PRODUCTS = [(1016, 1024, 256), (1024, 1024, 64), (4064, 1024, 256), (6336, 2048, 512),
            (1024, 768, 256)]
SHAPES = [("lstm", (128, 1, 64, 256)), ("lstm", (128, 8, 64, 256)), ("lstm", (128, 32, 64, 256)),
          ("lstm", (64, 32, 1, 64)), ("lstm", (24, 16, 8, 32)), ("gru", (128, 8, 64, 256)),
          ("gru", (128, 32, 64, 256)), ("lstm", (100, 64, 512, 512)), ("gru", (100, 64, 512, 512))]


def products(peak):
    print("| K, G, R | engine ms | GFLOP/s (peak share) | blas ms | GFLOP/s (peak share) |")
    print("|---|--:|--:|--:|--:|")
    for K, G, R in PRODUCTS:
        a, b = torch.randn(K, G), torch.randn(K, R)
        best = {"engine": [], "blas": []}
        for name in ["engine", "blas"] * 5:
            _C._set_weight_grad(name)
            _C._outer_sum(a, b)
            ts = []
            for _ in range(7):
                t0 = time.perf_counter()
                _C._outer_sum(a, b)
                ts.append(time.perf_counter() - t0)
            best[name].append(min(ts))
        flops = 2 * K * G * R
        cols = []
        for name in ("engine", "blas"):
            t = statistics.median(best[name])
            cols.append(f"{t * 1e3:.3f} | {flops / t / 1e9:.0f} ({flops / t / 1e9 / peak:.0%})")
        print(f"| {K}, {G}, {R} | {' | '.join(cols)} |", flush=True)


def steps(rounds):
    print("\n| cell | T, B, I, H | blas ms/step | engine ms/step | blas / engine, paired |")
    print("|---|---|--:|--:|--:|")
    for cell, (T, B, I, H) in SHAPES:
        timed, k = training_loop(cell, (T, B, I, H))
        times = {"engine": [], "blas": []}
        n = rounds if T * B * H < 1 << 20 else max(4, rounds // 3)
        for r in range(n):
            for name in ("engine", "blas") if r % 2 == 0 else ("blas", "engine"):
                _C._set_weight_grad(name)
                timed(1)
                times[name].append(timed(k))
        ratio = statistics.median(b / a for a, b in zip(times["engine"], times["blas"]))
        print(f"| {cell} | {T}, {B}, {I}, {H} | {statistics.median(times['blas']) * 1e3:.3f} | "
              f"{statistics.median(times['engine']) * 1e3:.3f} | {ratio:.2f}x |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peak", type=float, required=True, help="FMA peak, GFLOP/s")
    p.add_argument("--rounds", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-steps", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"capability={_C._cpu_capability()} threads={args.threads} torch={torch.__version__}")
    old = _C._weight_grad()
    try:
        products(args.peak)
        if not args.skip_steps:
            steps(args.rounds)
    finally:
        _C._set_weight_grad(old)


if __name__ == "__main__":
    main()
