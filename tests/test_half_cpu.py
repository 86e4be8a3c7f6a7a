"""CPU bfloat16 and float16 (docs/design.md §4; docs/dtypes.md).

The CPU kernels compute float32 and float64; the Python wrappers (fusedrnn.ops) run a half
CPU call in float32 through differentiable casts, so outputs and final states come back in
the dtype and every gradient in its own tensor's dtype. Checked here:

1. Precision, by docs/design.md §4's rule: against a float64 reference built from the same rounded
   values, every output and gradient error <= 2x torch.nn's error in the same dtype on CPU
   plus a small floor (LSTM plain / projected / bidirectional / packed, GRU, cells).
2. Clipping, truncation, cell clip and the gradient record against fusedrnn.reference (the
   baseline: the reference run in the dtype itself; torch.nn has no such options).
3. torch.autocast("cpu"): output dtypes as torch.nn's where torch.nn runs, working where it
   fails (float16 LSTM, bfloat16 LSTM on CPUs without native bfloat16), precision.
4. Dtype errors: mixed dtypes as torch.nn raises them, unsupported dtypes named clearly.
5. torch.compile(fullgraph=True) traces the casts.

Shape letters: T steps, B batch, I input, H hidden, P projection.
"""

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fusedrnn
from fusedrnn import ops, reference
from helpers import assert_close_by_reference, call_layer, make_tensors, relative_floor

BF16, F16, F32, F64 = torch.bfloat16, torch.float16, torch.float32, torch.float64
HALF = [BF16, F16]
# What is left when torch.nn's error happens to be ~0 for a tensor: the rounding of a float32
# result to the dtype (half an ulp, relative to the largest reference value) and then some.
FLOORS = {BF16: relative_floor(8e-3), F16: relative_floor(1e-3)}
T, B, I, H, P = 9, 4, 5, 12, 7
LENGTHS = [9, 4, 7, 2]  # unsorted: PackedSequence with sorted_indices

pytestmark = pytest.mark.filterwarnings(
    "ignore:LSTM with projections is not supported with oneDNN:UserWarning")


def dtype_id(dtype):
    return str(dtype).replace("torch.", "")


# ---------------------------------------------------------------------------------------
# Running a module: outputs and every gradient, upstream gradients rounded to the dtype


MODULES = {
    "lstm": ("LSTM", dict(num_layers=2)),
    "lstm_proj": ("LSTM", dict(proj_size=P)),
    "lstm_bi": ("LSTM", dict(bidirectional=True)),
    "lstm_packed": ("LSTM", dict(bidirectional=True)),
    "gru": ("GRU", dict(num_layers=2, bidirectional=True)),
    "gru_packed": ("GRU", dict()),
    "lstm_cell": ("LSTMCell", dict()),
    "gru_cell": ("GRUCell", dict()),
}


def build(lib, case, dtype, state_dict=None):
    name, kwargs = MODULES[case]
    module = getattr(lib, name)(I, H, **kwargs)
    if state_dict is not None:
        module.load_state_dict({k: v.double() for k, v in state_dict.items()})
    return module.to(dtype)


def inputs(case, dtype, seed=0):
    """(x, hx) drawn in float64 and rounded to dtype: x [T, B, I] (cells: [B, I])."""
    gen = torch.Generator().manual_seed(seed)
    name, kwargs = MODULES[case]

    def draw(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64).to(dtype)

    if name.endswith("Cell"):
        x = draw(B, I)
        hx = (draw(B, H), draw(B, H)) if name == "LSTMCell" else draw(B, H)
        return x, hx
    D = 2 if kwargs.get("bidirectional") else 1
    L = kwargs.get("num_layers", 1)
    x = draw(T, B, I)
    h0 = draw(L * D, B, kwargs.get("proj_size") or H)
    return x, ((h0, draw(L * D, B, H)) if name == "LSTM" else h0)


