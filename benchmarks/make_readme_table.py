#!/usr/bin/env python
"""Regenerate the results block of the top-level README.md from benchmarks/results/*.json.

    python benchmarks/make_readme_table.py           # rewrite the block in README.md
    python benchmarks/make_readme_table.py --check   # exit 1 if the block is out of date
    python benchmarks/make_readme_table.py --print   # print the block, write nothing

The block is the text between `<!-- results:begin -->` and `<!-- results:end -->`. It is
made only from the recorded JSON files (never from the current time or machine), so the
same files always give the same block:

- First, the issue 11 CPU-engine runs (`*-cpu-engine.json`, written by
  bench_cpu_engine.py), the current headline: the latest run per CPU model (older ones of
  the same model named as superseded), each with its machine line (CPU, _cpu_capability
  and flags, cores, torch version, threads, date, load average, the command), the measured
  floors (FMA peak, L2 read bandwidth, sgemm), and compact tables of the layers (paired
  ratio vs torch.nn per cell and mode, the undisturbed-repeats ratio, target and met / not
  met, time per step vs the floor, the per-step loop vs the engine), the cells, the fixed
  cost per call and the clip+truncate / track_grad_norms overheads, each against the
  issue's target.
- The bench.py files are grouped by configuration: device, CPU/GPU model, grid, dtype, layers,
  directions, batch layouts (padded / packed), cells and shapes. Of each group only the
  latest run (machine.date in the JSON) is shown; the older ones are named as superseded.
- Per configuration: the machine line (CPU/GPU, cores, torch version, threads, dtype,
  date, load average, repeats, fusedrnn commit, the command), the file names, and a table of the
  summary's paired ratios: train step, inference, forward, backward vs torch.nn,
  clip+truncate overhead and train step vs the plain-PyTorch reference loop (a column
  whose mode or implementation was not run is left out).
- Where a configuration ran padded and packed batches (the packed grid), a second table
  with the per-case ratios vs torch.nn and the packed-vs-padded per-real-token ratios.
- Last, the hand-written benchmarks/results/NOTES.md (caveats a table cannot carry),
  verbatim. Edit that file, not the block.

Only the standard library is used.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path

# benchmarks/ is on sys.path when run; benchlib's grids and markdown import no torch
from benchlib.grids import grid_name
from benchlib.markdown import per_token_column
from benchlib.markdown import table as md_table
from benchlib.names import FLOOR_IMPL, nn_cell_impl, op_impl

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
RESULTS = HERE / "results"
README = REPO_ROOT / "README.md"
NOTES = RESULTS / "NOTES.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
GRID_ORDER = {"headline": 0, "full": 1, "packed": 2, "track_overhead": 3}
MODES = ("fwd", "bwd", "fwdbwd", "infer")
CPU_ENGINE_SUFFIX = "-cpu-engine.json"


def load_runs(folder: Path) -> list:
    """Every results JSON, with the fields that identify its configuration filled in for
    files written before bench.py recorded them (no `plan`: 1 layer, unidirectional,
    padded)."""
    runs = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"make_readme_table.py: skipping {path.name}: {exc}", file=sys.stderr)
            continue
        if path.name.endswith(CPU_ENGINE_SUFFIX) or not data.get("summary"):
            continue  # cpu-engine runs: load_cpu_engine_runs
        config, plan, machine = data["config"], data.get("plan") or {}, data["machine"]
        summaries = data["summary"]
        for s in summaries:  # older files lack these fields
            s.setdefault("layers", plan.get("layers") or config.get("layers") or 1)
            s.setdefault("directions", 2 if plan.get("bidirectional") else 1)
            s.setdefault("packed", False)
            s.setdefault("tokens", s["T"] * s["B"])
        device = config.get("device", "cpu").split(":")[0]
        key = (
            device,
            machine.get("gpu_name") if device == "cuda" else machine.get("cpu_model"),
            grid_name(config.get("grid", "headline")),  # issue3/issue7: former names
            config.get("dtype", "float32"),
            tuple(sorted({(s["layers"], s["directions"]) for s in summaries})),
            tuple(sorted({bool(s["packed"]) for s in summaries})),
            tuple(sorted({s["cell"] for s in summaries})),
            tuple(sorted({(s["T"], s["B"], s["I"], s["H"]) for s in summaries})),
        )
        runs.append({"path": path, "data": data, "key": key,
                     "date": machine.get("date", ""), "grid": key[2]})
    return runs


def latest_per_config(runs: list) -> list:
    """[(latest run, [older runs of the same configuration])], in a stable order: machine,
    then grid (headline, full, packed, track_overhead, others), then date."""
    groups = {}
    for run in runs:
        groups.setdefault(run["key"], []).append(run)
    out = []
    for key, members in groups.items():
        members.sort(key=lambda r: (r["date"], r["path"].name))
        out.append((members[-1], members[:-1]))
    out.sort(key=lambda item: (item[0]["key"][0], str(item[0]["key"][1]),
                               GRID_ORDER.get(item[0]["grid"], 9), item[0]["key"][2:],
                               item[0]["date"]))
    return out


# ----------------------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------------------

def _x(r) -> str:
    return "–" if not r else f"{r['median']:.2f}x"


def _pct(r) -> str:
    return "–" if not r else f"{r['median']:+.1f}%"


def _shape(s) -> str:
    return f"T={s['T']} B={s['B']} I={s['I']} H={s['H']}"


def _batch(s) -> str:
    return (f"packed ({s['tokens'] / (s['T'] * s['B']):.0%} real)" if s["packed"]
            else "padded")


def machine_line(data: dict) -> str:
    m, c = data["machine"], data["config"]
    if "gpu_name" in m:
        hw = (f"GPU {m['gpu_name']} (CUDA {m.get('cuda_version')}, cuDNN "
              f"{m.get('cudnn_version')})")
    else:
        hw = f"CPU {m['cpu_model']}, {m.get('cpu_affinity') or m.get('cpu_count_logical')} cores"
    load = m.get("loadavg_start")
    load_txt = f"load average {load[0]}" if load else ""
    if load and m.get("loadavg_end"):
        load_txt += f" at start, {m['loadavg_end'][0]} at end"
    parts = [hw, f"torch {m['torch_version']}", f"{m['torch_num_threads']} threads",
             c.get("dtype", "float32"), m["date"].replace("T", " ")[:16], load_txt,
             f"{c.get('repeats')} repeats", f"fusedrnn {m.get('fusedrnn_commit', '?')[:12]}"
             + ("-dirty" if str(m.get("fusedrnn_commit", "")).endswith("-dirty") else "")]
    line = ", ".join(p for p in parts if p)
    if m.get("command"):
        line += f"; `{m['command']}`"
    return line


def describe_config(run: dict) -> str:
    data, grid = run["data"], run["grid"]
    s0 = data["summary"][0]
    layers, dirs = s0["layers"], s0["directions"]
    what = {"headline": "Headline shape", "full": "Full grid",
            "packed": "Padded vs packed (grid `packed`)",
            "track_overhead": "track_grad_norms overhead (grid `track_overhead`)",
            }.get(grid, f"Grid `{grid}`")
    shape_set = sorted({_shape(s) for s in data["summary"]})
    shapes = shape_set[0] if len(shape_set) == 1 else f"{len(shape_set)} shapes"
    layout = f"{layers} layer{'s' if layers > 1 else ''}" + (", bidirectional" if dirs == 2
                                                             else "")
    batches = [b for b in ("padded", "packed")
               if any(_batch(s).startswith(b) for s in data["summary"])]
    return f"{what}: {shapes}, {layout}, {' and '.join(batches)} batches"


def summary_section(run: dict) -> str:
    data = run["data"]
    multi_shape = len({_shape(s) for s in data["summary"]}) > 1
    columns = [("cell", "---", lambda s: s["cell"].upper())]
    if multi_shape:
        columns.append(("shape", "---", _shape))
    columns.append(("batch", "---", _batch))
    columns += [
        ("train step", "--:", lambda s: _x(s.get("fwdbwd_vs_torchnn"))),
        ("inference", "--:", lambda s: _x(s.get("infer_vs_torchnn"))),
        ("forward", "--:", lambda s: _x(s.get("fwd_vs_torchnn"))),
        ("backward", "--:", lambda s: _x(s.get("bwd_vs_torchnn"))),
        ("clip+truncate overhead (train)", "--:",
         lambda s: _pct(s.get("clip_overhead_fwdbwd_pct"))),
        ("vs plain-PyTorch loop, same clip (train)", "--:",
         lambda s: _x(s.get("fwdbwd_vs_reference"))),
        ("track_grad_norms overhead (backward)", "--:",
         lambda s: _pct(s.get("track_overhead_fused_bwd_pct"))),
        ("track_grad_norms overhead (backward, clip on)", "--:",
         lambda s: _pct(s.get("track_overhead_fused_clip_bwd_pct"))),
        ("train step vs flashrnn", "--:", lambda s: _x(s.get("fwdbwd_vs_flashrnn"))),
        ("inference vs flashrnn", "--:", lambda s: _x(s.get("infer_vs_flashrnn"))),
    ]
    return md_table(columns, data["summary"], n_fixed=3 if multi_shape else 2)


def packed_section(run: dict) -> str:
    comparisons = run["data"].get("packed_vs_padded") or []
    if not comparisons:
        return ""

    def per_token(mode, impl):
        return per_token_column(mode, impl, lambda r: f"{r['median']:.2f}x")

    multi_shape = len({_shape(c) for c in comparisons}) > 1
    columns = [("cell", "---", lambda c: c["cell"].upper())]
    if multi_shape:
        columns.append(("shape", "---", _shape))
    columns += [
        ("real tokens, packed", "--:",
         lambda c: f"{c['tokens_packed'] / c['tokens_padded']:.0%}"),
        ("per real token, packed vs padded: fusedrnn train", "--:",
         per_token("fwdbwd", "fused")),
        ("torch.nn train", "--:", per_token("fwdbwd", "torchnn")),
        ("fusedrnn inference", "--:", per_token("infer", "fused")),
        ("torch.nn inference", "--:", per_token("infer", "torchnn")),
    ]
    return (md_table(columns, comparisons, 3 if multi_shape else 2) + "\n\n"
            "Packed batches: lengths uniform in [T/4, T], the longest T (fixed seed). "
            "Packed vs padded\nper real token = (padded time / (T*B)) / (packed time / "
            "real tokens), per implementation:\n1.00x = a real token costs the same in "
            "both, < 1: dearer when packed (a kernel that\ncomputes the padding anyway "
            "gives about the real-token share). Padded and packed ran\nback to back, not "
            "interleaved: a ratio of medians, not a paired ratio.")


# ----------------------------------------------------------------------------------------
# Issue 11 CPU-engine runs (benchmarks/bench_cpu_engine.py, *-cpu-engine.json)
# ----------------------------------------------------------------------------------------

def load_cpu_engine_runs(folder: Path) -> list:
    """Every *-cpu-engine.json, as {path, data, model, date}."""
    runs = []
    for path in sorted(folder.glob("*" + CPU_ENGINE_SUFFIX)):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"make_readme_table.py: skipping {path.name}: {exc}", file=sys.stderr)
            continue
        if not isinstance(data, dict) or not isinstance(data.get("machine"), dict):
            continue
        m = data["machine"]
        model = m.get("cpu_model") or (m.get("floor_machine") or {}).get("cpu_model") or "?"
        runs.append({"path": path, "data": data, "model": model,
                     "date": m.get("date", "")})
    return runs


def latest_cpu_engine_per_model(runs: list) -> list:
    """[(latest run, [older runs of the same CPU model])], the most recent first (ties:
    model name)."""
    groups = {}
    for run in runs:
        groups.setdefault(run["model"], []).append(run)
    out = []
    for members in groups.values():
        members.sort(key=lambda r: (r["date"], r["path"].name))
        out.append((members[-1], members[:-1]))
    out.sort(key=lambda item: item[0]["model"])
    out.sort(key=lambda item: item[0]["date"], reverse=True)
    return out


def _met(m) -> str:
    return "–" if m is None else ("met" if m else "**not met**")


def _num(v) -> str:
    """A time or size: 3 significant figures, whole numbers from 100 on."""
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _gap(g) -> str:
    return f"{g:.0f}x" if g >= 10 else f"{g:.1f}x"


def _ratio_u(r) -> str:
    """Paired median ratio, with the undisturbed-repeats ratio (u R/n) where there is one."""
    if not r or not r.get("ratio"):
        return "–"
    text = f"{r['ratio']['median']:.2f}x"
    if r.get("clean_ratio") and r.get("n_clean"):
        text += f" (u {r['clean_ratio']['median']:.2f}x/{r['n_clean']})"
    return text


def _pair(a: str, b: str) -> str:
    return "–" if a == "–" and b == "–" else f"{a} / {b}"


def cpu_engine_machine_line(data: dict) -> str:
    m, c = data["machine"], data.get("config") or {}
    fm = m.get("floor_machine") or {}
    cap = m.get("cpu_capability") or fm.get("fusedrnn_capability")
    flags = m.get("cpu_flags") or fm.get("flags")
    hw = f"CPU {m.get('cpu_model') or fm.get('cpu_model')}"
    hw += f", `_cpu_capability` {cap or 'not recorded'}"
    if flags:
        hw += f" (flags: {' '.join(flags)})"
    cores = m.get("cpu_affinity") or m.get("cpu_count_logical") or fm.get("cpus_allowed")
    load = m.get("loadavg_start")
    load_txt = f"load average {load[0]}" if load else ""
    if load and m.get("loadavg_end"):
        load_txt += f" at start, {m['loadavg_end'][0]} at end"
    probe = m.get("host_probe_us_start")
    probe_txt = (f"host probe (8-float torch.add) {probe} us at start, "
                 f"{m.get('host_probe_us_end')} at end" if probe is not None else "")
    commit = str(m.get("fusedrnn_commit", "?"))
    parts = [hw, f"{cores} cores" if cores else "",
             f"torch {m.get('torch_version', '?')}",
             f"{c.get('threads', m.get('torch_num_threads'))} threads", "float32",
             str(m.get("date", "?")).replace("T", " ")[:16], load_txt, probe_txt,
             f"engine default {c['engine_default']}" if c.get("engine_default") else "",
             f"step GEMM {c['step_gemm']}" if c.get("step_gemm") else "",
             f"fusedrnn {commit[:12]}" + ("-dirty" if commit.endswith("-dirty") else "")]
    line = ", ".join(p for p in parts if p)
    if m.get("command"):
        line += f"; `{m['command']}`"
    return line


def cpu_engine_floor_line(data: dict) -> str:
    """The measured ceilings at the run's thread count, in one line."""
    fl = data.get("floor")
    if not fl:
        return "Floors: not measured in this run."
    t = str((data.get("config") or {}).get("threads")
            or data["machine"].get("torch_num_threads") or 1)
    fm = fl.get("machine") or {}
    isa = fm.get("fusedrnn_capability") or fl.get("isa")  # as floor.fma_peak
    fma = fl.get("fma") or {}
    if isa not in fma:
        isa = fl.get("isa")
    peak = ((fma.get(isa) or {}).get(t) or {}).get("gflops")
    l2 = ((fl.get("l2") or {}).get(t) or {}).get("gbs")
    sg = (fl.get("sgemm") or {}).get(t) or {}
    kl = (fl.get("kloop") or {}).get(t) or {}  # runs from before the k loop figure lack it
    items = [f"FMA peak {peak:.1f} GFLOP/s ({isa})" if peak else "",
             f"the engine's k loop alone, panel in L2 {kl['gflops']:.1f} GFLOP/s"
             if kl.get("gflops") else "",
             f"L2 read {l2:.1f} GB/s" if l2 else "",
             f"sgemm {sg['gflops']:.1f} GFLOP/s (n={sg.get('n')})" if sg.get("gflops") else ""]
    items = [i for i in items if i]
    head = f"Floors (benchmarks/floor.py{', quick' if fl.get('quick') else ''}, {t} " \
           f"thread{'s' if t != '1' else ''})"
    return head + ": " + ("; ".join(items) if items else "not recorded") + "."


