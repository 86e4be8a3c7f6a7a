"""Drop-in replacements for torch.nn.LSTM and torch.nn.GRU on the fused kernels.

The modules derive from ``torch.nn.RNNBase`` (not from ``torch.nn.LSTM``/``GRU``, which
Dynamo refuses to trace), so parameter names, shapes, registration order, initialisation,
argument validation, ``state_dict``, ``all_weights`` and ``extra_repr`` are torch.nn's own:
a state_dict loads both ways, and under the same ``torch.manual_seed`` a fusedrnn module is
initialised exactly like its torch.nn namesake.

Extra keyword-only options (DESIGN.md §1, §3): ``grad_clip``, ``grad_clip_mode``,
``truncate`` (both) and ``cell_clip`` (LSTM). With all of them left at None the modules
compute what torch.nn computes.

This release runs one unidirectional layer on padded (tensor) input; num_layers > 1,
bidirectional, proj_size and PackedSequence input raise NotImplementedError.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import ops
from .reference import check_options

__all__ = ["LSTM", "GRU"]


class _FusedRNNBase(nn.RNNBase):
    """Shared part of the fused modules: options, unsupported-configuration errors, layout."""

    def __init__(self, mode, *args, grad_clip=None, grad_clip_mode="value", truncate=None,
                 **kwargs):
        super().__init__(mode, *args, **kwargs)
        check_options(grad_clip, grad_clip_mode, truncate)
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        self.grad_clip_mode = grad_clip_mode
        self.truncate = None if truncate is None else int(truncate)
        name = type(self).__name__
        for what, unsupported in (("num_layers > 1", self.num_layers > 1),
                                  ("bidirectional=True", self.bidirectional),
                                  ("proj_size > 0", self.proj_size > 0)):
            if unsupported:
                raise NotImplementedError(
                    f"fusedrnn.{name}: {what} is not supported yet (this release runs one "
                    f"unidirectional layer); use fusedrnn.ops.{name.lower()}_layer per layer "
                    f"and direction, or torch.nn.{name}"
                )

    def flatten_parameters(self) -> None:
        """No-op: the fused kernels use the parameters as they are (no cuDNN weight buffer)."""

    def _option_repr(self):
        parts = []
        if self.grad_clip is not None:
            parts.append(f"grad_clip={self.grad_clip}, grad_clip_mode={self.grad_clip_mode!r}")
        if self.truncate is not None:
            parts.append(f"truncate={self.truncate}")
        return parts

    def extra_repr(self) -> str:
        return ", ".join([super().extra_repr()] + self._option_repr())

    def _layer_weights(self):
        bias = self.bias
        return (self.weight_ih_l0, self.weight_hh_l0,
                self.bias_ih_l0 if bias else None, self.bias_hh_l0 if bias else None)

    def _batched_input(self, input):
        """(time-major input [T, B, I], is_batched) after torch.nn's input checks."""
        name = type(self).__name__
        if isinstance(input, PackedSequence):
            raise NotImplementedError(
                f"fusedrnn.{name}: PackedSequence input is not supported yet; pass a padded "
                f"tensor, or per-sequence lengths to fusedrnn.ops.{name.lower()}_layer"
            )
        if input.dim() not in (2, 3):
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
        is_batched = input.dim() == 3
        if not is_batched:
            input = input.unsqueeze(0 if self.batch_first else 1)
        self.check_input(input, None)
        return (input.transpose(0, 1) if self.batch_first else input), is_batched

    def _output(self, y: Tensor, is_batched: bool) -> Tensor:
        """Time-major [T, B, R] output back to the caller's layout."""
        if not is_batched:
            return y.squeeze(1)
        return y.transpose(0, 1) if self.batch_first else y


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

    Inputs ``input, (h_0, c_0)`` and outputs ``output, (h_n, c_n)`` as torch.nn.LSTM.
    """

    def __init__(self, *args, grad_clip=None, grad_clip_mode="value", truncate=None,
                 cell_clip=None, **kwargs):
        super().__init__("LSTM", *args, grad_clip=grad_clip, grad_clip_mode=grad_clip_mode,
                         truncate=truncate, **kwargs)
        check_options(None, "value", None, cell_clip)
        self.cell_clip = None if cell_clip is None else float(cell_clip)

    def _option_repr(self):
        parts = super()._option_repr()
        if self.cell_clip is not None:
            parts.append(f"cell_clip={self.cell_clip}")
        return parts

    def forward(self, input: Tensor,
                hx: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        x, is_batched = self._batched_input(input)
        h0 = c0 = None
        if hx is not None:
            h, c = hx
            if is_batched and (h.dim() != 3 or c.dim() != 3):
                raise RuntimeError(
                    "For batched 3-D input, hx and cx should also be 3-D but got "
                    f"({h.dim()}-D, {c.dim()}-D) tensors"
                )
            if not is_batched:
                if h.dim() != 2 or c.dim() != 2:
                    raise RuntimeError(
                        "For unbatched 2-D input, hx and cx should also be 2-D but got "
                        f"({h.dim()}-D, {c.dim()}-D) tensors"
                    )
                h, c = h.unsqueeze(1), c.unsqueeze(1)
            self.check_hidden_size(h, (1, x.size(1), self.hidden_size),
                                   "Expected hidden[0] size {}, got {}")
            self.check_hidden_size(c, (1, x.size(1), self.hidden_size),
                                   "Expected hidden[1] size {}, got {}")
            h0, c0 = h[0], c[0]
        y, h_n, c_n = ops.lstm_layer(
            x, *self._layer_weights(), h0, c0,
            grad_clip=self.grad_clip, grad_clip_mode=self.grad_clip_mode,
            truncate=self.truncate, cell_clip=self.cell_clip,
        )
        h_n, c_n = h_n.unsqueeze(0), c_n.unsqueeze(0)
        if not is_batched:
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        return self._output(y, is_batched), (h_n, c_n)


class GRU(_FusedRNNBase):
    r"""Drop-in replacement for :class:`torch.nn.GRU` on fused kernels.

    Args: as :class:`torch.nn.GRU` (input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None), plus the
    keyword-only ``grad_clip``, ``grad_clip_mode`` and ``truncate`` of :class:`LSTM`.

    Inputs ``input, h_0`` and outputs ``output, h_n`` as torch.nn.GRU.
    """

    def __init__(self, *args, grad_clip=None, grad_clip_mode="value", truncate=None, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, grad_clip=grad_clip, grad_clip_mode=grad_clip_mode,
                         truncate=truncate, **kwargs)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        x, is_batched = self._batched_input(input)
        h0 = None
        if hx is not None:
            if is_batched and hx.dim() != 3:
                raise RuntimeError(
                    f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor"
                )
            if not is_batched:
                if hx.dim() != 2:
                    raise RuntimeError(
                        f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor"
                    )
                hx = hx.unsqueeze(1)
            self.check_hidden_size(hx, (1, x.size(1), self.hidden_size),
                                   "Expected hidden size {}, got {}")
            h0 = hx[0]
        y, h_n = ops.gru_layer(
            x, *self._layer_weights(), h0,
            grad_clip=self.grad_clip, grad_clip_mode=self.grad_clip_mode, truncate=self.truncate,
        )
        h_n = h_n.unsqueeze(0)
        if not is_batched:
            h_n = h_n.squeeze(1)
        return self._output(y, is_batched), h_n
