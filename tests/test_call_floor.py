"""benchmarks/call_floor.py: that its floor call does the work it claims (the loops' states
and sums land where the recurrence puts them, on every thread's slice; the gradients are
the products of the kept buffers), its bookkeeping, and its errors. Nothing here asserts
anything about speed."""

import sys
from pathlib import Path

import pytest
from helpers import runtime_kernels
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
cf = pytest.importorskip("call_floor")


def _module():
    return runtime_kernels(cf.build, "call_floor.py")


def test_gemm_flops_and_phase_medians():
    T, I, H, G = 128, 64, 256, 4
    assert cf.gemm_flops(T, I, H, G, False) == 2.0 * T * G * H * I
    assert cf.gemm_flops(T, I, H, G, True) == 2.0 * T * G * H * (3 * I + H)
    p = cf.phase_medians([[1e-6, 2e-6, 0, 0, 2], [3e-6, 4e-6, 0, 0, 1], [2e-6, 3e-6, 0, 0, 2]])
    assert p["input_projection"] == pytest.approx(2.0) and p["forward_loop"] == pytest.approx(3.0)
    assert p["total"] == pytest.approx(5.0) and p["team"] == 1


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("T,I,H,G", [(5, 3, 64, 4), (3, 8, 128, 3)])
def test_floor_call_does_the_work(T, I, H, G, threads):
    mod = _module()
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        mod.setup(T, I, H, G)
        phases = mod.call(True)
    finally:
        torch.set_num_threads(old)
    assert len(phases) == 5 and all(v >= 0 for v in phases[:4]) and 1 <= phases[4] <= 2
    xp, gates, hs, dgates, dw_hh, dw_ih, dx, db = mod.outputs()
    cf.check_outputs(mod, True)
    # The forward loop: h_t = 0.01 * (gate 0's sums of step t) + the input part, on both
    # threads' halves of the units; the sums of step t depend on h_{t-1} (not constant).
    torch.testing.assert_close(hs, 0.01 * gates[:, :H] + xp[:, :H], rtol=1e-6, atol=1e-6)
    assert not torch.equal(gates[0], gates[-1])
    # The gradients are the products of what the loops kept.
    torch.testing.assert_close(dw_hh, dgates.t() @ hs, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(db, dgates.sum(0), rtol=1e-4, atol=1e-4)
    assert dw_ih.shape == (G * H, I) and dx.shape == (T, I)
    infer = mod.call(False)
    assert infer[2] == 0 and infer[3] == 0


def test_check_outputs_rejects_empty_work():
    class Fake:
        def __init__(self, value):
            self.value = value

        def outputs(self):
            return [torch.full((2, 2), self.value) for _ in range(8)]

    cf.check_outputs(Fake(1.0), True)
    with pytest.raises(RuntimeError, match="zero or not finite"):
        cf.check_outputs(Fake(0.0), False)
    with pytest.raises(RuntimeError, match="zero or not finite"):
        cf.check_outputs(Fake(float("nan")), True)


def test_bad_sizes_raise():
    mod = _module()
    with pytest.raises(RuntimeError, match="multiple of 64"):
        mod.setup(4, 8, 96, 4)
    with pytest.raises(RuntimeError, match="T >= 1"):
        mod.setup(0, 8, 64, 4)


def test_measure_pairs_every_figure():
    _module()
    res = cf.measure("lstm", 4, 8, 64, modes=("infer", "train"), seconds=0.05,
                     min_repeats=3, max_repeats=3, warmup=1, fma_peak_gflops=100.0)
    for mode in ("infer", "train"):
        r = res["modes"][mode]
        assert r["repeats"] == 3
        assert set(r["median_ms"]) == {"torch.nn", "fusedrnn", "floor call",
                                       "floor call, GEMMs at peak"}
        assert all(v > 0 for v in r["ratio"].values())
        assert r["floor_phases_us"]["team"] >= 1
        assert "target" not in r  # not the shape
    assert res["modes"]["infer"]["floor_phases_us"]["backward_loop"] == 0
    assert res["modes"]["train"]["floor_phases_us"]["backward_loop"] > 0
    assert "floor call" in cf.report(res)
