"""Forecast yearly sunspot numbers with a 2-layer LSTM (or GRU): torch.nn vs fusedrnn.

The model reads a window of the (normalised) series and predicts the next value. It is
trained three times:

  1. with torch.nn.LSTM,
  2. with fusedrnn.LSTM from the same initial weights (state_dict copied), the same data
     order and no clipping: the two loss curves agree to float32 rounding;
  3. with fusedrnn.LSTM and clipping/truncation of the recurrent gradient inside BPTT
     (--grad-clip, --truncate), which torch.nn cannot do.

Then it prints a summary table (final losses, time per epoch, speedup) and writes a plot
(forecast vs actual on the validation years, and the loss curves) to --out.

    python examples/forecast.py                      # 10-20 s on 2 CPU cores
    python examples/forecast.py --cell gru --epochs 30 --hidden 32

The sunspots series ships inside statsmodels (no download); `--data synthetic` uses a
generated series instead. matplotlib and tqdm are optional. `make setup` installs all three.
"""
import argparse
import copy
import math
import os
import sys
import time

import numpy as np
import torch
from torch import nn

import fusedrnn

try:
    from tqdm.auto import tqdm
except ImportError:  # plain prints instead of a progress bar
    tqdm = None

HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------------------
# Data


def load_series(source="sunspots", length=300, seed=0):
    """The series as a float32 numpy array and the name of its unit.

    source="sunspots": yearly sunspot numbers 1700-2008 (309 values) from statsmodels.
    source="synthetic": `length` values of a noisy quasi-periodic signal (about an 11-step
    cycle, like the sunspots), for tests and machines without statsmodels.
    """
    if source == "sunspots":
        try:
            from statsmodels.datasets import sunspots
        except ImportError:
            raise SystemExit(
                "The sunspots data ships with statsmodels, which is not installed:\n"
                "    python3 -m pip install statsmodels      (or: make setup)\n"
                "or run on generated data:  python3 examples/forecast.py --data synthetic"
            ) from None
        values = sunspots.load_pandas().data["SUNACTIVITY"].to_numpy()
        return values.astype(np.float32), "sunspot number"
    if source == "synthetic":
        rng = np.random.default_rng(seed)
        t = np.arange(length)
        amplitude = 60 + 30 * np.sin(2 * np.pi * t / 90)
        values = amplitude * np.abs(np.sin(np.pi * t / 11)) + rng.normal(0, 5, length)
        return values.astype(np.float32), "value"
    raise ValueError(f"load_series: source must be 'sunspots' or 'synthetic', got {source!r}")


def make_data(series, window, val_fraction=0.2):
    """Windows [N, window, 1] -> next value [N, 1], split in time: the last val_fraction of
    the targets are validation. Normalised with the training part's mean and std.

    Returns a dict of float32 tensors (train_x, train_y, val_x, val_y) plus mean, std and
    val_start (index in `series` of the first validation target)."""
    series = np.asarray(series, dtype=np.float32)
    n = len(series) - window
    if n < 2:
        raise ValueError(f"make_data: series of length {len(series)} is too short for "
                         f"window={window}")
    n_val = max(1, int(round(n * val_fraction)))
    n_train = n - n_val
    train_part = series[: n_train + window]
    mean, std = float(train_part.mean()), float(train_part.std()) or 1.0
    z = (series - mean) / std
    x = np.stack([z[i : i + window] for i in range(n)])[:, :, None]
    y = z[window:, None]
    to = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return dict(train_x=to(x[:n_train]), train_y=to(y[:n_train]),
                val_x=to(x[n_train:]), val_y=to(y[n_train:]),
                mean=mean, std=std, val_start=n_train + window)


# ---------------------------------------------------------------------------------------
# Model


class Forecaster(nn.Module):
    """RNN over the window (batch_first) and a linear head on the last output."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def make_model(impl="torch", cell="lstm", hidden=64, layers=2, **options):
    """A Forecaster on torch.nn.LSTM/GRU (impl="torch") or fusedrnn.LSTM/GRU
    (impl="fusedrnn"; options: grad_clip, grad_clip_mode, truncate)."""
    if cell not in ("lstm", "gru"):
        raise ValueError(f"make_model: cell must be 'lstm' or 'gru', got {cell!r}")
    if impl == "torch":
        if options:
            raise ValueError(f"make_model: torch.nn takes no {sorted(options)}")
        cls = nn.LSTM if cell == "lstm" else nn.GRU
    elif impl == "fusedrnn":
        cls = fusedrnn.LSTM if cell == "lstm" else fusedrnn.GRU
    else:
        raise ValueError(f"make_model: impl must be 'torch' or 'fusedrnn', got {impl!r}")
    return Forecaster(cls(1, hidden, num_layers=layers, batch_first=True, **options))


def clone_as(model, impl, **options):
    """A model on `impl` with exactly `model`'s weights (the state_dicts are compatible)."""
    rnn = model.rnn
    cell = "lstm" if isinstance(rnn, (nn.LSTM, fusedrnn.LSTM)) else "gru"
    new = make_model(impl, cell, rnn.hidden_size, rnn.num_layers, **options)
    new.load_state_dict(model.state_dict())
    return new.to(next(model.parameters()).device)


