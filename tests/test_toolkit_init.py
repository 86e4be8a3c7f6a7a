"""fusedrnn.init: orthogonal recurrent blocks and the LSTM forget-gate bias, on fusedrnn and
torch.nn modules and cells; the modules still compute what torch.nn computes afterwards."""
import copy
import math

import pytest
import torch
from torch import nn

import fusedrnn
from fusedrnn.init import forget_bias_, orthogonal_

TOL = {torch.float64: 1e-12, torch.float32: 2e-6}


def build(lib, kind, *, layers=1, bidirectional=False, proj=0, bias=True, dtype=torch.float64,
          I=5, H=6, seed=0):
    """A seeded LSTM/GRU/RNN module or cell of fusedrnn or torch.nn."""
    torch.manual_seed(seed)
    ns = fusedrnn if lib == "fusedrnn" else nn
    kw = dict(bias=bias, dtype=dtype)
    if kind.endswith("Cell"):
        return getattr(ns, kind)(I, H, **kw)
    if proj:
        kw["proj_size"] = proj
    return getattr(ns, kind)(I, H, num_layers=layers, bidirectional=bidirectional, **kw)


def recurrent(module):
    """{name: weight_hh} for every layer and direction (or the cell's one)."""
    return {n: p for n, p in module.named_parameters() if n.startswith("weight_hh")}


def assert_orthogonal_blocks(weight, gates, H, gain, dtype):
    rows, cols = H, weight.shape[1]
    for g in range(gates):
        b = weight[g * H:(g + 1) * H].double()
        gram = b.T @ b if rows >= cols else b @ b.T
        eye = torch.eye(min(rows, cols), dtype=torch.float64)
        torch.testing.assert_close(gram, gain ** 2 * eye, rtol=0,
                                   atol=TOL[dtype] * max(1.0, gain ** 2))


GATES = {"LSTM": 4, "GRU": 3, "RNN": 1, "LSTMCell": 4, "GRUCell": 3, "RNNCell": 1}

