"""In-kernel recording of the recurrent gradient (``grad_record`` on the ops,
``track_grad_norms`` on the modules; Note [Recording recurrent gradient norms]).

The yardstick is ``fusedrnn.reference`` observed with autograd hooks: ``RefRecorder`` wraps
the reference's hand-over of the state to each processed step and records the gradient
arriving there, i.e. dh_rec of the previous processed step *before* the clip, for the rows
that have one (not a sequence's first step, not a truncation point). Records are compared
in float64 (and in float32 against the float64 record).
"""
import math

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from fusedrnn import ops, reference

from helpers import ReferenceRNN, make_tensors

CLIPS = [(None, "value"), (0.02, "value"), (0.05, "norm")]


class RefRecorder:
    """Records, per reference layer call, norms and clip fractions of dh_rec_t via hooks."""

    def __init__(self, monkeypatch, kind, grad_clip=None, grad_clip_mode="value"):
        self.kind, self.clip, self.mode = kind, grad_clip, grad_clip_mode
        self.layers = []  # one dict per layer call: sumsq, changed, counted [T]
        self._step = None
        orig_schedule, orig_hand_over = reference._schedule, reference._hand_over

        def schedule(T, lengths, reverse, truncate):
            rec = {name: torch.zeros(T, dtype=torch.float64)
                   for name in ("sumsq", "changed", "counted")}
            self.layers.append(rec)
            for t, rows, cut in orig_schedule(T, lengths, reverse, truncate):
                s = (lengths - 1 - t) if reverse else torch.full_like(lengths, t)
                counted = rows[:, 0] & (s > 0)
                if cut is not None:
                    counted &= ~cut[:, 0]
                producer = t + 1 if reverse else t - 1
                self._step = [rec, producer, counted, 0]
                yield t, rows, cut

        def hand_over(state, rows, cut, grad_clip, grad_clip_mode):
            out = orig_hand_over(state, rows, cut, grad_clip, grad_clip_mode)
            step = self._step
            if step[3] == 0 and out.requires_grad and bool(step[2].any()):  # h (LSTM: then c)
                rec, producer, counted = step[0], step[1], step[2].clone()
                out.register_hook(lambda g: self._observe(rec, producer, counted, g))
            step[3] += 1
            return out

        monkeypatch.setattr(reference, "_schedule", schedule)
        monkeypatch.setattr(reference, "_hand_over", hand_over)

    def _observe(self, rec, t, counted, grad):
        g = grad.detach().double()[counted]  # [rows, R]
        rec["sumsq"][t] += (g * g).sum()
        rec["counted"][t] += g.shape[0]
        if self.clip is not None and self.mode == "value":
            rec["changed"][t] += (g.abs() > self.clip).double().mean(1).sum()
        elif self.clip is not None:
            rec["changed"][t] += (torch.linalg.vector_norm(g, dim=1) > self.clip).double().sum()

    def result(self):
        """[layers, T] norms and clip fractions."""
        norms = torch.stack([r["sumsq"].sqrt() for r in self.layers])
        fraction = torch.stack([
            torch.where(r["counted"] > 0, r["changed"] / r["counted"].clamp_min(1),
                        torch.zeros_like(r["counted"])) for r in self.layers])
        return norms, fraction


def _op_args(kind, t):
    names = ["input", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "h0"]
    if kind == "lstm":
        names.append("c0")
    return [t.get(n) for n in names]


def _run_op(fn, kind, t, grad_seed=7, **kw):
    """Forward + backward of one layer op with seeded output gradients; returns leaf grads."""
    leaves = {n: v.detach().clone().requires_grad_() for n, v in t.items()}
    if kind == "lstm" and "weight_hr" in leaves:
        kw["weight_hr"] = leaves["weight_hr"]
    out = fn(*_op_args(kind, leaves), **kw)
    gen = torch.Generator().manual_seed(grad_seed)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)).sum()
               for o in out)
    loss.backward()
    return out, {n: v.grad for n, v in leaves.items()}


