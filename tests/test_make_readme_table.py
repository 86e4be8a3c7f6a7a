"""benchmarks/make_readme_table.py renders the README results block from recorded JSON
files alone. Here: the issue 11 CPU-engine section (`*-cpu-engine.json`) from small
synthetic files written to tmp_path. No timing, no fusedrnn build needed."""

import json
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import make_readme_table as mrt  # noqa: E402


def _layer(cell, shape, mode, ratio, target, clean=None, n_clean=0, engine=None):
    T, B, I, H = shape
    return {
        "cell": cell, "T": T, "B": B, "I": I, "H": H, "kind": "b1", "mode": mode,
        "repeats": 8, "target": target,
        "impls": {"torch.nn": {"median_ms": 2.0, "n": 8, "engine_calls": 0},
                  "fused:auto": {"median_ms": 1.0, "n": 8, "engine_calls": 0,
                                 "us_per_step": 125.0, "gap": 25.0}},
        "ratio": {"median": ratio, "iqr": 0.1},
        "clean_ratio": None if clean is None else {"median": clean, "iqr": 0.05},
        "n_clean": n_clean, "min_ratio": ratio,
        "met": ratio >= target,
        "engine_vs_steps": None if engine is None else {"median": engine, "iqr": 0.1},
        "auto_vs_steps": None,
        "floor": {"whh_bytes": 1 << 20, "bytes_per_step": 1 << 20, "flops_per_step": 5e5,
                  "bw_level": "l2", "bytes_floor_us": 5.0, "flops_floor_us": 3.0,
                  "floor_us": 5.0, "bound": "bytes"},
    }


def _result(date="2030-01-02T03:04:05+00:00", model="Test CPU 9000", engine=True):
    shape = (128, 1, 64, 256)
    return {
        "machine": {
            "date": date, "cpu_model": model, "cpu_count_logical": 2, "cpu_affinity": 2,
            "torch_version": "9.9.9+cpu", "torch_num_threads": 2,
            "fusedrnn_commit": "0123456789abcdef0123", "command": "bench_cpu_engine.py",
            "loadavg_start": [0.5, 0.4, 0.3], "loadavg_end": [1.5, 1.0, 0.8],
            "host_probe_us_start": 1.31, "host_probe_us_end": 3.4,
            "cpu_capability": "avx2",
            "floor_machine": {"cpu_model": model, "cpus_allowed": 2,
                              "flags": ["avx", "avx2", "fma"],
                              "caches": {"L2": 1 << 21}, "fusedrnn_capability": "avx2",
                              "torch_version": "9.9.9+cpu"},
        },
        "config": {"threads": 2, "engine_modes": ["auto", "steps", "engine"] if engine
                   else ["auto"], "engine_default": "auto", "step_gemm": "onednn"},
        "floor": {"machine": {"fusedrnn_capability": "avx2"}, "isa": "avx2", "quick": False,
                  "threads": [1, 2],
                  "fma": {"avx2": {"1": {"gflops": 60.0}, "2": {"gflops": 111.25}}},
                  "l2": {"1": {"gbs": 90.0}, "2": {"gbs": 180.5}},
                  "sgemm": {"1": {"gflops": 70.0, "n": 2048}, "2": {"gflops": 99.0, "n": 2048}}},
        "notes": ["a recorded note"],
        "errors": {},
        "layers": [
            _layer("lstm", shape, "infer", 2.5, 2.0, clean=2.25, n_clean=5,
                   engine=1.5 if engine else None),
            _layer("lstm", shape, "train", 1.5, 2.0, engine=1.2 if engine else None),
            _layer("gru", shape, "infer", 3.0, 2.5, engine=1.1 if engine else None),
            _layer("gru", shape, "train", 3.5, 3.0, engine=1.3 if engine else None),
        ],
        "cells": [
            {"cell": "lstm", "B": b, "I": 64, "H": 64, "mode": m, "calls_per_sample": 10,
             "repeats": 8, "impls": {}, "ratio": {"median": r, "iqr": 0.1},
             "clean_ratio": None, "n_clean": 0, "min_ratio": r, "target": 1.25,
             "met": r >= 1.25}
            for b, m, r in ((1, "infer", 1.75), (1, "train", 0.5))
        ],
        "fixed": [
            {"cell": "lstm", "mode": m, "G": 4, "calls_per_sample": 50, "repeats": 8,
             "impls": {"ops.lstm_layer": {"median_ms": us / 1e3},
                       "torch.nn.LSTMCell": {"median_ms": 0.04}},
             "op_us": us, "target_us": t, "met": us <= t}
            for m, us, t in (("infer", 15.0, 20.0), ("train", 150.0, 60.0))
        ],
        "overheads": [
            {"cell": "gru", "T": 128, "B": 8, "I": 64, "H": 256, "mode": "train",
             "repeats": 8, "impls": {}, "target_pct": 3.0,
             "clip_overhead_pct": {"median": 1.25, "iqr": 2.0},
             "clip_clean_overhead_pct": None, "clip_met": True,
             "track_overhead_pct": {"median": 7.5, "iqr": 2.0},
             "track_clean_overhead_pct": {"median": 6.0, "iqr": 1.0, "n": 3},
             "track_met": False},
        ],
        "seconds": 100.0,
        "targets": {"layers": {"met": 3, "of": 4}, "cells": {"met": 1, "of": 2},
                    "fixed": {"met": 1, "of": 2}, "overheads": {"met": 1, "of": 2}},
    }


