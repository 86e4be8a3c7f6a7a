"""Determinism: bitwise identical results for identical runs (on 1 and 2 threads, and on
the ``device`` fixture's devices), 4 threads against 1, concurrent forward/backward from
several Python threads against sequential calls, the same seeded step in two fresh processes,
a child forked after its parent used the kernels on 2 threads. Child processes run
tests/_reliability_worker.py, with timeouts.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
import _reliability_worker as worker
from helpers import (
    Case,
    F32,
    F64,
    FUSED,
    KINDS,
    OPS,
    REFERENCE,
    _child_env,
    _run_children,
    _state,
    assert_tight,
    run_module,
)


pytestmark = pytest.mark.filterwarnings(
    "ignore:LSTM with projections is not supported with oneDNN:UserWarning")


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


def _seeded_run(kind, options, packed, seed=7):
    """Everything from one seed: module, input, hx, a forward and backward (float32)."""
    torch.manual_seed(seed)
    module = FUSED[kind](16, 48, num_layers=2, bidirectional=True, dtype=F32, **options)
    x = torch.randn(8, 64, 16)
    hx = _state(kind, (4, 64, 48), dtype=F32)
    lengths = torch.randint(1, 9, (64,)).tolist() if packed else None
    return run_module(module, x, hx, lengths)


DETERMINISM_VARIANTS = {  # name -> (options, packed)
    "padded_plain": ({}, False),
    "packed_norm_clip_truncate": (dict(grad_clip=0.05, grad_clip_mode="norm", truncate=3), True),
}


@pytest.mark.parametrize("variant", list(DETERMINISM_VARIANTS))
@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_bitwise_deterministic(kind, num_threads, variant, threads):
    """Two runs with the same seed and thread count give bitwise identical outputs and
    gradients (B = 64, H = 48: large enough for the parallel paths on 2 threads)."""
    options, packed = DETERMINISM_VARIANTS[variant]
    threads(num_threads)
    assert torch.get_num_threads() == num_threads
    first = _seeded_run(kind, options, packed)
    second = _seeded_run(kind, options, packed)
    assert set(first) == set(second)
    for name in first:
        assert torch.equal(first[name], second[name]), name


THREAD_TIMEOUT_S = 60


N_THREADS = 4


def _thread_model(kind, dtype, seed):
    torch.manual_seed(seed)
    if kind == "lstm":
        return fusedrnn.LSTM(6, 16, num_layers=2, dtype=dtype, grad_clip=0.01, truncate=3,
                             proj_size=4 if seed % 2 else 0)
    return fusedrnn.GRU(6, 16, num_layers=2, bidirectional=True, dtype=dtype, grad_clip=0.02,
                        grad_clip_mode="norm", truncate=2)


def _thread_inputs(dtype, seed, B, T=7):
    gen = torch.Generator().manual_seed(1000 + seed)
    x = torch.randn(T, B, 6, generator=gen, dtype=F64).to(dtype)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    lengths[0] = T
    return x, lengths


def _forward_backward(module, x, lengths, packed):
    """Every output and every gradient (input and parameters) of one call, with
    torch.autograd.grad so that nothing accumulates into a shared module's .grad."""
    leaf = x.clone().requires_grad_(True)
    inp = pack_padded_sequence(leaf, lengths, enforce_sorted=False) if packed else leaf
    out, state = module(inp)
    states = list(state) if isinstance(state, tuple) else [state]
    outputs = [out.data if packed else out] + states
    gen = torch.Generator().manual_seed(7)
    upstream = [torch.randn(o.shape, generator=gen, dtype=F64).to(o.dtype) for o in outputs]
    params = list(module.parameters())
    grads = torch.autograd.grad(outputs, [leaf] + params, upstream)
    return [o.detach() for o in outputs] + list(grads)


def _work(jobs):
    """jobs: list of (module, x, lengths, packed) -> list of results."""
    return [_forward_backward(*job) for job in jobs]


def _assert_bitwise(got, expected, what):
    assert len(got) == len(expected), what
    for i, (a, b) in enumerate(zip(got, expected)):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what}[{i}]"
        assert torch.equal(a, b), (f"{what}[{i}]: max |diff| = "
                                   f"{(a.double() - b.double()).abs().max().item():.3e}")


def _concurrent(per_thread_jobs, rounds=3):
    """Run each thread's jobs `rounds` times, all threads released together by a barrier;
    returns per thread the list of per-round results.

    Each thread first sets torch's intra-op thread count to the caller's. Without that a
    fresh thread's first MKL GEMMs run with the machine's default thread count (torch
    applies set_num_threads to a new thread lazily, at its first parallel_for), and e.g.
    torch.mm of [5, 64] x [64, 16]^T then differs from the main thread's in the last bit:
    torch's behaviour, not fusedrnn's."""
    intra_op = torch.get_num_threads()
    barrier = threading.Barrier(len(per_thread_jobs), timeout=THREAD_TIMEOUT_S)

    def run(jobs):
        torch.set_num_threads(intra_op)
        barrier.wait()
        return [_work(jobs) for _ in range(rounds)]

    with ThreadPoolExecutor(max_workers=len(per_thread_jobs)) as pool:
        futures = [pool.submit(run, jobs) for jobs in per_thread_jobs]
        return [f.result(timeout=THREAD_TIMEOUT_S) for f in futures]


