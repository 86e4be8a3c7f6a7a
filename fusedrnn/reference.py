"""Plain-PyTorch reference of the fusedrnn single-layer ops.

This module computes exactly the math of ``docs/ops_api.md`` (docs/design.md sections 2 and 3)
with ordinary torch operations and a per-step Python loop, and lets autograd derive the
backward pass. It is the yardstick the tests hold the fused kernels (``fusedrnn.ops``) and
``torch.nn`` against. It is slow on purpose and the modules never use it.

``lstm_layer`` and ``gru_layer`` have the same signatures as their ``fusedrnn.ops``
namesakes. Gradient clipping and truncation change only the backward pass; here they are
written as what happens to the state handed to each processed step:

* clipping: the state goes through ``_GradClip``, an identity whose backward clips the
  gradient (elementwise clamp to [-v, v], or a per-row rescale to L2 norm <= v);
* truncation: the state is detached at truncation points (chunked truncated BPTT).

The output y_t and the final state use the unclipped state, so dh_n / dc_n are not clipped.
Rows of a batch with unequal ``lengths`` are handled with per-row masks: a row that does not
exist at time t carries its state unchanged (never clipped there) and outputs zeros.

``check_options`` (from ``fusedrnn._options``, shared with the ops and the modules)
validates the extra keyword options, so that the reference and the fused ops raise the same
errors.

Shape letters: T steps, B batch, I input features, H hidden, P projection,
R = P if weight_hr is given else H.
"""

import torch
import torch.nn.functional as F

from ._options import GRAD_CLIP_MODES, check_options  # noqa: F401  (re-exported)

__all__ = ["check_options", "lstm_layer", "gru_layer"]


# ---------------------------------------------------------------------------------------
# Gradient clipping and truncation of the handed-over state
# ---------------------------------------------------------------------------------------


def _clip_gradient(grad, clip, mode):
    """Clip a state gradient grad: [B, X] ("value": elementwise, "norm": per batch row)."""
    if mode == "value":
        return grad.clamp(-clip, clip)
    # g * (v / ||g||) where ||g|| > v, else g unchanged: v / max(||g||, v) is then exactly 1
    # (a true division; `clip / tensor` would compute clip * (1 / tensor), which is not).
    norm = torch.linalg.vector_norm(grad, dim=-1, keepdim=True)  # [B, 1]
    return grad * (torch.full_like(norm, clip) / norm.clamp_min(clip))


class _GradClip(torch.autograd.Function):
    """Identity in the forward pass; clips the incoming gradient in the backward pass."""

    @staticmethod
    def forward(ctx, state, clip, mode):
        ctx.clip = clip
        ctx.mode = mode
        return state.clone()

    @staticmethod
    def backward(ctx, grad):
        return _clip_gradient(grad, ctx.clip, ctx.mode), None, None


def _clip_grad(state, clip, mode):
    """state, with its gradient clipped in the backward pass."""
    return _GradClip.apply(state, clip, mode)


def _hand_over(state, rows, cut, grad_clip, grad_clip_mode):
    """The state entering a processed step, as that step sees it.

    state: [B, X] carried state (X = R for h, H for c)
    rows:  [B, 1] bool, rows that process this step (other rows are carried, left alone)
    cut:   [B, 1] bool, rows at a truncation point (state treated as a constant), or None
    """
    if cut is not None:
        state = torch.where(cut, state.detach(), state)
    if grad_clip is not None:
        state = torch.where(rows, _clip_grad(state, grad_clip, grad_clip_mode), state)
    return state


# ---------------------------------------------------------------------------------------
# The recurrence
# ---------------------------------------------------------------------------------------


def _check_input(name, input, lengths):
    """Minimal shape checks (the fused ops check everything); returns lengths [B] int64."""
    if input.dim() != 3:
        raise ValueError(f"fusedrnn.{name}: input must be 3-D (T, B, I), got {tuple(input.shape)}")
    T, B, _ = input.shape
    if T < 1:
        raise ValueError(f"fusedrnn.{name}: input must have at least one step, got T = {T}")
    if lengths is None:
        return torch.full((B,), T, dtype=torch.int64, device=input.device)
    if not isinstance(lengths, torch.Tensor):
        raise TypeError(
            f"fusedrnn.{name}: lengths must be an int64 tensor of shape (B,) or None, "
            f"got {type(lengths).__name__}"
        )
    if lengths.dim() != 1 or lengths.numel() != B:
        raise ValueError(
            f"fusedrnn.{name}: lengths must have shape (B,) = ({B},), got {tuple(lengths.shape)}"
        )
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise TypeError(f"fusedrnn.{name}: lengths must be an integer tensor, got {lengths.dtype}")
    if bool((lengths < 1).any()) or bool((lengths > T).any()):
        raise ValueError(
            f"fusedrnn.{name}: lengths must lie in [1, T] = [1, {T}], got {lengths.tolist()}"
        )
    return lengths.to(device=input.device, dtype=torch.int64)