CASES = [
    ("fusedrnn", "LSTM", dict()),
    ("fusedrnn", "LSTM", dict(layers=2, bidirectional=True)),
    ("fusedrnn", "LSTM", dict(layers=2, bidirectional=True, proj=3)),
    ("fusedrnn", "GRU", dict(layers=3)),
    ("fusedrnn", "GRU", dict(layers=2, bidirectional=True, bias=False)),
    ("fusedrnn", "LSTMCell", dict()),
    ("fusedrnn", "GRUCell", dict()),
    ("torch", "LSTM", dict(layers=2, bidirectional=True, proj=4)),
    ("torch", "GRU", dict(bidirectional=True)),
    ("torch", "RNN", dict(layers=2)),
    ("torch", "LSTMCell", dict()),
    ("torch", "GRUCell", dict()),
    ("torch", "RNNCell", dict()),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("gain", [1.0, 0.5, 3])
@pytest.mark.parametrize("lib,kind,kw", CASES)
def test_orthogonal_blocks(lib, kind, kw, gain, dtype):
    module = build(lib, kind, dtype=dtype, **kw)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    assert orthogonal_(module, gain=gain) is module
    weights = recurrent(module)
    layers = kw.get("layers", 1) if not kind.endswith("Cell") else 1
    assert len(weights) == layers * (2 if kw.get("bidirectional") else 1)
    for name, w in weights.items():
        assert w.dtype == dtype
        assert w.shape[1] == (kw.get("proj") or module.hidden_size)
        assert not torch.equal(w, before[name]), name
        assert_orthogonal_blocks(w.detach(), GATES[kind], module.hidden_size, gain, dtype)
    for name, p in module.named_parameters():
        if not name.startswith("weight_hh"):  # weight_ih, weight_hr, biases untouched
            assert torch.equal(p, before[name]), name
        assert p.requires_grad and p.grad is None


def test_orthogonal_blocks_are_drawn_independently():
    """Each gate gets its own block (torch.nn requires proj_size < hidden_size, so a block is
    square or tall: B^T B = gain^2 I always)."""
    lstm = build("fusedrnn", "LSTM", proj=2, H=5)
    orthogonal_(lstm)
    w = lstm.weight_hh_l0.detach()  # [20, 2]
    blocks = w.reshape(4, 5, 2)
    for a in range(4):
        for b in range(a + 1, 4):
            assert not torch.allclose(blocks[a], blocks[b])
    # the whole [4H, R] matrix is not orthonormal as a unit (each block is): W^T W = 4 I
    torch.testing.assert_close(w.T @ w, 4 * torch.eye(2, dtype=w.dtype), rtol=0, atol=1e-12)


def test_orthogonal_generator_is_reproducible_and_half_precision_works():
    a = build("fusedrnn", "GRU", layers=2)
    b = copy.deepcopy(a)
    orthogonal_(a, generator=torch.Generator().manual_seed(7))
    orthogonal_(b, generator=torch.Generator().manual_seed(7))
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n
    half = build("torch", "LSTM", dtype=torch.bfloat16)
    orthogonal_(half)
    assert half.weight_hh_l0.dtype == torch.bfloat16
    w = half.weight_hh_l0.detach().double()[:6]
    torch.testing.assert_close(w.T @ w, torch.eye(6, dtype=torch.float64), rtol=0, atol=3e-2)


def test_orthogonal_zero_and_negative_gain():
    gru = orthogonal_(build("torch", "GRU"), gain=0)
    assert torch.count_nonzero(gru.weight_hh_l0) == 0
    lstm = orthogonal_(build("torch", "LSTM"), gain=-2.0)
    assert_orthogonal_blocks(lstm.weight_hh_l0.detach(), 4, 6, 2.0, torch.float64)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_after_init_fusedrnn_equals_torch_nn(kind):
    fused = build("fusedrnn", kind, layers=2, bidirectional=True,
                  **({"proj": 4} if kind == "LSTM" else {}))
    orthogonal_(fused, gain=1.2)
    if kind == "LSTM":
        forget_bias_(fused, 1.0)
    ref = build("torch", kind, layers=2, bidirectional=True,
                **({"proj": 4} if kind == "LSTM" else {}), seed=1)
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(7, 3, 5, dtype=torch.float64, requires_grad=True)
    out_f, state_f = fused(x)
    out_r, state_r = ref(x)
    torch.testing.assert_close(out_f, out_r)
    torch.testing.assert_close(state_f, state_r)
    out_f.sum().backward()
    out_r.sum().backward()
    for (n, p), q in zip(fused.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)


def test_orthogonal_keeps_linear_recurrence_singular_values_at_one():
    """Through 60 steps of the linear part h_t = W h_{t-1} of a block, the Jacobian W^60 of
    an orthogonal block has all singular values 1; the default uniform init's collapse."""
    module = build("fusedrnn", "GRU", H=16)
    default_block = module.weight_hh_l0.detach()[32:48].clone()
    orthogonal_(module)
    block = module.weight_hh_l0.detach()[32:48]
    s = torch.linalg.svdvals(torch.linalg.matrix_power(block, 60))
    torch.testing.assert_close(s, torch.ones(16, dtype=torch.float64), rtol=0, atol=1e-9)
    s_default = torch.linalg.svdvals(torch.linalg.matrix_power(default_block, 60))
    assert s_default.max() < 1e-3


FORGET_CASES = [
    ("fusedrnn", "LSTM", dict()),
    ("fusedrnn", "LSTM", dict(layers=3, bidirectional=True, proj=2)),
    ("fusedrnn", "LSTMCell", dict()),
    ("torch", "LSTM", dict(layers=2, bidirectional=True)),
    ("torch", "LSTMCell", dict()),
]


@pytest.mark.parametrize("value", [1.0, -0.5, 2, 0.0])
@pytest.mark.parametrize("lib,kind,kw", FORGET_CASES)
def test_forget_bias(lib, kind, kw, value):
    module = build(lib, kind, **kw)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    assert forget_bias_(module, value) is module
    H = module.hidden_size
    biases = [n for n in before if n.startswith("bias_ih")]
    layers = kw.get("layers", 1) * (2 if kw.get("bidirectional") else 1)
    assert len(biases) == layers
    for name_ih in biases:
        name_hh = name_ih.replace("bias_ih", "bias_hh")
        b_ih, b_hh = getattr(module, name_ih).detach(), getattr(module, name_hh).detach()
        effective = b_ih + b_hh
        torch.testing.assert_close(effective[H:2 * H], torch.full((H,), float(value),
                                                                  dtype=torch.float64),
                                   rtol=0, atol=0)
        assert torch.equal(b_ih[H:2 * H], torch.full_like(b_ih[H:2 * H], value))
        assert torch.count_nonzero(b_hh[H:2 * H]) == 0
        for sl in (slice(0, H), slice(2 * H, 4 * H)):  # i, then g and o: unchanged
            assert torch.equal(b_ih[sl], before[name_ih][sl])
            assert torch.equal(b_hh[sl], before[name_hh][sl])
    for name, p in module.named_parameters():
        if not name.startswith("bias"):
            assert torch.equal(p, before[name]), name


def test_forget_bias_changes_the_forward_as_expected():
    """With zero weights and the forget bias at v, one step from c0 gives
    c_1 = sigmoid(v) * c0 + sigmoid(b_i) * tanh(b_g): check against that formula."""
    lstm = build("fusedrnn", "LSTMCell", H=3)
    with torch.no_grad():
        for p in lstm.parameters():
            p.zero_()
    forget_bias_(lstm, 2.0)
    c0 = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    _, c1 = lstm(torch.zeros(1, 5, dtype=torch.float64), (torch.zeros_like(c0), c0))
    torch.testing.assert_close(c1, torch.sigmoid(torch.tensor(2.0, dtype=torch.float64)) * c0)


# ---------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("fn", [orthogonal_, forget_bias_])
@pytest.mark.parametrize("module", [nn.Linear(3, 3), nn.Sequential(nn.LSTM(3, 3)), "lstm"])
def test_unsupported_module(fn, module):
    match = r"fusedrnn\.init\..*(must be a recurrent module|LSTM-only)"
    with pytest.raises(TypeError, match=match):
        fn(module)


@pytest.mark.parametrize("kind", ["GRU", "GRUCell", "RNN"])
def test_forget_bias_rejects_non_lstm(kind):
    module = build("torch" if kind == "RNN" else "fusedrnn", kind)
    with pytest.raises(TypeError, match=f"forget gate is LSTM-only.*got {kind}"):
        forget_bias_(module)


@pytest.mark.parametrize("kind", ["LSTM", "LSTMCell"])
def test_forget_bias_rejects_bias_false(kind):
    with pytest.raises(ValueError, match="bias=False"):
        forget_bias_(build("fusedrnn", kind, bias=False))


@pytest.mark.parametrize("bad", [True, "1", None, torch.tensor(1.0), 1j])
def test_bad_type(bad):
    lstm = build("fusedrnn", "LSTM")
    with pytest.raises(TypeError, match="gain must be a finite real number"):
        orthogonal_(lstm, gain=bad)
    with pytest.raises(TypeError, match="value must be a finite real number"):
        forget_bias_(lstm, bad)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_bad_value(bad):
    lstm = build("fusedrnn", "LSTM")
    before = copy.deepcopy(lstm.state_dict())
    with pytest.raises(ValueError, match="gain must be a finite real number"):
        orthogonal_(lstm, gain=bad)
    with pytest.raises(ValueError, match="value must be a finite real number"):
        forget_bias_(lstm, bad)
    for name, p in lstm.state_dict().items():  # nothing was changed before the error
        assert torch.equal(p, before[name]), name
