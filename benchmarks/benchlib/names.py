"""Implementation names of the CPU engine benchmark's cells and fixed-cost sections:
bench_cpu_engine.py writes them into its JSON as keys, make_readme_table.py reads them back.
Standard library only (make_readme_table.py imports no torch)."""
from __future__ import annotations

# The fixed-cost section's floor: one torch.cat over the op's own tensors.
FLOOR_IMPL = "torch.cat (same tensors)"


def op_impl(cell: str) -> str:
    """The op timed in the fixed-cost section: 'ops.lstm_layer' / 'ops.gru_layer'."""
    return f"ops.{cell}_layer"


def nn_cell_impl(cell: str) -> str:
    """torch.nn's cell for 'lstm' / 'gru': 'torch.nn.LSTMCell' / 'torch.nn.GRUCell'."""
    return f"torch.nn.{cell.upper()}Cell"
