"""The markdown report of bench.py (results, summary and packed-vs-padded tables, their
legends, the header lines) and the optional chart (--plot)."""

from __future__ import annotations

from pathlib import Path

from .impls import BASELINE, ClipConfig
from .markdown import CELL_SHAPE_COLUMNS, per_token_column
from .markdown import table as md_table


def _fmt(value, spec, none="–"):
    return none if value is None else format(value, spec)


def _tokens(v) -> str:
    """Tokens per second, human-readable: 123.4k, 1.23M."""
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.1f}k"


def _batch(d) -> str:
    return f"packed ({d['tokens'] / (d['T'] * d['B']):.0%})" if d["packed"] else "padded"


def results_table(rows) -> str:
    head = ("| cell | T | B | I | H | layers | D | batch | dtype | device | mode | impl "
            "| median ms | min ms | IQR ms | ×torch.nn | tokens/s | GFLOP/s | peak MiB |")
    lines = [head,
             "|---|--:|--:|--:|--:|--:|--:|---|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        lines.append(
            f"| {r['cell']} | {r['T']} | {r['B']} | {r['I']} | {r['H']} | {r['layers']} "
            f"| {r['directions']} | {_batch(r)} | {r['dtype']} | {r['device']} "
            f"| {r['mode']} | {r['impl']} "
            f"| {r['median_ms']:.3f} | {r['min_ms']:.3f} | {r['iqr_ms']:.3f} "
            f"| {_fmt(r['speedup_vs_torchnn'], '.2f')} | {_tokens(r['tokens_per_s'])} "
            f"| {r['gflops']:.3g} | {_mib(r.get('peak_mem_bytes'))} |")
    return "\n".join(lines)


def _mib(nbytes) -> str:
    return "–" if nbytes is None else f"{nbytes / 2**20:.1f}"


def _x(r):
    return "–" if r is None else f"{r['median']:.2f}× ±{r['iqr'] / 2:.2f}"


def _pct(r):
    return "–" if r is None else f"{r['median']:+.1f}% ±{r['iqr'] / 2:.1f}"


_CONFIG_COLUMNS = CELL_SHAPE_COLUMNS + [
    ("layers", "--:", lambda s: str(s["layers"])),
    ("D", "--:", lambda s: str(s["directions"])),
]


def summary_table(summaries) -> str:
    columns = _CONFIG_COLUMNS + [
        ("batch", "---", _batch),
        ("dtype", "---", lambda s: s["dtype"]),
        ("train step vs torch.nn", "--:", lambda s: _x(s["fwdbwd_vs_torchnn"])),
        ("infer vs torch.nn", "--:", lambda s: _x(s["infer_vs_torchnn"])),
        ("fwd vs torch.nn", "--:", lambda s: _x(s["fwd_vs_torchnn"])),
        ("bwd vs torch.nn", "--:", lambda s: _x(s["bwd_vs_torchnn"])),
        ("clip+trunc overhead fwd", "--:", lambda s: _pct(s["clip_overhead_fwd_pct"])),
        ("clip+trunc overhead bwd", "--:", lambda s: _pct(s["clip_overhead_bwd_pct"])),
        ("clip+trunc overhead train step", "--:",
         lambda s: _pct(s["clip_overhead_fwdbwd_pct"])),
        ("train step vs reference loop", "--:", lambda s: _x(s["fwdbwd_vs_reference"])),
        ("track_grad_norms overhead bwd", "--:",
         lambda s: _pct(s.get("track_overhead_fused_bwd_pct"))),
        ("track_grad_norms overhead bwd (clip on)", "--:",
         lambda s: _pct(s.get("track_overhead_fused_clip_bwd_pct"))),
        ("track_grad_norms overhead train step", "--:",
         lambda s: _pct(s.get("track_overhead_fused_fwdbwd_pct"))),
        ("train step vs flashrnn", "--:", lambda s: _x(s.get("fwdbwd_vs_flashrnn"))),
        ("infer vs flashrnn", "--:", lambda s: _x(s.get("infer_vs_flashrnn"))),
    ]
    return md_table(columns, summaries, len(_CONFIG_COLUMNS) + 2)


