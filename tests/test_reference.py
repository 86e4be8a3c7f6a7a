"""fusedrnn.reference: the plain-PyTorch reference against torch.nn (float64), and the
semantics of gradient clipping and truncation checked on the reference itself.

Shape letters: T steps, B batch, I input, H hidden, P projection, R = P or H.
"""

import functools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fusedrnn import reference
from helpers import (
    OUTPUTS,
    REFERENCE,
    TORCHNN,
    assert_tight,
    call_layer,
    copy_weights_into,
    forward_backward,
    make_nn_module,
    make_tensors,
    max_diff,
    nn_param_names,
    upstream_grads,
)


# (T, B, I, H): awkward sizes (T=1, B=1, H=1, odd I, H=129 with small T) and a plain one.
SHAPES = [
    (1, 1, 1, 1),
    (1, 3, 5, 4),
    (4, 1, 3, 1),
    (3, 2, 7, 129),
    (5, 3, 1, 2),
    (6, 4, 5, 16),
]

# (kind, P): LSTM, LSTM with projection, GRU. P must be < H for torch.nn.
VARIANTS = [("lstm", 0), ("lstm", "proj"), ("gru", 0)]


def proj_size(P, H):
    """Resolve the "proj" placeholder to a projection size < H (None: not possible)."""
    if P != "proj":
        return P
    return H // 2 if H > 1 else None


def shape_id(shape):
    return "T{}B{}I{}H{}".format(*shape)


def variant_id(variant):
    kind, P = variant
    return kind + ("_proj" if P else "")


# ---------------------------------------------------------------------------------------
# Reference against torch.nn (float64)
# ---------------------------------------------------------------------------------------


# (variant, shape) pairs that torch.nn can express (projection needs P < H, so H > 1).
VARIANT_SHAPES = [
    pytest.param(variant, shape, id=f"{variant_id(variant)}-{shape_id(shape)}")
    for variant in VARIANTS for shape in SHAPES if proj_size(variant[1], shape[3]) is not None
]


