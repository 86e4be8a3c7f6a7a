"""Numerical edges: NaN confined to its batch row (forward and backward, with clipping),
+-inf like torch.nn, an empty batch like torch.nn, T = 10,000 with H = 1 (without and with
options) and H = 1 stacks (double backward: test_double_backward.py).
"""

import time

import pytest
import torch

from helpers import (
    F32,
    F64,
    FUSED,
    KINDS,
    NN_CLASSES,
    OPS,
    ReferenceRNN,
    _state,
    assert_tight,
    call_layer,
    case_id,
    make_tensors,
    run_module,
)


NAN_OPTIONS = {
    "plain": {},
    "value": dict(grad_clip=0.1),
    "norm": dict(grad_clip=0.1, grad_clip_mode="norm"),
    "norm_truncate": dict(grad_clip=0.2, grad_clip_mode="norm", truncate=2),
}


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("options", list(NAN_OPTIONS))
@pytest.mark.parametrize("kind", KINDS)
def test_nan_stays_in_its_batch_row(kind, options, dtype, packed):
    """A NaN in one batch row of the input: the other rows' outputs, final states and input
    gradients are finite and bitwise equal to the run without the NaN (rows never mix, not
    even through a norm clip); the poisoned row is NaN, as in torch.nn."""
    torch.manual_seed(0)
    module = FUSED[kind](3, 5, num_layers=2, bidirectional=True, dtype=dtype,
                         **NAN_OPTIONS[options])
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(2.0)  # make the clip act
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, 3, generator=gen, dtype=F64).to(dtype)
    hx = _state(kind, (4, 4, 5), dtype=dtype)
    lengths = [6, 3, 5, 4] if packed else None
    bad = 1
    poisoned = x.clone()
    poisoned[2, bad, 1] = float("nan")
    clean = run_module(module, x, hx, lengths)
    dirty = run_module(module, poisoned, hx, lengths)
    others = [b for b in range(4) if b != bad]
    for name in ["out", "grad_x"] + [k for k in clean if k.startswith("state")] + \
            [k for k in clean if k.startswith("grad_hx")]:
        batch_dim = 1  # out, grad_x: [T, B, *]; states and their grads: [L*D, B, *]
        a = clean[name].index_select(batch_dim, torch.tensor(others))
        b = dirty[name].index_select(batch_dim, torch.tensor(others))
        assert torch.isfinite(b).all(), f"{name}: NaN leaked into other rows"
        assert torch.equal(a, b), f"{name}: other rows changed by a NaN in row {bad}"
    assert dirty["out"][:, bad].isnan().any()
    assert dirty["grad_x"][:, bad].isnan().any()
    # The clip had something to do (the test is not vacuous).
    if options != "plain":
        plain = FUSED[kind](3, 5, num_layers=2, bidirectional=True, dtype=dtype)
        plain.load_state_dict(module.state_dict())
        unclipped = run_module(plain, x, hx, lengths)
        assert not torch.equal(unclipped["grad_x"], clean["grad_x"])


def assert_same_nonfinite(actual, expected, rtol, atol):
    """Same NaN positions, same +-inf positions, finite values close (atol scaled by the
    magnitude of the finite part of expected)."""
    assert set(actual) == set(expected)
    for name, e in expected.items():
        a = actual[name]
        if e is None or a is None:
            assert a is None and e is None, name
            continue
        finite = torch.isfinite(e)
        scale = max(1.0, e[finite].abs().max().item()) if finite.any() else 1.0
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol * scale, equal_nan=True,
                                   msg=lambda m, name=name: f"{name}: {m}")


def _inf_input(case, dtype):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 3, 3, generator=gen, dtype=F64).to(dtype)
    inf = float("inf")
    if case == "pos_inf":
        x[2, 1, 0] = inf
    elif case == "neg_inf":
        x[1, 2, 2] = -inf
    elif case == "mixed_row":
        x[3, 0, 0], x[3, 0, 1] = inf, -inf
    elif case == "all_inf":
        x.fill_(inf)
    elif case == "huge_finite":
        x[2] *= 1e30
    return x


@pytest.mark.parametrize("case, dtype", [
    pytest.param(case, dtype, id=case_id(case, str(dtype).replace("torch.", "")),
                 )
    for case in ["pos_inf", "neg_inf", "mixed_row", "all_inf", "huge_finite"]
    for dtype in (F32, F64)
])
@pytest.mark.parametrize("kind", KINDS)
def test_infinite_input_like_torchnn(kind, case, dtype):
    """+-inf (and huge) inputs: every output and gradient equals torch.nn's, NaN == NaN and
    inf == inf included (2 layers, bidirectional)."""
    torch.manual_seed(0)
    ours = FUSED[kind](3, 4, num_layers=2, bidirectional=True, dtype=dtype)
    theirs = NN_CLASSES[kind](3, 4, num_layers=2, bidirectional=True, dtype=dtype)
    theirs.load_state_dict(ours.state_dict())
    x = _inf_input(case, dtype)
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == F64 else dict(rtol=1e-4, atol=1e-5)
    assert_same_nonfinite(run_module(ours, x), run_module(theirs, x), **tol)