def packed_table(comparisons) -> str:
    def per_token(mode, impl):
        return per_token_column(mode, impl,
                                lambda r: f"{r['median']:.2f}× (min {r['min']:.2f}×)")

    columns = _CONFIG_COLUMNS + [
        ("dtype", "---", lambda c: c["dtype"]),
        ("real tokens packed / padded", "---",
         lambda c: f"{c['tokens_packed']} / {c['tokens_padded']} "
                   f"({c['tokens_packed'] / c['tokens_padded']:.0%})"),
        ("train step vs torch.nn (a) padded", "--:",
         lambda c: _x(c["fwdbwd_vs_torchnn_padded"])),
        ("train step vs torch.nn (b) packed", "--:",
         lambda c: _x(c["fwdbwd_vs_torchnn_packed"])),
        ("infer vs torch.nn (a) padded", "--:", lambda c: _x(c["infer_vs_torchnn_padded"])),
        ("infer vs torch.nn (b) packed", "--:", lambda c: _x(c["infer_vs_torchnn_packed"])),
        ("packed vs padded per real token: train step, fused", "--:",
         per_token("fwdbwd", "fused")),
        ("… train step, torch.nn", "--:", per_token("fwdbwd", BASELINE)),
        ("… infer, fused", "--:", per_token("infer", "fused")),
        ("… infer, torch.nn", "--:", per_token("infer", BASELINE)),
    ]
    return md_table(columns, comparisons, len(_CONFIG_COLUMNS) + 2)


SUMMARY_LEGEND = """\
Ratios are medians of per-repeat paired ratios (the implementations run interleaved in
each repeat), ± half the IQR of those ratios. "vs torch.nn" = torch.nn time / fused time
(>1: fusedrnn is faster). "clip+trunc overhead" = fused_clip time / fused time − 1.
"track_grad_norms overhead" = fused_track / fused − 1 (and fused_clip_track / fused_clip − 1).
"vs reference loop" = reference time / fused_clip time, both with the same clip/truncate.
"vs flashrnn" (CUDA, only with --impls flashrnn; untested wrapper) = flashrnn / fused.
peak MiB (results table): peak memory of one extra untimed call, over what the process
held before it (method in the header; benchmarks/README.md, "Peak memory").
D = directions (2: bidirectional). batch: padded (T*B real tokens) or packed (sum(lengths)
real tokens, as a share of T*B)."""

PACKED_LEGEND = """\
(a) padded equal-length batch, (b) packed batch (lengths in the header); same cell, shape
and weights. "vs torch.nn" (a) / (b): the summary's paired ratios, torch.nn / fused.
"packed vs padded per real token" = (median_padded / (T*B)) / (median_packed /
sum(lengths)) for that implementation and mode: 1.00× = a real token costs the same in
both (time proportional to real tokens); > 1: packed is cheaper per real token; < 1:
dearer (about sum(lengths) / (T*B) when the padding is computed anyway). (a) and (b) ran
one after the other, not interleaved, so this is a ratio of medians, not a paired ratio;
"min" is the same ratio of the minimum times, as a check on noise."""


def packed_section(comparisons) -> str:
    return packed_table(comparisons) + "\n\n" + PACKED_LEGEND


