"""Double backward (second-order gradients) of fusedrnn.ops and the modules.

A create_graph backward through the layer ops computes its gradients differentiably
(csrc/autograd.cpp, Note [Double backward of the layer ops]; kernels in
fusedrnn/_double_backward.py). Checked here:

* float64 gradgradcheck of lstm_layer / gru_layer (bias or not, initial states or not,
  projection, lengths, packed, reverse, cell_clip) and of the four modules;
* second-order values (a gradient penalty d/dθ ||d loss / d x||², a Hessian-vector product)
  equal torch.nn's with the same weights, and with grad_clip / truncate / cell_clip equal
  those of differentiating fusedrnn.reference twice (clipping makes the first backward
  something other than a derivative, so gradgradcheck does not apply there: the reference's
  own autograd defines the semantics, as for the first order);
* packed input means what padded input with lengths means, in the second order too;
* the gradient record is still filled under create_graph; first-order results of a
  create_graph backward agree with the fused backward, and a plain backward still runs the
  fused backward op alone.

Shape letters: T steps, B batch, I input, H hidden, P projection. Sizes are tiny: gradgradcheck
costs one create_graph backward per input element.
"""

import pytest
import torch
from torch.func import functional_call
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import fusedrnn
import fusedrnn.ops as ops
from fusedrnn import reference
from helpers import REFERENCE, ReferenceRNN, assert_tight, call_layer, make_tensors

F64 = torch.float64
OPS = {"lstm": ops.lstm_layer, "gru": ops.gru_layer}
T, B, I, H = 3, 2, 3, 2


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def leaves(tensors):
    return {n: t.detach().clone().requires_grad_(True) for n, t in tensors.items()}


def packed_case(kind, lengths, P=0, bias=True, h0=True, seed=0):
    """(padded tensors, packed tensors, batch_sizes): lengths sorted descending, so the
    packed (sorted) batch order is the padded one."""
    padded = make_tensors(kind, max(lengths), len(lengths), I, H, P, bias=bias, h0=h0,
                          seed=seed)
    lengths = torch.tensor(lengths)
    packed = pack_padded_sequence(padded["input"], lengths)
    return padded, dict(padded, input=packed.data), packed.batch_sizes


def second_order(run, inputs, seed=5, *, linear=False, two_graphs=False):
    """Second-order quantities of loss = sum(u_k * out_k) [+ sum(out_0²)] of run(*inputs):

    "first": d loss / d inputs (from a create_graph backward), "penalty": d/d inputs of
    ||d loss / d inputs[0]||², "hvp": the Hessian of loss times a fixed random vector.
    Unless `linear`, the out_0² term makes the incoming gradients of the first backward
    depend on the outputs, so that the second backward also reaches the first one's
    incoming gradients and, through them, the outputs.

    two_graphs: the first backward differentiates a second run(*inputs), not the one whose
    outputs give its incoming gradients (see test_grad_clip_second_order).
    """
    gen = torch.Generator().manual_seed(seed)

    def randn_like(t):
        return torch.randn(t.shape, generator=gen, dtype=t.dtype)

    inputs = list(inputs)
    outs = run(*inputs)
    weights = [randn_like(o) for o in outs]
    vectors = [randn_like(t) for t in inputs]

    def first_backward(wanted):
        outs = run(*inputs)
        loss = sum((o * w).sum() for o, w in zip(outs, weights))
        if not linear:
            loss = loss + (outs[0] ** 2).sum()
        if not two_graphs:
            return torch.autograd.grad(loss, wanted, create_graph=True, allow_unused=True)
        incoming = torch.autograd.grad(loss, outs, create_graph=True)
        return torch.autograd.grad(run(*inputs), wanted, incoming, create_graph=True,
                                   allow_unused=True)

    (gx,) = first_backward([inputs[0]])
    penalty = torch.autograd.grad((gx ** 2).sum(), inputs, allow_unused=True)
    first = first_backward(inputs)
    dot = sum((g * v).sum() for g, v in zip(first, vectors) if g is not None)
    hvp = torch.autograd.grad(dot, inputs, allow_unused=True)

    result = {}
    for name, gs in (("first", first), ("penalty", penalty), ("hvp", hvp)):
        for i, (g, t) in enumerate(zip(gs, inputs)):
            result[f"{name}{i}"] = torch.zeros_like(t) if g is None else g.detach()
    return result