def cpu_engine_targets_line(data: dict) -> str:
    targets = data.get("targets")
    if not targets:  # older files: count the marks
        targets = {}
        for sec in ("layers", "cells", "fixed"):
            vals = [r["met"] for r in data.get(sec) or [] if r.get("met") is not None]
            targets[sec] = {"met": sum(vals), "of": len(vals)}
        vals = [r[k] for r in data.get("overheads") or [] for k in ("clip_met", "track_met")
                if r.get(k) is not None]
        targets["overheads"] = {"met": sum(vals), "of": len(vals)}
    names = {"fixed": "fixed cost"}
    items = [f"{names.get(k, k)} {v['met']}/{v['of']}" for k, v in targets.items()
             if v.get("of")]
    return "Issue 11 targets met: " + (", ".join(items) if items else "none measured") + "."


def _rows_by(rows: list, key) -> list:
    """[(key, {mode: row})] in first-seen order."""
    out = {}
    for r in rows:
        out.setdefault(key(r), {})[r.get("mode")] = r
    return list(out.items())


def _target_cell(r, fmt) -> str:
    if not r or r.get("target") is None:
        return "–"
    return f"{fmt(r['target'])} {_met(r.get('met'))}"


def cpu_engine_layers_table(rows: list) -> str:
    def mode(m, fn):
        return lambda item: fn(item[1].get(m))

    def ge(v):
        return f">= {v:g}x"

    def per_step(r):
        s = ((r or {}).get("impls") or {}).get("fused:auto") or {}
        if s.get("us_per_step") is None:
            return "–"
        # The gap to the whole call's floor where the run recorded one (runs before the
        # evening of 2026-12-04 have the time loop's alone).
        g = s.get("call_gap", s.get("gap"))
        return _num(s["us_per_step"]) + (f" ({_gap(g)})" if g else "")

    def floor_us(r):
        fl = (r or {}).get("floor") or {}
        f = fl.get("call_floor_us", fl.get("floor_us"))
        return "–" if f is None else _num(f)

    def room(r):
        v = ((r or {}).get("floor") or {}).get("target_room")
        return "–" if v is None else f"{v:.2f}x"

    def engine(r):
        e = (r or {}).get("engine_vs_steps")
        return "–" if not e else f"{e['median']:.2f}x"

    def fma_use(r):
        # fusedrnn's share of the FMA peak, and the share the target asks for (runs made
        # before bench_cpu_engine recorded them have neither).
        got = (((r or {}).get("impls") or {}).get("fused:auto") or {}).get("fma_use")
        need = ((r or {}).get("floor") or {}).get("target_fma_use")
        if got is None:
            return "–"
        return f"{100 * got:.0f}%" + (f" ({100 * need:.0f}%)" if need is not None else "")

    columns = [
        ("cell", "---", lambda item: item[0][0].upper()),
        ("T, B, I, H", "---", lambda item: ", ".join(str(v) for v in item[0][1:])),
        ("infer", "--:", mode("infer", _ratio_u)),
        ("target (infer)", "--:", mode("infer", lambda r: _target_cell(r, ge))),
        ("train", "--:", mode("train", _ratio_u)),
        ("target (train)", "--:", mode("train", lambda r: _target_cell(r, ge))),
        ("us/step (gap) infer / train", "--:",
         lambda item: _pair(per_step(item[1].get("infer")), per_step(item[1].get("train")))),
        ("floor us/step infer / train", "--:",
         lambda item: _pair(floor_us(item[1].get("infer")), floor_us(item[1].get("train")))),
        ("target / floor infer / train", "--:",
         lambda item: _pair(room(item[1].get("infer")), room(item[1].get("train")))),
        ("FMA use (target needs) infer / train", "--:",
         lambda item: _pair(fma_use(item[1].get("infer")), fma_use(item[1].get("train")))),
        ("steps/engine infer / train", "--:",
         lambda item: _pair(engine(item[1].get("infer")), engine(item[1].get("train")))),
    ]
    items = _rows_by(rows, lambda r: (r["cell"], r["T"], r["B"], r["I"], r["H"]))
    return md_table(columns, items, 2)


