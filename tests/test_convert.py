"""fusedrnn.convert / fusedrnn.to_torch (fusedrnn/conversion.py, docs/adopting.md).

A model mixing the four classes (LSTM with projection, 2 layers, bidirectional, dropout;
GRU without bias, batch_first; LSTMCell; GRUCell without bias) in a ModuleList, a
ModuleDict and a Sequential, plus a root that is itself an LSTM:

* convert swaps every one of them for the fusedrnn class with the same configuration and
  the same Parameter objects; outputs and gradients equal torch.nn's (float64, dropout in
  train mode under the same seed); training flag, dtype, requires_grad and hooks kept; an
  optimizer built before the swap keeps working;
* options reach the LSTM/GRU layers (and change the gradients as the constructor option
  would), already-fusedrnn layers get given options, cell_clip only LSTMs;
* to_torch restores torch.nn's classes (a round trip gives torch.nn's results bit for bit)
  and warns when it drops an option that changes results;
* errors: invalid options (same as the constructors), options no module takes,
  subclasses and weight_norm'd modules left alone with a warning.
"""
import warnings

import pytest
import torch
from torch import nn

import fusedrnn
from helpers import assert_tight

F64 = torch.float64
T, B, I, H, P = 4, 3, 3, 5, 2

pytestmark = pytest.mark.filterwarnings(
    "ignore:LSTM with projections is not supported with oneDNN:UserWarning")

FUSED = (fusedrnn.LSTM, fusedrnn.GRU, fusedrnn.LSTMCell, fusedrnn.GRUCell)
TORCH = (nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell)


class Model(nn.Module):
    """All four classes, nested in a ModuleList, a ModuleDict and a Sequential."""

    def __init__(self):
        super().__init__()
        self.rnns = nn.ModuleList([
            nn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=P, dropout=0.4),
            nn.Sequential(nn.GRU(2 * P, H, bias=False, batch_first=True)),
        ])
        self.cells = nn.ModuleDict({"lstm": nn.LSTMCell(H, H), "gru": nn.GRUCell(H, H,
                                                                                   bias=False)})
        self.head = nn.Sequential(nn.Linear(H, 2), nn.Tanh())

    def forward(self, x):
        y, _ = self.rnns[0](x)
        y, h = self.rnns[1][0](y.transpose(0, 1))
        state = (h[0], torch.zeros_like(h[0]))
        g = h[0]
        for t in range(y.size(1)):
            state = self.cells["lstm"](y[:, t], state)
            g = self.cells["gru"](state[0], g)
        return self.head(g)


def make_model(seed=0):
    torch.manual_seed(seed)
    return Model().double()


def _leaves(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _leaves(o)]


def classes(model):
    return [type(m) for m in model.modules() if isinstance(m, FUSED + TORCH)]


def run(model, seed=7):
    """Output and gradients (input, every parameter by name) of one forward/backward, under
    a fixed seed (dropout)."""
    x = torch.randn(T, B, I, dtype=F64, generator=torch.Generator().manual_seed(1),
                    requires_grad=True)
    torch.manual_seed(seed)
    out = model(x)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    grads = torch.autograd.grad(out.sum(), [x] + list(params.values()))
    return {"out": out.detach(), "x": grads[0],
            **{name: g for name, g in zip(params, grads[1:])}}


def test_convert_swaps_all_four_keeping_parameters_and_results():
    model = make_model()
    expected = run(model)
    params = dict(model.named_parameters())
    rng = torch.get_rng_state()
    out = fusedrnn.convert(model)
    assert out is model
    assert torch.equal(rng, torch.get_rng_state())  # the swap draws no random numbers
    assert classes(model) == [fusedrnn.LSTM, fusedrnn.GRU, fusedrnn.LSTMCell, fusedrnn.GRUCell]
    after = dict(model.named_parameters())
    assert list(after) == list(params)
    assert all(after[n] is params[n] for n in params)
    lstm, gru = model.rnns[0], model.rnns[1][0]
    assert (lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bidirectional,
            lstm.proj_size, lstm.dropout, lstm.bias, lstm.batch_first) == \
        (I, H, 2, True, P, 0.4, True, False)
    assert (gru.bias, gru.batch_first, gru.num_layers) == (False, True, 1)
    assert model.cells["gru"].bias is False and model.cells["gru"].bias_ih is None
    assert all(w is params[f"rnns.0.{n}"] for w, n in zip(lstm._flat_weights,
                                                           lstm._flat_weights_names))
    assert lstm.grad_clip is None and lstm.cell_clip is None and not lstm.track_grad_norms
    # train mode with dropout under the same seed, float64: torch.nn's results
    assert_tight(run(model), expected)
    model.eval()
    with torch.no_grad():
        x = torch.randn(T, B, I, dtype=F64)
        ours = model(x)
        assert_tight(ours, fusedrnn.to_torch(model)(x))