@pytest.mark.parametrize("options", [{}, dict(grad_clip=0.1, grad_clip_mode="norm", truncate=2)],
                         ids=["plain", "options"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["nohx", "hx"])
@pytest.mark.parametrize("kind", KINDS)
def test_empty_batch_like_torchnn(kind, with_hx, batch_first, options):
    """B = 0 (padded): the same output shapes as torch.nn and the same (empty or zero)
    gradients, forward and backward, with and without hx and options."""
    torch.manual_seed(0)
    ours = FUSED[kind](3, 4, num_layers=2, bidirectional=True, batch_first=batch_first,
                       dtype=F64, **options)
    theirs = NN_CLASSES[kind](3, 4, num_layers=2, bidirectional=True, batch_first=batch_first,
                           dtype=F64)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(0, 5, 3, dtype=F64) if batch_first else torch.randn(5, 0, 3, dtype=F64)
    hx = _state(kind, (4, 0, 4)) if with_hx else None
    mine, expected = run_module(ours, x, hx), run_module(theirs, x, hx)
    assert set(mine) == set(expected)
    for name, e in expected.items():
        a = mine[name]
        assert (a is None) == (e is None), name
        if e is not None:
            assert a.shape == e.shape and a.dtype == e.dtype, name
            assert torch.equal(a, e), name


@pytest.mark.parametrize("kind", KINDS)
def test_empty_batch_op(kind):
    """The ops with B = 0 (and an empty lengths tensor): empty outputs, zero weight
    gradients."""
    tensors = make_tensors(kind, 4, 0, 3, 5)
    leaves = {n: v.requires_grad_(True) for n, v in tensors.items()}
    out = call_layer(OPS[kind], kind, leaves, lengths=torch.zeros(0, dtype=torch.int64),
                     grad_clip=0.5, grad_clip_mode="norm")
    assert out[0].shape == (4, 0, 5) and out[1].shape == (0, 5)
    grads = torch.autograd.grad([o.sum() for o in out], list(leaves.values()),
                                allow_unused=True)
    for (name, leaf), g in zip(leaves.items(), grads):
        assert g is not None and g.shape == leaf.shape, name
        assert torch.equal(g, torch.zeros_like(leaf)), name


@pytest.mark.parametrize("kind", KINDS)
def test_very_long_sequence_matches_torchnn(kind):
    """T = 10,000, H = 1, B = 2, I = 1, float64: forward and backward equal torch.nn's
    tightly, in well under a second (a generous 10 s bound catches quadratic work)."""
    torch.manual_seed(0)
    ours = FUSED[kind](1, 1, dtype=F64)
    theirs = NN_CLASSES[kind](1, 1, dtype=F64)
    theirs.load_state_dict(ours.state_dict())
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(10_000, 2, 1, generator=gen, dtype=F64)
    hx = _state(kind, (1, 2, 1))
    run_module(ours, x[:3], hx)  # warm-up (one-off start-up costs)
    start = time.perf_counter()
    mine = run_module(ours, x, hx)
    elapsed = time.perf_counter() - start
    assert_tight(mine, run_module(theirs, x, hx))
    assert elapsed < 10.0, f"T=10000 forward+backward took {elapsed:.1f} s"


@pytest.mark.parametrize("kind", KINDS)
def test_long_sequence_with_options_matches_reference(kind):
    """T = 2,000, H = 1, packed with very unequal lengths, value clip + truncation every 64
    steps + cell clip: equal to fusedrnn.reference (the bookkeeping of s % k over long
    sequences and many truncation points)."""
    options = dict(grad_clip=0.05, truncate=64)
    if kind == "lstm":
        options["cell_clip"] = 0.5
    torch.manual_seed(0)
    ours = FUSED[kind](1, 1, num_layers=1, bidirectional=True, dtype=F64, **options)
    with torch.no_grad():
        for p in ours.parameters():
            p.mul_(3.0)
    ref = ReferenceRNN(kind, ours, **options)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2000, 2, 1, generator=gen, dtype=F64)
    lengths = [1999, 700]
    assert_tight(run_module(ours, x, None, lengths), run_module(ref, x, None, lengths))


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("kind", KINDS)
def test_hidden_size_one_stack(kind, packed):
    """H = 1 (and I = 1) on a 2-layer bidirectional stack: torch.nn parity without options,
    reference parity with every option."""
    torch.manual_seed(0)
    ours = FUSED[kind](1, 1, num_layers=2, bidirectional=True, dtype=F64)
    theirs = NN_CLASSES[kind](1, 1, num_layers=2, bidirectional=True, dtype=F64)
    theirs.load_state_dict(ours.state_dict())
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(7, 3, 1, generator=gen, dtype=F64)
    hx = _state(kind, (4, 3, 1))
    lengths = [7, 2, 5] if packed else None
    assert_tight(run_module(ours, x, hx, lengths), run_module(theirs, x, hx, lengths))

    options = dict(grad_clip=0.02, grad_clip_mode="norm", truncate=3)
    if kind == "lstm":
        options["cell_clip"] = 0.3
    clipped = FUSED[kind](1, 1, num_layers=2, bidirectional=True, dtype=F64, **options)
    clipped.load_state_dict(ours.state_dict())
    result = run_module(clipped, x, hx, lengths)
    assert_tight(result, run_module(ReferenceRNN(kind, clipped, **options), x, hx, lengths))
