"""Whole-model checkpoints with fusedrnn modules under torch.load(weights_only=True).

Code written for torch.nn allowlists torch.nn's classes to load a pickled model; importing
fusedrnn allowlists fusedrnn's four module classes (fusedrnn/modules.py, end), so the same
allowlist loads the model after fusedrnn.convert. Covered: a nested model with all four
classes, options set, trained with track_grad_norms (the grad records are in the pickle);
a bare fusedrnn module; containers still need the caller's allowlist (nothing else is
loosened); state_dicts both ways under weights_only.
"""
import io
import pickle

import pytest
import torch
from torch import nn

import fusedrnn
from helpers import assert_tight

F64 = torch.float64
T, B, I, H = 4, 3, 3, 5

pytestmark = pytest.mark.filterwarnings(
    "ignore:LSTM with projections is not supported with oneDNN:UserWarning")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=2))
        self.more = nn.ModuleList([nn.GRU(4, H, batch_first=True)])
        self.cells = nn.ModuleDict({"l": nn.LSTMCell(H, H), "g": nn.GRUCell(H, H, bias=False)})
        self.out = nn.Linear(H, 1)

    def forward(self, x):
        y, _ = self.body[0](x)
        y, h = self.more[0](y.transpose(0, 1))
        h, c = self.cells["l"](h[0])
        return self.out(self.cells["g"](c, h))


# What code written for torch.nn allowlists for such a model.
TORCH_NN_ALLOWLIST = [nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell, nn.Sequential, nn.ModuleList,
                      nn.ModuleDict, nn.Linear, Net]


def save(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


def test_trained_converted_model_loads_under_a_torch_nn_allowlist():
    torch.manual_seed(0)
    model = fusedrnn.convert(Net().double(), grad_clip=0.5, truncate=3, cell_clip=2.0,
                             track_grad_norms=True)
    x = torch.randn(T, B, I, dtype=F64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):  # trained: parameters moved, grads and grad records filled
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()
    assert model.body[0].grad_norms is not None and model.body[0]._grad_records
    model.eval()
    buffer = save(model)
    with torch.serialization.safe_globals(TORCH_NN_ALLOWLIST):
        loaded = torch.load(buffer, weights_only=True)
    kinds = [type(m) for m in loaded.modules()
             if isinstance(m, (nn.RNNBase, nn.RNNCellBase))]
    assert kinds == [fusedrnn.LSTM, fusedrnn.GRU, fusedrnn.LSTMCell, fusedrnn.GRUCell]
    lstm = loaded.body[0]
    assert (lstm.grad_clip, lstm.truncate, lstm.cell_clip, lstm.track_grad_norms) == \
        (0.5, 3, 2.0, True)
    assert not loaded.training
    # records come without their gradient, like parameters: nothing until the next backward
    assert lstm.grad_norms is None
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    for (name, p), q in zip(loaded.named_parameters(), model.parameters()):
        assert torch.equal(p, q) and p.grad is None, name
    # the loaded model trains and records like the original
    loaded.train()
    model.train()
    for m in (loaded, model):
        m.zero_grad()
        m(x).pow(2).sum().backward()
    assert torch.equal(loaded.body[0].grad_norms, model.body[0].grad_norms)
    for p, q in zip(loaded.parameters(), model.parameters()):
        assert torch.equal(p.grad, q.grad)


def test_fresh_modules_load_and_compute_like_the_saved_ones():
    torch.manual_seed(1)
    modules = [fusedrnn.LSTM(I, H, dtype=F64), fusedrnn.GRU(I, H, num_layers=2, dtype=F64),
               fusedrnn.LSTMCell(I, H, dtype=F64), fusedrnn.GRUCell(I, H, dtype=F64)]
    with torch.serialization.safe_globals([nn.ModuleList]):
        loaded = torch.load(save(nn.ModuleList(modules)), weights_only=True)
    for ours, theirs in zip(loaded, modules):
        assert type(ours) is type(theirs)
        x = torch.randn(B, I, dtype=F64) if "Cell" in type(ours).__name__ else \
            torch.randn(T, B, I, dtype=F64)
        a, b = ours(x), theirs(x)
        a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
        assert torch.equal(a, b)


def test_bare_fusedrnn_module_needs_no_allowlist_but_containers_do():
    lstm = fusedrnn.LSTM(I, H, grad_clip=1.0)
    loaded = torch.load(save(lstm), weights_only=True)
    assert type(loaded) is fusedrnn.LSTM and loaded.grad_clip == 1.0
    # nothing beyond the four classes is allowlisted: torch.nn's own rules still apply
    with pytest.raises(pickle.UnpicklingError, match="Sequential"):
        torch.load(save(nn.Sequential(fusedrnn.GRU(I, H))), weights_only=True)


def test_the_four_classes_are_in_torchs_safe_globals():
    safe = torch.serialization.get_safe_globals()
    for cls in (fusedrnn.LSTM, fusedrnn.GRU, fusedrnn.LSTMCell, fusedrnn.GRUCell):
        assert cls in safe
    # torch's context manager restores the list it found, fusedrnn's entries included
    with torch.serialization.safe_globals([nn.Sequential]):
        pass
    assert fusedrnn.LSTM in torch.serialization.get_safe_globals()


@pytest.mark.parametrize("direction", ["to_torch", "to_fused"])
def test_state_dicts_move_both_ways_under_weights_only(direction):
    torch.manual_seed(2)
    source = Net().double()
    target = Net().double()
    if direction == "to_torch":
        source = fusedrnn.convert(source, grad_clip=1.0)
    else:
        target = fusedrnn.convert(target)
    target.load_state_dict(torch.load(save(source.state_dict()), weights_only=True))
    x = torch.randn(T, B, I, dtype=F64)
    with torch.no_grad():
        assert_tight(target(x), source(x))
