"""Implementation names of the CPU engine benchmark's cells and fixed-cost sections:
bench_cpu_engine.py writes them into its JSON as keys, make_readme_table.py reads them back.
Standard library only (make_readme_table.py imports no torch)."""
from __future__ import annotations

# The fixed-cost section's floor: one torch.cat over the op's own tensors.
FLOOR_IMPL = "torch.cat (same tensors)"

# The layers section's B = 1 floor call (benchmarks/call_floor.py), timed in the same
# repeats, and the same times with its library GEMMs replaced by their FLOPs at the FMA peak.
CALL_FLOOR_IMPL = "floor call"
CALL_FLOOR_PEAK_IMPL = "floor call, GEMMs at peak"


def op_impl(cell: str) -> str:
    """The op timed in the fixed-cost section: 'ops.lstm_layer' / 'ops.gru_layer'."""
    return f"ops.{cell}_layer"


def nn_cell_impl(cell: str) -> str:
    """torch.nn's cell for 'lstm' / 'gru': 'torch.nn.LSTMCell' / 'torch.nn.GRUCell'."""
    return f"torch.nn.{cell.upper()}Cell"
