"""The whole torch.nn API of fusedrnn.LSTM / GRU / LSTMCell / GRUCell.

* parity with torch.nn in float64 over num_layers=2 x bias x bidirectional x batch_first x
  memory layout x padded / PackedSequence input (sorted or not, lengths as tensor or list)
  x hx given or None, for LSTM, GRU and LSTM with projection: every output, h_n, c_n,
  input, hx and parameter gradient, and the PackedSequence metadata;
* gradient clipping, truncation and cell_clip on a 2-layer bidirectional stack against
  fusedrnn.reference composed layer by layer (helpers.reference_stack);
* dropout between layers (eval / train, same RNG stream as torch.nn, its statistics);
* LSTMCell / GRUCell against torch.nn's cells;
* argument validation: the same exception types as torch.nn;
* state_dict both ways, all_weights, pickle, deepcopy, torch.save/load, .double(),
  extra_repr, flatten_parameters;
* a small language model trained for a few SGD steps with torch.nn and with fusedrnn;
* torch.compile(fullgraph=True) of a training step.

fusedrnn classes are looked up when a test runs (``fused(name)``), so the file collects
whatever the package exports. Shape letters: T steps, B batch, I input, H hidden,
P projection, R = P or H, L layers, D directions.
"""

import copy
import itertools
import math
import pickle
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from helpers import (
    FLOOR32,
    ReferenceRNN,
    _every_other,
    assert_close_by_reference,
    assert_same_packing,
    assert_tight,
    max_abs_err,
    module_forward_backward,
)

F32, F64 = torch.float32, torch.float64
NN = {"LSTM": nn.LSTM, "GRU": nn.GRU, "LSTMCell": nn.LSTMCell, "GRUCell": nn.GRUCell}
T, B, I, H, P = 5, 4, 3, 4, 2

# variant -> (class name, proj_size)
VARIANTS = {"lstm": ("LSTM", 0), "gru": ("GRU", 0), "lstm_proj": ("LSTM", P)}

pytestmark = pytest.mark.filterwarnings(
    "ignore:LSTM with projections is not supported with oneDNN:UserWarning")


def fused(name):
    """fusedrnn.<name>, looked up at test time."""
    return getattr(fusedrnn, name)


def kind_of(name):
    return "lstm" if name.startswith("LSTM") else "gru"


def make_pair(name, input_size=I, hidden_size=H, *, seed=0, dtype=F64, options=None,
              **kwargs):
    """(fusedrnn module, torch.nn module) with the torch.nn module's parameters (strict
    load_state_dict); options (grad_clip, ...) go to the fusedrnn module only."""
    torch.manual_seed(seed)
    theirs = NN[name](input_size, hidden_size, dtype=dtype, **kwargs)
    ours = fused(name)(input_size, hidden_size, dtype=dtype, **kwargs, **(options or {}))
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def variant_pair(variant, **kwargs):
    name, proj = VARIANTS[variant]
    if proj:
        kwargs["proj_size"] = proj
    return make_pair(name, **kwargs)


def make_leaves(kind, *, L=2, D=1, proj=0, T=T, B=B, I=I, H=H, batched=True, with_hx=True,
                seed=1):
    """Seeded float64 leaves: "x" time-major [T, B, I] (or [T, I]) and, if with_hx,
    "h0" [L*D, B, R] (or [L*D, R]) and for LSTM "c0" [L*D, B, H]."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64).requires_grad_(True)

    leaves = {"x": randn(T, B, I) if batched else randn(T, I)}
    if with_hx:
        lead = (L * D, B) if batched else (L * D,)
        leaves["h0"] = randn(*lead, proj or H)
        if kind == "lstm":
            leaves["c0"] = randn(*lead, H)
    return leaves


def relayout(t, layout):
    """The values of t through a differentiable view with the requested memory layout."""
    if layout == "contiguous":
        out = t.contiguous()
    elif layout == "sliced":  # inner stride 2
        out = _every_other(t.contiguous(), t.dim() - 1)
    elif layout == "transposed":  # dims 0 and 1 swapped in storage
        out = t.transpose(0, 1).contiguous().transpose(0, 1)
    else:
        raise ValueError(layout)
    if layout != "contiguous" and t.numel() > 1:
        assert not out.is_contiguous()
    return out


def builder(kind, *, batch_first=False, layout="contiguous", lengths=None,
            lengths_as="tensor", enforce_sorted=False):
    """leaves -> (input, hx) in the module's format: batch_first, memory layout, packed."""

    def build(leaves):
        x = leaves["x"]
        if x.dim() == 3 and batch_first:
            x = x.transpose(0, 1)
        x = relayout(x, layout)
        states = [relayout(leaves[n], layout) for n in ("h0", "c0") if n in leaves]
        hx = None if not states else tuple(states) if kind == "lstm" else states[0]
        if lengths is not None:
            lens = torch.tensor(lengths) if lengths_as == "tensor" else list(lengths)
            x = pack_padded_sequence(x, lens, batch_first=batch_first,
                                     enforce_sorted=enforce_sorted)
        return x, hx

    return build


