"""Smoke test of benchmarks/bench.py's command line and the benchlib package behind it:
tiny shapes, two timed repeats, every preset and the files a saved run writes. Nothing
here asserts anything about speed."""

import json
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

bench = pytest.importorskip("bench")

TINY = ["--T", "4", "--B", "3", "--I", "3", "--H", "5", "--repeats", "2", "--warmup", "1",
        "--no-progress-bar"]


def test_default_run_prints_the_report(capsys):
    assert bench.main(["--cell", "gru", "--no-save", *TINY]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# fusedrnn benchmark")
    for heading in ("## Results", "## Summary"):
        assert heading in out
    # the default implementations, every mode
    for mode in ("fwd", "bwd", "fwdbwd", "infer"):
        for impl in ("fused", "fused_clip", "torchnn", "reference"):
            assert f"| {mode} | {impl} |" in out
    assert "flashrnn |" not in out and "## Errors" not in out


def test_packed_preset_runs_padded_and_packed(capsys):
    assert bench.main(["--grid", "packed", "--cell", "lstm", "--no-save", "--no-memory",
                       *TINY]) == 0
    out = capsys.readouterr().out
    assert "grid packed, layers 2, bidirectional, batches: padded, packed" in out
    assert "## Packed vs padded" in out and "## Errors" not in out


def test_old_grid_name_is_an_alias_and_saved_files(tmp_path, capsys):
    assert bench.main(["--grid", "issue7", "--cell", "lstm", "--out", str(tmp_path),
                       "--no-memory", *TINY]) == 0
    assert "deprecated" in capsys.readouterr().err
    (json_file,) = tmp_path.glob("cpu-*.json")
    assert json_file.with_suffix(".md").exists()
    data = json.loads(json_file.read_text())
    assert data["config"]["grid"] == data["plan"]["grid"] == "track_overhead"
    assert set(data["plan"]["mode_impls"]) == {"bwd", "fwdbwd"}
    assert not data["errors"]
    s = data["summary"][0]
    assert s["track_overhead_fused_bwd_pct"] is not None
    # a second run the same day gets a time suffix instead of overwriting
    stem = bench.output_stem(data["machine"], bench.torch.device("cpu"), tmp_path)
    assert stem.name.startswith(json_file.stem + "-")


def test_flashrnn_never_runs_by_default(capsys):
    for grid in bench.GRIDS:
        plan = bench.resolve_plan(bench.parse_args(["--device", "cuda", "--grid", grid]))
        assert all("flashrnn" not in names for names in plan["mode_impls"].values())
    with pytest.raises(SystemExit):
        bench.parse_args(["--help"])
    assert "UNTESTED wrapper" in " ".join(capsys.readouterr().out.split())


def test_flashrnn_asked_for_on_cpu_is_dropped_with_a_note(capsys):
    assert bench.main(["--impls", "flashrnn", "torchnn", "--modes", "infer", "--cell",
                       "lstm", "--no-save", "--no-memory", *TINY]) == 0
    captured = capsys.readouterr()
    assert "flashrnn: CUDA only, not run on this device" in captured.out
    assert "| infer | torchnn |" in captured.out and "| flashrnn |" not in captured.out
