"""The CPU forward engine (Note [CPU time-loop engine] in csrc/cpu/engine_fwd.cpp).

Every test forces the engine (``_C._set_cpu_engine('engine')``, restored afterwards) and
checks with ``_C._engine_runs()`` that the engine, not the per-step loop, produced the
result. Forward outputs and final states follow the float32 precision rule (docs/design.md §4)
against torch.nn / fusedrnn.reference; the saved tensors (act, c_raw, h_pre; GRU saved) are
checked through a backward, whose gradients must match the per-step loop's. The engine must
be bitwise deterministic for any thread count, and safe when called from several threads.

Shape letters: T steps, B batch, I input, H hidden, P projection.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
import fusedrnn.ops as ops
from fusedrnn import _C, reference
from helpers import (
    FLOOR32,
    TORCHNN,
    assert_close_by_reference,
    cast,
    forward_backward,
    intel_cpu,
    make_tensors,
)

OPS = {"lstm": ops.lstm_layer, "gru": ops.gru_layer}
REFERENCE = {"lstm": reference.lstm_layer, "gru": reference.gru_layer}
RUN_INDEX = {"lstm": 0, "gru": 2}  # forward counters in _C._engine_runs()
F32, F64 = torch.float32, torch.float64


@pytest.fixture
def mode():
    """Set the CPU loop ('engine' / 'steps' / 'auto') and the thread count; restore both."""
    saved_mode, saved_threads = _C._cpu_engine(), torch.get_num_threads()

    def set_mode(name, threads=None):
        assert _C._set_cpu_engine(name) == name
        if threads is not None:
            torch.set_num_threads(threads)

    yield set_mode
    _C._set_cpu_engine(saved_mode)
    torch.set_num_threads(saved_threads)


def engine_runs(kind):
    return _C._engine_runs()[RUN_INDEX[kind]]


def run(kind, tensors, expect_engine, **kwargs):
    """forward_backward of the op; asserts whether the engine ran the forward."""
    before = engine_runs(kind)
    result = forward_backward(OPS[kind], kind, tensors, **kwargs)
    ran = engine_runs(kind) - before
    assert (ran > 0) == expect_engine, f"engine forward runs: {ran}"
    return result


def forward(kind, tensors, **kwargs):
    """Forward only, under no_grad (the inference path: nothing saved)."""
    with torch.no_grad():
        args = [tensors.get(n) for n in ("input", "weight_ih", "weight_hh", "bias_ih",
                                          "bias_hh", "h0", "c0")[:7 if kind == "lstm" else 6]]
        if "weight_hr" in tensors:
            kwargs["weight_hr"] = tensors["weight_hr"]
        return OPS[kind](*args, **kwargs)


def check_against_torchnn_and_steps(kind, tensors, ours, mode, **kw):
    """The engine's forward_backward result `ours` against torch.nn by the float32 rule, and
    against the per-step loop (run here, in 'steps' mode): the backward read the engine's
    saved tensors, so its gradients agree with the loop's to float32 rounding (the forwards
    differ only in summation order)."""
    mode("steps")
    steps = run(kind, tensors, False, **kw)
    theirs = forward_backward(TORCHNN[kind], kind, tensors, **kw)
    ref64 = forward_backward(TORCHNN[kind], kind, cast(tensors, F64), **kw)
    assert_close_by_reference(ours, theirs, ref64, FLOOR32)
    for name, s in steps.items():
        torch.testing.assert_close(ours[name], s, rtol=1e-4,
                                   atol=1e-5 * max(1.0, s.abs().max().item()),
                                   msg=lambda m, name=name: f"{name}: {m}")


# (T, B, I, H): H = 1, 17 (a partial SIMD block on AVX-512), 129 (a partial block on every
# width and slices of unequal size), B = 1 and 7 (row blocks of every size), odd I, T = 1.
SHAPES = [(1, 1, 1, 1), (6, 1, 3, 17), (5, 7, 5, 17), (3, 7, 7, 129), (1, 3, 2, 33),
          (9, 2, 1, 64)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
@pytest.mark.parametrize("variant", ["lstm", "lstm_proj", "gru"])
@pytest.mark.parametrize("reverse", [False, True])
def test_matches_torchnn_and_steps(variant, shape, threads, reverse, mode):
    kind = variant.split("_")[0]
    T, B, I, H = shape
    if variant == "lstm_proj" and H == 1:
        pytest.skip("torch.nn needs proj_size < hidden_size")
    P = H // 2 + 1 if variant == "lstm_proj" else 0
    lengths = torch.tensor([T - (b * 3) % T for b in range(B)]) if B > 1 else None
    tensors = make_tensors(kind, T, B, I, H, P, dtype=F32, seed=T * 100 + H)
    kw = dict(reverse=reverse, lengths=lengths)
    mode("engine", threads)
    ours = run(kind, tensors, True, **kw)
    check_against_torchnn_and_steps(kind, tensors, ours, mode, **kw)


INPUT_PART = {"lstm": 9, "gru": 10}  # *_forward_input in _C._engine_runs()


# Note [Engine input part]: the engines compute x W_ih^T + b themselves (the LSTM unless
# I > R with 2-7 rows or I > R / 2 with one row, the GRU from 8 rows on and at 1-2 rows by
# the LSTM's rule), otherwise they
# read the all-steps
# projection as before. Shapes on both sides of those rules (with and without projection,
# bias, initial state), 1 and 2 threads:
# the float32 rule against torch.nn, the per-step loop's gradients, the no-grad forward
# bitwise equal to the saving one, and the counter says which side ran.
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", [
    ((7, 3, 40, 17, 0), False), ((7, 9, 40, 17, 0), True), ((6, 2, 5, 33, 0), True),
    ((7, 3, 12, 17, 9), False), ((7, 8, 12, 17, 9), True), ((5, 4, 3, 17, 9), True),
    ((7, 1, 8, 17, 0), True), ((7, 1, 9, 17, 0), False), ((5, 1, 4, 17, 9), True),
    ((5, 1, 5, 17, 9), False)],
    ids=lambda c: "T{}B{}I{}H{}P{}".format(*c[0]) + ("-input" if c[1] else "-buffer"))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_engine_input_part_both_sides(kind, case, bias, threads, mode):
    (T, B, I, H, P), fused = case
    if kind == "gru":
        if P:
            pytest.skip("the GRU has no projection")
        fused = B >= 8 or (B <= 2 and fused)  # at B <= 2 as the LSTM (in chunks)
    tensors = make_tensors(kind, T, B, I, H, P, bias=bias, h0=bias, dtype=F32, seed=T + H)
    kw = dict(lengths=torch.tensor([T - b % 3 for b in range(B)]), reverse=B % 2 == 1)
    mode("engine", threads)
    before = _C._engine_runs()[INPUT_PART[kind]]
    ours = run(kind, tensors, True, **kw)
    assert (_C._engine_runs()[INPUT_PART[kind]] > before) == fused
    out = forward(kind, tensors, **kw)
    for name, value in zip(("output", "h_n", "c_n"), out):
        assert torch.equal(value, ours[name]), name
    check_against_torchnn_and_steps(kind, tensors, ours, mode, **kw)


CHUNKED_INPUT = {"lstm": 13, "gru": 14}  # *_forward_chunked_input in _C._engine_runs()


def layer_forward(kind, tensors, rows, grad, **kwargs):
    """The op on batch rows `rows` of the tensors (all of them: None); a saving forward
    (weights require grad) when grad is True. Returns its outputs, detached."""
    t = dict(tensors)
    states = ("h0", "c0") if kind == "lstm" else ("h0",)
    if rows is not None:
        t["input"] = t["input"][:, rows]
        for n in states:
            t[n] = t[n][rows]
    weights = [t[n].detach().requires_grad_(grad) for n in ("weight_ih", "weight_hh",
                                                             "bias_ih", "bias_hh")]
    if "weight_hr" in t:
        kwargs["weight_hr"] = t["weight_hr"].detach().requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        out = OPS[kind](t["input"], *weights, *(t[n] for n in states), **kwargs)
    return [o.detach() for o in out]


# Note [Chunked input part]: with one or two rows the engines compute the x part of chunks
# of steps at once (32 rows: 32 steps at B = 1, 16 at B = 2) instead of step by step. Rows
# of a batch never meet in the forward, and every value is the same chain in both, so a
# sequence run alone or beside one other (chunked) must give bitwise what its row gives in
# a batch of eight (x part step by step, for the GRU too): T below, at and beyond a chunk
# and not a multiple of it, reverse, projection, lengths, no grad (a chunk workspace) and a
# saving forward (the LSTM's chunk written into its gates buffer), 1 and 2 threads.
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("T", [1, 16, 70])
@pytest.mark.parametrize("variant", ["lstm", "lstm_proj", "gru"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "saving"])
def test_chunked_input_part(variant, T, reverse, grad, threads, mode):
    kind = variant.split("_")[0]
    I, H, P = 4, 33, 9 if variant == "lstm_proj" else 0  # I <= R / 2: one row takes it
    tensors = make_tensors(kind, T, 8, I, H, P, dtype=F32, seed=T + 7 * P)
    kw = dict(reverse=reverse)
    mode("engine", threads)
    lengths = torch.tensor([max(1, T - 5 * b) for b in range(8)])
    runs = lambda: _C._engine_runs()[CHUNKED_INPUT[kind]]  # noqa: E731
    before = runs()
    batch = layer_forward(kind, tensors, None, grad, lengths=lengths, **kw)
    assert runs() == before, "eight rows must not be chunked"
    for rows in ([0], [1], [7], [0, 5], [6, 2]):
        before = runs()
        alone = layer_forward(kind, tensors, rows, grad, lengths=lengths[rows], **kw)
        assert runs() == before + 1, "not chunked"
        for name, a, b in zip(("output", "h_n", "c_n"), alone, batch):
            want = b[:, rows] if name == "output" else b[rows]
            assert torch.equal(a, want), f"rows {rows}: {name}"


def test_chunked_input_part_packed(mode):
    """Packed input (two sequences, then one): the chunks follow batch_sizes; each sequence
    matches its row of a padded batch of three bitwise, and the module agrees."""
    T, I, H = 41, 6, 40
    mode("engine", 2)
    torch.manual_seed(3)
    m = fusedrnn.LSTM(I, H)
    x = torch.randn(T, 3, I)
    lengths = torch.tensor([T, 23, 30])
    with torch.no_grad():
        y3, (h3, c3) = m(pack_padded_sequence(x, lengths, enforce_sorted=False))
        before = _C._engine_runs()[CHUNKED_INPUT["lstm"]]
        for rows in ([0, 1], [2, 0]):
            y, (h, c) = m(pack_padded_sequence(x[:, rows], lengths[rows],
                                               enforce_sorted=False))
            assert torch.equal(h, h3[:, rows]) and torch.equal(c, c3[:, rows])
            pad = torch.nn.utils.rnn.pad_packed_sequence(y)[0]
            pad3 = torch.nn.utils.rnn.pad_packed_sequence(y3)[0]
            assert torch.equal(pad, pad3[:, rows])
        assert _C._engine_runs()[CHUNKED_INPUT["lstm"]] == before + 2


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("options", ["cell_clip", "cell_clip_proj", "no_bias_no_h0"])
def test_options_against_reference(options, threads, mode):
    """cell_clip (active: large weights) and projection against fusedrnn.reference (torch.nn
    has no cell clip); no bias and no initial state against torch.nn."""
    T, B, I, H = 12, 5, 3, 37
    P = 11 if options == "cell_clip_proj" else 0
    lengths = torch.tensor([12, 4, 9, 1, 12])
    tensors = make_tensors("lstm", T, B, I, H, P, dtype=F32, weight_scale=3.0,
                           bias=options != "no_bias_no_h0", h0=options != "no_bias_no_h0")
    kw = dict(lengths=lengths)
    if options.startswith("cell_clip"):
        kw["cell_clip"] = 0.4
        base = REFERENCE["lstm"]
    else:
        base = TORCHNN["lstm"]
    mode("engine", threads)
    ours = run("lstm", tensors, True, **kw)
    theirs = forward_backward(base, "lstm", tensors, **kw)
    ref64 = forward_backward(base, "lstm", cast(tensors, F64), **kw)
    assert_close_by_reference(ours, theirs, ref64, FLOOR32)
    mode("steps")
    steps = run("lstm", tensors, False, **kw)
    for name, s in steps.items():
        torch.testing.assert_close(ours[name], s, rtol=1e-4,
                                   atol=1e-5 * max(1.0, s.abs().max().item()))


def _module_pair(kind, I, H, proj, seed):
    torch.manual_seed(seed)
    extra = dict(proj_size=proj) if proj else {}
    nn64 = getattr(torch.nn, kind)(I, H, bidirectional=True, dtype=F64, **extra)
    nn32 = getattr(torch.nn, kind)(I, H, bidirectional=True, **extra)
    nn32.load_state_dict(nn64.state_dict())
    ours = getattr(fusedrnn, kind)(I, H, bidirectional=True, **extra)
    ours.load_state_dict(nn64.state_dict())
    return ours, nn32, nn64


def _packed_run(module, x, lengths, gy):
    module.zero_grad()
    x = x.detach().clone().requires_grad_()
    y, state = module(pack_padded_sequence(x, lengths, enforce_sorted=False))
    states = state if isinstance(state, tuple) else (state,)
    loss = (y.data * gy).sum() + sum((s * 0.5).sum() for s in states)
    loss.backward()
    return [y.data.detach(), *(s.detach() for s in states), x.grad] + [
        p.grad.clone() for p in module.parameters()]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kind, proj", [("LSTM", 0), ("LSTM", 7), ("GRU", 0)])
def test_packed_both_directions(kind, proj, threads, mode):
    """Packed input: rows per step shrink (forward) and grow (reverse direction)."""
    T, B, I, H = 10, 6, 5, 21
    ours, nn32, nn64 = _module_pair(kind, I, H, proj, seed=7)
    x = torch.randn(T, B, I, dtype=F64)
    lengths = torch.tensor([10, 3, 7, 1, 10, 5])
    gy = torch.randn(int(lengths.sum()), 2 * (proj or H), dtype=F64)
    mode("engine", threads)
    before = engine_runs(kind.lower())
    got = _packed_run(ours, x.float(), lengths, gy.float())
    assert engine_runs(kind.lower()) - before == 2  # one call per direction
    want = _packed_run(nn64, x, lengths, gy)
    base = _packed_run(nn32, x.float(), lengths, gy.float())
    for o, t, w in zip(got, base, want):
        assert_close_by_reference(o, t, w, FLOOR32)


@pytest.mark.parametrize("B, H", [(6, 80), (1, 112), (2, 112)])
@pytest.mark.parametrize("variant", ["lstm", "lstm_proj", "gru"])
def test_bitwise_same_for_any_thread_count(variant, B, H, mode):
    """Uneven slices (H = 80: 5 blocks of 16 lanes on AVX-512, 2 + 3 between two threads;
    H = 112 at B = 1, 2: 7 blocks, 3 + 4, so that one thread runs a unit block beside its
    neighbour where two threads run it alone), lengths, many steps: 1 and 2 threads and
    repeated runs give identical bits."""
    kind = variant.split("_")[0]
    T, I = 60, 9
    P = 24 if variant == "lstm_proj" else 0
    tensors = make_tensors(kind, T, B, I, H, P, dtype=F32, seed=5)
    lengths = torch.tensor([60, 17, 59, 1, 33, 60][:B])
    results = []
    for threads in (1, 2, 2, 1, 2):
        mode("engine", threads)
        before = engine_runs(kind)
        results.append(forward(kind, tensors, lengths=lengths))
        assert engine_runs(kind) == before + 1
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("variant", ["lstm", "lstm_proj", "gru"])
def test_many_steps_uneven_slices(variant, threads, mode):
    """A missing or misplaced barrier shows up as a race on the state between steps: many
    steps, slices of different sizes (H = 144: 9 blocks of 16, or 18 of 8), against
    float64."""
    kind = variant.split("_")[0]
    T, B, I, H = 300, 3, 4, 144
    P = 40 if variant == "lstm_proj" else 0
    tensors = make_tensors(kind, T, B, I, H, P, dtype=F32, seed=11)
    mode("engine", threads)
    ours = forward(kind, tensors)
    with torch.no_grad():
        args = dict(tensors)
        theirs = forward_like_nn(kind, args)
        ref64 = forward_like_nn(kind, cast(args, F64))
    names = ("output", "h_n", "c_n")
    assert_close_by_reference(dict(zip(names, ours)), dict(zip(names, theirs)),
                              dict(zip(names, ref64)), FLOOR32)


def forward_like_nn(kind, tensors):
    args = [tensors.get(n) for n in ("input", "weight_ih", "weight_hh", "bias_ih", "bias_hh",
                                      "h0", "c0")[:7 if kind == "lstm" else 6]]
    kwargs = {"weight_hr": tensors["weight_hr"]} if "weight_hr" in tensors else {}
    return TORCHNN[kind](*args, **kwargs)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("how", ["auto", "rows"])
def test_concurrent_calls_from_python_threads(threads, how, mode, split):
    """Several Python threads run the engine at once (each may start its own team; with
    torch.set_num_threads(2) the teams oversubscribe the cores), threads splitting units or
    rows: nothing deadlocks and every result is bitwise the single-call result."""
    mode("engine", threads)
    split(how)
    cases = []
    for i, (kind, P) in enumerate([("lstm", 0), ("gru", 0), ("lstm", 9), ("gru", 0)]):
        tensors = make_tensors(kind, 40, 3, 5, 48, P, dtype=F32, seed=20 + i)
        cases.append((kind, tensors, forward(kind, tensors)))

    def work(i):
        kind, tensors, want = cases[i % len(cases)]
        got = forward(kind, tensors)
        return all(torch.equal(a, b) for a, b in zip(got, want))

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(work, i) for i in range(16)]
        assert all(f.result(timeout=120) for f in futures)


def test_module_from_thread_pool_with_training(mode):
    """The modules under a Python thread pool with torch.set_num_threads(2), forward and
    backward, engine forced: same results as one call on the main thread."""
    mode("engine", 2)
    torch.manual_seed(3)
    module = fusedrnn.LSTM(6, 40, num_layers=2)
    x = torch.randn(30, 4, 6)

    def train_step(_):
        xx = x.clone().requires_grad_()
        y, _ = module(xx)
        (gx,) = torch.autograd.grad(y.square().sum(), xx)
        return y.detach(), gx

    want = train_step(None)
    barrier = threading.Barrier(3)

    def together(i):
        barrier.wait(timeout=60)
        return train_step(i)

    with ThreadPoolExecutor(max_workers=3) as pool:
        for got in pool.map(together, range(3), timeout=120):
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_steps_mode_and_float64_skip_the_engine(mode):
    tensors = make_tensors("lstm", 3, 2, 3, 8, dtype=F32)
    mode("steps")
    before = _C._engine_runs()
    forward("lstm", tensors)
    forward("gru", make_tensors("gru", 3, 2, 3, 8, dtype=F32))
    mode("engine")
    forward("lstm", make_tensors("lstm", 3, 2, 3, 8, dtype=F64))
    assert _C._engine_runs() == before


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
@pytest.mark.parametrize("variant", ["lstm", "lstm_proj", "gru"])
def test_every_capability(variant, capability, mode, cpu_capability):
    """The micro-kernels of every capability this CPU runs (1, 8 and 16 lanes), with a
    partial unit block (H = 37) and two threads."""
    cpu_capability(capability)
    kind = variant.split("_")[0]
    T, B, I, H = 7, 9, 4, 37
    P = 13 if variant == "lstm_proj" else 0
    tensors = make_tensors(kind, T, B, I, H, P, dtype=F32, seed=2)
    kw = dict(lengths=torch.tensor([7, 2, 5, 7, 1, 6, 7, 3, 4]), reverse=True)
    mode("engine", 2)
    ours = run(kind, tensors, True, **kw)
    theirs = forward_backward(TORCHNN[kind], kind, tensors, **kw)
    ref64 = forward_backward(TORCHNN[kind], kind, cast(tensors, F64), **kw)
    assert_close_by_reference(ours, theirs, ref64, FLOOR32)


def test_auto_picks_by_shape(mode):
    """Auto (Note [Forward engine crossover]): the engine for small batches whose weights
    fit in L2, the per-step loop for very large batches; results agree either way."""
    if _C._cpu_capability() == "default":
        pytest.skip("the portable build always takes the per-step loop")
    mode("auto", 2)
    small = make_tensors("lstm", 4, 2, 3, 64, dtype=F32)
    before = engine_runs("lstm")
    forward("lstm", small)
    assert engine_runs("lstm") == before + 1
    large = make_tensors("gru", 2, 300, 3, 16, dtype=F32)
    before = engine_runs("gru")
    got = forward("gru", large)
    assert engine_runs("gru") == before
    mode("engine")
    for a, b in zip(got, forward("gru", large)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("threads", [1, 2])
def test_auto_one_step_engine_for_cells_without_grad(mode, threads):
    """Note [One step on the engine]: a single step without grad takes the engine from 32 rows
    while a thread's panels stay within 256 KiB, with the AVX-512 kernels on non-Intel CPUs;
    fewer rows, larger panels and calls with grad keep the per-step loop. Results agree
    either way."""
    if _C._cpu_capability() == "default":
        pytest.skip("the portable build always takes the per-step loop")
    wide = _C._cpu_capability() == "avx512" and not intel_cpu()
    mode("auto", threads)
    cases = [("gru", 32, 64, 64, True), ("lstm", 97, 64, 64, True), ("gru", 16, 64, 64, False),
             ("lstm", 31, 64, 64, False), ("gru", 129, 64, 64, False)]
    if threads == 2:  # 256 KiB of LSTM panels per thread at H = I = 128; 576 KiB of GRU ones
        cases += [("lstm", 32, 128, 128, True), ("gru", 97, 128, 256, False)]
    for kind, B, I, H, engine in cases:
        tensors = make_tensors(kind, 1, B, I, H, dtype=F32, seed=5)
        before = engine_runs(kind)
        got = forward(kind, tensors)
        assert (engine_runs(kind) > before) == (engine and wide), (kind, B, I, H)
        mode("steps")
        for a, b in zip(got, forward(kind, tensors)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        mode("auto")
    # with grad (saving for a backward): the per-step loop
    for kind in ("gru", "lstm"):
        run(kind, make_tensors(kind, 1, 97, 64, 64, dtype=F32, seed=5), False)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", [((8, 1024), False), ((8, 64), True), ((32, 512), True)],
                         ids=["B8-I1024-buffer-on-intel", "B8-I64-input", "B32-I512-input"])
def test_input_part_beyond_l2(mode, threads, case):
    """Note [Engine input part]: where a thread's slices of W_hh and W_ih together exceed 1.5x
    its L2 (here H = 1024: 9-32 MiB, beyond any L2), the engine on an Intel CPU reads the
    all-steps projection instead of streaming W_ih every step if W_ih is a large share of
    them (I >= H / 2) on a small step (B <= 16) or I >= H; otherwise, and on other CPUs
    always, it keeps the input part. Results agree with the per-step loop either way."""
    if _C._cpu_capability() == "default":
        pytest.skip("the portable build always takes the per-step loop")
    (B, I), input_part = case
    input_part = input_part or not intel_cpu()
    for kind in ("lstm", "gru"):
        tensors = make_tensors(kind, 2, B, I, 1024, dtype=F32, seed=3)
        mode("engine", threads)
        before_engine, before_input = engine_runs(kind), _C._engine_runs()[INPUT_PART[kind]]
        ours = forward(kind, tensors)
        assert engine_runs(kind) == before_engine + 1
        assert (_C._engine_runs()[INPUT_PART[kind]] > before_input) == input_part
        mode("steps")
        for a, b in zip(ours, forward(kind, tensors)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_auto_engine_for_medium_slices_without_grad_only(mode):
    """Note [Forward engine crossover]: a W_hh slice of 1.5-4 MiB per thread (H = 512: 4 MiB
    in all) takes the engine up to 64 rows without a backward (here I >= H / 2, so whether
    the engine computes the input part does not matter), up to 16 rows with one."""
    if _C._cpu_capability() == "default":
        pytest.skip("the portable build always takes the per-step loop")
    mode("auto", 2)
    tensors = make_tensors("lstm", 2, 32, 256, 512, dtype=F32, seed=4)
    before = engine_runs("lstm")
    forward("lstm", tensors)
    assert engine_runs("lstm") == before + 1
    run("lstm", tensors, False)
    run("lstm", make_tensors("lstm", 2, 16, 256, 512, dtype=F32, seed=5), True)


# ---------------------------------------------------------------------------------------
# Note [Engine row split]: with two threads the engine may give each thread some batch rows
# with all units (no barrier in the time loop) instead of some units of all rows.

ROWS_INDEX = {"lstm": 4, "gru": 5}  # row-split forward counters in _C._engine_runs()


def row_split_runs(kind):
    return _C._engine_runs()[ROWS_INDEX[kind]]


def _row_split_case(variant, B, seed):
    # Enough work per step for a team of two (engine_fwd.cpp, team_size); H = 80: five
    # blocks of 16 lanes, a partial one of 8.
    kind = variant.split("_")[0]
    T, I, H = 23, 5, 80
    P = 40 if variant == "lstm_proj" else 0
    tensors = make_tensors(kind, T, B, I, H, P, dtype=F32, seed=seed, weight_scale=2.0)
    lengths = torch.tensor([T - (b * 5) % T for b in range(B)])
    return kind, tensors, lengths


@pytest.mark.parametrize("B", [3, 7, 13])
@pytest.mark.parametrize("variant", ["lstm", "lstm_proj", "gru"])
@pytest.mark.parametrize("reverse", [False, True])
def test_row_split_bitwise_equals_unit_split(variant, B, reverse, mode, split):
    """Rows split unevenly between the threads (B = 3, 7, 13), lengths, reverse, projection,
    an active cell clip: the row split gives bitwise the unit split's outputs, final states
    and (through the saved tensors) gradients, and the counters show which split ran."""
    kind, tensors, lengths = _row_split_case(variant, B, seed=B)
    kw = dict(reverse=reverse, lengths=lengths)
    if kind == "lstm":
        kw["cell_clip"] = 0.5
    mode("engine", 2)
    results = {}
    for name in ("units", "rows"):
        split(name)
        before = row_split_runs(kind)
        results[name] = (run(kind, tensors, True, **kw), forward(kind, tensors, **kw))
        assert row_split_runs(kind) - before == (2 if name == "rows" else 0)
    (train_u, infer_u), (train_r, infer_r) = results["units"], results["rows"]
    for key in train_u:
        assert torch.equal(train_u[key], train_r[key]), key
    for a, b in zip(infer_u, infer_r):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind, proj", [("LSTM", 0), ("LSTM", 24), ("GRU", 0)])
def test_row_split_packed_forced(kind, proj, mode, split):
    """Packed input, rows forced (auto never splits a packed batch by rows): the same bits
    as the unit split, forward and backward, both directions."""
    T, B, I, H = 10, 6, 5, 64
    ours, _, _ = _module_pair(kind, I, H, proj, seed=7)
    x = torch.randn(T, B, I)
    lengths = torch.tensor([10, 3, 7, 1, 10, 5])
    gy = torch.randn(int(lengths.sum()), 2 * (proj or H))
    mode("engine", 2)
    split("units")
    want = _packed_run(ours, x, lengths, gy)
    split("rows")
    before = row_split_runs(kind.lower())
    got = _packed_run(ours, x, lengths, gy)
    assert row_split_runs(kind.lower()) - before == 2
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("variant", ["lstm", "lstm_proj", "gru"])
def test_row_split_many_steps_against_float64(variant, mode, split):
    """No barrier in the row split's loop: many steps, uneven rows (B = 5 on two threads),
    against float64, as test_many_steps_uneven_slices for the unit split."""
    kind = variant.split("_")[0]
    T, B, I, H = 300, 5, 4, 144
    P = 40 if variant == "lstm_proj" else 0
    tensors = make_tensors(kind, T, B, I, H, P, dtype=F32, seed=12)
    mode("engine", 2)
    split("rows")
    before = row_split_runs(kind)
    ours = forward(kind, tensors)
    assert row_split_runs(kind) == before + 1
    with torch.no_grad():
        theirs = forward_like_nn(kind, dict(tensors))
        ref64 = forward_like_nn(kind, cast(dict(tensors), F64))
    names = ("output", "h_n", "c_n")
    assert_close_by_reference(dict(zip(names, ours)), dict(zip(names, theirs)),
                              dict(zip(names, ref64)), FLOOR32)


def test_row_split_auto_rule(mode, split):
    """auto: rows at B = 8 (four rows per thread), units at B = 1 (a whole panel per thread
    for one row would double the weight traffic), units for packed input and on one
    thread."""
    mode("engine", 2)
    split("auto")
    small = make_tensors("lstm", 6, 8, 3, 64, dtype=F32)
    before = row_split_runs("lstm")
    forward("lstm", small)
    assert row_split_runs("lstm") == before + 1
    forward("lstm", make_tensors("lstm", 6, 1, 3, 64, dtype=F32))
    mode("engine", 1)
    forward("lstm", small)
    assert row_split_runs("lstm") == before + 1
    mode("engine", 2)
    x = torch.randn(6, 8, 3)
    module = fusedrnn.LSTM(3, 64)
    with torch.no_grad():
        module(torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([6, 6, 5, 5, 4, 3, 2, 1])))
    assert row_split_runs("lstm") == before + 1


def test_engine_split_setting_rejects_unknown_names(split):
    with pytest.raises(ValueError, match="engine split"):
        _C._set_engine_split("diagonal")


# Note [Measured row split] (csrc/cpu/row_split.cpp): where the rule is in doubt (a panel
# beyond a quarter of one core's L2, within its budget: W_hh of H = 256 and W_ih, 1.25 MiB, on
# any L2 from 0.5 to 5 MiB), "auto" times both splits on a shape's first calls.
WARMUP, TRIALS = 2, 3  # row_split.cpp: kWarmup, kTrials


def _records(loop, B):
    return [r for r in _C._engine_split_records() if r["loop"] == loop and r["B"] == B]


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_measured_split_decides_and_every_call_is_bitwise_the_same(kind, mode, split):
    mode("engine", 2)
    split("auto")
    _C._clear_engine_split_records()
    T, B, I, H = 6, 8, 64, 256
    tensors = make_tensors(kind, T, B, I, H, dtype=F32, seed=21)
    first = forward_backward(OPS[kind], kind, tensors)
    runs = [forward_backward(OPS[kind], kind, tensors) for _ in range(WARMUP + 2 * TRIALS + 1)]
    for r in runs:  # trials of either split, and the chosen one, all return the same bits
        for name, value in first.items():
            assert torch.equal(r[name], value), name
    for loop in (f"{kind}_forward", f"{kind}_backward"):
        (rec,) = _records(loop, B)
        assert rec["decided"], rec
        assert rec["trials_units"] == TRIALS and rec["trials_rows"] == TRIALS, rec
        best_rows, best_units = rec["best_rows_ns_per_step"], rec["best_units_ns_per_step"]
        assert 0 < best_rows < float("inf") and 0 < best_units < float("inf"), rec
        assert rec["rows"] == (best_rows < best_units), rec
    # The chosen split runs from then on: the row-split counter moves with the choice.
    (fwd,) = _records(f"{kind}_forward", B)
    before = row_split_runs(kind)
    forward_backward(OPS[kind], kind, tensors)
    assert row_split_runs(kind) - before == int(fwd["rows"])
    # Inference is another variant of the forward (it saves nothing): measured on its own.
    for _ in range(WARMUP + 2 * TRIALS):
        forward(kind, tensors)
    assert len(_records(f"{kind}_forward", B)) == 2
    # Forgetting the records measures again.
    _C._clear_engine_split_records()
    assert _C._engine_split_records() == []


def test_measured_split_only_where_the_rule_is_in_doubt(mode, split):
    """Nothing is measured with 'rule', 'units' or 'rows', on one thread, below four rows per
    thread, for packed input, or for a panel well within L2 (the rule's rows)."""
    kind, T, I, H = "lstm", 4, 64, 256
    big = make_tensors(kind, T, 8, I, H, dtype=F32, seed=22)
    mode("engine", 2)
    _C._clear_engine_split_records()
    for name in ("rule", "units", "rows"):
        split(name)
        for _ in range(WARMUP + 2):
            forward(kind, big)
    split("auto")
    forward(kind, make_tensors(kind, T, 6, I, H, dtype=F32, seed=23))  # 3 rows per thread
    forward(kind, make_tensors(kind, T, 8, 3, 64, dtype=F32, seed=24))  # 68 KiB panel
    lengths = torch.tensor([4, 4, 3, 3, 2, 2, 1, 1])
    forward(kind, big, lengths=lengths)  # padded with lengths: still measured
    with torch.no_grad():
        x = torch.randn(T, 8, I)
        fusedrnn.LSTM(I, H)(pack_padded_sequence(x, lengths))  # packed: never
    mode("engine", 1)
    forward(kind, big)
    records = _C._engine_split_records()
    assert [(r["loop"], r["B"], r["H"]) for r in records] == [("lstm_forward", 8, H)], records
    _C._clear_engine_split_records()


def test_measured_split_under_concurrent_calls(mode, split):
    """Calls of one shape from several Python threads while it is being measured: no
    deadlock, every result the same, and the shape decided once."""
    mode("engine", 2)
    split("auto")
    _C._clear_engine_split_records()
    tensors = make_tensors("lstm", 5, 8, 64, 256, dtype=F32, seed=25)
    expected = forward("lstm", tensors)
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda _: forward("lstm", tensors), range(24)))
    for r in results:
        for a, b in zip(r, expected):
            assert torch.equal(a, b)
    (rec,) = _records("lstm_forward", 8)
    assert rec["decided"] and rec["trials_units"] == rec["trials_rows"] == TRIALS, rec
    _C._clear_engine_split_records()