def compare(ours, theirs, leaves, build, cell=False):
    """Run both modules on the same leaves; assert equal outputs and gradients (float64)."""
    result, out = module_forward_backward(ours, leaves, build, cell=cell)
    expected, out_expected = module_forward_backward(theirs, leaves, build, cell=cell)
    if not cell:
        assert_same_packing(out, out_expected)
    assert_tight(result, expected)
    return result, expected


# ---------------------------------------------------------------------------------------
# 1. Parity with torch.nn (float64)
# ---------------------------------------------------------------------------------------

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
def test_other_stack_shapes_parity(name, kwargs):
    kind = kind_of(name)
    ours, theirs = make_pair(name, **kwargs)
    D = 2 if kwargs.get("bidirectional") else 1
    leaves = make_leaves(kind, L=kwargs["num_layers"], D=D, proj=kwargs.get("proj_size", 0),
                         T=6)
    compare(ours, theirs, leaves,
            builder(kind, batch_first=kwargs.get("batch_first", False),
                    lengths=[6, 2, 4, 1]))


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_float32_stack_precision_like_torchnn(variant, packed):
    """docs/design.md §4 on a 2-layer bidirectional stack: against a float64 torch.nn run on the
    same (rounded) values, fusedrnn's float32 error is at most 2x torch.nn's plus a floor."""
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


# ---------------------------------------------------------------------------------------
# 2. Clipping and truncation on a stack, against fusedrnn.reference layer by layer
# ---------------------------------------------------------------------------------------

OPTION_SETS = {
    "value": dict(grad_clip=0.02),
    "norm": dict(grad_clip=0.05, grad_clip_mode="norm"),
    "truncate": dict(truncate=2),
    "value_truncate": dict(grad_clip=0.03, truncate=3),
    "norm_truncate": dict(grad_clip=0.05, grad_clip_mode="norm", truncate=2),
    "cell_clip": dict(cell_clip=0.3),
    "all": dict(grad_clip=0.03, grad_clip_mode="norm", truncate=2, cell_clip=0.4),
}
LSTM_ONLY = {"cell_clip", "all"}
CLIP_LENGTHS = [4, 6, 1, 5]


def _clip_cases():
    cases = []
    for variant in VARIANTS:
        for opt in OPTION_SETS:
            if opt in LSTM_ONLY and variant == "gru":
                continue
            for packed in (False, True):
                cases.append(pytest.param(variant, opt, packed,
                                          id=f"{variant}-{opt}-{'packed' if packed else 'padded'}"))
    return cases


def _scaled_pair(variant, scale=3.0, options=None, **kwargs):
    """(fusedrnn module with options, torch.nn module) sharing parameters scaled by scale,
    so that gradients are large enough for the clip to act."""
    name, proj = VARIANTS[variant]
    if proj:
        kwargs["proj_size"] = proj
    ours, theirs = make_pair(name, options=options, **kwargs)
    with torch.no_grad():
        for p in theirs.parameters():
            p.mul_(scale)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