def header_lines(info: dict, args, clip: ClipConfig, plan: dict) -> list:
    lines = [
        f"- date: {info['date']}",
        f"- machine: {info['hostname']}, {info['platform']}",
        f"- CPU: {info['cpu_model']}, {info['cpu_count_logical']} logical cores "
        f"({info['cpu_affinity']} usable)",
    ]
    if "gpu_name" in info:
        lines.append(f"- GPU: {info['gpu_name']} ({info['gpu_memory_gib']} GiB, sm "
                     f"{info['gpu_capability']}), CUDA {info['cuda_version']}, "
                     f"cuDNN {info['cudnn_version']}")
    lines += [
        f"- torch {info['torch_version']}, python {info['python']}, "
        f"torch.get_num_threads() = {info['torch_num_threads']}, "
        f"MKL {'yes' if info['mkl_available'] else 'no'}, "
        f"oneDNN {'yes' if info['mkldnn_available'] else 'no'}",
        f"- torch parallel info: {'; '.join(info['torch_parallel_info'])}",
        f"- load average (1/5/15 min) at start: {info['loadavg_start']}"
        + (f", at end: {info['loadavg_end']}" if "loadavg_end" in info else "")
        + (f"; other processes kept {info['other_cores_busy']} cores busy during the timing"
           if info.get("other_cores_busy") is not None else ""),
        f"- fusedrnn commit: {info['fusedrnn_commit']} ({info['fusedrnn_file']})",
        f"- fused_clip / reference options: {clip.label()}",
        f"- configuration: grid {plan['grid']}, layers {plan['layers']}, "
        f"{'bidirectional' if plan['bidirectional'] else 'unidirectional'}, batches: "
        + ", ".join("packed" if pk else "padded" for pk in plan["packed"])
        + "; timed: " + "; ".join(f"{mode}: {', '.join(names)}"
                                  for mode, names in plan["mode_impls"].items()),
    ]
    if any(plan["packed"]):
        lines.append(
            "- packed batches: lengths uniform in [ceil(T/4), T] with the longest set to T, "
            f"torch.Generator seed {args.seed}, the same for every impl, repeat and cell; "
            "fused and torch.nn get pack_padded_sequence(enforce_sorted=False), built "
            "untimed; the reference gets the padded tensor and the lengths")
        lines += [f"- packed lengths (batch order), T={T}, B={B}: sum {sum(ls)} of {T * B} "
                  f"({sum(ls) / (T * B):.0%}): {list(ls)}"
                  for (T, B), ls in plan["lengths"].items()]
    if info.get("peak_memory"):
        lines.append(f"- peak memory: {info['peak_memory']}")
    lines += [f"- note: {n}" for n in info.get("notes", [])]
    lines += [
        f"- warm-up {args.warmup}, repeats {args.repeats}, seed {args.seed}",
        f"- command: `{info['command']}`",
    ]
    return lines


# --------------------------------------------------------------------------------------
# Optional chart (--plot)
# --------------------------------------------------------------------------------------

PLOT_MODES = {"fwd": "forward", "bwd": "backward", "fwdbwd": "train step", "infer": "inference"}


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_plot(summaries, path: Path, title: str) -> bool:
    """A grouped bar chart of fused's speedup vs torch.nn (paired median, whisker ± half the
    IQR), one group per configuration (cell, shape, layers, directions, batch layout), one
    bar per mode; a line at 1.0 (above: fusedrnn faster). Returns False when matplotlib is
    missing or there is nothing to plot."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    modes = [m for m in PLOT_MODES if any(s.get(f"{m}_vs_torchnn") for s in summaries)]
    if not modes:
        return False
    labels = [f"{s['cell'].upper()} T={s['T']} B={s['B']}\nI={s['I']} H={s['H']} "
              f"L={s.get('layers', 1)} D={s.get('directions', 1)}\n{_batch(s)}"
              for s in summaries]
    width = 0.8 / len(modes)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(summaries) * max(1, len(modes)) / 2 + 2),
                                    4.5))
    for j, mode in enumerate(modes):
        xs, ys, errs = [], [], []
        for i, s in enumerate(summaries):
            r = s.get(f"{mode}_vs_torchnn")
            if r:
                xs.append(i + (j - (len(modes) - 1) / 2) * width)
                ys.append(r["median"])
                errs.append(r["iqr"] / 2)
        bars = ax.bar(xs, ys, width, yerr=errs, capsize=2, label=PLOT_MODES[mode])
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(summaries)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("speedup vs torch.nn (torch.nn time / fusedrnn time)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