def _write(folder: Path, name: str, data: dict) -> None:
    (folder / name).write_text(json.dumps(data))


def _section(block: str) -> str:
    """The CPU-engine part of the block: from its heading to the bench.py part or the end."""
    start = block.index("**CPU engine benchmark")
    end = block.find("**`bench.py` runs**")
    return block[start:end if end >= 0 else len(block)]


def test_cpu_engine_section_renders_marks_and_figures(tmp_path):
    _write(tmp_path, "test-cpu-2030-01-02-cpu-engine.json", _result())
    block = mrt.make_block(tmp_path, tmp_path / "NOTES.md")
    assert block.startswith(mrt.BEGIN) and block.endswith(mrt.END)
    sec = _section(block)
    assert "Test CPU 9000" in sec
    # machine line: capability, flags, cores, torch, threads, date, load, command
    for text in ("`_cpu_capability` avx2", "flags: avx avx2 fma", "2 cores", "torch 9.9.9+cpu",
                 "2 threads", "2030-01-02 03:04", "load average 0.5 at start, 1.5 at end",
                 "host probe (8-float torch.add) 1.31 us at start, 3.4 at end",
                 "fusedrnn 0123456789ab", "`bench_cpu_engine.py`"):
        assert text in sec, text
    # floors at the run's thread count (2), one line
    assert ("FMA peak 111.2 GFLOP/s (avx2); L2 read 180.5 GB/s; sgemm 99.0 GFLOP/s "
            "(n=2048)") in sec
    # with the engine-shaped k loop recorded (floor.py since 2026-12-03), it joins the line
    data = _result()
    data["floor"]["kloop"] = {"2": {"gflops": 88.5, "isa": "avx2"}}
    assert ("FMA peak 111.2 GFLOP/s (avx2); the engine's k loop alone, panel in L2 88.5 "
            "GFLOP/s; L2 read") in mrt.cpu_engine_floor_line(data)
    assert "layers 3/4, cells 1/2, fixed cost 1/2, overheads 1/2" in sec
    # layers: one row per cell and shape, infer and train side by side
    lstm = next(line for line in sec.splitlines() if line.startswith("| LSTM | 128, 1, 64, 256"))
    assert lstm.split(" | ")[2:6] == ["2.50x (u 2.25x/5)", ">= 2x met", "1.50x",
                                      ">= 2x **not met**"]
    assert "125 (25x) / 125 (25x)" in lstm and "5 / 5" in lstm and "1.50x / 1.20x" in lstm
    assert "| steps/engine infer / train |" in sec
    # a run without the call floor has no column for the room the target leaves
    assert "| target / floor infer / train |" not in sec
    # with it (bench_cpu_engine.py since 2026-12-04 evening): the call floor and its gap
    data = _result()
    for r in data["layers"]:
        r["floor"].update(call_floor_us=12.5, target_room=1.1)
        r["impls"]["fused:auto"]["call_gap"] = 10.0
    _write(tmp_path, "test-cpu-2030-01-02-cpu-engine.json", data)
    sec2 = _section(mrt.make_block(tmp_path, tmp_path / "NOTES.md"))
    assert "| target / floor infer / train |" in sec2
    lstm2 = next(line for line in sec2.splitlines() if line.startswith("| LSTM | 128, 1, 64, 256"))
    assert "125 (10x) / 125 (10x)" in lstm2 and "12.5 / 12.5" in lstm2
    assert lstm2.split(" | ")[8] == "1.10x / 1.10x"
    assert "floor call" not in sec2  # no B=1 floor call recorded: no table for it
    # with the B=1 floor call (bench_cpu_engine.py since 2026-12-04 night): its own table
    for r in data["layers"]:
        r["call_floor"] = {"nn_over_floor": 1.7, "nn_over_floor_at_peak": 1.9,
                           "fused_over_floor": 1.1, "fused_over_floor_at_peak": 1.3,
                           "target_room": 0.95 if r["mode"] == "infer" else None,
                           "phases_us": None}
    _write(tmp_path, "test-cpu-2030-01-02-cpu-engine.json", data)
    sec3 = _section(mrt.make_block(tmp_path, tmp_path / "NOTES.md"))
    assert "The floor call (benchmarks/call_floor.py)" in sec3
    rows3 = [line for line in sec3.splitlines() if line.startswith("| LSTM | 128, 1, 64, 256")]
    assert len(rows3) == 2  # the layers table's row and the floor call's
    assert rows3[1].split(" | ")[2:5] == ["1.70x / 1.70x", "1.90x / 1.90x", "1.30x / 1.30x"]
    assert rows3[1].endswith("| 0.95x / – |")
    _write(tmp_path, "test-cpu-2030-01-02-cpu-engine.json", _result())
    # cells, fixed cost (with torch.nn's cell), overheads: each with its target and mark
    cell = next(line for line in sec.splitlines() if line.startswith("| LSTMCell | 1 |"))
    assert "1.75x | >= 1.25x met | 0.50x | >= 1.25x **not met**" in cell
    fixed = next(line for line in sec.splitlines() if line.startswith("| ops.lstm_layer"))
    assert "15 us (LSTMCell 40 us) | <= 20 us met" in fixed
    assert "150 us (LSTMCell 40 us) | <= 60 us **not met**" in fixed
    over = next(line for line in sec.splitlines() if line.startswith("| GRU | 128, 8, 64, 256"))
    assert "+1.2% | <= 3% met | +7.5% (u +6.0%/3) | <= 3% **not met**" in over
    assert "Note: a recorded note." in sec
    # deterministic: the same files give the same block
    assert mrt.make_block(tmp_path, tmp_path / "NOTES.md") == block