@pytest.mark.parametrize("h0", [True, False], ids=["h0", "no_h0"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("variant, shape", VARIANT_SHAPES)
def test_matches_torchnn(variant, shape, bias, h0):
    kind, P = variant
    T, B, I, H = shape
    P = proj_size(P, H)
    tensors = make_tensors(kind, T, B, I, H, P, bias=bias, h0=h0)
    ours = forward_backward(REFERENCE[kind], kind, tensors)
    theirs = forward_backward(TORCHNN[kind], kind, tensors)
    expected = {"output", "h_n", "c_n"} if kind == "lstm" else {"output", "h_n"}
    expected |= {"grad_" + name for name in tensors}
    assert set(ours) == expected
    assert_tight(ours, theirs)


@pytest.mark.parametrize("lengths", [None, [2, 5, 1]], ids=["full", "lengths"])
@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_reverse_matches_bidirectional_torchnn(variant, lengths):
    """reverse=True equals the reverse half of a bidirectional torch.nn module whose
    `_reverse` parameters were copied from ours (module .grad compared too)."""
    kind, P = variant
    T, B, I, H = 5, 3, 3, 4
    P = proj_size(P, H)
    R = P or H
    tensors = make_tensors(kind, T, B, I, H, P)
    lens = None if lengths is None else torch.tensor(lengths)
    ours = forward_backward(REFERENCE[kind], kind, tensors, reverse=True, lengths=lens)

    module = make_nn_module(kind, I, H, P, bidirectional=True)
    copy_weights_into(module, tensors, reverse=True)
    x = tensors["input"].clone().requires_grad_(True)
    h0 = tensors["h0"].clone().requires_grad_(True)
    hx = torch.stack([torch.zeros_like(h0), h0])  # [2, B, R]: forward half, reverse half
    leaves = [x, h0]
    if kind == "lstm":
        c0 = tensors["c0"].clone().requires_grad_(True)
        hx = (hx, torch.stack([torch.zeros_like(c0), c0]))
        leaves.append(c0)
    seq = x if lens is None else pack_padded_sequence(x, lens, enforce_sorted=False)
    out, hn = module(seq, hx)
    if lens is not None:
        out, _ = pad_packed_sequence(out, total_length=T)
    if kind == "lstm":
        results = (out[..., R:], hn[0][1], hn[1][1])
    else:
        results = (out[..., R:], hn[1])
    torch.autograd.backward(results, upstream_grads(results))

    for name, value in zip(OUTPUTS[kind], results):
        assert_tight(ours[name], value.detach())
    for name, leaf in zip(["input", "h0", "c0"], leaves):
        assert_tight(ours["grad_" + name], leaf.grad)
    for ours_name, nn_name in nn_param_names(kind, True, P > 0, reverse=True).items():
        assert_tight(ours["grad_" + ours_name], getattr(module, nn_name).grad)
    # The forward half never reaches the loss.
    assert torch.count_nonzero(module.weight_ih_l0.grad) == 0


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("lengths", [[3, 6, 1, 6], [2, 2, 5, 4], [1, 1, 1, 1]],
                         ids=["unsorted", "max_below_T", "all_one"])
@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_lengths_match_packed_torchnn(variant, lengths, reverse):
    """lengths equal torch.nn on a PackedSequence (enforce_sorted=False); valid output
    positions, h_n, c_n and all gradients match, invalid output positions are zero."""
    kind, P = variant
    T, B, I, H = 6, 4, 3, 5
    P = proj_size(P, H)
    lens = torch.tensor(lengths)
    tensors = make_tensors(kind, T, B, I, H, P)
    ours = forward_backward(REFERENCE[kind], kind, tensors, lengths=lens, reverse=reverse)
    theirs = forward_backward(TORCHNN[kind], kind, tensors, lengths=lens, reverse=reverse)

    valid = torch.arange(T)[:, None] < lens[None, :]  # [T, B]
    assert_tight(ours["output"][valid], theirs["output"][valid])
    assert torch.count_nonzero(ours["output"][~valid]) == 0
    for name in ours:
        if name != "output":
            assert_tight(ours[name], theirs[name])
    # Padding never reaches the loss.
    assert torch.count_nonzero(ours["grad_input"][~valid]) == 0


@settings(max_examples=25)
@given(
    variant=st.sampled_from(VARIANTS),
    T=st.integers(1, 5),
    B=st.integers(1, 4),
    I=st.integers(1, 4),
    H=st.integers(2, 5),
    bias=st.booleans(),
    h0=st.booleans(),
    reverse=st.booleans(),
    use_lengths=st.booleans(),
    data=st.data(),
)
def test_matches_torchnn_random(variant, T, B, I, H, bias, h0, reverse, use_lengths, data):
    kind, P = variant
    P = proj_size(P, H)
    lens = None
    if use_lengths:
        lens = torch.tensor(data.draw(st.lists(st.integers(1, T), min_size=B, max_size=B)))
    tensors = make_tensors(kind, T, B, I, H, P, bias=bias, h0=h0, seed=T * 100 + B * 10 + I)
    ours = forward_backward(REFERENCE[kind], kind, tensors, lengths=lens, reverse=reverse)
    theirs = forward_backward(TORCHNN[kind], kind, tensors, lengths=lens, reverse=reverse)
    assert_tight(ours, theirs)


def test_no_grad_forward_equals_grad_forward():
    tensors = make_tensors("lstm", 4, 2, 3, 3, 2)
    with_grad = forward_backward(reference.lstm_layer, "lstm", tensors, grad_clip=0.1,
                                 truncate=2, cell_clip=0.5)
    with torch.no_grad():
        out = reference.lstm_layer(tensors["input"], tensors["weight_ih"], tensors["weight_hh"],
                                   tensors["bias_ih"], tensors["bias_hh"], tensors["h0"],
                                   tensors["c0"], weight_hr=tensors["weight_hr"],
                                   grad_clip=0.1, truncate=2, cell_clip=0.5)
    for name, value in zip(OUTPUTS["lstm"], out):
        assert torch.equal(value, with_grad[name])


# ---------------------------------------------------------------------------------------
# Option validation (check_options is shared with fusedrnn.ops)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    dict(grad_clip=None, grad_clip_mode="value", truncate=None),
    dict(grad_clip=1, grad_clip_mode="norm", truncate=1),
    dict(grad_clip=0.5, grad_clip_mode="value", truncate=10**9, cell_clip=3),
    dict(grad_clip=1e-30, grad_clip_mode="value", truncate=None, cell_clip=1e30),
])
def test_check_options_accepts(kwargs):
    reference.check_options(**kwargs)


