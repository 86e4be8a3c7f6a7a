"""Drop-in replacements for torch.nn.LSTM, GRU, LSTMCell and GRUCell on the fused kernels.

``LSTM`` and ``GRU`` derive from ``torch.nn.RNNBase`` (not from ``torch.nn.LSTM``/``GRU``,
which Dynamo refuses to trace), so parameter names, shapes, registration order,
initialisation, constructor checks, ``state_dict``, ``all_weights`` and ``extra_repr`` are
torch.nn's own: a state_dict loads both ways, and under the same ``torch.manual_seed`` a
fusedrnn module is initialised exactly like its torch.nn namesake. The cells derive from
``torch.nn.LSTMCell``/``GRUCell`` and run one fused step.

Each layer and direction is one call of :func:`fusedrnn.ops.lstm_layer` /
:func:`fusedrnn.ops.gru_layer`. PackedSequence input stays packed: its data and batch_sizes
go to the kernels (packed layout), which process at each step only the sequences still
running and run the reverse direction from each sequence's own last element; there is no
padding and no per-step Python.

Extra keyword-only options (docs/design.md §1, §3): ``grad_clip``, ``grad_clip_mode``,
``truncate`` (LSTM and GRU) and ``cell_clip`` (LSTM); they apply to every layer and
direction. With all of them left at None the modules compute what torch.nn computes.
``track_grad_norms=True`` makes the backward kernels record, per layer, direction and step,
the norm of the recurrent gradient before clipping and the fraction the clip changed
(``grad_norms`` / ``grad_clip_fraction`` after ``backward()``); it never changes a result.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import export as _export
from . import ops
from ._options import check_options

__all__ = ["LSTM", "GRU", "LSTMCell", "GRUCell"]


class _FusedRNNBase(nn.RNNBase):
    """What LSTM and GRU share: options, input/state layout, the layer-direction loop."""

    def __init__(self, mode, *args, grad_clip=None, grad_clip_mode="value", truncate=None,
                 track_grad_norms=False, **kwargs):
        super().__init__(mode, *args, **kwargs)
        check_options(grad_clip, grad_clip_mode, truncate)
        if not isinstance(track_grad_norms, bool):
            raise TypeError("fusedrnn: track_grad_norms must be a bool, got "
                            f"{type(track_grad_norms).__name__}")
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        self.grad_clip_mode = grad_clip_mode
        self.truncate = None if truncate is None else int(truncate)
        self.track_grad_norms = track_grad_norms
        self._grad_records: List[Tensor] = []

    def _record(self, kind: int) -> Optional[Tensor]:
        """[L * D, T] float32 from the records of the last forward: row 0 (norms) or 1 (clip
        fractions); None until a backward has reached them."""
        records = getattr(self, "_grad_records", [])
        if not records or all(r.grad is None for r in records):
            return None
        rows = [r.grad[kind] if r.grad is not None else torch.zeros_like(r[kind].detach())
                for r in records]
        return torch.stack(rows, 0)

    @property
    def grad_norms(self) -> Optional[Tensor]:
        """With ``track_grad_norms=True``, after ``backward()``: float32 [num_layers *
        num_directions, T] (rows in h_n's layer-major order, steps in time order; for packed
        input the steps of batch_sizes). Entry [k, t] is the L2 norm over batch and hidden
        units of the recurrent gradient dh_rec_t, the gradient flowing into h_t from the next
        processed step, *before* clipping (docs/design.md §3). A sequence's last processed step and
        truncation points have no recurrent gradient and contribute 0. None before the first
        backward of a tracked forward. Several backward passes through one forward add up."""
        return self._record(0)

    @property
    def grad_clip_fraction(self) -> Optional[Tensor]:
        """Like :attr:`grad_norms`: the fraction of dh_rec_t the clip changed, elements in
        mode "value", batch rows in mode "norm" (over the rows that have a recurrent gradient
        at t; 0 without ``grad_clip``)."""
        return self._record(1)

    # torch.jit.script: the torch.nn namesake sharing the parameters, or a clear error
    __prepare_scriptable__ = _export.prepare_scriptable

    def flatten_parameters(self) -> None:
        """No-op: the fused kernels use the parameters as they are (no cuDNN weight buffer)."""

    def _option_repr(self) -> List[str]:
        parts = []
        if self.grad_clip is not None:
            parts.append(f"grad_clip={self.grad_clip}, grad_clip_mode={self.grad_clip_mode!r}")
        if self.truncate is not None:
            parts.append(f"truncate={self.truncate}")
        if self.track_grad_norms:
            parts.append("track_grad_norms=True")
        return parts

    def extra_repr(self) -> str:
        return ", ".join([super().extra_repr()] + self._option_repr())

    @property
    def _num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _weights(self, layer: int, direction: int):
        """(weight_ih, weight_hh, bias_ih, bias_hh, weight_hr) of one layer and direction.
        Names come from torch.nn's ``_flat_weights_names`` (layer-major, as registered), values
        from ``_parameters``, which is what ``functional_call`` swaps (it bypasses
        ``__setattr__``, so RNNBase's ``_flat_weights`` list can be stale there)."""
        names = self._flat_weights_names
        per = len(names) // (self.num_layers * self._num_directions)
        start = (layer * self._num_directions + direction) * per
        params = self._parameters
        w = [params[n] for n in names[start:start + per]]
        bias = (w[2], w[3]) if self.bias else (None, None)
        return w[0], w[1], bias[0], bias[1], (w[-1] if self.proj_size > 0 else None)

    def _prepare(self, input):
        """(x, batch_sizes, packing, is_batched) after torch.nn's input checks: time-major
        padded input [T, B, I] and None, or packed data [N, I] and its batch_sizes; packing is
        (batch_sizes, sorted_indices, unsorted_indices) for PackedSequence input, else None;
        is_batched is False for 2-D (unbatched) input."""
        if isinstance(input, PackedSequence):
            _export.check_packed(self)  # not recordable by torch.onnx.export(dynamo=True)
            data, batch_sizes, sorted_indices, unsorted_indices = input
            self.check_input(data, batch_sizes)
            return data, batch_sizes, (batch_sizes, sorted_indices, unsorted_indices), True
        name = type(self).__name__
        if input.dim() not in (2, 3):
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
        is_batched = input.dim() == 3
        if not is_batched:
            input = input.unsqueeze(0 if self.batch_first else 1)
        self.check_input(input, None)
        x = input.transpose(0, 1) if self.batch_first else input
        if x.size(0) == 0:  # torch.nn's error for an empty sequence
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        return x, None, None, is_batched

    def _state(self, hx: Optional[Tensor], is_batched: bool, batch: int, size: int,
               message: str, packing) -> Optional[Tensor]:
        """One initial state as [L * D, B, size] in the kernels' (sorted) batch order."""
        if hx is None:
            return None
        if not is_batched:
            hx = hx.unsqueeze(1)
        expected = (self.num_layers * self._num_directions, batch, size)
        # (for packed input, batch = batch_sizes[0], the number of sequences)
        self.check_hidden_size(hx, expected, message)
        if packing is not None and packing[1] is not None:
            hx = hx.index_select(1, packing[1])
        return hx

    def _run(self, layer_op, x: Tensor, batch_sizes: Optional[Tensor],
             states: Tuple[Optional[Tensor], ...]) -> Tuple[Tensor, List[List[Tensor]]]:
        """All layers and directions. states: initial states [L * D, B, *] or None each.
        Returns the last layer's output ([T, B, D * R] or packed [N, D * R]) and, per state
        kind, the final states in layer-major order."""
        if _export.exporting():  # torch.jit.trace / torch.onnx.export: ATen / ONNX ops
            return _export.run_module(self, x, batch_sizes, states)
        finals: List[List[Tensor]] = [[] for _ in states]
        records: List[Tensor] = []
        # No records in a torch.export graph: it has no backward to fill them, and a module
        # attribute assigned while exporting is flagged (it is not a buffer).
        if self.track_grad_norms and torch.is_grad_enabled() and not _export.torch_exporting():
            steps = x.size(0) if batch_sizes is None else batch_sizes.size(0)
            records = [ops.new_grad_record(steps, device=x.device)
                       for _ in range(self.num_layers * self._num_directions)]
        # Assigned only when there is something to replace: nn.Module's __setattr__ costs
        # about 15 us a call, a third of this module's own Python.
        if records or getattr(self, "_grad_records", None):
            self._grad_records = records
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0 and self.training:
                x = F.dropout(x, p=self.dropout, training=True)
            outputs = []
            for direction in range(self._num_directions):
                index = layer * self._num_directions + direction
                # One layer and direction: squeeze, a view whose backward is a view too
                # (select's backward allocates a zero tensor and copies into it).
                init = [None if s is None else (s.squeeze(0) if s.size(0) == 1 else s[index])
                        for s in states]
                y, *final = layer_op(x, self._weights(layer, direction), init, batch_sizes,
                                     direction == 1, records[index] if records else None)
                outputs.append(y)
                for store, value in zip(finals, final):
                    store.append(value)
            x = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
        return x, finals

    def _finish(self, y: Tensor, finals: List[List[Tensor]], packing, is_batched):
        """Output in the caller's layout and final states [L * D, B, *] in the caller's order."""
        # (one layer and direction: a view, without the copy of torch.stack)
        states = [f[0].unsqueeze(0) if len(f) == 1 else torch.stack(f, 0) for f in finals]
        if packing is not None:
            batch_sizes, sorted_indices, unsorted_indices = packing
            output = PackedSequence(y, batch_sizes, sorted_indices, unsorted_indices)
            if unsorted_indices is not None:
                states = [s.index_select(1, unsorted_indices) for s in states]
            return output, states
        if not is_batched:
            return y.squeeze(1), [s.squeeze(1) for s in states]
        return (y.transpose(0, 1) if self.batch_first else y), states

    def _grad_options(self):
        return dict(grad_clip=self.grad_clip, grad_clip_mode=self.grad_clip_mode,
                    truncate=self.truncate)


class LSTM(_FusedRNNBase):
    r"""Drop-in replacement for :class:`torch.nn.LSTM` on fused kernels.

    Args: as :class:`torch.nn.LSTM` (input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, proj_size=0, device=None,
    dtype=None), plus keyword-only:

        grad_clip: clip the recurrent gradient handed from step t+1 to step t (and into
            h0/c0) inside BPTT: elementwise to [-grad_clip, grad_clip] in mode "value",
            to per-row L2 norm <= grad_clip in mode "norm". None: no clipping.
        grad_clip_mode: "value" (default) or "norm".
        truncate: truncated BPTT: the recurrent gradient is cut every ``truncate`` steps.
        cell_clip: clamp the cell state to [-cell_clip, cell_clip] (changes the forward).
        track_grad_norms: record the recurrent gradient in the backward pass; see
            :attr:`grad_norms` and :attr:`grad_clip_fraction`. Never changes a result.

    Inputs ``input, (h_0, c_0)`` and outputs ``output, (h_n, c_n)`` as torch.nn.LSTM,
    including PackedSequence input and unbatched 2-D input.
    """

    def __init__(self, *args, grad_clip=None, grad_clip_mode="value", truncate=None,
                 cell_clip=None, track_grad_norms=False, **kwargs):
        super().__init__("LSTM", *args, grad_clip=grad_clip, grad_clip_mode=grad_clip_mode,
                         truncate=truncate, track_grad_norms=track_grad_norms, **kwargs)
        check_options(None, "value", None, cell_clip)
        self.cell_clip = None if cell_clip is None else float(cell_clip)

    def _option_repr(self):
        parts = super()._option_repr()
        if self.cell_clip is not None:
            parts.append(f"cell_clip={self.cell_clip}")
        return parts

    def _layer(self, x, weights, init, batch_sizes, reverse, record):
        w_ih, w_hh, b_ih, b_hh, w_hr = weights
        return ops.lstm_layer(x, w_ih, w_hh, b_ih, b_hh, init[0], init[1], weight_hr=w_hr,
                              batch_sizes=batch_sizes, reverse=reverse, cell_clip=self.cell_clip,
                              grad_record=record, **self._grad_options())

    def forward(self, input, hx: Optional[Tuple[Tensor, Tensor]] = None):
        x, batch_sizes, packing, is_batched = self._prepare(input)
        batch = x.size(1) if packing is None else int(batch_sizes[0])
        h0 = c0 = None
        if hx is not None:
            if len(hx) != 2:
                raise RuntimeError("lstm expects two hidden states")
            h, c = hx
            if packing is None:
                want = 3 if is_batched else 2
                if h.dim() != want or c.dim() != want:
                    kind = "batched 3-D" if is_batched else "unbatched 2-D"
                    raise RuntimeError(
                        f"For {kind} input, hx and cx should also be {want}-D but got "
                        f"({h.dim()}-D, {c.dim()}-D) tensors"
                    )
            real = self.proj_size if self.proj_size > 0 else self.hidden_size
            h0 = self._state(h, is_batched, batch, real, "Expected hidden[0] size {}, got {}",
                             packing)
            c0 = self._state(c, is_batched, batch, self.hidden_size,
                             "Expected hidden[1] size {}, got {}", packing)
        y, finals = self._run(self._layer, x, batch_sizes, (h0, c0))
        output, (h_n, c_n) = self._finish(y, finals, packing, is_batched)
        return output, (h_n, c_n)


class GRU(_FusedRNNBase):
    r"""Drop-in replacement for :class:`torch.nn.GRU` on fused kernels.

    Args: as :class:`torch.nn.GRU` (input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None), plus the
    keyword-only ``grad_clip``, ``grad_clip_mode``, ``truncate`` and ``track_grad_norms`` of
    :class:`LSTM`.

    Inputs ``input, h_0`` and outputs ``output, h_n`` as torch.nn.GRU, including
    PackedSequence input and unbatched 2-D input.
    """

    def __init__(self, *args, grad_clip=None, grad_clip_mode="value", truncate=None,
                 track_grad_norms=False, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, grad_clip=grad_clip, grad_clip_mode=grad_clip_mode,
                         truncate=truncate, track_grad_norms=track_grad_norms, **kwargs)

    def _layer(self, x, weights, init, batch_sizes, reverse, record):
        w_ih, w_hh, b_ih, b_hh, _ = weights
        return ops.gru_layer(x, w_ih, w_hh, b_ih, b_hh, init[0], batch_sizes=batch_sizes,
                             reverse=reverse, grad_record=record, **self._grad_options())

    def forward(self, input, hx: Optional[Tensor] = None):
        x, batch_sizes, packing, is_batched = self._prepare(input)
        batch = x.size(1) if packing is None else int(batch_sizes[0])
        if hx is not None and packing is None:
            want = 3 if is_batched else 2
            if hx.dim() != want:
                kind = "batched 3-D" if is_batched else "unbatched 2-D"
                raise RuntimeError(
                    f"For {kind} input, hx should also be {want}-D but got {hx.dim()}-D tensor"
                )
        h0 = self._state(hx, is_batched, batch, self.hidden_size,
                         "Expected hidden size {}, got {}", packing)
        y, finals = self._run(self._layer, x, batch_sizes, (h0,))
        output, (h_n,) = self._finish(y, finals, packing, is_batched)
        return output, h_n


# ---------------------------------------------------------------------------------------
# Cells: one fused step (T = 1) of the layer ops.


def _cell_input(cell, input: Tensor, hx, name: str, count: int):
    """Input [1, B, I] and initial states [B, *] (``count`` of them, or None each when hx is
    None) after torch.nn's cell checks, and whether the input was batched (2-D).

    The checks run in torch.nn's order, with its messages and exception types, so that an
    input with several faults reports the one torch.nn reports: the ranks (ValueError, the
    Python forward of torch.nn's cells), the number of LSTM states, then the sizes in the order
    of torch's cell kernels (input width, then per state batch and width; RuntimeError), and
    only then the dtypes, which torch.nn finds last, in its matrix products (RuntimeError;
    the messages here name the argument instead of the matrix product)."""
    if input.dim() not in (1, 2):
        raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
    parts = None if hx is None else ([hx] if count == 1 else list(hx))
    for idx, h in enumerate(parts or ()):
        # (a None inside hx fails here with torch.nn's AttributeError)
        if h.dim() not in (1, 2):
            what = "hidden" if count == 1 else f"hx[{idx}]"
            raise ValueError(f"{name}: Expected {what} to be 1D or 2D, got {h.dim()}D instead")
    is_batched = input.dim() == 2
    if not is_batched:
        input = input.unsqueeze(0)
    if parts is None:
        states = [None] * count
    else:
        if len(parts) != count:
            # torch.nn: IndexError when an unbatched call indexes the missing state, else
            # the kernel's RuntimeError (it ignores extra states of an unbatched call; a
            # third state is an error here either way)
            error = IndexError if not is_batched and len(parts) < count else RuntimeError
            raise error("lstm_cell expects two hidden states")
        states = parts if is_batched else [h.unsqueeze(0) for h in parts]
    # The size checks of torch's rnn cell kernels, with their messages.
    if input.size(1) != cell.input_size:
        raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} "
                           f"expected {cell.input_size}")
    for idx, h in enumerate(states):
        if h is None:
            continue
        if h.size(0) != input.size(0):
            raise RuntimeError(f"Input batch size {input.size(0)} doesn't match hidden{idx} "
                               f"batch size {h.size(0)}")
        if h.size(1) != cell.hidden_size:
            raise RuntimeError(f"hidden{idx} has inconsistent hidden_size: got {h.size(1)}, "
                               f"expected {cell.hidden_size}")
    # Dtypes last, input first (torch.nn: input @ weight_ih, then the states' products).
    # torch.nn type-promotes a cell state c of another dtype; here every state must match.
    # A dtype mix is fine under autocast, as for torch.nn's cells (the ops cast:
    # ops._in_float32).
    if input.dtype != cell.weight_ih.dtype and not torch._C._is_any_autocast_enabled():
        raise RuntimeError(f"{name}: input must have the dtype of the weights "
                           f"({cell.weight_ih.dtype}), got {input.dtype}")
    for idx, h in enumerate(states):
        if (h is not None and h.dtype != input.dtype
                and not torch._C._is_any_autocast_enabled()):
            what = "hx" if count == 1 else f"hx[{idx}]"
            raise RuntimeError(f"{name}: the hidden state {what} must have the dtype of the "
                               f"input and weights ({input.dtype}), got {h.dtype}")
    for idx, h in enumerate(states):
        # An unbatched input with a 2-D state [H, H] passes the size checks above (as in
        # torch.nn, whose arithmetic then fails on the 3-D state: RuntimeError as well).
        if h is not None and h.dim() != 2:
            what = "hx" if count == 1 else f"hx[{idx}]"
            raise RuntimeError(f"{name}: for unbatched (1-D) input the hidden state {what} "
                               f"must be 1-D, got {h.dim() - 1}-D")
    return input.unsqueeze(0), states, is_batched


