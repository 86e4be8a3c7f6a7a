"""float32 weight gradients on the backward engine's micro-kernel (Note [Weight gradients on
the engine kernel]) against the BLAS path, torch.nn and float64: every layout that reaches
outer_sum (padded, packed, reverse, h0, projection), sizes off the kernel's blocks (R not a
multiple of 16, G not a multiple of the 6-row tile, K off the 128-row k-block), and the
thread count, which must not change a bit.
"""
import sys

import pytest
import torch

from fusedrnn import _C, ops
from helpers import (FLOOR32, TORCHNN, assert_close_by_reference, cast, forward_backward,
                     intel_cpu, make_tensors)

F32, F64 = torch.float32, torch.float64
OPS = {"lstm": ops.lstm_layer, "gru": ops.gru_layer}
WEIGHT_GRAD_RUN = 11  # index into _C._engine_runs()
INPUT_GRAD_RUN = 12


@pytest.fixture
def backend():
    old, threads = _C._weight_grad(), torch.get_num_threads()
    yield _C._set_weight_grad
    _C._set_weight_grad(old)
    torch.set_num_threads(threads)


def _run(kind, tensors, **kw):
    before = _C._engine_runs()[WEIGHT_GRAD_RUN]
    out = forward_backward(OPS[kind], kind, tensors, **kw)
    return out, _C._engine_runs()[WEIGHT_GRAD_RUN] - before


