"""fusedrnn.ops (the compiled single-layer ops) against torch.nn and fusedrnn.reference.

float64 results are compared tightly; float32 results follow docs/design.md §4: the error against a
float64 reference is at most 2x the error of the plain-PyTorch counterpart in float32
(torch.nn without options, fusedrnn.reference with clipping/truncation), plus a small floor.

Shape letters: T steps, B batch, I input, H hidden, P projection, R = P or H.
"""

import re

import pytest
import torch

import fusedrnn.ops as ops
from fusedrnn import reference
from helpers import (
    FLOOR32,
    GATES,
    OUTPUTS,
    POSITIONAL,
    REFERENCE,
    TORCHNN,
    assert_close_by_reference,
    assert_tight,
    call_layer,
    cast,
    forward_backward,
    make_tensors,
    max_diff,
    upstream_grads,
)

OPS = {"lstm": ops.lstm_layer, "gru": ops.gru_layer}
F32, F64 = torch.float32, torch.float64


# ---------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------


class Case:
    """One configuration: shapes, flags, lengths, memory layout."""

    def __init__(self, kind, T, B, I, H, P=0, *, bias=True, h0=True, reverse=False,
                 lengths=None, layout=None, weight_scale=1.0, input_scale=1.0):
        self.kind, self.T, self.B, self.I, self.H, self.P = kind, T, B, I, H, P
        self.bias, self.h0, self.reverse, self.lengths, self.layout = (bias, h0, reverse,
                                                                       lengths, layout)
        self.weight_scale, self.input_scale = weight_scale, input_scale

    def tensors(self, dtype):
        return make_tensors(self.kind, self.T, self.B, self.I, self.H, self.P, bias=self.bias,
                            h0=self.h0, dtype=dtype, weight_scale=self.weight_scale,
                            input_scale=self.input_scale)

    def kwargs(self):
        lengths = None if self.lengths is None else torch.tensor(self.lengths)
        return dict(reverse=self.reverse, lengths=lengths, layout=self.layout)

    def run(self, fn, dtype=F64, tensors=None, **options):
        tensors = self.tensors(dtype) if tensors is None else tensors
        return forward_backward(fn, self.kind, tensors, **self.kwargs(), **options)

    def __repr__(self):
        parts = [f"{self.kind}", f"T{self.T}B{self.B}I{self.I}H{self.H}"]
        parts += [f"P{self.P}"] if self.P else []
        parts += [] if self.bias else ["no_bias"]
        parts += [] if self.h0 else ["no_h0"]
        parts += ["reverse"] if self.reverse else []
        parts += [f"len{''.join(map(str, self.lengths))}"] if self.lengths else []
        parts += [self.layout] if self.layout else []
        return "-".join(parts)


SHAPES = [(1, 1, 1, 1), (1, 3, 5, 4), (4, 1, 3, 1), (3, 2, 7, 129), (5, 3, 1, 2), (6, 4, 5, 16)]
VARIANTS = [("lstm", False), ("lstm", True), ("gru", False)]


def _base_cases():
    cases = []
    for kind, proj in VARIANTS:
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
    for kind, proj in VARIANTS:
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


# ---------------------------------------------------------------------------------------
# Against torch.nn and the reference, without options
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", BASE_CASES, ids=repr)
def test_float64_matches_torchnn(case):
    assert_tight(case.run(OPS[case.kind]), case.run(TORCHNN[case.kind]))


@pytest.mark.parametrize("case", BASE_CASES, ids=repr)
def test_float64_matches_reference(case):
    assert_tight(case.run(OPS[case.kind]), case.run(REFERENCE[case.kind]))


@pytest.mark.parametrize("case", BASE_CASES, ids=repr)
def test_float32_precision_like_torchnn(case):
    tensors = case.tensors(F32)
    ours = case.run(OPS[case.kind], tensors=tensors)
    assert all(v.dtype == F32 for v in ours.values())
    theirs = case.run(TORCHNN[case.kind], tensors=tensors)
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


