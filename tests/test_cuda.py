"""The CUDA kernels (fusedrnn.ops and the modules on CUDA tensors), skipped without a GPU.

Yardsticks, as for the CPU (docs/design.md §4, "tolerance by comparison"):

* float64 on CUDA is compared tightly with fusedrnn.reference and with the CPU kernels;
* float32, float16 and bfloat16 follow the 2x rule: max|ours - ref64| <= 2 * max|torch.nn -
  ref64| + floor, with torch.nn on CUDA (cuDNN) in the same dtype, or fusedrnn.reference in
  that dtype where options (clipping, truncation, cell clip) are on, and ref64 the float64
  reference on the CPU computed from the same rounded values. TF32 is switched off for the
  whole module (cuDNN would use it for float32 by default), so torch.nn's float32 error is a
  float32 error.

Shape letters: T steps, B batch, I input, H hidden, P projection, R = P or H.
"""

import os

import pytest
import torch
from torch.func import functional_call
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import fusedrnn
import fusedrnn.ops as ops
from helpers import (
    FLOOR32,
    GATES,
    OUTPUTS,
    REFERENCE,
    apply_layout,
    assert_close_by_reference,
    assert_tight,
    call_layer,
    cast,
    make_tensors,
    max_diff,
    nn_param_names,
    relative_floor,
)

# FUSEDRNN_REQUIRE_CUDA=1 (tools/gpu/gpu_check.sh) turns the skip into failures: on a GPU
# machine a torch that cannot see the GPU must not pass as "all skipped".
pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("FUSEDRNN_REQUIRE_CUDA", "0") in ("", "0"),
    reason="needs a CUDA GPU")

CUDA = torch.device("cuda")
CPU = torch.device("cpu")
F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
OPS = {"lstm": ops.lstm_layer, "gru": ops.gru_layer}
# Floors of the 2x rule: a few units of the dtype's rounding of the largest reference value
# (a kernel with a wrong index or a wrong formula is off by O(1), far above these).
FLOORS = {F32: FLOOR32, F16: relative_floor(2e-3), BF16: relative_floor(1.6e-2)}


@pytest.fixture(autouse=True, scope="module")
def _no_tf32():
    """Full float32 GEMMs in torch.nn (cuDNN defaults to TF32) and in fusedrnn (at::mm)."""
    if not torch.cuda.is_available():
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# ---------------------------------------------------------------------------------------
# Running a layer on a device
# ---------------------------------------------------------------------------------------