def op_runner(fn, kind, names, **kwargs):
    """fn (an op or its reference) as a function of the tensors `names`, in that order."""
    def run(*tensors):
        return call_layer(fn, kind, dict(zip(names, tensors)), **kwargs)
    return run


# ---------------------------------------------------------------------------------------
# gradgradcheck of the ops
# ---------------------------------------------------------------------------------------

OP_CASES = [
    ("lstm", dict()),
    ("lstm", dict(bias=False, h0=False)),
    ("lstm", dict(P=1)),
    ("lstm", dict(lengths=[3, 1], reverse=True, cell_clip=0.6)),
    ("lstm", dict(packed=[3, 2], P=1)),
    ("lstm", dict(packed=[3, 1], reverse=True, bias=False)),
    ("gru", dict()),
    ("gru", dict(bias=False, h0=False, reverse=True)),
    ("gru", dict(lengths=[1, 3])),
    ("gru", dict(packed=[3, 1], reverse=True)),
]


def _op_case_id(case):
    kind, cfg = case
    return kind + "".join(f"-{k}{v if v is not True else ''}" for k, v in cfg.items())


@pytest.mark.parametrize("kind, cfg", OP_CASES, ids=map(_op_case_id, OP_CASES))
def test_op_gradgradcheck(kind, cfg):
    cfg = dict(cfg)
    P, bias, h0 = cfg.pop("P", 0), cfg.pop("bias", True), cfg.pop("h0", True)
    kwargs = {}
    if "packed" in cfg:
        _, tensors, kwargs["batch_sizes"] = packed_case(kind, cfg.pop("packed"), P, bias, h0)
    else:
        tensors = make_tensors(kind, T, B, I, H, P, bias=bias, h0=h0)
        if "lengths" in cfg:
            kwargs["lengths"] = torch.tensor(cfg.pop("lengths"))
    kwargs.update(cfg)
    tensors = leaves(tensors)
    run = op_runner(OPS[kind], kind, list(tensors), **kwargs)
    assert torch.autograd.gradgradcheck(run, tuple(tensors.values()))


# ---------------------------------------------------------------------------------------
# Options: second order equals differentiating fusedrnn.reference twice
# ---------------------------------------------------------------------------------------

# Note on grad_clip. Clipping the recurrent gradient is not linear, so where two gradients
# meet at a state matters. Differentiating the reference twice sums, at each state, the
# second-order gradient arriving through the first backward and the one arriving through the
# outputs (when the first backward's incoming gradients depend on the outputs), then clips
# the sum. With the ops, the second reaches the op's forward node, whose backward is the fused
# BPTT, and the first reaches the recompute of the create_graph backward: each is clipped
# separately. That is exactly differentiating the reference with the first backward taken
# through a second copy of the forward (two_graphs=True), and exactly the one-graph reference
# whenever the incoming gradients do not depend on the outputs (a loss linear in them, as a
# critic's score) or without grad_clip (truncation and cell_clip are linear / exact).

OPTIONS = [
    dict(grad_clip=0.05),
    dict(grad_clip=0.2, grad_clip_mode="norm", truncate=2),
    dict(truncate=1),
    dict(truncate=2),
]


def assert_matches_reference(kind, tensors, **kw):
    names = list(tensors)
    ours = op_runner(OPS[kind], kind, names, **kw)
    ref = op_runner(REFERENCE[kind], kind, names, **kw)
    if kw.get("grad_clip") is None:
        assert_tight(second_order(ours, tensors.values()),
                     second_order(ref, tensors.values()))
    else:
        assert_tight(second_order(ours, tensors.values()),
                     second_order(ref, tensors.values(), two_graphs=True))
        assert_tight(second_order(ours, tensors.values(), linear=True),
                     second_order(ref, tensors.values(), linear=True))


@pytest.mark.parametrize("options", OPTIONS + [dict(cell_clip=0.4, truncate=2),
                                               dict(cell_clip=0.4, grad_clip=0.1)], ids=str)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_lstm_options_match_reference(options, reverse):
    tensors = leaves(make_tensors("lstm", 4, 3, I, 3, 2, weight_scale=3.0))
    assert_matches_reference("lstm", tensors, lengths=torch.tensor([4, 1, 3]), reverse=reverse,
                             **options)


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_gru_options_match_reference(options, reverse):
    tensors = leaves(make_tensors("gru", 4, 3, I, 3, weight_scale=3.0))
    assert_matches_reference("gru", tensors, lengths=torch.tensor([2, 4, 3]), reverse=reverse,
                             **options)