def cpu_engine_call_floor_table(rows: list) -> str:
    """The B = 1 floor call of the layer rows that carry one (bench_cpu_engine's
    call_floor_stats), one line per shape; '' where none does."""
    rows = [r for r in rows if r.get("call_floor")]
    if not rows:
        return ""

    def x(m, key):
        def cell(item):
            v = ((item[1].get(m) or {}).get("call_floor") or {}).get(key)
            return "–" if v is None else f"{v:.2f}x"
        return cell

    def pair(key):
        return lambda item: _pair(x("infer", key)(item), x("train", key)(item))

    columns = [
        ("cell", "---", lambda item: item[0][0].upper()),
        ("T, B, I, H", "---", lambda item: ", ".join(str(v) for v in item[0][1:])),
        ("torch.nn / floor call infer / train", "--:", pair("nn_over_floor")),
        ("torch.nn / floor call at peak infer / train", "--:", pair("nn_over_floor_at_peak")),
        ("fusedrnn / floor call at peak infer / train", "--:",
         pair("fused_over_floor_at_peak")),
        ("target / floor call infer / train", "--:", pair("target_room")),
    ]
    items = _rows_by(rows, lambda r: (r["cell"], r["T"], r["B"], r["I"], r["H"]))
    return md_table(columns, items, 2)


