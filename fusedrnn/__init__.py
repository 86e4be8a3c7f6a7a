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


def empty_cpu_cache() -> int:
    """Return to the system the freed CPU buffers fusedrnn keeps for reuse; returns the bytes
    released.

    The CPU layers take their large buffers (outputs, saved activations, gradients) from a
    cache of freed blocks, so that a training loop does not page-fault fresh memory on every
    call. At most ``FUSEDRNN_CPU_CACHE_MB`` MiB of freed blocks are held (default 512; 0
    turns the cache off). See docs/design.md, section 5 ("CPU memory"), and Note [CPU
    buffer cache] in csrc/cpu/buffer_cache.h.
    """
    from . import _C
    return _C._empty_cpu_cache()

__all__ = ["LSTM", "GRU", "LSTMCell", "GRUCell", "TBPTT", "convert", "to_torch", "init", "ops",
           "plot", "reference", "tbptt", "empty_cpu_cache"]
