"""PackedSequence input to the modules: the packed output (data, batch_sizes, sorted and
unsorted indices), states in the caller's batch order and gradients as torch.nn; an empty
packed batch. (The parity product of test_modules.py covers packed input too; the op's
packed form is in test_errors.py and test_compile.py, the CUDA packed records in test_cuda.py.)
"""

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from helpers import (
    F64,
    KINDS,
    MI,
    _module_pair,
    _stack_input,
    assert_tight,
    make_layer_pair,
    upstream_grads,
)


@pytest.mark.parametrize("enforce_sorted", [False, True], ids=["unsorted", "sorted"])
@pytest.mark.parametrize("kind", KINDS)
def test_packed_sequence_like_torchnn(kind, enforce_sorted):
    """PackedSequence input: the same packed output (data, batch_sizes, sorted and unsorted
    indices), final states in the caller's batch order, and gradients as torch.nn."""
    ours, theirs = make_layer_pair(kind, num_layers=2, bidirectional=True)
    x, hx = _stack_input(kind, 2, True)
    lengths = torch.tensor([5, 3, 2] if enforce_sorted else [3, 5, 2])
    results = []
    for module in (ours, theirs):
        packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
        out, state = module(packed, hx)
        assert isinstance(out, PackedSequence)
        states = state if isinstance(state, tuple) else (state,)
        outputs = (out.data, *states)
        hx_leaves = list(hx) if isinstance(hx, tuple) else [hx]
        leaves = [x, *hx_leaves, *module.parameters()]
        grads = torch.autograd.grad(outputs, leaves, upstream_grads(outputs))
        results.append((out, {**{f"out{i}": o.detach() for i, o in enumerate(outputs)},
                              **{f"grad{i}": g for i, g in enumerate(grads)}}))
    (out, result), (out_nn, expected) = results
    assert torch.equal(out.batch_sizes, out_nn.batch_sizes)
    for a, b in ((out.sorted_indices, out_nn.sorted_indices),
                 (out.unsorted_indices, out_nn.unsorted_indices)):
        assert (a is None and b is None) or torch.equal(a, b)
    assert_tight(result, expected)


@pytest.mark.parametrize("kind", KINDS)
def test_empty_packed_sequence_like_torchnn(kind):
    """An empty PackedSequence (no sequences): torch.nn cannot run it either; fusedrnn
    raises the same exception type (pack_padded_sequence itself refuses B = 0)."""
    ours, theirs = _module_pair(kind)
    empty = PackedSequence(torch.zeros(0, MI, dtype=F64), torch.zeros(0, dtype=torch.int64),
                           None, None)
    with pytest.raises(Exception) as expected:
        theirs(empty)
    with pytest.raises(type(expected.value)):
        ours(empty)
    with pytest.raises(RuntimeError, match="empty"):
        pack_padded_sequence(torch.zeros(3, 0, MI), torch.zeros(0, dtype=torch.int64),
                             enforce_sorted=False)
