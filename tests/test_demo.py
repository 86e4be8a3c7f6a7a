"""The demo (examples/forecast.py) on a tiny configuration: training with torch.nn and with
fusedrnn from the same weights on the same data order gives the same loss curves."""
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "examples"))
import forecast  # noqa: E402

try:
    import statsmodels  # noqa: F401

    HAVE_STATSMODELS = True
except ImportError:
    HAVE_STATSMODELS = False

TINY = dict(epochs=3, batch_size=16, lr=1e-2, seed=0, progress=False)


def curves(data, cell, **fused_options):
    """Loss curves of the torch.nn model and of its fusedrnn clone."""
    torch.manual_seed(0)
    reference = forecast.make_model("torch", cell, hidden=16, layers=2)
    fused = forecast.clone_as(reference, "fusedrnn", **fused_options)
    for a, b in zip(reference.state_dict().values(), fused.state_dict().values()):
        assert torch.equal(a, b)
    return forecast.train(reference, data, **TINY), forecast.train(fused, data, **TINY)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_synthetic_torch_and_fusedrnn_agree(cell):
    series, _ = forecast.load_series("synthetic", length=120, seed=0)
    data = forecast.make_data(series, window=8)
    assert data["train_x"].dtype == torch.float32
    ref, fused = curves(data, cell)
    assert len(ref["train"]) == len(ref["val"]) == TINY["epochs"]
    assert all(np.isfinite(ref["train"] + ref["val"]))
    assert ref["train"][-1] < ref["train"][0]  # it learns
    np.testing.assert_allclose(fused["train"], ref["train"], rtol=1e-4)
    np.testing.assert_allclose(fused["val"], ref["val"], rtol=1e-4)


def test_synthetic_clipping_changes_training():
    """The third run of the demo: clip + truncate are active (a different curve), finite."""
    series, _ = forecast.load_series("synthetic", length=120, seed=0)
    data = forecast.make_data(series, window=8)
    ref, clipped = curves(data, "lstm", grad_clip=0.01, truncate=2)
    assert all(np.isfinite(clipped["train"] + clipped["val"]))
    assert not np.allclose(clipped["train"][1:], ref["train"][1:], rtol=1e-4)


@pytest.mark.skipif(not HAVE_STATSMODELS,
                    reason="statsmodels is not installed (it ships the sunspots data): "
                    "python3 -m pip install statsmodels, or make setup")
def test_sunspots_torch_and_fusedrnn_agree():
    series, unit = forecast.load_series("sunspots")
    assert len(series) == 309 and unit == "sunspot number"
    data = forecast.make_data(series, window=12)
    ref, fused = curves(data, "lstm")
    np.testing.assert_allclose(fused["train"], ref["train"], rtol=1e-4)
    np.testing.assert_allclose(fused["val"], ref["val"], rtol=1e-4)


def test_main_runs_end_to_end(tmp_path, capsys):
    forecast.main(["--data", "synthetic", "--epochs", "2", "--hidden", "8", "--window", "6",
                   "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "speedup" in out and "[1] vs [2]" in out
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "pip install matplotlib" in out
    else:
        assert (tmp_path / "forecast_synthetic_lstm.png").stat().st_size > 0