def _schedule(T, lengths, reverse, truncate):
    """Processing order: yields (t, rows, cut) for every time step t.

    lengths: [B] int64. rows: [B, 1] bool, rows that exist at time t (t < lengths[b]).
    cut: [B, 1] bool, rows whose processed-step index s (t forward, len_b - 1 - t reverse)
    satisfies s > 0 and s % truncate == 0; None without truncation.
    """
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        rows = (t < lengths)[:, None]  # [B, 1]
        cut = None
        if truncate is not None:
            s = (lengths - 1 - t) if reverse else torch.full_like(lengths, t)  # [B]
            cut = (rows & ((s > 0) & (s % truncate == 0))[:, None])  # [B, 1]
        yield t, rows, cut


def lstm_layer(input, weight_ih, weight_hh, bias_ih=None, bias_hh=None, h0=None, c0=None, *,
               weight_hr=None, lengths=None, reverse=False,
               grad_clip=None, grad_clip_mode="value", truncate=None, cell_clip=None):
    """One LSTM layer in one direction; returns (output [T, B, R], h_n [B, R], c_n [B, H]).

    input: [T, B, I]; weight_ih: [4H, I] (gates i, f, g, o); weight_hh: [4H, R];
    bias_ih, bias_hh: [4H] or None; h0: [B, R] or None; c0: [B, H] or None;
    weight_hr: [P, H] or None; lengths: int64 [B] with 1 <= lengths[b] <= T, or None.
    """
    check_options(grad_clip, grad_clip_mode, truncate, cell_clip)
    lengths = _check_input("lstm_layer", input, lengths)
    T, B, _ = input.shape
    H = weight_ih.shape[0] // 4
    R = weight_hr.shape[0] if weight_hr is not None else H
    if h0 is None:
        h0 = input.new_zeros(B, R)
    if c0 is None:
        c0 = input.new_zeros(B, H)

    x_gates = F.linear(input, weight_ih, bias_ih)  # [T, B, 4H], the input part of all steps
    h, c = h0, c0  # [B, R], [B, H]: carried state
    outputs = [None] * T
    for t, rows, cut in _schedule(T, lengths, reverse, truncate):
        h_in = _hand_over(h, rows, cut, grad_clip, grad_clip_mode)  # [B, R]
        c_in = _hand_over(c, rows, cut, grad_clip, grad_clip_mode)  # [B, H]
        gates = x_gates[t] + F.linear(h_in, weight_hh, bias_hh)  # [B, 4H]
        i, f, g, o = gates.chunk(4, dim=1)  # 4 x [B, H]
        c_new = torch.sigmoid(f) * c_in + torch.sigmoid(i) * torch.tanh(g)  # [B, H]
        if cell_clip is not None:
            c_new = c_new.clamp(-cell_clip, cell_clip)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)  # [B, H]
        if weight_hr is not None:
            h_new = F.linear(h_new, weight_hr)  # [B, P]
        outputs[t] = torch.where(rows, h_new, torch.zeros_like(h_new))
        h = torch.where(rows, h_new, h)
        c = torch.where(rows, c_new, c)
    return torch.stack(outputs), h, c


def gru_layer(input, weight_ih, weight_hh, bias_ih=None, bias_hh=None, h0=None, *,
              lengths=None, reverse=False,
              grad_clip=None, grad_clip_mode="value", truncate=None):
    """One GRU layer in one direction; returns (output [T, B, H], h_n [B, H]).

    input: [T, B, I]; weight_ih: [3H, I] (gates r, z, n); weight_hh: [3H, H];
    bias_ih, bias_hh: [3H] or None; h0: [B, H] or None;
    lengths: int64 [B] with 1 <= lengths[b] <= T, or None.
    """
    check_options(grad_clip, grad_clip_mode, truncate)
    lengths = _check_input("gru_layer", input, lengths)
    T, B, _ = input.shape
    H = weight_ih.shape[0] // 3
    if h0 is None:
        h0 = input.new_zeros(B, H)

    x_gates = F.linear(input, weight_ih, bias_ih)  # [T, B, 3H]
    h = h0  # [B, H]: carried state
    outputs = [None] * T
    for t, rows, cut in _schedule(T, lengths, reverse, truncate):
        h_in = _hand_over(h, rows, cut, grad_clip, grad_clip_mode)  # [B, H]
        x_r, x_z, x_n = x_gates[t].chunk(3, dim=1)  # 3 x [B, H]
        h_r, h_z, h_n = F.linear(h_in, weight_hh, bias_hh).chunk(3, dim=1)  # 3 x [B, H]
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)  # "reset after": r scales (h W_hn^T + b_hn)
        h_new = (1 - z) * n + z * h_in  # [B, H]
        outputs[t] = torch.where(rows, h_new, torch.zeros_like(h_new))
        h = torch.where(rows, h_new, h)
    return torch.stack(outputs), h
