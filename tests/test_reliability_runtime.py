"""Runtime reliability of fusedrnn: compilers, processes, threads and resources.

1. torch.compile(fullgraph=True) of a small model's forward + loss (backward through
   AOTAutograd, eager optimizer step) trains exactly like eager over 3 steps, compiling once;
   ``torch.library.opcheck`` of what tests/test_ops.py does not already opcheck: the
   ``*_backward`` ops and the forward ops in the packed (batch_sizes) layout. Sequence
   length and batch size changing between calls (dynamic shapes) under compile.
2. DistributedDataParallel (2 processes, gloo, 127.0.0.1 only) equals single-process
   training on the concatenated batch, loss scaled as DDP averages.
3. Concurrent forward/backward from several Python threads equals sequential calls, bitwise.
4. Resources: no resident-memory, live-tensor, file-descriptor or thread growth over many
   calls.
5. The same seeded step in two fresh processes gives bitwise the same results; a child
   forked after its parent used the kernels on 2 threads computes what the parent does.
6. The gradients handed back are one tensor per parameter (no aliasing).

Child processes run tests/_reliability_worker.py; every subprocess, join and thread wait has
a timeout and children are killed on the way out, so nothing here can hang CI.
Shape letters: T steps, B batch, I input, H hidden, O head output.
"""

import copy
import gc
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
import _reliability_worker as worker
from helpers import assert_tight, make_tensors

F32, F64 = torch.float32, torch.float64
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS_DIR)
WORKER = os.path.join(TESTS_DIR, "_reliability_worker.py")
SUBPROCESS_TIMEOUT_S = 120