# ---------------------------------------------------------------------------------------
# Clipping, truncation, cell_clip: against the reference
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case, name", OPTION_CASES)
def test_options_float64_match_reference(case, name):
    options = OPTIONS[name]
    ours = case.run(OPS[case.kind], **options)
    assert_tight(ours, case.run(REFERENCE[case.kind], **options))
    plain = case.run(OPS[case.kind])
    if name in INACTIVE:
        assert_tight(ours, plain)
    else:  # the option is active: the test cannot pass vacuously
        assert max_diff(ours, plain) > 1e-3
    if "cell_clip" not in options:  # clipping and truncation leave the forward unchanged
        for out in OUTPUTS[case.kind]:
            assert_tight(ours[out], plain[out])


@pytest.mark.parametrize("case, name", OPTION_CASES)
def test_options_float32_precision_like_reference(case, name):
    options = OPTIONS[name]
    tensors = case.tensors(F32)
    ours = case.run(OPS[case.kind], tensors=tensors, **options)
    theirs = case.run(REFERENCE[case.kind], tensors=tensors, **options)
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
def test_clip_bounds_h0_gradient(kind, mode):
    """h0 (c0) only feeds processed step 0, through the clip: its gradient is bounded."""
    v = 0.01
    case = Case(kind, 5, 3, 4, 6, weight_scale=3.0)
    result = case.run(OPS[kind], grad_clip=v, grad_clip_mode=mode)
    for name in ("grad_h0", "grad_c0"):
        if name in result:
            g = result[name]
            bound = g.abs().amax(dim=1) if mode == "value" else g.norm(dim=1)
            assert (bound <= v * (1 + 1e-12)).all()
            assert (bound > v / 2).any()


# ---------------------------------------------------------------------------------------
# Autograd details
# ---------------------------------------------------------------------------------------

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
def test_gradcheck(kind, name, flags):
    options = dict(GRADCHECK_OPTIONS[name])
    flags = GRADCHECK_FLAGS[flags]
    T = 4
    if "lengths" in options:
        options["lengths"] = torch.tensor(options["lengths"])
        T = int(options["lengths"].max())
    tensors = make_tensors(kind, T, 2, 3, 3, flags["P"], bias=flags["bias"], h0=flags["h0"],
                           input_scale=2.0)
    names = list(tensors)
    leaves = [tensors[n].clone().requires_grad_(True) for n in names]

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


