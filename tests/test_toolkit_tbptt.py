"""fusedrnn.tbptt.TBPTT against hand-written chunked loops over fusedrnn.reference (detach
between chunks, truncate=k2 inside each chunk): outputs, carried states and parameter
gradients accumulated over the chunks; row resets; the module's truncate restored; errors."""
import copy

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from fusedrnn import reference
from fusedrnn.tbptt import TBPTT
from helpers import ReferenceRNN

TIGHT = dict(rtol=1e-10, atol=1e-12)
T, B, I, H = 23, 4, 3, 5


def make_module(kind, *, batch_first=False, seed=0, **kw):
    torch.manual_seed(seed)
    cls = fusedrnn.LSTM if kind == "lstm" else fusedrnn.GRU
    return cls(I, H, batch_first=batch_first, dtype=torch.float64, **kw)


def data(seed=1, width=H, layers_dirs=1):
    """Input [T, B, I], loss weights for outputs [T, B, width] and final states [LD, B, H]."""
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    return rnd(T, B, I), rnd(T, B, width), rnd(layers_dirs, B, width), rnd(layers_dirs, B, H)


def chunk_loss(y, h_n, c_n, wy, wh, wc):
    """A loss that depends on every output step and on the final states of the chunk."""
    loss = (y * wy).sum() + (h_n * wh).sum()
    return loss if c_n is None else loss + (c_n * wc).sum()


def zero_rows(state, rows):
    """Out-of-place zeroing of rows (dim -2) of each state tensor."""
    mask = torch.zeros(B, dtype=torch.bool)
    mask[rows] = True
    return tuple(None if s is None else s.masked_fill(mask[:, None], 0) for s in state)


def manual_reference(kind, module, x, k1, k2, wy, wh, wc, *, state=None, resets=()):
    """The hand-written loop: single-layer reference ops, detach between chunks, truncate=k2
    inside each chunk, one backward per chunk accumulating into the parameters' .grad.
    resets: {chunk index: rows} zeroed after that chunk. Returns (outputs [T, B, H] time-major,
    (h, c) final state with c None for a GRU, {name: grad})."""
    params = {n: p.detach().clone().requires_grad_() for n, p in module.named_parameters()}
    args = [params[n + "_l0"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    resets = dict(resets)
    h, c = (None, None) if state is None else (state if kind == "lstm" else (state, None))
    outputs = []
    for i, start in enumerate(range(0, T, k1)):
        sl = slice(start, start + k1)
        h_in = None if h is None else h[0]
        c_in = None if c is None else c[0]
        if kind == "lstm":
            y, h_n, c_n = reference.lstm_layer(x[sl], *args, h_in, c_in, truncate=k2)
        else:
            (y, h_n), c_n = reference.gru_layer(x[sl], *args, h_in, truncate=k2), None
        chunk_loss(y, h_n[None], None if c_n is None else c_n[None], wy[sl], wh, wc).backward()
        outputs.append(y.detach())
        h, c = h_n.detach()[None], None if c_n is None else c_n.detach()[None]
        if i in resets:
            h, c = zero_rows((h, c), resets[i])
    return torch.cat(outputs), (h, c), {n: p.grad for n, p in params.items()}


def run_tbptt(kind, module, x, k1, k2, wy, wh, wc, *, state=None, resets=()):
    """The same loop through TBPTT (x given time-major, fed in the module's layout)."""
    bf = module.batch_first
    tbptt = TBPTT(module, k1, k2, state=state)
    resets = dict(resets)
    outputs = []
    for i, (xc, wyc, start) in enumerate(tbptt.chunks(x.transpose(0, 1) if bf else x,
                                                      wy.transpose(0, 1) if bf else wy)):
        out, final = tbptt(xc)
        h_n, c_n = final if kind == "lstm" else (final, None)
        chunk_loss(out, h_n, c_n, wyc, wh, wc).backward()
        outputs.append(out.detach().transpose(0, 1) if bf else out.detach())
        if i in resets:
            tbptt.reset(resets[i])
    return torch.cat(outputs), tbptt


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("k1,k2", [(7, 3), (7, None), (5, 5), (23, 4), (30, 1)])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_matches_manual_reference_loop(kind, k1, k2, batch_first):
    module = make_module(kind, batch_first=batch_first)
    x, wy, wh, wc = data()
    out, tbptt = run_tbptt(kind, module, x, k1, k2, wy, wh, wc)
    ref_out, ref_state, ref_grads = manual_reference(kind, module, x, k1, k2, wy, wh, wc)
    torch.testing.assert_close(out, ref_out, **TIGHT)
    state = tbptt.state if kind == "lstm" else (tbptt.state, None)
    for s, r in zip(state, ref_state):
        if r is not None:
            assert not s.requires_grad
            torch.testing.assert_close(s, r, **TIGHT)
    for n, p in module.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], **TIGHT, msg=n)
    assert module.truncate is None


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_k2_changes_gradients_and_none_means_whole_chunk(kind):
    """k2=None overrides the module's own truncate with None; k2=3 differs from it."""
    x, wy, wh, wc = data(seed=2)
    grads = {}
    for k2 in (None, 3):
        module = make_module(kind, truncate=4)
        run_tbptt(kind, module, x, 9, k2, wy, wh, wc)
        assert module.truncate == 4
        _, _, ref = manual_reference(kind, module, x, 9, k2, wy, wh, wc)
        for n, p in module.named_parameters():
            torch.testing.assert_close(p.grad, ref[n], **TIGHT, msg=n)
        grads[k2] = module.weight_hh_l0.grad
    _, _, with_4 = manual_reference(kind, make_module(kind), x, 9, 4, wy, wh, wc)
    assert not torch.allclose(grads[None], with_4["weight_hh_l0"])
    assert not torch.allclose(grads[None], grads[3])