def _assert_concurrent_matches_sequential(per_thread):
    """Each thread's jobs run concurrently (every round) give bitwise what they give run one
    after another."""
    sequential = [_work(jobs) for jobs in per_thread]
    concurrent = _concurrent(per_thread)
    for t in range(N_THREADS):
        for r, results in enumerate(concurrent[t]):
            for j, (got, exp) in enumerate(zip(results, sequential[t])):
                _assert_bitwise(got, exp, f"thread {t} round {r} job {j}")


@pytest.mark.parametrize("intra_op", [1, 2])
@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_threads_own_modules_match_sequential(dtype, intra_op, threads):
    """4 Python threads, each with its own LSTM and GRU module and its own inputs, padded and
    packed, concurrently: bitwise what the same calls give one after another. intra_op=2
    with B=64 also runs the kernels' parallel loops from several threads at once."""
    threads(intra_op)
    B = 64 if intra_op > 1 else 5
    per_thread = []
    for t in range(N_THREADS):
        x, lengths = _thread_inputs(dtype, t, B)
        per_thread.append([(_thread_model(kind, dtype, t), x, lengths, packed)
                           for kind in ("lstm", "gru") for packed in (False, True)])
    _assert_concurrent_matches_sequential(per_thread)


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_threads_shared_module_match_sequential(dtype):
    """One LSTM and one GRU shared by 4 threads, each thread with its own inputs."""
    lstm = _thread_model("lstm", dtype, 1)
    gru = _thread_model("gru", dtype, 2)
    per_thread = []
    for t in range(N_THREADS):
        x, lengths = _thread_inputs(dtype, t, 5)
        per_thread.append([(m, x, lengths, packed) for m in (lstm, gru)
                           for packed in (False, True)])
    _assert_concurrent_matches_sequential(per_thread)
    assert all(p.grad is None for p in list(lstm.parameters()) + list(gru.parameters()))


def test_same_results_in_two_fresh_processes(tmp_path):
    """The same seeded forward + backward (LSTM with projection and GRU, bidirectional,
    float32 and float64, padded and packed, clip and truncate) in two fresh processes with
    2 intra-op threads each: bitwise the same outputs and gradients (different address
    space layouts, so alignment-dependent code paths or uninitialised memory would show)."""
    files = [tmp_path / f"run{i}.pt" for i in range(2)]
    _run_children([("determinism", "2", str(f)) for f in files], _child_env(threads=2))
    first, second = (torch.load(f) for f in files)
    assert int(first["_num_threads"]) == int(second["_num_threads"]) == 2
    assert first["_capability"] == second["_capability"]
    assert sorted(first) == sorted(second)
    keys = [k for k in first if not k.startswith("_")]
    assert len(keys) > 40
    for key in keys:
        assert torch.equal(first[key], second[key]), key
    # and the same results in this process on 2 threads
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        here = worker.determinism_results()
    finally:
        torch.set_num_threads(torch_threads)
    for key in keys:
        assert torch.equal(here[key], first[key]), key


def test_forked_child_after_parallel_use(tmp_path):
    """A child forked (as DataLoader workers are) after its parent ran the kernels on 2
    intra-op threads computes bitwise what the parent computes on 1 thread: no state of
    fusedrnn's (kernel tables, oneDNN weight packing, thread pools) is broken by fork.
    Parent and child are a fresh process and its fork (_reliability_worker.py fork), not
    pytest's process with whatever threads earlier tests left running."""
    _run_children([("fork", str(tmp_path))], _child_env(threads=2))
    expected = torch.load(tmp_path / "parent.pt")
    got = torch.load(tmp_path / "child.pt")
    assert len(expected) > 20
    _assert_bitwise(got, expected, "forked child")


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_deterministic(kind, device):
    """Two runs give bitwise equal results (no atomics, fixed-order reductions)."""
    case = Case(kind, 20, 33, 17, 300, 0, lengths=[20 - i % 13 for i in range(33)],
                weight_scale=3.0)
    tensors = case.tensors(F32)
    options = dict(grad_clip=0.1, grad_clip_mode="norm", truncate=7)
    first = case.run(OPS[kind], tensors=tensors, device=device, **options)
    second = case.run(OPS[kind], tensors=tensors, device=device, **options)
    for name in first:
        assert torch.equal(first[name], second[name]), name
