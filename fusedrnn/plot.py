"""Plots of gradient flow through time, to choose ``grad_clip`` / ``truncate`` from data.

:func:`grad_flow` draws how large the recurrent gradient dh_rec_t (docs/design.md §3) is as a
function of how many steps back from the end of the sequence it has travelled: a line that
falls by orders of magnitude shows vanishing gradients (steps that far back hardly learn
from the loss; ``truncate`` there loses little), a rising one shows exploding gradients
(``grad_clip`` territory). Optionally a second panel shows the global gradient norm over
training iterations with a candidate clipping threshold, for which :func:`suggest_clip`
offers a starting value.

matplotlib is an optional dependency (``pip install 'fusedrnn[plot]'``): it is imported when
a plot is drawn, so importing this module works without it. Figures are drawn with the Agg
canvas directly (``matplotlib.figure.Figure``, no pyplot), which leaves the user's pyplot
backend and global state alone; the returned Figure can be restyled or saved again.

Shape letters: L layers, D directions (2 if bidirectional), T steps.
"""
import math
import numbers
import os
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

__all__ = ["grad_flow", "suggest_clip"]

_MISSING = "fusedrnn.plot needs matplotlib: pip install 'fusedrnn[plot]'"


def _matplotlib():
    """(Figure, FigureCanvasAgg), or ImportError with the install hint."""
    try:
        import matplotlib  # noqa: F401  (checked first: its submodules may be cached)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(_MISSING) from exc
    return Figure, FigureCanvasAgg


def _as_float64(values, name: str, dim: int) -> Tensor:
    """values (tensor, numpy array, nested sequence of numbers or 0-d tensors) as a CPU
    float64 tensor with ``dim`` dimensions."""
    try:
        if isinstance(values, Tensor):
            t = values.detach().to("cpu", torch.float64)
        elif isinstance(values, (list, tuple)):  # 0-d tensors (clip_grad_norm_) as numbers
            t = torch.tensor([v.item() if isinstance(v, Tensor) and v.dim() == 0 else v
                              for v in values], dtype=torch.float64)
        else:
            t = torch.as_tensor(values).to(torch.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"fusedrnn.plot: {name} must be numbers (a tensor, an array or a "
                        f"sequence), got {type(values).__name__}: {exc}") from exc
    if t.dim() != dim:
        want = "[L*D, T]" if dim == 2 else "[N]"
        raise ValueError(f"fusedrnn.plot: {name} must be {dim}-D {want}, got shape "
                         f"{tuple(t.shape)}")
    return t


def _positive_finite(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"fusedrnn.plot: {name} must be a positive finite number, got "
                        f"{value!r} of type {type(value).__name__}")
    if not (value > 0 and value < math.inf):
        raise ValueError(f"fusedrnn.plot: {name} must be a positive finite number, got {value!r}")
    return float(value)


def suggest_clip(global_norms: Union[Tensor, Sequence[float]], quantile: float = 0.9) -> float:
    """A starting value for a gradient-norm clipping threshold: a high quantile of the norms.

    A common heuristic: record the global gradient norm of a stretch of training without
    clipping (e.g. the return values of ``torch.nn.utils.clip_grad_norm_(params, inf)``) and
    clip at a high quantile of them, so that typical steps pass unchanged and only the rare
    spikes are scaled down. It is a starting point to tune, not an optimum: norms drift as
    training goes on, and the right threshold depends on the learning rate.

    Args:
        global_norms: 1-D sequence of observed norms (floats, 0-d tensors, a tensor or an
            array). NaN and infinite entries are ignored.
        quantile: which quantile, in (0, 1]; 1 gives the largest finite norm seen.

    Returns:
        The quantile of the finite norms (linear interpolation), as a float.

    Raises:
        ValueError: quantile outside (0, 1], or no finite norm.
        TypeError: global_norms are not numbers, or quantile is not a number.
    """
    if isinstance(quantile, bool) or not isinstance(quantile, numbers.Real):
        raise TypeError(f"fusedrnn.plot: quantile must be a number in (0, 1], got {quantile!r}")
    if not 0 < quantile <= 1:
        raise ValueError(f"fusedrnn.plot: quantile must lie in (0, 1], got {quantile!r}")
    norms = _as_float64(global_norms, "global_norms", 1)
    finite = norms[torch.isfinite(norms)]
    if finite.numel() == 0:
        raise ValueError("fusedrnn.plot: global_norms must hold at least one finite norm, got "
                         f"{norms.numel()} values and none finite")
    return float(torch.quantile(finite, float(quantile)))


def _norms_and_directions(norms, directions):
    """Unwrap a module holding ``grad_norms``; check shapes; returns ([L*D, T], D)."""
    if not isinstance(norms, Tensor) and hasattr(norms, "grad_norms"):
        module = norms
        norms = module.grad_norms
        if norms is None:
            raise ValueError(f"fusedrnn.plot: this {type(module).__name__} has no recorded "
                             "gradient norms (set track_grad_norms = True and run a backward "
                             "pass first)")
        if directions is None:
            directions = 2 if getattr(module, "bidirectional", False) else 1
    if directions is None:
        directions = 1
    if isinstance(directions, bool) or directions not in (1, 2):
        raise ValueError(f"fusedrnn.plot: directions must be 1 or 2, got {directions!r}")
    directions = int(directions)
    norms = _as_float64(norms, "norms", 2)
    rows, T = norms.shape
    if rows == 0 or T == 0 or rows % directions:
        raise ValueError(f"fusedrnn.plot: norms must have shape [L*D, T] with L*D a positive "
                         f"multiple of directions = {directions} and T >= 1, got "
                         f"{tuple(norms.shape)}")
    return norms, directions