def test_grad_clip_second_order_differs_from_one_graph_reference():
    """The case of the note above, pinned down: with an active clip and incoming gradients
    that depend on the outputs, the one-graph reference differs (by the clip's nonlinearity)."""
    tensors = leaves(make_tensors("gru", 4, 3, I, 3, weight_scale=3.0))
    names, kw = list(tensors), dict(grad_clip=0.05)
    ours = second_order(op_runner(ops.gru_layer, "gru", names, **kw), tensors.values())
    ref = second_order(op_runner(reference.gru_layer, "gru", names, **kw), tensors.values())
    assert max((ours[k] - ref[k]).abs().max().item() for k in ours if k.startswith("hvp")) > 1e-3


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_packed_matches_padded_with_lengths(kind, reverse):
    """Packed input in a create_graph backward means what padded input with the same
    lengths means (the packed recompute pads and the reference runs with lengths), with
    truncation counted from each sequence's own start, as the fused packed op does; and its
    first-order gradients are the fused packed backward's."""
    lengths = [4, 3, 1]
    _, packed, batch_sizes = packed_case(kind, lengths, P=2 if kind == "lstm" else 0)
    options = dict(reverse=reverse, truncate=2, grad_clip=0.3, grad_clip_mode="norm")
    packed = leaves(packed)
    names = list(packed)
    run_packed = op_runner(OPS[kind], kind, names, batch_sizes=batch_sizes, **options)
    ours = second_order(run_packed, packed.values())

    # The same computation on padded input with lengths, from and to the packed layout.
    def run_padded(data, *tensors):
        x, _ = pad_packed_sequence(PackedSequence(data, batch_sizes))
        y, *states = call_layer(OPS[kind], kind, dict(zip(names, (x, *tensors))),
                                lengths=torch.tensor(lengths), **options)
        return (pack_padded_sequence(y, torch.tensor(lengths)).data, *states)

    assert_tight(ours, second_order(run_padded, packed.values()))

    # First order: the create_graph backward (reference recompute) = the fused backward.
    outs = run_packed(*packed.values())
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(o.shape, generator=gen, dtype=F64) for o in outs]
    fused = torch.autograd.grad(outs, list(packed.values()), grads)
    recomputed = torch.autograd.grad(run_packed(*packed.values()), list(packed.values()), grads,
                                     create_graph=True)
    for a, b in zip(recomputed, fused):
        assert_tight(a.detach(), b)


# ---------------------------------------------------------------------------------------
# Modules: gradgradcheck, and second-order values equal torch.nn's
# ---------------------------------------------------------------------------------------

NN = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "lstm_cell": torch.nn.LSTMCell,
      "gru_cell": torch.nn.GRUCell}
OURS = {"lstm": fusedrnn.LSTM, "gru": fusedrnn.GRU, "lstm_cell": fusedrnn.LSTMCell,
        "gru_cell": fusedrnn.GRUCell}


def module_pair(kind, size=(I, H), seed=0, options=None, **kwargs):
    torch.manual_seed(seed)
    ours = OURS[kind](*size, dtype=F64, **kwargs, **(options or {}))
    theirs = NN[kind](*size, dtype=F64, **kwargs)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def module_runner(module, kind, lengths=None, batch_first=False, with_state=True, sizes=None):
    """(run, inputs): run(x, *states, *params) -> output tensors of `module` (parameters
    substituted with functional_call), inputs: seeded leaves in that order. Sizes are those
    of the module `sizes` (default: `module`)."""
    gen = torch.Generator().manual_seed(11)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64).requires_grad_(True)

    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for _, p in module.named_parameters()]
    cell = kind.endswith("cell")
    sizes = module if sizes is None else sizes
    H_, I_ = sizes.hidden_size, sizes.input_size
    if cell:
        x, shape = randn(B, I_), (B, H_)
    else:
        L = sizes.num_layers * (2 if sizes.bidirectional else 1)
        x = randn(B, T, I_) if batch_first else randn(T, B, I_)
        R = getattr(sizes, "proj_size", 0) or H_
        shape = (L, B, R)
    states = []
    if with_state:
        states = [randn(*shape)]
        if kind.startswith("lstm"):
            states.append(randn(*shape[:-1], H_))
    n_states = len(states)

    def run(x, *rest):
        hx = None
        if n_states:
            hx = tuple(rest[:n_states]) if kind.startswith("lstm") else rest[0]
        p = dict(zip(names, rest[n_states:]))
        if lengths is not None:
            x = pack_padded_sequence(x, torch.tensor(lengths), batch_first=batch_first,
                                     enforce_sorted=False)
        out = functional_call(module, p, (x, hx))
        if cell:
            return out if isinstance(out, tuple) else (out,)
        y, state = out
        y = y.data if isinstance(y, PackedSequence) else y
        return (y, *state) if isinstance(state, tuple) else (y, state)

    return run, [x, *states, *params]


