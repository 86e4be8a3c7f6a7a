#!/usr/bin/env python
"""Double backward: a gradient-penalty step of fusedrnn vs torch.nn, and the first-order
training step of fusedrnn with and without the double-backward change.

    python benchmarks/double_backward.py                       # T=32 B=16 I=32 H=64, 2 threads
    python benchmarks/double_backward.py --repeats 3           # a quick check that it runs
    python benchmarks/double_backward.py --baseline /tmp/fr-base-pkg   # see 2. below

1. Gradient penalty (WGAN-GP style), fusedrnn.LSTM / GRU against torch.nn.LSTM / GRU with
   the same weights, float32, CPU. One timed step is: forward, critic score
   sum(out * w), gx = d score / d x with create_graph=True, penalty (||gx||_2 - 1)^2 over
   the batch, penalty.backward() into the parameters. fusedrnn's create_graph backward
   recomputes the layer with fusedrnn.reference (a per-step Python loop; csrc/autograd.cpp,
   Note [Double backward of the layer ops]), so this is about torch.nn's cost, not the
   fused kernels'.

2. First-order step (forward + backward, no create_graph), fusedrnn only, in two worker
   processes: this tree (or the tree FUSEDRNN_BENCH_TREE names), and with --baseline a
   directory holding a built fusedrnn package of the tree before the change (its own _C;
   two builds cannot share one process, they register the same ops). The two workers are
   timed in alternating rounds (interleaved), so background load hits both alike. Without
   --baseline only this tree's worker runs.

   Compare builds made from the same objects: a build directory from elsewhere (another
   checkout, other flags or an older compile) can differ by a few percent at small shapes
   on its own. E.g., with <base> the commit before the change:

       mkdir /tmp/fr && git archive <base> setup.py csrc fusedrnn | tar -x -C /tmp/fr
       (cd /tmp/fr && python setup.py build_ext --inplace)      # full build, minutes
       cp -r /tmp/fr/fusedrnn /tmp/fr-base-pkg                   # the baseline package
       cp -r csrc fusedrnn /tmp/fr/ && (cd /tmp/fr && python setup.py build_ext --inplace)
       FUSEDRNN_BENCH_TREE=/tmp/fr python benchmarks/double_backward.py \
           --baseline /tmp/fr-base-pkg

   A/A (--baseline naming this tree itself) shows the noise floor of the machine.

Everything is the median of --repeats timings (each the mean of --inner calls), after
--warmup untimed calls, with torch.set_num_threads(--threads).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from benchlib.machine import cpu_model  # benchmarks/ is on sys.path when run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules(kind, args, torch, fusedrnn):
    """(fusedrnn module, torch.nn module) with identical float32 weights."""
    torch.manual_seed(0)
    ours = {"lstm": fusedrnn.LSTM, "gru": fusedrnn.GRU}[kind](args.I, args.H)
    theirs = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](args.I, args.H)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _timed(fn, inner):
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner


# ---------------------------------------------------------------------------------------
# 1. Gradient penalty, fusedrnn vs torch.nn, in this process


def gradient_penalty(args):
    import torch

    import fusedrnn

    results = {}
    for kind in ("lstm", "gru"):
        modules = _modules(kind, args, torch, fusedrnn)
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(args.T, args.B, args.I, generator=gen)
        w = torch.randn(args.T, args.B, args.H, generator=gen)

        def step(module):
            xi = x.clone().requires_grad_(True)
            out = module(xi)[0]
            (gx,) = torch.autograd.grad((out * w).sum(), xi, create_graph=True)
            penalty = ((gx.flatten(1).norm(dim=1) - 1) ** 2).mean()
            module.zero_grad(set_to_none=True)
            penalty.backward()

        for module in modules:
            for _ in range(args.warmup):
                step(module)
        times = ([], [])
        for r in range(args.repeats):
            order = (0, 1) if r % 2 == 0 else (1, 0)
            for i in order:
                times[i].append(_timed(lambda: step(modules[i]), args.inner))
        ours, theirs = (statistics.median(t) for t in times)
        results[kind] = dict(fusedrnn_ms=ours * 1e3, torchnn_ms=theirs * 1e3,
                             ratio=theirs / ours)
    return results


# ---------------------------------------------------------------------------------------
# 2. First-order step in worker processes


def worker(args):
    """Serve timing rounds of fusedrnn's first-order step: one line in ("lstm" / "gru"),
    one JSON line out (seconds per call)."""
    import torch

    import fusedrnn

    torch.set_num_threads(args.threads)
    def make_step(kind):
        module, _ = _modules(kind, args, torch, fusedrnn)
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(args.T, args.B, args.I, generator=gen, requires_grad=True)
        out, state = module(x)
        shapes = [o.shape for o in (out,) + (tuple(state) if kind == "lstm" else (state,))]
        grads = [torch.randn(s, generator=gen) for s in shapes]

        def step():
            out, state = module(x)
            outputs = (out,) + (tuple(state) if kind == "lstm" else (state,))
            torch.autograd.backward(outputs, grads)

        for _ in range(args.warmup):
            step()
        return step

    steps = {kind: make_step(kind) for kind in ("lstm", "gru")}
    info = dict(fusedrnn=os.path.dirname(fusedrnn.__file__),
                has_double_backward=hasattr(torch.ops.fusedrnn, "lstm_layer_grad"))
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        kind = line.strip()
        if not kind:
            break
        print(json.dumps(_timed(steps[kind], args.inner)), flush=True)


def first_order(args):
    trees = {"this tree": os.environ.get("FUSEDRNN_BENCH_TREE", ROOT)}
    if args.baseline:
        trees["baseline"] = os.path.abspath(args.baseline)
    workers = {}
    for name, path in trees.items():
        env = dict(os.environ, PYTHONPATH=path + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--T", str(args.T),
               "--B", str(args.B), "--I", str(args.I), "--H", str(args.H), "--threads",
               str(args.threads), "--warmup", str(args.warmup), "--inner", str(args.inner)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env=env, cwd=path)
        workers[name] = (proc, json.loads(proc.stdout.readline()))

    def ask(proc, kind):
        proc.stdin.write(kind + "\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())

    results = {}
    names = list(workers)
    for kind in ("lstm", "gru"):
        times = {n: [] for n in names}
        for r in range(args.repeats):
            for n in (names if r % 2 == 0 else names[::-1]):
                times[n].append(ask(workers[n][0], kind))
        results[kind] = {n: statistics.median(t) * 1e3 for n, t in times.items()}
    for proc, _ in workers.values():
        proc.stdin.write("\n")
        proc.stdin.close()
        proc.wait()
    return results, {n: info for n, (_, info) in workers.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--T", type=int, default=32)
    p.add_argument("--B", type=int, default=16)
    p.add_argument("--I", type=int, default=32)
    p.add_argument("--H", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads(N)")
    p.add_argument("--repeats", type=int, default=21, help="timings per median")
    p.add_argument("--inner", type=int, default=3, help="calls per timing")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--baseline", help="directory with a built fusedrnn package of the tree "
                                      "before the change (see the module docstring)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:  # fusedrnn from PYTHONPATH: this tree or the baseline
        return worker(args)
    sys.path.insert(1, ROOT)

    import torch

    import fusedrnn

    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_model()}")
    print(f"fusedrnn._C._cpu_capability(): {fusedrnn._C._cpu_capability()}")
    print(f"torch {torch.__version__}, {args.threads} threads, float32, T={args.T} B={args.B} "
          f"I={args.I} H={args.H}; median of {args.repeats} x {args.inner} calls")

    print("\nGradient-penalty step (forward, create_graph backward, penalty backward):")
    print(f"  {'':5} {'fusedrnn ms':>12} {'torch.nn ms':>12} {'torch.nn / fusedrnn':>20}")
    for kind, r in gradient_penalty(args).items():
        print(f"  {kind:5} {r['fusedrnn_ms']:12.3f} {r['torchnn_ms']:12.3f} {r['ratio']:20.2f}")

    print("\nFirst-order step of fusedrnn (forward + backward, no create_graph):")
    results, infos = first_order(args)
    for name, info in infos.items():
        print(f"  {name}: {info['fusedrnn']} (double backward op: "
              f"{'yes' if info['has_double_backward'] else 'no'})")
    names = list(infos)
    header = "".join(f" {n + ' ms':>14}" for n in names)
    print(f"  {'':5}{header}" + (f" {'this / baseline':>16}" if len(names) > 1 else ""))
    for kind, r in results.items():
        row = "".join(f" {r[n]:14.3f}" for n in names)
        if len(names) > 1:
            row += f" {r[names[0]] / r[names[1]]:16.3f}"
        print(f"  {kind:5}{row}")
    if len(names) == 1:
        print("  (no --baseline: nothing to compare with; see the module docstring)")


if __name__ == "__main__":
    main()
