#!/usr/bin/env python
"""Regenerate the results block of the top-level README.md from benchmarks/results/*.json.

    python benchmarks/make_readme_table.py           # rewrite the block in README.md
    python benchmarks/make_readme_table.py --check   # exit 1 if the block is out of date
    python benchmarks/make_readme_table.py --print   # print the block, write nothing

The block is the text between `<!-- results:begin -->` and `<!-- results:end -->`. It is
made only from the recorded JSON files (never from the current time or machine), so the
same files always give the same block:

- The files are grouped by configuration: device, CPU/GPU model, grid, dtype, layers,
  directions, batch layouts (padded / packed), cells and shapes. Of each group only the
  latest run (machine.date in the JSON) is shown; the older ones are named as superseded.
- Per configuration: the machine line (CPU/GPU, cores, torch version, threads, dtype,
  date, load average, repeats, fusedrnn commit, the command), the file names, and a table of the
  summary's paired ratios: train step, inference, forward, backward vs torch.nn,
  clip+truncate overhead and train step vs the plain-PyTorch reference loop (a column
  whose mode or implementation was not run is left out).
- Where a configuration ran padded and packed batches (the issue3 grid), a second table
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

from _markdown import table as md_table  # benchmarks/ is on sys.path when run

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
RESULTS = HERE / "results"
README = REPO_ROOT / "README.md"
NOTES = RESULTS / "NOTES.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
GRID_ORDER = {"headline": 0, "full": 1, "issue3": 2}
MODES = ("fwd", "bwd", "fwdbwd", "infer")


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
        if not data.get("summary"):
            continue
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
            config.get("grid", "headline"),
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
    then grid (headline, full, issue3, others), then date."""
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
            "issue3": "Issue 3 grid"}.get(grid, f"Grid `{grid}`")
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
        def cell(c):
            r = c["per_token"].get(mode, {}).get(impl)
            return "–" if r is None else f"{r['median']:.2f}x"
        return cell

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


def make_block(folder: Path = RESULTS, notes: Path = NOTES) -> str:
    runs = load_runs(folder)
    parts = [
        "<!-- generated by benchmarks/make_readme_table.py from benchmarks/results/*.json;"
        " do not edit by hand: edit benchmarks/results/NOTES.md and rerun it -->",
        "Ratio = torch.nn time / fusedrnn time (>1: fusedrnn faster), the median of the\n"
        "per-repeat ratios of interleaved repeats; clip+truncate overhead = fused_clip / "
        "fused - 1\n(the price of in-kernel clipping and truncation; track_grad_norms "
        "overhead likewise\nfused_track / fused - 1); plain-PyTorch loop = "
        "the reference\nimplementation with the same clipping / fused_clip. Latest run per "
        "configuration; full\ntables (with ± half-IQR, times, tokens/s, GFLOP/s) and the "
        "method: the `.md` file named,\nand `benchmarks/README.md`.",
    ]
    if not runs:
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
