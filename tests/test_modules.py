"""fusedrnn.LSTM / fusedrnn.GRU against torch.nn.LSTM / torch.nn.GRU (mostly one
unidirectional layer; test_modules_full.py covers stacks, PackedSequence, cells and the rest
of the torch.nn API in depth), option forwarding to the ops, and construction-time errors.

Shape letters: T steps, B batch, I input, H hidden.
"""

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fusedrnn
from helpers import (
    FLOOR32,
    REFERENCE,
    assert_close_by_reference,
    assert_tight,
    max_diff,
    upstream_grads,
)

F32, F64 = torch.float32, torch.float64
CLASSES = {"lstm": (fusedrnn.LSTM, torch.nn.LSTM), "gru": (fusedrnn.GRU, torch.nn.GRU)}
KINDS = ["lstm", "gru"]
T, B, I, H = 5, 3, 4, 6


def make_pair(kind, dtype=F64, seed=0, options=None, **kwargs):
    """(fusedrnn module, torch.nn module) with identical parameters; options (grad_clip...)
    go to the fusedrnn module only."""
    ours_cls, nn_cls = CLASSES[kind]
    torch.manual_seed(seed)
    ours = ours_cls(I, H, dtype=dtype, **kwargs, **(options or {}))
    theirs = nn_cls(I, H, dtype=dtype, **kwargs)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def make_input(kind, dtype=F64, batch_first=False, batched=True, with_hx=True, seed=1):
    """(x, hx) leaves with requires_grad; hx is None, a tensor (GRU) or a tuple (LSTM)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64).to(dtype).requires_grad_(True)

    if batched:
        x = randn(B, T, I) if batch_first else randn(T, B, I)
        state_shape = (1, B, H)
    else:
        x = randn(T, I)
        state_shape = (1, H)
    hx = None
    if with_hx:
        hx = (randn(*state_shape), randn(*state_shape)) if kind == "lstm" else randn(*state_shape)
    return x, hx


def run_module(module, x, hx):
    """Outputs and gradients (input, hx, every parameter) of one forward/backward."""
    out, state = module(x, hx)
    states = state if isinstance(state, tuple) else (state,)
    outputs = (out, *states)
    hx_leaves = [] if hx is None else list(hx) if isinstance(hx, tuple) else [hx]
    params = dict(module.named_parameters())
    leaves = [x, *hx_leaves, *params.values()]
    grads = torch.autograd.grad(outputs, leaves, upstream_grads(outputs))
    names = ["input"] + [f"hx{i}" for i in range(len(hx_leaves))] + list(params)
    result = {f"out{i}": o.detach() for i, o in enumerate(outputs)}
    result.update({"grad_" + n: g for n, g in zip(names, grads)})
    return result


# ---------------------------------------------------------------------------------------
# Parameters, initialisation, state_dict
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("kind", KINDS)
def test_parameters_and_init_like_torchnn(kind, bias):
    ours_cls, nn_cls = CLASSES[kind]
    torch.manual_seed(123)
    ours = ours_cls(I, H, bias=bias)
    torch.manual_seed(123)
    theirs = nn_cls(I, H, bias=bias)
    ours_params = list(ours.named_parameters())
    theirs_params = list(theirs.named_parameters())
    assert [(n, p.shape) for n, p in ours_params] == [(n, p.shape) for n, p in theirs_params]
    for (name, p), (_, q) in zip(ours_params, theirs_params):
        assert isinstance(p, torch.nn.Parameter) and p.dtype == F32
        assert torch.equal(p, q), name
    for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first",
                 "bidirectional"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr


@pytest.mark.parametrize("kind", KINDS)
def test_dtype_argument(kind):
    ours = CLASSES[kind][0](I, H, dtype=F64)
    assert all(p.dtype == F64 for p in ours.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_loads_both_ways(kind):
    ours_cls, nn_cls = CLASSES[kind]
    torch.manual_seed(1)
    ours = ours_cls(I, H, dtype=F64)
    torch.manual_seed(2)
    theirs = nn_cls(I, H, dtype=F64)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    assert not torch.equal(ours.weight_hh_l0, theirs.weight_hh_l0)

    theirs.load_state_dict(ours.state_dict())  # fusedrnn -> torch.nn (strict)
    for name, p in ours.state_dict().items():
        assert torch.equal(theirs.state_dict()[name], p), name

    torch.manual_seed(3)
    other = nn_cls(I, H, dtype=F64)
    ours.load_state_dict(other.state_dict())  # torch.nn -> fusedrnn (strict)
    for name, p in other.state_dict().items():
        assert torch.equal(ours.state_dict()[name], p), name
    x, hx = make_input(kind)
    assert_tight(run_module(ours, x, hx), run_module(other, x, hx))


# ---------------------------------------------------------------------------------------
# Forward and backward like torch.nn
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("kind", KINDS)
def test_float64_like_torchnn(kind, batch_first, with_hx, bias):
    ours, theirs = make_pair(kind, batch_first=batch_first, bias=bias)
    x, hx = make_input(kind, batch_first=batch_first, with_hx=with_hx)
    result = run_module(ours, x, hx)
    expected = run_module(theirs, x, hx)
    assert result["out0"].shape == expected["out0"].shape
    assert_tight(result, expected)


@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("kind", KINDS)
def test_unbatched_input_like_torchnn(kind, batch_first, with_hx):
    """2-D input (T, I) with 2-D states (1, H), as torch.nn accepts."""
    ours, theirs = make_pair(kind, batch_first=batch_first)
    x, hx = make_input(kind, batched=False, with_hx=with_hx)
    result = run_module(ours, x, hx)
    expected = run_module(theirs, x, hx)
    assert result["out0"].shape == (T, H) and result["out1"].shape == (1, H)
    assert_tight(result, expected)


@pytest.mark.parametrize("kind", KINDS)
def test_float32_precision_like_torchnn(kind):
    ours, theirs = make_pair(kind, dtype=F32, batch_first=True)
    _, ref = make_pair(kind, dtype=F64, batch_first=True)
    ref.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    x, hx = make_input(kind, dtype=F32, batch_first=True)
    x64 = x.detach().double().requires_grad_(True)
    hx64 = tuple(h.detach().double().requires_grad_(True) for h in hx) if kind == "lstm" \
        else hx.detach().double().requires_grad_(True)
    assert_close_by_reference(run_module(ours, x, hx), run_module(theirs, x, hx),
                              run_module(ref, x64, hx64), FLOOR32)


@pytest.mark.parametrize("kind", KINDS)
def test_noncontiguous_input_like_torchnn(kind):
    ours, theirs = make_pair(kind)
    x_big = torch.randn(T, 2 * B, I, dtype=F64, requires_grad=True)
    x = x_big[:, ::2]  # [T, B, I], batch stride 2
    assert not x.is_contiguous()
    results = []
    for module in (ours, theirs):
        out, _ = module(x)
        (g,) = torch.autograd.grad(out, x_big, upstream_grads([out])[0])
        results.append({"out": out.detach(), "grad": g})
    assert_tight(results[0], results[1])


# ---------------------------------------------------------------------------------------
# Options are forwarded to the ops
# ---------------------------------------------------------------------------------------

MODULE_OPTIONS = {
    "lstm": dict(grad_clip=0.05, grad_clip_mode="norm", truncate=2, cell_clip=0.3),
    "gru": dict(grad_clip=0.02, grad_clip_mode="value", truncate=3),
}


def reference_run(kind, module, x, hx, batch_first, options):
    """The module's computation written with fusedrnn.reference and the same tensors."""
    x_tm = x.transpose(0, 1) if batch_first else x
    weights = [module.weight_ih_l0, module.weight_hh_l0, module.bias_ih_l0, module.bias_hh_l0]
    if kind == "lstm":
        h0, c0 = (None, None) if hx is None else (hx[0][0], hx[1][0])
        out, h_n, c_n = REFERENCE[kind](x_tm, *weights, h0, c0, **options)
        states = (h_n[None], c_n[None])
    else:
        h0 = None if hx is None else hx[0]
        out, h_n = REFERENCE[kind](x_tm, *weights, h0, **options)
        states = (h_n[None],)
    return (out.transpose(0, 1) if batch_first else out), states


