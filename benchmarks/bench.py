#!/usr/bin/env python
"""fusedrnn benchmark driver: fused LSTM/GRU kernels vs torch.nn vs a plain-PyTorch loop.

Every implementation is timed in the same process, on the same shapes, dtype, device and
(identical) weights, interleaved within each repeat so that clock drift, thermal state and
background load hit them equally. See benchmarks/README.md for how to read the output.

    python benchmarks/bench.py                      # headline shape, LSTM + GRU, CPU
    python benchmarks/bench.py --grid full          # + fastrnns default and small batches
    python benchmarks/bench.py --grid packed        # 2-layer bidirectional, padded vs packed
    python benchmarks/bench.py --grid track_overhead  # cost of track_grad_norms in the backward
    python benchmarks/bench.py --bidirectional --packed --layers 2
    python benchmarks/bench.py --device cuda --dtype float16
    python benchmarks/bench.py --T 4 --B 2 --I 3 --H 5 --repeats 2 --warmup 1 --no-save
    python benchmarks/bench.py --plot               # + a PNG chart of the speedups

Implementations (--impls):
    fused       fusedrnn.LSTM / fusedrnn.GRU, no clipping, no truncation
    fused_clip  the same kernels with grad_clip / truncate on (--grad-clip, --truncate)
    fused_track / fused_clip_track
                fused / fused_clip with track_grad_norms=True (the backward records the
                norm of the recurrent gradient per step)
    torchnn     torch.nn.LSTM / torch.nn.GRU, weights loaded from the fused module
    reference   fusedrnn.reference.{lstm,gru}_layer, one call per layer and direction,
                with the same clip/truncate options as fused_clip: what a user without
                fusedrnn writes to get clipping inside BPTT
    flashrnn    UNTESTED wrapper, never run by default: only with --impls flashrnn, on CUDA
                when the `flashrnn` package imports; flashrnn's fused LSTM/GRU, with the
                input projection GEMM done inside the timed call

Batches: padded (all T*B steps real) by default; with --packed every sequence gets its own
length (uniform in [ceil(T/4), T], the longest = T, fixed seed) and fused / torchnn get a
PackedSequence (packed untimed), the reference the padded tensor plus `lengths`.

Modes (--modes), each timed separately:
    fwd     forward with autograd recording (inputs and weights require grad)
    bwd     backward only: the forward runs untimed, then backward of the loss is timed
    fwdbwd  one training step: forward + backward
    infer   forward under torch.no_grad()
The loss is sum(out * g_out) + sum(h_n * g_h) [+ sum(c_n * g_c)] with fresh random g_*,
applied as torch.autograd.backward(outputs, grads), so no loss arithmetic is timed.

Peak memory (per implementation and mode) is measured in one extra untimed call after the
timed repeats; see PeakMemory for what the number means on CPU and on CUDA.

This file is the command line (arguments, the plan of what runs, the run); the work is done
by the modules of benchmarks/benchlib/ (timing, memory, implementations, cases, report...).
"""


from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

# benchmarks/ is on sys.path when this file is run (or imported by the tests)
from benchlib.cases import MODES, Case, draw_lengths, run_case
from benchlib.console import Progress, log
from benchlib.grids import FASTRNNS, GRIDS, HEADLINE, OLD_NAMES, PRESETS, grid_name
from benchlib.impls import (CELLS, DEFAULT_IMPLS, DTYPES, IMPLS, ClipConfig,
                            flashrnn_available, import_fusedrnn)
from benchlib.machine import DEFAULT_OUT, OtherLoad, load_average, machine_info, output_stem
from benchlib.memory import PeakMemory
from benchlib.report import (SUMMARY_LEGEND, have_matplotlib, header_lines, packed_section,
                             results_table, summary_table, write_plot)