def _empty_cell_step(cell, x: Tensor, states):
    """hidden_size == 0: torch.nn returns empty [B, 0] states that are still connected to
    the input, states and parameters (a zero input gradient, empty parameter and state
    gradients). The gate pre-activations, [B, 0] like every state, added to the initial
    states give exactly that; there is nothing to compute, so no kernel runs."""
    x = x[0]
    gates = F.linear(x, cell.weight_ih, cell.bias_ih)
    gates = gates + F.linear(x.new_zeros(x.size(0), 0) if states[0] is None else states[0],
                             cell.weight_hh, cell.bias_hh)
    return tuple(gates + (0 if s is None else s) for s in states)  # distinct tensors


# The cells' common case, without Python checks: a cell is called once per time step, so
# its Python costs count as much as its arithmetic at small sizes. A plain 2-D tensor input
# of a kernel dtype, outside torch.compile, tracing and autocast, with no state or a full
# tuple of plain tensors, goes straight to the op's direct entry (fusedrnn._C), whose C++
# checks validate it. When they reject it, the checked path (_cell_input) runs instead and
# raises torch.nn's error for it, in torch.nn's order; everything else takes that path too.
_FAST_DTYPES = frozenset((torch.float32, torch.float64))
_is_compiling = torch.compiler.is_compiling
_is_tracing = torch._C._is_tracing
_any_autocast = torch._C._is_any_autocast_enabled