@pytest.mark.parametrize("rows,expected_rows", [
    ([0, 2], [0, 2]),
    ([True, False, True, False], [0, 2]),
    (torch.tensor([2, -4]), [0, 2]),
    (torch.tensor([True, False, True, False]), [0, 2]),
    (3, [3]),
])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_resets_per_row(kind, rows, expected_rows):
    x, wy, wh, wc = data(seed=3)
    resets = {0: rows, 2: rows}
    module = make_module(kind)
    out, tbptt = run_tbptt(kind, module, x, 6, 4, wy, wh, wc, resets=resets)
    ref_out, ref_state, ref_grads = manual_reference(
        kind, module, x, 6, 4, wy, wh, wc, resets={0: expected_rows, 2: expected_rows})
    torch.testing.assert_close(out, ref_out, **TIGHT)
    for n, p in module.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], **TIGHT, msg=n)
    # The final (post-chunk-3) state is not reset: compare; and check that resetting matters.
    state = tbptt.state if kind == "lstm" else (tbptt.state,)
    for s, r in zip(state, ref_state):
        torch.testing.assert_close(s, r, **TIGHT)
    no_reset, _, _ = manual_reference(kind, module, x, 6, 4, wy, wh, wc)
    kept = [b for b in range(B) if b not in expected_rows]
    torch.testing.assert_close(out[6:12, kept], no_reset[6:12, kept], **TIGHT)
    assert not torch.allclose(out[6:12, expected_rows], no_reset[6:12, expected_rows])