CALL_FLOOR_README_LEGEND = (
    "The floor call (benchmarks/call_floor.py), timed in the same repeats: the B=1 call's "
    "unavoidable work alone (the input projection; the engine's B=1 memory pattern as the "
    "forward and, in training, the backward loop, with its barrier and shared state but no "
    "activations; the gradient GEMMs), without weight packing or autograd; at peak: its "
    "GEMMs counted at the FMA peak. target / floor call: the time the target allows over "
    "the floor call's at peak; below 1.00x the target asks for less time than that bare "
    "work took in the run.")


def cpu_engine_cells_table(rows: list) -> str:
    def ge(v):
        return f">= {v:g}x"

    columns = [
        ("cell", "---", lambda item: f"{item[0][0].upper()}Cell"),
        ("B", "--:", lambda item: str(item[0][1])),
        ("I = H", "--:", lambda item: str(item[0][2])),
        ("infer", "--:", lambda item: _ratio_u(item[1].get("infer"))),
        ("target (infer)", "--:", lambda item: _target_cell(item[1].get("infer"), ge)),
        ("train", "--:", lambda item: _ratio_u(item[1].get("train"))),
        ("target (train)", "--:", lambda item: _target_cell(item[1].get("train"), ge)),
    ]
    items = _rows_by(rows, lambda r: (r["cell"], r["B"], r.get("H")))
    return md_table(columns, items, 3)


