"""The adding problem at T=200: a vanilla RNN stays at the trivial baseline, LSTM/GRU solve it.

The adding problem (Hochreiter & Schmidhuber 1997) tests whether a recurrent network can
carry information over long distances. Each input step is a pair (value, marker): the values
are uniform in [0, 1], the marker is 1 at exactly two steps and 0 elsewhere, and the target
is the sum of the two marked values, read from the network's output at the last step.
Variant used here (Le, Jaitly & Hinton 2015; Arjovsky, Shah & Bengio 2016): one marker
uniformly in the first half [0, T/2), the other in the second half [T/2, T). (The 1997 paper
placed the first marker among the first ten steps and the second in the first half, drew
values from [-1, 1] and rescaled the target.) The first marked value lies at least T/2 steps
before the loss.

Always predicting 1.0 gives the trivial baseline: MSE = Var(U1 + U2) = 2/12 = 1/6 ~ 0.167. A
model that cannot carry the first value to the end stays near it.

Same budget for every model: the same batches (fresh each step, generated on the fly from a
fixed seed), steps, batch size, Adam, learning rate and hidden size; one recurrent layer and
a linear head on the last step's output. Models:

  1. torch.nn.RNN (tanh), the vanilla RNN;
  2. fusedrnn.LSTM;
  3. fusedrnn.GRU;
  4. fusedrnn.LSTM with grad_clip in "norm" mode (the recurrent gradient clipped per batch
     row inside BPTT);
  5. fusedrnn.LSTM with truncate=k, k much smaller than T/2: the gradient of the loss stops
     k steps before the end and never reaches the first marker, so whatever the model learns
     it learns from the last k steps (the README says what happened).

Every model gets orthogonal recurrent weights (fusedrnn.init.orthogonal_), the LSTMs also a
forget-gate bias of 1 (fusedrnn.init.forget_bias_); --init default keeps torch.nn's. (With
the defaults, over seeds 0-3 the LSTM left the plateau after 1500-2100 steps with them and
after 1300-2800 without.)

Gradient flow: on a fixed diagnostic batch, before and after training, the norm of dL/dh_t
for every step t (L2 over batch and hidden units), recorded by the fused kernels
(track_grad_norms=True) and, for torch.nn.RNN, which records nothing, by an unrolled loop
with the same weights and torch.autograd.grad.

Writes to --out (default examples/results/adding/): learning_curves.png, grad_flow_<model>.png
per model (before and after training, and the global gradient norm over training),
grad_flow_all.png / grad_flow_all_trained.png (every model, before / after training),
summary.md and summary.json (the table, the curves, the norms).

    python examples/adding_problem.py                 # 2-3 minutes on 2 CPU cores
    python examples/adding_problem.py --T 400 --steps 4000
    python examples/adding_problem.py --quick         # smoke run, seconds

matplotlib and tqdm are optional; `make setup` installs both.
"""
import argparse
import copy
import json
import math
import os
import platform
import re
import sys
import time

import numpy as np
import torch
from torch import nn

import fusedrnn
from fusedrnn.init import forget_bias_, orthogonal_

try:
    from tqdm.auto import tqdm
except ImportError:  # plain prints instead of a progress bar
    tqdm = None

HERE = os.path.dirname(os.path.abspath(__file__))
BASELINE_MSE = 1.0 / 6.0  # Var(U1 + U2), U uniform on [0, 1]: the MSE of always predicting 1


# ---------------------------------------------------------------------------------------
# Data