BAD_OPTIONS = [
    # (argument, value, exception)
    ("grad_clip", -1.0, ValueError),
    ("grad_clip", 0, ValueError),
    ("grad_clip", 0.0, ValueError),
    ("grad_clip", float("nan"), ValueError),
    ("grad_clip", float("inf"), ValueError),
    ("grad_clip", True, TypeError),
    ("grad_clip", "1.0", TypeError),
    ("grad_clip", torch.tensor(1.0), TypeError),
    ("grad_clip", 1j, TypeError),
    ("grad_clip_mode", "clamp", ValueError),
    ("grad_clip_mode", "Value", ValueError),
    ("grad_clip_mode", None, ValueError),
    ("grad_clip_mode", 1, ValueError),
    ("truncate", 0, ValueError),
    ("truncate", -3, ValueError),
    ("truncate", 2.0, TypeError),
    ("truncate", True, TypeError),
    ("truncate", "2", TypeError),
    ("cell_clip", -0.5, ValueError),
    ("cell_clip", 0, ValueError),
    ("cell_clip", float("inf"), ValueError),
    ("cell_clip", float("-nan"), ValueError),
    ("cell_clip", False, TypeError),
    ("cell_clip", [1.0], TypeError),
]


def bad_id(case):
    return f"{case[0]}={case[1]!r}"


@pytest.mark.parametrize("case", BAD_OPTIONS, ids=[bad_id(c) for c in BAD_OPTIONS])
def test_check_options_rejects(case):
    name, value, exc = case
    kwargs = dict(grad_clip=1.0, grad_clip_mode="value", truncate=2, cell_clip=1.0)
    kwargs[name] = value
    with pytest.raises(exc, match=rf"^fusedrnn: {name} must be") as info:
        reference.check_options(**kwargs)
    assert repr(value) in str(info.value)  # names the received value


def test_check_options_message():
    with pytest.raises(ValueError) as info:
        reference.check_options(-1.0, "value", None)
    assert str(info.value) == "fusedrnn: grad_clip must be a positive finite number, got -1.0"


@settings(max_examples=50)
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_check_options_float_property(v):
    if math.isfinite(v) and v > 0:
        reference.check_options(v, "norm", None, v)
    else:
        with pytest.raises(ValueError, match="grad_clip"):
            reference.check_options(v, "norm", None)
        with pytest.raises(ValueError, match="cell_clip"):
            reference.check_options(None, "norm", None, v)


@pytest.mark.parametrize("layer", [reference.lstm_layer, reference.gru_layer])
def test_layers_validate_options(layer):
    kind = "lstm" if layer is reference.lstm_layer else "gru"
    tensors = make_tensors(kind, 2, 2, 3, 2)
    with pytest.raises(ValueError, match="grad_clip"):
        forward_backward(layer, kind, tensors, grad_clip=0.0)
    with pytest.raises(ValueError, match="grad_clip_mode"):
        forward_backward(layer, kind, tensors, grad_clip=1.0, grad_clip_mode="l2")
    with pytest.raises(TypeError, match="truncate"):
        forward_backward(layer, kind, tensors, truncate=1.5)
    if kind == "lstm":
        with pytest.raises(ValueError, match="cell_clip"):
            forward_backward(layer, kind, tensors, cell_clip=-1.0)
    else:
        with pytest.raises(TypeError, match="cell_clip"):
            forward_backward(layer, kind, tensors, cell_clip=1.0)


