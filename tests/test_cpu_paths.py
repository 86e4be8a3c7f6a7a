"""Every CPU code path computes the same thing: the SIMD capabilities of the pointwise kernels
(AVX-512, AVX2, portable; see Note [CPU capability dispatch] in csrc/cpu/kernels_impl.h) and
both backends of the step GEMMs (oneDNN, BLAS; Note [oneDNN for the step GEMMs]).

Each path is held to the float32 precision rule against a float64 reference (docs/design.md §4),
and the paths must agree with each other to float32 rounding.
"""
import subprocess
import sys

import pytest
import torch

import fusedrnn
from fusedrnn import _C

from helpers import (OPS, REFERENCE, REPO, SUBPROCESS_TIMEOUT_S, TORCHNN, Case, _child_env,
                     assert_close_by_reference, assert_tight)

CAPABILITIES = ["default", "avx2", "avx512"]
BACKENDS = ["onednn", "blas"]


@pytest.fixture
def restore_paths():
    cap, gemm = _C._cpu_capability(), _C._step_gemm()
    yield
    _C._set_cpu_capability(cap)
    _C._set_step_gemm(gemm)


def _run(module, x, gy):
    module.zero_grad()
    x = x.detach().requires_grad_()
    y, state = module(x)
    states = state if isinstance(state, tuple) else (state,)
    loss = (y * gy).sum() + sum((s * 0.7).sum() for s in states)
    loss.backward()
    return [y.detach(), *(s.detach() for s in states), x.grad] + [p.grad for p in module.parameters()]