@pytest.mark.parametrize("variant, option_set, packed", _clip_cases())
def test_options_on_bidirectional_stack_match_reference(variant, option_set, packed):
    options = OPTION_SETS[option_set]
    name, proj = VARIANTS[variant]
    kind = kind_of(name)
    ours, plain = _scaled_pair(variant, options=options, num_layers=2, bidirectional=True,
                               batch_first=packed)
    ref = ReferenceRNN(kind, ours, **options)
    leaves = make_leaves(kind, L=2, D=2, proj=proj, T=6)
    build = builder(kind, batch_first=packed, lengths=CLIP_LENGTHS if packed else None)

    result, out = module_forward_backward(ours, leaves, build)
    expected, out_expected = module_forward_backward(ref, leaves, build)
    assert_same_packing(out, out_expected)
    assert_tight(result, expected)

    # Not vacuous: the options change the gradient of every layer and direction.
    unclipped, _ = module_forward_backward(plain, leaves, build)
    for layer in range(2):
        for sfx in ("", "_reverse"):
            key = f"grad_weight_hh_l{layer}{sfx}"
            assert max_abs_err(expected[key], unclipped[key]) > 1e-6, (
                f"{key}: options {options} do not act; make the case stronger")


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_reference_stack_without_options_is_torchnn(variant, packed):
    """Checks the harness: the composed reference without options is torch.nn."""
    name, proj = VARIANTS[variant]
    kind = kind_of(name)
    torch.manual_seed(0)
    theirs = nn.LSTM(I, H, 2, bidirectional=True, proj_size=proj, dtype=F64) \
        if kind == "lstm" else nn.GRU(I, H, 2, bidirectional=True, dtype=F64)
    leaves = make_leaves(kind, L=2, D=2, proj=proj, T=6)
    build = builder(kind, lengths=CLIP_LENGTHS if packed else None)
    compare(ReferenceRNN(kind, theirs), theirs, leaves, build)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_option_attributes(kind):
    name = kind.upper()
    options = dict(grad_clip=0.5, grad_clip_mode="norm", truncate=3)
    if kind == "lstm":
        options["cell_clip"] = 2.0
    module = fused(name)(I, H, num_layers=2, bidirectional=True, **options)
    for key, value in options.items():
        assert getattr(module, key) == value, key
    plain = fused(name)(I, H)
    assert (plain.grad_clip, plain.grad_clip_mode, plain.truncate) == (None, "value", None)


# ---------------------------------------------------------------------------------------
# 3. Dropout between layers
# ---------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------
# 4. Cells
# ---------------------------------------------------------------------------------------

CELLS = ["LSTMCell", "GRUCell"]


def cell_leaves(kind, batched, with_hx, seed=3):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64).requires_grad_(True)

    lead = (B,) if batched else ()
    leaves = {"x": randn(*lead, I)}
    if with_hx:
        leaves["h0"] = randn(*lead, H)
        if kind == "lstm":
            leaves["c0"] = randn(*lead, H)
    return leaves


def cell_build(kind, layout="contiguous"):
    def build(leaves):
        x = leaves["x"]
        states = [leaves[n] for n in ("h0", "c0") if n in leaves]
        if layout == "sliced":
            x = _every_other(x, x.dim() - 1)
            states = [_every_other(s, s.dim() - 1) for s in states]
        hx = None if not states else tuple(states) if kind == "lstm" else states[0]
        return x, hx
    return build


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