@pytest.mark.parametrize("lengths, exc, match", [
    ([0, 2], ValueError, "lengths"),
    ([3, 4], ValueError, "lengths"),
    ([1, 2, 3], ValueError, "lengths"),
    ([1.0, 2.0], TypeError, "lengths"),
])
def test_reference_rejects_bad_lengths(lengths, exc, match):
    tensors = make_tensors("gru", 3, 2, 3, 2)
    with pytest.raises(exc, match=match):
        forward_backward(reference.gru_layer, "gru", tensors, lengths=torch.tensor(lengths))


def test_reference_rejects_bad_input_rank_and_empty_sequence():
    tensors = make_tensors("gru", 3, 2, 3, 2)
    with pytest.raises(ValueError, match="input"):
        reference.gru_layer(tensors["input"][0], tensors["weight_ih"], tensors["weight_hh"])
    with pytest.raises(ValueError, match="input"):
        reference.gru_layer(tensors["input"][:0], tensors["weight_ih"], tensors["weight_hh"])


# ---------------------------------------------------------------------------------------
# Clipping and truncation semantics, on the reference itself
# ---------------------------------------------------------------------------------------

CLIP_VARIANTS = [("lstm", 0), ("lstm", 2), ("gru", 0)]


def clip_id(variant):
    return variant[0] + ("_proj" if variant[1] else "")


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("mode", ["value", "norm"])
@pytest.mark.parametrize("variant", CLIP_VARIANTS, ids=clip_id)
def test_inactive_options_give_exact_unclipped_gradient(variant, mode, reverse):
    """(a) grad_clip huge and truncate > T: gradients are exactly the unclipped ones."""
    kind, P = variant
    T = 5
    tensors = make_tensors(kind, T, 3, 4, 4, P, weight_scale=3.0)
    lens = torch.tensor([5, 2, 4])
    plain = forward_backward(REFERENCE[kind], kind, tensors, lengths=lens, reverse=reverse)
    for truncate in (T, T + 1, None):
        inactive = forward_backward(REFERENCE[kind], kind, tensors, lengths=lens,
                                    reverse=reverse, grad_clip=1e30, grad_clip_mode=mode,
                                    truncate=truncate)
        for name in plain:
            assert torch.equal(inactive[name], plain[name]), name


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("variant", CLIP_VARIANTS, ids=clip_id)
def test_truncate_one_cuts_h0_gradient_to_step_zero(variant, reverse):
    """(b) truncate=1: the gradient w.r.t. h0 (c0) and the first processed input depends
    only on processed step 0; it equals a one-step run fed only the step-0 output grad."""
    kind, P = variant
    T, B = 4, 3
    tensors = make_tensors(kind, T, B, 3, 4, P, weight_scale=2.0)
    full = forward_backward(REFERENCE[kind], kind, tensors, reverse=reverse, truncate=1)
    untruncated = forward_backward(REFERENCE[kind], kind, tensors, reverse=reverse)

    t0 = T - 1 if reverse else 0  # time of processed step 0
    g_out = upstream_grads(full[name] for name in OUTPUTS[kind])[0]  # [T, B, R]
    one = {name: v.clone().requires_grad_(True) for name, v in tensors.items()}
    one["input"] = tensors["input"][t0:t0 + 1].clone().requires_grad_(True)
    results = call_layer(REFERENCE[kind], kind, one, reverse=reverse)
    states = [name for name in ("h0", "c0") if name in one]
    grads = torch.autograd.grad(results[0], [one[n] for n in states] + [one["input"]],
                                g_out[t0:t0 + 1])
    for name, g in zip(states, grads):
        assert_tight(full["grad_" + name], g)
        assert max_diff({"grad_" + name: full["grad_" + name]},
                        {"grad_" + name: untruncated["grad_" + name]}) > 1e-3
    assert_tight(full["grad_input"][t0], grads[-1][0])