def run(module, case, x, hx, grad_dtype, seed=7, autocast=None):
    """Forward and backward with seeded upstream gradients (drawn in float64, rounded to
    grad_dtype, then given in each output's dtype). Returns {name: detached tensor}.
    autocast: a dtype to run the forward (only) under torch.autocast("cpu")."""
    leaves = [x.detach().clone().requires_grad_()]
    states = hx if isinstance(hx, tuple) else (hx,)
    leaves += [s.detach().clone().requires_grad_() for s in states]
    inp = leaves[0]
    if case.endswith("packed"):
        inp = pack_padded_sequence(inp, LENGTHS, enforce_sorted=False)
    state = tuple(leaves[1:]) if isinstance(hx, tuple) else leaves[1]
    with torch.autocast("cpu", dtype=autocast or BF16, enabled=autocast is not None):
        result = module(inp, state)
    if case.endswith("cell"):
        outputs = result if isinstance(result, tuple) else (result,)
    else:
        out, st = result
        outputs = ((out.data if isinstance(out, PackedSequence) else out,)
                   + (st if isinstance(st, tuple) else (st,)))
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(o.shape, generator=gen, dtype=F64).to(grad_dtype).to(o.dtype)
             for o in outputs]
    params = dict(module.named_parameters())
    wrt = leaves + list(params.values())
    got = torch.autograd.grad(outputs, wrt, grads, allow_unused=True)
    names = (["input"] + [f"hx{i}" for i in range(len(states))]
             + [n.removeprefix("_orig_mod.") for n in params])  # (torch.compile's wrapper)
    results = {f"out{i}": o.detach() for i, o in enumerate(outputs)}
    for n, leaf, g in zip(names, wrt, got):
        results["grad_" + n] = torch.zeros_like(leaf) if g is None else g
    return results


# ---------------------------------------------------------------------------------------
# 1. Modules in bfloat16 / float16 against torch.nn in the same dtype


@pytest.mark.parametrize("dtype", HALF, ids=dtype_id)
@pytest.mark.parametrize("case", list(MODULES))
def test_module_precision_like_torchnn(case, dtype):
    torch.manual_seed(0)
    rounded = {k: v.to(dtype) for k, v in build(nn, case, F32).state_dict().items()}
    x, hx = inputs(case, dtype)
    ours = run(build(fusedrnn, case, dtype, rounded), case, x, hx, dtype)
    theirs = run(build(nn, case, dtype, rounded), case, x, hx, dtype)
    hx64 = tuple(s.double() for s in hx) if isinstance(hx, tuple) else hx.double()
    ref64 = run(build(nn, case, F64, rounded), case, x.double(), hx64, dtype)
    for name, value in ours.items():
        assert value.dtype == dtype, f"{name}: {value.dtype}"
    assert_close_by_reference(ours, theirs, ref64, FLOORS[dtype])


@pytest.mark.parametrize("dtype", HALF, ids=dtype_id)
def test_unbatched_and_batch_first(dtype):
    """2-D (unbatched) and batch_first input take the same path: equal to the batched run."""
    torch.manual_seed(0)
    model = fusedrnn.LSTM(I, H, batch_first=True, dtype=dtype)
    x = torch.randn(B, T, I, dtype=dtype)
    out, (h, c) = model(x)
    one, (h1, c1) = model(x[1])
    assert out.dtype == h.dtype == c.dtype == one.dtype == dtype
    assert torch.equal(one, out[1]) and torch.equal(h1, h[:, 1]) and torch.equal(c1, c[:, 1])


# ---------------------------------------------------------------------------------------
# 2. Options and the gradient record, against fusedrnn.reference


OPTIONS = {
    "clip_value": dict(grad_clip=0.05),
    "clip_norm_truncate": dict(grad_clip=0.1, grad_clip_mode="norm", truncate=3),
    "cell_clip": dict(cell_clip=0.4, grad_clip=0.2),
}


def op_run(fn, kind, tensors, grad_dtype, seed=7, **kwargs):
    leaves = {n: v.detach().clone().requires_grad_() for n, v in tensors.items()}
    outputs = call_layer(fn, kind, leaves, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(o.shape, generator=gen, dtype=F64).to(grad_dtype).to(o.dtype)
             for o in outputs]
    got = torch.autograd.grad(outputs, list(leaves.values()), grads)
    results = {f"out{i}": o.detach() for i, o in enumerate(outputs)}
    results.update({"grad_" + n: g for n, g in zip(leaves, got)})
    return results