def cpu_engine_fixed_table(rows: list) -> str:
    def op_cell(r):
        if not r or r.get("op_us") is None:
            return "–"
        nn = (r.get("impls") or {}).get(nn_cell_impl(r["cell"])) or {}
        floor = (r.get("impls") or {}).get(FLOOR_IMPL) or {}
        text = f"{_num(r['op_us'])} us"
        extra = []
        if nn.get("median_ms") is not None:
            extra.append(f"{r['cell'].upper()}Cell {_num(nn['median_ms'] * 1e3)} us")
        if floor.get("median_ms") is not None:
            # One torch.cat over the same tensors: what torch's dispatch and autograd alone cost.
            extra.append(f"torch.cat floor {_num(floor['median_ms'] * 1e3)} us")
        return text + (f" ({', '.join(extra)})" if extra else "")

    def target(r):
        if not r or r.get("target_us") is None:
            return "–"
        return f"<= {r['target_us']:g} us {_met(r.get('met'))}"

    columns = [
        ("op (T=1, B=1, I=H=8)", "---", lambda item: op_impl(item[0])),
        ("no-grad (torch.nn cell)", "--:", lambda item: op_cell(item[1].get("infer"))),
        ("target (no-grad)", "--:", lambda item: target(item[1].get("infer"))),
        ("fwd+bwd (torch.nn cell)", "--:", lambda item: op_cell(item[1].get("train"))),
        ("target (fwd+bwd)", "--:", lambda item: target(item[1].get("train"))),
    ]
    return md_table(columns, _rows_by(rows, lambda r: r["cell"]), 1)


