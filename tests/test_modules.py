"""fusedrnn.LSTM / fusedrnn.GRU against torch.nn.LSTM / torch.nn.GRU: every output, h_n,
c_n, input, hx and parameter gradient.

* one layer (float64, unbatched, float32 by the 2x rule, non-contiguous input), stacks;
* float64 parity over num_layers=2 x bias x bidirectional x batch_first x memory layout x
  padded / PackedSequence input (sorted or not, lengths as tensor or list) x hx given or None,
  for LSTM, GRU and LSTM with projection, and the PackedSequence metadata;
* dropout between layers (eval / train, same RNG stream as torch.nn, its statistics);
* parameters, init, attributes, state_dict both ways, .double() & co, extra_repr,
  flatten_parameters, an empty batch; a small language model trained for a few SGD steps.

Cells: test_cells.py; options: test_clipping.py; bad input: test_errors.py.
Shape letters: T steps, B batch, I input, H hidden, P projection, R = P or H, L layers,
D directions.
"""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import (
    B,
    B1,
    CLASSES,
    CLIP_CONFIGS,
    F32,
    F64,
    FLOOR32,
    H,
    H1,
    I,
    I1,
    KINDS,
    NN,
    STACK_CONFIGS,
    T,
    T1,
    VARIANTS,
    _stack_input,
    assert_close_by_reference,
    assert_same_packing,
    assert_tight,
    builder,
    compare,
    fused,
    kind_of,
    make_layer_input,
    make_layer_pair,
    make_leaves,
    make_pair,
    max_abs_err,
    module_forward_backward,
    run_layer_module,
    upstream_grads,
    variant_pair,
)