@pytest.mark.parametrize("dtype", HALF, ids=dtype_id)
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_op_options_against_reference(kind, option, dtype):
    """lstm_layer / gru_layer with lengths, reverse and the options, in the dtype: the
    baseline is fusedrnn.reference run in the dtype (plain PyTorch ops in bf16/fp16)."""
    options = dict(OPTIONS[option])
    if kind == "gru":
        options.pop("cell_clip", None)
    t = make_tensors(kind, T, B, I, H, P if kind == "lstm" else 0, dtype=dtype,
                     weight_scale=2.0)
    kwargs = dict(lengths=torch.tensor(LENGTHS), reverse=True, **options)
    ours = op_run(getattr(ops, f"{kind}_layer"), kind, t, dtype, **kwargs)
    base = op_run(getattr(reference, f"{kind}_layer"), kind, t, dtype, **kwargs)
    ref64 = op_run(getattr(reference, f"{kind}_layer"), kind,
                   {n: v.double() for n, v in t.items()}, dtype, **kwargs)
    for name, value in ours.items():
        assert value.dtype == dtype, name
    assert_close_by_reference(ours, base, ref64, FLOORS[dtype])


@pytest.mark.parametrize("dtype", HALF, ids=dtype_id)
def test_module_options_and_grad_norms(dtype):
    """Module options in the dtype; the gradient record stays float32 and matches a float64
    run of the same rounded values up to the dtype's rounding (of layer 0's output, which
    layer 1 reads, and of the gradients handed back into layer 0)."""
    torch.manual_seed(0)
    kw = dict(num_layers=2, bidirectional=True, grad_clip=0.05, truncate=4,
              track_grad_norms=True)
    ours = fusedrnn.GRU(I, H, **kw).to(dtype)
    ref = fusedrnn.GRU(I, H, **kw, dtype=F64)
    ref.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    x = torch.randn(T, B, I, dtype=dtype)
    upstream = torch.randn(T, B, 2 * H, dtype=dtype)
    ours(x)[0].backward(upstream)
    ref(x.double())[0].backward(upstream.double())
    assert ours.grad_norms.dtype == F32 and ours.grad_clip_fraction.dtype == F32
    assert ours.weight_hh_l1_reverse.grad.dtype == dtype
    rtol = {BF16: 2e-2, F16: 3e-3}[dtype]
    torch.testing.assert_close(ours.grad_norms, ref.grad_norms, rtol=rtol, atol=1e-6)


# ---------------------------------------------------------------------------------------
# 3. torch.autocast("cpu")


def _dtypes(results):
    return {k: v.dtype for k, v in results.items()}


def _torchnn_autocast(case, model, x, hx, dtype):
    """torch.nn's autocast result, or None where torch.nn cannot run it on this machine
    (its LSTM layer goes to oneDNN's RNN, which has no float16 and needs native bfloat16)."""
    try:
        return run(model, case, x, hx, dtype, autocast=dtype)
    except RuntimeError as exc:
        if "primitive descriptor" not in str(exc):
            raise
        return None


AUTOCAST_CASES = ["lstm", "lstm_proj", "lstm_packed", "gru", "gru_packed", "lstm_cell",
                  "gru_cell"]