def _assert_record(got, want_norms, want_fraction, rtol=1e-9):
    torch.testing.assert_close(got[0].double(), want_norms.double(), rtol=max(rtol, 2e-6),
                               atol=1e-30)
    torch.testing.assert_close(got[1].double(), want_fraction.double(), rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("kind,P", [("lstm", 0), ("lstm", 3), ("gru", 0)])
@pytest.mark.parametrize("clip,mode", CLIPS)
@pytest.mark.parametrize("truncate", [None, 3])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [None, [7, 3, 9, 1, 5]])
def test_op_record_equals_reference_hooks(monkeypatch, kind, P, clip, mode, truncate, reverse,
                                          lengths):
    T, B, I, H = 9, 5, 4, 6
    t = make_tensors(kind, T, B, I, H, P, weight_scale=2.0)
    fused, ref = getattr(ops, kind + "_layer"), getattr(reference, kind + "_layer")
    opts = dict(grad_clip=clip, grad_clip_mode=mode, truncate=truncate, reverse=reverse,
                lengths=None if lengths is None else torch.tensor(lengths))
    record = ops.new_grad_record(T)
    _, grads = _run_op(fused, kind, t, grad_record=record, **opts)
    recorder = RefRecorder(monkeypatch, kind, clip, mode)
    _, ref_grads = _run_op(ref, kind, t, **opts)
    norms, fraction = recorder.result()
    _assert_record(record.grad, norms[0], fraction[0])
    # The record is not trivial: some steps carry a gradient, and an active clip changes
    # part of it (neither nothing nor everything).
    assert bool((record.grad[0] > 0).any())
    if clip is not None:
        assert 0 < float(record.grad[1].max()) and float(record.grad[1].min()) < 1
    for name in grads:  # recording did not change the gradients
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_steps_without_recurrent_gradient_record_zero(kind):
    """Forward: the last step has no next step; reverse: the first. Truncation points too."""
    T, B, I, H = 8, 3, 2, 4
    t = make_tensors(kind, T, B, I, H)
    fused = getattr(ops, kind + "_layer")
    for reverse, last in ((False, T - 1), (True, 0)):
        record = ops.new_grad_record(T)
        _run_op(fused, kind, t, grad_record=record, reverse=reverse, truncate=3)
        norms = record.grad[0]
        cut = [tt for tt in range(T) if ((T - 1 - tt if reverse else tt) + 1) % 3 == 0]
        zero = sorted(set(cut) | {last})
        assert norms[zero].eq(0).all(), (reverse, norms)
        assert norms[[tt for tt in range(T) if tt not in zero]].gt(0).all(), (reverse, norms)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("clip,mode", CLIPS)
def test_packed_record_equals_padded_with_lengths(kind, clip, mode):
    T, B, I, H = 7, 4, 3, 5
    t = make_tensors(kind, T, B, I, H, weight_scale=2.0)
    lengths = torch.tensor([7, 6, 4, 2])  # sorted: the packed batch order is the padded one
    fused = getattr(ops, kind + "_layer")
    for reverse in (False, True):
        padded = ops.new_grad_record(T)
        _run_op(fused, kind, t, grad_record=padded, lengths=lengths, reverse=reverse,
                grad_clip=clip, grad_clip_mode=mode)
        packed_t = dict(t)
        packed_t["input"] = pack_padded_sequence(t["input"], lengths).data
        batch_sizes = pack_padded_sequence(t["input"], lengths).batch_sizes
        packed = ops.new_grad_record(len(batch_sizes))
        leaves = {n: v.detach().clone().requires_grad_() for n, v in packed_t.items()}
        out = fused(*_op_args(kind, leaves), batch_sizes=batch_sizes, reverse=reverse,
                    grad_clip=clip, grad_clip_mode=mode, grad_record=packed)
        # The same output gradients, placed in the packed layout.
        gen = torch.Generator().manual_seed(7)
        gy = torch.randn(out[0].shape[:0] + (T, B, H), generator=gen, dtype=torch.float64)
        gy_packed = pack_padded_sequence(gy, lengths).data
        rest = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in out[1:]]
        (out[0] * gy_packed).sum().add(sum((o * g).sum() for o, g in zip(out[1:], rest))).backward()
        padded2 = ops.new_grad_record(T)
        leaves2 = {n: v.detach().clone().requires_grad_() for n, v in t.items()}
        out2 = fused(*_op_args(kind, leaves2), lengths=lengths, reverse=reverse, grad_clip=clip,
                     grad_clip_mode=mode, grad_record=padded2)
        (out2[0] * gy).sum().add(sum((o * g).sum() for o, g in zip(out2[1:], rest))).backward()
        torch.testing.assert_close(packed.grad, padded2.grad, rtol=1e-6, atol=1e-12)