def chunked_layer(kind, k, input, weight_ih, weight_hh, bias_ih=None, bias_hh=None, h0=None,
                  c0=None, *, weight_hr=None, reverse=False):
    """Truncated BPTT done by hand: run the plain reference on chunks of k processed steps,
    handing a detached state from one chunk to the next."""
    T = input.shape[0]
    starts = range(0, T, k)
    chunks = [(T - min(s + k, T), T - s) for s in starts] if reverse else \
             [(s, min(s + k, T)) for s in starts]
    outputs = [None] * len(chunks)
    state = (h0, c0) if kind == "lstm" else (h0,)
    for j, (a, b) in enumerate(chunks):
        if j > 0:
            state = tuple(s.detach() for s in state)
        kwargs = {"weight_hr": weight_hr} if kind == "lstm" else {}
        out, *state = REFERENCE[kind](input[a:b], weight_ih, weight_hh, bias_ih, bias_hh,
                                      *state, reverse=reverse, **kwargs)
        outputs[j] = out
    if reverse:
        outputs = outputs[::-1]
    return (torch.cat(outputs), *state)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("k", [1, 2, 3, 7])
@pytest.mark.parametrize("variant", CLIP_VARIANTS, ids=clip_id)
def test_truncate_equals_chunked_bptt(variant, k, reverse):
    """(c) truncate=k equals a hand-chunked loop with detached state between chunks."""
    kind, P = variant
    T = 7
    tensors = make_tensors(kind, T, 3, 3, 4, P, weight_scale=2.0)
    truncated = forward_backward(REFERENCE[kind], kind, tensors, reverse=reverse, truncate=k)
    chunked = forward_backward(functools.partial(chunked_layer, kind, k), kind, tensors,
                               reverse=reverse)
    assert_tight(truncated, chunked)
    plain = forward_backward(REFERENCE[kind], kind, tensors, reverse=reverse)
    if k < T:
        assert max_diff(truncated, plain) > 1e-3  # truncation is active
    else:
        assert max_diff(truncated, plain) == 0


@pytest.fixture
def clip_probe(monkeypatch):
    """Records, for every clipped hand-over in the backward pass, the gradient arriving at
    the clip (before) and the gradient it passes on to the state (after)."""
    records = []
    original = reference._clip_grad

    def probed(state, clip, mode):
        record = {"shape": tuple(state.shape)}
        records.append(record)
        probe = state.view_as(state)  # its only consumer is the clip: hook = clipped grad
        probe.register_hook(lambda g: record.__setitem__("after", g))
        out = original(probe, clip, mode)
        out.register_hook(lambda g: record.__setitem__("before", g))
        return out

    monkeypatch.setattr(reference, "_clip_grad", probed)
    return records