@pytest.mark.parametrize("dtype", HALF, ids=dtype_id)
@pytest.mark.parametrize("case", AUTOCAST_CASES)
def test_autocast_like_torchnn(case, dtype):
    """Float32 model and input, forward under autocast (backward after it, as autocast's
    documentation recommends): output dtypes as torch.nn's (where it runs;
    else the autocast dtype, as its bfloat16 run gives), float32 gradients, and errors against
    the float64 model by the 2x rule. The baseline is torch.nn under autocast, or, where that
    fails, torch.nn run in the dtype (weights and input rounded as autocast rounds them).
    fusedrnn computes in float32 and rounds only its outputs."""
    torch.manual_seed(0)
    model = build(nn, case, F32)
    state = model.state_dict()
    x, hx = inputs(case, F32)
    ours = run(build(fusedrnn, case, F32, state), case, x, hx, dtype, autocast=dtype)
    theirs = _torchnn_autocast(case, model, x, hx, dtype)
    if theirs is None:
        assert case in ("lstm", "lstm_packed") or dtype == F16, case
        # torch.nn's bfloat16 run of this case gives every output in the autocast dtype.
        assert _dtypes(ours) == {k: (dtype if k.startswith("out") else F32) for k in ours}
        rounded = {k: v.to(dtype) for k, v in state.items()}
        hxd = tuple(s.to(dtype) for s in hx) if isinstance(hx, tuple) else hx.to(dtype)
        theirs = run(build(nn, case, dtype, rounded), case, x.to(dtype), hxd, dtype)
    else:
        assert _dtypes(ours) == _dtypes(theirs)
    hx64 = tuple(s.double() for s in hx) if isinstance(hx, tuple) else hx.double()
    ref64 = run(build(nn, case, F64, state), case, x.double(), hx64, dtype)
    assert_close_by_reference({k: v.double() for k, v in ours.items()},
                              {k: v.double() for k, v in theirs.items()}, ref64,
                              FLOORS[dtype])


@pytest.mark.parametrize("dtype", HALF, ids=dtype_id)
def test_autocast_output_dtypes_match_torchnn(dtype):
    """Mixed dtypes that torch.nn accepts under autocast (half input into a float32 model,
    half states, a half model with float32 input), default states: same output dtypes."""
    torch.manual_seed(0)
    xs = torch.randn(T, B, I)
    cases = [
        ("LSTM", {}, xs.to(dtype), None),
        ("LSTM", dict(proj_size=P), xs, (torch.zeros(1, B, P), torch.zeros(1, B, H, dtype=dtype))),
        ("LSTM", dict(dtype=dtype), xs, None),
        ("GRU", {}, xs, torch.zeros(1, B, H, dtype=dtype)),
        ("GRU", dict(dtype=dtype), xs.to(dtype), None),
        ("LSTMCell", {}, xs[0].to(dtype), None),
        ("LSTMCell", {}, xs[0], (torch.zeros(B, H, dtype=dtype),) * 2),
        ("LSTMCell", dict(dtype=dtype), xs[0], None),
        ("GRUCell", {}, xs[0].to(dtype), None),
        ("GRUCell", dict(dtype=dtype), xs[0], None),
    ]

    def flat(result):
        if isinstance(result, torch.Tensor):
            return [result.dtype]
        return [d for r in result for d in flat(r)]

    for name, kwargs, x, hx in cases:
        got = []
        for lib in (fusedrnn, nn):
            with torch.autocast("cpu", dtype=dtype):
                try:
                    got.append(flat(getattr(lib, name)(I, H, **kwargs)(x, hx)))
                except RuntimeError as exc:  # torch.nn's oneDNN LSTM layer, see above
                    assert lib is nn and "primitive descriptor" in str(exc)
                    got.append(None)
        if got[1] is not None:
            assert got[0] == got[1], (name, kwargs, got)
        else:
            assert got[0] == [dtype] * 3, (name, kwargs, got)


def test_autocast_leaves_float64_alone():
    model = fusedrnn.LSTM(I, H, dtype=F64)
    x = torch.randn(T, B, I, dtype=F64)
    with torch.autocast("cpu", dtype=BF16):
        out, (h, c) = model(x)
    assert out.dtype == h.dtype == c.dtype == F64
    torch.testing.assert_close(out, model(x)[0], rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["lstm", "gru", "lstm_cell"])