@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("kind", KINDS)
def test_options_forwarded_to_ops(kind, batch_first, with_hx):
    """A module with options equals the reference op with the same options (float64)."""
    options = MODULE_OPTIONS[kind]
    ours, plain = make_pair(kind, batch_first=batch_first, options=options)
    with torch.no_grad():  # large weights: clipping is active
        for p in ours.parameters():
            p.mul_(4.0)
    plain.load_state_dict(ours.state_dict())
    x, hx = make_input(kind, batch_first=batch_first, with_hx=with_hx)
    result = run_module(ours, x, hx)

    class Reference(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for name, p in ours.named_parameters():
                self.register_parameter(name, p)

        def forward(self, x, hx):
            out, states = reference_run(kind, self, x, hx, batch_first, options)
            return out, states if kind == "lstm" else states[0]

    expected = run_module(Reference(), x, hx)
    assert_tight(result, expected)
    assert max_diff(result, run_module(plain, x, hx)) > 1e-3  # the options are active


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------

BAD_OPTIONS = [
    ("grad_clip", -1.0, ValueError),
    ("grad_clip", 0.0, ValueError),
    ("grad_clip", float("nan"), ValueError),
    ("grad_clip", float("inf"), ValueError),
    ("grad_clip", True, TypeError),
    ("grad_clip", "1", TypeError),
    ("grad_clip_mode", "l2", ValueError),
    ("truncate", 0, ValueError),
    ("truncate", -1, ValueError),
    ("truncate", 1.5, TypeError),
    ("truncate", 2.0, TypeError),
    ("truncate", False, TypeError),
    ("cell_clip", -0.5, ValueError),
    ("cell_clip", float("inf"), ValueError),
    ("cell_clip", "0.5", TypeError),
]


@pytest.mark.parametrize("kind, name, value, exc", [
    pytest.param(kind, name, value, exc, id=f"{kind}-{name}={value!r}")
    for kind in KINDS for name, value, exc in BAD_OPTIONS
    if not (kind == "gru" and name == "cell_clip")
])
def test_invalid_options_raise_at_construction(kind, name, value, exc):
    with pytest.raises(exc, match=name):
        CLASSES[kind][0](I, H, **{name: value})


def test_gru_has_no_cell_clip():
    with pytest.raises(TypeError, match="cell_clip"):
        fusedrnn.GRU(I, H, cell_clip=1.0)


@pytest.mark.parametrize("case", ["input_size", "hidden_shape", "input_rank"])
@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_raises_like_torchnn(kind, case):
    ours, theirs = make_pair(kind)
    x, hx = make_input(kind)
    if case == "input_size":
        x = torch.randn(T, B, I + 1, dtype=F64)
    elif case == "hidden_shape":
        hx = (torch.randn(1, B + 1, H, dtype=F64),) * 2 if kind == "lstm" else \
            torch.randn(1, B + 1, H, dtype=F64)
    else:
        x = torch.randn(T, B, I, 1, dtype=F64)
    with pytest.raises(Exception) as expected:
        theirs(x, hx)
    with pytest.raises(type(expected.value)):
        ours(x, hx)


def _stack_input(kind, num_layers=1, bidirectional=False, proj_size=0, seed=1):
    """(x [T, B, I], hx) leaves for a stack of num_layers * D layers (R = proj_size or H)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64).requires_grad_(True)

    LD = num_layers * (2 if bidirectional else 1)
    x = randn(T, B, I)
    h = randn(LD, B, proj_size or H)
    return x, ((h, randn(LD, B, H)) if kind == "lstm" else h)


@pytest.mark.parametrize("kind, kwargs", [
    ("lstm", dict(num_layers=2)),
    ("gru", dict(num_layers=3)),
    ("lstm", dict(bidirectional=True)),
    ("gru", dict(bidirectional=True)),
    ("lstm", dict(proj_size=2)),
    ("lstm", dict(num_layers=2, bidirectional=True, proj_size=3, batch_first=True)),
], ids=["lstm_2layers", "gru_3layers", "lstm_bi", "gru_bi", "lstm_proj", "lstm_all"])
def test_stacks_like_torchnn(kind, kwargs):
    """Multi-layer, bidirectional and projected modules compute what torch.nn computes
    (the configurations that raised NotImplementedError in 0.1)."""
    ours, theirs = make_pair(kind, **kwargs)
    x, hx = _stack_input(kind, kwargs.get("num_layers", 1), kwargs.get("bidirectional", False),
                         kwargs.get("proj_size", 0))
    if kwargs.get("batch_first"):
        x = x.transpose(0, 1)  # a non-contiguous [B, T, I] view
    assert_tight(run_module(ours, x, hx), run_module(theirs, x, hx))


@pytest.mark.parametrize("enforce_sorted", [False, True], ids=["unsorted", "sorted"])
@pytest.mark.parametrize("kind", KINDS)
def test_packed_sequence_like_torchnn(kind, enforce_sorted):
    """PackedSequence input: the same packed output (data, batch_sizes, sorted and unsorted
    indices), final states in the caller's batch order, and gradients as torch.nn."""
    ours, theirs = make_pair(kind, num_layers=2, bidirectional=True)
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
