"""Gradient clipping (value / norm), truncated BPTT and cell_clip against fusedrnn.reference:

* the ops, float64 tightly and float32 by the 2x rule, every option on its own and combined,
  active (the result differs from the plain gradient) or inactive (it does not), with
  non-contiguous inputs, the bound on h0's gradient; these take the ``device`` fixture;
* the modules: options forwarded to the ops, a 2-layer bidirectional stack against
  helpers.reference_stack, option attributes;
* property-based (hypothesis, derandomized): the modules against helpers.ReferenceRNN over
  random shapes and options, float64.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

from helpers import (
    Case,
    F32,
    F64,
    FLOOR32,
    FUSED,
    H,
    I,
    KINDS,
    OPS,
    OP_VARIANTS,
    OUTPUTS,
    REFERENCE,
    ReferenceRNN,
    VARIANTS,
    assert_close_by_reference,
    assert_same_packing,
    assert_tight,
    builder,
    cast,
    compare,
    fused,
    kind_of,
    make_layer_input,
    make_layer_pair,
    make_leaves,
    make_pair,
    max_abs_err,
    max_diff,
    module_forward_backward,
    run_layer_module,
    run_module,
)


pytestmark = pytest.mark.filterwarnings(
    "ignore:LSTM with projections is not supported with oneDNN:UserWarning")


# Options that change the backward pass (clipping, truncation) or the forward (cell_clip).
# T = 6 below: truncate 2 and 3 divide T, 4 does not, 7 > T (inactive).
OPTIONS = {
    "value": dict(grad_clip=0.05),
    "norm": dict(grad_clip=0.1, grad_clip_mode="norm"),
    "trunc1": dict(truncate=1),
    "trunc2": dict(truncate=2),
    "trunc4": dict(truncate=4),
    "trunc7": dict(truncate=7),
    "cell_clip": dict(cell_clip=0.3),
    "value_trunc3": dict(grad_clip=0.05, truncate=3),
    "norm_trunc4": dict(grad_clip=0.1, grad_clip_mode="norm", truncate=4),
    "value_cell_trunc2": dict(grad_clip=0.05, cell_clip=0.3, truncate=2),
    "norm_cell_trunc1": dict(grad_clip=0.1, grad_clip_mode="norm", cell_clip=0.3, truncate=1),
    "norm_value_huge": dict(grad_clip=1e30, grad_clip_mode="norm"),
}


INACTIVE = {"trunc7", "norm_value_huge"}  # must equal the plain gradient instead


def _option_cases():
    cases = []
    for kind, proj in OP_VARIANTS:
        for name, options in OPTIONS.items():
            if kind == "gru" and "cell_clip" in options:
                continue
            for reverse in (False, True):
                for lengths in (None, [3, 6, 1, 5]):
                    case = Case(kind, 6, 4, 3, 5, 2 if proj else 0, reverse=reverse,
                                lengths=lengths, weight_scale=3.0, input_scale=2.0)
                    cases.append(pytest.param(case, name, id=f"{case!r}-{name}"))
    return cases


OPTION_CASES = _option_cases()


@pytest.mark.parametrize("case, name", OPTION_CASES)
def test_options_float64_match_reference(case, name, device):
    options = OPTIONS[name]
    ours = case.run(OPS[case.kind], device=device, **options)
    assert_tight(ours, case.run(REFERENCE[case.kind], **options))
    plain = case.run(OPS[case.kind], device=device)
    if name in INACTIVE:
        assert_tight(ours, plain)
    else:  # the option is active: the test cannot pass vacuously
        assert max_diff(ours, plain) > 1e-3
    if "cell_clip" not in options:  # clipping and truncation leave the forward unchanged
        for out in OUTPUTS[case.kind]:
            assert_tight(ours[out], plain[out])


@pytest.mark.parametrize("case, name", OPTION_CASES)
def test_options_float32_precision_like_reference(case, name, device):
    options = OPTIONS[name]
    tensors = case.tensors(F32)
    ours = case.run(OPS[case.kind], tensors=tensors, device=device, **options)
    theirs = case.run(REFERENCE[case.kind], tensors=tensors, device=device, **options)
    ref64 = case.run(REFERENCE[case.kind], tensors=cast(tensors, F64), **options)
    assert_close_by_reference(ours, theirs, ref64, FLOOR32)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("layout", ["slice", "batch_first"])
def test_options_with_noncontiguous_inputs(kind, layout):
    case = Case(kind, 5, 3, 4, 3, lengths=[5, 2, 4], layout=layout, weight_scale=3.0)
    options = dict(grad_clip=0.05, truncate=2)
    assert_tight(case.run(OPS[kind], **options), case.run(REFERENCE[kind], **options))


@pytest.mark.parametrize("mode", ["value", "norm"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_clip_bounds_h0_gradient(kind, mode, device):
    """h0 (c0) only feeds processed step 0, through the clip: its gradient is bounded."""
    v = 0.01
    case = Case(kind, 5, 3, 4, 6, weight_scale=3.0)
    result = case.run(OPS[kind], grad_clip=v, grad_clip_mode=mode, device=device)
    for name in ("grad_h0", "grad_c0"):
        if name in result:
            g = result[name]
            bound = g.abs().amax(dim=1) if mode == "value" else g.norm(dim=1)
            assert (bound <= v * (1 + 1e-12)).all()
            assert (bound > v / 2).any()


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
    ours, plain = make_layer_pair(kind, batch_first=batch_first, options=options)
    with torch.no_grad():  # large weights: clipping is active
        for p in ours.parameters():
            p.mul_(4.0)
    plain.load_state_dict(ours.state_dict())
    x, hx = make_layer_input(kind, batch_first=batch_first, with_hx=with_hx)
    result = run_layer_module(ours, x, hx)

    class Reference(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for name, p in ours.named_parameters():
                self.register_parameter(name, p)

        def forward(self, x, hx):
            out, states = reference_run(kind, self, x, hx, batch_first, options)
            return out, states if kind == "lstm" else states[0]

    expected = run_layer_module(Reference(), x, hx)
    assert_tight(result, expected)
    assert max_diff(result, run_layer_module(plain, x, hx)) > 1e-3  # the options are active


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


@st.composite
def stack_configs(draw, kind):
    T = draw(st.integers(1, 6))
    B = draw(st.integers(1, 4))
    H = draw(st.integers(1, 5))
    config = dict(
        T=T, B=B, I=draw(st.integers(1, 5)), H=H,
        num_layers=draw(st.integers(1, 2)),
        bidirectional=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bias=draw(st.booleans()),
        with_hx=draw(st.booleans()),
        lengths=draw(st.one_of(st.none(), st.lists(st.integers(1, T), min_size=B,
                                                   max_size=B))),
        proj=draw(st.integers(0, H - 1)) if kind == "lstm" and H > 1 else 0,
        scale=draw(st.sampled_from([1.0, 3.0])),
        seed=draw(st.integers(0, 2**16)),
    )
    options = {}
    mode = draw(st.sampled_from([None, "value", "norm"]))
    if mode is not None:
        options["grad_clip"] = draw(st.floats(0.005, 1.0))
        options["grad_clip_mode"] = mode
    truncate = draw(st.one_of(st.none(), st.integers(1, T + 1)))
    if truncate is not None:
        options["truncate"] = truncate
    if kind == "lstm" and draw(st.booleans()):
        options["cell_clip"] = draw(st.floats(0.05, 2.0))
    config["options"] = options
    return config


def _check_against_reference(kind, c):
    torch.manual_seed(c["seed"])
    extra = dict(proj_size=c["proj"]) if c["proj"] else {}
    module = FUSED[kind](c["I"], c["H"], num_layers=c["num_layers"], bias=c["bias"],
                         batch_first=c["batch_first"], bidirectional=c["bidirectional"],
                         dtype=F64, **extra, **c["options"])
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(c["scale"])
    ref = ReferenceRNN(kind, module, **c["options"])
    gen = torch.Generator().manual_seed(c["seed"] + 1)
    T, B = c["T"], c["B"]
    x = torch.randn(*((B, T) if c["batch_first"] else (T, B)), c["I"], generator=gen,
                    dtype=F64)
    hx = None
    if c["with_hx"]:
        LD = c["num_layers"] * (2 if c["bidirectional"] else 1)
        h = torch.randn(LD, B, c["proj"] or c["H"], generator=gen, dtype=F64)
        hx = (h, torch.randn(LD, B, c["H"], generator=gen, dtype=F64)) if kind == "lstm" else h
    lengths = c["lengths"]
    mine = run_module(module, x, hx, lengths, c["batch_first"])
    expected = run_module(ref, x, hx, lengths, c["batch_first"])
    assert_tight(mine, expected)


PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                             suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(config=stack_configs("lstm"))
def test_property_lstm_matches_reference(config):
    _check_against_reference("lstm", config)


@PROPERTY_SETTINGS
@given(config=stack_configs("gru"))
def test_property_gru_matches_reference(config):
    _check_against_reference("gru", config)
