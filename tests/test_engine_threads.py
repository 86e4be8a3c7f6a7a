"""The CPU time-loop engine under concurrency (Note [Thread team] in csrc/cpu/team.h): calls
from inside another parallel region and from several Python threads at once neither
deadlock nor change a result, on 1 and 2 intra-op threads.

Each test forces the engine (``_C._set_cpu_engine("engine")``) and checks with
``_C._engine_runs()`` that the engine, not the per-step loop, produced the results.
"""
import threading

import pytest
import torch

from fusedrnn import _C, ops

KINDS = ["lstm", "gru"]
GATES = {"lstm": 4, "gru": 3}
RUN_INDEX = {"lstm": (0, 1), "gru": (2, 3)}  # _engine_runs(): forward, backward


@pytest.fixture
def engine_forced():
    before_mode, before_threads = _C._cpu_engine(), torch.get_num_threads()
    _C._set_cpu_engine("engine")
    yield
    _C._set_cpu_engine(before_mode)
    torch.set_num_threads(before_threads)


def _tensors(kind, T=23, B=5, I=7, H=41, seed=0):
    gen = torch.Generator().manual_seed(seed)
    G = GATES[kind]
    k = H ** -0.5
    x = torch.randn(T, B, I, generator=gen)
    w_ih = (torch.rand(G * H, I, generator=gen) * 2 - 1) * k
    w_hh = (torch.rand(G * H, H, generator=gen) * 2 - 1) * k
    return x, w_ih, w_hh


def _layer(kind):
    return ops.lstm_layer if kind == "lstm" else ops.gru_layer


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_calls_inside_a_parallel_region(kind, threads, engine_forced):
    """Layer calls made from inside an at::parallel_for region (the team then has one
    thread) give exactly the result of a call from outside (a team of `threads`)."""
    torch.set_num_threads(threads)
    x, w_ih, w_hh = _tensors(kind)
    with torch.no_grad():
        direct = _layer(kind)(x, w_ih, w_hh)[0]
    before = _C._engine_runs()[RUN_INDEX[kind][0]]
    nested = _C._layer_in_parallel_region(kind, x, w_ih, w_hh, 4)
    assert _C._engine_runs()[RUN_INDEX[kind][0]] >= before + 4, "the engine did not run"
    for out in nested:
        assert torch.equal(out, direct)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_concurrent_python_threads(kind, threads, engine_forced):
    """Four Python threads run forward + backward at once, repeatedly: every result is
    bitwise the sequential one, and nothing hangs (the join has a timeout)."""
    torch.set_num_threads(threads)
    x, w_ih, w_hh = _tensors(kind, T=31, B=6, I=5, H=37, seed=1)
    options = dict(grad_clip=0.05, grad_clip_mode="norm", truncate=7)

    def run():
        xs, wi, wh = (t.clone().requires_grad_(True) for t in (x, w_ih, w_hh))
        out = _layer(kind)(xs, wi, wh, **options)
        grads = torch.autograd.grad((out[0] * 0.5).sum() + out[1].sum(), [xs, wi, wh])
        return [out[0].detach()] + list(grads)

    runs = _C._engine_runs()
    expected = run()
    after = _C._engine_runs()
    assert all(after[i] > runs[i] for i in RUN_INDEX[kind]), "the engine did not run"

    results, errors = [], []

    def worker():
        try:
            for _ in range(5):
                results.append(run())
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=worker) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not any(w.is_alive() for w in workers), "a worker hung"
    assert not errors, errors
    assert len(results) == 20
    for got in results:
        for a, b in zip(got, expected):
            assert torch.equal(a, b)
