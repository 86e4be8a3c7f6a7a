#!/usr/bin/env python
"""CPU bfloat16 / float16: fusedrnn against torch.nn, same process, same shapes and weights.

fusedrnn runs a half-precision CPU call in float32 (docs/dtypes.md): its cost is the float32
kernels plus the casts of input, weights and states in and of outputs out (and back in the
backward). torch.nn runs bfloat16 / float16 with its own CPU kernels (oneDNN where it takes
them). Both are timed interleaved within each repeat (the order alternates), so background
load hits them alike; the report is the median over repeats, with fusedrnn float32 as a
third row for the cost of the casts.

    python benchmarks/half_cpu.py                    # default shapes, LSTM + GRU, bf16 + fp16
    python benchmarks/half_cpu.py --repeats 2        # smoke run (a minute on 2 busy cores)
    python benchmarks/half_cpu.py --shapes 128,8,64,256 --kinds lstm --dtypes bfloat16

Modes: fwd (forward, inputs and weights require grad) and fwdbwd (forward + backward of
sum(out * g) + sum(h_n * g_h) [+ sum(c_n * g_c)], through torch.autograd.backward). Nothing
is asserted; this is a benchmark, not a test (docs/design.md §5).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

try:
    import fusedrnn
except ImportError:  # run from a checkout: the repository root holds the package
    sys.path.append(str(Path(__file__).resolve().parent.parent))
    import fusedrnn

DEFAULT_SHAPES = [(128, 8, 64, 256), (100, 64, 512, 512), (64, 32, 1, 64)]  # T, B, I, H
FLAGS = ("avx512_bf16", "amx_bf16", "avx512fp16", "avx512_fp16", "f16c", "amx_fp16")


def cpu_description() -> str:
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    have = [f for f in FLAGS if f in flags]
    missing = [f for f in FLAGS if f not in flags]
    return (f"CPU: {model}\n"
            f"flags present: {' '.join(have) or '-'}; absent: {' '.join(missing) or '-'}")


def make_models(kind: str, I: int, H: int, dtype: torch.dtype, seed: int = 0):
    """(fusedrnn in dtype, torch.nn in dtype, fusedrnn in float32), the same weights."""
    name = {"lstm": "LSTM", "gru": "GRU"}[kind]
    torch.manual_seed(seed)
    base = getattr(fusedrnn, name)(I, H)
    state = {k: v.to(dtype) for k, v in base.state_dict().items()}
    ours = getattr(fusedrnn, name)(I, H, dtype=dtype)
    ours.load_state_dict(state)
    theirs = getattr(nn, name)(I, H, dtype=dtype)
    theirs.load_state_dict(state)
    ours32 = getattr(fusedrnn, name)(I, H)
    ours32.load_state_dict({k: v.float() for k, v in state.items()})
    return {"fusedrnn": ours, "torch.nn": theirs, "fusedrnn f32": ours32}


def make_step(model, x, mode: str):
    """A callable timing one forward (fwd) or one training step (fwdbwd)."""
    x = x.detach().clone().requires_grad_()
    out, state = model(x)
    outputs = (out,) + (state if isinstance(state, tuple) else (state,))
    grads = [torch.randn_like(o) for o in outputs]

    def step():
        out, state = model(x)
        if mode == "fwdbwd":
            outs = (out,) + (state if isinstance(state, tuple) else (state,))
            torch.autograd.backward(outs, grads)

    return step


def time_once(fn, number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def bench(kind, shape, dtype, mode, repeats, warmup, min_time):
    T, B, I, H = shape
    models = make_models(kind, I, H, dtype)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, I, generator=gen)
    steps = {}
    for name, model in models.items():
        xin = x.to(next(model.parameters()).dtype)
        try:
            steps[name] = make_step(model, xin, mode)
        except RuntimeError as exc:  # e.g. a torch.nn kernel missing for this dtype
            print(f"  {name}: cannot run ({str(exc).splitlines()[0][:80]})")
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    # Calls per measurement: enough for min_time with the slowest implementation.
    slowest = max(time_once(fn, 1) for fn in steps.values())
    number = max(1, int(min_time / max(slowest, 1e-7)))
    times = {name: [] for name in steps}
    order = list(steps)
    for r in range(repeats):
        for name in (order if r % 2 == 0 else order[::-1]):
            times[name].append(time_once(steps[name], number))
    return {name: statistics.median(v) for name, v in times.items()}, number


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="*", default=None,
                        help="T,B,I,H each (default: %s)" % " ".join(
                            ",".join(map(str, s)) for s in DEFAULT_SHAPES))
    parser.add_argument("--kinds", nargs="*", default=["lstm", "gru"])
    parser.add_argument("--dtypes", nargs="*", default=["bfloat16", "float16"])
    parser.add_argument("--modes", nargs="*", default=["fwd", "fwdbwd"])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--min-time", type=float, default=0.2,
                        help="seconds per measurement (calls per measurement adapt)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    shapes = ([tuple(int(v) for v in s.split(",")) for s in args.shapes]
              if args.shapes else DEFAULT_SHAPES)

    torch.set_num_threads(args.threads)
    print(cpu_description())
    print(f"fusedrnn._C._cpu_capability(): {fusedrnn._C._cpu_capability()}; "
          f"torch {torch.__version__} (ATen CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, oneDNN "
          f"{'on' if torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled else 'off'}); "
          f"threads {torch.get_num_threads()}; python {platform.python_version()}; "
          f"pid {os.getpid()}")
    print(f"repeats {args.repeats} (median), warmup {args.warmup}, "
          f">= {args.min_time}s per measurement\n")
    print("| kind | dtype | T, B, I, H | mode | fusedrnn ms | torch.nn ms | torch.nn / fusedrnn "
          "| fusedrnn f32 ms | casts % |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind in args.kinds:
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            for shape in shapes:
                for mode in args.modes:
                    med, _ = bench(kind, shape, dtype, mode, args.repeats, args.warmup,
                                   args.min_time)
                    ours, f32 = med.get("fusedrnn"), med.get("fusedrnn f32")
                    theirs = med.get("torch.nn")

                    def ms(v):
                        return "-" if v is None else f"{v * 1e3:.3f}"

                    ratio = f"{theirs / ours:.2f}x" if ours and theirs else "-"
                    casts = f"{(ours / f32 - 1) * 100:+.0f}" if ours and f32 else "-"
                    print(f"| {kind} | {dtype_name} | {', '.join(map(str, shape))} | {mode} | "
                          f"{ms(ours)} | {ms(theirs)} | {ratio} | {ms(f32)} | {casts} |",
                          flush=True)


if __name__ == "__main__":
    main()