def grad_flow(norms, path: Union[str, os.PathLike, None] = None, *,
              directions: Optional[int] = None, global_norms=None, clip: Optional[float] = None,
              title: Optional[str] = None, labels: Optional[Sequence[str]] = None,
              dpi: int = 120):
    """Plot the recurrent gradient norm against distance from the loss, one line per layer.

    Panel 1 has one line per layer and direction: x is the distance in steps back from the
    end of the sequence in the direction of processing (forward direction: T-1-t; reverse
    direction: t), y (log scale) the L2 norm of dh_rec_t, the gradient handed from the next
    processed step back into the state h_t. Entries that are 0 or not finite cannot be shown
    on a log scale and are left out (the step with no next step is always 0; truncation
    points are 0 too); a line whose data had NaN or infinite entries says how many in its
    legend label.

    Panel 2, when ``global_norms`` is given: the global gradient norm per training iteration
    (log scale, entries masked and counted the same way), with a horizontal line at ``clip``
    if given.

    Args:
        norms: [L*D, T] per-step norms (tensor, array or nested lists), rows in torch.nn's
            h_n order (layer-major, then direction), columns t = 0..T-1 in time order; or a
            module whose ``grad_norms`` attribute holds them.
        path: if given, the figure is saved there as PNG (parent directories created).
        directions: 1 or 2; None: 2 for a module whose ``bidirectional`` is true, else 1.
        global_norms: optional 1-D sequence of global gradient norms over iterations (e.g.
            return values of ``torch.nn.utils.clip_grad_norm_``).
        clip: optional positive threshold drawn on the global-norm panel (needs
            ``global_norms``); see :func:`suggest_clip`.
        title: optional figure title.
        labels: optional legend labels, one per row of ``norms`` (e.g. model names when
            the rows come from different models); default "layer k" / "layer k (reverse)".
        dpi: resolution of the saved PNG.

    Returns:
        The ``matplotlib.figure.Figure`` (panel 1 is ``fig.axes[0]``, panel 2 ``fig.axes[1]``).

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: norms not [L*D, T] with D dividing L*D, directions not 1 or 2, global
            norms not 1-D, clip without global_norms, or clip not positive and finite.
    """
    norms, D = _norms_and_directions(norms, directions)
    if clip is not None:
        clip = _positive_finite("clip", clip)
        if global_norms is None:
            raise ValueError("fusedrnn.plot: clip is drawn on the global-norm panel; pass "
                             "global_norms too")
    series = None if global_norms is None else _as_float64(global_norms, "global_norms", 1)
    if labels is not None:
        if isinstance(labels, str) or len(labels) != norms.shape[0]:
            raise ValueError(f"fusedrnn.plot: labels must be a sequence of {norms.shape[0]} "
                             f"strings (one per row of norms), got {labels!r}")
        labels = [str(label) for label in labels]
    Figure, FigureCanvasAgg = _matplotlib()
    from matplotlib.ticker import MaxNLocator

    panels = 1 if series is None else 2
    fig = Figure(figsize=(6.4 * panels, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, panels, 1)
    rows, T = norms.shape
    t = torch.arange(T)
    any_positive = False
    for row in range(rows):
        layer, reverse = divmod(row, D)
        distance = t if reverse else (T - 1 - t)  # steps back from the end, per direction
        order = torch.argsort(distance)
        x, y = distance[order], norms[row, order]
        shown = torch.isfinite(y) & (y > 0)
        bad = int((~torch.isfinite(y)).sum())
        label = (f"layer {layer}" + (" (reverse)" if reverse else "")
                 if labels is None else labels[row])
        if bad:
            label += f" ({bad} non-finite)"
        xs, ys = x[shown].tolist(), y[shown].tolist()
        # A line that stops before the start of the sequence (the gradient was cut by
        # truncation, or vanished to 0) ends in a marker, so its end is not mistaken for the
        # edge of the plot.
        ends_early = bool(xs) and xs[-1] < T - 1
        if ends_early:
            label += f" (ends {xs[-1]} steps back)"
        end_mark = dict(marker="o", markersize=4, markevery=[len(xs) - 1]) if ends_early else {}
        ax.plot(xs, ys, label=label, linewidth=1.2, **end_mark)
        any_positive |= bool(shown.any())
    if any_positive:
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no positive finite norms", transform=ax.transAxes,
                ha="center", va="center")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_xlabel("steps back from the end of the sequence (processing order)")
    ax.set_ylabel("recurrent gradient norm ||dh_rec_t||")
    ax.set_title("gradient flow through time")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")

    if series is not None:
        ax2 = fig.add_subplot(1, panels, 2)
        it = torch.arange(series.numel())
        shown = torch.isfinite(series) & (series > 0)
        bad = int((~torch.isfinite(series)).sum())
        label = "global norm" + (f" ({bad} non-finite)" if bad else "")
        ax2.plot(it[shown].tolist(), series[shown].tolist(), linewidth=1.0, label=label)
        if clip is not None:
            ax2.axhline(clip, color="tab:red", linestyle="--", label=f"clip = {clip:.3g}")
        if bool(shown.any()) or clip is not None:
            ax2.set_yscale("log")
        ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax2.set_xlabel("training iteration")
        ax2.set_ylabel("global gradient norm")
        ax2.set_title("gradient norm over training")
        ax2.grid(True, which="both", alpha=0.3)
        ax2.legend(fontsize="small")
    if title is not None:
        fig.suptitle(title)
    if path is not None:
        path = os.fspath(path)
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        fig.savefig(path, format="png", dpi=dpi)
    return fig
