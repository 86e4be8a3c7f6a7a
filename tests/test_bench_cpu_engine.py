"""Smoke test of the issue 11 benchmark scripts (benchmarks/bench_cpu_engine.py and
benchmarks/floor.py): every section runs at a trivial size and produces well-formed rows
and a report. Nothing here asserts anything about speed: on a shared CI machine a timing
assertion would only measure the neighbours."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from helpers import runtime_kernels

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

bce = pytest.importorskip("bench_cpu_engine")
floor = pytest.importorskip("floor")


def _tiny_args(tmp_path, *extra):
    # Tiny shapes, one warm-up and two timed repeats: seconds, not minutes. Floors are left
    # to their own test (the compile takes about a minute the first time).
    return bce.parse_args([
        "--quick", "--no-floor", "--no-progress-bar", "--threads", "1",
        "--shape", "3", "2", "3", "5", "--cell-batches", "2",
        "--overhead-shape", "4", "2", "3", "5",
        "--warmup", "1", "--min-repeats", "2", "--max-repeats", "2",
        "--out", str(tmp_path), *extra])


def test_all_sections_run_at_a_trivial_size(tmp_path):
    threads = torch.get_num_threads()
    try:
        args = _tiny_args(tmp_path)
        args.warmup, args.min_repeats, args.max_repeats = 1, 2, 2
        args.budget = bce.Budget(1, 2, 2, 0.01)
        args.budget_small = bce.Budget(1, 2, 2, 0.01)
        result = bce.run(args)
    finally:
        torch.set_num_threads(threads)
    assert not result["errors"], result["errors"]
    layers = result["layers"]
    assert {(r["cell"], r["mode"]) for r in layers} == {
        (c, m) for c in ("lstm", "gru") for m in ("infer", "train")}
    for r in layers:
        assert r["target"] is None  # not one of the shapes
        assert r["impls"]["torch.nn"]["n"] == 2
        assert r["ratio"]["median"] > 0
        # fusedrnn and torch.nn hold the same weights: the forward check must agree
        assert all(d < 1e-4 for d in r["fwd_max_abs_diff"].values()), r["fwd_max_abs_diff"]
        assert r["floor"]["whh_bytes"] == bce.GATES[r["cell"]] * 5 * 5 * 4
        # preemption is counted per sample; the clean ratio covers at most every repeat
        assert len(r["impls"]["torch.nn"]["preempted"]) == 2
        assert 0 <= r["n_clean"] <= 2 and r["min_ratio"] > 0
    assert len(result["cells"]) == 4 and all(r["ratio"] for r in result["cells"])
    assert len(result["fixed"]) == 4 and all(r["op_us"] > 0 for r in result["fixed"])
    assert len(result["overheads"]) == 2
    assert all(r["clip_overhead_pct"] is not None and r["track_overhead_pct"] is not None
               for r in result["overheads"])
    import fusedrnn
    assert result["machine"]["cpu_capability"] == fusedrnn._C._cpu_capability()
    # the host speed probe, at both ends of the run, in the report's header
    probes = [result["machine"][k] for k in ("host_probe_us_start", "host_probe_us_end")]
    assert all(isinstance(p, float) and p > 0 for p in probes), probes
    text = bce.report(result)
    assert f"{probes[0]} at start, {probes[1]} at end" in text
    for heading in ("## Layers", "## Cells", "## Fixed cost", "## Overheads"):
        assert heading in text
    json.dumps(result, default=str)  # what main() writes must serialise


def test_engine_columns_and_run_counter_are_reported(tmp_path):
    args = _tiny_args(tmp_path, "--only", "layers", "--cells", "gru", "--modes", "infer")
    args.budget = bce.Budget(1, 2, 2, 0.01)
    result = bce.run(args)
    (row,) = result["layers"]
    import fusedrnn
    if hasattr(fusedrnn._C, "_set_cpu_engine"):
        assert {"fused:auto", "fused:steps", "fused:engine"} <= set(row["impls"])
        # the counter is read around every timed call: a count, whether or not it ran
        assert 0 <= row["impls"]["fused:engine"]["engine_calls"] <= 2
    assert fusedrnn._C._cpu_engine() == result["config"]["engine_default"]  # restored


def test_main_writes_md_and_json(tmp_path):
    rc = bce.main(["--quick", "--no-floor", "--no-progress-bar", "--threads", "1",
                   "--only", "fixed", "--cells", "lstm", "--modes", "infer",
                   "--save", "--out", str(tmp_path)])
    assert rc == 0
    (js,) = tmp_path.glob("*-cpu-engine.json")
    assert js.with_suffix(".md").exists()
    data = json.loads(js.read_text())
    assert data["fixed"][0]["target_us"] == 20.0


def test_step_floor_arithmetic():
    ceilings = {"machine": {"caches": {"L2": 2 << 20}, "fusedrnn_capability": "avx2"},
                "isa": "avx2",
                "fma": {"avx2": {"2": {"gflops": 100.0}}},
                "l2": {"2": {"gbs": 200.0}}, "llc": {"2": {"gbs": 50.0}}}
    f = bce.step_floor("lstm", 8, 256, "infer", 2, ceilings)
    assert f["whh_bytes"] == 4 * 256 * 256 * 4
    assert f["bytes_floor_us"] == pytest.approx(f["whh_bytes"] / 200e9 * 1e6)
    assert f["flops_floor_us"] == pytest.approx(2 * 8 * 4 * 256 * 256 / 100e9 * 1e6)
    assert f["floor_us"] == max(f["bytes_floor_us"], f["flops_floor_us"])
    train = bce.step_floor("lstm", 8, 256, "train", 2, ceilings)
    assert train["bytes_per_step"] == 2 * f["bytes_per_step"]
    assert train["flops_per_step"] == 3 * f["flops_per_step"]
    # the whole call's FLOPs: the input projection too (I = 64), against the FMA peak
    full = bce.step_floor("lstm", 8, 256, "train", 2, ceilings, I=64)
    assert full["flops_all_per_step"] == 3 * 2 * 8 * 4 * 256 * (256 + 64)
    assert full["fma_all_floor_us"] == pytest.approx(full["flops_all_per_step"] / 100e9 * 1e6)
    # The call floor, phase by phase. B=8 H=256 I=64: the loop is bound by its FLOPs (2 *
    # 8 * 4 * 256^2 at 100 GFLOP/s = 41.9 us > 5.2 us of W_hh at 200 GB/s).
    loop = 2 * 8 * 4 * 256 * 256 / 100e9 * 1e6
    proj = 2 * 8 * 4 * 256 * 64 / 100e9 * 1e6
    infer = bce.step_floor("lstm", 8, 256, "infer", 2, ceilings, I=64)
    assert infer["call_floor_us"] == pytest.approx(loop + proj)
    # train: two passes, the input projection, input and dW_ih gradients, and dW_hh
    assert full["call_floor_us"] == pytest.approx(2 * loop + 3 * proj + loop)
    # B=1: the loop is bound by W_hh's bytes
    one = bce.step_floor("gru", 1, 256, "infer", 2, ceilings, I=64)
    assert one["call_floor_us"] == pytest.approx(
        3 * 256 * 256 * 4 / 200e9 * 1e6 + 2 * 3 * 256 * 64 / 100e9 * 1e6)
    # without measured ceilings there is no call floor
    assert "call_floor_us" not in bce.step_floor("lstm", 8, 256, "infer", 2, None, I=64)
    # a slice that does not fit L2 is read from the LLC
    big = bce.step_floor("lstm", 8, 1024, "infer", 2, ceilings)
    assert big["bw_level"] == "llc"


def test_floor_quick_measure():
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler on PATH: floor.py compiles its kernels at run time")
    try:
        floor._build()
    except Exception as exc:  # missing headers, ninja, ...: not a bug of the script
        pytest.skip(f"floor.py's kernels do not compile here: {exc}")
    result = floor.measure(quick=True, threads=(1,))
    assert result["fma"][result["isa"]]["1"]["gflops"] > 0
    for level in ("l1", "l2", "llc", "mem"):
        assert result[level]["1"]["gbs"] > 0
    assert result["sgemm"]["1"]["gflops"] > 0
    assert floor.fma_peak(result, 1) > 0
    assert "FMA peak" in floor.table(result)
    if result["isa"] != "default":  # the engine-shaped k loop: a positive rate, in the table
        assert 0 < floor.kloop_rate(result, 1)
        assert "engine k loop" in floor.table(result)


def test_b1_floor_call_in_the_layer_repeats(tmp_path):
    """At B=1 (floors on, AVX-512, a compiler) the floor call is timed in the same repeats:
    its ratios, the 'GEMMs at peak' variant, phases and the target room reach the row, the
    report and the README table; with --no-call-floor it stays out."""
    cf = pytest.importorskip("call_floor")
    runtime_kernels(cf.build, "call_floor.py")
    ceilings = {"machine": {"caches": {"L2": 2 << 20}, "fusedrnn_capability": "avx512"},
                "isa": "avx512", "fma": {"avx512": {"1": {"gflops": 100.0}}},
                "l2": {"1": {"gbs": 200.0}}, "llc": {"1": {"gbs": 50.0}}}
    fj = tmp_path / "floor.json"
    fj.write_text(json.dumps(ceilings))
    base = ["--quick", "--no-progress-bar", "--threads", "1", "--only", "layers",
            "--cells", "lstm", "--shape", "3", "1", "8", "64", "--floor-json", str(fj),
            "--warmup", "1", "--min-repeats", "2", "--max-repeats", "2",
            "--engine-modes", "auto", "--out", str(tmp_path)]
    threads = torch.get_num_threads()
    try:
        result = bce.run(bce.parse_args(base))
        without = bce.run(bce.parse_args(base + ["--no-call-floor"]))
    finally:
        torch.set_num_threads(threads)
    assert not result["errors"], result["errors"]
    for r in result["layers"]:
        cfs = r["call_floor"]
        assert {"floor call", "floor call, GEMMs at peak"} <= set(r["impls"])
        for key in ("nn_over_floor", "nn_over_floor_at_peak", "fused_over_floor",
                    "fused_over_floor_at_peak"):
            assert cfs[key] > 0
        assert cfs["target_room"] is None  # not the shape: no target
        assert cfs["phases_us"]["forward_loop"] > 0
        assert (cfs["phases_us"]["backward_loop"] > 0) == (r["mode"] == "train")
    # a target makes the room: the time it allows over the floor call (at peak)
    (train,) = [r for r in result["layers"] if r["mode"] == "train"]
    st = bce.call_floor_stats(
        {k: v["times_ms"] for k, v in train["impls"].items()},
        {k: v["preempted"] for k, v in train["impls"].items()}, 2.0, None)
    assert st["target_room"] == pytest.approx(st["nn_over_floor_at_peak"] / 2.0)
    assert "the floor call in the same repeats" in bce.layers_tables(result["layers"])
    assert all("call_floor" not in r for r in without["layers"])
    assert "floor call" not in without["layers"][0]["impls"]