from benchlib.summary import packed_vs_padded, summarize_case


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Benchmark fusedrnn LSTM/GRU against torch.nn and a plain-PyTorch loop.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cell", nargs="+", choices=CELLS, default=list(CELLS))
    p.add_argument("--grid", choices=sorted(GRIDS) + sorted(OLD_NAMES), default="headline",
                   help="shape set: headline = (T,B,I,H)=%s; full adds fastrnns %s and "
                        "B=1,8,16; packed = the headline shape with 2 layers, "
                        "bidirectional, padded and packed batches, modes fwdbwd and infer "
                        "(fwdbwd: fused, fused_clip, torchnn, reference; infer: fused, "
                        "torchnn); track_overhead = the headline shape, modes bwd and "
                        "fwdbwd, fused and fused_clip with and without track_grad_norms, "
                        "and torchnn. --T/--B/--I/--H replace the grid's shapes (a preset "
                        "keeps its other settings). issue3 and issue7 are deprecated names "
                        "of packed and track_overhead." % (HEADLINE, FASTRNNS))
    for letter, default, what in (("T", HEADLINE[0], "sequence length"),
                                  ("B", HEADLINE[1], "batch size"),
                                  ("I", HEADLINE[2], "input size"),
                                  ("H", HEADLINE[3], "hidden size")):
        p.add_argument(f"--{letter}", nargs="+", type=int, default=None,
                       help=f"{what}(s); replaces the shapes of --grid, the other "
                            f"letters default to the headline shape ({default})")
    p.add_argument("--layers", type=int, default=None,
                   help="num_layers (default 1; the packed grid: 2)")
    p.add_argument("--bidirectional", action="store_true",
                   help="bidirectional=True (h0 [L*2, B, H], output [T, B, 2H]); always on "
                        "in the packed grid")
    p.add_argument("--packed", action="store_true",
                   help="packed batch: lengths uniform in [ceil(T/4), T] (longest = T, "
                        "seed --seed), a PackedSequence for fused/torchnn, padded tensor + "
                        "lengths for the reference. The packed grid runs padded and packed")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--modes", nargs="+", choices=MODES, default=None,
                   help="default: all (the packed grid: fwdbwd infer; track_overhead: bwd "
                        "fwdbwd)")
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=None,
                   help="for every mode; default: %s (the packed and track_overhead "
                        "grids: per mode, see --grid). flashrnn: an UNTESTED wrapper "
                        "(written without a GPU or the package), never run by default; "
                        "only when named here, on CUDA, when the flashrnn package imports"
                        % " ".join(DEFAULT_IMPLS))
    p.add_argument("--repeats", type=int, default=20, help="timed repeats per mode")
    p.add_argument("--warmup", type=int, default=3, help="untimed repeats per mode")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads(N); None keeps torch's default, which is "
                        "printed either way")
    p.add_argument("--grad-clip", type=float, default=1.0, help="for fused_clip and reference")
    p.add_argument("--grad-clip-mode", choices=("value", "norm"), default="value")
    p.add_argument("--truncate", type=int, default=32, help="for fused_clip and reference")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the .json/.md")
    p.add_argument("--no-save", action="store_true", help="print only, write no files")
    p.add_argument("--plot", action="store_true",
                   help="also write <name>.png next to the .md/.json: fusedrnn's speedup vs "
                        "torch.nn by shape and mode (needs matplotlib)")
    p.add_argument("--no-memory", action="store_true",
                   help="skip the peak-memory measurement (one extra untimed call per "
                        "implementation and mode)")
    p.add_argument("--no-progress-bar", action="store_true",
                   help="plain stderr progress lines even when tqdm is installed")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    if args.layers is not None and args.layers < 1:
        p.error("--layers must be >= 1")
    if args.grid in OLD_NAMES:
        log(f"bench.py: --grid {args.grid} is a deprecated name, use --grid "
            f"{grid_name(args.grid)}")
        args.grid = grid_name(args.grid)
    return args