def _module_case(kind, proj, batch_first, seed=0):
    torch.manual_seed(seed)
    cls = fusedrnn.LSTM if kind == "lstm" else fusedrnn.GRU
    kw = dict(proj_size=proj) if proj else {}
    return cls(5, 6, num_layers=2, bidirectional=True, batch_first=batch_first,
               dtype=torch.float64, **kw)


@pytest.mark.parametrize("kind,proj", [("lstm", 0), ("lstm", 4), ("gru", 0)])
@pytest.mark.parametrize("clip,mode", CLIPS)
@pytest.mark.parametrize("packed", [False, True])
def test_module_grad_norms_equal_reference_stack(monkeypatch, kind, proj, clip, mode, packed):
    T, B = 8, 4
    module = _module_case(kind, proj, batch_first=False)
    module.grad_clip, module.grad_clip_mode, module.truncate = clip, mode, 5
    module.track_grad_norms = True
    x = torch.randn(T, B, 5, dtype=torch.float64) * 2
    lengths = torch.tensor([5, 8, 2, 6])  # unsorted: packing sorts, the records are per step
    inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x

    def loss_of(out):
        data = out.data if packed else out
        w = torch.linspace(-1, 1, data.numel(), dtype=data.dtype).view_as(data)
        return (data * w).sum()

    out, _ = module(inp)
    assert module.grad_norms is None  # nothing before backward
    loss_of(out).backward()
    got_norms, got_fraction = module.grad_norms, module.grad_clip_fraction
    assert got_norms.shape == (4, T) and got_norms.dtype == torch.float32

    recorder = RefRecorder(monkeypatch, kind, clip, mode)
    ref = ReferenceRNN(kind, module, grad_clip=clip, grad_clip_mode=mode, truncate=5)
    out_ref, _ = ref(inp)
    loss_of(out_ref).backward()
    norms, fraction = recorder.result()
    _assert_record(torch.stack([got_norms, got_fraction]), norms, fraction)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("clip,mode", CLIPS)
def test_recording_changes_nothing(kind, clip, mode):
    """Bitwise the same outputs and gradients with recording on and off."""
    results = []
    for track in (False, True):
        torch.manual_seed(3)
        module = (fusedrnn.LSTM if kind == "lstm" else fusedrnn.GRU)(
            7, 33, num_layers=2, bidirectional=True, grad_clip=clip, grad_clip_mode=mode,
            truncate=4, track_grad_norms=track)
        x = torch.randn(11, 5, 7, requires_grad=True)
        out, _ = module(x)
        out.pow(2).sum().backward()
        results.append([out.detach(), x.grad] + [p.grad for p in module.parameters()])
        assert (module.grad_norms is not None) == track
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("clip,mode", CLIPS)
@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_float32_record_on_every_cpu_path(kind, clip, mode, capability, cpu_capability):
    """float32 records (SIMD body and scalar tail: H = 37) match the float64 record."""
    cpu_capability(capability)
    T, B, I, H = 6, 5, 4, 37
    t = make_tensors(kind, T, B, I, H, weight_scale=2.0)
    fused = getattr(ops, kind + "_layer")
    records = {}
    for dtype in (torch.float64, torch.float32):
        record = ops.new_grad_record(T)
        _run_op(fused, kind, {n: v.to(dtype) for n, v in t.items()}, grad_record=record,
                grad_clip=clip, grad_clip_mode=mode)
        records[dtype] = record.grad
    torch.testing.assert_close(records[torch.float32][0], records[torch.float64][0],
                               rtol=1e-4, atol=1e-6)
    # A float32 element may sit on the clip boundary; allow one element's worth.
    assert (records[torch.float32][1] - records[torch.float64][1]).abs().max() <= 1.0 / H + 1e-6


