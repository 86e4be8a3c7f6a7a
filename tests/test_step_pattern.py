"""benchmarks/step_pattern.py: its statistics, and that its two kernels compute the step's
dot products (a pattern benchmark whose kernels did no real work would time nothing).
Nothing here asserts anything about speed."""

import sys
from pathlib import Path

import pytest
from helpers import runtime_kernels

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
sp = pytest.importorskip("step_pattern")


def test_summarize_lockstep_and_free():
    # two threads, three steps each (seconds): thread 0 then thread 1
    times = [1e-6, 4e-6, 1e-6, 3e-6, 1e-6, 1e-6]
    lock = sp.summarize(times, 2, lockstep=True)  # each step at the slower thread
    assert lock["median_us"] == pytest.approx(3.0) and lock["mean_us"] == pytest.approx(8 / 3)
    free = sp.summarize(times, 2, lockstep=False)  # the slower thread alone
    assert free["mean_us"] == pytest.approx(2.0) and free["median_us"] == pytest.approx(1.0)
    one = sp.summarize([2e-6, 4e-6], 1, lockstep=False)
    assert one["mean_us"] == pytest.approx(3.0) and one["p90_us"] == pytest.approx(4.0)


def _module():
    return runtime_kernels(sp._build, "step_pattern.py")


@pytest.mark.parametrize("H,G", [(64, 4), (128, 3), (256, 4)])
def test_kernels_compute_the_step(H, G):
    err_panel, err_natural = _module().check(H, G)
    assert err_panel < 1e-5 and err_natural < 1e-5


def test_measure_runs_every_variant():
    _module()
    res = sp.measure(64, 4, steps=20, tries=1)
    assert set(res) == set(sp.VARIANTS)
    for s in res.values():
        assert 0 < s["median_us"] <= s["p90_us"] and s["mean_us"] > 0
        assert s["kib_per_thread"] == 4 * 32 * 64 * 4 / 1024
    with pytest.raises(RuntimeError, match="multiple of 64"):
        sp._build().run("panel-1t", 96, 4, 10)
    with pytest.raises(RuntimeError, match="unknown variant"):
        sp._build().run("panel-3t", 64, 4, 10)
