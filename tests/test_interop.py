"""Interop with the rest of PyTorch: torch.save/load of a whole model, pickle / deepcopy /
torch.save copies (options included), torch.func.functional_call, no_grad / inference_mode,
frozen parameters, gradients wanted for the input or the weights only, one gradient tensor
per parameter (no aliasing).
"""

import copy
import pickle

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from helpers import (
    F32,
    F64,
    FUSED,
    H,
    I,
    KINDS,
    LD,
    LENGTHS_UNSORTED,
    MB,
    MH,
    MI,
    ML,
    MT,
    NN_CLASSES,
    P,
    _module_pair,
    _state,
    assert_tight,
    builder,
    compare,
    fused,
    kind_of,
    make_leaves,
    upstream_grads,
)


pytestmark = pytest.mark.filterwarnings(
    "ignore:LSTM with projections is not supported with oneDNN:UserWarning")


class Tagger(nn.Module):
    """Linear -> fusedrnn / torch.nn RNN (2 layers, bidirectional, batch_first) -> Linear."""

    def __init__(self, kind, fused=True, **options):
        super().__init__()
        self.inp = nn.Linear(3, 4, dtype=F64)
        cls = FUSED[kind] if fused else NN_CLASSES[kind]
        self.rnn = cls(4, 5, num_layers=2, bidirectional=True, batch_first=True, dtype=F64,
                       **options)
        self.out = nn.Linear(10, 2, dtype=F64)

    def forward(self, x):
        y, _ = self.rnn(torch.tanh(self.inp(x)))
        return self.out(y)


MODEL_OPTIONS = {"lstm": dict(grad_clip=0.05, grad_clip_mode="norm", truncate=2, cell_clip=0.5),
                 "gru": dict(grad_clip=0.05, truncate=3)}


def _model_grads(model, x):
    leaf = x.clone().requires_grad_(True)
    y = model(leaf)
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(y, [leaf] + list(params.values()), upstream_grads([y])[0])
    return {"y": y.detach(), "grad_x": grads[0],
            **{"grad_" + n: g for n, g in zip(params, grads[1:])}}