def cpu_engine_overheads_table(rows: list) -> str:
    def pct(key):
        def cell(r):
            v = r.get(f"{key}_overhead_pct")
            if not v:
                return "–"
            text = f"{v['median']:+.1f}%"
            u = r.get(f"{key}_clean_overhead_pct")
            if u and u.get("n"):
                text += f" (u {u['median']:+.1f}%/{u['n']})"
            return text
        return cell

    def target(key):
        def cell(r):
            if r.get("target_pct") is None or r.get(f"{key}_met") is None:
                return "–"
            return f"<= {r['target_pct']:g}% {_met(r[f'{key}_met'])}"
        return cell

    columns = [
        ("cell (train step)", "---", lambda r: r["cell"].upper()),
        ("T, B, I, H", "---", lambda r: f"{r['T']}, {r['B']}, {r['I']}, {r['H']}"),
        ("clip(norm)+truncate", "--:", pct("clip")),
        ("target (clip)", "--:", target("clip")),
        ("track_grad_norms", "--:", pct("track")),
        ("target (track)", "--:", target("track")),
    ]
    return md_table(columns, rows, 2)


def _undisturbed_line(data: dict) -> str:
    counts = []
    for sec in ("layers", "cells"):
        rows = data.get(sec) or []
        if rows and any("n_clean" in r for r in rows):
            counts.append(f"{sum(1 for r in rows if r.get('n_clean'))} of {len(rows)} "
                          f"{sec[:-1]} measurements")
    if not counts:
        return ""
    return ("Undisturbed repeats (neither sample preempted; the (u R/n) ratios) in "
            + " and ".join(counts) + ".")


