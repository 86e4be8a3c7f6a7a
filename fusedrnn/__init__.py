"""fusedrnn: fused LSTM and GRU kernels for PyTorch with gradient clipping and truncated
BPTT inside the backward pass.

Public names: the modules ``LSTM``, ``GRU``, ``LSTMCell`` and ``GRUCell`` (drop-in for
torch.nn's), the single-layer
ops in ``fusedrnn.ops`` and the plain-PyTorch reference in ``fusedrnn.reference``.
"""
from . import ops, reference
from .modules import GRU, LSTM, GRUCell, LSTMCell

__version__ = "0.1.0"

__all__ = ["LSTM", "GRU", "LSTMCell", "GRUCell", "ops", "reference"]