def test_reset_zeroes_chosen_rows_only_and_does_not_touch_saved_tensors():
    module = make_module("lstm")
    tbptt = TBPTT(module, 4)
    x = data()[0]
    out, (h_n, c_n) = tbptt(x[:4])
    before = tuple(s.clone() for s in tbptt.state)
    tbptt.reset([1])
    for s, b in zip(tbptt.state, before):
        assert torch.count_nonzero(s[:, 1]) == 0
        torch.testing.assert_close(s[:, [0, 2, 3]], b[:, [0, 2, 3]], rtol=0, atol=0)
    out.sum().backward()  # reset before backward: the graph's tensors were not modified
    tbptt.reset()
    assert tbptt.state is None
    tbptt.reset([0])  # no state: nothing to zero
    assert tbptt.state is None


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_initial_state_and_its_gradient(kind):
    x, wy, wh, wc = data(seed=4)
    gen = torch.Generator().manual_seed(5)
    h0 = torch.randn(1, B, H, generator=gen, dtype=torch.float64)
    c0 = torch.randn(1, B, H, generator=gen, dtype=torch.float64)
    mine = (h0.clone().requires_grad_(), c0.clone().requires_grad_())
    theirs = (h0.clone().requires_grad_(), c0.clone().requires_grad_())
    if kind == "gru":
        mine, theirs = mine[0], theirs[0]
    module = make_module(kind)
    out, tbptt = run_tbptt(kind, module, x, 8, 3, wy, wh, wc, state=mine)
    ref_out, _, ref_grads = manual_reference(kind, module, x, 8, 3, wy, wh, wc, state=theirs)
    torch.testing.assert_close(out, ref_out, **TIGHT)
    for n, p in module.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], **TIGHT, msg=n)
    for a, b in zip(mine if kind == "lstm" else (mine,), theirs if kind == "lstm" else (theirs,)):
        assert a.grad is not None and torch.count_nonzero(a.grad) > 0
        torch.testing.assert_close(a.grad, b.grad, **TIGHT)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kind,kw", [("lstm", dict(proj_size=3)), ("lstm", {}), ("gru", {})])
def test_multilayer_bidirectional_matches_reference_stack(kind, kw, batch_first):
    """A 2-layer bidirectional module through TBPTT equals the reference stack (tests/helpers)
    driven chunk by chunk with detach and truncate=k2."""
    module = make_module(kind, num_layers=2, bidirectional=True, batch_first=batch_first, **kw)
    ref = ReferenceRNN(kind, copy.deepcopy(module), truncate=3)
    R = kw.get("proj_size") or H
    x, wy, wh, wc = data(seed=6, width=2 * R, layers_dirs=4)
    wh = wh[..., :R]
    k1 = 8
    out, tbptt = run_tbptt(kind, module, x, k1, 3, wy, wh, wc, resets={1: [1, 3]})
    state, outputs = None, []
    xs = x.transpose(0, 1) if batch_first else x
    for i, start in enumerate(range(0, T, k1)):
        xc = xs[:, start:start + k1] if batch_first else xs[start:start + k1]
        y, final = ref(xc, state)
        y_tm = y.transpose(0, 1) if batch_first else y
        h_n, c_n = final if kind == "lstm" else (final, None)
        chunk_loss(y_tm, h_n, c_n, wy[start:start + k1], wh, wc).backward()
        outputs.append(y_tm.detach())
        state = tuple(s.detach() for s in final) if kind == "lstm" else final.detach()
        if i == 1:
            zeroed = zero_rows(state if kind == "lstm" else (state,), [1, 3])
            state = zeroed if kind == "lstm" else zeroed[0]
    torch.testing.assert_close(out, torch.cat(outputs), **TIGHT)
    for mine, theirs in zip(tbptt.state if kind == "lstm" else (tbptt.state,),
                            state if kind == "lstm" else (state,)):
        torch.testing.assert_close(mine, theirs, **TIGHT)
    for (n, p), q in zip(module.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, **TIGHT, msg=n)


def test_chunks_layout_and_aligned_tensors():
    module = make_module("gru", batch_first=True)
    tbptt = TBPTT(module, k1=4)
    x = torch.randn(B, 10, I, dtype=torch.float64)  # batch_first: time is dim 1
    y = torch.randn(B, 10)
    pieces = list(tbptt.chunks(x, y))
    assert [p[-1] for p in pieces] == [0, 4, 8]
    assert [p[0].shape for p in pieces] == [(B, 4, I), (B, 4, I), (B, 2, I)]
    torch.testing.assert_close(torch.cat([p[0] for p in pieces], 1), x, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([p[1] for p in pieces], 1), y, rtol=0, atol=0)
    assert pieces[1][0].data_ptr() == x[:, 4].data_ptr()  # views, no copies
    assert [len(p) for p in TBPTT(make_module("gru"), 10).chunks(x.transpose(0, 1))] == [2]