def test_latest_per_cpu_model_first_and_superseded(tmp_path):
    _write(tmp_path, "test-cpu-2030-01-01-cpu-engine.json",
           _result(date="2030-01-01T00:00:00+00:00"))
    _write(tmp_path, "test-cpu-2030-01-02-cpu-engine.json", _result())
    _write(tmp_path, "other-2029-12-31-cpu-engine.json",
           _result(date="2029-12-31T00:00:00+00:00", model="Other CPU", engine=False))
    block = mrt.make_block(tmp_path, tmp_path / "NOTES.md")
    heads = [line for line in block.splitlines() if line.startswith("**CPU engine benchmark")]
    assert len(heads) == 2
    assert "Test CPU 9000" in heads[0] and "`test-cpu-2030-01-02-cpu-engine.json`" in heads[0]
    assert "superseded: `test-cpu-2030-01-01-cpu-engine`" in heads[0]
    assert "Other CPU" in heads[1] and "superseded" not in heads[1]
    # the run without engine modes has no steps/engine column
    other = block[block.index(heads[1]):]
    assert "steps/engine infer / train" not in other.split("Cells (")[0]


def test_cpu_engine_first_and_bench_groups_unchanged(tmp_path):
    bench_run = {
        "machine": {"date": "2029-01-01T00:00:00", "cpu_model": "Old CPU", "cpu_affinity": 2,
                    "torch_version": "1.0", "torch_num_threads": 2, "command": "bench.py"},
        "config": {"device": "cpu", "grid": "headline", "repeats": 10},
        "summary": [{"cell": "lstm", "T": 8, "B": 2, "I": 3, "H": 4,
                     "fwdbwd_vs_torchnn": {"median": 1.5},
                     "infer_vs_torchnn": {"median": 1.25}}],
    }
    _write(tmp_path, "cpu-old-2029-01-01.json", bench_run)
    alone = mrt.make_block(tmp_path, tmp_path / "NOTES.md")
    _write(tmp_path, "test-cpu-2030-01-02-cpu-engine.json", _result())
    both = mrt.make_block(tmp_path, tmp_path / "NOTES.md")
    assert both.index("**CPU engine benchmark") < both.index("**Headline shape")
    # the bench.py part renders as it did without the cpu-engine file
    assert alone[alone.index("Ratio = torch.nn time / fusedrnn time (>1: fusedrnn faster), "
                             "the median of the\nper-repeat"):] in both
    assert "| LSTM | padded | 1.50x | 1.25x |" in both


def test_check_flags_an_out_of_date_readme(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    _write(results, "test-cpu-2030-01-02-cpu-engine.json", _result())
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{mrt.BEGIN}\nold\n{mrt.END}\n")
    args = ["--readme", str(readme), "--results", str(results)]
    assert mrt.main(args + ["--check"]) == 1
    assert mrt.main(args) == 0
    assert "**CPU engine benchmark (issue 11): Test CPU 9000**" in readme.read_text()
    assert mrt.main(args + ["--check"]) == 0
