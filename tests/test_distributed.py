"""DistributedDataParallel (2 processes, gloo, 127.0.0.1 only) equals single-process training
on the concatenated batch, loss scaled as DDP averages. Children run
tests/_reliability_worker.py, with timeouts; they are killed on the way out.
"""

import torch
from torch import nn

import _reliability_worker as worker
from helpers import F64, _child_env, _run_children, assert_tight


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