def test_truncate_restored_after_each_call_even_when_forward_raises():
    module = make_module("gru", truncate=5)
    tbptt = TBPTT(module, 6, 2)
    x = data()[0]
    seen = []
    real_forward = module.forward

    def spy(*args, **kwargs):
        seen.append(module.truncate)
        return real_forward(*args, **kwargs)

    module.forward = spy
    tbptt(x[:6])
    assert seen == [2] and module.truncate == 5
    state = tbptt.state

    def failing(*args, **kwargs):
        seen.append(module.truncate)
        raise RuntimeError("boom")

    module.forward = failing
    with pytest.raises(RuntimeError, match="boom"):
        tbptt(x[6:12])
    assert seen == [2, 2] and module.truncate == 5
    assert tbptt.state is state  # a failed call does not replace the carried state
    del module.forward
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size"):
        tbptt(torch.randn(6, B, I + 1, dtype=torch.float64))  # raised inside the module
    assert module.truncate == 5 and tbptt.state is state


def test_truncate_is_captured_by_the_forward():
    """The backward runs after the call returned (truncate restored) and still truncates."""
    x, wy, wh, wc = data(seed=7)
    module = make_module("lstm")
    tbptt = TBPTT(module, T, 2)
    out, _ = tbptt(x)
    assert module.truncate is None
    (out * wy).sum().backward()
    params = {n: p.detach().clone().requires_grad_() for n, p in module.named_parameters()}
    y, _, _ = reference.lstm_layer(x, *params.values(), truncate=2)
    (y * wy).sum().backward()
    for n, p in module.named_parameters():
        torch.testing.assert_close(p.grad, params[n].grad, **TIGHT, msg=n)


def test_no_grad_inference_carries_state():
    module = make_module("lstm", num_layers=2)
    tbptt = TBPTT(module, 5)
    x = data()[0]
    with torch.no_grad():
        outs = [tbptt(xc)[0] for xc, _ in tbptt.chunks(x)]
        full, _ = module(x)
    torch.testing.assert_close(torch.cat(outs), full, **TIGHT)  # stateful = one long pass


# ---------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("rnn,match", [
    (nn.LSTM(3, 5), "torch.nn.modules.rnn.LSTM cannot truncate the gradient inside its kernel"),
    (nn.GRU(3, 5), "GRU cannot truncate"),
    (fusedrnn.LSTMCell(3, 5), "rnn must be a fusedrnn.LSTM or fusedrnn.GRU, got LSTMCell"),
    (nn.Linear(3, 5), "got Linear$"),
])
def test_rejects_other_modules(rnn, match):
    with pytest.raises(TypeError, match=match):
        TBPTT(rnn, 10)


@pytest.mark.parametrize("k1,k2,exc,match", [
    (0, None, ValueError, "k1 must be a positive int \\(>= 1\\), got 0"),
    (-3, None, ValueError, "k1 must be a positive int"),
    (2.0, None, TypeError, "k1 must be a positive int, got 2.0 of type float"),
    (True, None, TypeError, "k1 must be a positive int"),
    (None, None, TypeError, "k1 must be a positive int"),
    (5, 0, ValueError, "k2 must be a positive int \\(>= 1\\), got 0"),
    (5, 1.5, TypeError, "k2 must be a positive int or None"),
    (5, False, TypeError, "k2 must be a positive int or None"),
    (5, 6, ValueError, "k2 must be <= k1 = 5, got 6"),
])
def test_bad_k1_k2(k1, k2, exc, match):
    with pytest.raises(exc, match=match):
        TBPTT(make_module("gru"), k1, k2)