CPU_ENGINE_LEGEND = (
    "Ratio = torch.nn time / fusedrnn time (>1: fusedrnn faster), the median of the "
    "per-repeat\nratios of interleaved repeats; (u R/n): the same over the n repeats where "
    "neither side\nwas preempted, where there were any. us/step: fusedrnn's median time "
    "per step, (gap) its\nmultiple of the floor. Floor: the whole call's, per step: each "
    "pass of the time loop\n(train: forward and backward) at max(W_hh bytes / L2 bandwidth, "
    "its product's FLOPs / FMA\npeak), plus the all-steps GEMMs (input projection; train: "
    "input and weight gradients) at\nthe FMA peak (runs that did not record it, before 2026-12-04 20:00, "
    "show the time loop's max alone);\ntarget / floor: the time per step the target "
    "allows (torch.nn's / target) over that floor:\nbelow 1.00x no implementation can meet "
    "the target on that machine;\nFMA use: the call's FLOPs (input projection and backward GEMMs "
    "included) at the FMA peak\nover fusedrnn's time, and in brackets the share a time of "
    "torch.nn's / target would need\n(a large square sgemm reaches the share the floor line "
    "gives as sgemm / FMA peak,\nand the engine's own register block, streaming its panel "
    "from L2 with nothing else to do,\nthe share of the k loop figure);\nsteps/engine: "
    "the per-step time loop's time / the "
    "persistent engine's, paired. Overheads:\nwith the option / without - 1, paired.")


def cpu_engine_section(run: dict, older: list) -> str:
    data = run["data"]
    md = run["path"].with_suffix(".md").name
    head = (f"**CPU engine benchmark (issue 11): {run['model']}** "
            f"(`{md}`, `{run['path'].name}`)")
    if older:
        head += "; superseded: " + ", ".join(f"`{r['path'].stem}`" for r in older)
    section = [head + "\\\n" + cpu_engine_machine_line(data),
               cpu_engine_floor_line(data) + " " + cpu_engine_targets_line(data),
               CPU_ENGINE_LEGEND]
    if data.get("layers"):
        section.append("Layers (1 layer, unidirectional; train = forward + backward):\n\n"
                       + cpu_engine_layers_table(data["layers"]))
        floor_call = cpu_engine_call_floor_table(data["layers"])
        if floor_call:
            section.append(CALL_FLOOR_README_LEGEND + "\n\n" + floor_call)
    if data.get("cells"):
        section.append("Cells (one call; train = forward + backward):\n\n"
                       + cpu_engine_cells_table(data["cells"]))
    if data.get("fixed"):
        section.append("Fixed cost of one op call, us (timed from Python over loops of "
                       "calls):\n\n" + cpu_engine_fixed_table(data["fixed"]))
    if data.get("overheads"):
        section.append("Overheads on the fast path:\n\n"
                       + cpu_engine_overheads_table(data["overheads"]))
    tail = [t for t in [_undisturbed_line(data)]
            + [f"Note: {n}." if not str(n).endswith(".") else f"Note: {n}"
               for n in data.get("notes") or []] if t]
    errors = data.get("errors") or {}
    if errors:
        tail.append(f"{len(errors)} measurement(s) failed in this run: see `{md}`.")
    if tail:
        section.append("\n".join(tail))
    return "\n\n".join(section)