def adding_batch(T, B, generator=None):
    """One batch of the adding problem, time-major.

    Returns x [T, B, 2] (channel 0: values uniform in [0, 1); channel 1: marker, exactly two
    1s per sequence, one at a step in [0, T // 2), one in [T // 2, T)), y [B, 1] (the sum
    of the two marked values) and the marker positions [B, 2]."""
    if T < 2:
        raise ValueError(f"adding_batch: T must be >= 2 (one marker per half), got {T}")
    values = torch.rand(T, B, generator=generator)
    first = torch.randint(0, T // 2, (B,), generator=generator)
    second = torch.randint(T // 2, T, (B,), generator=generator)
    rows = torch.arange(B)
    marker = torch.zeros(T, B)
    marker[first, rows] = 1.0
    marker[second, rows] = 1.0
    x = torch.stack([values, marker], dim=-1)
    y = (values[first, rows] + values[second, rows]).unsqueeze(1)
    return x, y, torch.stack([first, second], dim=1)


# ---------------------------------------------------------------------------------------
# Models


class Adder(nn.Module):
    """One recurrent layer (time-major) and a linear head on the last step's output."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[-1])


def model_specs(args):
    """(name, class, options) of the models compared."""
    return [
        ("torch.nn.RNN", nn.RNN, {}),
        ("fusedrnn.LSTM", fusedrnn.LSTM, {}),
        ("fusedrnn.GRU", fusedrnn.GRU, {}),
        (f"fusedrnn.LSTM clip={args.grad_clip:g}", fusedrnn.LSTM,
         dict(grad_clip=args.grad_clip, grad_clip_mode="norm")),
        (f"fusedrnn.LSTM trunc={args.truncate}", fusedrnn.LSTM, dict(truncate=args.truncate)),
    ]


def make_model(cls, hidden, seed, init="orthogonal", **options):
    """An Adder around cls(2, hidden, **options), initialised from `seed` (models of one
    class start from the same weights, whatever the options); init="orthogonal": orthogonal
    recurrent weights, and a forget-gate bias of 1 for an LSTM."""
    torch.manual_seed(seed)
    rnn = cls(2, hidden, **options)
    if init == "orthogonal":
        orthogonal_(rnn, generator=torch.Generator().manual_seed(seed))
        if isinstance(rnn, (nn.LSTM, fusedrnn.LSTM)):
            forget_bias_(rnn, 1.0)
    elif init != "default":
        raise ValueError(f"make_model: init must be 'orthogonal' or 'default', got {init!r}")
    return Adder(rnn)


def options_text(options):
    if not options:
        return "-"
    return ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v:g}"
                     for k, v in options.items())


# ---------------------------------------------------------------------------------------
# Gradient flow


def unrolled_rnn(rnn, x):
    """The states h_t, t = 0..T-1, of a 1-layer tanh torch.nn.RNN on x [T, B, I] (zero
    initial state), computed step by step with its own weights: a list of T tensors [B, H]
    that autograd can differentiate against, which torch.nn.RNN's fused call does not offer."""
    w_hh = rnn.weight_hh_l0
    pre = x @ rnn.weight_ih_l0.T + (rnn.bias_ih_l0 + rnn.bias_hh_l0)  # [T, B, H], all steps
    h = x.new_zeros(x.size(1), rnn.hidden_size)
    hs = []
    for t in range(x.size(0)):
        h = torch.tanh(pre[t] + h @ w_hh.T)
        hs.append(h)
    return hs


def vanilla_grad_norms(model, x, y):
    """[1, T] norms of dL/dh_t for a torch.nn.RNN (tanh, 1 layer) model, which records
    nothing itself: the recurrence unrolled with the model's own weights (unrolled_rnn) and
    torch.autograd.grad of the loss w.r.t. every h_t.

    The fused kernels record dh_rec_t, the gradient flowing into h_t from step t+1. With the
    loss on the last step's output only, nothing else reaches h_t for t < T-1, so there
    dh_rec_t = dL/dh_t: the two records compare like with like. At t = T-1 the fused record
    is 0 (no next step; dL/dh_{T-1} comes from the head, not the recurrence) and so is this
    one."""
    hs = unrolled_rnn(model.rnn, x)
    loss = nn.functional.mse_loss(model.head(hs[-1]), y)
    grads = torch.autograd.grad(loss, hs)
    norms = torch.stack([g.norm() for g in grads]).detach().float()
    norms[-1] = 0.0  # recurrent part only, as the fused record
    return norms.unsqueeze(0)


def grad_flow_norms(model, x, y):
    """[L*D, T] = [1, T] norms of dL/dh_t on the batch (x, y); the parameters' gradients
    are discarded."""
    if isinstance(model.rnn, nn.RNN):
        norms = vanilla_grad_norms(model, x, y)
    else:
        tracked = model.rnn.track_grad_norms
        model.rnn.track_grad_norms = True  # read at forward time: records this backward
        try:
            nn.functional.mse_loss(model(x), y).backward()
            norms = model.rnn.grad_norms.clone()
        finally:
            model.rnn.track_grad_norms = tracked
    model.zero_grad(set_to_none=True)
    return norms


# ---------------------------------------------------------------------------------------
# Training


def evaluate(model, x, y):
    """Test MSE, no gradient."""
    model.eval()
    with torch.no_grad():
        return nn.functional.mse_loss(model(x), y).item()


def train(model, args, test, desc=None, progress=True):
    """Adam on fresh batches; the batches depend only on args.seed, so every model sees the
    same data. Returns the learning curve (test MSE every args.eval_every steps, step 0
    included), the global gradient norm of every step, the mean clip fraction (fused model
    with grad_clip: tracked in every step) and the training time (evaluation excluded)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    data = torch.Generator().manual_seed(args.seed)
    rnn = model.rnn
    clipping = getattr(rnn, "grad_clip", None) is not None
    if clipping:
        rnn.track_grad_norms = True
    curve = {"step": [0], "test_mse": [evaluate(model, *test)]}
    global_norms, clip_fractions, clip_fractions_near = [], [], []
    params = list(model.parameters())

    bar = None
    if progress and tqdm is not None and sys.stderr.isatty():
        bar = tqdm(total=args.steps, desc=desc, unit="step", leave=True, dynamic_ncols=True)
    seconds = 0.0
    for step in range(1, args.steps + 1):
        x, y, _ = adding_batch(args.T, args.batch_size, data)
        start = time.perf_counter()
        model.train()
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, math.inf)  # measures, clips nothing
        optimizer.step()
        seconds += time.perf_counter() - start
        global_norms.append(float(norm))
        if clipping:  # every step but the last has a recurrent gradient
            fraction = rnn.grad_clip_fraction
            clip_fractions.append(float(fraction[:, :-1].mean()))
            clip_fractions_near.append(float(fraction[:, -2].mean()))
        if step % args.eval_every == 0 or step == args.steps:
            curve["step"].append(step)
            curve["test_mse"].append(evaluate(model, *test))
            if bar is None and progress and (step == args.steps or
                                             step % max(1, args.steps // 5) < args.eval_every):
                print(f"{desc or 'train'}: step {step}/{args.steps}  train {loss.item():.4f}"
                      f"  test {curve['test_mse'][-1]:.4f}", flush=True)
        if bar is not None:
            bar.set_postfix(train=f"{loss.item():.4f}", test=f"{curve['test_mse'][-1]:.4f}",
                            refresh=False)
            bar.update()
    if bar is not None:
        bar.close()
    if clipping:
        rnn.track_grad_norms = False
    mean = lambda v: float(np.mean(v)) if v else None  # noqa: E731
    return dict(curve=curve, global_norms=global_norms, seconds=seconds,
                clip_fraction=mean(clip_fractions), clip_fraction_near=mean(clip_fractions_near))


def warm_up(model, args):
    """One forward+backward on a throwaway copy, so one-time set-up costs (thread pools,
    allocator) are not counted in the first timed run."""
    scratch = copy.deepcopy(model)
    x, y, _ = adding_batch(args.T, args.batch_size, torch.Generator().manual_seed(12345))
    nn.functional.mse_loss(scratch(x), y).backward()


# ---------------------------------------------------------------------------------------
# Report


def cpu_name():
    """The CPU model from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def slug(name):
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def summary_rows(runs, args):
    rows = []
    for name, r in runs.items():
        final = r["curve"]["test_mse"][-1]
        below = [s for s, m in zip(r["curve"]["step"], r["curve"]["test_mse"])
                 if m < args.solved_below]
        rows.append(dict(model=name, options=r["options"], final_test_mse=final,
                         best_test_mse=min(r["curve"]["test_mse"]),
                         solved=bool(final < args.solved_below),
                         first_below_step=below[0] if below else None, seconds=r["seconds"],
                         ms_per_step=1e3 * r["seconds"] / args.steps,
                         mean_clip_fraction=r["clip_fraction"],
                         clip_fraction_next_to_loss=r["clip_fraction_near"]))
    return rows


def summary_table(rows, args):
    """The summary as markdown (also printed)."""
    lines = ["| model | options | final test MSE | solved | first below | train time | "
             "ms/step | mean clip fraction |",
             "|---|---|--:|:-:|--:|--:|--:|--:|"]
    for r in rows:
        clip = "-" if r["mean_clip_fraction"] is None else (
            f"{r['mean_clip_fraction']:.1%} (t=T-2: {r['clip_fraction_next_to_loss']:.0%})")
        first = "-" if r["first_below_step"] is None else f"step {r['first_below_step']}"
        lines.append(f"| {r['model']} | {r['options']} | {r['final_test_mse']:.4f} | "
                     f"{'yes' if r['solved'] else 'no'} | {first} | {r['seconds']:.1f} s | "
                     f"{r['ms_per_step']:.1f} | {clip} |")
    lines.append("")
    lines.append(f"Trivial baseline (always predict 1.0): MSE {BASELINE_MSE:.4f}; solved: final "
                 f"test MSE < {args.solved_below:g}. T={args.T}, {args.steps} steps of batch "
                 f"{args.batch_size}, Adam lr {args.lr:g}, hidden {args.hidden}, init "
                 f"{args.init}, test set of {args.test_size}; first below: first evaluation (every "
                 f"{args.eval_every} steps) under that MSE; train time excludes evaluation. "
                 "Mean clip fraction: share of batch rows whose recurrent gradient the in-kernel "
                 "clip rescaled, over all steps t < T-1 and training iterations (in brackets: "
                 "at t = T-2, the step next to the loss, where the gradient is largest); to "
                 "count them that model records in every step (track_grad_norms), in its time.")
    return "\n".join(lines)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plots skipped: matplotlib is not installed "
              "(python3 -m pip install matplotlib, or: make setup)")
        return None
    return plt


def plot_curves(path, runs, args):
    """Test MSE against training step, every model, with the trivial baseline."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, r in runs.items():
        ax.plot(r["curve"]["step"], r["curve"]["test_mse"], label=name)
    ax.axhline(BASELINE_MSE, color="black", linestyle="--", linewidth=1,
               label=f"trivial baseline {BASELINE_MSE:.3f}")
    ax.axhline(args.solved_below, color="0.6", linestyle=":", linewidth=1,
               label=f"solved below {args.solved_below:g}")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("test MSE")
    ax.set_title(f"adding problem, T={args.T}: hidden {args.hidden}, batch {args.batch_size}, "
                 f"Adam lr {args.lr:g}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_grad_flows(out, runs, args):
    """grad_flow_<model>.png per model (before/after training, and the global gradient norm
    over training) and grad_flow_all.png (every model, before and after), via
    fusedrnn.plot.grad_flow. Returns the paths written."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return []  # plot_curves already said so
    from fusedrnn.plot import grad_flow

    def save(fig, path):
        # The x range is the whole sequence, also where truncate leaves nothing to draw.
        fig.axes[0].set_xlim(0, args.T - 1)
        fig.savefig(path, format="png", dpi=110)

    paths = []
    for name, r in runs.items():
        path = os.path.join(out, f"grad_flow_{slug(name)}.png")
        save(grad_flow(torch.cat([r["norms_before"], r["norms_after"]]),
                       global_norms=r["global_norms"],
                       labels=["before training", "after training"],
                       title=f"{name}: ||dL/dh_t||, diagnostic batch, T={args.T}"), path)
        paths.append(path)
    names = list(runs)
    path = os.path.join(out, "grad_flow_all.png")
    save(grad_flow(torch.cat([runs[n]["norms_before"] for n in names]), labels=names,
                   title=f"||dL/dh_t|| before training, T={args.T}"), path)
    paths.append(path)
    path = os.path.join(out, "grad_flow_all_trained.png")
    save(grad_flow(torch.cat([runs[n]["norms_after"] for n in names]), labels=names,
                   title=f"||dL/dh_t|| after {args.steps} steps, T={args.T}"), path)
    paths.append(path)
    return paths


def decay(norms, distance):
    """||dL/dh|| at `distance` steps back from the end divided by the value 1 step back."""
    n = norms[0]
    T = n.numel()
    far = n[T - 1 - distance].item() if distance < T else float("nan")
    return far / n[T - 2].item() if n[T - 2].item() > 0 else float("nan")


# ---------------------------------------------------------------------------------------


def summary_result(args, runs, baseline, total, done):
    """What summary.json holds: task, config, machine, and the models trained so far."""
    rows = summary_rows(runs, args)
    result = dict(
        task=dict(T=args.T, variant="one marker in [0, T//2), one in [T//2, T); values U[0,1)",
                  baseline_mse=BASELINE_MSE, baseline_mse_test=baseline),
        config=dict(steps=args.steps, batch_size=args.batch_size, hidden=args.hidden, lr=args.lr,
                    optimizer="Adam", init=args.init, grad_clip=args.grad_clip,
                    grad_clip_mode="norm", truncate=args.truncate, test_size=args.test_size,
                    eval_every=args.eval_every, solved_below=args.solved_below, seed=args.seed,
                    threads=torch.get_num_threads(), quick=args.quick),
        machine=dict(cpu=cpu_name(), cpus=os.cpu_count(), platform=platform.platform(),
                     torch=torch.__version__, python=platform.python_version()),
        wall_seconds=total,
        models=[dict(row, curve=runs[row["model"]]["curve"],
                     grad_norms_before=runs[row["model"]]["norms_before"][0].tolist(),
                     grad_norms_after=runs[row["model"]]["norms_after"][0].tolist())
                for row in rows],
    )
    result["complete"] = done
    return result


def write_summary(args, runs, baseline, total, done):
    """summary.json and summary.md for the models trained so far (rewritten after each)."""
    os.makedirs(args.out, exist_ok=True)
    result = summary_result(args, runs, baseline, total, done)
    table = summary_table(summary_rows(runs, args), args)
    status = "" if done else " (run in progress: models so far)"
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(f"# Adding problem, T={args.T}{status}\n\n{table}\n\nWall time {total:.0f} s, "
                f"{torch.get_num_threads()} threads, torch {torch.__version__}.\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--T", type=int, default=200, help="sequence length")
    p.add_argument("--steps", type=int, default=2500, help="training steps per model")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate")
    p.add_argument("--init", choices=["orthogonal", "default"], default="orthogonal",
                   help="orthogonal: fusedrnn.init.orthogonal_ (+ forget_bias_ 1 for LSTMs)")
    p.add_argument("--grad-clip", type=float, default=1e-4,
                   help="model 4: in-kernel norm clip of the recurrent gradient per batch row")
    p.add_argument("--truncate", type=int, default=20,
                   help="model 5: in-kernel truncated BPTT every k steps")
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--solved-below", type=float, default=0.01,
                   help="a model has solved the task when its final test MSE is below this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads; the per-step products are tiny (batch 64 x "
                   "hidden 32): a second thread gains little and stalls when another job "
                   "uses a core")
    p.add_argument("--models", default=None,
                   help="comma-separated numbers of the models to run (1-5), default all")
    p.add_argument("--out", default=os.path.join(HERE, "results", "adding"),
                   help="folder for the plots and the summary")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: T=20, 20 steps, hidden 8, batch 16, test set 64, "
                   "truncate 4")
    args = p.parse_args(argv)
    if args.quick:
        args.T, args.steps, args.hidden, args.batch_size = 20, 20, 8, 16
        args.test_size, args.eval_every, args.truncate = 64, 5, 4
    if args.T < 2 or args.steps < 1 or args.eval_every < 1:
        p.error("need --T >= 2, --steps >= 1, --eval-every >= 1")
    if args.models is not None:
        try:
            args.models = [int(i) for i in args.models.split(",")]
        except ValueError:
            args.models = None
        if not args.models or not all(1 <= i <= 5 for i in args.models):
            p.error("--models: comma-separated numbers from 1 to 5, e.g. 1,2,3")
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    wall = time.perf_counter()
    test = adding_batch(args.T, args.test_size, torch.Generator().manual_seed(args.seed + 1))[:2]
    diag = adding_batch(args.T, 256, torch.Generator().manual_seed(args.seed + 2))[:2]
    baseline = nn.functional.mse_loss(torch.ones_like(test[1]), test[1]).item()
    print(f"adding problem: T={args.T}, one marker in [0, {args.T // 2}), one in "
          f"[{args.T // 2}, {args.T}); fresh batches of {args.batch_size} per step, "
          f"{args.test_size} held-out test sequences")
    print(f"trivial baseline (always predict 1.0): MSE = Var(U1 + U2) = 1/6 = "
          f"{BASELINE_MSE:.4f} (on the test set: {baseline:.4f})")
    init = ("orthogonal recurrent weights (fusedrnn.init.orthogonal_), LSTM forget-gate bias 1 "
            "(fusedrnn.init.forget_bias_)" if args.init == "orthogonal" else "torch.nn default")
    print(f"budget per model: {args.steps} steps, Adam lr {args.lr:g}, hidden {args.hidden}, "
          f"1 layer + linear head; init: {init}; float32, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")

    specs = model_specs(args)
    if args.models:
        specs = [specs[i - 1] for i in args.models]
    runs = {}
    for name, cls, options in specs:
        model = make_model(cls, args.hidden, args.seed, args.init, **options)
        warm_up(model, args)
        norms_before = grad_flow_norms(model, *diag)
        r = train(model, args, test, desc=name)
        r.update(options=options_text(options), norms_before=norms_before,
                 norms_after=grad_flow_norms(model, *diag))
        runs[name] = r
        # Written as each model finishes, so an interrupted run keeps what it has done.
        write_summary(args, runs, baseline, time.perf_counter() - wall,
                      done=len(runs) == len(specs))

    rows = summary_rows(runs, args)
    table = summary_table(rows, args)
    print()
    print(table)
    print()
    print("gradient flow on the diagnostic batch, ||dL/dh_t|| at distance d from the end "
          "relative to d=1 (before -> after training):")
    distances = sorted({d for d in (10, 50, args.T // 2, args.T - 1) if d < args.T})
    for name, r in runs.items():
        parts = [f"d={d}: {decay(r['norms_before'], d):.1e} -> {decay(r['norms_after'], d):.1e}"
                 for d in distances]
        print(f"  {name:<28} " + "   ".join(parts))
    print("(0: the gradient is cut there, truncate)")

    total = time.perf_counter() - wall
    os.makedirs(args.out, exist_ok=True)
    paths = []
    if not args.no_plots:
        curve_path = plot_curves(os.path.join(args.out, "learning_curves.png"), runs, args)
        if curve_path:
            paths = [curve_path] + plot_grad_flows(args.out, runs, args)
    write_summary(args, runs, baseline, total, done=True)
    paths += [os.path.join(args.out, n) for n in ("summary.md", "summary.json")]
    print(f"\nwall time {total:.1f} s; written: "
          + ", ".join(os.path.relpath(p) for p in paths))
    return summary_result(args, runs, baseline, total, done=True)


if __name__ == "__main__":
    main()
