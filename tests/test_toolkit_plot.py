"""fusedrnn.plot: the gradient-flow figure (lines, distances, masking, log scale, second
panel, PNG output), suggest_clip, matplotlib as an optional dependency, bad input."""
import importlib
import importlib.util
import math
import sys
import types

import numpy as np
import pytest
import torch

import fusedrnn
from fusedrnn import plot
from fusedrnn.plot import grad_flow, suggest_clip

# Drawing needs matplotlib (an optional extra); the error path and suggest_clip do not.
needs_mpl = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                               reason="matplotlib is not installed")


def lines_by_label(ax):
    return {line.get_label(): line for line in ax.get_lines()}


@needs_mpl
def test_png_written_and_parent_directories_created(tmp_path):
    norms = torch.rand(2, 12) + 0.1
    path = tmp_path / "a" / "b" / "flow.png"
    fig = grad_flow(norms, path, title="run 1")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    assert fig._suptitle.get_text() == "run 1"
    grad_flow(norms, str(tmp_path / "flat.png"))  # a str path, existing directory
    assert (tmp_path / "flat.png").read_bytes()[:4] == b"\x89PNG"


@needs_mpl
def test_no_file_without_path_and_no_pyplot(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    was_imported = "matplotlib.pyplot" in sys.modules
    fig = grad_flow([[1.0, 0.5, 0.0]])
    assert list(tmp_path.iterdir()) == []
    assert type(fig).__module__ == "matplotlib.figure"
    assert ("matplotlib.pyplot" in sys.modules) == was_imported  # pyplot left alone


@needs_mpl
def test_lines_labels_log_scale_and_forward_distances():
    T = 6
    norms = torch.tensor([[6.0, 5, 4, 3, 2, 0],    # layer 0: forward, last column 0
                          [1.0, 2, 4, 8, 16, 0]],  # layer 1
                         dtype=torch.float64)
    fig = grad_flow(norms)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    lines = lines_by_label(ax)
    assert list(lines) == ["layer 0", "layer 1"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["layer 0", "layer 1"]
    # distance = T-1-t; the zero at t = T-1 (distance 0) is dropped
    np.testing.assert_array_equal(lines["layer 0"].get_xdata(), [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(lines["layer 0"].get_ydata(), [2, 3, 4, 5, 6])
    np.testing.assert_array_equal(lines["layer 1"].get_ydata(), [16, 8, 4, 2, 1])
    assert "steps back" in ax.get_xlabel() and "norm" in ax.get_ylabel()
    assert T == norms.shape[1]


@needs_mpl
def test_reverse_direction_distances_and_labels():
    # 2 layers x 2 directions; reverse rows have their zero at t = 0
    T = 5
    fwd = torch.arange(1.0, T + 1).flip(0)  # t=0..4: 5 4 3 2 1
    fwd[-1] = 0
    rev = torch.arange(1.0, T + 1)  # t=0..4: 1 2 3 4 5
    rev[0] = 0
    norms = torch.stack([fwd, rev, 2 * fwd, 2 * rev])
    fig = grad_flow(norms, directions=2)
    lines = lines_by_label(fig.axes[0])
    assert list(lines) == ["layer 0", "layer 0 (reverse)", "layer 1", "layer 1 (reverse)"]
    # reverse: distance = t, so its x data are t = 1..4 with the norms at those t
    np.testing.assert_array_equal(lines["layer 0 (reverse)"].get_xdata(), [1, 2, 3, 4])
    np.testing.assert_array_equal(lines["layer 0 (reverse)"].get_ydata(), [2, 3, 4, 5])
    np.testing.assert_array_equal(lines["layer 1"].get_xdata(), [1, 2, 3, 4])
    np.testing.assert_array_equal(lines["layer 1"].get_ydata(), [2 * 2, 2 * 3, 2 * 4, 2 * 5])


@needs_mpl
def test_zeros_and_non_finite_are_masked_and_counted():
    norms = np.array([[1.0, 0.0, math.nan, 3.0, math.inf, -1.0, 0.0]])
    fig = grad_flow(norms)
    (line,) = fig.axes[0].get_lines()
    assert line.get_label() == "layer 0 (2 non-finite)"
    # t = 0 and t = 3 remain (distances 6 and 3), sorted by distance
    np.testing.assert_array_equal(line.get_xdata(), [3, 6])
    np.testing.assert_array_equal(line.get_ydata(), [3.0, 1.0])
    assert fig.axes[0].get_yscale() == "log"


@needs_mpl
def test_all_zero_norms_do_not_crash(tmp_path):
    fig = grad_flow(torch.zeros(2, 4), tmp_path / "z.png", directions=2)
    ax = fig.axes[0]
    assert [len(l.get_xdata()) for l in ax.get_lines()] == [0, 0]
    assert ax.get_yscale() == "linear"
    assert any("no positive finite norms" in t.get_text() for t in ax.texts)
    assert (tmp_path / "z.png").exists()


@needs_mpl
def test_single_step():
    fig = grad_flow(torch.tensor([[0.0]]))
    assert len(fig.axes[0].get_lines()) == 1


@needs_mpl
def test_global_norms_panel_with_threshold(tmp_path):
    norms = torch.rand(1, 8) + 0.5
    global_norms = [torch.tensor(v) for v in (1.0, 2.0, 0.5, 40.0, 1.5)]  # clip_grad_norm_ style
    fig = grad_flow(norms, tmp_path / "g.png", global_norms=global_norms, clip=3.0)
    assert len(fig.axes) == 2
    ax2 = fig.axes[1]
    assert ax2.get_yscale() == "log"
    lines = lines_by_label(ax2)
    assert set(lines) == {"global norm", "clip = 3"}
    np.testing.assert_array_equal(lines["global norm"].get_xdata(), [0, 1, 2, 3, 4])
    np.testing.assert_allclose(lines["global norm"].get_ydata(), [1.0, 2.0, 0.5, 40.0, 1.5])
    np.testing.assert_array_equal(lines["clip = 3"].get_ydata(), [3.0, 3.0])  # horizontal
    assert "iteration" in ax2.get_xlabel()
    fig = grad_flow(norms, global_norms=np.array([1.0, 0.0, math.nan, 2.0]))
    (line,) = fig.axes[1].get_lines()
    assert line.get_label() == "global norm (1 non-finite)"
    np.testing.assert_array_equal(line.get_xdata(), [0, 3])


def test_suggest_clip():
    values = list(range(1, 101))  # 1..100
    assert suggest_clip(values) == pytest.approx(90.1)
    assert suggest_clip(values, quantile=0.5) == pytest.approx(50.5)
    assert suggest_clip(values, quantile=1) == 100.0
    assert suggest_clip(torch.tensor([2.0, math.nan, math.inf, 4.0]), 0.5) == pytest.approx(3.0)
    assert suggest_clip([torch.tensor(5.0)]) == 5.0
    assert isinstance(suggest_clip(np.array([1.0, 2.0])), float)


@pytest.mark.parametrize("args,exc,match", [
    (([1.0], 0), ValueError, r"quantile must lie in \(0, 1\], got 0"),
    (([1.0], 1.5), ValueError, "quantile must lie in"),
    (([1.0], True), TypeError, "quantile must be a number"),
    (([math.nan, math.inf], 0.9), ValueError, "at least one finite norm"),
    (([], 0.9), ValueError, "at least one finite norm"),
    (([[1.0, 2.0]], 0.9), ValueError, r"global_norms must be 1-D \[N\], got shape \(1, 2\)"),
    ((["a"], 0.9), TypeError, "global_norms must be numbers"),
])
def test_suggest_clip_errors(args, exc, match):
    with pytest.raises(exc, match=match):
        suggest_clip(*args)


@needs_mpl
def test_module_with_grad_norms_is_duck_typed():
    module = types.SimpleNamespace(grad_norms=torch.rand(4, 6) + 0.1, bidirectional=True)
    labels = list(lines_by_label(grad_flow(module).axes[0]))
    assert labels == ["layer 0", "layer 0 (reverse)", "layer 1", "layer 1 (reverse)"]
    one_way = types.SimpleNamespace(grad_norms=torch.rand(2, 6) + 0.1)  # no bidirectional
    assert list(lines_by_label(grad_flow(one_way).axes[0])) == ["layer 0", "layer 1"]
    assert len(grad_flow(module, directions=1).axes[0].get_lines()) == 4  # explicit wins

    class Untracked:  # a module before any tracked backward pass
        grad_norms = None
        bidirectional = False

    with pytest.raises(ValueError, match="this Untracked has no recorded gradient norms"):
        grad_flow(Untracked())


@pytest.mark.parametrize("norms,kw,exc,match", [
    (torch.rand(6), {}, ValueError, r"norms must be 2-D \[L\*D, T\], got shape \(6,\)"),
    (torch.rand(2, 3, 4), {}, ValueError, "norms must be 2-D"),
    (torch.rand(3, 4), dict(directions=2), ValueError,
     r"positive multiple of directions = 2 .* got \(3, 4\)"),
    (torch.rand(0, 4), {}, ValueError, "L\\*D a positive multiple"),
    (torch.rand(2, 0), {}, ValueError, "T >= 1"),
    (torch.rand(2, 4), dict(directions=3), ValueError, "directions must be 1 or 2, got 3"),
    (torch.rand(2, 4), dict(directions=True), ValueError, "directions must be 1 or 2"),
    ("abc", {}, TypeError, "norms must be numbers"),
    (torch.rand(2, 4), dict(clip=1.0), ValueError, "pass global_norms too"),
    (torch.rand(2, 4), dict(clip=-1.0, global_norms=[1.0]), ValueError,
     "clip must be a positive finite number, got -1.0"),
    (torch.rand(2, 4), dict(clip=math.inf, global_norms=[1.0]), ValueError, "clip must be"),
    (torch.rand(2, 4), dict(clip="1", global_norms=[1.0]), TypeError, "clip must be"),
    (torch.rand(2, 4), dict(global_norms=torch.rand(2, 2)), ValueError,
     "global_norms must be 1-D"),
])
def test_input_errors(norms, kw, exc, match):
    with pytest.raises(exc, match=match):
        grad_flow(norms, **kw)


def test_missing_matplotlib_message(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # "import matplotlib" now fails
    with pytest.raises(ImportError, match=r"fusedrnn\.plot needs matplotlib: "
                                          r"pip install 'fusedrnn\[plot\]'"):
        grad_flow(torch.rand(1, 3), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
    # suggest_clip needs no matplotlib, and importing the module works without it
    assert suggest_clip([1.0, 2.0], 1) == 2.0
    monkeypatch.delitem(sys.modules, "fusedrnn.plot")
    monkeypatch.setattr(fusedrnn, "plot", plot, raising=False)  # restored after the test
    fresh = importlib.import_module("fusedrnn.plot")
    assert fresh is not plot and callable(fresh.grad_flow)


@needs_mpl
def test_custom_labels():
    norms = torch.tensor([[3.0, 2, 1, 0], [1.0, 2, 3, 0]])
    fig = grad_flow(norms, labels=["vanilla", "lstm"])
    lines = lines_by_label(fig.axes[0])
    assert list(lines) == ["vanilla", "lstm"]
    np.testing.assert_array_equal(lines["lstm"].get_ydata(), [3, 2, 1])
    with pytest.raises(ValueError, match="labels must be a sequence of 2 strings"):
        grad_flow(norms, labels=["only one"])
    with pytest.raises(ValueError, match="labels must be a sequence of 2 strings"):
        grad_flow(norms, labels="ab")


@needs_mpl
def test_integer_step_ticks_and_marked_early_end():
    # truncate=3 style: the gradient stops 3 steps back; the line ends in a marker and its
    # label says where; ticks on the step axis are whole numbers.
    T = 10
    norms = torch.zeros(1, T, dtype=torch.float64)
    norms[0, T - 4:T - 1] = torch.tensor([0.5, 1.0, 2.0])  # distances 3, 2, 1
    fig = grad_flow(norms)
    ax = fig.axes[0]
    (line,) = ax.get_lines()
    assert line.get_label() == "layer 0 (ends 3 steps back)"
    assert line.get_marker() == "o" and list(line.get_markevery()) == [2]
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    # a line reaching the first step has no end marker
    full = grad_flow(torch.arange(1.0, T + 1).unsqueeze(0)).axes[0].get_lines()[0]
    assert full.get_marker() in ("None", None, "") and "ends" not in full.get_label()
