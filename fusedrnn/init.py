"""Initialisation helpers for recurrent modules: orthogonal recurrent weights, forget-gate bias.

Both functions work in place under ``torch.no_grad`` and return the module, like
``torch.nn.init``. They accept fusedrnn's modules and their torch.nn namesakes alike (the
parameter names and gate layout are the same, docs/design.md §1):

* :func:`orthogonal_` makes each gate's block of every recurrent weight ``weight_hh``
  (semi-)orthogonal. At initialisation a recurrent matrix whose singular values are all 1
  neither shrinks nor amplifies the gradient handed back from step to step through the
  linear part of the recurrence, which helps gradients reach far back in long sequences.
* :func:`forget_bias_` sets the LSTM forget-gate bias (commonly to 1), so that an untrained
  LSTM starts out remembering its cell state rather than forgetting it at every step.

Shape letters: H hidden, R = proj_size if proj_size > 0 else H, G gates (LSTM 4: i, f, g, o;
GRU 3: r, z, n; plain RNN 1). A recurrent weight is [G*H, R], gates stacked along dim 0.
"""
import math
import numbers
from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ["orthogonal_", "forget_bias_"]

_GATES_BY_MODE = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
_SUPPORTED = ("fusedrnn.LSTM, fusedrnn.GRU, fusedrnn.LSTMCell, fusedrnn.GRUCell or "
              "torch.nn.LSTM, GRU, RNN, LSTMCell, GRUCell, RNNCell")


def _suffixes(module: nn.RNNBase) -> Iterator[str]:
    """Parameter-name suffixes of every layer and direction: _l0, _l0_reverse, _l1, ..."""
    for layer in range(module.num_layers):
        yield f"_l{layer}"
        if module.bidirectional:
            yield f"_l{layer}_reverse"


def _gates(module: nn.Module, fn: str) -> int:
    """Number of gates stacked in the module's weights; TypeError for anything else."""
    if isinstance(module, nn.RNNBase) and module.mode in _GATES_BY_MODE:
        return _GATES_BY_MODE[module.mode]
    if isinstance(module, nn.LSTMCell):
        return 4
    if isinstance(module, nn.GRUCell):
        return 3
    if isinstance(module, nn.RNNCell):
        return 1
    raise TypeError(f"fusedrnn.init.{fn}: module must be a recurrent module ({_SUPPORTED}), "
                    f"got {type(module).__name__}")


def _recurrent_weights(module: nn.Module) -> Iterator[Tuple[str, Tensor]]:
    """(name, weight_hh) of every layer and direction (a cell has one, ``weight_hh``)."""
    if isinstance(module, nn.RNNBase):
        for sfx in _suffixes(module):
            yield "weight_hh" + sfx, getattr(module, "weight_hh" + sfx)
    else:
        yield "weight_hh", module.weight_hh


def _check_real(fn: str, name: str, value) -> float:
    """A finite real number (bool rejected) as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"fusedrnn.init.{fn}: {name} must be a finite real number, "
                        f"got {value!r} of type {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"fusedrnn.init.{fn}: {name} must be a finite real number, "
                         f"got {value!r}")
    return value


def orthogonal_(module: nn.Module, gain: float = 1.0,
                generator: Optional[torch.Generator] = None) -> nn.Module:
    """Make each gate's recurrent weight block (semi-)orthogonal, times ``gain``, in place.

    Every recurrent weight ``weight_hh_l{k}[_reverse]`` (``weight_hh`` for a cell) is [G*H, R]
    with the G gate blocks [H, R] stacked along dim 0. Each block is filled independently
    with :func:`torch.nn.init.orthogonal_`: with R == H it becomes ``gain`` times an
    orthogonal matrix (B^T B = B B^T = gain^2 I); with projection (R = proj_size < H) its
    columns are orthonormal times ``gain`` (B^T B = gain^2 I, R x R). Orthogonalising each
    block rather than the whole [G*H, R] matrix gives every gate its own well-conditioned
    map of the previous state.

    Input weights ``weight_ih``, projection weights ``weight_hr`` and biases are not touched.
    Blocks of half-precision parameters are computed in float32 and rounded.

    Args:
        module: fusedrnn.LSTM / GRU / LSTMCell / GRUCell, or torch.nn.LSTM / GRU / RNN /
            LSTMCell / GRUCell / RNNCell (all layers and directions are initialised).
        gain: scale of each block, any finite real number (as torch.nn.init.orthogonal_).
        generator: torch.Generator to draw from, or None for the global generator.

    Returns:
        module, initialised in place.

    Raises:
        TypeError: module is not one of the recurrent modules above, or gain is not a real
            number (bool included).
        ValueError: gain is NaN or infinite.
    """
    gates = _gates(module, "orthogonal_")
    gain = _check_real("orthogonal_", "gain", gain)
    H = module.hidden_size
    with torch.no_grad():
        for name, weight in _recurrent_weights(module):
            if weight.shape[0] != gates * H:  # not a layout this function knows
                raise ValueError(f"fusedrnn.init.orthogonal_: {name} must have {gates} * "
                                 f"hidden_size = {gates * H} rows, got {tuple(weight.shape)}")
            work = weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32
            for g in range(gates):
                block = weight[g * H:(g + 1) * H]  # [H, R]
                filled = torch.empty(block.shape, dtype=work, device=block.device)
                nn.init.orthogonal_(filled, gain=gain, generator=generator)
                block.copy_(filled)
    return module


def forget_bias_(lstm: nn.Module, value: float = 1.0) -> nn.Module:
    """Set the effective LSTM forget-gate bias of every layer and direction to ``value``.

    The gates use ``bias_ih + bias_hh``, so it is their sum that matters: this puts ``value``
    into the forget slice [H:2H] of ``bias_ih`` and 0 into the forget slice of ``bias_hh``.
    (Putting ``value`` into both, as is sometimes done, would give an effective bias of
    2 * value.) The i, g and o slices are not touched. With value = 1, sigmoid(1) ~ 0.73 of
    the cell state is kept per step at initialisation instead of ~0.5.

    Args:
        lstm: fusedrnn.LSTM or fusedrnn.LSTMCell, or torch.nn.LSTM or torch.nn.LSTMCell,
            built with bias=True.
        value: the effective forget-gate bias, a finite real number.

    Returns:
        lstm, modified in place.

    Raises:
        TypeError: lstm is not an LSTM (the forget gate exists only in LSTMs), or value is
            not a real number.
        ValueError: the LSTM has no biases (bias=False), or value is NaN or infinite.
    """
    is_lstm = isinstance(lstm, nn.RNNBase) and lstm.mode == "LSTM"
    if not (is_lstm or isinstance(lstm, nn.LSTMCell)):
        raise TypeError("fusedrnn.init.forget_bias_: the forget gate is LSTM-only; lstm must be "
                        "fusedrnn.LSTM, fusedrnn.LSTMCell, torch.nn.LSTM or torch.nn.LSTMCell, "
                        f"got {type(lstm).__name__}")
    value = _check_real("forget_bias_", "value", value)
    if not lstm.bias:
        raise ValueError(f"fusedrnn.init.forget_bias_: this {type(lstm).__name__} was built with "
                         "bias=False, so it has no forget-gate bias to set")
    H = lstm.hidden_size
    suffixes = list(_suffixes(lstm)) if isinstance(lstm, nn.RNNBase) else [""]
    with torch.no_grad():
        for sfx in suffixes:
            getattr(lstm, "bias_ih" + sfx)[H:2 * H].fill_(value)
            getattr(lstm, "bias_hh" + sfx)[H:2 * H].zero_()
    return lstm