# (T, B, I, H, P): K = T*B rows from 60 (under one k-block) to 1000 (k-blocks of 128 and a
# tail); H = 23, 33, 129 (R off 16, G = 4H / 3H off 6); I = 1 and 200; projection P; and
# I = 32, R = 48, whole 16-column panels on both sides, where the LSTM's one product writes
# dW_ih and dW_hh in place.
SHAPES = [(60, 1, 200, 129, 0), (125, 8, 1, 33, 0), (37, 27, 13, 23, 0), (50, 20, 40, 64, 24),
          (9, 111, 7, 96, 0), (33, 9, 32, 48, 0)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("layout", ["padded", "packed_reverse_h0", "lengths_h0"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}P{}".format(*s))
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_engine_and_blas_match_torchnn(backend, kind, shape, layout, threads):
    T, B, I, H, P = shape
    if kind == "gru" and P:
        pytest.skip("GRU has no projection")
    torch.set_num_threads(threads)
    tensors = make_tensors(kind, T, B, I, H, P, h0=layout != "padded", dtype=F32)
    kw = {}
    if layout != "padded":
        # (LSTM: dW_ih and dW_hh are one product, Note [One product for the LSTM weight
        # gradients], which pairs each row with its previous state itself.)
        lengths = torch.tensor([T] + [1 + (5 * b) % T for b in range(1, B)])
        kw = dict(reverse=layout == "packed_reverse_h0", lengths=lengths)
    theirs = forward_backward(TORCHNN[kind], kind, tensors, **kw)
    ref64 = forward_backward(TORCHNN[kind], kind, cast(tensors, F64), **kw)
    results = {}
    for name in ("engine", "blas"):
        backend(name)
        results[name], runs = _run(kind, tensors, **kw)
        # LSTM: dW_ih, dW_hh (and dW_hr); GRU: dW_ih, dW_hh. Small products stay off the
        # engine, so blas never counts and engine counts at least the dW_hh product here.
        if name == "blas":
            assert runs == 0
        else:
            assert runs >= 1, "no weight gradient ran on the engine"
        assert_close_by_reference(results[name], theirs, ref64, FLOOR32)
    # The input gradient runs on the engine too (Note [Input gradients on the engine
    # kernel], and with I <= 8 Note [Thin input gradients]); everything else must not notice
    # the switch.
    changed = ("grad_weight", "grad_bias", "grad_input")
    for key in results["engine"]:
        if not key.startswith(changed):
            assert torch.equal(results["engine"][key], results["blas"][key]), key


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("I", [30, 3], ids=["I30", "I3_thin"])
def test_bitwise_for_any_thread_count(backend, kind, I):
    backend("engine")
    # I = 3: dW_ih on ThinOuter, the input gradient on ThinRows
    tensors = make_tensors(kind, 64, 9, I, 129, 0, dtype=F32)
    first = None
    for threads in (2, 1, 3, 2):
        torch.set_num_threads(threads)
        before = _C._engine_runs()[INPUT_GRAD_RUN]
        out, runs = _run(kind, tensors)
        assert runs >= 2
        assert _C._engine_runs()[INPUT_GRAD_RUN] - before == 1
        if first is None:
            first = out
        for key in first:
            if key.startswith(("grad_weight", "grad_input")):
                assert torch.equal(out[key], first[key]), (threads, key)


def test_float64_and_backend_names(backend):
    tensors = make_tensors("lstm", 64, 9, 30, 129, 0, dtype=F64)
    backend("engine")
    _, runs = _run("lstm", tensors)
    assert runs == 0  # float64 stays with BLAS
    assert backend("blas") == "blas" and _C._weight_grad() == "blas"
    assert backend("auto") == "auto" and _C._weight_grad() == "auto"
    with pytest.raises(ValueError, match="'auto', 'engine' or 'blas'"):
        backend("mkl")


def test_super_blocks_keep_the_bits(backend, threads):
    """The engine sums a long K in super-blocks sized by the thread's rows (bwd_engine_impl.h,
    gemm_impl): 1, 2 and 3 threads give different super-blocks but each output the same
    k-block order, so the same bits; and the result is a^T b to float32 accuracy."""
    backend("engine")
    g = torch.Generator().manual_seed(5)
    # The second: at 2 threads the 244-row task would get a longer super-block than the
    # 272-row one its copy of a was sized for (gemm_impl shortens it).
    for K, G, R in ((5000, 600, 200), (597, 516, 129)):
        a = torch.randn(K, G, generator=g)
        b = torch.randn(K, R, generator=g)
        first = None
        for n in (1, 2, 3):
            threads(n)
            out = _C._outer_sum(a, b)
            if first is None:
                first = out
            assert torch.equal(out, first), n
        exact = a.double().t() @ b.double()
        assert (first.double() - exact).abs().max() < 1e-4 * exact.abs().max()


@pytest.mark.parametrize("cap", ["default", "avx2", "avx512"])
def test_packing_a_keeps_the_bits(backend, threads, cpu_capability, cap):
    """The engine copies a tile by tile where several panel groups read it (bwd_engine_impl.h,
    pack_by_columns) and reads it in place where one group does: both sum each output the
    same way, so the 16 columns of a narrow product (one panel: in place) are bitwise the
    first 16 of a wide one (several groups: copied), on every capability and with tiles
    cut at 1 and 2 threads."""
    cpu_capability(cap)
    backend("engine")
    g = torch.Generator().manual_seed(8)
    a = torch.randn(700, 301, generator=g)  # K off the k-block, G off the 6-row tile
    b = torch.randn(700, 160, generator=g)
    for n in (1, 2):
        threads(n)
        narrow = _C._outer_sum(a, b[:, :16].contiguous())
        wide = _C._outer_sum(a, b)
        assert torch.equal(wide[:, :16], narrow), n
        exact = a.double().t() @ b.double()
        assert (wide.double() - exact).abs().max() < 1e-4 * exact.abs().max()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/cpuinfo")
def test_auto_keeps_large_products_with_blas_on_intel_only(backend):
    """auto (the default): the engine's kernels, except products of 2^27 multiply-adds or
    more with at least 512 columns on Intel CPUs (bwd_engine.cpp, kBlasMacsOnIntel and
    kBlasMinROnIntel), which BLAS runs; narrower large products and ThinOuter's always run
    here."""
    g = torch.Generator().manual_seed(6)
    wide_a, wide_b = torch.randn(512, 512, generator=g), torch.randn(512, 512, generator=g)
    big_a, big_b = torch.randn(1024, 1024, generator=g), torch.randn(1024, 160, generator=g)
    small_a, small_b = torch.randn(512, 256, generator=g), torch.randn(512, 64, generator=g)
    thin_a, thin_b = torch.randn(4096, 1024, generator=g), torch.randn(4096, 3, generator=g)
    results = {}
    for name in ("engine", "blas", "auto"):
        backend(name)
        before = _C._engine_runs()[WEIGHT_GRAD_RUN]
        results[name] = [_C._outer_sum(a, b) for a, b in
                         ((wide_a, wide_b), (big_a, big_b), (small_a, small_b),
                          (thin_a, thin_b))]
        results[name + "_runs"] = _C._engine_runs()[WEIGHT_GRAD_RUN] - before
    assert results["engine_runs"] == 4 and results["blas_runs"] == 0
    wide, big, small, thin = results["auto"]
    assert not torch.equal(results["engine"][0], results["blas"][0])  # tells them apart
    expect_wide = results["blas"][0] if intel_cpu() else results["engine"][0]
    assert torch.equal(wide, expect_wide)
    assert torch.equal(big, results["engine"][1])
    assert torch.equal(small, results["engine"][2])
    assert torch.equal(thin, results["engine"][3])
    assert results["auto_runs"] == (3 if intel_cpu() else 4)


@pytest.mark.parametrize("cap", ["default", "avx2", "avx512"])
@pytest.mark.parametrize("M,K,N", [(1, 520, 9), (131, 260, 33), (700, 1024, 64), (97, 53, 130)])
def test_input_gradient_on_the_engine(backend, threads, cpu_capability, cap, M, K, N):
    """_C._rows_times (the input gradient dgates W_ih) on the engine's micro-kernel, past the
    direct loops (over 4096 multiply-adds): a w to float32 accuracy with M off the row tile,
    K off the k-block and N off the 16-column panel, bitwise the same at 1, 2 and 3 threads,
    on every capability."""
    cpu_capability(cap)
    backend("engine")
    g = torch.Generator().manual_seed(M + K + N)
    a, w = torch.randn(M, K, generator=g), torch.randn(K, N, generator=g)
    exact = a.double() @ w.double()
    first = None
    for n in (1, 2, 3):
        threads(n)
        before = _C._engine_runs()[INPUT_GRAD_RUN]
        out = _C._rows_times(a, w)
        assert _C._engine_runs()[INPUT_GRAD_RUN] - before == 1
        assert out.shape == (M, N) and out.is_contiguous()
        first = out if first is None else first
        assert torch.equal(out, first), n
    bound = 4 * K * torch.finfo(torch.float32).eps * (a.double().abs() @ w.double().abs())
    assert ((first.double() - exact).abs() <= bound).all()


@pytest.mark.parametrize("cap", ["default", "avx2", "avx512"])
@pytest.mark.parametrize("M,K,N", [(1, 7, 1), (5, 13, 3), (97, 260, 1), (700, 1024, 8),
                                   (2048, 256, 1), (333, 96, 5)])
def test_thin_input_gradient(backend, threads, cpu_capability, cap, M, K, N):
    """_C._rows_times with at most 8 columns (the input gradient of a layer with 1-8 inputs,
    Note [Thin input gradients]) on ThinRows, in auto and engine mode: float32 accuracy with
    K below, off and past the vector width, bitwise the same at 1, 2 and 3 threads, on every
    capability; "blas" gives the same values to float32 accuracy."""
    cpu_capability(cap)
    g = torch.Generator().manual_seed(M + K + N)
    a, w = torch.randn(M, K, generator=g), torch.randn(K, N, generator=g)
    exact = a.double() @ w.double()
    bound = 4 * K * torch.finfo(torch.float32).eps * (a.double().abs() @ w.double().abs())
    first = None
    for mode in ("auto", "engine"):
        backend(mode)
        for n in (1, 2, 3):
            threads(n)
            before = _C._engine_runs()[INPUT_GRAD_RUN]
            out = _C._rows_times(a, w)
            if M * K * N > 4096:  # past the direct loops
                assert _C._engine_runs()[INPUT_GRAD_RUN] - before == 1
            assert out.shape == (M, N) and out.is_contiguous()
            first = out if first is None else first
            assert torch.equal(out, first), (mode, n)
    assert ((first.double() - exact).abs() <= bound).all()
    backend("blas")
    assert ((_C._rows_times(a, w).double() - exact).abs() <= bound).all()


def test_auto_input_gradient_path(backend, threads):
    """auto: on every CPU the engine for products of at least 512 rows and at most 64
    columns whose rows of a fit 2 MiB per thread; outside that at::mm on Intel CPUs and
    rows_times' oneDNN / at::mm elsewhere. Thin ones (at most 8 columns) take ThinRows on
    every CPU (Note [Thin input gradients]); float64 never takes the engine, "blas" never
    does."""
    threads(2)
    g = torch.Generator().manual_seed(9)
    cases = {"small": (torch.randn(1024, 1024, generator=g), torch.randn(1024, 64, generator=g)),
             "tall": (torch.randn(4096, 1024, generator=g), torch.randn(1024, 64, generator=g)),
             "wide": (torch.randn(512, 256, generator=g), torch.randn(256, 96, generator=g)),
             "short": (torch.randn(97, 256, generator=g), torch.randn(256, 64, generator=g)),
             "thin": (torch.randn(1024, 1024, generator=g), torch.randn(1024, 8, generator=g))}
    expect = {"small": True, "tall": False, "wide": False, "short": False,
              "thin": True}
    for name, (a, w) in cases.items():
        for mode, want in (("auto", expect[name]), ("blas", False)):
            backend(mode)
            before = _C._engine_runs()[INPUT_GRAD_RUN]
            out = _C._rows_times(a, w)
            assert (_C._engine_runs()[INPUT_GRAD_RUN] - before == 1) == want, (name, mode)
            exact = a.double() @ w.double()
            assert (out.double() - exact).abs().max() < 1e-4 * exact.abs().max()
    backend("engine")
    before = _C._engine_runs()[INPUT_GRAD_RUN]
    _C._rows_times(cases["small"][0].double(), cases["small"][1].double())
    assert _C._engine_runs()[INPUT_GRAD_RUN] == before
