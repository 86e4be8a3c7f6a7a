"""What only CUDA has, skipped without a GPU: float16 / bfloat16 kernels, gradient records of
packed input against the CPU kernels', autocast, streams, mixed devices.

The float64 and float32 parity, option, gradcheck, module and determinism tests are the shared
ones, run on CUDA through the ``device`` fixture (conftest.py): test_ops.py, test_clipping.py,
test_modules.py, test_determinism.py (select them with ``-k cuda``).

Yardsticks, as for the CPU (docs/design.md §4, "tolerance by comparison"):

* float16 and bfloat16 follow the 2x rule: max|ours - ref64| <= 2 * max|torch.nn -
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
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fusedrnn
import fusedrnn.ops as ops
from helpers import (
    FLOOR32,
    OPS,
    REFERENCE,
    TORCHNN,
    Case,
    assert_close_by_reference,
    assert_tight,
    call_layer,
    cast,
    make_tensors,
    relative_floor,
    upstream_grads,
)

# FUSEDRNN_REQUIRE_CUDA=1 (tools/gpu/gpu_check.sh) turns the skip into failures: on a GPU
# machine a torch that cannot see the GPU must not pass as "all skipped".
pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("FUSEDRNN_REQUIRE_CUDA", "0") in ("", "0"),
    reason="needs a CUDA GPU")

CUDA = torch.device("cuda")
CPU = torch.device("cpu")
F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
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
# float16 / bfloat16 without options, by the 2x rule
# ---------------------------------------------------------------------------------------


def test_cuda_is_built():
    assert fusedrnn._C.cuda_built


@pytest.mark.parametrize("dtype", [F16, BF16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_precision_like_torchnn(case, dtype):
    tensors = case.tensors(dtype)
    ours = case.run(OPS[case.kind], tensors=tensors, device=CUDA)
    assert all(v.dtype == dtype for v in ours.values())
    theirs = case.run(TORCHNN[case.kind], tensors=tensors, device=CUDA)
    ref64 = case.run(REFERENCE[case.kind], tensors=cast(tensors, F64), device=CPU)
    assert_close_by_reference(ours, theirs, ref64, FLOORS[dtype])


# ---------------------------------------------------------------------------------------
# float16 / bfloat16 with clipping, truncation, cell clip: against the reference
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
@pytest.mark.parametrize("dtype", [F16, BF16], ids=str)
@pytest.mark.parametrize("kind, name", [("lstm", "norm_cell_trunc1"), ("gru", "value_trunc3")])
def test_options_half_types_like_reference(kind, name, dtype):
    case = Case(kind, 6, 4, 3, 5, lengths=[3, 6, 1, 5], weight_scale=3.0, input_scale=2.0)
    options = OPTIONS[name]
    tensors = case.tensors(dtype)
    ours = case.run(OPS[kind], tensors=tensors, device=CUDA, **options)
    theirs = case.run(REFERENCE[kind], tensors=tensors, device=CUDA, **options)
    ref64 = case.run(REFERENCE[kind], tensors=cast(tensors, F64), device=CPU, **options)
    assert_close_by_reference(ours, theirs, ref64, FLOORS[dtype])


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
    grads = torch.autograd.grad(outputs, inputs, upstream_grads(outputs))
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
# Modules: running one on CUDA (for autocast below)
# ---------------------------------------------------------------------------------------

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
    grads = torch.autograd.grad(outs, [leaf] + list(params.values()), upstream_grads(outs))
    result = {f"out{i}": o.detach().cpu() for i, o in enumerate(outs)}
    result["grad_input"] = grads[0].cpu()
    result.update({"grad_" + n: g.cpu() for n, g in zip(params, grads[1:])})
    return result


# ---------------------------------------------------------------------------------------
# Streams, autocast, bad input
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_non_default_stream(kind):
    """Everything runs on the caller's current stream: inputs produced on a side stream
    after a long sleep there are read only once they are ready."""
    case = Case(kind, 12, 16, 24, 64, lengths=list(range(12, 4, -1)) * 2, weight_scale=3.0)
    tensors = case.tensors(F32)
    options = dict(grad_clip=0.05, grad_clip_mode="norm", truncate=5)
    want = case.run(OPS[kind], tensors=tensors, device=CUDA, **options)
    on_device = {n: v.to(CUDA) for n, v in tensors.items()}
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.cuda._sleep(50_000_000)  # tens of ms of GPU time on this stream only
        # Written on the side stream after the sleep: a kernel launched on any other stream
        # would read them before they exist.
        late = {n: v * 1 for n, v in on_device.items()}
        # .cpu() in forward_backward waits for this stream
        got = case.run(OPS[kind], tensors=late, device=CUDA, **options)
    torch.cuda.current_stream().wait_stream(stream)
    # Not bitwise: cuBLAS may pick another algorithm on another stream. A kernel on the wrong
    # stream reads unwritten memory, far outside this tolerance.
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


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