def test_autocast_backward_inside_region(kind):
    """backward() inside the autocast region (torch.autocast's documentation advises against
    it, but it is common) gives the gradients of a backward outside it: the kernels exclude
    autocast from their own ATen calls (csrc/rnn_ops.cpp), so their GEMMs stay float32."""
    torch.manual_seed(0)
    model = {"lstm": lambda: fusedrnn.LSTM(8, 64), "gru": lambda: fusedrnn.GRU(8, 64),
             "lstm_cell": lambda: fusedrnn.LSTMCell(8, 64)}[kind]()
    x = torch.randn(20, 16, 8)
    if kind == "lstm_cell":
        x = x[0]
    grads = []
    for inside in (True, False):
        model.zero_grad()
        with torch.autocast("cpu", dtype=BF16):
            out = model(x)[0]
            loss = out.float().square().sum()
            if inside:
                loss.backward()
        if not inside:
            loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for inside, outside in zip(*grads):
        assert inside.dtype == torch.float32
        torch.testing.assert_close(inside, outside, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------
# 4. Dtype errors


@pytest.mark.parametrize("dtype", HALF, ids=dtype_id)
def test_mixed_dtypes_raise(dtype):
    """Outside autocast, a half tensor among float32 ones raises as in torch.nn (modules:
    ValueError from RNNBase's check; cells: RuntimeError); the ops name the argument."""
    x = torch.randn(T, B, I, dtype=dtype)
    with pytest.raises(ValueError, match="dtype"):
        fusedrnn.LSTM(I, H)(x)
    with pytest.raises(ValueError, match="dtype"):
        fusedrnn.GRU(I, H, dtype=dtype)(x.float())
    for cell in (fusedrnn.LSTMCell(I, H), fusedrnn.GRUCell(I, H)):
        with pytest.raises(RuntimeError, match="dtype"):  # torch.nn's cells: RuntimeError
            cell(x[0])
    with pytest.raises(RuntimeError, match="dtype"):
        fusedrnn.LSTM(I, H, dtype=dtype)(x, (torch.zeros(1, B, H), torch.zeros(1, B, H)))
    # The ops: RuntimeError naming the argument that differs from the input.
    for kind, names in (("lstm", ("weight_ih", "bias_hh", "h0", "c0", "weight_hr")),
                        ("gru", ("weight_hh", "bias_ih", "h0"))):
        t = make_tensors(kind, T, B, I, H, P if kind == "lstm" else 0, dtype=dtype)
        fn = getattr(ops, f"{kind}_layer")
        for name in names:
            bad = dict(t, **{name: t[name].float()})
            with pytest.raises(RuntimeError, match=f"{name} must have the same dtype"):
                call_layer(fn, kind, bad)
        bad = {n: (v if n == "input" else v.float()) for n, v in t.items()}
        with pytest.raises(RuntimeError, match="weight_ih must have the same dtype"):
            call_layer(fn, kind, bad)


UNSUPPORTED = [torch.int32, torch.int64, torch.bool, torch.complex64]
if hasattr(torch, "float8_e4m3fn"):
    UNSUPPORTED.append(torch.float8_e4m3fn)


@pytest.mark.parametrize("dtype", UNSUPPORTED, ids=dtype_id)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_unsupported_dtypes_name_the_input(kind, dtype):
    t = make_tensors(kind, T, B, I, H, dtype=F32)
    t = {n: (v > 0 if dtype == torch.bool else v.to(dtype)) for n, v in t.items()}
    with pytest.raises(TypeError, match="input must be") as info:
        call_layer(getattr(ops, f"{kind}_layer"), kind, t)
    message = str(info.value)
    if dtype.is_floating_point:  # float8: the supported list includes the half types
        assert "bfloat16 or float16" in message, message
    else:
        assert "floating-point" in message, message


# ---------------------------------------------------------------------------------------
# 5. torch.compile


@pytest.mark.parametrize("case", ["lstm_proj", "gru_cell"])
def test_torch_compile_fullgraph_bf16(case):
    torch.manual_seed(0)
    model = build(fusedrnn, case, BF16)
    x, hx = inputs(case, BF16)
    eager = run(model, case, x, hx, BF16)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    got = run(compiled, case, x, hx, BF16)
    assert _dtypes(got) == _dtypes(eager)
    for name in eager:
        torch.testing.assert_close(got[name], eager[name], rtol=0, atol=0, msg=name)


def test_torch_compile_fullgraph_under_autocast():
    torch.manual_seed(0)
    model = fusedrnn.LSTM(I, H)
    x = torch.randn(T, B, I)

    def f(x):
        with torch.autocast("cpu", dtype=BF16):
            out, (h, c) = model(x)
        return out, h, c

    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = torch.compile(f, fullgraph=True, backend="aot_eager")(x)
    want = f(x)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype == BF16
        torch.testing.assert_close(g, w, rtol=0, atol=0)