def resolve_plan(args) -> dict:
    """What runs: the grid's preset (if any) with explicit --layers/--modes/--impls on top.

    Returns grid, layers, bidirectional, packed (batch layouts, in run order) and
    mode_impls ({mode: [impl names]}, modes in MODES order)."""
    preset = PRESETS.get(args.grid, {})
    layers = args.layers if args.layers is not None else preset.get("layers", 1)
    modes = args.modes if args.modes is not None else list(preset.get("modes", MODES))
    modes = [m for m in MODES if m in modes]
    if args.impls is not None:
        mode_impls = {m: [n for n in IMPLS if n in args.impls] for m in modes}
    else:
        per_mode = preset.get("impls", {})
        mode_impls = {m: list(per_mode.get(m, DEFAULT_IMPLS)) for m in modes}
    return {
        "grid": args.grid,
        "layers": layers,
        "bidirectional": bool(preset.get("bidirectional", False) or args.bidirectional),
        "packed": tuple(preset.get("packed", (args.packed,))),
        "mode_impls": mode_impls,
    }


def shapes_from_args(args):
    given = [getattr(args, k) for k in "TBIH"]
    if all(v is None for v in given):
        return GRIDS[args.grid]
    lists = [v if v is not None else [d] for v, d in zip(given, HEADLINE)]
    return [(T, B, I, H) for T in lists[0] for B in lists[1] for I in lists[2] for H in lists[3]]


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"bench.py: --device {args.device} requested but torch.cuda.is_available() is False")
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # events and kernels go to this device's current stream
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    plan = resolve_plan(args)
    if any(plan["packed"]):
        plan["lengths"] = {(T, B): draw_lengths(T, B, args.seed)
                           for T, B, _, _ in shapes_from_args(args)}

    notes = []
    # flashrnn (UNTESTED wrapper): only when named in --impls; dropped with a note where it
    # cannot run.
    if args.impls is not None and "flashrnn" in args.impls:
        if device.type != "cuda":
            notes.append("flashrnn: CUDA only, not run on this device")
        elif not flashrnn_available():
            notes.append("flashrnn: the package does not import here, not compared")
        else:
            notes.append("flashrnn: UNTESTED wrapper (written without a GPU or the "
                         "package); check its outputs before trusting its times")
        if not (device.type == "cuda" and flashrnn_available()):
            for names in plan["mode_impls"].values():
                names.remove("flashrnn")
    for note in notes:
        log(f"bench.py: {note}")
    if args.plot and not args.no_save and not have_matplotlib():
        log("bench.py: --plot needs matplotlib, which is not installed "
            "(pip install matplotlib); the run goes on and writes no chart")
    elif args.plot and args.no_save:
        log("bench.py: --plot writes next to the .md/.json; with --no-save no chart is written")

    needs_fusedrnn = any(name not in ("torchnn", "flashrnn")
                         for names in plan["mode_impls"].values() for name in names)
    fusedrnn = import_fusedrnn() if needs_fusedrnn else None
    clip = ClipConfig(args.grad_clip, args.grad_clip_mode, args.truncate)
    info = machine_info(device, fusedrnn)
    meter = None if args.no_memory else PeakMemory(device)
    info["peak_memory"] = meter.describe() if meter else "not measured (--no-memory)"
    info["peak_memory_method"] = meter.method if meter else None
    info["notes"] = notes
    header = header_lines(info, args, clip, plan)
    print("# fusedrnn benchmark\n\n" + "\n".join(header) + "\n", flush=True)
    info["other_load"] = OtherLoad()
    if info["loadavg_start"] and info["loadavg_start"][0] > 0.5:
        log(f"bench.py: WARNING: load average {info['loadavg_start'][0]} before starting; "
            "other processes will distort the timings (the paired ratios suffer least)")

    rows, summaries, errors = [], [], []
    directions = 2 if plan["bidirectional"] else 1
    n_cases = len(args.cell) * len(shapes_from_args(args)) * len(plan["packed"])
    progress = Progress(n_cases * len(plan["mode_impls"]) * (args.warmup + args.repeats),
                        enabled=not args.no_progress_bar)
    try:
        run_all(args, plan, directions, device, clip, fusedrnn, progress, meter, notes,
                rows, summaries, errors)
    finally:
        progress.close()
    info["notes"] = notes
    finish(args, info, plan, clip, device, rows, summaries, errors)
    return 1 if errors else 0


