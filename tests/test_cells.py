"""fusedrnn.LSTMCell / fusedrnn.GRUCell against torch.nn's cells: init, parity (batched or not,
hx or not, bias, memory layout), an unrolled sequence, hidden_size=0. Bad input: test_errors.py.
"""

import pytest
import torch

from helpers import (
    B,
    CELLS,
    F32,
    F64,
    H,
    I,
    NN,
    T,
    assert_tight,
    cell_build,
    cell_leaves,
    compare,
    fused,
    kind_of,
    make_leaves,
    make_pair,
)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("name", CELLS)
def test_cell_init_like_torchnn(name, bias):
    torch.manual_seed(5)
    theirs = NN[name](I, H, bias=bias)
    torch.manual_seed(5)
    ours = fused(name)(I, H, bias=bias)
    assert [(n, p.shape, p.dtype) for n, p in ours.named_parameters()] == \
        [(n, p.shape, p.dtype) for n, p in theirs.named_parameters()]
    for (n, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert torch.equal(p, q), n
    assert ours.extra_repr() == theirs.extra_repr()
    theirs.load_state_dict(ours.state_dict())
    ours.load_state_dict(theirs.state_dict())


@pytest.mark.parametrize("layout", ["contiguous", "sliced"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "nohx"])
@pytest.mark.parametrize("batched", [True, False], ids=["2d", "1d"])
@pytest.mark.parametrize("name", CELLS)
def test_cell_parity_with_torchnn(name, batched, with_hx, bias, layout):
    kind = kind_of(name)
    ours, theirs = make_pair(name, bias=bias)
    leaves = cell_leaves(kind, batched, with_hx)
    result, _ = compare(ours, theirs, leaves, cell_build(kind, layout), cell=True)
    assert result["out0"].shape == ((B, H) if batched else (H,))


@pytest.mark.parametrize("name", CELLS)
def test_cell_unrolled_sequence_like_torchnn(name):
    """A hand-written loop over a sequence (state chained through the cell)."""
    kind = kind_of(name)
    ours, theirs = make_pair(name)
    leaves = make_leaves(kind, L=1, with_hx=True)

    def unrolled(cell):
        def run(leaves):
            state = (leaves["h0"][0], leaves["c0"][0]) if kind == "lstm" else leaves["h0"][0]
            outs = []
            for t in range(T):
                state = cell(leaves["x"][t], state)
                outs.append(state[0] if kind == "lstm" else state)
            return torch.stack(outs)
        return run

    results = []
    for cell in (ours, theirs):
        out = unrolled(cell)(leaves)
        params = list(cell.parameters())
        grads = torch.autograd.grad(out, list(leaves.values()) + params, torch.ones_like(out))
        results.append({"out": out.detach(), **{f"g{i}": g for i, g in enumerate(grads)}})
    assert_tight(results[0], results[1])


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "nohx"])
@pytest.mark.parametrize("batched", [True, False], ids=["2d", "1d"])
@pytest.mark.parametrize("name", CELLS)
def test_cell_hidden_size_zero_like_torchnn(name, batched, with_hx, bias, dtype):
    """hidden_size=0: torch.nn returns empty states connected to the graph (input gradient
    zeros, empty parameter and state gradients); so does fusedrnn."""
    results = []
    for cls in (NN[name], fused(name)):
        torch.manual_seed(0)
        cell = cls(I, 0, bias=bias, dtype=dtype)
        lead = (B,) if batched else ()
        x = torch.randn(*lead, I, dtype=dtype, requires_grad=True)
        states = [torch.randn(*lead, 0, dtype=dtype, requires_grad=True)
                  for _ in range(2 if kind_of(name) == "lstm" else 1)] if with_hx else []
        hx = None if not states else tuple(states) if len(states) == 2 else states[0]
        out = cell(x, hx)
        outs = out if isinstance(out, tuple) else (out,)
        sum(o.sum() for o in outs).backward()
        results.append(([(o.shape, o.dtype, o.requires_grad) for o in outs], x.grad,
                        [s.grad for s in states], [p.grad for p in cell.parameters()]))
    (shapes, gx, gs, gp), (shapes_ours, gx_ours, gs_ours, gp_ours) = results
    assert shapes_ours == shapes
    assert shapes[0][0] == ((B, 0) if batched else (0,))
    assert torch.equal(gx_ours, gx) and gx.abs().sum() == 0
    for a, b in zip(gs_ours + gp_ours, gs + gp):
        assert a.shape == b.shape and a.dtype == b.dtype
