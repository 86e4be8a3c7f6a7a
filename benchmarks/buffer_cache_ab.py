#!/usr/bin/env python
"""CPU buffer cache on / off (Note [CPU buffer cache]), paired in one process.

A training loop of fusedrnn alone (forward, backward, SGD step; no torch.nn in the process,
whose allocations would change glibc's state), alternating the cache on and off each round
(`_C._set_cpu_cache_limit`), reporting the median time per step of each, the page faults per
step (getrusage), and the median of the per-round ratios off / on. float32, 2 threads.

    flock /tmp/fusedrnn-bench.lock python benchmarks/buffer_cache_ab.py
    python benchmarks/buffer_cache_ab.py --cell lstm --shape 128 8 64 256 --rounds 20
"""
import argparse
import resource
import statistics

import torch

from benchlib.timing import training_loop
from fusedrnn import _C

SHAPES = [(128, 1, 64, 256), (128, 8, 64, 256), (128, 32, 64, 256), (64, 32, 1, 64),
          (24, 16, 8, 32), (100, 64, 512, 512)]


def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(cell, shape, rounds):
    timed, k = training_loop(cell, shape)
    times = {"on": [], "off": []}
    fault_sum = {"on": 0, "off": 0}
    old = _C._set_cpu_cache_limit(512 << 20)
    try:
        for r in range(rounds):
            for mode in ("on", "off") if r % 2 == 0 else ("off", "on"):
                _C._set_cpu_cache_limit(512 << 20 if mode == "on" else 0)
                timed(2)
                f0 = faults()
                times[mode].append(timed(k))
                fault_sum[mode] += faults() - f0
    finally:
        _C._set_cpu_cache_limit(old)
    ratio = statistics.median(b / a for a, b in zip(times["on"], times["off"]))
    return {mode: (statistics.median(times[mode]) * 1e3, fault_sum[mode] / (k * rounds))
            for mode in times}, ratio


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cell", choices=["lstm", "gru"], nargs="+", default=["lstm", "gru"])
    p.add_argument("--shape", type=int, nargs=4, action="append", metavar=("T", "B", "I", "H"))
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"capability={_C._cpu_capability()} threads={args.threads} torch={torch.__version__}")
    print("| cell | T, B, I, H | cache off ms/step (faults/step) | cache on ms/step (faults/step)"
          " | off / on, paired |")
    print("|---|---|--:|--:|--:|")
    for cell in args.cell:
        for shape in args.shape or SHAPES:
            res, ratio = measure(cell, tuple(shape), args.rounds)
            off, on = res["off"], res["on"]
            print(f"| {cell} | {', '.join(map(str, shape))} | {off[0]:.3f} ({off[1]:.0f}) | "
                  f"{on[0]:.3f} ({on[1]:.0f}) | {ratio:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