def run_all(args, plan, directions, device, clip, fusedrnn, progress, meter, notes,
            rows, summaries, errors) -> None:
    for cell in args.cell:
        for T, B, I, H in shapes_from_args(args):
            # padded then packed, back to back, so the per-token comparison spans little drift
            for packed in plan["packed"]:
                case = Case(cell, T, B, I, H, plan["layers"], directions, packed, args.dtype,
                            str(device), plan["lengths"][(T, B)] if packed else None)
                case_rows, raw, case_errors = run_case(case, plan["mode_impls"], clip,
                                                       fusedrnn, args.warmup, args.repeats,
                                                       progress, meter, notes)
                rows += case_rows
                summaries.append(summarize_case(case, raw))
                errors += [{**case.fields(), "impl": k, "error": v}
                           for k, v in case_errors.items()]


def finish(args, info, plan, clip, device, rows, summaries, errors) -> None:
    """Print the report; write the .json/.md (and the chart with --plot) unless --no-save."""
    info["loadavg_end"] = load_average()
    others = info["other_load"].cores() if "other_load" in info else None
    info["other_cores_busy"] = others
    info.pop("other_load", None)
    if others is not None and others > 0.2:
        log(f"bench.py: WARNING: other processes kept {others} cores busy on average during "
            "the timing (this run's own threads not counted). Compare median and min ms: "
            "where they differ a lot, rerun that cell on an idle machine")
    header = header_lines(info, args, clip, plan)
    table = results_table(rows)
    summary = summary_table(summaries)
    comparisons = packed_vs_padded(summaries, rows)
    error_lines = [f"- {e['cell']} T={e['T']} B={e['B']} I={e['I']} H={e['H']} "
                   f"L={e['layers']} D={e['directions']} {'packed' if e['packed'] else 'padded'} "
                   f"{e['impl']}: {e['error']}" for e in errors]
    body = f"## Results\n\n{table}\n\n## Summary\n\n{summary}\n\n{SUMMARY_LEGEND}\n"
    if comparisons:
        body += f"\n## Packed vs padded\n\n{packed_section(comparisons)}\n"
    if error_lines:
        body += "\n## Errors\n\n" + "\n".join(error_lines) + "\n"
    print(body, flush=True)

    if not args.no_save:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = output_stem(info, device, args.out)
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        plan = {**plan, "lengths": [{"T": T, "B": B, "lengths": list(ls)}
                                    for (T, B), ls in plan.get("lengths", {}).items()]}
        payload = {"machine": info, "config": config, "plan": plan,
                   "clip": dataclasses.asdict(clip), "rows": rows, "summary": summaries,
                   "packed_vs_padded": comparisons, "errors": errors}
        stem.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
        stem.with_suffix(".md").write_text(
            "# fusedrnn benchmark\n\n" + "\n".join(header) + "\n\n" + body)
        log(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')}")
        if args.plot:
            title = (f"fusedrnn vs torch.nn, {info['torch_version']}, {args.dtype}, "
                     f"{info.get('gpu_name') or info['cpu_model']}, {stem.name}")
            if write_plot(summaries, stem.with_suffix(".png"), title):
                log(f"wrote {stem.with_suffix('.png')}")
            elif have_matplotlib():
                log("bench.py: --plot: nothing to plot (the chart needs fused and torchnn "
                    "timed in the same mode)")


if __name__ == "__main__":
    sys.exit(main())