def test_module_record_api():
    module = fusedrnn.GRU(3, 4, num_layers=3, track_grad_norms=True)
    assert "track_grad_norms=True" in repr(module)
    x = torch.randn(5, 2, 3)
    with torch.no_grad():
        module(x)
    assert module.grad_norms is None and module.grad_clip_fraction is None
    out, h = module(x)
    out.sum().backward(retain_graph=True)
    first = module.grad_norms.clone()
    assert module.grad_clip_fraction.eq(0).all()  # no grad_clip: nothing is clipped
    out.sum().backward()  # a second backward through the same graph adds up, like .grad
    torch.testing.assert_close(module.grad_norms, 2 * first)
    # Layers that the loss does not reach record zeros: only h_n of layer 0 is used.
    out, h = module(x)
    h[0].sum().backward()
    assert module.grad_norms.shape == (3, 5)
    assert module.grad_norms[1:].eq(0).all() and module.grad_norms[0, :-1].gt(0).all()
    module.track_grad_norms = False
    module(x)[0].sum().backward()
    assert module.grad_norms is None
    with pytest.raises(TypeError, match="track_grad_norms must be a bool"):
        fusedrnn.LSTM(3, 4, track_grad_norms=1)


def test_grad_record_argument_errors():
    t = make_tensors("lstm", 4, 2, 3, 5)
    args = _op_args("lstm", t)
    with pytest.raises(ValueError, match=r"grad_record must have shape \(2, T\) = \(2, 4\)"):
        ops.lstm_layer(*args, grad_record=torch.zeros(2, 5, requires_grad=True))
    with pytest.raises(TypeError, match="grad_record must be float32"):
        ops.lstm_layer(*args, grad_record=torch.zeros(2, 4, dtype=torch.float64,
                                                      requires_grad=True))
    with pytest.raises(ValueError, match="grad_record must require grad"):
        ops.gru_layer(*_op_args("gru", make_tensors("gru", 4, 2, 3, 5)),
                      grad_record=torch.zeros(2, 4))
    with pytest.raises(TypeError, match="grad_record must be a tensor"):
        ops.lstm_layer(*args, grad_record=[[0.0] * 4] * 2)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        ops.new_grad_record(0)


def test_record_only_leaf_still_records():
    """Nothing but the record requires grad: the backward still runs for it."""
    t = make_tensors("lstm", 5, 2, 3, 4)
    record = ops.new_grad_record(5)
    y, h, c = ops.lstm_layer(*_op_args("lstm", t), grad_record=record)
    assert y.requires_grad
    y.sum().backward()
    assert record.grad is not None and bool(record.grad[0, :-1].gt(0).all())


def test_opcheck_and_compile_with_record():
    t = make_tensors("gru", 4, 3, 2, 5)
    record = ops.new_grad_record(4)
    leaves = [v.requires_grad_() if v is not None else v for v in _op_args("gru", t)]
    torch.library.opcheck(torch.ops.fusedrnn.gru_layer.default, tuple(leaves),
                          dict(grad_clip=0.1, grad_clip_mode="norm", grad_record=record))

    def step(x, w_ih, w_hh, rec):
        y, h = ops.gru_layer(x, w_ih, w_hh, grad_clip=0.1, grad_clip_mode="norm",
                             grad_record=rec)
        return y.sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    rec_eager, rec_compiled = ops.new_grad_record(4), ops.new_grad_record(4)
    x, w_ih, w_hh = t["input"], t["weight_ih"].detach(), t["weight_hh"].detach()
    step(x, w_ih, w_hh, rec_eager).backward()
    compiled(x, w_ih, w_hh, rec_compiled).backward()
    torch.testing.assert_close(rec_compiled.grad, rec_eager.grad)
    assert math.isfinite(float(rec_eager.grad.sum()))


def test_module_tracking_under_torch_compile():
    """A fresh record leaf per forward is a graph break for Dynamo (documented), not an
    error: the compiled module records what eager records."""
    torch.manual_seed(0)
    module = fusedrnn.LSTM(4, 8, track_grad_norms=True, grad_clip=0.01)
    x = torch.randn(6, 3, 4)

    def loss(x):
        out, _ = module(x)
        return out.sum()

    torch.compile(loss, backend="aot_eager")(x).backward()
    compiled = (module.grad_norms.clone(), module.grad_clip_fraction.clone())
    loss(x).backward()
    torch.testing.assert_close(compiled[0], module.grad_norms)
    torch.testing.assert_close(compiled[1], module.grad_clip_fraction)
