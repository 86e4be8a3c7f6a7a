"""The persistent CPU backward engine (Note [CPU backward engine] in csrc/cpu/bwd_engine.cpp).

Every test forces the engine (``_C._set_cpu_engine('engine')``) and checks with
``_C._engine_runs()`` that the engine, not the per-step loop, ran the backward. float32
results follow the project's precision rule (docs/design.md §4: error against a float64 reference at
most 2x the error of the float32 counterpart, torch.nn without options, fusedrnn.reference
with them); the engine must also be bitwise reproducible, independent of the thread count,
and safe under concurrent calls.
"""
import threading

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from fusedrnn import _C, ops

from helpers import (FLOOR32, REFERENCE, TORCHNN, assert_close_by_reference, cast,
                     forward_backward, make_tensors, module_forward_backward)

F32, F64 = torch.float32, torch.float64
OPS = {"lstm": ops.lstm_layer, "gru": ops.gru_layer}
BWD_RUN = {"lstm": 1, "gru": 3}  # index into _C._engine_runs()


@pytest.fixture
def engine():
    """Force the engine for the test; restore the mode and thread count afterwards."""
    old, threads = _C._cpu_engine(), torch.get_num_threads()
    _C._set_cpu_engine("engine")
    yield
    _C._set_cpu_engine(old)
    torch.set_num_threads(threads)


def engine_runs(kind):
    return _C._engine_runs()[BWD_RUN[kind]]


def run(kind, tensors, **kw):
    """forward_backward of the op, asserting that the engine ran its backward exactly once."""
    before = engine_runs(kind)
    out = forward_backward(OPS[kind], kind, tensors, **kw)
    assert engine_runs(kind) == before + 1, "the backward did not run on the engine"
    return out


def steps_run(kind, tensors, **kw):
    old = _C._set_cpu_engine("steps")
    try:
        return forward_backward(OPS[kind], kind, tensors, **kw)
    finally:
        _C._set_cpu_engine("engine" if old == "steps" else old)


# (T, B, I, H): H = 1, 17 (a block and a 1-unit block), 129 (uneven 2-thread slices: 5 and
# 4 blocks), B = 1 and 7 (micro-kernel row chunks 6 + 1), T = 1.
SHAPES = [(5, 1, 3, 1), (6, 7, 5, 17), (4, 3, 2, 129), (1, 2, 3, 16), (9, 7, 1, 33),
          (3, 1, 4, 64)]
VARIANTS = [("lstm", 0), ("lstm", "half"), ("gru", 0)]