MODULE_CASES = [
    ("lstm", dict(num_layers=2, bidirectional=True, batch_first=True), None),
    ("lstm", dict(proj_size=1), [3, 1]),
    ("gru", dict(num_layers=2, bidirectional=True), [2, 3]),
    ("gru", dict(bias=False, batch_first=True), None),
    ("lstm_cell", dict(), None),
    ("gru_cell", dict(), None),
]


def _module_case_id(case):
    kind, kwargs, lengths = case
    parts = [kind] + [f"{k}{v}" for k, v in kwargs.items()]
    return "-".join(parts + (["packed"] if lengths else []))


@pytest.mark.parametrize("kind, kwargs, lengths", MODULE_CASES,
                         ids=map(_module_case_id, MODULE_CASES))
def test_module_second_order_matches_torch_nn(kind, kwargs, lengths):
    ours, theirs = module_pair(kind, **kwargs)
    batch_first = kwargs.get("batch_first", False)
    run_ours, inputs = module_runner(ours, kind, lengths, batch_first)
    run_theirs, _ = module_runner(theirs, kind, lengths, batch_first)
    assert_tight(second_order(run_ours, inputs), second_order(run_theirs, inputs))


@pytest.mark.parametrize("kind, kwargs, lengths", [
    ("lstm", dict(num_layers=2, bidirectional=True, batch_first=True), None),
    ("gru", dict(num_layers=2, bidirectional=True), [2, 3]),
    ("lstm", dict(proj_size=1), [3, 1]),
    ("lstm_cell", dict(), None),
    ("gru_cell", dict(), None),
], ids=["lstm-2layer-bidir-batch_first", "gru-2layer-bidir-packed", "lstm-proj-packed",
        "lstm_cell", "gru_cell"])
def test_module_gradgradcheck(kind, kwargs, lengths):
    size = (2, 2) if kwargs.get("num_layers", 1) > 1 else (I, H)
    ours, _ = module_pair(kind, size=size, **kwargs)
    run, inputs = module_runner(ours, kind, lengths, kwargs.get("batch_first", False))
    assert torch.autograd.gradgradcheck(run, tuple(inputs), fast_mode=True)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_module_options_match_reference(kind):
    """A 2-layer bidirectional module with truncation (and cell_clip): second order equals
    that of the same stack of fusedrnn.reference layers. (With grad_clip a stack differs
    from its one-graph reference: a layer's incoming gradients depend on its outputs through
    the next layer; see the note above test_lstm_options_match_reference.)"""
    options = dict(truncate=2)
    if kind == "lstm":
        options["cell_clip"] = 0.5
    ours, _ = module_pair(kind, size=(2, 3), options=options, num_layers=2, bidirectional=True)
    ref = ReferenceRNN(kind, ours, **options)
    run_ours, inputs = module_runner(ours, kind, lengths=[3, 2])
    run_ref, _ = module_runner(ref, kind, lengths=[3, 2], sizes=ours)
    assert_tight(second_order(run_ours, inputs), second_order(run_ref, inputs))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_module_grad_clip_matches_reference(kind):
    """One bidirectional layer with clipping, loss linear in the outputs (a critic)."""
    options = dict(grad_clip=0.05, grad_clip_mode="norm" if kind == "gru" else "value")
    ours, _ = module_pair(kind, options=options, bidirectional=True)
    ref = ReferenceRNN(kind, ours, **options)
    run_ours, inputs = module_runner(ours, kind, lengths=[3, 2])
    run_ref, _ = module_runner(ref, kind, lengths=[3, 2], sizes=ours)
    assert_tight(second_order(run_ours, inputs, linear=True),
                 second_order(run_ref, inputs, linear=True))