def _exception_type(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the type is what is compared
        return type(e), e
    return None, None


def assert_raises_like(ours_fn, theirs_fn):
    """torch.nn raises (the table entry is a real error); fusedrnn raises the same type
    (or a subclass of it)."""
    theirs_type, theirs_exc = _exception_type(theirs_fn)
    assert theirs_type is not None, "torch.nn accepts this: the table entry is wrong"
    ours_type, ours_exc = _exception_type(ours_fn)
    assert ours_type is not None and issubclass(ours_type, theirs_type), (
        f"fusedrnn raised {ours_type.__name__ if ours_type else 'nothing'} ({ours_exc}); "
        f"torch.nn raises {theirs_type.__name__} ({theirs_exc})")


CELL_CTOR_ERRORS = {
    "hidden_float": ((I, 2.0), {}),
    "input_float": ((2.0, H), {}),
    "hidden_negative": ((I, -1), {}),
}


@pytest.mark.parametrize("case", list(CELL_CTOR_ERRORS))
@pytest.mark.parametrize("name", CELLS)
def test_cell_constructor_errors_like_torchnn(name, case):
    args, kwargs = CELL_CTOR_ERRORS[case]
    assert_raises_like(lambda: fused(name)(*args, **kwargs), lambda: NN[name](*args, **kwargs))


def _cell_bad_inputs(kind):
    def state(*shape, dtype=F64):
        s = torch.randn(*shape, dtype=dtype)
        return (s, torch.randn(*shape, dtype=dtype)) if kind == "lstm" else s

    cases = {
        "input_3d": (torch.randn(1, B, I, dtype=F64), None),
        "input_0d": (torch.tensor(1.0, dtype=F64), None),
        "input_size": (torch.randn(B, I + 1, dtype=F64), None),
        "hx_batch": (torch.randn(B, I, dtype=F64), state(B + 1, H)),
        "hx_hidden": (torch.randn(B, I, dtype=F64), state(B, H + 1)),
        "hx_rank_for_1d_input": (torch.randn(I, dtype=F64), state(1, H)),
        "hx_rank_for_2d_input": (torch.randn(B, I, dtype=F64), state(H)),
        "input_dtype": (torch.randn(B, I, dtype=F32), None),
        "hx_dtype": (torch.randn(B, I, dtype=F64), state(B, H, dtype=F32)),
        # two faults: torch.nn reports the size first (test_cell_error_order_like_torchnn)
        "input_size_and_dtype": (torch.randn(B, I + 1, dtype=F32), None),
        "hx_batch_and_input_dtype": (torch.randn(B, I, dtype=F32), state(B + 1, H)),
        "hx_hidden_and_dtype": (torch.randn(B, I, dtype=F64), state(B, H + 1, dtype=F32)),
    }
    if kind == "lstm":  # torch.nn: RuntimeError "lstm_cell expects two hidden states"
        h = torch.randn(B, H, dtype=F64)
        cases["hx_one_state"] = (torch.randn(B, I, dtype=F64), (h,))
        cases["hx_three_states"] = (torch.randn(B, I, dtype=F64), (h, h, h))
        # unbatched: torch.nn indexes hx[1] (IndexError); a None state: AttributeError
        cases["hx_one_state_unbatched"] = (torch.randn(I, dtype=F64), (h[0],))
        cases["hx_none_state"] = (torch.randn(B, I, dtype=F64), (h, None))
    return cases


CELL_BAD_CASES = [(n, c) for n in CELLS for c in _cell_bad_inputs(kind_of(n))]


@pytest.mark.parametrize("name, case", CELL_BAD_CASES,
                         ids=[f"{n}-{c}" for n, c in CELL_BAD_CASES])
def test_cell_bad_input_like_torchnn(name, case):
    ours, theirs = make_pair(name)
    x, hx = _cell_bad_inputs(kind_of(name))[case]
    assert_raises_like(lambda: ours(x, hx), lambda: theirs(x, hx))


def _outcome(fn):
    """(exception type, first line of its message), or (None, None) if fn returns."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - what is raised is what is compared
        return type(e), str(e).split("\n")[0]
    return None, None


# torch.nn's own cell checks (its Python forward and its cell kernels); other torch.nn
# errors come from its arithmetic (e.g. an unbatched input with a state [H, H] when B == H)
# and only their type is compared.
CELL_CHECK_MESSAGE = re.compile(r"(input has inconsistent|Input batch size|hidden\d has "
                                r"inconsistent|lstm_cell expects|(LSTM|GRU)Cell: Expected|"
                                r"Dimension out of range)")


def _cell_grid(kind):
    """(input, hx) for every mix of faults: input rank 0-3, width, dtype; each state None
    or rank 1-3, batch, width, dtype (for the LSTM the cell state c over a subset)."""
    def tensor(rank, batch, width, dtype):
        return torch.randn({0: (), 1: (width,), 2: (batch, width),
                            3: (1, batch, width)}[rank], dtype=dtype)

    inputs = [tensor(r, B, w, d) for r in (0, 1, 2, 3) for w in (I, I + 1) for d in (F64, F32)]
    states = [tensor(r, b, w, d) for r in (1, 2, 3) for b in (B, B + 1) for w in (H, H + 1)
              for d in (F64, F32)]
    if kind == "gru":
        hxs = [None] + states
    else:
        cs = [tensor(2, B, H, F64), tensor(3, B, H, F64), tensor(2, B + 1, H, F64),
              tensor(2, B, H + 1, F64), tensor(2, B, H, F32), tensor(1, B, H, F64)]
        hxs = [None] + [(h, c) for h in states for c in cs]
    return [(x, hx) for x in inputs for hx in hxs]


@pytest.mark.parametrize("name", CELLS)
def test_cell_error_order_like_torchnn(name):
    """Over every mix of faults in input and states, the cells raise where torch.nn raises,
    the same exception type and, for the rank and size checks, the same message: the first
    fault torch.nn reports is the one reported (sizes before dtypes). torch.nn finds a dtype
    mismatch in a matrix product ("mat1 and mat2 must have the same dtype"); fusedrnn names
    the argument instead. Where torch.nn's checks pass and its arithmetic fails, only the
    type is compared. Two differences, on purpose (docs/design.md § 7): torch.nn
    type-promotes an LSTM cell state c of another dtype, and broadcasts an unbatched LSTM's
    2-D cell state [H, H] into a 3-D result (when B == H); fusedrnn rejects both."""
    ours, theirs = make_pair(name)
    mismatches = []
    for x, hx in _cell_grid(kind_of(name)):
        expected = _outcome(lambda: theirs(x, hx))
        got = _outcome(lambda: ours(x, hx))
        if expected[0] is None:
            promoted = isinstance(hx, tuple) and hx[1].dtype != x.dtype
            # torch.nn broadcasts an unbatched LSTM's 2-D c [H, H] (B == H) into a 3-D
            # result; fusedrnn rejects it
            mixed = isinstance(hx, tuple) and hx[1].dim() != x.dim()
            if got[0] is not None and not ((promoted or mixed) and "hx[1]" in got[1]):
                mismatches.append((x.shape, x.dtype, hx, "raised", got))
            continue
        if got[0] is None or not issubclass(got[0], expected[0]):
            mismatches.append((x.shape, x.dtype, hx, expected, got))
        elif "must have the same dtype" in expected[1]:
            if "dtype" not in got[1]:
                mismatches.append((x.shape, x.dtype, hx, expected, got))
        elif CELL_CHECK_MESSAGE.match(expected[1]) and got[1] != expected[1]:
            mismatches.append((x.shape, x.dtype, hx, expected, got))
    assert not mismatches, f"{len(mismatches)} cases differ, first: {mismatches[0]}"


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


# ---------------------------------------------------------------------------------------
# 5. Errors: the same exception types as torch.nn
# ---------------------------------------------------------------------------------------

CTOR_ERRORS = [
    ("LSTM", (I, H), dict(dropout=-0.1)),
    ("LSTM", (I, H), dict(dropout=1.5)),
    ("GRU", (I, H), dict(dropout=2)),
    ("LSTM", (I, H), dict(dropout=True)),
    ("GRU", (I, H), dict(dropout="x")),
    ("LSTM", (I, 4.0), {}),
    ("GRU", (3.0, H), {}),
    ("LSTM", (0, H), {}),
    ("GRU", (I, 0), {}),
    ("LSTM", (I, -2), {}),
    ("GRU", (I, H), dict(num_layers=0)),
    ("LSTM", (I, H), dict(num_layers=2.0)),
    ("LSTM", (I, H), dict(proj_size=-1)),
    ("LSTM", (I, H), dict(proj_size=H)),
    ("LSTM", (I, H), dict(proj_size=H + 1)),
    ("LSTM", (I, H), dict(proj_size=2.0)),
    ("GRU", (I, H), dict(proj_size=2)),
    ("GRU", (I, H), dict(proj_size=0)),
]


@pytest.mark.parametrize("name, args, kwargs", CTOR_ERRORS,
                         ids=[f"{n}-{a}-{k}" for n, a, k in CTOR_ERRORS])
def test_constructor_errors_like_torchnn(name, args, kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_raises_like(lambda: fused(name)(*args, **kwargs),
                           lambda: NN[name](*args, **kwargs))


def _seq_bad_inputs(kind, proj):
    """name -> (input, hx) for a 2-layer bidirectional module (I, H[, P]), float64."""
    L, D, R = 2, 2, proj or H

    def state(h_shape, c_shape=None, dtype=F64):
        h = torch.randn(*h_shape, dtype=dtype)
        if kind == "lstm":
            return h, torch.randn(*(c_shape or h_shape[:-1] + (H,)), dtype=dtype)
        return h

    x = torch.randn(T, B, I, dtype=F64)
    packed = pack_padded_sequence(x, LENGTHS_UNSORTED, enforce_sorted=False)
    cases = {
        "input_1d": (torch.randn(I, dtype=F64), None),
        "input_4d": (x[None], None),
        "input_size": (torch.randn(T, B, I + 1, dtype=F64), None),
        "input_size_unbatched": (torch.randn(T, I + 1, dtype=F64), None),
        "input_dtype": (x.float(), None),
        "zero_steps": (x[:0], None),
        "hx_batch": (x, state((L * D, B + 1, R))),
        "hx_layers": (x, state((L * D - 1, B, R))),
        "hx_hidden": (x, state((L * D, B, R + 1))),
        "hx_2d_for_batched": (x, state((L * D, R))),
        "hx_3d_for_unbatched": (x[:, 0], state((L * D, 1, R))),
        "hx_dtype": (x, state((L * D, B, R), dtype=F32)),
        "packed_hx_batch": (packed, state((L * D, B - 1, R))),
        "packed_input_size": (pack_padded_sequence(torch.randn(T, B, I + 1, dtype=F64),
                                                   LENGTHS_UNSORTED, enforce_sorted=False),
                              None),
    }
    if kind == "lstm":
        cases["cx_hidden"] = (x, state((L * D, B, R), (L * D, B, H + 1)))
        cases["cx_batch"] = (x, state((L * D, B, R), (L * D, B + 1, H)))
        # torch.nn: RuntimeError "lstm expects two hidden states"
        cases["hx_three_states"] = (x, state((L * D, B, R)) + (torch.randn(L * D, B, H,
                                                                          dtype=F64),))
        if proj:
            cases["h_is_hidden_not_proj"] = (x, state((L * D, B, H)))
    return cases


SEQ_BAD_CASES = [(v, c) for v in VARIANTS
                 for c in _seq_bad_inputs(kind_of(VARIANTS[v][0]), VARIANTS[v][1])]


@pytest.mark.parametrize("variant, case", SEQ_BAD_CASES,
                         ids=[f"{v}-{c}" for v, c in SEQ_BAD_CASES])
def test_bad_forward_input_like_torchnn(variant, case):
    name, proj = VARIANTS[variant]
    ours, theirs = variant_pair(variant, num_layers=2, bidirectional=True)
    x, hx = _seq_bad_inputs(kind_of(name), proj)[case]
    assert_raises_like(lambda: ours(x, hx), lambda: theirs(x, hx))


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


# ---------------------------------------------------------------------------------------
# 6. Module plumbing: init, state_dict, all_weights, copies, dtype moves, repr
# ---------------------------------------------------------------------------------------

STACK_CONFIGS = {
    "lstm_2l_bi_proj": ("LSTM", dict(num_layers=2, bidirectional=True, proj_size=P)),
    "gru_2l_bi": ("GRU", dict(num_layers=2, bidirectional=True)),
    "lstm_2l_nobias": ("LSTM", dict(num_layers=2, bias=False)),
    "gru_3l_bf_dropout": ("GRU", dict(num_layers=3, batch_first=True, dropout=0.25)),
}


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


def _roundtrip(module, how, tmp_path):
    if how == "pickle":
        return pickle.loads(pickle.dumps(module))
    if how == "deepcopy":
        return copy.deepcopy(module)
    path = tmp_path / "module.pt"
    torch.save(module, path)
    return torch.load(path, weights_only=False)


CLIP_CONFIGS = {
    "lstm": ("LSTM", dict(num_layers=2, bidirectional=True, proj_size=P),
             dict(grad_clip=0.03, grad_clip_mode="norm", truncate=2, cell_clip=0.5)),
    "gru": ("GRU", dict(num_layers=2, bidirectional=True),
            dict(grad_clip=0.02, truncate=3)),
}


@pytest.mark.parametrize("how", ["pickle", "deepcopy", "torch_save"])
@pytest.mark.parametrize("config", list(CLIP_CONFIGS))
def test_copies_compute_the_same(config, how, tmp_path):
    """pickle / deepcopy / torch.save+load keep parameters and options, and compute the
    same outputs and gradients; a deepcopy's parameters are new tensors."""
    name, kwargs, options = CLIP_CONFIGS[config]
    kind = kind_of(name)
    torch.manual_seed(0)
    module = fused(name)(I, H, dtype=F64, **kwargs, **options)
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(3.0)
    copied = _roundtrip(module, how, tmp_path)
    assert type(copied) is type(module)
    for key, value in options.items():
        assert getattr(copied, key) == value, key
    for (n, p), (n2, q) in zip(module.named_parameters(), copied.named_parameters()):
        assert n == n2 and torch.equal(p, q) and p is not q
    leaves = make_leaves(kind, L=2, D=2, proj=kwargs.get("proj_size", 0))
    compare(copied, module, leaves, builder(kind, lengths=LENGTHS_UNSORTED))
    compare(copied, module, leaves, builder(kind))
    with torch.no_grad():  # independent parameters
        next(copied.parameters()).add_(1.0)
    assert not torch.equal(next(copied.parameters()), next(module.parameters()))


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


# ---------------------------------------------------------------------------------------
# 7. A small model trained with torch.nn and with fusedrnn
# ---------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------
# 8. torch.compile(fullgraph=True)
# ---------------------------------------------------------------------------------------


def test_torch_compile_fullgraph_training_step():
    torch.manual_seed(0)
    lstm = fused("LSTM")(I, H, num_layers=2, bidirectional=True, batch_first=True, dtype=F64,
                         grad_clip=0.05, truncate=2)
    with torch.no_grad():
        for p in lstm.parameters():
            p.mul_(3.0)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(B, T, I, generator=gen, dtype=F64)
    h0 = torch.randn(4, B, H, generator=gen, dtype=F64)
    c0 = torch.randn(4, B, H, generator=gen, dtype=F64)
    target = torch.randn(B, T, 2 * H, generator=gen, dtype=F64)

    def step(x, h0, c0):
        out, (h_n, c_n) = lstm(x, (h0, c0))
        return ((out - target) ** 2).sum() + h_n.sum() + (c_n ** 2).sum()

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    results = []
    for fn in (step, compiled, compiled):  # the second compiled call reuses the graph
        leaves = [t.clone().requires_grad_(True) for t in (x, h0, c0)]
        loss = fn(*leaves)
        params = dict(lstm.named_parameters())
        grads = torch.autograd.grad(loss, leaves + list(params.values()))
        results.append({"loss": loss.detach(),
                        **{n: g for n, g in zip(["x", "h0", "c0", *params], grads)}})
    assert_tight(results[1], results[0])
    assert_tight(results[2], results[0])
    # clipping is active in the compiled step too
    plain = nn.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=True, dtype=F64)
    plain.load_state_dict(lstm.state_dict())
    out, (h_n, c_n) = plain(x, (h0, c0))
    loss = ((out - target) ** 2).sum() + h_n.sum() + (c_n ** 2).sum()
    (g,) = torch.autograd.grad(loss, plain.weight_hh_l0)
    assert max_abs_err(g, results[1]["weight_hh_l0"]) > 1e-6