# (T, B, I, H): H = 37 gives a SIMD body and a scalar tail at every width; the large shape
# makes the step GEMMs big enough (B*4H*H >= 4M multiply-adds) for the oneDNN backend to be
# used at all (Note [oneDNN for the step GEMMs]); "rows" has T*B >= 512 rows, so that the
# all-steps products (input projection, the input gradient of rows_times) take oneDNN too
# where they would (not on Intel CPUs, where products this small take at::addmm and the
# input gradient the engine's kernel: step_linear.cpp, Note [Input gradients on the engine
# kernel]).
SHAPES = {"small": (9, 5, 6, 37), "large": (3, 32, 16, 256), "rows": (20, 32, 16, 256)}


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("capability", CAPABILITIES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_path_matches_reference_and_torchnn(cell, capability, backend, shape, restore_paths):
    if _C._set_cpu_capability(capability) != capability:
        pytest.skip(f"this CPU does not support {capability}")
    if _C._set_step_gemm(backend) != backend:
        pytest.skip(f"this torch build has no {backend}")
    torch.manual_seed(0)
    T, B, I, H = SHAPES[shape]
    ref = getattr(torch.nn, cell)(I, H, num_layers=2, bidirectional=True).double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    gy = torch.randn(T, B, 2 * H, dtype=torch.float64)
    want = _run(ref, x, gy)
    nn32 = getattr(torch.nn, cell)(I, H, num_layers=2, bidirectional=True)
    nn32.load_state_dict(ref.state_dict())
    theirs = _run(nn32, x.float(), gy.float())
    fused = getattr(fusedrnn, cell)(I, H, num_layers=2, bidirectional=True)
    fused.load_state_dict(ref.state_dict())
    ours = _run(fused, x.float(), gy.float())
    for o, t, w in zip(ours, theirs, want):
        assert_close_by_reference(o, t, w, floor=2e-6 * max(1.0, w.abs().max().item()))


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_paths_agree_with_options(cell, restore_paths):
    """All capability x backend combinations give the same float32 results (to rounding) with
    clipping, truncation and packed input, where the option code is exercised per path."""
    torch.manual_seed(1)
    T, B, I, H = 8, 4, 5, 19
    kw = dict(grad_clip=0.02, grad_clip_mode="norm", truncate=3)
    module = getattr(fusedrnn, cell)(I, H, bidirectional=True, **kw)
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(4)  # large weights: the clip is active
    x = torch.randn(T, B, I)
    lengths = torch.tensor([8, 3, 6, 5])
    gy = torch.randn(int(lengths.sum()), 2 * H)

    def run():
        module.zero_grad()
        xx = x.clone().requires_grad_()
        packed = torch.nn.utils.rnn.pack_padded_sequence(xx, lengths, enforce_sorted=False)
        y, _ = module(packed)
        (y.data * gy).sum().backward()
        return [y.data.detach(), xx.grad] + [p.grad.clone() for p in module.parameters()]

    results = {}
    for capability in CAPABILITIES:
        for backend in BACKENDS:
            if _C._set_cpu_capability(capability) == capability and _C._set_step_gemm(backend) == backend:
                results[(capability, backend)] = run()
    assert len(results) >= 2, "at least the portable path with one backend must run"
    base = results[("default", _C._step_gemm())] if ("default", _C._step_gemm()) in results else next(iter(results.values()))
    for key, got in results.items():
        for g, b in zip(got, base):
            torch.testing.assert_close(g, b, rtol=2e-5, atol=2e-5 * max(1.0, b.abs().max().item()),
                                       msg=lambda m: f"path {key}: {m}")


def test_capability_names(restore_paths):
    assert _C._set_cpu_capability("default") == "default"
    with pytest.raises(ValueError, match="avx9"):
        _C._set_cpu_capability("avx9")
    with pytest.raises(ValueError, match="step GEMM"):
        _C._set_step_gemm("cublas")


# Note [Direct products for small calls]: below a multiply-add limit the CPU layer functions
# compute the input projection, the step GEMMs and the gradient products with plain loops.
# Batches on both sides of the limit for the step GEMM (I = H = 16), with the options that
# change which rows a product sees, against torch.nn and the reference in float64.
def _direct_cases():
    macs, rows = _C._direct_product_limits()
    assert rows >= 8
    H = 16
    cases = []
    for kind, G, P in (("lstm", 4, 0), ("lstm", 4, 8), ("gru", 3, 0)):
        b_direct = macs // (G * H * (P or H))
        for B in (b_direct, b_direct + 1):
            lengths = [3] + [1 + b % 3 for b in range(1, B)]
            for reverse in (False, True):
                cases.append(Case(kind, 3, B, H, H, P, reverse=reverse, lengths=lengths))
            cases.append(Case(kind, 1, B, H, H, P))
            cases.append(Case(kind, 2, B, H, H, P, bias=False, h0=False))
    return cases


@pytest.mark.parametrize("case", _direct_cases(), ids=repr)
def test_direct_products_at_the_limit(case):
    ours = case.run(OPS[case.kind])
    assert_tight(ours, case.run(REFERENCE[case.kind]))
    assert_tight(ours, case.run(TORCHNN[case.kind]))


# Note [Chunked input projection]: without a backward, a per-step loop whose input
# projection would be a large buffer computes it a chunk of steps at a time. Sizes past the
# chunking limit (T=48, B=64, H=256: 9-24 MiB of projection), both directions, padded and
# packed; the chunked forward (no grad) must equal the forward that saves everything (grad
# mode: one GEMM over all steps) bitwise, and float64 must match torch.nn.
@pytest.fixture
def steps_loop():
    old = _C._cpu_engine()
    _C._set_cpu_engine("steps")
    yield
    _C._set_cpu_engine(old)


CHUNKED = 8  # index of chunked_projection in _C._engine_runs()


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_chunked_input_projection(cell, dtype, packed, steps_loop):
    from torch.nn.utils.rnn import pack_padded_sequence

    torch.manual_seed(0)
    T, B, I, H = 48, 64, 8, 256
    ours = getattr(fusedrnn, cell)(I, H, bidirectional=True, dtype=dtype)
    x = torch.randn(T, B, I, dtype=dtype)
    lengths = torch.randint(40, T + 1, (B,))
    lengths[0] = T

    def run(inp):
        if packed:
            inp = pack_padded_sequence(inp, lengths, enforce_sorted=False)
        out, state = ours(inp)
        out = out.data if packed else out
        return [out, *(state if isinstance(state, tuple) else (state,))]

    saving = run(x.clone().requires_grad_())
    before = _C._engine_runs()[CHUNKED]
    with torch.no_grad():
        chunked = run(x)
    assert _C._engine_runs()[CHUNKED] - before == 2  # both directions were chunked
    for a, b in zip(chunked, saving):
        assert torch.equal(a, b.detach())
    if dtype == torch.float64:
        nn = getattr(torch.nn, cell)(I, H, bidirectional=True, dtype=dtype)
        nn.load_state_dict(ours.state_dict())
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
        with torch.no_grad():
            out, state = nn(inp)
        want = [out.data if packed else out, *(state if isinstance(state, tuple) else (state,))]
        for a, b in zip(chunked, want):
            assert_tight(a, b)


# The environment variables that set the CPU paths' start values: a valid value takes
# effect, an unknown one raises a ValueError naming the variable at the first call that
# reads it (a typo must not silently run the default). Each case runs in a fresh process:
# the variables are read once per process.
ENV_SETTINGS = [
    ("FUSEDRNN_CPU_ENGINE", "steps", "_cpu_engine"),
    ("FUSEDRNN_CPU_STEP_GEMM", "blas", "_step_gemm"),
    ("FUSEDRNN_WEIGHT_GRAD", "engine", "_weight_grad"),
]


@pytest.mark.parametrize("var,valid,getter", ENV_SETTINGS)
def test_environment_settings(var, valid, getter):
    code = ("import fusedrnn\n"
            f"try:\n    print(fusedrnn._C.{getter}())\n"
            "except ValueError as e:\n    print('ValueError:', e)\n")
    env = {k: v for k, v in _child_env().items() if not k.startswith("FUSEDRNN_")}

    def child(value):
        return subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**env, var: value},
                              capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    good = child(valid)
    assert good.stdout.strip() == valid, good.stdout + good.stderr
    bad = child("typo")
    out = bad.stdout.strip()
    assert out.startswith(f"ValueError: fusedrnn: {var} must be ") and "got 'typo'" in out, \
        out + bad.stderr