def test_gradient_penalty_input_only():
    """WGAN-GP style: only the input requires grad in the first backward, the weights get
    the penalty's gradient in the second (the first backward asks for d input alone)."""
    ours, theirs = module_pair("lstm", num_layers=2)
    x = torch.randn(T, B, I, dtype=F64, generator=torch.Generator().manual_seed(2),
                    requires_grad=True)
    results = []
    for module in (ours, theirs):
        (gx,) = torch.autograd.grad(module(x)[0].pow(2).sum(), x, create_graph=True)
        module.zero_grad()
        gx.pow(2).sum().backward()
        results.append({n: p.grad for n, p in module.named_parameters()})
    assert_tight(results[0], results[1])


# ---------------------------------------------------------------------------------------
# Gradient record, first order, one tensor as two arguments
# ---------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_grad_record_filled_under_create_graph(kind):
    ours, _ = module_pair(kind, options=dict(grad_clip=0.05, track_grad_norms=True),
                          num_layers=2, bidirectional=True)
    x = torch.randn(4, B, I, dtype=F64, generator=torch.Generator().manual_seed(4),
                    requires_grad=True)
    recorded = []
    for create_graph in (False, True):
        x.grad = None
        loss = ours(x)[0].pow(2).sum()
        # The records receive the gradient record as their .grad (backward(), not grad()).
        torch.autograd.backward(loss, inputs=[x, *ours._grad_records], create_graph=create_graph)
        recorded.append((x.grad, ours.grad_norms.clone(), ours.grad_clip_fraction.clone()))
    (gx0, norms0, frac0), (gx1, norms1, frac1) = recorded
    assert norms0.abs().sum() > 0 and frac0.abs().sum() > 0
    assert torch.equal(norms1, norms0) and torch.equal(frac1, frac0)
    assert gx1.requires_grad
    assert_tight(gx1.detach(), gx0)
    gx1.pow(2).sum().backward(inputs=list(ours.parameters()))
    assert all(p.grad is not None for p in ours.parameters())


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_op_grad_record_and_second_order_together():
    tensors = leaves(make_tensors("gru", 4, B, I, H, weight_scale=3.0))
    record = ops.new_grad_record(4)
    y, h = call_layer(ops.gru_layer, "gru", tensors, grad_clip=0.05, grad_record=record)
    x = tensors["input"]
    torch.autograd.backward(y.pow(2).sum(), inputs=[x, record], create_graph=True)
    assert record.grad is not None and record.grad[0].abs().sum() > 0
    w = tensors["weight_hh"]
    x.grad.pow(2).sum().backward(inputs=[w])
    assert w.grad is not None and w.grad.abs().sum() > 0


def _profiled_ops(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events() if e.name.startswith("fusedrnn::")}


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_plain_backward_runs_the_fused_backward_only(kind):
    """Without create_graph the backward is the fused op, as before; with create_graph it
    is the differentiable *_layer_grad op (no fused backward without a grad record)."""
    tensors = leaves(make_tensors(kind, T, B, I, H))

    def backward(create_graph):
        outs = call_layer(OPS[kind], kind, tensors)
        torch.autograd.grad(outs[0].sum(), list(tensors.values()), create_graph=create_graph)

    plain = _profiled_ops(lambda: backward(False))
    assert f"fusedrnn::{kind}_layer_backward" in plain
    assert f"fusedrnn::{kind}_layer_grad" not in plain
    double = _profiled_ops(lambda: backward(True))
    assert f"fusedrnn::{kind}_layer_grad" in double
    assert f"fusedrnn::{kind}_layer_backward" not in double


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_first_order_of_create_graph_backward_matches_fused(kind):
    tensors = leaves(make_tensors(kind, 5, 3, I, H, 2 if kind == "lstm" else 0,
                                  weight_scale=3.0))
    kw = dict(lengths=torch.tensor([5, 2, 4]), reverse=True, grad_clip=0.1, truncate=2)
    outs = call_layer(OPS[kind], kind, tensors, **kw)
    grads = [torch.randn_like(o) for o in outs]
    fused = torch.autograd.grad(outs, list(tensors.values()), grads, retain_graph=True)
    recomputed = torch.autograd.grad(outs, list(tensors.values()), grads, create_graph=True)
    for a, b in zip(recomputed, fused):
        assert_tight(a.detach(), b)


