#!/usr/bin/env python
"""Backward engine vs per-step loop vs torch.nn (Note [CPU backward engine]).

Paired and interleaved in one process: every repeat times each variant once, in turn, on
the same module weights and inputs; the figure is the median over repeats. float32.

    flock /tmp/fusedrnn-bench.lock python benchmarks/bwd_engine_bench.py --threads 2
    python benchmarks/bwd_engine_bench.py --cell lstm --shapes 128,8,64,256 --repeats 5

Variants: engine (fusedrnn in Auto mode) / steps (_C._set_cpu_engine('steps')), torchnn; bwd = backward only
(forward untimed), train = forward + backward. "time loop us/step" is the engine's run_team
region alone (_C._bwd_engine_loop_ns), without the all-steps GEMMs after it. With --options: the engine with
grad_clip + truncate, and with track_grad_norms, against the plain engine.
"""
import argparse
import statistics
import time

import torch

import fusedrnn
from fusedrnn import _C

SHAPES = [(128, 1, 64, 256), (128, 8, 64, 256), (128, 32, 64, 256), (100, 64, 512, 512),
          (64, 1, 1, 64), (24, 16, 8, 32)]


def make(cell, I, H, **kw):
    fused = getattr(fusedrnn, cell.upper())(I, H, **kw)
    nn = getattr(torch.nn, cell.upper())(I, H)
    nn.load_state_dict({k: v for k, v in fused.state_dict().items()}, strict=False)
    return fused, nn


def step_fns(module, x, g):
    """(forward, backward, train) closures for one module."""
    state = {}

    def fwd():
        xx = x.detach().requires_grad_()
        out, h = module(xx)
        hs = h if isinstance(h, tuple) else (h,)
        state["outs"] = (out,) + hs

    def bwd():
        outs = state.pop("outs")
        torch.autograd.backward(outs, [g[0]] + [torch.ones_like(o) for o in outs[1:]])
        for p in module.parameters():
            p.grad = None

    def train():
        fwd()
        bwd()

    return fwd, bwd, train


def measure_floor_rates():
    """(L2 read bytes/s, sgemm FLOP/s) of one core: a sum over a 1 MiB buffer (L2-resident
    after the first pass) and a 1024^3 matmul, best of several."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        buf = torch.randn(256 * 1024)
        best_bw = 0.0
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(200):
                buf.sum()
            best_bw = max(best_bw, 200 * buf.numel() * 4 / (time.perf_counter() - t0))
        a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
        best_fl = 0.0
        for _ in range(5):
            t0 = time.perf_counter()
            a @ b
            best_fl = max(best_fl, 2 * 1024 ** 3 / (time.perf_counter() - t0))
        return best_bw, best_fl
    finally:
        torch.set_num_threads(old)


def step_floor(cell, B, H, threads, bw, flops):
    """Lower bound of one backward step's recurrence: each thread reads its W_hh slice (from
    L2 at best) and does its share of the 2 B K H FLOPs of dgates_t W_hh at the sgemm rate."""
    K = (4 if cell == "lstm" else 3) * H
    n = max(1, min(threads, (H + 15) // 16))
    return max(K * H * 4 / n / bw, 2 * B * K * H / n / flops)


def timed(fn, before=None):
    if before is not None:
        before()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cell", default="both")
    ap.add_argument("--shapes", default=None, help="T,B,I,H;T,B,I,H")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--options", action="store_true", help="time clip+truncate and the record")
    ap.add_argument("--floor", action="store_true",
                    help="measure L2 read bandwidth and the sgemm rate of one core, and print "
                         "each shape's per-step floor of the backward recurrence")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shapes = SHAPES if not args.shapes else [tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";")]
    cells = ["lstm", "gru"] if args.cell == "both" else [args.cell]
    print(f"capability={_C._cpu_capability()} threads={torch.get_num_threads()} torch={torch.__version__}")
    rates = measure_floor_rates() if args.floor else None
    if rates:
        print(f"one core: L2 read {rates[0] / 1e9:.1f} GB/s, sgemm {rates[1] / 1e9:.1f} GFLOP/s")
    old = _C._cpu_engine()
    try:
        for cell in cells:
            for (T, B, I, H) in shapes:
                torch.manual_seed(0)
                x = torch.randn(T, B, I)
                g = (torch.randn(T, B, H),)
                fused, nn = make(cell, I, H)
                variants = {}
                f_fwd, f_bwd, f_train = step_fns(fused, x, g)
                n_fwd, n_bwd, n_train = step_fns(nn, x, g)
                # "engine" runs in Auto mode, as users get it (it picks the engine, and its
                # thread count, for every shape here); "steps" forces the per-step loop.
                modes = {"engine": "auto", "steps": "steps"}
                for name, mode in modes.items():
                    def set_mode(mode=mode):
                        _C._set_cpu_engine(mode)
                    variants[name] = (set_mode, f_fwd, f_bwd, f_train)
                variants["torchnn"] = (lambda: None, n_fwd, n_bwd, n_train)
                if args.options:
                    clip, _ = make(cell, I, H, grad_clip=1.0, grad_clip_mode="value", truncate=16)
                    clip.load_state_dict(fused.state_dict())
                    track, _ = make(cell, I, H, track_grad_norms=True)
                    track.load_state_dict(fused.state_dict())
                    for name, m in (("engine_clip", clip), ("engine_track", track)):
                        fw, bw, tr = step_fns(m, x, g)
                        variants[name] = (lambda: _C._set_cpu_engine("auto"), fw, bw, tr)
                res = {name: {"bwd": [], "train": [], "loop": []} for name in variants}
                for rep in range(args.repeats + 1):
                    for name, (setup, fw, bw, tr) in variants.items():
                        setup()
                        fw()
                        ns = _C._bwd_engine_loop_ns()
                        b = timed(bw)
                        loop = (_C._bwd_engine_loop_ns() - ns) * 1e-9
                        setup()
                        tt = timed(tr)
                        if rep:  # the first round warms up
                            res[name]["bwd"].append(b)
                            res[name]["train"].append(tt)
                            res[name]["loop"].append(loop)
                med = {n: {m: statistics.median(v) for m, v in r.items()} for n, r in res.items()}
                e, s, t = med["engine"], med["steps"], med["torchnn"]
                line = (f"{cell} T={T} B={B} I={I} H={H}: bwd engine {e['bwd']*1e3:.2f} ms "
                        f"(time loop {e['loop']/T*1e6:.1f} us/step), steps {s['bwd']*1e3:.2f} ms, torch.nn "
                        f"{t['bwd']*1e3:.2f} ms | train engine {e['train']*1e3:.2f} ms, steps "
                        f"{s['train']*1e3:.2f}, torch.nn {t['train']*1e3:.2f} | bwd engine/steps "
                        f"speedup {s['bwd']/e['bwd']:.2f}x, train vs torch.nn "
                        f"{t['train']/e['train']:.2f}x (steps {t['train']/s['train']:.2f}x)")
                if rates:
                    fl = step_floor(cell, B, H, args.threads, *rates)
                    line += f" | floor {fl * 1e6:.1f} us/step"
                if args.options:
                    c, k = med["engine_clip"], med["engine_track"]
                    line += (f" | clip+trunc bwd {c['bwd']/e['bwd']-1:+.1%} train "
                             f"{c['train']/e['train']-1:+.1%}; record bwd {k['bwd']/e['bwd']-1:+.1%} "
                             f"train {k['train']/e['train']-1:+.1%}")
                print(line, flush=True)
    finally:
        _C._set_cpu_engine(old)


if __name__ == "__main__":
    main()
