"""torch.compile and torch.library: the registered custom ops and ``torch.library.opcheck`` of
the public ops (padded), the packed (batch_sizes) layout, the internal *_forward ops and the
*_backward ops; torch.compile(fullgraph=True) of an op-level and a module-level training
step; a small model's compiled forward + loss trains exactly like eager over 3 steps,
compiling once; changing sequence length and batch size (dynamic shapes).
"""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
import fusedrnn.ops as ops
from helpers import (
    B,
    F32,
    F64,
    H,
    I,
    POSITIONAL,
    T,
    assert_tight,
    fused,
    make_tensors,
    max_abs_err,
)


pytestmark = pytest.mark.filterwarnings(
    "ignore:LSTM with projections is not supported with oneDNN:UserWarning")


def registered_ops():
    """Every overload of every public op in the torch.ops.fusedrnn namespace (the internal
    *_forward / *_backward ops of the autograd formula are opchecked in
    further down this file, the *_grad ops of double backward, which take the incoming
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


def test_torch_compile_fullgraph_module_training_step():
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


class CompileModel(nn.Module):
    """x [B, T, I] -> Linear -> 2-layer fusedrnn LSTM/GRU (batch_first, options) -> Linear."""

    def __init__(self, cls, dtype, **options):
        super().__init__()
        self.inp = nn.Linear(3, 4, dtype=dtype)
        self.rnn = cls(4, 5, num_layers=2, batch_first=True, dtype=dtype, **options)
        self.head = nn.Linear(5, 2, dtype=dtype)

    def forward(self, x, hx):
        out, state = self.rnn(torch.tanh(self.inp(x)), hx)
        h_n = state[0] if isinstance(state, tuple) else state
        return self.head(out), h_n


def _compiled_versions(fn):
    """How many compiled versions of fn Dynamo holds (one per guard set: 1 + recompiles)."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list
    return len(_debug_get_cache_entry_list(fn.__code__))


def _compile_model(cls, dtype, **options):
    """Seeded; recurrent weights scaled up so that the clip is active."""
    torch.manual_seed(0)
    model = CompileModel(cls, dtype, **options)
    with torch.no_grad():
        for p in model.rnn.parameters():
            p.mul_(2.0)
    return model


def _loss(model, x, hx, target):
    out, h_n = model(x, hx)
    return nn.functional.mse_loss(out, target) + 0.1 * (h_n ** 2).mean()


COMPILE_CASES = {
    "lstm-float32": (fusedrnn.LSTM, F32, dict(grad_clip=0.002, truncate=3)),
    "gru-float64": (fusedrnn.GRU, F64, dict(grad_clip=0.003, grad_clip_mode="norm",
                                            truncate=3)),
}


@pytest.mark.parametrize("case", sorted(COMPILE_CASES))
def test_compiled_training_steps_match_eager(case):
    """3 SGD steps: the loss of forward + loss compiled with fullgraph=True (inductor),
    backward via AOTAutograd and an eager optimizer step give the same losses, gradients
    and parameters as eager; the function is compiled once (no recompiles as the
    parameters change); the recurrent clip is active (so it is exercised in the graph)."""
    cls, dtype, options = COMPILE_CASES[case]
    eager_model = _compile_model(cls, dtype, **options)
    compiled_model = copy.deepcopy(eager_model)
    gen = torch.Generator().manual_seed(3)
    B, T = 4, 7
    x = torch.randn(B, T, 3, generator=gen, dtype=F64).to(dtype)
    target = torch.randn(B, T, 2, generator=gen, dtype=F64).to(dtype)
    h0 = torch.randn(2, B, 5, generator=gen, dtype=F64).to(dtype)
    hx = (h0, torch.randn(2, B, 5, generator=gen, dtype=F64).to(dtype)) \
        if cls is fusedrnn.LSTM else h0

    torch._dynamo.reset()
    compiled_loss = torch.compile(_loss, fullgraph=True)

    def train(model, loss_fn):
        opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        history = []
        for _ in range(3):
            opt.zero_grad()
            loss = loss_fn(model, x, hx, target)
            loss.backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            opt.step()
            params = {n: p.detach().clone() for n, p in model.named_parameters()}
            history.append((loss.detach(), grads, params))
        return history

    eager = train(eager_model, _loss)
    compiled = train(compiled_model, compiled_loss)
    assert _compiled_versions(_loss) == 1

    tight = dict(rtol=1e-9, atol=1e-10) if dtype == F64 else dict(rtol=1e-5, atol=1e-6)
    for step, ((l0, g0, p0), (l1, g1, p1)) in enumerate(zip(eager, compiled)):
        assert l1.dtype == dtype
        torch.testing.assert_close(l1, l0, **tight, msg=lambda m: f"step {step} loss: {m}")
        assert_tight(g1, g0, **tight)
        assert_tight(p1, p0, **tight)

    # The clip is active: without it the first gradient of weight_hh_l0 differs clearly.
    plain = _compile_model(cls, dtype)  # same initial parameters, no options
    _loss(plain, x, hx, target).backward()
    diff = (plain.rnn.weight_hh_l0.grad - eager[0][1]["rnn.weight_hh_l0"]).abs().max().item()
    assert diff > 1e-3 * eager[0][1]["rnn.weight_hh_l0"].abs().max().item(), diff


