"""fusedrnn.ops (the compiled single-layer ops) against torch.nn and fusedrnn.reference,
without options: float64 tightly, float32 by docs/design.md §4 (the error against a float64
reference is at most 2x the error of torch.nn in float32, plus a small floor); output shapes
and dtypes; gradcheck; autograd details (no_grad, retain_graph, one output used, partial
requires_grad). The parity tests take the ``device`` fixture (conftest.py): on "cuda" the op
runs on the GPU and is compared with the same yardsticks run on the CPU (torch.nn's float32
baseline on the GPU, cuDNN).

Shape letters: T steps, B batch, I input, H hidden, P projection, R = P or H.
"""

import pytest
import torch

import fusedrnn.ops as ops
from helpers import (
    Case,
    F32,
    F64,
    FLOOR32,
    OPS,
    OP_VARIANTS,
    OUTPUTS,
    REFERENCE,
    TORCHNN,
    assert_close_by_reference,
    assert_tight,
    call_layer,
    cast,
    forward_backward,
    make_tensors,
    upstream_grads,
)


pytestmark = pytest.mark.filterwarnings(
    "ignore:LSTM with projections is not supported with oneDNN:UserWarning")


SHAPES = [(1, 1, 1, 1), (1, 3, 5, 4), (4, 1, 3, 1), (3, 2, 7, 129), (5, 3, 1, 2), (6, 4, 5, 16)]


def _base_cases():
    cases = []
    for kind, proj in OP_VARIANTS:
        for T, B, I, H in SHAPES:
            P = H // 2 if proj else 0
            if proj and P == 0:
                continue
            cases.append(Case(kind, T, B, I, H, P))
            cases.append(Case(kind, T, B, I, H, P, bias=False, h0=False))
        T, B, I, H = 6, 4, 5, 6
        P = 3 if proj else 0
        cases.append(Case(kind, T, B, I, H, P, bias=False))
        cases.append(Case(kind, T, B, I, H, P, h0=False))
        for reverse in (False, True):
            for lengths in (None, [3, 6, 1, 5], [2, 4, 4, 1]):
                for layout in (None, "slice", "batch_first"):
                    cases.append(Case(kind, T, B, I, H, P, reverse=reverse, lengths=lengths,
                                      layout=layout))
    return cases


BASE_CASES = _base_cases()


@pytest.mark.parametrize("case", BASE_CASES, ids=repr)
def test_float64_matches_torchnn(case, device):
    assert_tight(case.run(OPS[case.kind], device=device), case.run(TORCHNN[case.kind]))


@pytest.mark.parametrize("case", BASE_CASES, ids=repr)
def test_float64_matches_reference(case, device):
    assert_tight(case.run(OPS[case.kind], device=device), case.run(REFERENCE[case.kind]))


@pytest.mark.parametrize("case", BASE_CASES, ids=repr)
def test_float32_precision_like_torchnn(case, device):
    tensors = case.tensors(F32)
    ours = case.run(OPS[case.kind], tensors=tensors, device=device)
    assert all(v.dtype == F32 for v in ours.values())
    theirs = case.run(TORCHNN[case.kind], tensors=tensors, device=device)
    ref64 = case.run(TORCHNN[case.kind], tensors=cast(tensors, F64))
    assert_close_by_reference(ours, theirs, ref64, FLOOR32)


def test_output_shapes_and_dtypes():
    for kind, P, R in (("lstm", 0, 5), ("lstm", 3, 3), ("gru", 0, 5)):
        tensors = make_tensors(kind, 4, 2, 3, 5, P, dtype=F32)
        result = call_layer(OPS[kind], kind, tensors)
        assert len(result) == len(OUTPUTS[kind])
        assert result[0].shape == (4, 2, R) and result[1].shape == (2, R)
        if kind == "lstm":
            assert result[2].shape == (2, 5)
        assert all(r.dtype == F32 for r in result)


GRADCHECK_OPTIONS = {
    # Options that change the backward pass cannot pass gradcheck when active (that is their
    # point), so they run with values that leave the gradient exact: the code paths are
    # exercised and must not alter the math. cell_clip changes the forward and is active.
    "plain": dict(),
    "reverse": dict(reverse=True),
    "lengths": dict(lengths=[3, 1]),
    "reverse_lengths": dict(reverse=True, lengths=[2, 4]),
    "clip_value_inactive": dict(grad_clip=1e30),
    "clip_norm_inactive": dict(grad_clip=1e30, grad_clip_mode="norm"),
    "truncate_T": dict(truncate=4),
    "cell_clip": dict(cell_clip=0.3),
    "everything": dict(reverse=True, lengths=[4, 2], grad_clip=1e30, grad_clip_mode="norm",
                       truncate=5, cell_clip=0.3),
}