def test_one_tensor_as_two_arguments():
    """h0 and c0 the same tensor, and the input computed from a weight: each argument's
    gradient is its own, as in the fused backward (the recompute gives each argument its
    own autograd node)."""
    t = leaves(make_tensors("lstm", T, B, H, H))
    state, w = t["h0"], t["weight_ih"]

    def run():
        x = (t["input"] @ w[:H].t()).tanh()  # the input depends on weight_ih
        return ops.lstm_layer(x, w, t["weight_hh"], t["bias_ih"], t["bias_hh"], state, state)

    def loss(outs):
        return outs[0].pow(2).sum() + outs[2].sum()

    fused = torch.autograd.grad(loss(run()), [state, w, t["input"]])
    recomputed = torch.autograd.grad(loss(run()), [state, w, t["input"]], create_graph=True)
    for a, b in zip(recomputed, fused):
        assert_tight(a.detach(), b)


# ---------------------------------------------------------------------------------------
# opcheck of the *_layer_grad ops (test_compile.py's enumeration leaves them to this file)
# ---------------------------------------------------------------------------------------


def _grad_op_args(kind, layout):
    P = 1 if kind == "lstm" else 0
    lengths, batch_sizes = None, None
    if layout == "packed":
        _, tensors, batch_sizes = packed_case(kind, [3, 1], P)
    else:
        tensors = make_tensors(kind, T, B, I, H, P)
        lengths = torch.tensor([3, 1]) if layout == "lengths" else None
    tensors = leaves(tensors)
    outs = call_layer(OPS[kind], kind, tensors, lengths=lengths, batch_sizes=batch_sizes)
    grads = [torch.randn_like(o).requires_grad_(True) for o in outs]
    g = tensors.get
    if kind == "lstm":
        return (*grads, g("input"), g("weight_ih"), g("weight_hh"), g("bias_ih"), g("bias_hh"),
                g("h0"), g("c0"), g("weight_hr"), lengths, batch_sizes, layout != "plain",
                0.5, "norm", 2, 0.7, [True] * 6 + [False, True])
    return (*grads, g("input"), g("weight_ih"), g("weight_hh"), g("bias_ih"), g("bias_hh"),
            g("h0"), lengths, batch_sizes, False, None, "value", None, [True, False] + [True] * 4)


@pytest.mark.parametrize("layout", ["plain", "lengths", "packed"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_grad_op_opcheck(kind, layout):
    """Schema, autograd registration and fake tensors. Not AOT dispatch: these ops run only
    in a create_graph backward, which torch.compile's compiled backward does not support in
    the first place (and with lengths or batch_sizes the CompositeImplicitAutograd kernel
    reads their values, as the reference does, which AOTAutograd cannot trace with dynamic
    shapes; without them it traces, at ~10 s a test, for nothing a user can reach)."""
    op = getattr(torch.ops.fusedrnn, f"{kind}_layer_grad").default
    torch.library.opcheck(op, _grad_op_args(kind, layout),
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor"))


def test_grad_op_returns_undefined_for_unwanted():
    args = _grad_op_args("gru", "plain")
    result = torch.ops.fusedrnn.gru_layer_grad(*args)
    assert result[1] is None and all(isinstance(r, torch.Tensor) for i, r in enumerate(result)
                                     if i != 1)
    assert result[0].shape == args[2].shape


def test_biases_are_kept_not_saved():
    """The node keeps the biases for a create_graph backward without making them saved
    variables: a plain backward still accepts a bias changed in place after the forward, or
    one made in inference mode; a create_graph backward, which recomputes from the bias,
    refuses a changed one."""
    t = leaves(make_tensors("gru", T, B, I, H))
    y, _ = call_layer(ops.gru_layer, "gru", t)
    with torch.no_grad():
        t["bias_hh"].add_(1.0)
    torch.autograd.grad(y.sum(), t["input"], retain_graph=True)
    with pytest.raises(RuntimeError, match="bias_hh has been modified by an inplace operation"):
        torch.autograd.grad(y.sum(), t["input"], create_graph=True)

    with torch.inference_mode():
        bias = torch.randn(4 * H, dtype=F64)
    x = t["input"]
    y = ops.lstm_layer(x, torch.randn(4 * H, I, dtype=F64), torch.randn(4 * H, H, dtype=F64),
                       bias, bias)[0]
    (gx,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
    (gx2,) = torch.autograd.grad(gx.pow(2).sum(), x)
    assert gx2.abs().sum() > 0