DYNAMIC_MODULES = {
    "lstm-truncate": lambda: fusedrnn.LSTM(3, 4, num_layers=2, dtype=F64, truncate=2),
    "lstm-all-options": lambda: fusedrnn.LSTM(3, 4, num_layers=2, dtype=F64, grad_clip=0.05,
                                              truncate=2, cell_clip=1.5),
    "gru-clip": lambda: fusedrnn.GRU(3, 4, num_layers=2, dtype=F64, grad_clip=0.05,
                                     grad_clip_mode="norm"),
}


@pytest.mark.parametrize("module, dynamic", [
    ("lstm-all-options", None),
    ("lstm-truncate", True),
    ("lstm-all-options", True),
    ("gru-clip", True),
])
def test_compiled_with_changing_shapes_matches_eager(module, dynamic):
    """Sequence length and batch size change from call to call, as they do between
    batches: fullgraph compile with dynamic=True (symbolic shapes from the start) or the
    default (one static graph, then one dynamic-shape recompile) gives eager's loss and
    gradients at every shape, without a recompile per shape."""
    torch.manual_seed(0)
    rnn = DYNAMIC_MODULES[module]()
    with torch.no_grad():
        for p in rnn.parameters():
            p.mul_(2.0)

    def loss_fn(x):
        out, state = rnn(x)
        h_n = state[0] if isinstance(state, tuple) else state
        return out.square().sum() + h_n.sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, fullgraph=True, dynamic=dynamic)
    gen = torch.Generator().manual_seed(4)
    params = list(rnn.parameters())
    # B never equals I = 3 (duck sizing would give both one symbol) and is never 1 (sizes
    # 0 and 1 are always specialised), so one dynamic graph covers every call.
    for T, B in ((5, 2), (7, 4), (4, 6), (9, 5)):
        x = torch.randn(T, B, 3, generator=gen, dtype=F64)
        results = []
        for fn in (loss_fn, compiled):
            leaf = x.clone().requires_grad_(True)
            loss = fn(leaf)
            grads = torch.autograd.grad(loss, [leaf] + params)
            results.append({"loss": loss.detach(),
                            **{f"grad{i}": g for i, g in enumerate(grads)}})
        assert_tight(results[1], results[0])
    assert _compiled_versions(loss_fn) <= (1 if dynamic else 2)


def _all_fusedrnn_ops():
    names = sorted({full.split("::", 1)[1].split(".", 1)[0]
                    for full in torch._C._dispatch_get_all_op_names()
                    if full.startswith("fusedrnn::")})
    return names


def test_registered_op_names_are_known():
    """Every op in torch.ops.fusedrnn has opcheck samples in this file: a new op
    must be added to the samples below."""
    assert _all_fusedrnn_ops() == ["gru_layer", "gru_layer_backward", "gru_layer_forward",
                                   "gru_layer_grad", "lstm_layer", "lstm_layer_backward",
                                   "lstm_layer_forward", "lstm_layer_grad"]


def _packed(kind, T=5, lengths=(5, 3, 2, 2), I=3, H=4, P=0, *, bias=True, dtype=F64, seed=0):
    """Op-style tensors whose input is PackedSequence data [N, I] with its batch_sizes."""
    t = make_tensors(kind, T, len(lengths), I, H, P, bias=bias, dtype=dtype, seed=seed)
    packed = pack_padded_sequence(t["input"], torch.tensor(lengths))
    t["input"] = packed.data
    return t, packed.batch_sizes