def test_rejects_packed_and_non_3d_input():
    tbptt = TBPTT(make_module("lstm"), 4)
    packed = pack_padded_sequence(torch.randn(5, 2, I, dtype=torch.float64), [5, 3])
    with pytest.raises(TypeError, match="not a PackedSequence"):
        tbptt(packed)
    with pytest.raises(TypeError, match="not a PackedSequence"):
        list(tbptt.chunks(packed))
    with pytest.raises(ValueError, match=r"x must be 3-D \(T, B, I\) \(batch_first=False\)"):
        tbptt(torch.randn(5, I, dtype=torch.float64))
    bf = TBPTT(make_module("gru", batch_first=True), 4)
    with pytest.raises(ValueError, match=r"x must be 3-D \(B, T, I\) \(batch_first=True\)"):
        bf.chunks(torch.randn(5, I))
    with pytest.raises(TypeError, match="x must be a tensor, got list"):
        tbptt([[1.0]])
    with pytest.raises(ValueError, match=r"aligned\[0\] must have T = 5 steps along dim 0"):
        tbptt.chunks(torch.randn(5, 2, I), torch.randn(4, 2))
    with pytest.raises(TypeError, match=r"aligned\[1\] must be a tensor"):
        tbptt.chunks(torch.randn(5, 2, I), torch.randn(5, 2), "y")


def test_batch_size_change_needs_reset():
    tbptt = TBPTT(make_module("gru"), 4)
    tbptt(torch.randn(4, 3, I, dtype=torch.float64))
    with pytest.raises(ValueError, match="batch size changed from 3 \\(carried state\\) to 2"):
        tbptt(torch.randn(4, 2, I, dtype=torch.float64))
    tbptt.reset()
    out, h = tbptt(torch.randn(4, 2, I, dtype=torch.float64))
    assert h.shape == (1, 2, H)


def test_bad_state():
    lstm = make_module("lstm", num_layers=2, proj_size=2)
    good = (torch.zeros(2, B, 2, dtype=torch.float64), torch.zeros(2, B, H, dtype=torch.float64))
    TBPTT(lstm, 4, state=good)
    with pytest.raises(TypeError, match="an LSTM state must be a tuple \\(h, c\\)"):
        TBPTT(lstm, 4, state=good[0])
    with pytest.raises(ValueError, match=r"state h must have shape \(L\*D, B, 2\) = \(2, 4, 2\), "
                                         r"got \(2, 4, 5\)"):
        TBPTT(lstm, 4, state=(good[1], good[1]))
    with pytest.raises(ValueError,
                       match=r"state c must have shape .* = \(2, 4, 5\), got \(2, 3, 5\)"):
        TBPTT(lstm, 4, state=(good[0], good[1][:, :3]))
    gru = TBPTT(make_module("gru"), 4)
    with pytest.raises(TypeError, match="a GRU state must be a tensor h"):
        gru.state = (torch.zeros(1, B, H),)
    with pytest.raises(ValueError, match=r"state h must have shape"):
        gru.state = torch.zeros(B, H)


def test_bad_rows():
    tbptt = TBPTT(make_module("gru"), 4)
    with pytest.raises(TypeError, match="rows must be"):
        tbptt.reset("all")  # type-checked even without a state
    tbptt(torch.randn(4, B, I, dtype=torch.float64))
    with pytest.raises(ValueError, match="rows mask must have B = 4 entries, got 3"):
        tbptt.reset([True, False, True])
    with pytest.raises(IndexError, match=r"row indices must lie in \[-4, 4\), got \[4, -5\]"):
        tbptt.reset([0, 4, -5])
    with pytest.raises(TypeError, match="rows must be a bool or integer tensor, got torch.float32"):
        tbptt.reset(torch.tensor([0.0]))
    with pytest.raises(TypeError, match="rows must be a bool mask or a list of int indices"):
        tbptt.reset([0, True])
    with pytest.raises(ValueError, match="rows must be 1-D"):
        tbptt.reset(torch.ones(2, 2, dtype=torch.bool))
