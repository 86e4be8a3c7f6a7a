"""Double backward of the layer ops: the kernels of ``fusedrnn::lstm_layer_grad`` /
``gru_layer_grad`` (schemas in csrc/ops.cpp).

A ``create_graph=True`` backward through ``fusedrnn.ops.lstm_layer`` / ``gru_layer`` calls
these ops instead of the fused backward op (csrc/autograd.cpp, Note [Double backward of the
layer ops]). Their one kernel is CompositeImplicitAutograd: it recomputes the layer with
``fusedrnn.reference`` (the same math, clip / truncation / cell-clip semantics included)
from the saved inputs, which carry their autograd history, and differentiates it with
``create_graph=True``. Autograd thus records the whole gradient computation, and the
gradients it returns are differentiable with respect to the layer's inputs, weights and
states and to the incoming gradients (gradient penalties, Hessian-vector products, MAML).

The first backward's values then agree with the fused backward op to rounding; the
second-order values are those of differentiating ``fusedrnn.reference`` twice (with
grad_clip, see docs/ops_api.md, "Double backward"). The recompute is a per-step Python
loop: a gradient-penalty step is slower than torch.nn's (about 1.3-2x in first, noisy
measurements; benchmarks/double_backward.py), not fused-kernel fast. A backward without
create_graph never gets here.

Packed input (``batch_sizes``) is recomputed in the padded layout: the packed rows are
scattered into a zero [T, B, *] tensor and gathered back with differentiable index ops, and
the reference runs with the lengths the packed layout implies (its batch order is the packed
sorted order; reverse runs from each sequence's own last element, as the packed op does).

Imported by fusedrnn/ops.py; nothing here is public.
"""
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from . import reference

_LIB = torch.library.Library("fusedrnn", "IMPL")


def _as_input(t: Optional[Tensor], wanted: bool) -> Optional[Tensor]:
    """The tensor the recompute uses for an op argument. One whose gradient is wanted gets its
    own autograd node (a view that keeps its history): the gradient taken is then that of
    this argument alone, even where one tensor is passed as two arguments or where one
    argument is computed from another. The others are used as they are, history and all, so
    that the gradients returned depend on them."""
    if t is None or not wanted:
        return t
    return t.view_as(t) if t.requires_grad else t.detach().requires_grad_(True)


def _grads(outputs: Sequence[Tensor], grad_outputs: Sequence[Tensor],
           inputs: Sequence[Optional[Tensor]], mask: Sequence[bool]) -> List[Optional[Tensor]]:
    """d(outputs . grad_outputs) / d(inputs[i]) with create_graph, for the wanted inputs (zeros
    where an input does not reach the outputs), None for the others."""
    wanted = [i for i, t in enumerate(inputs) if mask[i] and t is not None]
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if o.requires_grad]
    result: List[Optional[Tensor]] = [None] * len(inputs)
    if not wanted:
        return result
    grads = ()
    if pairs:
        grads = torch.autograd.grad([o for o, _ in pairs], [inputs[i] for i in wanted],
                                    [g for _, g in pairs], create_graph=True, allow_unused=True)
    for k, i in enumerate(wanted):
        g = grads[k] if pairs else None
        result[i] = torch.zeros_like(inputs[i]) if g is None else g
    return result


class _Packing:
    """Packed rows [N, *] <-> padded [T, B, *] for the recompute, with differentiable index
    ops; ``lengths`` [B] are the lengths the packed layout implies (sorted batch order)."""

    def __init__(self, batch_sizes: Tensor, device: torch.device):
        sizes = batch_sizes.tolist()
        self.T, self.B = len(sizes), sizes[0]
        # Packed row n is (t, b) with b < batch_sizes[t], in time order: padded row t * B + b.
        self.index = torch.cat([torch.arange(b) + t * self.B
                                for t, b in enumerate(sizes)]).to(device)
        self.lengths = (batch_sizes[None, :] > torch.arange(self.B)[:, None]).sum(1)

    def pad(self, packed: Tensor) -> Tensor:
        padded = packed.new_zeros(self.T * self.B, packed.shape[-1])
        return padded.index_copy(0, self.index, packed).view(self.T, self.B, -1)

    def pack(self, padded: Tensor) -> Tensor:
        return padded.reshape(self.T * self.B, -1).index_select(0, self.index)


def _layout(input: Tensor, lengths: Optional[Tensor], batch_sizes: Optional[Tensor]):
    """(padded input, lengths for the reference, packing or None)."""
    if batch_sizes is None:
        return input, lengths, None
    packing = _Packing(batch_sizes, input.device)
    return packing.pad(input), packing.lengths, packing


def _lstm_layer_grad(grad_output, grad_h_n, grad_c_n, input, weight_ih, weight_hh, bias_ih,
                     bias_hh, h0, c0, weight_hr, lengths, batch_sizes, reverse, grad_clip,
                     grad_clip_mode, truncate, cell_clip, output_mask):
    with torch.enable_grad():
        args = [_as_input(t, m) for t, m in zip(
            (input, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, weight_hr), output_mask)]
        x, lengths, packing = _layout(args[0], lengths, batch_sizes)
        y, h_n, c_n = reference.lstm_layer(
            x, *args[1:7], weight_hr=args[7], lengths=lengths, reverse=reverse,
            grad_clip=grad_clip, grad_clip_mode=grad_clip_mode, truncate=truncate,
            cell_clip=cell_clip)
        if packing is not None:
            y = packing.pack(y)
        return tuple(_grads((y, h_n, c_n), (grad_output, grad_h_n, grad_c_n), args, output_mask))


def _gru_layer_grad(grad_output, grad_h_n, input, weight_ih, weight_hh, bias_ih, bias_hh, h0,
                    lengths, batch_sizes, reverse, grad_clip, grad_clip_mode, truncate,
                    output_mask):
    with torch.enable_grad():
        args = [_as_input(t, m) for t, m in zip(
            (input, weight_ih, weight_hh, bias_ih, bias_hh, h0), output_mask)]
        x, lengths, packing = _layout(args[0], lengths, batch_sizes)
        y, h_n = reference.gru_layer(
            x, *args[1:6], lengths=lengths, reverse=reverse, grad_clip=grad_clip,
            grad_clip_mode=grad_clip_mode, truncate=truncate)
        if packing is not None:
            y = packing.pack(y)
        return tuple(_grads((y, h_n), (grad_output, grad_h_n), args, output_mask))


_LIB.impl("lstm_layer_grad", _lstm_layer_grad, "CompositeImplicitAutograd")
_LIB.impl("gru_layer_grad", _gru_layer_grad, "CompositeImplicitAutograd")
