#!/usr/bin/env python
"""GPU benchmark of fusedrnn's CUDA kernels against torch.nn (cuDNN), issue 4.

    python benchmarks/bench_gpu.py                       # the issue's grid, results/ folder
    python benchmarks/bench_gpu.py --out /tmp/gpu --repeats 30
    python benchmarks/bench_gpu.py --cells lstm --shapes 100,64,512,512 --dtypes bfloat16

For every shape (T, B, I, H), dtype and cell, one layer is timed in three implementations,
interleaved within each repeat (benchlib.timing's balanced orders) so drift hits all alike:

    fused        fusedrnn.LSTM / GRU, no options
    fused_clip   the same with grad_clip=1 (value) and truncate=32
    fused_norm   the same with grad_clip=1 (norm: a per-row reduction each step), truncate=32
    torchnn      torch.nn.LSTM / GRU (cuDNN), the same weights and dtype

and three modes, each timed separately with CUDA events (timing.Clock: synchronise, record,
call, record, wait): fwd (forward with autograd recording), bwd (backward only, after an
untimed forward), fwdbwd (one training step). Both sides include the input projection
(the modules do it). Every repeat draws fresh random inputs, initial states and output
gradients (never zeros); the first --warmup repeats are not recorded; the median is
reported, with per-repeat paired ratios for "x cuDNN" and the clip overhead.

Counts, written next to every time:
    FLOPs     the GEMMs (cases.rnn_flops: forward 2 T B (I + H) G H, backward 2x forward);
              "TFLOP/s" is FLOPs / median time.
    bytes     the fewest bytes a call must move: its inputs, weights and outputs once
              (forward: x, W, y, h_n[, c_n] and the gate activations kept for backward;
              backward: dy, the saved activations, x, y, W, dx and dW). "GB/s" = bytes /
              median time. With --ceilings (default) the script measures the GPU's GEMM
              rate in the dtype and its copy bandwidth, and reports the larger of the two
              floors (FLOPs / rate, bytes / bandwidth) as "floor ms".
    per step  median / T: the recurrence is sequential, so at small B every step pays the
              latency of its kernels (GEMM + pointwise) whatever the FLOPs.

TF32: --tf32 off (default) runs both sides in full float32 (cuDNN would otherwise use TF32
by default while fusedrnn's GEMMs (at::mm) follow torch.backends.cuda.matmul.allow_tf32,
off by default); "on" enables TF32 for both; "default" leaves torch's defaults. The
settings are recorded in the output.

Writes <out>/gpu-<gpu>-<date>.json (machine, versions, every time) and .md (tables).
Benchmarks assert nothing (docs/design.md §5); the issue's targets are reported as met / not met.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib.cases import rnn_flops  # noqa: E402
from benchlib.console import describe, log  # noqa: E402
from benchlib.impls import import_fusedrnn  # noqa: E402
from benchlib.machine import DEFAULT_OUT, machine_info, slug  # noqa: E402
from benchlib.markdown import CELL_SHAPE_COLUMNS  # noqa: E402
from benchlib.markdown import table as md_table  # noqa: E402
from benchlib.timing import Clock, in_order, paired_ratio, summarize  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}
# The issue's shapes: PyTorch's fastrnns default, and a long sequence at a small batch.
SHAPES = [(100, 64, 512, 512), (512, 16, 256, 256)]
MODES = ("fwd", "bwd", "fwdbwd")
IMPLS = ("fused", "fused_clip", "fused_norm", "torchnn")
CLIP_OPTIONS = {
    "fused": {},
    "fused_clip": dict(grad_clip=1.0, grad_clip_mode="value", truncate=32),
    "fused_norm": dict(grad_clip=1.0, grad_clip_mode="norm", truncate=32),
}
GATES = {"lstm": 4, "gru": 3}
DEVICE = torch.device("cuda")
# Targets of the issue (reported, never asserted).
TARGET_SPEED = 0.8  # fwdbwd at (100, 64, 512, 512): at least 0.8x cuDNN's speed
TARGET_CLIP_OVERHEAD_PCT = 5.0


def min_bytes(cell: str, T: int, B: int, I: int, H: int, mode: str, itemsize: int) -> int:
    """The fewest bytes one call moves through device memory (see the module docstring)."""
    G = GATES[cell]
    states = (2 if cell == "lstm" else 1) * B * H
    x, y, w = T * B * I, T * B * H, G * H * (I + H) + 2 * G * H
    saved = T * B * G * H  # the gate activations the backward needs
    fwd = x + w + 2 * states + y + saved
    bwd = y + saved + x + y + w + 2 * states + x + w  # dy, saved, x, y, W, states -> dx, dW
    elements = {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}[mode]
    return elements * itemsize


def build(fusedrnn, cell: str, I: int, H: int, dtype: torch.dtype):
    """{impl: module} on the GPU with identical weights."""
    device = DEVICE
    torch.manual_seed(0)
    fused_cls = fusedrnn.LSTM if cell == "lstm" else fusedrnn.GRU
    nn_cls = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
    modules = {name: fused_cls(I, H, device=device, dtype=dtype, **options)
               for name, options in CLIP_OPTIONS.items()}
    modules["torchnn"] = nn_cls(I, H, device=device, dtype=dtype)
    state = modules["fused"].state_dict()
    for module in modules.values():
        module.load_state_dict(state)
    return modules


def fresh_inputs(cell: str, T: int, B: int, I: int, H: int, dtype: torch.dtype):
    """Random x [T, B, I], h0 (and c0) [1, B, H] and output gradients, never zeros."""
    def randn(*shape):
        return torch.randn(*shape, device=DEVICE, dtype=dtype)

    x = randn(T, B, I).requires_grad_()
    states = [randn(1, B, H).requires_grad_() for _ in range(2 if cell == "lstm" else 1)]
    grads = [randn(T, B, H)] + [randn(1, B, H) for _ in states]
    return x, states, grads


def call(module, cell: str, x, states):
    """(y, h_n[, c_n]) as a flat tuple."""
    if cell == "lstm":
        y, (h, c) = module(x, (states[0], states[1]))
        return y, h, c
    y, h = module(x, states[0])
    return y, h


def timed_call(module, cell: str, mode: str, inputs):
    """The closure to time; everything untimed (the forward of `bwd`) happens here."""
    x, states, grads = inputs
    module.zero_grad(set_to_none=True)
    if mode == "fwd":
        return lambda: call(module, cell, x, states)
    if mode == "bwd":
        outputs = call(module, cell, x, states)
        return lambda: torch.autograd.backward(outputs, grads)
    return lambda: torch.autograd.backward(call(module, cell, x, states), grads)


def measure(cell, shape, dtype, modules, clock, warmup, repeats):
    """{mode: {impl: [ms per repeat]}} and {impl: error} for one configuration."""
    T, B, I, H = shape
    times = {mode: {name: [] for name in modules} for mode in MODES}
    errors = {}
    active = dict(modules)
    gc.collect()
    gc.disable()
    try:
        for mode in MODES:
            for r in range(warmup + repeats):
                inputs = fresh_inputs(cell, T, B, I, H, dtype)
                for name in in_order(list(active), r):
                    try:
                        elapsed = clock.time_ms(timed_call(active[name], cell, mode, inputs))
                    except Exception as exc:  # reported, never swallowed
                        errors[name] = f"{mode}: {describe(exc)}"
                        log(f"    {name} {mode} FAILED: {errors[name]}")
                        del active[name]
                        continue
                    if r >= warmup:
                        times[mode][name].append(elapsed)
                inputs = None
    finally:
        gc.enable()
    return times, errors


def forward_check(cell, shape, dtype, modules) -> dict:
    """max |fused* - torch.nn| over the forward outputs on one random input: a kernel that
    is fast because it is wrong shows up here."""
    T, B, I, H = shape
    x, states, _ = fresh_inputs(cell, T, B, I, H, dtype)
    with torch.no_grad():
        outs = {name: call(m, cell, x, states) for name, m in modules.items()}
    base = outs["torchnn"]
    return {name: max((a.double() - b.double()).abs().max().item() for a, b in zip(o, base))
            for name, o in outs.items()}


def ceilings(dtype: torch.dtype) -> dict:
    """Measured GEMM rate (TFLOP/s, 8192^3 in the dtype) and copy bandwidth (GB/s, bytes
    read + written) of this GPU, medians of 10 after 3 warm-ups, on random data."""
    out = {}
    n = 8192 if dtype != torch.float64 else 4096
    a = torch.randn(n, n, device=DEVICE, dtype=dtype)
    b = torch.randn(n, n, device=DEVICE, dtype=dtype)
    clock = Clock(DEVICE)
    ts = [clock.time_ms(lambda: torch.mm(a, b)) for _ in range(13)][3:]
    out["gemm_tflops"] = 2 * n ** 3 / (sorted(ts)[len(ts) // 2] * 1e-3) / 1e12
    del a, b
    src = torch.randn(256 * 2 ** 20, device=DEVICE, dtype=torch.float32)  # 1 GiB
    dst = torch.empty_like(src)
    ts = [clock.time_ms(lambda: dst.copy_(src)) for _ in range(13)][3:]
    out["copy_gbs"] = 2 * src.numel() * 4 / (sorted(ts)[len(ts) // 2] * 1e-3) / 1e9
    del src, dst
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()
    return out


def driver_version():
    try:
        res = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return res.stdout.strip().splitlines()[0] if res.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def set_tf32(mode: str) -> dict:
    if mode in ("on", "off"):
        torch.backends.cudnn.allow_tf32 = mode == "on"
        torch.backends.cuda.matmul.allow_tf32 = mode == "on"
    return {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", nargs="+", choices=("lstm", "gru"), default=["lstm", "gru"])
    p.add_argument("--shapes", nargs="+", default=[",".join(map(str, s)) for s in SHAPES],
                   help="T,B,I,H ... (default: the issue's two shapes)")
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["float32", "bfloat16"])
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--tf32", choices=("off", "on", "default"), default="off")
    p.add_argument("--no-ceilings", action="store_true", help="skip the GEMM / copy ceilings")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--no-save", action="store_true")
    return p.parse_args(argv)


def fmt(v, spec, none="–"):
    return none if v is None else format(v, spec)


def main(argv=None) -> int:
    args = parse_args(argv)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_gpu.py: no CUDA GPU visible to torch")
    fusedrnn = import_fusedrnn()
    if not getattr(fusedrnn._C, "cuda_built", False):
        sys.exit("bench_gpu.py: fusedrnn was built without CUDA (fusedrnn._C.cuda_built is "
                 "False); rebuild on this machine: pip install --no-build-isolation -e .")
    device = DEVICE
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes]
    tf32 = set_tf32(args.tf32)
    info = machine_info(device, fusedrnn)
    info.update({"driver_version": driver_version(), "tf32": tf32,
                 "fusedrnn_cuda_built": True})
    clock = Clock(device)
    ceil = {}
    if not args.no_ceilings:
        for name in args.dtypes:
            try:
                ceil[name] = ceilings(DTYPES[name])
            except Exception as exc:  # a ceiling is extra information, not the benchmark
                log(f"ceiling measurement for {name} failed: {describe(exc)}")

    rows, summary, errors = [], [], {}
    for cell in args.cells:
        for shape in shapes:
            T, B, I, H = shape
            for dname in args.dtypes:
                dtype = DTYPES[dname]
                label = f"{cell} T={T} B={B} I={I} H={H} {dname}"
                log(f"  {label} ...")
                try:
                    modules = build(fusedrnn, cell, I, H, dtype)
                    diffs = forward_check(cell, shape, dtype, modules)
                    times, errs = measure(cell, shape, dtype, modules, clock, args.warmup,
                                          args.repeats)
                except Exception as exc:
                    errors[label] = describe(exc)
                    log(f"    FAILED: {errors[label]}")
                    continue
                errors.update({f"{label} {k}": v for k, v in errs.items()})
                itemsize = torch.empty(0, dtype=dtype).element_size()
                # Whether torch.nn can use cuDNN for this dtype (else its native fallback).
                probe = torch.empty(1, device=device, dtype=dtype)
                entry = {"cell": cell, "T": T, "B": B, "I": I, "H": H, "dtype": dname,
                         "torchnn_cudnn_acceptable":
                             bool(torch.backends.cudnn.is_acceptable(probe))}
                for mode in MODES:
                    flops = rnn_flops(cell, T, B, I, H, 1, mode)
                    nbytes = min_bytes(cell, T, B, I, H, mode, itemsize)
                    c = ceil.get(dname, {})
                    floor_ms = None
                    if c:
                        floor_ms = max(flops / (c["gemm_tflops"] * 1e12),
                                       nbytes / (c["copy_gbs"] * 1e9)) * 1e3
                    base = times[mode].get("torchnn")
                    for name, ts in times[mode].items():
                        if not ts:
                            continue
                        st = summarize(ts)
                        med = st["median_ms"]
                        speed = paired_ratio(base, ts) if base else None
                        rows.append({
                            **entry, "mode": mode, "impl": name, **st, "times_ms": ts,
                            "ms_per_step": med / T, "flops": flops, "bytes": nbytes,
                            "tflops": flops / (med * 1e-3) / 1e12,
                            "gbs": nbytes / (med * 1e-3) / 1e9, "floor_ms": floor_ms,
                            "speed_vs_cudnn": speed["median"] if speed else None,
                            "fwd_max_abs_diff_vs_torchnn": diffs.get(name),
                        })
                    fused = times[mode].get("fused")
                    for clip_name in ("fused_clip", "fused_norm"):
                        r = paired_ratio(times[mode].get(clip_name), fused)
                        entry[f"{clip_name}_overhead_{mode}_pct"] = (
                            (r["median"] - 1) * 100 if r else None)
                    r = paired_ratio(base, fused)
                    entry[f"speed_vs_cudnn_{mode}"] = r["median"] if r else None
                summary.append(entry)
                del modules
                if device.type == "cuda":
                    torch.cuda.empty_cache()

    body = report(rows, summary, info, ceil, args)
    print(body, flush=True)
    if errors:
        print("\n## Errors\n\n" + "\n".join(f"- {k}: {v}" for k, v in errors.items()))
    if not args.no_save:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / (f"gpu-{slug(info.get('gpu_name', 'unknown'))}-"
                           f"{datetime.datetime.now():%Y-%m-%d-%H%M%S}")
        payload = {"machine": info, "config": {k: str(v) for k, v in vars(args).items()},
                   "ceilings": ceil, "rows": rows, "summary": summary, "errors": errors}
        stem.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
        stem.with_suffix(".md").write_text(body + ("\n## Errors\n\n" + "\n".join(
            f"- {k}: {v}" for k, v in errors.items()) + "\n" if errors else ""))
        log(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')}")
    return 1 if errors else 0


# The configuration columns of both report tables (summary rows and timing rows).
CONFIG_COLUMNS = CELL_SHAPE_COLUMNS + [("dtype", "---", lambda r: r["dtype"])]


def report(rows, summary, info, ceil, args) -> str:
    lines = [
        "# fusedrnn GPU benchmark",
        "",
        f"- date: {info['date']}",
        f"- GPU: {info.get('gpu_name')} (capability {info.get('gpu_capability')}, "
        f"{info.get('gpu_memory_gib')} GiB), driver {info.get('driver_version')}",
        f"- torch {info['torch_version']}, CUDA {info.get('cuda_version')}, cuDNN "
        f"{info.get('cudnn_version')}, python {info['python']}",
        f"- fusedrnn commit: {info['fusedrnn_commit']}",
        f"- TF32: {info['tf32']} (--tf32 {args.tf32})",
        f"- warm-up {args.warmup}, repeats {args.repeats}, fresh random inputs every repeat, "
        "CUDA events, median",
        "- options: fused_clip = grad_clip 1 (value) + truncate 32; fused_norm = grad_clip 1 "
        "(norm) + truncate 32",
    ]
    for name, c in ceil.items():
        lines.append(f"- measured ceilings ({name}): GEMM {c['gemm_tflops']:.0f} TFLOP/s, "
                     f"copy {c['copy_gbs']:.0f} GB/s")
    lines += ["", "## Summary", ""]
    columns = [
        *CONFIG_COLUMNS,
        ("torch.nn on cuDNN", "---",
         lambda s: "yes" if s.get("torchnn_cudnn_acceptable") else "no (native)"),
    ]
    for mode in MODES:
        columns.append((f"{mode} ×cuDNN", "--:",
                        lambda s, m=mode: fmt(s.get(f"speed_vs_cudnn_{m}"), ".2f")))
    for clip_name in ("fused_clip", "fused_norm"):
        columns.append((f"{clip_name} fwdbwd overhead %", "--:",
                        lambda s, c=clip_name: fmt(s.get(f"{c}_overhead_fwdbwd_pct"), "+.1f")))
    lines.append(md_table(columns, summary, n_fixed=7))
    lines += ["", "×cuDNN: cuDNN time / fused time (paired per repeat; > 1: fusedrnn faster). "
              "Overhead: fused_clip (or fused_norm) time / fused time - 1."]
    lines += ["", "## Targets (issue 4)", ""]
    for s in summary:
        if (s["T"], s["B"], s["I"], s["H"]) == SHAPES[0] and s["cell"] == "lstm":
            v = s.get("speed_vs_cudnn_fwdbwd")
            ok = v is not None and v >= TARGET_SPEED
            lines.append(f"- lstm {SHAPES[0]} {s['dtype']} fwdbwd ≥ {TARGET_SPEED}× cuDNN: "
                         f"{fmt(v, '.2f')}× — {'met' if ok else 'NOT met'}")
    for s in summary:
        for clip_name in ("fused_clip", "fused_norm"):
            v = s.get(f"{clip_name}_overhead_fwdbwd_pct")
            if v is not None:
                ok = v <= TARGET_CLIP_OVERHEAD_PCT
                lines.append(f"- {s['cell']} T={s['T']} B={s['B']} {s['dtype']} {clip_name} "
                             f"overhead ≤ {TARGET_CLIP_OVERHEAD_PCT:.0f}%: {v:+.1f}% — "
                             f"{'met' if ok else 'NOT met'}")
    lines += ["", "## All times", ""]
    cols = [
        *CONFIG_COLUMNS,
        ("mode", "---", lambda r: r["mode"]),
        ("impl", "---", lambda r: r["impl"]),
        ("median ms", "--:", lambda r: f"{r['median_ms']:.3f}"),
        ("IQR ms", "--:", lambda r: f"{r['iqr_ms']:.3f}"),
        ("per step", "--:", lambda r: f"{r['ms_per_step'] * 1e3:.1f} µs"),
        ("×cuDNN", "--:", lambda r: fmt(r["speed_vs_cudnn"], ".2f")),
        ("GFLOP", "--:", lambda r: f"{r['flops'] / 1e9:.2f}"),
        ("TFLOP/s", "--:", lambda r: f"{r['tflops']:.1f}"),
        ("MB", "--:", lambda r: f"{r['bytes'] / 1e6:.1f}"),
        ("GB/s", "--:", lambda r: f"{r['gbs']:.0f}"),
        ("floor ms", "--:", lambda r: fmt(r["floor_ms"], ".3f")),
        ("fwd |Δ| vs torch.nn", "--:", lambda r: fmt(r["fwd_max_abs_diff_vs_torchnn"], ".1e")),
    ]
    lines.append(md_table(cols, rows, n_fixed=8))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