def test_round_trip_back_to_torch_is_bitwise():
    model = make_model()
    expected = run(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    back = fusedrnn.to_torch(fusedrnn.convert(model))
    assert back is model
    assert classes(model) == list(TORCH)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    got = run(model)
    for k in expected:
        assert torch.equal(got[k], expected[k]), k


@pytest.mark.parametrize("name", ["LSTM", "GRU", "LSTMCell", "GRUCell"])
def test_root_itself_is_replaced(name):
    torch.manual_seed(0)
    kwargs = dict(proj_size=2) if name == "LSTM" else {}
    root = getattr(nn, name)(I, H, dtype=F64, **kwargs)
    root.eval()
    new = fusedrnn.convert(root)
    assert type(new) is getattr(fusedrnn, name) and new is not root
    assert not new.training
    assert all(a is b for a, b in zip(new.parameters(), root.parameters()))
    x = torch.randn(B, I, dtype=F64) if "Cell" in name else torch.randn(T, B, I, dtype=F64)
    flat = lambda out: torch.cat([t.flatten() for t in _leaves(out)])  # noqa: E731
    assert_tight(flat(new(x)), flat(root(x)))
    again = fusedrnn.to_torch(new)
    assert type(again) is getattr(nn, name)
    assert all(a is b for a, b in zip(again.parameters(), root.parameters()))
    assert torch.equal(flat(again(x)), flat(root(x)))


def test_flags_dtype_requires_grad_and_shared_module_kept():
    model = make_model()
    model.rnns[0].weight_hh_l0.requires_grad_(False)
    model.cells["lstm"].eval()
    model.add_module("alias", model.rnns[0])  # one module reachable from two parents
    fusedrnn.convert(model)
    assert model.alias is model.rnns[0] and type(model.alias) is fusedrnn.LSTM
    assert model.training and model.rnns[0].training and not model.cells["lstm"].training
    assert model.rnns[0].weight_hh_l0.requires_grad is False
    assert model.rnns[0].weight_ih_l0.requires_grad is True
    assert {p.dtype for p in model.parameters()} == {F64}
    assert "rnns.0.weight_hh_l0" not in run(model)


def test_optimizer_built_before_the_swap_keeps_training():
    """SGD with momentum: a step on the converted model updates the parameters the
    optimizer holds, exactly as the torch.nn model's step does (float64 tolerance)."""
    results = []
    for swap in (False, True):
        model = make_model()
        model.eval()  # no dropout: the step is deterministic
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for step in range(3):
            if swap and step == 1:  # optimizer state (momentum) exists already
                fusedrnn.convert(model)
            opt.zero_grad()
            x = torch.randn(T, B, I, dtype=F64, generator=torch.Generator().manual_seed(step))
            model(x).pow(2).sum().backward()
            opt.step()
        assert classes(model)[0] is (fusedrnn.LSTM if swap else nn.LSTM)
        results.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    assert_tight(results[1], results[0])


def test_hooks_kept():
    calls = []
    model = make_model()
    handle = model.rnns[0].register_forward_hook(lambda m, a, o: calls.append(type(m)))
    model.cells["gru"].register_forward_pre_hook(lambda m, a: calls.append("pre"))
    fusedrnn.convert(model)
    model(torch.randn(T, B, I, dtype=F64))
    assert calls[0] is fusedrnn.LSTM and calls.count("pre") == T
    handle.remove()  # the handle taken before the swap removes the hook from the new module
    calls.clear()
    model(torch.randn(T, B, I, dtype=F64))
    assert fusedrnn.LSTM not in calls


def test_options_applied_to_layers():
    model = make_model()
    fusedrnn.convert(model, grad_clip=0.5, grad_clip_mode="norm", truncate=2, cell_clip=1,
                     track_grad_norms=True)
    lstm, gru = model.rnns[0], model.rnns[1][0]
    assert (lstm.grad_clip, lstm.grad_clip_mode, lstm.truncate, lstm.cell_clip,
            lstm.track_grad_norms) == (0.5, "norm", 2, 1.0, True)
    assert isinstance(lstm.cell_clip, float) and isinstance(lstm.grad_clip, float)
    assert (gru.grad_clip, gru.grad_clip_mode, gru.truncate, gru.track_grad_norms) == \
        (0.5, "norm", 2, True)
    assert not hasattr(gru, "cell_clip")
    model(torch.randn(T, B, I, dtype=F64)).sum().backward()
    assert lstm.grad_norms.shape == (4, T) and gru.grad_norms.shape == (1, T)


def test_options_act_like_constructor_options():
    """convert(lstm, options) computes what fusedrnn.LSTM(..., options) computes."""
    options = dict(grad_clip=0.05, truncate=2, cell_clip=0.5)
    torch.manual_seed(0)
    root = nn.LSTM(I, H, num_layers=2, dtype=F64)
    with torch.no_grad():
        for p in root.parameters():
            p.mul_(3.0)  # make the clips act
    built = fusedrnn.LSTM(I, H, num_layers=2, dtype=F64, **options)
    built.load_state_dict(root.state_dict())
    x = torch.randn(T, B, I, dtype=F64)
    root(x)[0].pow(2).sum().backward()
    plain = [p.grad.clone() for p in root.parameters()]
    converted = fusedrnn.convert(root, **options)
    for module in (built, converted):
        module.zero_grad()
        module(x)[0].pow(2).sum().backward()
    assert torch.equal(converted(x)[0], built(x)[0])
    for a, b in zip(converted.parameters(), built.parameters()):
        assert torch.equal(a.grad, b.grad)
    assert not torch.allclose(converted.weight_hh_l0.grad, plain[1])  # the options act


def test_existing_fusedrnn_layers_get_given_options_only():
    model = nn.Sequential(fusedrnn.LSTM(I, H, grad_clip=2.0, truncate=3), nn.GRU(I, H))
    fusedrnn.convert(model, truncate=5)
    assert (model[0].grad_clip, model[0].truncate) == (2.0, 5)
    assert (model[1].grad_clip, model[1].truncate) == (None, 5)
    fusedrnn.convert(model, grad_clip=None)  # explicit None removes the clip
    assert model[0].grad_clip is None and model[0].truncate == 5
    fusedrnn.convert(model)  # nothing given: nothing changes
    assert model[0].truncate == 5


def test_cell_clip_skips_gru_and_needs_an_lstm():
    model = nn.Sequential(nn.LSTM(I, H), nn.GRU(I, H))
    fusedrnn.convert(model, cell_clip=2.0)
    assert model[0].cell_clip == 2.0 and not hasattr(model[1], "cell_clip")
    only_gru = nn.Sequential(nn.GRU(I, H), nn.LSTMCell(I, H))
    with pytest.raises(ValueError, match="cell_clip=3.0 applies to LSTM"):
        fusedrnn.convert(only_gru, cell_clip=3.0)
    assert type(only_gru[0]) is nn.GRU  # nothing changed
    fusedrnn.convert(only_gru, cell_clip=None)  # asks for nothing: fine
    only_cells = nn.ModuleList([nn.LSTMCell(I, H)])
    for options in (dict(grad_clip=1.0), dict(truncate=2), dict(track_grad_norms=True),
                    dict(grad_clip_mode="norm")):
        with pytest.raises(ValueError, match="applies to LSTM or GRU"):
            fusedrnn.convert(only_cells, **options)
    assert type(only_cells[0]) is nn.LSTMCell
    fusedrnn.convert(only_cells, grad_clip=None, track_grad_norms=False)
    assert type(only_cells[0]) is fusedrnn.LSTMCell


BAD_OPTIONS = [
    (dict(grad_clip=-1.0), ValueError),
    (dict(grad_clip=float("nan")), ValueError),
    (dict(grad_clip=True), TypeError),
    (dict(grad_clip="1"), TypeError),
    (dict(grad_clip_mode="max"), ValueError),
    (dict(truncate=0), ValueError),
    (dict(truncate=2.0), TypeError),
    (dict(cell_clip=0.0), ValueError),
    (dict(cell_clip=float("inf")), ValueError),
    (dict(track_grad_norms=1), TypeError),
]


@pytest.mark.parametrize("options, error", BAD_OPTIONS, ids=[str(o) for o, _ in BAD_OPTIONS])
def test_invalid_options_like_the_constructor(options, error):
    with pytest.raises(error) as ctor:
        fusedrnn.LSTM(I, H, **options)
    model = nn.Sequential(nn.LSTM(I, H))
    with pytest.raises(error) as conv:
        fusedrnn.convert(model, **options)
    assert str(conv.value) == str(ctor.value)
    assert type(model[0]) is nn.LSTM


def test_unknown_option_and_non_module():
    with pytest.raises(TypeError):
        fusedrnn.convert(nn.LSTM(I, H), clip=1.0)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fusedrnn.convert(torch.zeros(2))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fusedrnn.to_torch([nn.LSTM(I, H)])


def test_subclasses_and_weight_norm_left_alone_with_warning():
    class MyLSTM(nn.LSTM):
        pass

    class MyFused(fusedrnn.GRU):
        pass

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # weight_norm's deprecation
        normed = nn.utils.weight_norm(nn.GRU(I, H), "weight_hh_l0")
    model = nn.Sequential(MyLSTM(I, H), normed, nn.GRUCell(I, H), MyFused(I, H), nn.GRU(I, H))
    with pytest.warns(UserWarning, match="MyLSTM: a subclass") as record:
        fusedrnn.convert(model, truncate=2)
    message = str(record[0].message)
    assert "GRU: its parameters" in message and "MyFused: a subclass of a fusedrnn" in message
    assert [type(m) for m in model] == [MyLSTM, nn.GRU, fusedrnn.GRUCell, MyFused, fusedrnn.GRU]
    assert model[3].truncate is None and model[4].truncate == 2
    with pytest.warns(UserWarning) as record:
        fusedrnn.to_torch(model)
    messages = " | ".join(str(w.message) for w in record)
    assert "MyFused: a subclass" in messages and "dropped: GRU(truncate=2)" in messages
    assert type(model[2]) is nn.GRUCell


def test_plain_convert_does_not_warn():
    model = make_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fusedrnn.convert(model)  # (dropout with the LSTM's 2 layers: no warning either)
        fusedrnn.to_torch(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one_layer = nn.LSTM(I, H, dropout=0.2)  # torch.nn warns here, at construction
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fusedrnn.convert(one_layer).dropout == 0.2  # not again at conversion


def test_to_torch_warns_on_options_that_change_results():
    model = nn.Sequential(fusedrnn.LSTM(I, H, cell_clip=1.0), fusedrnn.GRU(I, H, truncate=2),
                          fusedrnn.GRU(I, H, track_grad_norms=True))
    with pytest.warns(UserWarning, match=r"LSTM\(cell_clip=1.0\); GRU\(truncate=2\)"):
        fusedrnn.to_torch(model)
    assert [type(m) for m in model] == [nn.LSTM, nn.GRU, nn.GRU]
    assert not hasattr(model[0], "cell_clip")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # track_grad_norms alone: dropped silently
        fusedrnn.to_torch(fusedrnn.GRU(I, H, track_grad_norms=True, grad_clip_mode="norm"))


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_quantize_dynamic_sees_only_torch_classes():
    """What docs/adopting.md says: torch.ao's dynamic quantization looks for torch.nn.LSTM;
    to_torch makes a converted model quantizable again."""
    quantize_dynamic = getattr(getattr(torch.ao, "quantization", None), "quantize_dynamic", None)
    if quantize_dynamic is None:
        pytest.skip("this torch has no torch.ao.quantization.quantize_dynamic")
    model = nn.Sequential(nn.LSTM(I, H))
    fused_model = fusedrnn.convert(model)
    assert not isinstance(fused_model[0], nn.LSTM)
    assert isinstance(fused_model[0], nn.RNNBase)
    quantized = quantize_dynamic(fused_model, {nn.LSTM})
    assert type(quantized[0]) is fusedrnn.LSTM  # skipped silently
    quantized = quantize_dynamic(fusedrnn.to_torch(fused_model),
                                                       {nn.LSTM})
    assert type(quantized[0]) is not nn.LSTM and "quantized" in type(quantized[0]).__module__