@pytest.fixture
def threads():
    """Set torch's intra-op thread count for one test (conftest runs single-threaded)."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _child_env(threads=1):
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               GLOO_SOCKET_IFNAME="lo", PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def _run_children(argvs, env, timeout=SUBPROCESS_TIMEOUT_S):
    """Start one ``python _reliability_worker.py *argv`` per argv, wait for all of them
    under one deadline, and kill whatever is still running on the way out (timeout, error
    or test failure). Fails with every child's output unless all exit with status 0."""
    procs = []
    try:
        for argv in argvs:
            procs.append(subprocess.Popen([sys.executable, WORKER, *argv], cwd=REPO, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        outputs, timed_out = [], False
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
                p.kill()
                out, _ = p.communicate(timeout=10)
            outputs.append(out.decode(errors="replace"))
        report = "\n".join(f"--- child {argv} (exit {p.returncode}) ---\n{out[-4000:]}"
                           for argv, p, out in zip(argvs, procs, outputs))
        assert not timed_out, f"child processes ran past {timeout} s:\n{report}"
        assert all(p.returncode == 0 for p in procs), f"a child process failed:\n{report}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)


# =======================================================================================
# 1. torch.compile and opcheck
# =======================================================================================


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


# ---------------------------------------------------------------------------------------
# opcheck: the backward ops and the packed layout (test_ops.py opchecks the forward ops
# in the padded layout, with and without lengths)


def _all_fusedrnn_ops():
    names = sorted({full.split("::", 1)[1].split(".", 1)[0]
                    for full in torch._C._dispatch_get_all_op_names()
                    if full.startswith("fusedrnn::")})
    return names


def test_registered_op_names_are_known():
    """Every op in torch.ops.fusedrnn has opcheck samples here or in test_ops.py: a new op
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


# =======================================================================================
# 2. DistributedDataParallel
# =======================================================================================

DDP_CONFIG = dict(I=3, H=5, O=2, grad_clip=0.01, truncate=3, dtype=F64, lr=0.5, momentum=0.9,
                  steps=3)
WORLD = 2


def _reference_training(state_dict, x, y, config, world):
    """Single-process training on the whole batch with the gradient DDP computes: each
    rank's loss is the mean over its own rows, DDP averages the ranks' gradients. So the
    loss here is the *sum* of the ranks' mean losses (its gradient for each row, and so what
    the in-kernel clip sees, is the same as on that row's rank) and the gradient is divided
    by world afterwards. (Backpropagating the mean over the whole batch instead would scale
    every recurrent gradient by 1/world before the clip, which is not what DDP computes.)"""
    model = worker.make_model(config)
    model.load_state_dict(state_dict)
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"])
    share = x.shape[0] // world
    steps = []
    for _ in range(config["steps"]):
        opt.zero_grad()
        out = model(x)
        per_rank = [nn.functional.mse_loss(out[r * share:(r + 1) * share],
                                           y[r * share:(r + 1) * share]) for r in range(world)]
        sum(per_rank).backward()
        with torch.no_grad():
            for p in model.parameters():
                p.grad.div_(world)
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        opt.step()
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        steps.append({"losses": [l.detach() for l in per_rank], "grads": grads,
                      "params": params})
    return steps


def test_ddp_two_processes_match_single_process(tmp_path):
    config = DDP_CONFIG
    torch.manual_seed(0)
    model = worker.make_model(config)
    with torch.no_grad():
        for p in model.rnn.parameters():
            p.mul_(3.0)  # larger recurrent gradients, so the clip is active
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, config["I"], generator=gen, dtype=F64)  # [B, T, I]
    y = torch.randn(4, 6, config["O"], generator=gen, dtype=F64)
    state_dict = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(dict(config=config, state_dict=state_dict, x=x, y=y), tmp_path / "setup.pt")

    _run_children([("ddp", str(rank), str(WORLD), str(tmp_path)) for rank in range(WORLD)],
                  _child_env(threads=1))
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD)]
    expected = _reference_training(state_dict, x, y, config, WORLD)

    assert all(len(r) == config["steps"] for r in ranks)
    for step in range(config["steps"]):
        for rank in range(WORLD):
            got = ranks[rank][step]
            torch.testing.assert_close(got["loss"], expected[step]["losses"][rank],
                                       rtol=1e-12, atol=0)
            assert_tight(got["grads"], expected[step]["grads"], rtol=1e-10, atol=1e-12)
            assert_tight(got["params"], expected[step]["params"], rtol=1e-10, atol=1e-12)
        # DDP keeps the replicas identical
        for name, p in ranks[0][step]["params"].items():
            assert torch.equal(p, ranks[1][step]["params"][name]), name

    # The clip mattered: the same training without it has a clearly different gradient.
    unclipped = _reference_training(state_dict, x, y, dict(config, grad_clip=None), WORLD)
    g_clip = expected[0]["grads"]["rnn.weight_hh_l0"]
    g_free = unclipped[0]["grads"]["rnn.weight_hh_l0"]
    assert (g_clip - g_free).abs().max() > 1e-3 * g_free.abs().max()


# =======================================================================================
# 3. Threads
# =======================================================================================

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
    sequential = [_work(jobs) for jobs in per_thread]
    concurrent = _concurrent(per_thread)
    for t in range(N_THREADS):
        for r, results in enumerate(concurrent[t]):
            for j, (got, exp) in enumerate(zip(results, sequential[t])):
                _assert_bitwise(got, exp, f"thread {t} round {r} job {j}")


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
    sequential = [_work(jobs) for jobs in per_thread]
    concurrent = _concurrent(per_thread)
    for t in range(N_THREADS):
        for r, results in enumerate(concurrent[t]):
            for j, (got, exp) in enumerate(zip(results, sequential[t])):
                _assert_bitwise(got, exp, f"thread {t} round {r} job {j}")
    assert all(p.grad is None for p in list(lstm.parameters()) + list(gru.parameters()))


# =======================================================================================
# 4. Resources
# =======================================================================================


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _live_tensors():
    # issubclass(type(o), ...) rather than isinstance: isinstance reads o.__class__, which
    # warns for torch.distributed's deprecated reduce_op object.
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


def _os_threads():
    return len(os.listdir("/proc/self/task"))


class _ResourceLoop:
    """Small training steps touching every kernel path: LSTM (2 layers, grad_clip,
    truncate, cell_clip) and GRU (norm clip) train steps with SGD on padded input, and an
    inference forward of both on packed input (no saved tensors)."""

    # Note [Leak bounds]: T=16, B=8, H=32 in float64, so one [T, B, H] tensor is 32 KiB
    # (a [T, B, 4H] workspace 128 KiB). A leak of one [T, B, H] tensor per step is then
    # 1800 * 32 KiB = 56 MiB between steps 200 and 2000, far above the 20 MiB bound, and
    # it is also seen by the exact live-tensor count if the leaked tensor is a Python
    # object. The bound leaves ample room for allocator noise (glibc arenas, pytorch's
    # and oneDNN's caches reach their steady state during the 200 warm-up steps).

    def __init__(self, dtype=F64, T=16, B=8, I=8, H=32):
        self.T, self.B, self.I, self.H = T, B, I, H
        torch.manual_seed(0)
        self.lstm = fusedrnn.LSTM(self.I, self.H, num_layers=2, dtype=dtype, grad_clip=0.1,
                                  truncate=4, cell_clip=3.0)
        self.gru = fusedrnn.GRU(self.H, self.H, dtype=dtype, grad_clip=0.5,
                                grad_clip_mode="norm")
        self.opt = torch.optim.SGD(list(self.lstm.parameters()) + list(self.gru.parameters()),
                                   lr=1e-3)
        gen = torch.Generator().manual_seed(1)
        self.x = torch.randn(self.T, self.B, self.I, generator=gen, dtype=F64).to(dtype)
        lengths = torch.randint(1, self.T + 1, (self.B,), generator=gen)
        lengths[0] = self.T
        self.packed = pack_padded_sequence(self.x, lengths, enforce_sorted=False)

    def step(self):
        self.opt.zero_grad(set_to_none=True)
        out, (h_n, c_n) = self.lstm(self.x)
        out2, g_n = self.gru(out)
        loss = out2.square().mean() + h_n.mean() + c_n.square().mean() + g_n.mean()
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            out, _ = self.lstm(self.packed)
            self.gru(out)


def test_no_memory_growth_over_2000_steps():
    loop = _ResourceLoop()
    for _ in range(200):
        loop.step()
    gc.collect()
    rss0, tensors0 = _rss_bytes(), _live_tensors()
    for _ in range(1800):
        loop.step()
    gc.collect()
    rss1, tensors1 = _rss_bytes(), _live_tensors()
    assert tensors1 == tensors0, f"live tensors {tensors0} -> {tensors1} over 1800 steps"
    growth = rss1 - rss0
    assert growth < 20 * 2 ** 20, f"RSS grew by {growth / 2 ** 20:.1f} MiB over 1800 steps"


def test_no_file_descriptor_leak():
    loop = _ResourceLoop(dtype=F32)
    for _ in range(20):
        loop.step()
    before = _open_fds()
    for _ in range(300):
        loop.step()
    assert _open_fds() == before


@pytest.mark.parametrize("intra_op", [1, 2])
def test_no_thread_leak(intra_op, threads):
    """No Python or OS threads left behind. On 2 intra-op threads with a batch big enough
    for the kernels' parallel loops too (few steps there: on a busy 2-core machine every
    OpenMP wake-up can cost milliseconds)."""
    threads(intra_op)
    if intra_op == 1:
        loops, steps = [_ResourceLoop(dtype=F32), _ResourceLoop(dtype=F64)], 100
    else:
        loops, steps = [_ResourceLoop(dtype=F32, T=4, B=128)], 10
    for loop in loops:
        for _ in range(3):
            loop.step()
    before = (threading.active_count(), _os_threads())
    for _ in range(steps):
        for loop in loops:
            loop.step()
    assert (threading.active_count(), _os_threads()) == before


# =======================================================================================
# 5. Processes: determinism across fresh processes, fork
# =======================================================================================


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


# =======================================================================================
# 6. Gradient tensors handed to the caller
# =======================================================================================

_MODULES_WITH_BIAS = {
    "LSTM": lambda: (fusedrnn.LSTM(3, 4, num_layers=2), nn.LSTM(3, 4, num_layers=2)),
    "GRU": lambda: (fusedrnn.GRU(3, 4, num_layers=2), nn.GRU(3, 4, num_layers=2)),
    "LSTMCell": lambda: (fusedrnn.LSTMCell(3, 4), nn.LSTMCell(3, 4)),
    "GRUCell": lambda: (fusedrnn.GRUCell(3, 4), nn.GRUCell(3, 4)),
}

@pytest.mark.parametrize("name", [
    "LSTM",
    "GRU",
    "LSTMCell",
    "GRUCell",
])
def test_parameter_gradients_are_distinct_tensors(name):
    """torch.autograd.grad over all parameters returns one tensor per parameter (as
    torch.nn does), so in-place post-processing such as an optimizer's
    torch._foreach_mul_(grads, scale) scales every gradient exactly once."""
    torch.manual_seed(0)
    ours, theirs = _MODULES_WITH_BIAS[name]()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, 2, 3) if "Cell" not in name else torch.randn(2, 3)
    grads = {}
    for key, module in (("ours", ours), ("theirs", theirs)):
        out = module(x)
        first = out[0] if isinstance(out, tuple) else out
        params = list(module.parameters())
        g = list(torch.autograd.grad(first.square().sum(), params))
        torch._foreach_mul_(g, 0.5)
        grads[key] = dict(zip([n for n, _ in module.named_parameters()], g))
    for n, g in grads["theirs"].items():
        torch.testing.assert_close(grads["ours"][n], g, rtol=1e-5, atol=1e-6, msg=n)
    pointers = [g.data_ptr() for g in grads["ours"].values()]
    assert len(set(pointers)) == len(pointers), "gradients share storage"