def upstream(outputs, seed=1234):
    """Seeded output gradients, drawn on the CPU in float64 (identical for every device and
    dtype), then moved to each output's device and dtype."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(o.shape, generator=gen, dtype=F64).to(o.device, o.dtype)
                 for o in outputs)


def run_layer(fn, kind, tensors, device, *, layout=None, lengths=None, **kwargs):
    """fn on leaf copies of tensors on `device`; backpropagates seeded output gradients.
    Returns CPU tensors: "output", "h_n"[, "c_n"] and "grad_<name>" for every argument."""
    leaves = {n: v.detach().to(device).clone().requires_grad_(True) for n, v in tensors.items()}
    if lengths is not None:
        kwargs["lengths"] = torch.tensor(lengths)
    outputs = call_layer(fn, kind, apply_layout(leaves, layout), **kwargs)
    grads = torch.autograd.grad(outputs, list(leaves.values()), upstream(outputs),
                                allow_unused=True)
    result = {name: o.detach().cpu() for name, o in zip(OUTPUTS[kind], outputs)}
    for (name, leaf), g in zip(leaves.items(), grads):
        result["grad_" + name] = (torch.zeros_like(leaf) if g is None else g).detach().cpu()
    return result


def nn_layer(kind):
    """torch.nn.LSTM / GRU (cuDNN on CUDA) with the signature of fusedrnn.ops, built on the
    input's device: the given tensors replace the module's parameters (functional_call), so
    gradients reach them. reverse=True keeps the reverse half of a bidirectional module."""

    def fn(input, weight_ih, weight_hh, bias_ih=None, bias_hh=None, h0=None, c0=None, *,
           weight_hr=None, lengths=None, reverse=False):
        T, B, I = input.shape
        H = weight_ih.shape[0] // GATES[kind]
        P = 0 if weight_hr is None else weight_hr.shape[0]
        R = P or H
        bias = bias_ih is not None
        extra = dict(proj_size=P) if kind == "lstm" else {}
        cls = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
        module = cls(I, H, bias=bias, bidirectional=reverse, dtype=input.dtype,
                     device=input.device, **extra)
        params = {k: v.detach() for k, v in module.named_parameters()}
        given = dict(weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih,
                     bias_hh=bias_hh, weight_hr=weight_hr)
        for ours, theirs in nn_param_names(kind, bias, P > 0, reverse).items():
            params[theirs] = given[ours]

        def state(s, width):  # [B, width] -> [D, B, width]
            s = input.new_zeros(B, width) if s is None else s
            return torch.stack([torch.zeros_like(s), s]) if reverse else s[None]

        hx = state(h0, R) if kind == "gru" else (state(h0, R), state(c0, H))
        x = input if lengths is None else pack_padded_sequence(input, lengths,
                                                               enforce_sorted=False)
        out, hn = functional_call(module, params, (x, hx))
        if lengths is not None:
            out, _ = pad_packed_sequence(out, total_length=T)
        if reverse:
            out = out[..., R:]
        if kind == "lstm":
            return out, hn[0][-1], hn[1][-1]
        return out, hn[-1]

    return fn


class Case:
    """One layer configuration (op arguments, lengths, memory layout)."""

    def __init__(self, kind, T, B, I, H, P=0, *, bias=True, h0=True, reverse=False,
                 lengths=None, layout=None, weight_scale=1.0, input_scale=1.0):
        self.kind, self.T, self.B, self.I, self.H, self.P = kind, T, B, I, H, P
        self.bias, self.h0, self.reverse, self.lengths = bias, h0, reverse, lengths
        self.layout, self.weight_scale, self.input_scale = layout, weight_scale, input_scale

    def tensors(self, dtype):
        return make_tensors(self.kind, self.T, self.B, self.I, self.H, self.P, bias=self.bias,
                            h0=self.h0, dtype=dtype, weight_scale=self.weight_scale,
                            input_scale=self.input_scale)

    def run(self, fn, device, tensors, **options):
        return run_layer(fn, self.kind, tensors, device, layout=self.layout,
                         lengths=self.lengths, reverse=self.reverse, **options)

    def __repr__(self):
        parts = [self.kind, f"T{self.T}B{self.B}I{self.I}H{self.H}"]
        parts += [f"P{self.P}"] if self.P else []
        parts += [] if self.bias else ["no_bias"]
        parts += [] if self.h0 else ["no_h0"]
        parts += ["reverse"] if self.reverse else []
        parts += [f"len{'_'.join(map(str, self.lengths))}"] if self.lengths else []
        parts += [self.layout] if self.layout else []
        return "-".join(parts)


# Awkward sizes (H=1, H=129, B=1, T=1, odd I), lengths in any order, both directions,
# projection, no bias / no h0, non-contiguous layouts, and one longer recurrence.
CASES = [
    Case("lstm", 1, 1, 1, 1),
    Case("lstm", 5, 3, 7, 16),
    Case("lstm", 4, 2, 3, 129),
    Case("lstm", 6, 4, 5, 8, 3, lengths=[6, 2, 5, 1]),
    Case("lstm", 6, 4, 5, 8, reverse=True, lengths=[3, 6, 1, 5]),
    Case("lstm", 6, 4, 5, 8, 5, reverse=True, bias=False, h0=False),
    Case("lstm", 7, 5, 9, 33, layout="slice"),
    Case("lstm", 40, 8, 16, 32),
    Case("gru", 1, 1, 1, 1),
    Case("gru", 5, 3, 7, 16),
    Case("gru", 4, 2, 3, 129),
    Case("gru", 6, 4, 5, 8, lengths=[6, 2, 5, 1], bias=False),
    Case("gru", 6, 4, 5, 8, reverse=True, lengths=[3, 6, 1, 5], h0=False),
    Case("gru", 7, 5, 9, 33, layout="batch_first"),
    Case("gru", 40, 8, 16, 32),
]


# ---------------------------------------------------------------------------------------
# Without options: float64 tight, the low-precision dtypes by the 2x rule
# ---------------------------------------------------------------------------------------


def test_cuda_is_built():
    assert fusedrnn._C.cuda_built


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_float64_matches_reference_and_cpu(case):
    tensors = case.tensors(F64)
    ours = case.run(OPS[case.kind], CUDA, tensors)
    assert_tight(ours, case.run(REFERENCE[case.kind], CPU, tensors))
    assert_tight(ours, case.run(OPS[case.kind], CPU, tensors))


@pytest.mark.parametrize("dtype", [F32, F16, BF16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_precision_like_torchnn(case, dtype):
    tensors = case.tensors(dtype)
    ours = case.run(OPS[case.kind], CUDA, tensors)
    assert all(v.dtype == dtype for v in ours.values())
    theirs = case.run(nn_layer(case.kind), CUDA, tensors)
    ref64 = case.run(REFERENCE[case.kind], CPU, cast(tensors, F64))
    assert_close_by_reference(ours, theirs, ref64, FLOORS[dtype])


# ---------------------------------------------------------------------------------------
# Clipping, truncation, cell clip: against the reference with the option active
# ---------------------------------------------------------------------------------------

OPTIONS = {
    "value": dict(grad_clip=0.05),
    "norm": dict(grad_clip=0.1, grad_clip_mode="norm"),
    "trunc2": dict(truncate=2),
    "trunc4": dict(truncate=4),
    "cell_clip": dict(cell_clip=0.3),
    "value_trunc3": dict(grad_clip=0.05, truncate=3),
    "norm_cell_trunc1": dict(grad_clip=0.1, grad_clip_mode="norm", cell_clip=0.3, truncate=1),
}
OPTION_CASES = [
    pytest.param(Case(kind, 6, 4, 3, 5, P, reverse=reverse, lengths=lengths, weight_scale=3.0,
                      input_scale=2.0), name, id=f"{kind}{'-proj' if P else ''}-{name}"
                 f"{'-reverse' if reverse else ''}{'-lengths' if lengths else ''}")
    for kind, P in (("lstm", 0), ("lstm", 2), ("gru", 0))
    for name in OPTIONS if not (kind == "gru" and "cell_clip" in OPTIONS[name])
    for reverse, lengths in ((False, None), (True, [3, 6, 1, 5]))
]


@pytest.mark.parametrize("case, name", OPTION_CASES)
def test_options_match_reference(case, name):
    options = OPTIONS[name]
    t64 = case.tensors(F64)
    ours = case.run(OPS[case.kind], CUDA, t64, **options)
    ref64 = case.run(REFERENCE[case.kind], CPU, t64, **options)
    assert_tight(ours, ref64)
    # The option is active: the comparison cannot pass vacuously.
    assert max_diff(ours, case.run(OPS[case.kind], CUDA, t64)) > 1e-3
    t32 = case.tensors(F32)
    ours32 = case.run(OPS[case.kind], CUDA, t32, **options)
    theirs32 = case.run(REFERENCE[case.kind], CUDA, t32, **options)
    assert_close_by_reference(ours32, theirs32, case.run(REFERENCE[case.kind], CPU,
                                                         cast(t32, F64), **options), FLOOR32)


@pytest.mark.parametrize("dtype", [F16, BF16], ids=str)
@pytest.mark.parametrize("kind, name", [("lstm", "norm_cell_trunc1"), ("gru", "value_trunc3")])
def test_options_half_types_like_reference(kind, name, dtype):
    case = Case(kind, 6, 4, 3, 5, lengths=[3, 6, 1, 5], weight_scale=3.0, input_scale=2.0)
    options = OPTIONS[name]
    tensors = case.tensors(dtype)
    ours = case.run(OPS[kind], CUDA, tensors, **options)
    theirs = case.run(REFERENCE[kind], CUDA, tensors, **options)
    ref64 = case.run(REFERENCE[kind], CPU, cast(tensors, F64), **options)
    assert_close_by_reference(ours, theirs, ref64, FLOORS[dtype])


@pytest.mark.parametrize("mode", ["value", "norm"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_clip_bounds_h0_gradient(kind, mode):
    v = 0.01
    case = Case(kind, 5, 3, 4, 6, weight_scale=3.0)
    result = case.run(OPS[kind], CUDA, case.tensors(F64), grad_clip=v, grad_clip_mode=mode)
    for name in ("grad_h0", "grad_c0"):
        if name in result:
            g = result[name]
            bound = g.abs().amax(dim=1) if mode == "value" else g.norm(dim=1)
            assert (bound <= v * (1 + 1e-12)).all()
            assert (bound > v / 2).any()


# ---------------------------------------------------------------------------------------
# Packed input, gradient records: the CUDA and CPU kernels agree
# ---------------------------------------------------------------------------------------


def packed_run(kind, device, dtype, *, P=0, reverse=False, track=False, **options):
    """Op on packed data (lengths 7, 3, 5, 1, 7 -> batch_sizes); returns CPU results, the
    gradient record included (None without track)."""
    T, B, I, H = 7, 5, 4, 6
    tensors = make_tensors(kind, T, B, I, H, P, dtype=dtype, weight_scale=3.0)
    leaves = {n: v.to(device).requires_grad_(True) for n, v in tensors.items()}
    packed = pack_padded_sequence(leaves["input"], torch.tensor([7, 3, 5, 1, 7]),
                                  enforce_sorted=False)
    order = packed.sorted_indices.to(device)
    args = dict(leaves)
    args["input"] = packed.data
    for name in ("h0", "c0"):
        if name in args:
            args[name] = args[name].index_select(0, order)
    record = ops.new_grad_record(len(packed.batch_sizes), device=device) if track else None
    outputs = call_layer(OPS[kind], kind, args, batch_sizes=packed.batch_sizes,
                         reverse=reverse, grad_record=record, **options)
    inputs = list(leaves.values()) + ([record] if track else [])
    grads = torch.autograd.grad(outputs, inputs, upstream(outputs))
    result = {f"out{i}": o.detach().cpu() for i, o in enumerate(outputs)}
    result.update({"grad_" + n: g.cpu() for n, g in zip(leaves, grads)})
    return result, (grads[-1].cpu() if track else None)


@pytest.mark.parametrize("options", [dict(), dict(grad_clip=0.02, truncate=2),
                                     dict(grad_clip=0.05, grad_clip_mode="norm", truncate=3)],
                         ids=["plain", "value_trunc", "norm_trunc"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("kind, P", [("lstm", 0), ("lstm", 3), ("gru", 0)],
                         ids=["lstm", "lstm_proj", "gru"])
def test_packed_and_records_match_cpu(kind, P, reverse, options):
    ours, rec = packed_run(kind, CUDA, F64, P=P, reverse=reverse, track=True, **options)
    cpu, rec_cpu = packed_run(kind, CPU, F64, P=P, reverse=reverse, track=True, **options)
    assert_tight(ours, cpu)
    assert rec.dtype == F32 and rec.shape == rec_cpu.shape
    torch.testing.assert_close(rec, rec_cpu, rtol=1e-6, atol=1e-7)
    assert rec[0].abs().sum() > 0  # something was recorded
    # float32: records equal the CPU's to float32 rounding.
    ours32, rec32 = packed_run(kind, CUDA, F32, P=P, reverse=reverse, track=True, **options)
    torch.testing.assert_close(rec32, rec_cpu, rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [F16, BF16], ids=str)
def test_records_of_half_types(dtype):
    """Half types record in float32 (not in the dtype): close to the float64 record."""
    _, rec = packed_run("lstm", CUDA, dtype, track=True, grad_clip=0.05, grad_clip_mode="norm")
    _, rec64 = packed_run("lstm", CUDA, F64, track=True, grad_clip=0.05, grad_clip_mode="norm")
    torch.testing.assert_close(rec[0], rec64[0], rtol=0.1, atol=1e-2)


# ---------------------------------------------------------------------------------------
# Modules: multi-layer, bidirectional, projection, packed, batch_first
# ---------------------------------------------------------------------------------------

MODULE_CONFIGS = [
    ("lstm", dict(num_layers=2, bidirectional=True, proj_size=3), "padded"),
    ("lstm", dict(num_layers=2, bidirectional=True), "packed"),
    ("lstm", dict(num_layers=1, bidirectional=True, batch_first=True), "padded"),
    ("gru", dict(num_layers=2, bidirectional=True), "packed"),
    ("gru", dict(num_layers=3, bidirectional=False, batch_first=True), "padded"),
]


def module_run(module, kind, x, lengths, layout, device):
    """Forward + backward of a sequence module; CPU results: outputs, input grad, params."""
    params = dict(module.named_parameters())
    leaf = x.detach().to(device).requires_grad_(True)
    data = leaf.transpose(0, 1) if module.batch_first else leaf
    if layout == "packed":
        data = pack_padded_sequence(data, lengths, batch_first=module.batch_first,
                                    enforce_sorted=False)
    out, state = module(data)
    states = state if kind == "lstm" else (state,)
    outs = ((out.data if isinstance(out, PackedSequence) else out),) + tuple(states)
    grads = torch.autograd.grad(outs, [leaf] + list(params.values()), upstream(outs))
    result = {f"out{i}": o.detach().cpu() for i, o in enumerate(outs)}
    result["grad_input"] = grads[0].cpu()
    result.update({"grad_" + n: g.cpu() for n, g in zip(params, grads[1:])})
    return result


@pytest.mark.parametrize("kind, config, layout", MODULE_CONFIGS,
                         ids=[f"{k}-{layout}-{'-'.join(f'{a}{v}' for a, v in c.items())}"
                              for k, c, layout in MODULE_CONFIGS])
def test_modules_like_torchnn(kind, config, layout):
    T, B, I, H = 6, 4, 5, 7
    lengths = torch.tensor([6, 2, 4, 5])
    cls = {"lstm": (fusedrnn.LSTM, torch.nn.LSTM), "gru": (fusedrnn.GRU, torch.nn.GRU)}[kind]
    torch.manual_seed(0)
    ours = cls[0](I, H, dtype=F64, **config)
    ref = cls[1](I, H, dtype=F64, **config)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(T, B, I, dtype=F64)  # time-major; module_run transposes for batch_first
    want = module_run(ref, kind, x, lengths, layout, CPU)
    assert_tight(module_run(ours.to(CUDA), kind, x, lengths, layout, CUDA), want)
    # float32: 2x rule against cuDNN; the reference sees the float32-rounded values.
    ours32 = ours.to(F32)
    ref32 = cls[1](I, H, dtype=F32, device=CUDA, **config)
    ref32.load_state_dict(ours32.state_dict())
    ref.load_state_dict({k: v.double() for k, v in ours32.state_dict().items()})
    x32 = x.to(F32)
    assert_close_by_reference(module_run(ours32, kind, x32, lengths, layout, CUDA),
                              module_run(ref32, kind, x32, lengths, layout, CUDA),
                              module_run(ref, kind, x32.double(), lengths, layout, CPU), FLOOR32)


# ---------------------------------------------------------------------------------------
# gradcheck, streams, determinism, autocast, bad input
# ---------------------------------------------------------------------------------------

GRADCHECK = [
    ("lstm", 0, dict()),
    ("lstm", 2, dict(reverse=True, lengths=[4, 2], cell_clip=0.3)),
    ("lstm", 0, dict(grad_clip=1e30, grad_clip_mode="norm", truncate=5, lengths=[2, 4])),
    ("gru", 0, dict()),
    ("gru", 0, dict(reverse=True, lengths=[4, 2], grad_clip=1e30)),
]


@pytest.mark.parametrize("kind, P, options", GRADCHECK,
                         ids=[f"{k}-P{p}-{'_'.join(o) or 'plain'}" for k, p, o in GRADCHECK])
def test_gradcheck(kind, P, options):
    options = dict(options)
    if "lengths" in options:
        options["lengths"] = torch.tensor(options["lengths"])
    tensors = make_tensors(kind, 4, 2, 3, 3, P, input_scale=2.0)
    names = list(tensors)
    leaves = [tensors[n].to(CUDA).requires_grad_(True) for n in names]

    def fn(*args):
        return call_layer(OPS[kind], kind, dict(zip(names, args)), **options)

    assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_non_default_stream(kind):
    """Everything runs on the caller's current stream: inputs produced on a side stream
    after a long sleep there are read only once they are ready."""
    case = Case(kind, 12, 16, 24, 64, lengths=list(range(12, 4, -1)) * 2, weight_scale=3.0)
    tensors = case.tensors(F32)
    options = dict(grad_clip=0.05, grad_clip_mode="norm", truncate=5)
    want = case.run(OPS[kind], CUDA, tensors, **options)
    on_device = {n: v.to(CUDA) for n, v in tensors.items()}
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.cuda._sleep(50_000_000)  # tens of ms of GPU time on this stream only
        # Written on the side stream after the sleep: a kernel launched on any other stream
        # would read them before they exist.
        late = {n: v * 1 for n, v in on_device.items()}
        got = case.run(OPS[kind], CUDA, late, **options)  # .cpu() waits for this stream
    torch.cuda.current_stream().wait_stream(stream)
    # Not bitwise: cuBLAS may pick another algorithm on another stream. A kernel on the wrong
    # stream reads unwritten memory, far outside this tolerance.
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_deterministic(kind):
    """Two runs give bitwise equal results (no atomics, fixed-order reductions)."""
    case = Case(kind, 20, 33, 17, 300, 0, lengths=[20 - i % 13 for i in range(33)],
                weight_scale=3.0)
    tensors = case.tensors(F32)
    options = dict(grad_clip=0.1, grad_clip_mode="norm", truncate=7)
    first = case.run(OPS[kind], CUDA, tensors, **options)
    second = case.run(OPS[kind], CUDA, tensors, **options)
    for name in first:
        assert torch.equal(first[name], second[name]), name


@pytest.mark.parametrize("dtype", [F16, BF16], ids=str)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_autocast_like_torchnn(kind, dtype):
    """Under torch.autocast("cuda") the modules run in the autocast dtype: outputs in that
    dtype, gradients of the float32 parameters and input in float32, errors by the 2x rule.

    The error baseline is torch.nn run in the dtype itself (weights and input rounded as
    autocast rounds them): torch.nn's own autocast path for cuDNN RNNs casts to float16
    whatever the autocast dtype (at::autocast::_cudnn_rnn_cast_reflatten)."""
    T, B, I, H = 8, 4, 6, 16
    cls = {"lstm": (fusedrnn.LSTM, torch.nn.LSTM), "gru": (fusedrnn.GRU, torch.nn.GRU)}[kind]
    torch.manual_seed(1)
    ours = cls[0](I, H, num_layers=2, device=CUDA)
    x = torch.randn(T, B, I)
    with torch.autocast("cuda", dtype=dtype):
        got = module_run(ours, kind, x, None, "padded", CUDA)
    assert got["out0"].dtype == dtype and got["out1"].dtype == dtype
    assert got["grad_input"].dtype == F32 and got["grad_weight_ih_l0"].dtype == F32
    rounded = {k: v.to(dtype) for k, v in ours.state_dict().items()}
    theirs = cls[1](I, H, num_layers=2, device=CUDA, dtype=dtype)
    theirs.load_state_dict(rounded)
    base = module_run(theirs, kind, x.to(dtype), None, "padded", CUDA)
    ref = cls[1](I, H, num_layers=2, dtype=F64)
    ref.load_state_dict({k: v.double() for k, v in rounded.items()})
    ref64 = module_run(ref, kind, x.to(dtype).double(), None, "padded", CPU)
    # Gradients of ours are float32 (autocast casts back), torch.nn's are in the dtype:
    # compare both in float64 (the rule measures errors in float64 anyway).
    assert_close_by_reference({k: v.double() for k, v in got.items()},
                              {k: v.double() for k, v in base.items()}, ref64, FLOORS[dtype])


def test_mixed_devices_raise():
    tensors = {n: v.to(CUDA) for n, v in make_tensors("lstm", 3, 2, 3, 4, dtype=F32).items()}
    for name in ("weight_hh", "h0", "bias_ih"):
        bad = dict(tensors)
        bad[name] = bad[name].cpu()
        with pytest.raises(RuntimeError, match="same device"):
            call_layer(ops.lstm_layer, "lstm", bad)
    gru = {n: v.to(CUDA) for n, v in make_tensors("gru", 3, 2, 3, 4, dtype=F32).items()}
    gru["input"] = gru["input"].cpu()
    with pytest.raises(RuntimeError, match="same device"):
        call_layer(ops.gru_layer, "gru", gru)


def test_unsupported_dtype_raises():
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("no float8 in this torch")
    t = {n: v.to(CUDA) for n, v in make_tensors("gru", 3, 2, 3, 4, dtype=F32).items()}
    t = {n: v.to(torch.float8_e4m3fn) for n, v in t.items()}
    with pytest.raises((TypeError, RuntimeError)):
        call_layer(ops.gru_layer, "gru", t)