def proj_size(P, H):
    return max(1, H // 2) if P == "half" else 0


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
@pytest.mark.parametrize("kind,P", VARIANTS, ids=["lstm", "lstm_proj", "gru"])
def test_matches_torchnn(engine, kind, P, shape, reverse, threads):
    T, B, I, H = shape
    if P and H < 2:
        pytest.skip("torch.nn needs proj_size < hidden_size")
    torch.set_num_threads(threads)
    tensors = make_tensors(kind, T, B, I, H, proj_size(P, H), dtype=F32)
    lengths = None
    if B > 1 and T > 1:
        lengths = torch.tensor([T] + [1 + (3 * b) % T for b in range(1, B)])
    ours = run(kind, tensors, reverse=reverse, lengths=lengths)
    theirs = forward_backward(TORCHNN[kind], kind, tensors, reverse=reverse, lengths=lengths)
    ref64 = forward_backward(TORCHNN[kind], kind, cast(tensors, F64), reverse=reverse,
                             lengths=lengths)
    assert_close_by_reference(ours, theirs, ref64, FLOOR32)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_large_hidden_precision(engine, kind):
    """K = 4H = 1024 terms per element of dgates_t W_hh: the micro-kernel's blocked FMA
    chains keep the error within the rule (one chain over all K terms did not, with margin)."""
    torch.set_num_threads(2)
    T, B, I, H = 30, 4, 16, 256
    tensors = make_tensors(kind, T, B, I, H, dtype=F32)
    ours = run(kind, tensors)
    theirs = forward_backward(TORCHNN[kind], kind, tensors)
    ref64 = forward_backward(TORCHNN[kind], kind, cast(tensors, F64))
    assert_close_by_reference(ours, theirs, ref64, FLOOR32)


OPTIONS = {
    "value": dict(grad_clip=0.05),
    "norm": dict(grad_clip=0.1, grad_clip_mode="norm"),
    "trunc2": dict(truncate=2),
    "trunc1": dict(truncate=1),
    "cell_clip": dict(cell_clip=0.3),
    "value_trunc3": dict(grad_clip=0.05, truncate=3),
    "norm_trunc4": dict(grad_clip=0.1, grad_clip_mode="norm", truncate=4),
    "norm_cell_trunc2": dict(grad_clip=0.1, grad_clip_mode="norm", cell_clip=0.3, truncate=2),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("lengths", [None, [6, 3, 1, 5, 6]], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", sorted(OPTIONS))
@pytest.mark.parametrize("kind,P", VARIANTS, ids=["lstm", "lstm_proj", "gru"])
def test_options_match_reference(engine, kind, P, name, reverse, lengths, threads):
    options = OPTIONS[name]
    if kind == "gru" and "cell_clip" in options:
        pytest.skip("GRU has no cell state")
    torch.set_num_threads(threads)
    T, B, I, H = 6, 5, 3, 37  # H = 37: 3 blocks, the last one short; uneven thread slices
    tensors = make_tensors(kind, T, B, I, H, proj_size(P, 20), dtype=F32, weight_scale=3.0,
                           input_scale=2.0)
    kw = dict(reverse=reverse, lengths=None if lengths is None else torch.tensor(lengths),
              **options)
    ours = run(kind, tensors, **kw)
    theirs = forward_backward(REFERENCE[kind], kind, tensors, **kw)
    ref64 = forward_backward(REFERENCE[kind], kind, cast(tensors, F64), **kw)
    assert_close_by_reference(ours, theirs, ref64, FLOOR32)
    # The engine and the per-step loop compute the same function (to float32 rounding).
    steps = steps_run(kind, tensors, **kw)
    for k in ours:
        torch.testing.assert_close(ours[k], steps[k], rtol=1e-4, atol=1e-5)


def _packed(lengths):
    """batch_sizes and the padded -> packed row index of sorted, descending lengths."""
    T = max(lengths)
    batch_sizes = torch.tensor([sum(1 for n in lengths if n > t) for t in range(T)])
    index = [t * len(lengths) + b for t in range(T) for b in range(len(lengths))
             if lengths[b] > t]
    return batch_sizes, torch.tensor(index)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", ["plain", "norm_trunc4", "value_trunc3"])
@pytest.mark.parametrize("kind,P", VARIANTS, ids=["lstm", "lstm_proj", "gru"])
def test_packed_equals_padded_with_lengths(engine, kind, P, name, reverse, threads):
    """Packed input (batch_sizes) gives the padded-with-lengths gradients, on the engine."""
    torch.set_num_threads(threads)
    options = {} if name == "plain" else OPTIONS[name]
    lengths = [7, 7, 5, 4, 2, 1]
    T, B, I, H = 7, len(lengths), 3, 21
    tensors = make_tensors(kind, T, B, I, H, proj_size(P, H), dtype=F32, weight_scale=2.0)
    padded = run(kind, tensors, reverse=reverse, lengths=torch.tensor(lengths), **options)
    batch_sizes, index = _packed(lengths)
    packed_t = dict(tensors)
    packed_t["input"] = tensors["input"].reshape(T * B, I)[index]
    before = engine_runs(kind)
    leaves = {n: v.detach().clone().requires_grad_() for n, v in packed_t.items()}
    args = [leaves.get(n) for n in ("input", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "h0")]
    if kind == "lstm":
        args.append(leaves["c0"])
    kw = dict(batch_sizes=batch_sizes, reverse=reverse, **options)
    if "weight_hr" in leaves:
        kw["weight_hr"] = leaves["weight_hr"]
    outs = OPS[kind](*args, **kw)
    # The padded run's upstream gradients at the packed rows (forward_backward's seed).
    from helpers import upstream_grads
    pad_outs = (torch.zeros(T, B, outs[0].shape[-1]),) + tuple(torch.zeros_like(o) for o in outs[1:])
    grads = upstream_grads(pad_outs)
    g_out = grads[0].reshape(T * B, -1)[index]
    torch.autograd.backward(outs, (g_out,) + tuple(grads[1:]))
    assert engine_runs(kind) == before + 1
    for n, leaf in leaves.items():
        want = padded["grad_" + n]
        if n == "input":
            want = want.reshape(T * B, I)[index]
        torch.testing.assert_close(leaf.grad, want, rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_module_packed_bidirectional_matches_torchnn(engine, cell, threads):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    T, B, I, H = 9, 6, 5, 40
    ref = getattr(torch.nn, cell)(I, H, num_layers=2, bidirectional=True).double()
    lengths = torch.tensor([9, 4, 7, 1, 9, 3])
    x = torch.randn(T, B, I, dtype=F64)

    def build(dtype):
        def b(leaves):
            return pack_padded_sequence(leaves["x"], lengths, enforce_sorted=False), None
        return b

    results = {}
    for name, dtype in (("ref64", F64), ("torchnn", F32), ("ours", F32)):
        if name == "ours":
            module = getattr(fusedrnn, cell)(I, H, num_layers=2, bidirectional=True)
        else:
            module = getattr(torch.nn, cell)(I, H, num_layers=2, bidirectional=True).to(dtype)
        module.load_state_dict(ref.state_dict())
        before = engine_runs(cell.lower())
        results[name], _ = module_forward_backward(module, {"x": x.to(dtype).requires_grad_()},
                                                  build(dtype))
        if name == "ours":
            assert engine_runs(cell.lower()) == before + 4  # 2 layers x 2 directions
    assert_close_by_reference(results["ours"], results["torchnn"], results["ref64"], FLOOR32)


# ---------------------------------------------------------------------------------------
# The gradient record
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("clip,mode", [(None, "value"), (0.02, "value"), (0.05, "norm")])
@pytest.mark.parametrize("kind,P", VARIANTS, ids=["lstm", "lstm_proj", "gru"])
def test_record_equals_steps_and_float64(engine, kind, P, clip, mode, packed, threads):
    torch.set_num_threads(threads)
    lengths = [8, 8, 6, 3, 1]
    T, B, I, H = 8, len(lengths), 4, 37
    t = make_tensors(kind, T, B, I, H, proj_size(P, H), weight_scale=2.0)
    kw = dict(grad_clip=clip, grad_clip_mode=mode, truncate=3)
    if packed:
        batch_sizes, index = _packed(lengths)
        t["input"] = t["input"].reshape(T * B, I)[index]
        kw["batch_sizes"] = batch_sizes
    else:
        kw["lengths"] = torch.tensor(lengths)

    def record_of(dtype, mode_name):
        old = _C._set_cpu_engine(mode_name)
        try:
            leaves = {n: v.detach().to(dtype).requires_grad_() for n, v in t.items()}
            args = [leaves.get(n) for n in ("input", "weight_ih", "weight_hh", "bias_ih",
                                            "bias_hh", "h0")]
            if kind == "lstm":
                args.append(leaves["c0"])
            extra = {"weight_hr": leaves["weight_hr"]} if "weight_hr" in leaves else {}
            record = ops.new_grad_record(T)
            before = engine_runs(kind)
            out = OPS[kind](*args, grad_record=record, **extra, **kw)
            gen = torch.Generator().manual_seed(5)
            sum((o * torch.randn(o.shape, generator=gen, dtype=F64).to(dtype)).sum()
                for o in out).backward()
            ran = engine_runs(kind) - before
            return record.grad, ran
        finally:
            _C._set_cpu_engine(old)

    ours, ran = record_of(F32, "engine")
    assert ran == 1
    steps, _ = record_of(F32, "steps")
    want, _ = record_of(F64, "steps")
    assert bool((ours[0] > 0).any())
    torch.testing.assert_close(ours[0], steps[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours[0].double(), want[0].double(), rtol=1e-4, atol=1e-6)
    R = proj_size(P, H) or H
    # A float32 element (value mode) or row (norm mode) may sit on the clip boundary.
    assert (ours[1] - steps[1]).abs().max() <= 1.0 / R + 1e-6
    assert (ours[1].double() - want[1].double()).abs().max() <= 1.0 / R + 1e-6
    if clip is not None:
        assert float(ours[1].max()) > 0


# ---------------------------------------------------------------------------------------
# Determinism, barriers, threads
# ---------------------------------------------------------------------------------------


def _all(result):
    return [result[k] for k in sorted(result)]


@pytest.mark.parametrize("kind,P", VARIANTS, ids=["lstm", "lstm_proj", "gru"])
def test_bitwise_repeatable_and_thread_count_independent(engine, kind, P):
    """Bitwise equal between repeated runs, and between 1 and 2 threads (every element is
    computed by the same arithmetic whatever the split; norm partials per 16-unit block).

    With 3 threads (more than the 2 cores of the CI machines: oversubscribed) what the
    engines compute (outputs, final states, the gradients into h0 and c0) is still the same
    bits; the input and weight gradients are GEMMs over all steps after the loop, and BLAS
    may split their sums by the thread count (MKL does on AMD EPYC at 3 threads, by one
    ulp), so there they are held to float32 rounding only."""
    T, B, I, H = 12, 7, 5, 83
    tensors = make_tensors(kind, T, B, I, H, proj_size(P, H), dtype=F32, weight_scale=2.0)
    kw = dict(grad_clip=0.05, grad_clip_mode="norm", truncate=5,
              lengths=torch.tensor([12, 3, 12, 7, 1, 9, 12]))
    results = []
    for threads in (2, 2, 1, 3, 2):
        torch.set_num_threads(threads)
        results.append((threads, run(kind, tensors, **kw)))
    first = results[0][1]
    for threads, other in results[1:]:
        assert sorted(other) == sorted(first)
        for key in sorted(first):
            if threads <= 2 or not key.startswith(("grad_input", "grad_weight", "grad_bias")):
                assert torch.equal(other[key], first[key]), (threads, key)
            else:
                torch.testing.assert_close(other[key], first[key], rtol=4e-7, atol=4e-7)


@pytest.mark.parametrize("kind,P", VARIANTS, ids=["lstm", "lstm_proj", "gru"])
def test_many_steps_uneven_slices_norm_clip(engine, kind, P):
    """Many steps, 2 threads with slices of 5 and 4 blocks (H = 129: the last block has one
    unit), norm clip active at most steps: a missing barrier would let a thread read a
    stale row of dgates_t or stale partials, which the reference comparison catches."""
    torch.set_num_threads(2)
    T, B, I, H = 200, 3, 4, 129
    tensors = make_tensors(kind, T, B, I, H, proj_size(P, 40), dtype=F32, weight_scale=2.0)
    kw = dict(grad_clip=0.05, grad_clip_mode="norm")
    ours = run(kind, tensors, **kw)
    theirs = forward_backward(REFERENCE[kind], kind, tensors, **kw)
    ref64 = forward_backward(REFERENCE[kind], kind, cast(tensors, F64), **kw)
    assert_close_by_reference(ours, theirs, ref64, FLOOR32)
    torch.set_num_threads(1)
    single = run(kind, tensors, **kw)
    for a, b in zip(_all(ours), _all(single)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("how", ["auto", "rows"])
@pytest.mark.parametrize("kind,P", VARIANTS, ids=["lstm", "lstm_proj", "gru"])
def test_concurrent_python_threads(engine, split, kind, P, how):
    """Several Python threads running engine backwards at once, threads splitting units or
    rows: no deadlock, same results."""
    torch.set_num_threads(2)
    split(how)
    T, B, I, H = 20, 5, 4, 48
    tensors = make_tensors(kind, T, B, I, H, proj_size(P, H), dtype=F32)
    kw = dict(grad_clip=0.1, grad_clip_mode="norm", truncate=7)
    want = _all(forward_backward(OPS[kind], kind, tensors, **kw))
    errors, done = [], []

    def worker():
        try:
            for _ in range(5):
                got = _all(forward_backward(OPS[kind], kind, tensors, **kw))
                for a, b in zip(got, want):
                    assert torch.equal(a, b)
            done.append(1)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads), "deadlock: a worker did not finish"
    assert not errors, errors
    assert len(done) == 4


def test_steps_mode_and_float64_do_not_use_the_engine(engine):
    tensors = make_tensors("lstm", 4, 2, 3, 8, dtype=F64)
    before = engine_runs("lstm")
    forward_backward(ops.lstm_layer, "lstm", tensors)
    assert engine_runs("lstm") == before  # float64 stays on the per-step loop
    _C._set_cpu_engine("steps")
    forward_backward(ops.lstm_layer, "lstm", cast(tensors, F32))
    assert engine_runs("lstm") == before


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
@pytest.mark.parametrize("kind,P", VARIANTS, ids=["lstm", "lstm_proj", "gru"])
def test_every_capability(engine, kind, P, capability, cpu_capability):
    """The engine's kernels of each SIMD capability (portable, AVX2, AVX-512: different
    register tiles and partial-sum code) against the reference, with norm clip, truncation,
    lengths and the record, on 2 threads."""
    cpu_capability(capability)
    torch.set_num_threads(2)
    T, B, I, H = 9, 7, 3, 37
    tensors = make_tensors(kind, T, B, I, H, proj_size(P, 20), dtype=F32, weight_scale=3.0)
    kw = dict(grad_clip=0.1, grad_clip_mode="norm", truncate=4,
              lengths=torch.tensor([9, 2, 9, 5, 1, 7, 9]))
    ours = run(kind, tensors, **kw)
    theirs = forward_backward(REFERENCE[kind], kind, tensors, **kw)
    ref64 = forward_backward(REFERENCE[kind], kind, cast(tensors, F64), **kw)
    assert_close_by_reference(ours, theirs, ref64, FLOOR32)


# ---------------------------------------------------------------------------------------
# Row split (Note [Engine row split] in csrc/cpu/engine_fwd.cpp, and its backward in
# bwd_engine.cpp): each thread its batch rows over all units, no barrier in the loop
# ---------------------------------------------------------------------------------------

BWD_ROWS = {"lstm": 6, "gru": 7}  # row-split backward counters in _C._engine_runs()

ROW_SPLIT_OPTIONS = {
    "plain": dict(),
    "norm_truncate": dict(grad_clip=0.05, grad_clip_mode="norm", truncate=4),
    "value": dict(grad_clip=0.02),
    "cell_clip_norm": dict(grad_clip=0.05, grad_clip_mode="norm", cell_clip=0.5),
}


def _record_run(kind, tensors, T=None, **kw):
    """forward_backward with a gradient record; returns every result and the record."""
    leaves = {n: v.detach().clone().requires_grad_() for n, v in tensors.items()}
    args = [leaves.get(n) for n in ("input", "weight_ih", "weight_hh", "bias_ih", "bias_hh",
                                    "h0")]
    if kind == "lstm":
        args.append(leaves["c0"])
    extra = {"weight_hr": leaves["weight_hr"]} if "weight_hr" in leaves else {}
    record = ops.new_grad_record(T or tensors["input"].shape[0])
    out = OPS[kind](*args, grad_record=record, **extra, **kw)
    gen = torch.Generator().manual_seed(5)
    sum((o * torch.randn(o.shape, generator=gen)).sum() for o in out).backward()
    return [o.detach() for o in out] + [leaves[n].grad for n in sorted(leaves)] + [record.grad]


@pytest.mark.parametrize("options", list(ROW_SPLIT_OPTIONS))
@pytest.mark.parametrize("B", [3, 9])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("kind,P", VARIANTS, ids=["lstm", "lstm_proj", "gru"])
def test_row_split_bitwise_equals_unit_split(engine, split, kind, P, reverse, B, options):
    """Uneven rows (B = 3, 9 on two threads), lengths, reverse, projection, norm and value
    clip, truncation, cell clip, the gradient record: the row split's outputs, gradients and
    record are bitwise the unit split's, and the counters show which split ran."""
    if kind == "gru" and "cell_clip" in ROW_SPLIT_OPTIONS[options]:
        pytest.skip("the GRU has no cell clip")
    torch.set_num_threads(2)
    T, I, H = 11, 4, 80  # H = 80: five 16-unit blocks, uneven between two threads
    tensors = make_tensors(kind, T, B, I, H, proj_size(P, H), dtype=F32, weight_scale=2.0,
                           seed=B)
    kw = dict(ROW_SPLIT_OPTIONS[options], reverse=reverse,
              lengths=torch.tensor([T - (b * 4) % T for b in range(B)]))
    results = {}
    for name in ("units", "rows"):
        split(name)
        before = list(_C._engine_runs())
        results[name] = _record_run(kind, tensors, **kw)
        after = _C._engine_runs()
        assert after[BWD_RUN[kind]] == before[BWD_RUN[kind]] + 1
        assert after[BWD_ROWS[kind]] - before[BWD_ROWS[kind]] == (name == "rows")
    for a, b in zip(results["units"], results["rows"]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind,P", VARIANTS, ids=["lstm", "lstm_proj", "gru"])
def test_row_split_packed_forced(engine, split, kind, P):
    """Packed input with the row split forced (auto keeps packed batches on the unit split):
    rows that end early retire into h0 on the thread that owns them; bitwise the unit
    split."""
    torch.set_num_threads(2)
    lengths = [9, 9, 7, 4, 4, 2, 1]
    T, B, I, H = 9, len(lengths), 3, 48
    t = make_tensors(kind, T, B, I, H, proj_size(P, H), dtype=F32, weight_scale=2.0)
    batch_sizes, index = _packed(lengths)
    t["input"] = t["input"].reshape(T * B, I)[index]
    kw = dict(grad_clip=0.05, grad_clip_mode="norm", truncate=3, batch_sizes=batch_sizes)
    results = {}
    for name in ("units", "rows"):
        split(name)
        before = _C._engine_runs()[BWD_ROWS[kind]]
        results[name] = _record_run(kind, t, T=T, **kw)
        assert _C._engine_runs()[BWD_ROWS[kind]] - before == (name == "rows")
    for a, b in zip(results["units"], results["rows"]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind,P", VARIANTS, ids=["lstm", "lstm_proj", "gru"])
def test_row_split_many_steps_norm_clip(engine, split, kind, P):
    """No barrier at all in the row split's loop: many steps with the norm clip active,
    against the reference in float64."""
    torch.set_num_threads(2)
    split("rows")
    T, B, I, H = 150, 5, 4, 129
    tensors = make_tensors(kind, T, B, I, H, proj_size(P, 40), dtype=F32, weight_scale=2.0)
    kw = dict(grad_clip=0.05, grad_clip_mode="norm")
    before = _C._engine_runs()[BWD_ROWS[kind]]
    ours = run(kind, tensors, **kw)
    assert _C._engine_runs()[BWD_ROWS[kind]] == before + 1
    theirs = forward_backward(REFERENCE[kind], kind, tensors, **kw)
    ref64 = forward_backward(REFERENCE[kind], kind, cast(tensors, F64), **kw)
    assert_close_by_reference(ours, theirs, ref64, FLOOR32)