def _forward_args(kind, t, *, lengths=None, batch_sizes=None, reverse=False, grad_clip=None,
                  mode="value", truncate=None, cell_clip=None, grad_record=None):
    """(args, kwargs) of torch.ops.fusedrnn.<kind>_layer from op-style tensors."""
    args = (t["input"], t["weight_ih"], t["weight_hh"], t.get("bias_ih"), t.get("bias_hh"),
            t.get("h0")) + ((t.get("c0"),) if kind == "lstm" else ())
    kwargs = dict(lengths=lengths, batch_sizes=batch_sizes, reverse=reverse, grad_clip=grad_clip,
                  grad_clip_mode=mode, truncate=truncate, grad_record=grad_record)
    if kind == "lstm":
        kwargs.update(weight_hr=t.get("weight_hr"), cell_clip=cell_clip)
    return args, kwargs


def _internal_forward_args(kind, t, *, lengths=None, batch_sizes=None, reverse=False,
                           cell_clip=None, **grad_options):
    """Positional arguments of torch.ops.fusedrnn.<kind>_layer_forward (the forward of the
    autograd formula, which keeps what the backward needs)."""
    common = [t["input"], t["weight_ih"], t["weight_hh"], t.get("bias_ih"), t.get("bias_hh"),
              t.get("h0")]
    if kind == "lstm":
        return tuple(common + [t.get("c0"), t.get("weight_hr"), lengths, batch_sizes, reverse,
                               cell_clip])
    return tuple(common + [lengths, batch_sizes, reverse])


def _requiring_grad(t):
    return {n: v.clone().requires_grad_(True) for n, v in t.items()}


PACKED_FORWARD_SAMPLES = {
    "lstm-proj-options-reverse": lambda: _packed_forward(
        "lstm", P=2, reverse=True, grad_clip=0.1, mode="norm", truncate=2, cell_clip=0.5),
    "lstm-plain": lambda: _packed_forward("lstm"),
    "lstm-nobias-float32-nograd": lambda: _packed_forward(
        "lstm", bias=False, dtype=F32, grad=False, grad_clip=0.1, truncate=1),
    "lstm-one-step": lambda: _packed_forward("lstm", T=1, lengths=(1, 1, 1)),
    "gru-options-reverse": lambda: _packed_forward(
        "gru", reverse=True, grad_clip=0.1, truncate=2),
    "gru-plain": lambda: _packed_forward("gru"),
    "gru-nobias-float32-nograd": lambda: _packed_forward(
        "gru", bias=False, dtype=F32, grad=False, grad_clip=0.1, mode="norm"),
}


def _packed_forward(kind, *, P=0, bias=True, dtype=F64, grad=True, T=5, lengths=(5, 3, 2, 2),
                    **options):
    t, batch_sizes = _packed(kind, T, lengths, P=P, bias=bias, dtype=dtype)
    if grad:
        t = _requiring_grad(t)
    return t, batch_sizes, options


@pytest.mark.parametrize("sample", sorted(PACKED_FORWARD_SAMPLES))
def test_opcheck_forward_packed(sample):
    kind = sample.split("-")[0]
    t, batch_sizes, options = PACKED_FORWARD_SAMPLES[sample]()
    op = getattr(torch.ops.fusedrnn, f"{kind}_layer")
    torch.library.opcheck(op.default, *_forward_args(kind, t, batch_sizes=batch_sizes, **options))


@pytest.mark.parametrize("sample", sorted(PACKED_FORWARD_SAMPLES))
def test_opcheck_internal_forward_packed(sample):
    """The forward of the autograd formula, as the formula calls it (below autograd: no
    input requires grad)."""
    kind = sample.split("-")[0]
    t, batch_sizes, options = PACKED_FORWARD_SAMPLES[sample]()
    t = {n: v.detach() for n, v in t.items()}
    op = getattr(torch.ops.fusedrnn, f"{kind}_layer_forward")
    torch.library.opcheck(op.default,
                          _internal_forward_args(kind, t, batch_sizes=batch_sizes, **options))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_opcheck_forward_packed_without_initial_state(kind):
    t, batch_sizes = _packed(kind)
    del t["h0"]
    t.pop("c0", None)
    torch.library.opcheck(getattr(torch.ops.fusedrnn, f"{kind}_layer").default,
                          *_forward_args(kind, t, batch_sizes=batch_sizes))