@pytest.fixture
def threads():
    """Set torch's intra-op thread count for one test (conftest runs single-threaded)."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_multithreaded_matches_single_threaded(kind, threads):
    """A batch large enough for parallel loops gives the same result on 4 threads as on 1."""
    lengths = torch.randint(1, 9, (64,), generator=torch.Generator().manual_seed(3)).tolist()
    case = Case(kind, 8, 64, 16, 48, 24 if kind == "lstm" else 0, lengths=lengths,
                weight_scale=3.0)
    options = dict(grad_clip=0.05, grad_clip_mode="norm", truncate=3)
    threads(1)
    single = case.run(OPS[kind], **options)
    threads(4)
    multi = case.run(OPS[kind], **options)
    assert_tight(multi, single)
    assert_tight(multi, case.run(REFERENCE[kind], **options))


def test_nothing_requires_grad():
    tensors = make_tensors("lstm", 3, 2, 3, 4)
    out = call_layer(ops.lstm_layer, "lstm", tensors, grad_clip=0.1)
    assert not any(o.requires_grad for o in out)


# ---------------------------------------------------------------------------------------
# torch.library: registered custom ops, opcheck, torch.compile
# ---------------------------------------------------------------------------------------


def registered_ops():
    """Every overload of every public op in the torch.ops.fusedrnn namespace (the internal
    *_forward / *_backward ops of the autograd formula are opchecked in
    test_reliability_runtime.py, the *_grad ops of double backward, which take the incoming
    gradients too, in test_double_backward.py)."""
    names = sorted({
        full.split("::", 1)[1].split(".", 1)[0]
        for full in torch._C._dispatch_get_all_op_names() if full.startswith("fusedrnn::")
    })
    overloads = []
    for name in names:
        if name.endswith(("_forward", "_backward", "_grad")):
            continue
        packet = getattr(torch.ops.fusedrnn, name)
        overloads += [getattr(packet, o) for o in packet.overloads()]
    return overloads


REGISTERED = registered_ops()

# Schema argument name -> sample key, for names other than the ops.py argument names.
ALIASES = {"x": "input", "w_ih": "weight_ih", "w_hh": "weight_hh", "b_ih": "bias_ih",
           "b_hh": "bias_hh", "hx": "h0", "cx": "c0", "w_hr": "weight_hr"}


def op_samples(kind):
    """A few sample argument dicts (by ops.py argument name) for opcheck."""
    P = 2 if kind == "lstm" else 0
    plain = make_tensors(kind, 4, 3, 3, 4, P)
    plain = {n: t.requires_grad_(True) for n, t in plain.items()}
    plain.update(lengths=None, reverse=False, grad_clip=None, grad_clip_mode="value",
                 truncate=None)
    if kind == "lstm":
        plain["cell_clip"] = None
    options = dict(make_tensors(kind, 5, 3, 2, 3, bias=False))
    options.update(lengths=torch.tensor([5, 1, 3]), reverse=True, grad_clip=0.1,
                   grad_clip_mode="norm", truncate=2)
    if kind == "lstm":
        options["cell_clip"] = 0.5
    with_grad = {n: (t.clone().requires_grad_(True) if t.is_floating_point() else t)
                 if isinstance(t, torch.Tensor) else t for n, t in options.items()}
    no_grad32 = {n: t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                 for n, t in options.items()}
    return [plain, with_grad, no_grad32]


def schema_call(op, sample):
    """(args, kwargs) for op from a sample dict, matched by schema argument name."""
    args, kwargs, positional = [], {}, True
    for arg in op._schema.arguments:
        key = ALIASES.get(arg.name, arg.name)
        if key in sample:
            value = sample[key]
        elif arg.has_default_value():
            positional = False  # later arguments must go by keyword
            continue
        elif isinstance(arg.type, torch._C.OptionalType):
            value = None
        else:
            pytest.fail(f"opcheck helper: no sample for argument {arg.name!r} of {op} "
                        f"({op._schema}); extend op_samples/ALIASES")
        if positional and not arg.kwarg_only:
            args.append(value)
        else:
            positional = False
            kwargs[arg.name] = value
    return tuple(args), kwargs


def test_custom_ops_are_registered():
    names = [str(op) for op in REGISTERED]
    assert any("lstm" in n for n in names), names
    assert any("gru" in n for n in names), names


@pytest.mark.parametrize("op", REGISTERED, ids=str)
def test_opcheck(op):
    kind = "lstm" if "lstm" in str(op) else "gru"
    for sample in op_samples(kind):
        args, kwargs = schema_call(op, sample)
        torch.library.opcheck(op, args, kwargs)


def _training_step(x, lstm_weights, gru_weights, lengths):
    """A tiny two-layer model (LSTM then reverse GRU) with every option; returns the loss."""
    out, h, c = ops.lstm_layer(x, *lstm_weights, lengths=lengths, grad_clip=0.05,
                               truncate=2, cell_clip=0.5)
    out2, h2 = ops.gru_layer(out, *gru_weights, reverse=True, lengths=lengths, grad_clip=0.1,
                             grad_clip_mode="norm", truncate=3)
    return (out2 ** 2).sum() + h.sum() + (c ** 2).sum() + h2.sum()


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph_training_step(backend):
    lstm = make_tensors("lstm", 6, 3, 4, 5, weight_scale=3.0, h0=True)
    gru = make_tensors("gru", 6, 3, 5, 4, weight_scale=3.0, h0=False, seed=7)
    lstm_weights = [lstm[n] for n in POSITIONAL["lstm"][1:]]
    gru_weights = [gru[n] for n in POSITIONAL["gru"][1:-1]]
    lengths = torch.tensor([6, 2, 4])
    torch._dynamo.reset()
    compiled = torch.compile(_training_step, fullgraph=True, backend=backend)

    results = []
    for fn in (_training_step, compiled):
        x = lstm["input"].clone().requires_grad_(True)
        lw = [w.clone().requires_grad_(True) for w in lstm_weights]
        gw = [w.clone().requires_grad_(True) for w in gru_weights]
        loss = fn(x, lw, gw, lengths)
        grads = torch.autograd.grad(loss, [x, *lw, *gw])
        results.append({"loss": loss.detach(), **{f"grad{i}": g for i, g in enumerate(grads)}})
    assert_tight(results[1], results[0])


# ---------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------

SHAPE_ERRORS = (RuntimeError, ValueError)
DTYPE_ERRORS = (RuntimeError, TypeError, ValueError)


def _bad(kind, **changes):
    """Valid arguments (T=4, B=3, I=5, H=6, P=0) with some entries replaced."""
    tensors = make_tensors(kind, 4, 3, 5, 6)
    kwargs = {}
    for name, value in changes.items():
        if name in tensors:
            tensors[name] = value
        else:
            kwargs[name] = value
    return tensors, kwargs


def _bad_input_cases():
    cases = []
    for kind in ("lstm", "gru"):
        g = GATES[kind]
        t = make_tensors(kind, 4, 3, 5, 6)
        cases += [
            (kind, "input_rank_2", dict(input=t["input"][0]), SHAPE_ERRORS, "input"),
            (kind, "input_rank_4", dict(input=t["input"][None]), SHAPE_ERRORS, "input"),
            (kind, "T_zero", dict(input=t["input"][:0]), SHAPE_ERRORS, "input"),
            (kind, "weight_ih_cols", dict(weight_ih=torch.randn(g * 6, 4, dtype=F64)),
             SHAPE_ERRORS, "weight_ih"),
            (kind, "weight_ih_rows", dict(weight_ih=torch.randn(g * 6 + 1, 5, dtype=F64)),
             SHAPE_ERRORS, "weight_ih"),
            (kind, "weight_hh_shape", dict(weight_hh=torch.randn(g * 6, 5, dtype=F64)),
             SHAPE_ERRORS, "weight_hh"),
            (kind, "weight_hh_rank", dict(weight_hh=torch.randn(g * 6 * 6, dtype=F64)),
             SHAPE_ERRORS, "weight_hh"),
            (kind, "bias_ih_size", dict(bias_ih=torch.randn(g * 6 + 2, dtype=F64)),
             SHAPE_ERRORS, "bias_ih"),
            (kind, "bias_hh_size", dict(bias_hh=torch.randn(6, dtype=F64)),
             SHAPE_ERRORS, "bias_hh"),
            (kind, "h0_hidden", dict(h0=torch.randn(3, 5, dtype=F64)), SHAPE_ERRORS, "h0"),
            (kind, "h0_batch", dict(h0=torch.randn(2, 6, dtype=F64)), SHAPE_ERRORS, "h0"),
            (kind, "h0_rank", dict(h0=torch.randn(1, 3, 6, dtype=F64)), SHAPE_ERRORS, "h0"),
            (kind, "dtype_input32_weights64", dict(input=t["input"].float()),
             DTYPE_ERRORS, "input|weight_ih"),
            (kind, "dtype_h0", dict(h0=t["h0"].float()), DTYPE_ERRORS, "h0"),
            (kind, "dtype_bias", dict(bias_hh=t["bias_hh"].float()), DTYPE_ERRORS, "bias_hh"),
            (kind, "integer_input", dict(input=torch.ones(4, 3, 5, dtype=torch.int64),
                                         weight_ih=t["weight_ih"]), DTYPE_ERRORS, "input"),
            (kind, "lengths_zero", dict(lengths=torch.tensor([4, 0, 2])), SHAPE_ERRORS,
             "lengths"),
            (kind, "lengths_above_T", dict(lengths=torch.tensor([4, 5, 2])), SHAPE_ERRORS,
             "lengths"),
            (kind, "lengths_negative", dict(lengths=torch.tensor([4, -1, 2])), SHAPE_ERRORS,
             "lengths"),
            (kind, "lengths_size", dict(lengths=torch.tensor([4, 2])), SHAPE_ERRORS,
             "lengths"),
            (kind, "lengths_rank", dict(lengths=torch.tensor([[4, 2, 1]])), SHAPE_ERRORS,
             "lengths"),
            (kind, "lengths_float", dict(lengths=torch.tensor([4.0, 2.0, 1.0])),
             DTYPE_ERRORS, "lengths"),
            (kind, "grad_clip_negative", dict(grad_clip=-1.0), (ValueError,), "grad_clip"),
            (kind, "grad_clip_zero", dict(grad_clip=0.0), (ValueError,), "grad_clip"),
            (kind, "grad_clip_nan", dict(grad_clip=float("nan")), (ValueError,), "grad_clip"),
            (kind, "grad_clip_inf", dict(grad_clip=float("inf")), (ValueError,), "grad_clip"),
            (kind, "grad_clip_bool", dict(grad_clip=True), (TypeError,), "grad_clip"),
            (kind, "grad_clip_str", dict(grad_clip="0.5"), (TypeError,), "grad_clip"),
            (kind, "grad_clip_mode", dict(grad_clip=1.0, grad_clip_mode="l2"), (ValueError,),
             "grad_clip_mode"),
            (kind, "grad_clip_mode_alone", dict(grad_clip_mode="max"), (ValueError,),
             "grad_clip_mode"),
            (kind, "truncate_zero", dict(truncate=0), (ValueError,), "truncate"),
            (kind, "truncate_negative", dict(truncate=-2), (ValueError,), "truncate"),
            (kind, "truncate_float", dict(truncate=2.0), (TypeError,), "truncate"),
            (kind, "truncate_bool", dict(truncate=True), (TypeError,), "truncate"),
        ]
        if kind == "lstm":
            cases += [
                (kind, "c0_shape", dict(c0=torch.randn(3, 5, dtype=F64)), SHAPE_ERRORS, "c0"),
                (kind, "weight_hr_shape", dict(weight_hr=torch.randn(3, 5, dtype=F64)),
                 SHAPE_ERRORS, "weight_hr|weight_hh"),
                (kind, "cell_clip_negative", dict(cell_clip=-0.5), (ValueError,), "cell_clip"),
                (kind, "cell_clip_inf", dict(cell_clip=float("inf")), (ValueError,),
                 "cell_clip"),
                (kind, "cell_clip_bool", dict(cell_clip=True), (TypeError,), "cell_clip"),
                (kind, "cell_clip_str", dict(cell_clip="1"), (TypeError,), "cell_clip"),
            ]
        else:
            cases.append((kind, "gru_has_no_cell_clip", dict(cell_clip=1.0), (TypeError,),
                          "cell_clip"))
    return [pytest.param(*c, id=f"{c[0]}-{c[1]}") for c in cases]


@pytest.mark.parametrize("kind, name, changes, errors, match", _bad_input_cases())
def test_bad_input_raises(kind, name, changes, errors, match):
    tensors, kwargs = _bad(kind, **changes)
    with pytest.raises(errors, match=match) as info:
        call_layer(OPS[kind], kind, tensors, **kwargs)
    if name.startswith("dtype") or name == "integer_input":
        assert re.search(r"dtype|[Ff]loat|[Dd]ouble|[Ll]ong|[Ii]nt", str(info.value))
    # The same call with the offending entry fixed works (the test is about that entry).
    good, good_kwargs = _bad(kind)
    call_layer(OPS[kind], kind, good, **good_kwargs)


def test_check_options_is_shared_with_reference():
    """ops validates options with the same function (same messages) as the reference."""
    tensors = make_tensors("gru", 3, 2, 3, 4)
    for options in (dict(grad_clip=-1.0), dict(truncate=2.5), dict(grad_clip_mode="x")):
        with pytest.raises((TypeError, ValueError)) as ours:
            call_layer(ops.gru_layer, "gru", tensors, **options)
        with pytest.raises(type(ours.value)) as ref:
            call_layer(reference.gru_layer, "gru", tensors, **options)
        assert str(ours.value) == str(ref.value)
