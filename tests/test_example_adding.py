"""The adding-problem example (examples/adding_problem.py): its data generator, the unrolled
vanilla-RNN gradient record, and a --quick smoke run of main()."""
import json
import math
import os
import sys

import pytest
import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "examples"))
import adding_problem  # noqa: E402

try:
    import matplotlib  # noqa: F401

    HAVE_MATPLOTLIB = True
except ImportError:
    HAVE_MATPLOTLIB = False

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("T", [2, 3, 50, 51])
def test_adding_batch_markers_and_target(T):
    B = 300
    x, y, pos = adding_problem.adding_batch(T, B, torch.Generator().manual_seed(0))
    assert x.shape == (T, B, 2) and y.shape == (B, 1) and pos.shape == (B, 2)
    assert x.dtype == y.dtype == torch.float32
    values, marker = x[..., 0], x[..., 1]
    assert ((values >= 0) & (values < 1)).all()
    assert set(marker.unique().tolist()) <= {0.0, 1.0}
    assert (marker.sum(0) == 2).all()  # exactly two markers per sequence
    first, second = pos[:, 0], pos[:, 1]
    assert ((first >= 0) & (first < T // 2)).all()  # one in the first half
    assert ((second >= T // 2) & (second < T)).all()  # one in the second half
    rows = torch.arange(B)
    assert (marker[first, rows] == 1).all() and (marker[second, rows] == 1).all()
    torch.testing.assert_close(y[:, 0], (values * marker).sum(0))
    torch.testing.assert_close(y[:, 0], values[first, rows] + values[second, rows])


def test_adding_batch_is_reproducible_and_fresh():
    g = torch.Generator().manual_seed(3)
    a = adding_problem.adding_batch(20, 8, g)
    b = adding_problem.adding_batch(20, 8, g)  # next batch of the same stream: different
    c = adding_problem.adding_batch(20, 8, torch.Generator().manual_seed(3))
    assert not torch.equal(a[0], b[0])
    for u, v in zip(a, c):
        assert torch.equal(u, v)
    with pytest.raises(ValueError, match="T must be >= 2"):
        adding_problem.adding_batch(1, 4)


def test_trivial_baseline_is_one_sixth():
    _, y, _ = adding_problem.adding_batch(8, 200_000, torch.Generator().manual_seed(1))
    mse = nn.functional.mse_loss(torch.ones_like(y), y).item()
    assert adding_problem.BASELINE_MSE == pytest.approx(1 / 6)
    assert mse == pytest.approx(1 / 6, abs=3e-3)


def test_vanilla_unrolled_loop_is_torch_nn_rnn():
    """The hand-written loop behind the vanilla gradient record computes what nn.RNN does,
    and its record is dL/dh_t (autograd through nn.RNN's own output), last step 0."""
    torch.manual_seed(0)
    model = adding_problem.make_model(nn.RNN, 6, seed=0)
    x, y, _ = adding_problem.adding_batch(12, 5, torch.Generator().manual_seed(0))
    hs = adding_problem.unrolled_rnn(model.rnn, x)
    out, h_n = model.rnn(x)
    torch.testing.assert_close(torch.stack(hs), out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hs[-1], h_n[0], rtol=1e-5, atol=1e-6)

    norms = adding_problem.grad_flow_norms(model, x, y)
    assert norms.shape == (1, 12) and norms[0, -1] == 0 and (norms[0, :-1] > 0).all()
    assert all(p.grad is None for p in model.parameters())  # diagnostic leaves no gradient
    # the same record from nn.RNN's own outputs: dL/dh_{T-1} from the head, then back
    # through the recurrence by hand, dL/dh_{t-1} = (dL/dh_t * (1 - h_t^2)) @ W_hh
    out, _ = model.rnn(x)
    out.retain_grad()
    nn.functional.mse_loss(model.head(out[-1]), y).backward()
    g, h, expected = out.grad[-1], out.detach(), []
    for t in range(11, 0, -1):
        g = (g * (1 - h[t] ** 2)) @ model.rnn.weight_hh_l0.detach()
        expected.append(g.norm())
    expected = torch.stack(expected[::-1])  # t = 0 .. T-2
    torch.testing.assert_close(norms[0, :-1], expected, rtol=1e-4, atol=1e-8)


def test_fused_record_is_last_step_loss_gradient():
    """fusedrnn's record on the diagnostic batch: [1, T], 0 at the last step and at and
    before the truncation point closest to the end, the module left untracked."""
    x, y, _ = adding_problem.adding_batch(16, 4, torch.Generator().manual_seed(0))
    import fusedrnn

    model = adding_problem.make_model(fusedrnn.LSTM, 5, seed=0, truncate=4)
    norms = adding_problem.grad_flow_norms(model, x, y)
    assert norms.shape == (1, 16)
    assert (norms[0, :12] == 0).all() and (norms[0, 12:15] > 0).all() and norms[0, 15] == 0
    assert model.rnn.track_grad_norms is False
    assert all(p.grad is None for p in model.parameters())


def _check_outputs(out, result, with_plots):
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True
    assert summary["task"]["T"] == 20 and summary["task"]["baseline_mse"] == pytest.approx(1 / 6)
    assert summary["config"]["quick"] is True and summary["config"]["steps"] == 20
    names = [m["model"] for m in summary["models"]]
    assert names[:3] == ["torch.nn.RNN", "fusedrnn.LSTM", "fusedrnn.GRU"] and len(names) == 5
    for m in summary["models"]:
        for key in ("options", "final_test_mse", "solved", "first_below_step", "seconds",
                    "ms_per_step", "mean_clip_fraction", "clip_fraction_next_to_loss", "curve",
                    "grad_norms_before", "grad_norms_after"):
            assert key in m, key
        assert math.isfinite(m["final_test_mse"]) and isinstance(m["solved"], bool)
        assert m["curve"]["step"][0] == 0 and m["curve"]["step"][-1] == 20
        assert len(m["curve"]["step"]) == len(m["curve"]["test_mse"])
        assert len(m["grad_norms_before"]) == len(m["grad_norms_after"]) == 20
        assert m["grad_norms_before"][-1] == 0  # no recurrent gradient into the last step
    clipped = [m for m in summary["models"] if "grad_clip" in m["options"]]
    assert len(clipped) == 1 and 0 <= clipped[0]["mean_clip_fraction"] <= 1
    assert 0 <= clipped[0]["clip_fraction_next_to_loss"] <= 1
    assert all(m["mean_clip_fraction"] is None for m in summary["models"] if m not in clipped)
    truncated = [m for m in summary["models"] if "truncate" in m["options"]]
    assert len(truncated) == 1 and not any(truncated[0]["grad_norms_before"][:16])
    assert "| model | options | final test MSE |" in (out / "summary.md").read_text()
    assert [m["model"] for m in result["models"]] == names
    pngs = sorted(p.name for p in out.glob("*.png"))
    if with_plots and HAVE_MATPLOTLIB:
        assert "learning_curves.png" in pngs and "grad_flow_all.png" in pngs
        assert "grad_flow_torch_nn_rnn.png" in pngs and len(pngs) == 8
        for name in pngs:
            assert (out / name).read_bytes()[:8] == PNG_MAGIC
    else:
        assert pngs == []


@pytest.mark.parametrize("with_plots", [True, False])
def test_main_quick(tmp_path, capsys, with_plots):
    threads = torch.get_num_threads()
    argv = ["--quick", "--threads", "1", "--out", str(tmp_path)]
    try:
        result = adding_problem.main(argv + ([] if with_plots else ["--no-plots"]))
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "trivial baseline" in printed and "0.1667" in printed
    assert "| fusedrnn.GRU |" in printed
    _check_outputs(tmp_path, result, with_plots)


def test_summary_written_as_models_finish(tmp_path, monkeypatch):
    """An interrupted run keeps the models it finished: the summary is rewritten after each."""
    seen = []
    real = adding_problem.write_summary

    def spy(args, runs, baseline, total, done):
        real(args, runs, baseline, total, done)
        summary = json.loads((tmp_path / "summary.json").read_text())
        seen.append((len(summary["models"]), summary["complete"]))

    monkeypatch.setattr(adding_problem, "write_summary", spy)
    adding_problem.main(["--quick", "--models", "2,3", "--no-plots", "--out", str(tmp_path)])
    assert seen[:2] == [(1, False), (2, True)] and seen[-1] == (2, True)
    assert "run in progress" not in (tmp_path / "summary.md").read_text()