def _backward_args(kind, t, *, need_input=True, need_weight=True, seed=5, track=False,
                   **forward_options):
    """Realistic arguments of torch.ops.fusedrnn.<kind>_layer_backward: the saved tensors of
    a real forward (the *_layer_forward op) and seeded upstream gradients."""
    fwd = _internal_forward_args(kind, t, **forward_options)
    op = getattr(torch.ops.fusedrnn, f"{kind}_layer_forward")
    with torch.no_grad():
        outputs = op(*fwd)
    gen = torch.Generator().manual_seed(seed)
    n_grads = 3 if kind == "lstm" else 2
    grads = [torch.randn(o.shape, generator=gen, dtype=F64).to(o.dtype)
             for o in outputs[:n_grads]]
    has_bias = t.get("bias_ih") is not None
    o = forward_options
    if kind == "lstm":
        y, _, _, act, c_raw, h_pre = outputs
        return (*grads, t["input"], t["weight_ih"], t["weight_hh"], t.get("weight_hr"),
                t.get("h0"), t.get("c0"), o.get("lengths"), o.get("batch_sizes"), y, act, c_raw,
                h_pre, o.get("reverse", False), o.get("grad_clip"), o.get("mode", "value"),
                o.get("truncate"), o.get("cell_clip"), has_bias, need_input, need_weight, track)
    y, _, saved = outputs
    return (*grads, t["input"], t["weight_ih"], t["weight_hh"], t.get("h0"), o.get("lengths"),
            o.get("batch_sizes"), y, saved, o.get("reverse", False), o.get("grad_clip"),
            o.get("mode", "value"), o.get("truncate"), has_bias, need_input, need_weight, track)


def _padded(kind, P=0, **kwargs):
    return make_tensors(kind, 5, 3, 3, 4, P, **kwargs)


BACKWARD_SAMPLES = {
    "plain": lambda kind: _backward_args(kind, _padded(kind)),
    "proj-lengths-reverse-options": lambda kind: _backward_args(
        kind, _padded(kind, P=2 if kind == "lstm" else 0), lengths=torch.tensor([5, 1, 3]),
        reverse=True, grad_clip=0.05, mode="norm", truncate=2,
        **({"cell_clip": 0.5} if kind == "lstm" else {})),
    "packed-options": lambda kind: _backward_args(
        kind, _packed(kind)[0], batch_sizes=_packed(kind)[1], grad_clip=0.05, truncate=2),
    "packed-reverse-proj": lambda kind: _backward_args(
        kind, _packed(kind, P=2 if kind == "lstm" else 0)[0], batch_sizes=_packed(kind)[1],
        reverse=True, grad_clip=0.02),
    "record-packed": lambda kind: _backward_args(
        kind, _packed(kind)[0], batch_sizes=_packed(kind)[1], grad_clip=0.05, mode="norm",
        track=True),
    "record-lengths-proj": lambda kind: _backward_args(
        kind, _padded(kind, P=2 if kind == "lstm" else 0), lengths=torch.tensor([5, 1, 3]),
        grad_clip=0.02, truncate=2, track=True),
    "no-input-grad": lambda kind: _backward_args(kind, _padded(kind), need_input=False,
                                                 grad_clip=0.1),
    "no-weight-grad": lambda kind: _backward_args(kind, _padded(kind), need_weight=False,
                                                  truncate=1),
    "no-bias-no-h0": lambda kind: _backward_args(kind, _padded(kind, bias=False, h0=False)),
    "float32": lambda kind: _backward_args(kind, _padded(kind, dtype=F32), grad_clip=0.1,
                                           mode="norm", truncate=3),
}


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("sample", list(BACKWARD_SAMPLES))
def test_opcheck_backward_ops(kind, sample):
    """opcheck of the *_backward ops (schema, fake kernel vs real, AOT dispatch) with the
    arguments the autograd formula passes them. Their inputs do not require grad, as in a
    backward without create_graph (the backward ops have no autograd formula of their own;
    a create_graph backward runs the *_grad ops instead, opchecked in
    test_double_backward.py)."""
    args = BACKWARD_SAMPLES[sample](kind)
    op = getattr(torch.ops.fusedrnn, f"{kind}_layer_backward")
    torch.library.opcheck(op.default, args)