def _fast_cell_input(input) -> bool:
    return (type(input) is Tensor and input.dtype in _FAST_DTYPES and input.dim() == 2
            and not (_is_compiling() or _is_tracing() or _any_autocast()))


class LSTMCell(nn.LSTMCell):
    r"""Drop-in replacement for :class:`torch.nn.LSTMCell`: one fused LSTM step, forward
    and backward. Same constructor, parameters, inputs and outputs as torch.nn.LSTMCell."""

    __prepare_scriptable__ = _export.prepare_scriptable  # torch.jit.script: nn.LSTMCell twin

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None):
        if _fast_cell_input(input) and self.hidden_size:
            if hx is None:
                h0 = c0 = None
            elif type(hx) is tuple and len(hx) == 2:
                h0, c0 = hx
                if type(h0) is not Tensor or type(c0) is not Tensor:
                    h0 = False  # (None inside hx & co.: the checked path says what is wrong)
            else:
                h0 = False
            if h0 is not False:
                p = self._parameters
                try:
                    _, h, c = ops._C.lstm_layer(
                        input[None], p["weight_ih"], p["weight_hh"], p["bias_ih"],
                        p["bias_hh"], h0, c0, None, None, None, False, None, "value", None,
                        None, None)
                    return h, c
                except (RuntimeError, TypeError, ValueError):
                    pass  # the checked path below raises torch.nn's error for it
        x, (h0, c0), is_batched = _cell_input(self, input, hx, "LSTMCell", 2)
        if self.hidden_size == 0:
            h, c = _empty_cell_step(self, x, (h0, c0))
            return (h, c) if is_batched else (h.squeeze(0), c.squeeze(0))
        # The op itself, positionally: nothing of ops.lstm_layer's option handling applies.
        _, h, c = ops._lstm_op(x, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
                               h0, c0, None, None, None, False, None, "value", None, None, None)
        if not is_batched:
            h, c = h.squeeze(0), c.squeeze(0)
        return h, c