@pytest.mark.parametrize("kind", KINDS)
def test_torch_save_load_whole_model(kind, tmp_path):
    """A model containing a fusedrnn RNN survives torch.save / torch.load (weights_only=False)
    with its options: bitwise equal outputs and gradients."""
    torch.manual_seed(0)
    model = Tagger(kind, **MODEL_OPTIONS[kind])
    path = tmp_path / "model.pt"
    torch.save(model, path)
    loaded = torch.load(path, weights_only=False)
    assert type(loaded.rnn) is FUSED[kind]
    for option, value in MODEL_OPTIONS[kind].items():
        assert getattr(loaded.rnn, option) == value
    x = torch.randn(3, 6, 3, dtype=F64)
    before, after = _model_grads(model, x), _model_grads(loaded, x)
    for name in before:
        assert torch.equal(before[name], after[name]), name
    # and a state_dict checkpoint of the same model loads into a torch.nn twin
    twin = Tagger(kind, fused=False)
    twin.load_state_dict(torch.load(path, weights_only=False).state_dict())
    model_plain = Tagger(kind)
    model_plain.load_state_dict(model.state_dict())
    assert_tight(_model_grads(model_plain, x), _model_grads(twin, x))


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("kind", KINDS)
def test_functional_call_with_swapped_parameters(kind, packed):
    """torch.func.functional_call with other parameter tensors computes exactly what the
    module computes with those parameters loaded (outputs and gradients), and leaves the
    module's own parameters untouched."""
    ours, _ = _module_pair(kind, **MODEL_OPTIONS[kind])
    gen = torch.Generator().manual_seed(9)
    swapped = {n: torch.randn(p.shape, generator=gen, dtype=F64).requires_grad_(True)
               for n, p in ours.named_parameters()}
    own = {n: p.detach().clone() for n, p in ours.named_parameters()}
    x = torch.randn(MT, MB, MI, generator=gen, dtype=F64)
    hx = _state(kind, (LD, MB, MH))
    inp = pack_padded_sequence(x, [5, 2, 4], enforce_sorted=False) if packed else x

    out, state = functional_call(ours, swapped, (inp, hx))
    outputs = ((out.data if packed else out),) + (state if isinstance(state, tuple) else (state,))
    grads = torch.autograd.grad(outputs, list(swapped.values()), upstream_grads(outputs))

    loaded = FUSED[kind](MI, MH, num_layers=ML, bidirectional=True, dtype=F64,
                         **MODEL_OPTIONS[kind])
    loaded.load_state_dict({n: v.detach() for n, v in swapped.items()})
    out2, state2 = loaded(inp, hx)
    outputs2 = ((out2.data if packed else out2),) + (state2 if isinstance(state2, tuple)
                                                     else (state2,))
    grads2 = torch.autograd.grad(outputs2, list(loaded.parameters()), upstream_grads(outputs2))
    for a, b in zip(outputs, outputs2):
        assert torch.equal(a, b)
    for name, a, b in zip(swapped, grads, grads2):
        assert torch.equal(a, b), name
    for n, p in ours.named_parameters():
        assert torch.equal(p, own[n]) and p.grad is None, n


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("context", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("kind", KINDS)
def test_no_grad_and_inference_mode_forward(kind, dtype, context, packed):
    """Forward under torch.no_grad / torch.inference_mode equals the grad-mode forward
    (bitwise: the forward does not depend on whether the backward is wanted) and builds no
    graph."""
    torch.manual_seed(0)
    module = FUSED[kind](MI, MH, num_layers=2, bidirectional=True, dtype=dtype,
                         **MODEL_OPTIONS[kind])
    x = torch.randn(MT, MB, MI, dtype=dtype, requires_grad=True)
    hx = _state(kind, (LD, MB, MH), dtype=dtype)

    def run():
        inp = pack_padded_sequence(x, [5, 2, 4], enforce_sorted=False) if packed else x
        out, state = module(inp, hx)
        return ((out.data if packed else out),) + (state if isinstance(state, tuple)
                                                   else (state,))

    with_grad = run()
    assert all(o.requires_grad for o in with_grad)
    with (torch.no_grad() if context == "no_grad" else torch.inference_mode()):
        without = run()
    for a, b in zip(without, with_grad):
        assert not a.requires_grad and a.grad_fn is None
        if context == "inference_mode":
            assert a.is_inference()
        assert torch.equal(a, b.detach())


def _frozen_pair(kind, frozen):
    ours, theirs = _module_pair(kind)
    for module in (ours, theirs):
        for name, p in module.named_parameters():
            if frozen(name):
                p.requires_grad_(False)
    return ours, theirs


FREEZE = {
    "first_layer": lambda name: "_l0" in name,
    "weight_hh": lambda name: name.startswith("weight_hh"),
    "reverse_direction": lambda name: name.endswith("_reverse"),
    "all": lambda name: True,
}


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("freeze", list(FREEZE))
@pytest.mark.parametrize("kind", KINDS)
def test_frozen_parameters(kind, freeze, packed):
    """requires_grad=False parameters get no .grad; the input, hx and the trainable
    parameters get torch.nn's gradients (loss.backward(), as in training)."""
    ours, theirs = _frozen_pair(kind, FREEZE[freeze])
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(MT, MB, MI, generator=gen, dtype=F64)
    hx = _state(kind, (LD, MB, MH))
    lengths = [5, 2, 4] if packed else None
    grads = []
    for module in (ours, theirs):
        leaf = x.clone().requires_grad_(True)
        h = tuple(s.clone().requires_grad_(True) for s in hx) if kind == "lstm" else \
            hx.clone().requires_grad_(True)
        inp = pack_padded_sequence(leaf, lengths, enforce_sorted=False) if packed else leaf
        out, state = module(inp, h)
        out = out.data if packed else out
        states = state if isinstance(state, tuple) else (state,)
        outputs = (out,) + states
        loss = sum((o * g).sum() for o, g in zip(outputs, upstream_grads(outputs)))
        loss.backward()
        result = {"x": leaf.grad}
        result.update({f"hx{i}": s.grad for i, s in
                       enumerate(h if isinstance(h, tuple) else (h,))})
        for name, p in module.named_parameters():
            if p.requires_grad:
                result[name] = p.grad
            else:
                assert p.grad is None, f"{type(module).__module__}: frozen {name} got a grad"
        grads.append(result)
    assert set(grads[0]) == set(grads[1])
    assert all(g is not None for g in grads[0].values())
    assert_tight(grads[0], grads[1])


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("wanted", ["input_only", "weights_only"])
@pytest.mark.parametrize("kind", KINDS)
def test_gradient_for_input_only_or_weights_only(kind, wanted, packed):
    """Only the input requires grad (all parameters frozen, no hx), or only the weights (a
    plain input): torch.autograd.grad gives torch.nn's gradients."""
    ours, theirs = _module_pair(kind)
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(MT, MB, MI, generator=gen, dtype=F64)
    results = []
    for module in (ours, theirs):
        for p in module.parameters():
            p.requires_grad_(wanted == "weights_only")
        leaf = x.clone().requires_grad_(wanted == "input_only")
        inp = pack_padded_sequence(leaf, [5, 2, 4], enforce_sorted=False) if packed else leaf
        out, state = module(inp)
        outputs = ((out.data if packed else out),) + (state if isinstance(state, tuple)
                                                      else (state,))
        wrt = [leaf] if wanted == "input_only" else list(module.parameters())
        results.append(dict(enumerate(torch.autograd.grad(outputs, wrt,
                                                          upstream_grads(outputs)))))
    assert_tight(results[0], results[1])


def _roundtrip(module, how, tmp_path):
    if how == "pickle":
        return pickle.loads(pickle.dumps(module))
    if how == "deepcopy":
        return copy.deepcopy(module)
    path = tmp_path / "module.pt"
    torch.save(module, path)
    return torch.load(path, weights_only=False)


CLIP_CONFIGS = {
    "lstm": ("LSTM", dict(num_layers=2, bidirectional=True, proj_size=P),
             dict(grad_clip=0.03, grad_clip_mode="norm", truncate=2, cell_clip=0.5)),
    "gru": ("GRU", dict(num_layers=2, bidirectional=True),
            dict(grad_clip=0.02, truncate=3)),
}


@pytest.mark.parametrize("how", ["pickle", "deepcopy", "torch_save"])
@pytest.mark.parametrize("config", list(CLIP_CONFIGS))
def test_copies_compute_the_same(config, how, tmp_path):
    """pickle / deepcopy / torch.save+load keep parameters and options, and compute the
    same outputs and gradients; a deepcopy's parameters are new tensors."""
    name, kwargs, options = CLIP_CONFIGS[config]
    kind = kind_of(name)
    torch.manual_seed(0)
    module = fused(name)(I, H, dtype=F64, **kwargs, **options)
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(3.0)
    copied = _roundtrip(module, how, tmp_path)
    assert type(copied) is type(module)
    for key, value in options.items():
        assert getattr(copied, key) == value, key
    for (n, p), (n2, q) in zip(module.named_parameters(), copied.named_parameters()):
        assert n == n2 and torch.equal(p, q) and p is not q
    leaves = make_leaves(kind, L=2, D=2, proj=kwargs.get("proj_size", 0))
    compare(copied, module, leaves, builder(kind, lengths=LENGTHS_UNSORTED))
    compare(copied, module, leaves, builder(kind))
    with torch.no_grad():  # independent parameters
        next(copied.parameters()).add_(1.0)
    assert not torch.equal(next(copied.parameters()), next(module.parameters()))


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