pytestmark = pytest.mark.filterwarnings(
    "ignore:LSTM with projections is not supported with oneDNN:UserWarning")


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("kind", KINDS)
def test_parameters_and_init_like_torchnn(kind, bias):
    ours_cls, nn_cls = CLASSES[kind]
    torch.manual_seed(123)
    ours = ours_cls(I1, H1, bias=bias)
    torch.manual_seed(123)
    theirs = nn_cls(I1, H1, bias=bias)
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
    ours = CLASSES[kind][0](I1, H1, dtype=F64)
    assert all(p.dtype == F64 for p in ours.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_loads_both_ways(kind):
    ours_cls, nn_cls = CLASSES[kind]
    torch.manual_seed(1)
    ours = ours_cls(I1, H1, dtype=F64)
    torch.manual_seed(2)
    theirs = nn_cls(I1, H1, dtype=F64)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    assert not torch.equal(ours.weight_hh_l0, theirs.weight_hh_l0)

    theirs.load_state_dict(ours.state_dict())  # fusedrnn -> torch.nn (strict)
    for name, p in ours.state_dict().items():
        assert torch.equal(theirs.state_dict()[name], p), name

    torch.manual_seed(3)
    other = nn_cls(I1, H1, dtype=F64)
    ours.load_state_dict(other.state_dict())  # torch.nn -> fusedrnn (strict)
    for name, p in other.state_dict().items():
        assert torch.equal(ours.state_dict()[name], p), name
    x, hx = make_layer_input(kind)
    assert_tight(run_layer_module(ours, x, hx), run_layer_module(other, x, hx))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("kind", KINDS)
def test_float64_like_torchnn(kind, batch_first, with_hx, bias):
    ours, theirs = make_layer_pair(kind, batch_first=batch_first, bias=bias)
    x, hx = make_layer_input(kind, batch_first=batch_first, with_hx=with_hx)
    result = run_layer_module(ours, x, hx)
    expected = run_layer_module(theirs, x, hx)
    assert result["out0"].shape == expected["out0"].shape
    assert_tight(result, expected)


@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("kind", KINDS)
def test_unbatched_input_like_torchnn(kind, batch_first, with_hx):
    """2-D input (T, I) with 2-D states (1, H), as torch.nn accepts."""
    ours, theirs = make_layer_pair(kind, batch_first=batch_first)
    x, hx = make_layer_input(kind, batched=False, with_hx=with_hx)
    result = run_layer_module(ours, x, hx)
    expected = run_layer_module(theirs, x, hx)
    assert result["out0"].shape == (T1, H1) and result["out1"].shape == (1, H1)
    assert_tight(result, expected)


@pytest.mark.parametrize("kind", KINDS)
def test_float32_precision_like_torchnn(kind):
    ours, theirs = make_layer_pair(kind, dtype=F32, batch_first=True)
    _, ref = make_layer_pair(kind, dtype=F64, batch_first=True)
    ref.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    x, hx = make_layer_input(kind, dtype=F32, batch_first=True)
    x64 = x.detach().double().requires_grad_(True)
    hx64 = tuple(h.detach().double().requires_grad_(True) for h in hx) if kind == "lstm" \
        else hx.detach().double().requires_grad_(True)
    assert_close_by_reference(run_layer_module(ours, x, hx), run_layer_module(theirs, x, hx),
                              run_layer_module(ref, x64, hx64), FLOOR32)


@pytest.mark.parametrize("kind", KINDS)
def test_noncontiguous_input_like_torchnn(kind):
    ours, theirs = make_layer_pair(kind)
    x_big = torch.randn(T1, 2 * B1, I1, dtype=F64, requires_grad=True)
    x = x_big[:, ::2]  # [T, B, I], batch stride 2
    assert not x.is_contiguous()
    results = []
    for module in (ours, theirs):
        out, _ = module(x)
        (g,) = torch.autograd.grad(out, x_big, upstream_grads([out])[0])
        results.append({"out": out.detach(), "grad": g})
    assert_tight(results[0], results[1])


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
    ours, theirs = make_layer_pair(kind, **kwargs)
    x, hx = _stack_input(kind, kwargs.get("num_layers", 1), kwargs.get("bidirectional", False),
                         kwargs.get("proj_size", 0))
    if kwargs.get("batch_first"):
        x = x.transpose(0, 1)  # a non-contiguous [B, T, I] view
    assert_tight(run_layer_module(ours, x, hx), run_layer_module(theirs, x, hx))


LENGTHS_UNSORTED = [3, 5, 1, 3]  # a tie, T itself and a length-1 sequence


LENGTHS_SORTED = [5, 3, 3, 1]


LENGTH_MODES = {  # name -> (lengths, enforce_sorted, lengths_as)
    "padded": (None, False, None),
    "packed_unsorted_tensor": (LENGTHS_UNSORTED, False, "tensor"),
    "packed_unsorted_list": (LENGTHS_UNSORTED, False, "list"),
    "packed_sorted_tensor": (LENGTHS_SORTED, True, "tensor"),
    "packed_sorted_list": (LENGTHS_SORTED, True, "list"),
}


LAYOUTS = ["contiguous", "sliced", "transposed"]


def _parity_cases():
    """The full product: variant x bias x bidirectional x lengths mode x batch_first x
    layout x hx (720 cases, ~10 ms each)."""
    cases = []
    for variant, bias, bidir, lengths, batch_first, layout, with_hx in itertools.product(
            VARIANTS, [True, False], [False, True], LENGTH_MODES, [False, True], LAYOUTS,
            [True, False]):
        cases.append(pytest.param(
            variant, bias, bidir, lengths, batch_first, layout, with_hx,
            id="-".join([variant, "bias" if bias else "nobias", "bi" if bidir else "uni",
                         lengths, "bf" if batch_first else "tm", layout,
                         "hx" if with_hx else "nohx"])))
    return cases


@pytest.mark.parametrize("variant, bias, bidirectional, lengths_mode, batch_first, layout, "
                         "with_hx", _parity_cases())
def test_parity_with_torchnn(variant, bias, bidirectional, lengths_mode, batch_first, layout,
                             with_hx):
    name, proj = VARIANTS[variant]
    kind = kind_of(name)
    ours, theirs = variant_pair(variant, num_layers=2, bias=bias, batch_first=batch_first,
                                bidirectional=bidirectional)
    lengths, enforce_sorted, lengths_as = LENGTH_MODES[lengths_mode]
    leaves = make_leaves(kind, L=2, D=2 if bidirectional else 1, proj=proj, with_hx=with_hx)
    build = builder(kind, batch_first=batch_first, layout=layout, lengths=lengths,
                    lengths_as=lengths_as, enforce_sorted=enforce_sorted)
    result, _ = compare(ours, theirs, leaves, build)
    D, R = (2 if bidirectional else 1), (proj or H)
    assert result["out1"].shape == (2 * D, B, R)
    if lengths is None:
        assert result["out0"].shape == ((B, T, D * R) if batch_first else (T, B, D * R))
    else:
        assert result["out0"].shape == (sum(lengths), D * R)


@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "nohx"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_unbatched_input_parity(variant, bidirectional, batch_first, with_hx):
    """2-D input (T, I) with 2-D states (L*D, R), as torch.nn accepts (batch_first ignored)."""
    name, proj = VARIANTS[variant]
    kind = kind_of(name)
    ours, theirs = variant_pair(variant, num_layers=2, batch_first=batch_first,
                                bidirectional=bidirectional)
    D = 2 if bidirectional else 1
    leaves = make_leaves(kind, L=2, D=D, proj=proj, batched=False, with_hx=with_hx)
    result, _ = compare(ours, theirs, leaves, builder(kind))
    assert result["out0"].shape == (T, D * (proj or H))
    assert result["out1"].shape == (2 * D, proj or H)


@pytest.mark.parametrize("name, kwargs", [
    ("GRU", dict(num_layers=3, bidirectional=True)),
    ("LSTM", dict(num_layers=3, proj_size=1, batch_first=True)),
    ("LSTM", dict(num_layers=1, bidirectional=True, proj_size=3)),
], ids=["gru_3layers_bi", "lstm_3layers_proj1_bf", "lstm_1layer_bi_proj3"])
def test_other_stack_shapes_parity(name, kwargs, device):
    kind = kind_of(name)
    ours, theirs = make_pair(name, **kwargs)
    ours, theirs = ours.to(device), theirs.to(device)
    D = 2 if kwargs.get("bidirectional") else 1
    leaves = make_leaves(kind, L=kwargs["num_layers"], D=D, proj=kwargs.get("proj_size", 0),
                         T=6)
    leaves = {k: v.detach().to(device).requires_grad_(True) for k, v in leaves.items()}
    compare(ours, theirs, leaves,
            builder(kind, batch_first=kwargs.get("batch_first", False),
                    lengths=[6, 2, 4, 1]))


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_float32_stack_precision_like_torchnn(variant, packed, device):
    """docs/design.md §4 on a 2-layer bidirectional stack: against a float64 torch.nn run on the
    same (rounded) values (on the CPU), fusedrnn's float32 error is at most 2x torch.nn's (on
    the same device: cuDNN on CUDA) plus a floor."""
    name, proj = VARIANTS[variant]
    kind = kind_of(name)
    ours, theirs = variant_pair(variant, dtype=F32, num_layers=2, bidirectional=True,
                                batch_first=True)
    _, ref = variant_pair(variant, dtype=F64, num_layers=2, bidirectional=True,
                          batch_first=True)
    ref.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    leaves64 = make_leaves(kind, L=2, D=2, proj=proj, T=6)
    leaves32 = {k: v.detach().float().requires_grad_(True) for k, v in leaves64.items()}
    leaves64 = {k: v.detach().double().requires_grad_(True) for k, v in leaves32.items()}
    ours, theirs = ours.to(device), theirs.to(device)
    leaves32 = {k: v.detach().to(device).requires_grad_(True) for k, v in leaves32.items()}
    build = builder(kind, batch_first=True, lengths=[4, 6, 1, 5] if packed else None)
    assert_close_by_reference(module_forward_backward(ours, leaves32, build)[0],
                              module_forward_backward(theirs, leaves32, build)[0],
                              module_forward_backward(ref, leaves64, build)[0], FLOOR32)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_output_is_not_aliased_across_calls(variant):
    """Two calls return independent tensors (no reused output buffers)."""
    ours, _ = variant_pair(variant, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, I, dtype=F64)
    out1, state1 = ours(x)
    saved = out1.clone()
    out2, _ = ours(2 * x)
    assert torch.equal(out1, saved)
    assert not torch.equal(out1, out2)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_empty_batch_like_torchnn(variant):
    """B = 0 is accepted by torch.nn: same shapes from fusedrnn."""
    ours, theirs = variant_pair(variant, num_layers=2, bidirectional=True)
    x = torch.randn(T, 0, I, dtype=F64)
    out, state = ours(x)
    out_nn, state_nn = theirs(x)
    assert out.shape == out_nn.shape
    for a, b in zip(state if isinstance(state, tuple) else (state,),
                    state_nn if isinstance(state_nn, tuple) else (state_nn,)):
        assert a.shape == b.shape


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_dropout_has_no_effect_in_eval_mode(variant):
    ours, theirs = variant_pair(variant, num_layers=2, bidirectional=True, dropout=0.5)
    ours.eval()
    theirs.eval()
    name, proj = VARIANTS[variant]
    kind = kind_of(name)
    leaves = make_leaves(kind, L=2, D=2, proj=proj)
    compare(ours, theirs, leaves, builder(kind))
    compare(ours, theirs, leaves, builder(kind, lengths=LENGTHS_UNSORTED))
    x = leaves["x"].detach()
    with torch.no_grad():
        assert torch.equal(ours(x)[0], ours(x)[0])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_dropout_is_active_in_train_mode(variant):
    ours, _ = variant_pair(variant, num_layers=2, dropout=0.5)
    ours.train()
    x = torch.randn(T, B, I, dtype=F64)
    torch.manual_seed(10)
    first = ours(x)
    second = ours(x)
    assert not torch.equal(first[0], second[0])
    ours.eval()
    out_eval = ours(x)[0]
    assert not torch.equal(first[0], out_eval)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_dropout_last_layer_and_single_layer_untouched(variant):
    """num_layers=1 with dropout: torch.nn warns and applies nothing."""
    name, proj = VARIANTS[variant]
    kwargs = dict(proj_size=proj) if proj else {}
    with pytest.warns(UserWarning, match="dropout"):
        nn_module = NN[name](I, H, dropout=0.5, dtype=F64, **kwargs)
    with pytest.warns(UserWarning, match="dropout"):
        ours = fused(name)(I, H, dropout=0.5, dtype=F64, **kwargs)
    ours.load_state_dict(nn_module.state_dict())
    ours.train()
    x = torch.randn(T, B, I, dtype=F64)
    assert torch.equal(ours(x)[0], ours(x)[0])
    assert_tight(ours(x)[0], nn_module(x)[0])


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_dropout_same_seed_same_result_as_torchnn(variant, bidirectional, packed):
    """Train mode, dropout=0.5, 2 layers: with the same torch.manual_seed before each call,
    fusedrnn draws the same mask as torch.nn (F.dropout on the layer output, packed data
    for packed input) and so gives the same outputs and gradients."""
    name, proj = VARIANTS[variant]
    kind = kind_of(name)
    ours, theirs = variant_pair(variant, num_layers=2, dropout=0.5,
                                bidirectional=bidirectional)
    ours.train()
    theirs.train()
    leaves = make_leaves(kind, L=2, D=2 if bidirectional else 1, proj=proj)
    build = builder(kind, lengths=LENGTHS_UNSORTED if packed else None)
    torch.manual_seed(1234)
    result, out = module_forward_backward(ours, leaves, build)
    torch.manual_seed(1234)
    expected, out_expected = module_forward_backward(theirs, leaves, build)
    assert_same_packing(out, out_expected)
    assert_tight(result, expected)
    # dropout was active: the result differs from eval mode
    theirs.eval()
    evaluated, _ = module_forward_backward(theirs, leaves, build)
    assert max_abs_err(evaluated["out0"], expected["out0"]) > 1e-3


def _probe_layer1(module, kind):
    """Make layer 1 of a 2-layer unidirectional module (input size H, no projection)
    compute h_t = tanh(x_t) (GRU) or tanh(tanh(x_t)) (LSTM) of its own input x_t, the
    dropped layer-0 output, with saturated gates. Returns the inverse function."""
    big = 100.0  # sigmoid(big) == 1.0 in float64; sigmoid(-big) ~ 4e-44
    eye = torch.eye(H, dtype=F64)
    zero = torch.zeros(H, H, dtype=F64)
    with torch.no_grad():
        module.weight_hh_l1.zero_()
        module.bias_hh_l1.zero_()
        if kind == "gru":  # r, z, n: z = 0, n = tanh(x)
            module.weight_ih_l1.copy_(torch.cat([zero, zero, eye]))
            module.bias_ih_l1.copy_(torch.cat([torch.zeros(H), -big * torch.ones(H),
                                               torch.zeros(H)]).double())
            return torch.atanh
        # i, f, g, o: i = 1, f = 0, g = tanh(x), o = 1 -> c = tanh(x), h = tanh(tanh(x))
        module.weight_ih_l1.copy_(torch.cat([zero, zero, eye, zero]))
        module.bias_ih_l1.copy_(torch.cat([big * torch.ones(H), -big * torch.ones(H),
                                           torch.zeros(H), big * torch.ones(H)]).double())
        return lambda h: torch.atanh(torch.atanh(h))


@pytest.mark.parametrize("p", [0.5, 0.25])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_dropout_statistics(kind, p):
    """Recover the dropped layer-1 input through a probe layer: a fraction ~p of it is zero,
    the rest is the layer-0 output scaled by exactly 1/(1-p); the last layer's output is
    not dropped. The same probe is first checked on torch.nn."""
    name = kind.upper()
    Tp, Bp, Hp = 5, 8, H
    assert Hp == H
    ours, theirs = make_pair(name, H, H, num_layers=2, dropout=p)
    layer0 = NN[name](H, H, dtype=F64)
    layer0.load_state_dict({k: v for k, v in theirs.state_dict().items() if k.endswith("_l0")})
    x = torch.randn(Tp, 16 * Bp, H, dtype=F64)
    with torch.no_grad():
        y0 = layer0(x)[0]  # [T, B, H]: layer-0 output, before dropout
    for module in (theirs, ours):  # the probe works on torch.nn, then judges fusedrnn
        inverse = _probe_layer1(module, kind)
        module.train()
        torch.manual_seed(99)
        with torch.no_grad():
            dropped = inverse(module(x)[0])  # [T, B, H]: layer-1 input
        zero = dropped.abs() < 1e-20
        frac = zero.double().mean().item()
        assert abs(frac - p) < 0.06, f"{type(module)}: dropped fraction {frac}, p={p}"
        kept = ~zero
        torch.testing.assert_close(dropped[kept], y0[kept] / (1 - p), rtol=1e-8, atol=1e-10)
        module.eval()
        with torch.no_grad():
            torch.testing.assert_close(inverse(module(x)[0]), y0, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("config", list(STACK_CONFIGS))
def test_init_and_attributes_like_torchnn(config):
    name, kwargs = STACK_CONFIGS[config]
    torch.manual_seed(11)
    theirs = NN[name](I, H, **kwargs)
    torch.manual_seed(11)
    ours = fused(name)(I, H, **kwargs)
    assert isinstance(ours, nn.RNNBase)
    assert not isinstance(ours, (nn.LSTM, nn.GRU))
    assert [(n, p.shape, p.dtype) for n, p in ours.named_parameters()] == \
        [(n, p.shape, p.dtype) for n, p in theirs.named_parameters()]
    for (n, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert isinstance(p, nn.Parameter) and torch.equal(p, q), n
    for attr in ("mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first",
                 "dropout", "bidirectional", "proj_size"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    assert len(ours.all_weights) == len(theirs.all_weights)
    for ws, ws_nn in zip(ours.all_weights, theirs.all_weights):
        assert len(ws) == len(ws_nn)
        for w, w_nn in zip(ws, ws_nn):
            assert torch.equal(w, w_nn)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert list(dict(ours.named_buffers())) == list(dict(theirs.named_buffers()))


@pytest.mark.parametrize("config", list(STACK_CONFIGS))
def test_state_dict_round_trip_both_ways(config):
    name, kwargs = STACK_CONFIGS[config]
    kind = kind_of(name)
    torch.manual_seed(1)
    ours = fused(name)(I, H, dtype=F64, **kwargs)
    torch.manual_seed(2)
    theirs = NN[name](I, H, dtype=F64, **kwargs)
    theirs.load_state_dict(ours.state_dict())  # fusedrnn -> torch.nn (strict)
    for k, v in ours.state_dict().items():
        assert torch.equal(theirs.state_dict()[k], v), k
    ours.eval()
    theirs.eval()
    D = 2 if kwargs.get("bidirectional") else 1
    leaves = make_leaves(kind, L=kwargs["num_layers"], D=D, proj=kwargs.get("proj_size", 0))
    build = builder(kind, batch_first=kwargs.get("batch_first", False))
    compare(ours, theirs, leaves, build)

    torch.manual_seed(3)
    other = NN[name](I, H, dtype=F64, **kwargs)
    ours.load_state_dict(other.state_dict())  # torch.nn -> fusedrnn (strict)
    for k, v in other.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k
    other.eval()
    compare(ours, other, leaves, build)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_flatten_parameters_is_a_noop(variant):
    ours, _ = variant_pair(variant, num_layers=2, bidirectional=True)
    before = [(n, p, p.detach().clone(), p.data_ptr()) for n, p in ours.named_parameters()]
    assert ours.flatten_parameters() is None
    after = list(ours.named_parameters())
    assert len(after) == len(before)
    for (n, p, values, ptr), (n2, p2) in zip(before, after):
        assert n == n2 and p is p2 and p2.data_ptr() == ptr and torch.equal(p2, values)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_dtype_moves(variant):
    """A float32 module moved with .double() / .to(float64) computes like torch.nn's."""
    name, proj = VARIANTS[variant]
    kind = kind_of(name)
    kwargs = dict(num_layers=2, bidirectional=True, proj_size=proj) if proj else \
        dict(num_layers=2, bidirectional=True)
    torch.manual_seed(4)
    ours = fused(name)(I, H, **kwargs)
    theirs = NN[name](I, H, **kwargs)
    theirs.load_state_dict(ours.state_dict())
    assert ours.double() is ours
    theirs.double()
    assert all(p.dtype == F64 for p in ours.parameters())
    assert all(w.dtype == F64 for ws in ours.all_weights for w in ws)
    leaves = make_leaves(kind, L=2, D=2, proj=proj)
    compare(ours, theirs, leaves, builder(kind, lengths=LENGTHS_UNSORTED))

    ours.float()
    theirs.float()
    x = torch.randn(T, B, I)
    out = ours(x)[0]
    assert out.dtype == F32
    torch.testing.assert_close(out, theirs(x)[0], rtol=1e-4, atol=1e-5)
    ours.to(F64)
    theirs.to(F64)
    compare(ours, theirs, leaves, builder(kind))


@pytest.mark.parametrize("config", list(STACK_CONFIGS) + ["lstm_plain", "gru_plain"])
def test_extra_repr_like_torchnn_without_options(config):
    name, kwargs = STACK_CONFIGS.get(config, (config.split("_")[0].upper(), {}))
    ours = fused(name)(I, H, **kwargs)
    theirs = NN[name](I, H, **kwargs)
    assert ours.extra_repr() == theirs.extra_repr()
    assert repr(ours) == repr(theirs)


@pytest.mark.parametrize("config", list(CLIP_CONFIGS))
def test_extra_repr_shows_options(config):
    name, kwargs, options = CLIP_CONFIGS[config]
    text = fused(name)(I, H, **kwargs, **options).extra_repr()
    assert text.startswith(NN[name](I, H, **kwargs).extra_repr())
    for key, value in options.items():
        assert f"{key}=" in text and str(value) in text, (key, text)


class TinyLM(nn.Module):
    """Embedding -> 2-layer LSTM (batch_first) -> Linear, predicting the next token."""

    def __init__(self, lstm_cls, vocab=11, emb=5, hidden=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, emb, dtype=F64)
        self.lstm = lstm_cls(emb, hidden, num_layers=2, batch_first=True, dtype=F64)
        self.head = nn.Linear(hidden, vocab, dtype=F64)

    def forward(self, tokens):
        out, _ = self.lstm(self.embed(tokens))
        return self.head(out)


def test_small_model_trains_like_torchnn():
    torch.manual_seed(0)
    reference_model = TinyLM(nn.LSTM)
    model = TinyLM(fused("LSTM"))
    model.load_state_dict(reference_model.state_dict())
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, 11, (B, 7), generator=gen)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    losses = []
    for m in (reference_model, model):
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        run = []
        for _ in range(5):
            opt.zero_grad()
            logits = m(inputs)
            loss = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1))
            loss.backward()
            opt.step()
            run.append(loss.item())
        losses.append(run)
    assert losses[0][-1] < losses[0][0]  # it does train
    for step, (a, b) in enumerate(zip(*losses)):
        assert math.isclose(b, a, rel_tol=1e-9), f"step {step}: {b} != {a}"
    final = dict(reference_model.named_parameters())
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, final[n], rtol=1e-9, atol=1e-10, msg=n)