class GRUCell(nn.GRUCell):
    r"""Drop-in replacement for :class:`torch.nn.GRUCell`: one fused GRU step, forward and
    backward. Same constructor, parameters, inputs and outputs as torch.nn.GRUCell."""

    __prepare_scriptable__ = _export.prepare_scriptable  # torch.jit.script: nn.GRUCell twin

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        if (_fast_cell_input(input) and self.hidden_size
                and (hx is None or type(hx) is Tensor)):
            p = self._parameters
            try:
                return ops._C.gru_layer(input[None], p["weight_ih"], p["weight_hh"],
                                        p["bias_ih"], p["bias_hh"], hx, None, None, False,
                                        None, "value", None, None)[1]
            except (RuntimeError, TypeError, ValueError):
                pass  # the checked path below raises torch.nn's error for it
        x, (h0,), is_batched = _cell_input(self, input, hx, "GRUCell", 1)
        if self.hidden_size == 0:
            h, = _empty_cell_step(self, x, (h0,))
            return h if is_batched else h.squeeze(0)
        _, h = ops._gru_op(x, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, h0,
                           None, None, False, None, "value", None, None)
        return h if is_batched else h.squeeze(0)


# ---------------------------------------------------------------------------------------
# Whole-model checkpoints under torch.load(weights_only=True).
#
# Code written for torch.nn allowlists torch.nn.LSTM & co. (torch.serialization.safe_globals
# or add_safe_globals) to load pickled models; after fusedrnn.convert the pickle names
# fusedrnn.modules.LSTM & co. instead, which that allowlist does not cover. The four classes
# are allowlisted here, on import, so that such a checkpoint loads wherever the torch.nn one
# would (and also without an allowlist when a fusedrnn module is the whole checkpoint).
#
# Why that is safe: the weights-only unpickler builds an allowlisted class with
# ``cls.__new__(cls)`` (object's: no code) and sets its state with ``__setstate__`` (here
# torch.nn.Module's and RNNBase's, which only update ``__dict__`` and recompute the
# flat-weight bookkeeping from the names in it) or a ``__dict__`` update. None of the four
# classes overrides ``__new__``, ``__setstate__`` or ``__reduce__``, and every value in the
# state must itself be something the unpickler allows (tensors, Parameters, numbers,
# strings, lists, dicts, OrderedDicts; the only callables a file can name are the
# allowlisted ones), so loading runs nothing of the file's choosing, exactly as for the
# torch.nn classes. The state of a fusedrnn
# module holds only such values: torch.nn's attributes, the options (float, str, int, bool
# or None) and ``_grad_records`` (a list of plain float32 tensors; pickled without their
# ``.grad``, like parameters, so ``grad_norms`` is None after loading until the next
# backward).
if hasattr(torch.serialization, "add_safe_globals"):
    torch.serialization.add_safe_globals([LSTM, GRU, LSTMCell, GRUCell])