def make_block(folder: Path = RESULTS, notes: Path = NOTES) -> str:
    runs = load_runs(folder)
    engine_runs = latest_cpu_engine_per_model(load_cpu_engine_runs(folder))
    parts = [
        "<!-- generated by benchmarks/make_readme_table.py from benchmarks/results/*.json;"
        " do not edit by hand: edit benchmarks/results/NOTES.md and rerun it -->"]
    parts += [cpu_engine_section(run, older) for run, older in engine_runs]
    if engine_runs and runs:
        parts.append("**`bench.py` runs** (fusedrnn vs torch.nn per configuration):")
    parts += [
        "Ratio = torch.nn time / fusedrnn time (>1: fusedrnn faster), the median of the\n"
        "per-repeat ratios of interleaved repeats; clip+truncate overhead = fused_clip / "
        "fused - 1\n(the price of in-kernel clipping and truncation; track_grad_norms "
        "overhead likewise\nfused_track / fused - 1); plain-PyTorch loop = "
        "the reference\nimplementation with the same clipping / fused_clip. Latest run per "
        "configuration; full\ntables (with ± half-IQR, times, tokens/s, GFLOP/s) and the "
        "method: the `.md` file named,\nand `benchmarks/README.md`.",
    ]
    if not runs and not engine_runs:
        parts.append("No recorded runs in `benchmarks/results/` yet: see "
                     "`benchmarks/README.md`.")
    for run, older in latest_per_config(runs):
        md = run["path"].with_suffix(".md").name
        head = f"**{describe_config(run)}** (`{md}`, `{run['path'].name}`)"
        if older:
            head += "; superseded: " + ", ".join(f"`{r['path'].stem}`" for r in older)
        section = [head + "\\\n" + machine_line(run["data"]), summary_section(run)]
        packed = packed_section(run)
        if packed:
            section.append(packed)
        errors = run["data"].get("errors") or []
        if errors:
            section.append(f"{len(errors)} implementation(s) failed in this run: see `{md}`.")
        parts.append("\n\n".join(section))
    if notes.exists():
        text = notes.read_text().strip()
        text = re.sub(r"\A<!--.*?-->\s*", "", text, flags=re.S)  # the file's own comment
        if text:
            parts.append(text)
    return BEGIN + "\n" + "\n\n".join(parts) + "\n" + END


def replace_block(readme_text: str, block: str) -> str:
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if len(pattern.findall(readme_text)) != 1:
        raise SystemExit(f"make_readme_table.py: README.md must contain exactly one "
                         f"{BEGIN} ... {END} block")
    return pattern.sub(lambda _: block, readme_text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true",
                   help="exit 1 (and show the difference) if README.md's block is not what "
                        "the JSON files give; write nothing")
    p.add_argument("--print", action="store_true", dest="print_only",
                   help="print the block to stdout, write nothing")
    p.add_argument("--readme", type=Path, default=README)
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--notes", type=Path, default=None,
                   help="hand-written notes appended to the block (default: "
                        "<results>/NOTES.md)")
    args = p.parse_args(argv)
    block = make_block(args.results, args.notes or args.results / "NOTES.md")
    if args.print_only:
        print(block)
        return 0
    old = args.readme.read_text()
    new = replace_block(old, block)
    if args.check:
        if new == old:
            print(f"{args.readme} results block is up to date", file=sys.stderr)
            return 0
        sys.stderr.writelines(difflib.unified_diff(
            old.splitlines(keepends=True), new.splitlines(keepends=True),
            str(args.readme), "generated"))
        print(f"\n{args.readme} results block is out of date: run "
              "python benchmarks/make_readme_table.py", file=sys.stderr)
        return 1
    if new != old:
        args.readme.write_text(new)
        print(f"rewrote the results block of {args.readme}", file=sys.stderr)
    else:
        print(f"{args.readme} results block already up to date", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