GRADCHECK_FLAGS = {
    "bias_h0": dict(bias=True, h0=True, P=0),
    "no_bias_no_h0": dict(bias=False, h0=False, P=0),
    "proj": dict(bias=True, h0=True, P=2),
}


GRADCHECK_CASES = [
    pytest.param(kind, name, flags, id=f"{kind}-{name}-{flags}")
    for kind in ("lstm", "gru") for name, options in GRADCHECK_OPTIONS.items()
    for flags in GRADCHECK_FLAGS
    if kind == "lstm" or ("cell_clip" not in options and not GRADCHECK_FLAGS[flags]["P"])
]


@pytest.mark.parametrize("kind, name, flags", GRADCHECK_CASES)
def test_gradcheck(kind, name, flags, device):
    options = dict(GRADCHECK_OPTIONS[name])
    flags = GRADCHECK_FLAGS[flags]
    T = 4
    if "lengths" in options:
        options["lengths"] = torch.tensor(options["lengths"])
        T = int(options["lengths"].max())
    tensors = make_tensors(kind, T, 2, 3, 3, flags["P"], bias=flags["bias"], h0=flags["h0"],
                           input_scale=2.0)
    names = list(tensors)
    leaves = [tensors[n].to(device).clone().requires_grad_(True) for n in names]

    def fn(*args):
        return call_layer(OPS[kind], kind, dict(zip(names, args)), **options)

    assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("options", [dict(), dict(grad_clip=0.05, truncate=2, cell_clip=0.3)],
                         ids=["plain", "options"])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_no_grad_forward_equals_grad_forward(kind, dtype, options):
    if kind == "gru":
        options = {k: v for k, v in options.items() if k != "cell_clip"}
    tensors = make_tensors(kind, 5, 3, 4, 6, dtype=dtype)
    lengths = torch.tensor([5, 2, 3])
    with_grad = forward_backward(OPS[kind], kind, tensors, lengths=lengths, **options)
    with torch.no_grad():
        without = call_layer(OPS[kind], kind, tensors, lengths=lengths, **options)
    for name, value in zip(OUTPUTS[kind], without):
        assert not value.requires_grad
        if dtype == F64:
            assert_tight(value, with_grad[name])
        else:
            torch.testing.assert_close(value, with_grad[name])


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_backward_twice_with_retain_graph(kind):
    tensors = {n: t.requires_grad_(True) for n, t in make_tensors(kind, 5, 3, 4, 6).items()}
    outputs = call_layer(OPS[kind], kind, tensors, lengths=torch.tensor([5, 2, 3]),
                         grad_clip=0.05, truncate=2)
    grads = upstream_grads(outputs)
    first = torch.autograd.grad(outputs, list(tensors.values()), grads, retain_graph=True)
    second = torch.autograd.grad(outputs, list(tensors.values()), grads)
    for a, b in zip(first, second):
        assert_tight(a, b)


@pytest.mark.parametrize("kind, used", [(kind, used) for kind in ("lstm", "gru")
                                         for used in OUTPUTS[kind]])
def test_loss_on_one_output_only(kind, used):
    """Outputs that do not reach the loss get no gradient (undefined grads are handled)."""
    index = OUTPUTS[kind].index(used)
    tensors = make_tensors(kind, 5, 3, 4, 6)
    results = []
    for fn in (OPS[kind], REFERENCE[kind]):
        leaves = {n: t.clone().requires_grad_(True) for n, t in tensors.items()}
        out = call_layer(fn, kind, leaves, grad_clip=0.05, truncate=2)
        loss = (out[index] * upstream_grads([out[index]])[0]).sum()
        results.append(dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())))))
    assert_tight(results[0], results[1])


@pytest.mark.parametrize("which", ["input", "weight_hh", "h0"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_partial_requires_grad(kind, which):
    """Only one argument requires grad: its gradient equals the one of a full run."""
    tensors = make_tensors(kind, 5, 3, 4, 6)
    full = forward_backward(OPS[kind], kind, tensors, grad_clip=0.05)
    args = dict(tensors)
    args[which] = tensors[which].clone().requires_grad_(True)
    outputs = call_layer(OPS[kind], kind, args, grad_clip=0.05)
    (g,) = torch.autograd.grad(outputs, [args[which]], upstream_grads(outputs))
    assert_tight(g, full["grad_" + which])


def test_nothing_requires_grad():
    tensors = make_tensors("lstm", 3, 2, 3, 4)
    out = call_layer(ops.lstm_layer, "lstm", tensors, grad_clip=0.1)
    assert not any(o.requires_grad for o in out)
