"""fusedrnn: fused LSTM and GRU kernels for PyTorch with gradient clipping and truncated
BPTT inside the backward pass.

Public names: the modules ``LSTM``, ``GRU``, ``LSTMCell`` and ``GRUCell`` (drop-in for
torch.nn's), the single-layer ops in ``fusedrnn.ops``, the plain-PyTorch reference in
``fusedrnn.reference``, and the gradient-flow toolkit (docs/toolkit.md): ``track_grad_norms``
on the modules, ``fusedrnn.plot`` (matplotlib optional), ``fusedrnn.tbptt.TBPTT`` and
``fusedrnn.init``; ``convert`` / ``to_torch`` (swap torch.nn's four classes for fusedrnn's
and back, docs/adopting.md).
"""
from . import init, ops, plot, reference, tbptt
from .conversion import convert, to_torch
from .modules import GRU, LSTM, GRUCell, LSTMCell
from .tbptt import TBPTT

__version__ = "0.1.0"

__all__ = ["LSTM", "GRU", "LSTMCell", "GRUCell", "TBPTT", "convert", "to_torch", "init", "ops",
           "plot", "reference", "tbptt"]
