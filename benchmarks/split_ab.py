#!/usr/bin/env python
"""The engines' measured row split (Note [Measured row split]) against the rule and the two
fixed splits, paired in one process.

Per shape and mode: 12 calls under "auto" (the measurement decides), then rounds of loops
of calls under "rule", "auto", "units" and "rows" in turn (`_C._set_engine_split`); prints
the forward split auto chose and the median over rounds of each mode's time / auto's
(> 1: auto faster). float32, inference under no_grad, training forward + backward. The
choice is made once per process: run it more than once.

    flock /tmp/fusedrnn-bench.lock python benchmarks/split_ab.py
    python benchmarks/split_ab.py --cells lstm --batches 8 32 --rounds 9
"""
import argparse
import statistics
import time

import torch

import fusedrnn
from benchlib.machine import cpu_flags, cpu_model
from fusedrnn import _C

MODES = ("rule", "auto", "units", "rows")


def make_call(cell, shape, train):
    T, B, I, H = shape
    module = (fusedrnn.LSTM if cell == "lstm" else fusedrnn.GRU)(I, H)
    x = torch.randn(T, B, I, requires_grad=train)

    def call():
        if train:
            y, _ = module(x)
            y.backward(torch.ones_like(y))
        else:
            with torch.no_grad():
                module(x)
    return call


def loop_time(call, n):
    start = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - start) / n


def chosen(cell, B, train):
    variant = 3 if train else 1  # saving for a backward (2) + the input part (1)
    for r in _C._engine_split_records():
        if r["loop"] == f"{cell}_forward" and r["B"] == B and r["variant"] == variant:
            return ("R" if r["rows"] else "U") if r["decided"] else "?"
    return "-"  # not in doubt: the rule decides


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", nargs="+", default=["lstm", "gru"])
    p.add_argument("--batches", nargs="+", type=int, default=[8, 16, 32])
    p.add_argument("--shape", nargs=3, type=int, default=[128, 64, 256], metavar=("T", "I", "H"))
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    T, I, H = args.shape
    flags = " ".join(f for f in cpu_flags() if f.startswith(("avx", "fma", "amx")))
    print(f"{cpu_model()}; {flags}; capability={_C._cpu_capability()} "
          f"threads={args.threads} torch={torch.__version__}")
    print("| cell | T, B, I, H | mode | chose | " + " | ".join(f"{m} / auto" for m in MODES
                                                       if m != "auto") + " |")
    print("|---|---|---|---|--:|--:|--:|")
    saved = _C._engine_split()
    try:
        for cell in args.cells:
            for B in args.batches:
                for train in (False, True):
                    call = make_call(cell, (T, B, I, H), train)
                    _C._set_engine_split("auto")
                    for _ in range(12):
                        call()
                    start = time.perf_counter()
                    call()
                    n = max(1, int(0.12 / (time.perf_counter() - start)))
                    ratios = {m: [] for m in MODES if m != "auto"}
                    for _ in range(args.rounds):
                        times = {}
                        for m in MODES:
                            _C._set_engine_split(m)
                            times[m] = loop_time(call, n)
                        for m in ratios:
                            ratios[m].append(times[m] / times["auto"])
                    cols = " | ".join(f"{statistics.median(v):.3f}" for v in ratios.values())
                    print(f"| {cell} | {T}, {B}, {I}, {H} | {'train' if train else 'infer'} | "
                          f"{chosen(cell, B, train)} | {cols} |", flush=True)
    finally:
        _C._set_engine_split(saved)


if __name__ == "__main__":
    main()