@pytest.mark.parametrize("lengths", [None, [6, 2, 4]], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("variant", CLIP_VARIANTS, ids=clip_id)
def test_value_clip_bounds_every_recurrent_gradient(clip_probe, variant, reverse, lengths):
    """(d) value clipping with large weights changes the gradient, and every recurrent
    gradient fed back through a hand-over is the elementwise clamp of what arrived."""
    kind, P = variant
    T, B, H, v = 6, 3, 4, 0.05
    tensors = make_tensors(kind, T, B, 3, H, P, weight_scale=3.0)
    lens = None if lengths is None else torch.tensor(lengths)
    clipped = forward_backward(REFERENCE[kind], kind, tensors, reverse=reverse, lengths=lens,
                               grad_clip=v)
    n_states = 2 if kind == "lstm" else 1
    assert len(clip_probe) == T * n_states  # h (and c) entering every step, h0/c0 included
    assert {r["shape"] for r in clip_probe} == ({(B, P or H), (B, H)} if kind == "lstm"
                                                else {(B, H)})
    active = False
    for r in clip_probe:
        assert r["after"].abs().max() <= v
        assert torch.equal(r["after"], r["before"].clamp(-v, v))
        active |= bool((r["before"].abs() > v).any())
    assert active
    assert clipped["grad_h0"].abs().max() <= v  # h0 only feeds step 0 (through the clip)
    plain = forward_backward(REFERENCE[kind], kind, tensors, reverse=reverse, lengths=lens)
    assert max_diff(clipped, plain) > 1e-3
    for name in OUTPUTS[kind]:
        assert torch.equal(clipped[name], plain[name])  # forward unchanged


@pytest.mark.parametrize("lengths", [None, [6, 2, 4]], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("variant", CLIP_VARIANTS, ids=clip_id)
def test_norm_clip_bounds_every_row_norm(clip_probe, variant, reverse, lengths):
    """(e) norm clipping: every recurrent gradient row has L2 norm <= v, and is the
    arriving row rescaled by min(1, v / ||row||) (direction kept)."""
    kind, P = variant
    T, B, H, v = 6, 3, 4, 0.1
    tensors = make_tensors(kind, T, B, 3, H, P, weight_scale=3.0)
    lens = None if lengths is None else torch.tensor(lengths)
    clipped = forward_backward(REFERENCE[kind], kind, tensors, reverse=reverse, lengths=lens,
                               grad_clip=v, grad_clip_mode="norm")
    assert len(clip_probe) == T * (2 if kind == "lstm" else 1)
    active = False
    for r in clip_probe:
        before, after = r["before"], r["after"]
        norm = before.norm(dim=1, keepdim=True)
        assert (after.norm(dim=1) <= v * (1 + 1e-12)).all()
        torch.testing.assert_close(after, before * torch.clamp(v / norm, max=1.0),
                                   rtol=1e-12, atol=1e-15)
        active |= bool((norm > v).any())
    assert active
    assert (clipped["grad_h0"].norm(dim=1) <= v * (1 + 1e-12)).all()
    plain = forward_backward(REFERENCE[kind], kind, tensors, reverse=reverse, lengths=lens)
    assert max_diff(clipped, plain) > 1e-3


@pytest.mark.parametrize("mode", ["value", "norm"])
@pytest.mark.parametrize("variant", CLIP_VARIANTS, ids=clip_id)
def test_final_state_gradient_is_not_clipped(variant, mode):
    """dh_n / dc_n are not clipped, not even while a short row carries its final state
    through the remaining steps; the recurrent gradient of a long row is."""
    kind, P = variant
    T, v = 4, 1e-3
    tensors = make_tensors(kind, T, 2, 3, 4, P, weight_scale=3.0)
    lens = torch.tensor([1, T])  # row 0 carries its state from t=0 to h_n

    def grads(**options):
        leaves = {n: t.clone().requires_grad_(True) for n, t in tensors.items()}
        results = call_layer(
            REFERENCE[kind], kind, leaves, lengths=lens, **options)
        g = [torch.zeros_like(results[0])] + [10 * gs for gs in upstream_grads(results[1:])]
        return torch.autograd.grad(results, leaves["input"], g)[0]  # only dh_n, dc_n

    clipped, plain = grads(grad_clip=v, grad_clip_mode=mode), grads()
    assert torch.equal(clipped[0, 0], plain[0, 0])  # row 0: final state, no hand-over
    assert torch.equal(clipped[T - 1, 1], plain[T - 1, 1])  # row 1, last step
    assert max_abs(clipped[0, 1] - plain[0, 1]) > 1e-3  # row 1, through clipped hand-overs


def max_abs(x):
    return x.abs().max().item()


@pytest.mark.parametrize("options", [
    dict(grad_clip=0.05),
    dict(grad_clip=0.1, grad_clip_mode="norm"),
    dict(truncate=2),
    dict(truncate=3, grad_clip=0.05),
    dict(truncate=1, grad_clip=0.1, grad_clip_mode="norm"),
], ids=["value", "norm", "trunc2", "trunc3_value", "trunc1_norm"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("variant", CLIP_VARIANTS, ids=clip_id)
def test_rows_with_lengths_equal_rows_run_alone(variant, reverse, options):
    """With lengths, clipping and truncation follow each row's own processed-step count:
    every row of a batched run equals that row run alone on its own valid steps."""
    kind, P = variant
    T, B = 6, 4
    lens = torch.tensor([3, 6, 1, 5])
    tensors = make_tensors(kind, T, B, 3, 4, P, weight_scale=3.0)
    batched = forward_backward(REFERENCE[kind], kind, tensors, lengths=lens, reverse=reverse,
                               **options)
    g_all = upstream_grads(batched[name] for name in OUTPUTS[kind])

    weight_names = [n for n in tensors if n.startswith(("weight", "bias"))]
    weight_grads = {n: torch.zeros_like(tensors[n]) for n in weight_names}
    for b in range(B):
        L = int(lens[b])
        row = {n: t.clone().requires_grad_(True) for n, t in tensors.items()}
        row["input"] = tensors["input"][:L, b:b + 1].clone().requires_grad_(True)
        for n in ("h0", "c0"):
            if n in row:
                row[n] = tensors[n][b:b + 1].clone().requires_grad_(True)
        results = call_layer(
            REFERENCE[kind], kind, row, reverse=reverse, **options)
        g_row = (g_all[0][:L, b:b + 1],) + tuple(g[b:b + 1] for g in g_all[1:])
        names = list(row)
        grads = dict(zip(names, torch.autograd.grad(results, [row[n] for n in names], g_row)))

        assert_tight(results[0].detach(), batched["output"][:L, b:b + 1])
        for name, value in zip(OUTPUTS[kind][1:], results[1:]):
            assert_tight(value.detach(), batched[name][b:b + 1])
        assert_tight(grads["input"], batched["grad_input"][:L, b:b + 1])
        for n in ("h0", "c0"):
            if n in grads:
                assert_tight(grads[n], batched["grad_" + n][b:b + 1])
        for n in weight_names:
            weight_grads[n] += grads[n]
    for n in weight_names:
        assert_tight(weight_grads[n], batched["grad_" + n])


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_cell_clip_clamps_cell_and_zeroes_its_gradient(reverse):
    """cell_clip clamps c_t in the forward pass and is differentiated like torch.clamp."""
    T, c = 5, 0.3
    tensors = make_tensors("lstm", T, 3, 3, 4, input_scale=3.0, weight_scale=2.0)
    clipped = forward_backward(reference.lstm_layer, "lstm", tensors, reverse=reverse,
                               cell_clip=c)
    plain = forward_backward(reference.lstm_layer, "lstm", tensors, reverse=reverse)
    assert clipped["c_n"].abs().max() <= c
    assert plain["c_n"].abs().max() > c
    assert max_abs(clipped["output"] - plain["output"]) > 1e-3
    # Gradcheck of the forward-changing option (away from the clamp's kinks).
    leaves = [t.clone().requires_grad_(True) for t in tensors.values()]
    names = list(tensors)

    def fn(*args):
        kw = dict(zip(names, args))
        return reference.lstm_layer(kw["input"], kw["weight_ih"], kw["weight_hh"],
                                    kw["bias_ih"], kw["bias_hh"], kw["h0"], kw["c0"],
                                    reverse=reverse, cell_clip=c)

    assert torch.autograd.gradcheck(fn, leaves)