# ---------------------------------------------------------------------------------------
# Training


def evaluate(model, x, y):
    """Mean squared error of the model on (x, y), no gradient."""
    model.eval()
    with torch.no_grad():
        return nn.functional.mse_loss(model(x), y).item()


def train(model, data, epochs, batch_size=32, lr=1e-2, seed=0, desc=None, progress=True):
    """Train with Adam on data["train_*"]; the order of the batches depends only on `seed`,
    so two models with the same weights see the same data in the same order.

    Returns {"train": [per-epoch mean training loss], "val": [per-epoch validation loss],
    "seconds": wall-clock time of the whole training}."""
    device = next(model.parameters()).device
    train_x, train_y = data["train_x"].to(device), data["train_y"].to(device)
    val_x, val_y = data["val_x"].to(device), data["val_y"].to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    losses = {"train": [], "val": []}

    bar = None
    if progress and tqdm is not None and sys.stderr.isatty():
        bar = tqdm(total=epochs, desc=desc, unit="epoch", leave=True, dynamic_ncols=True)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(train_x), generator=order).to(device)
        total = 0.0
        for i in range(0, len(train_x), batch_size):
            idx = perm[i : i + batch_size]
            loss = nn.functional.mse_loss(model(train_x[idx]), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        losses["train"].append(total / len(train_x))
        losses["val"].append(evaluate(model, val_x, val_y))
        if bar is not None:
            bar.set_postfix(train=f"{losses['train'][-1]:.4f}", val=f"{losses['val'][-1]:.4f}")
            bar.update()
        elif progress and (epoch + 1 == epochs or (epoch + 1) % max(1, epochs // 5) == 0):
            print(f"{desc or 'train'}: epoch {epoch + 1}/{epochs}  train "
                  f"{losses['train'][-1]:.4f}  val {losses['val'][-1]:.4f}", flush=True)
    losses["seconds"] = time.perf_counter() - start
    if bar is not None:
        bar.close()
    return losses


def warm_up(model, data, batch_size):
    """One forward+backward on a throwaway copy, so one-time set-up costs (thread pools,
    oneDNN primitives) are not counted in the first timed run."""
    scratch = copy.deepcopy(model)
    device = next(scratch.parameters()).device
    x, y = data["train_x"][:batch_size].to(device), data["train_y"][:batch_size].to(device)
    nn.functional.mse_loss(scratch(x), y).backward()


def forecast(model, data):
    """One-step-ahead predictions on the validation windows, in the series' units."""
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        pred = model(data["val_x"].to(device)).cpu().numpy()[:, 0]
    return pred * data["std"] + data["mean"]


# ---------------------------------------------------------------------------------------
# Report


def rel_diff(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def max_rel_diff(a, b):
    """Largest relative difference between two runs' losses, train and val, all epochs."""
    return max(rel_diff(x, y) for k in ("train", "val") for x, y in zip(a[k], b[k]))


def print_epochs(runs, max_rows=20):
    """Per-epoch losses of the three runs side by side (every k-th epoch when there are
    many), with the relative difference between the first two."""
    (n1, r1), (n2, r2), (n3, r3) = runs.items()
    epochs = len(r1["train"])
    step = max(1, math.ceil(epochs / max_rows))
    rows = sorted(set(range(step - 1, epochs, step)) | {0, epochs - 1})
    print("per-epoch losses (MSE on the normalised series), train / val:")
    print(f"  [1] {n1}   [2] {n2}   [3] {n3}")
    head = (f"{'epoch':>5} | {'[1] train':>10} {'val':>8} | {'[2] train':>10} {'val':>8} | "
            f"{'[1] vs [2]':>10} | {'[3] train':>10} {'val':>8}")
    print(head)
    print("-" * len(head))
    for e in rows:
        print(f"{e + 1:>5} | {r1['train'][e]:>10.6f} {r1['val'][e]:>8.5f} | "
              f"{r2['train'][e]:>10.6f} {r2['val'][e]:>8.5f} | "
              f"{rel_diff(r1['train'][e], r2['train'][e]):>10.1e} | "
              f"{r3['train'][e]:>10.6f} {r3['val'][e]:>8.5f}")
    shown = "every epoch" if step == 1 else f"every {step} epochs shown"
    print(f"({shown}; [1] vs [2]: relative difference of the train loss; largest over all "
          f"{epochs} epochs, train and val: {max_rel_diff(r1, r2):.1e})")
    print("([1] and [2] start from the same weights and see the same batches: they differ only "
          "by float32 rounding,\n which a long training slowly amplifies)")


def print_summary(runs, epochs):
    base = runs[next(iter(runs))]["seconds"]
    head = (f"{'run':<32} {'epochs':>6} {'final train':>12} {'final val':>10} "
            f"{'s/epoch':>8} {'speedup':>8}")
    print(head)
    print("-" * len(head))
    for name, r in runs.items():
        print(f"{name:<32} {epochs:>6} {r['train'][-1]:>12.5f} {r['val'][-1]:>10.5f} "
              f"{r['seconds'] / epochs:>8.4f} {base / r['seconds']:>7.2f}x")
    print("(losses: MSE on the normalised series; speedup: torch.nn time / run time)")


def plot(path, runs, data, series, predictions, unit, title, first_step=0, x_label="step"):
    """Forecast vs actual on the validation years and the loss curves, as one PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot skipped: matplotlib is not installed "
              "(python3 -m pip install matplotlib, or: make setup)")
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    start = data["val_start"]
    t = np.arange(len(series)) + first_step
    context = max(0, start - 2 * (len(series) - start))  # some training years before
    ax1.plot(t[context : start + 1], series[context : start + 1], color="0.6",
             label="actual (training part)")
    ax1.plot(t[start:], series[start:], color="black", label="actual (validation)")
    for (name, pred), style in zip(predictions.items(), ["-", "--", ":"]):
        ax1.plot(t[start:], pred, style, label=f"forecast, {name}")
    ax1.axvline(t[start], color="0.8", lw=1)
    ax1.set_xlabel(x_label)
    ax1.set_ylabel(unit)
    ax1.set_title("one-step-ahead forecast on the validation split")
    ax1.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    for (name, r), color in zip(runs.items(), ["C0", "C1", "C2"]):
        epochs = np.arange(1, len(r["train"]) + 1)
        style = "--" if color == "C1" else "-"  # [2] dashed over [1]: both visible
        ax2.plot(epochs, r["train"], style, color=color, label=f"{name} train")
        ax2.plot(epochs, r["val"], style, color=color, alpha=0.5, label=f"{name} val")
    ax2.set_yscale("log")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("MSE (normalised)")
    ax2.set_title("loss curves")
    ax2.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", choices=["sunspots", "synthetic"], default="sunspots")
    p.add_argument("--cell", choices=["lstm", "gru"], default="lstm")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--window", type=int, default=24, help="years of history per sample")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu",
                   help="fusedrnn 0.1 has CPU kernels only; on CUDA its ops raise")
    p.add_argument("--grad-clip", type=float, default=0.05,
                   help="third run: clip the recurrent gradient to [-v, v] inside BPTT")
    p.add_argument("--truncate", type=int, default=8,
                   help="third run: truncated BPTT, cut the recurrent gradient every k steps")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for the plot")
    p.add_argument("--no-plot", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    series, unit = load_series(args.data, seed=args.seed)
    data = make_data(series, args.window)
    device = torch.device(args.device)
    cls = "LSTM" if args.cell == "lstm" else "GRU"
    print(f"{args.data}: {len(series)} values, window {args.window}: "
          f"{len(data['train_x'])} training and {len(data['val_x'])} validation samples")
    print(f"model: {args.layers}-layer {cls}, hidden {args.hidden}, linear head; Adam lr "
          f"{args.lr}, batch {args.batch_size}, {args.epochs} epochs, float32, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")

    torch.manual_seed(args.seed)
    reference = make_model("torch", args.cell, args.hidden, args.layers).to(device)
    names = [f"torch.nn.{cls}", f"fusedrnn.{cls}",
             f"fusedrnn.{cls} clip={args.grad_clip:g} trunc={args.truncate}"]
    models = {
        names[0]: reference,
        names[1]: clone_as(reference, "fusedrnn"),
        names[2]: clone_as(reference, "fusedrnn", grad_clip=args.grad_clip,
                           truncate=args.truncate),
    }
    for model in models.values():
        warm_up(model, data, args.batch_size)
    runs = {}
    for name, model in models.items():
        runs[name] = train(model, data, args.epochs, args.batch_size, args.lr, args.seed,
                           desc=name)

    print()
    print_epochs(runs)
    print()
    print_summary(runs, args.epochs)
    ratio = runs[names[0]]["seconds"] / runs[names[1]]["seconds"]
    print(f"\nwall clock: torch.nn {runs[names[0]]['seconds']:.2f} s, fusedrnn "
          f"{runs[names[1]]['seconds']:.2f} s: speedup {ratio:.2f}x (fusedrnn "
          f"{'faster' if ratio >= 1 else 'slower'} than torch.nn on this model and machine)")

    if not args.no_plot:
        predictions = {name: forecast(m, data) for name, m in models.items()}
        path = plot(os.path.join(args.out, f"forecast_{args.data}_{args.cell}.png"), runs,
                    data, series, predictions, unit,
                    title=f"{args.data}: {args.layers}-layer {cls}, hidden {args.hidden}, "
                    f"{args.epochs} epochs",
                    first_step=1700 if args.data == "sunspots" else 0,
                    x_label="year" if args.data == "sunspots" else "step")
        if path:
            print(f"plot: {os.path.relpath(path)}")
    return runs


if __name__ == "__main__":
    main()
