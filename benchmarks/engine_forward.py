"""Inference time of the CPU forward engine against torch.nn and the per-step loop.

Paired and interleaved in one process: each round times torch.nn, fusedrnn with the engine
forced and fusedrnn with the per-step loop forced (same module, same input) back to back,
and the reported figure is the median over rounds (ratios: median of per-round ratios).
One layer, float32, torch.no_grad, eval mode. Per-step times include the fixed per-call
cost of the module and op layer divided by T.

    flock /tmp/fusedrnn-bench.lock python benchmarks/engine_forward.py [--threads 2]
        [--rounds 15] [--shapes T,B,I,H ...] [--cells LSTM GRU] [--stat median|min]
"""
import argparse
import statistics
import time

import torch

import fusedrnn
from fusedrnn import _C

SHAPES = [(128, 1, 64, 256), (128, 8, 64, 256), (128, 32, 64, 256), (100, 64, 512, 512),
          (64, 1, 1, 64), (24, 16, 8, 32)]


def timed(fn, reps):
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def bench(cell, shape, rounds, stat, reps_macs=2e8):
    T, B, I, H = shape
    torch.manual_seed(0)
    nn_mod = getattr(torch.nn, cell)(I, H).eval()
    ours = getattr(fusedrnn, cell)(I, H).eval()
    ours.load_state_dict(nn_mod.state_dict())
    x = torch.randn(T, B, I)
    macs = T * B * (4 if cell == "LSTM" else 3) * H * (H + I)
    reps = 1 if stat == "min" else max(1, int(reps_macs / macs))

    def run_nn():
        nn_mod(x)

    def run_mode(mode):
        def f():
            _C._set_cpu_engine(mode)
            ours(x)
        return f

    fns = {"torch.nn": run_nn, "engine": run_mode("engine"), "steps": run_mode("steps")}
    with torch.no_grad():
        for f in fns.values():  # warm up
            timed(f, reps)
        times = {k: [] for k in fns}
        for _ in range(rounds):
            for k, f in fns.items():
                times[k].append(timed(f, reps))
    _C._set_cpu_engine("auto")
    if stat == "min":
        # On a shared, busy machine the minimum over many short rounds is the run that was
        # not preempted: the closest figure to an idle machine's.
        med = {k: min(v) for k, v in times.items()}
        ratio = {k: med["torch.nn"] / med[k] for k in ("engine", "steps")}
    else:
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = {k: statistics.median(a / b for a, b in zip(times["torch.nn"], times[k]))
                 for k in ("engine", "steps")}
    return med, ratio


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--cells", nargs="+", default=["LSTM", "GRU"])
    ap.add_argument("--shapes", nargs="+", default=None)
    ap.add_argument("--stat", choices=["median", "min"], default="median",
                    help="median of rounds (ratios: median of per-round ratios), or minimum")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes] if args.shapes else SHAPES
    saved = _C._cpu_engine()
    print(f"fusedrnn from {fusedrnn.__file__}, capability {_C._cpu_capability()}, "
          f"{args.threads} threads, torch {torch.__version__}")
    print(f"{'cell':5} {'T,B,I,H':>16} {'torch.nn us/step':>17} {'engine us/step':>15} "
          f"{'steps us/step':>14} {'engine x':>9} {'steps x':>8}")
    try:
        for cell in args.cells:
            for shape in shapes:
                med, ratio = bench(cell, shape, args.rounds, args.stat)
                T = shape[0]
                print(f"{cell:5} {','.join(map(str, shape)):>16} {1e6 * med['torch.nn'] / T:17.2f} "
                      f"{1e6 * med['engine'] / T:15.2f} {1e6 * med['steps'] / T:14.2f} "
                      f"{ratio['engine']:8.2f}x {ratio['steps']:7.2f}x", flush=True)
    finally:
        _C._set_cpu_engine(saved)


if __name__ == "__main__":
    main()
