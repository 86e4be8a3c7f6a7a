#!/usr/bin/env python
"""fusedrnn benchmark driver: fused LSTM/GRU kernels vs torch.nn vs a plain-PyTorch loop.

Every implementation is timed in the same process, on the same shapes, dtype, device and
(identical) weights, interleaved within each repeat so that clock drift, thermal state and
background load hit them equally. See benchmarks/README.md for how to read the output.

    python benchmarks/bench.py                      # headline shape, LSTM + GRU, CPU
    python benchmarks/bench.py --grid full          # + fastrnns default and small batches
    python benchmarks/bench.py --device cuda --dtype float16
    python benchmarks/bench.py --T 4 --B 2 --I 3 --H 5 --repeats 2 --warmup 1 --no-save

Implementations (--impls):
    fused       fusedrnn.LSTM / fusedrnn.GRU, no clipping, no truncation
    fused_clip  the same kernels with grad_clip / truncate on (--grad-clip, --truncate)
    torchnn     torch.nn.LSTM / torch.nn.GRU, weights loaded from the fused module
    reference   fusedrnn.reference.{lstm,gru}_layer, one call per layer, with the same
                clip/truncate options as fused_clip: what a user without fusedrnn writes
                to get clipping inside BPTT

Modes (--modes), each timed separately:
    fwd     forward with autograd recording (inputs and weights require grad)
    bwd     backward only: the forward runs untimed, then backward of the loss is timed
    fwdbwd  one training step: forward + backward
    infer   forward under torch.no_grad()
The loss is sum(out * g_out) + sum(h_n * g_h) [+ sum(c_n * g_c)] with fresh random g_*,
applied as torch.autograd.backward(outputs, grads), so no loss arithmetic is timed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results"

CELLS = ("lstm", "gru")
MODES = ("fwd", "bwd", "fwdbwd", "infer")
IMPLS = ("fused", "fused_clip", "torchnn", "reference")
BASELINE = "torchnn"
DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

# Shapes are (T, B, I, H). The headline shape is the one from the originating issue.
HEADLINE = (128, 32, 64, 256)
FASTRNNS = (100, 64, 512, 512)  # PyTorch benchmarks/fastrnns default
GRIDS = {
    "headline": [HEADLINE],
    "full": [HEADLINE, FASTRNNS] + [(HEADLINE[0], b, HEADLINE[2], HEADLINE[3]) for b in (1, 8, 16)],
}


def log(msg: str) -> None:
    """Progress and errors go to stderr, so stdout is exactly the markdown report."""
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# FLOP model
# --------------------------------------------------------------------------------------

def rnn_flops(cell: str, T: int, B: int, I: int, H: int, layers: int, mode: str) -> float:
    """Nominal floating-point operations of one call, used for the GFLOP/s column.

    Only the matrix products are counted (they dominate; pointwise gate math is ignored).
    Per layer, the forward pass multiplies [x_t, h_{t-1}] ([B, I+H]) by the stacked gate
    weights ([I+H, G*H]) at each of T steps, with G = 4 gates for LSTM (i, f, g, o) and
    G = 3 for GRU (r, z, n), a multiply-add counted as 2 FLOPs:

        forward = sum over layers of 2 * T * B * (I_k + H) * G * H,   I_0 = I, I_k = H

    Backward needs two products of the same size per forward product (gradient w.r.t. the
    inputs/state and w.r.t. the weights), so backward ~ 2x forward and a training step
    (forward + backward) ~ 3x forward. `fwd` and `infer` count as 1x forward.
    """
    gates = {"lstm": 4, "gru": 3}[cell]
    forward = 0
    for k in range(layers):
        layer_in = I if k == 0 else H
        forward += 2 * T * B * (layer_in + H) * gates * H
    factor = {"fwd": 1, "infer": 1, "bwd": 2, "fwdbwd": 3}[mode]
    return float(factor * forward)


# --------------------------------------------------------------------------------------
# Clock: perf_counter on CPU, CUDA events (with synchronisation) on GPU
# --------------------------------------------------------------------------------------

class Clock:
    """Times one call in milliseconds; the call's return value is released after the clock stops."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)

    def time_ms(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            # Everything queued before (input generation, the untimed forward of `bwd`)
            # must be finished, or it would be billed to this call.
            torch.cuda.synchronize()
            self.start.record()
            result = fn()
            self.end.record()
            self.end.synchronize()
            elapsed = self.start.elapsed_time(self.end)
        else:
            t0 = time.perf_counter()
            result = fn()
            elapsed = (time.perf_counter() - t0) * 1e3
        del result  # freeing outputs / the autograd graph is not part of the measurement
        return elapsed


# --------------------------------------------------------------------------------------
# Implementations under test
# --------------------------------------------------------------------------------------

@dataclasses.dataclass
class Impl:
    """One implementation: forward(x, h0, c0) returns (out, h_n[, c_n]) as a flat tuple."""

    name: str
    forward: Callable[..., tuple]
    params: list

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    grad_clip: Optional[float]
    grad_clip_mode: str
    truncate: Optional[int]

    def kwargs(self) -> dict:
        return {"grad_clip": self.grad_clip, "grad_clip_mode": self.grad_clip_mode,
                "truncate": self.truncate}

    def label(self) -> str:
        parts = []
        if self.grad_clip is not None:
            parts.append(f"grad_clip={self.grad_clip:g} ({self.grad_clip_mode})")
        if self.truncate is not None:
            parts.append(f"truncate={self.truncate}")
        return ", ".join(parts) or "off"


def import_fusedrnn():
    """Import fusedrnn (and fusedrnn.reference) or exit with a message saying what to do."""
    if str(REPO_ROOT) not in sys.path:
        # An in-place build (`python setup.py build_ext --inplace`) is found from the repo
        # root; an installed fusedrnn still wins because this entry goes last.
        sys.path.append(str(REPO_ROOT))
    try:
        import fusedrnn
        if getattr(fusedrnn, "__file__", None) is None:  # the bare source folder, not a package
            raise ImportError(f"only the unbuilt source folder {list(fusedrnn.__path__)} was found")
        import fusedrnn.reference
    except ImportError as exc:
        sys.exit(
            f"bench.py: cannot import fusedrnn ({type(exc).__name__}: {exc}).\n"
            "  Build it first, from the repository root:\n"
            "      pip install --no-build-isolation -e .      (FUSEDRNN_SKIP_CUDA=1 for CPU only)\n"
            "  or time torch.nn alone with:  --impls torchnn")
    missing = [name for name in ("LSTM", "GRU") if not hasattr(fusedrnn, name)]
    missing += [f"reference.{name}" for name in ("lstm_layer", "gru_layer")
                if not hasattr(fusedrnn.reference, name)]
    if missing:
        sys.exit(f"bench.py: fusedrnn at {getattr(fusedrnn, '__file__', '?')} lacks "
                 f"{', '.join(missing)} (DESIGN.md §1 / docs/ops_api.md)")
    return fusedrnn


def _module_forward(module: torch.nn.Module, cell: str) -> Callable[..., tuple]:
    if cell == "lstm":
        def forward(x, h0, c0):
            out, (h_n, c_n) = module(x, (h0, c0))
            return out, h_n, c_n
    else:
        def forward(x, h0, c0):
            out, h_n = module(x, h0)
            return out, h_n
    return forward


def _reference_forward(reference, weights: torch.nn.Module, cell: str, layers: int,
                       clip: ClipConfig) -> Callable[..., tuple]:
    """Stack single-layer reference calls into a multi-layer RNN (weights in torch.nn naming)."""
    layer_fn = reference.lstm_layer if cell == "lstm" else reference.gru_layer
    per_layer = [
        tuple(getattr(weights, f"{name}_l{k}")
              for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        for k in range(layers)
    ]

    def forward(x, h0, c0):
        inp, h_list, c_list = x, [], []
        for k, w in enumerate(per_layer):
            if cell == "lstm":
                inp, h_k, c_k = layer_fn(inp, *w, h0[k], c0[k], **clip.kwargs())
                c_list.append(c_k)
            else:
                inp, h_k = layer_fn(inp, *w, h0[k], **clip.kwargs())
            h_list.append(h_k)
        states = (torch.stack(h_list),) + ((torch.stack(c_list),) if cell == "lstm" else ())
        return (inp,) + states

    return forward


def build_impls(names, cell, I, H, layers, dtype, device, clip: ClipConfig, fusedrnn):
    """Instantiate the requested implementations with identical weights.

    The fused module (when requested) is built first and its state_dict is loaded into all
    others; otherwise torch.nn's initialisation is the source. Construction errors are
    returned per implementation instead of aborting the run.
    """
    nn_cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    ctor = dict(num_layers=layers, device=device, dtype=dtype)
    modules, errors = {}, {}
    for name in names:
        try:
            if name == "fused":
                modules[name] = getattr(fusedrnn, cell.upper())(I, H, **ctor)
            elif name == "fused_clip":
                modules[name] = getattr(fusedrnn, cell.upper())(I, H, **ctor, **clip.kwargs())
            else:  # torchnn, and the parameter container of the reference
                modules[name] = nn_cls(I, H, **ctor)
        except Exception as exc:  # recorded and reported, never swallowed
            errors[name] = f"construction failed: {type(exc).__name__}: {exc}"

    source = modules.get("fused") or next(iter(modules.values()), None)
    impls = []
    for name, module in modules.items():
        if module is not source:
            try:
                module.load_state_dict(source.state_dict())
            except Exception as exc:
                errors[name] = f"load_state_dict failed: {type(exc).__name__}: {exc}"
                continue
        if name == "reference":
            forward = _reference_forward(fusedrnn.reference, module, cell, layers, clip)
        else:
            forward = _module_forward(module, cell)
        impls.append(Impl(name, forward, list(module.parameters())))
    return impls, errors


# --------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Case:
    cell: str
    T: int
    B: int
    I: int
    H: int
    layers: int
    dtype: str
    device: str


def fresh_inputs(case: Case):
    """Random input, initial state and output gradients (never zeros); shared by all impls
    within one repeat so they are compared on the same data."""
    T, B, I, H, L = case.T, case.B, case.I, case.H, case.layers
    dtype, device = DTYPES[case.dtype], torch.device(case.device)
    x = torch.randn(T, B, I, dtype=dtype, device=device)
    h0 = torch.randn(L, B, H, dtype=dtype, device=device)
    c0 = torch.randn(L, B, H, dtype=dtype, device=device) if case.cell == "lstm" else None
    n_states = 2 if case.cell == "lstm" else 1
    grads = [torch.randn(T, B, H, dtype=dtype, device=device)]
    grads += [torch.randn(L, B, H, dtype=dtype, device=device) for _ in range(n_states)]
    return (x, h0, c0), grads


def prepare_call(impl: Impl, mode: str, inputs, grads) -> Callable[[], object]:
    """Everything that must not be timed happens here; the returned closure is the timed part."""
    impl.zero_grad()
    if mode == "infer":
        def call():
            with torch.no_grad():
                return impl.forward(*inputs)
        return call

    leaves = tuple(t.detach().requires_grad_() if t is not None else None for t in inputs)
    if mode == "fwd":
        return lambda: impl.forward(*leaves)
    if mode == "bwd":
        outputs = impl.forward(*leaves)  # untimed forward
        return lambda: torch.autograd.backward(outputs, grads)
    if mode == "fwdbwd":
        return lambda: torch.autograd.backward(impl.forward(*leaves), grads)
    raise ValueError(f"unknown mode {mode!r}")


def percentile(sorted_values, q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of an already sorted list."""
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(times):
    s = sorted(times)
    return {"median_ms": percentile(s, 0.5), "min_ms": s[0],
            "iqr_ms": percentile(s, 0.75) - percentile(s, 0.25)}


def balanced_orders(n: int) -> list:
    """Run orders for n implementations, one per repeat, cycled: a Williams design.

    Note [Interleave order]
    Every repeat runs every implementation once (interleaved, so drift hits all alike), but
    not always in the same order. A fixed A,B,C order measured badly on a 2-core VM: the
    first call after the untimed work of a repeat, and the call right after the
    plain-PyTorch loop, pay a thread wake-up/cache penalty (two copies of the *same*
    torch.nn module differed by up to 2x at tiny shapes). In a Williams design each
    implementation takes every position equally often and follows every other one equally
    often (over n orders for even n, 2n for odd n), so these effects are spread evenly.
    n = 4: 0132, 1203, 2310, 3021.
    """
    base, lo, hi = [0], 1, n - 1
    while len(base) < n:
        base.append(lo)
        lo += 1
        if len(base) < n:
            base.append(hi)
            hi -= 1
    orders = [[(b + i) % n for b in base] for i in range(n)]
    if n % 2:
        orders += [order[::-1] for order in orders]
    return orders


def in_order(items, r: int) -> list:
    """items in the order of repeat r (see balanced_orders)."""
    if not items:
        return []
    orders = balanced_orders(len(items))
    return [items[i] for i in orders[r % len(orders)]]


def measure_mode(case, impls, mode, clock, warmup, repeats):
    """Interleaved timing of all impls for one mode: every impl once per repeat, the order
    cycling through balanced_orders. The first `warmup` repeats are not recorded.

    Returns ({impl name: [ms per timed repeat]}, {impl name: error}). An impl that raises
    is dropped from this mode and its error returned, so one failure does not end the run.
    """
    errors = {}
    active = list(impls)
    times = {impl.name: [] for impl in active}
    # As timeit does: no collector pauses inside timed calls. Outputs and autograd graphs
    # are freed by reference counting, so nothing piles up. The one collection happens
    # before the warm-up, so its cold-cache/idle-thread aftermath is not timed either.
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r in range(warmup + repeats):
            inputs, grads = fresh_inputs(case)
            for impl in in_order(active, r):
                try:
                    elapsed = clock.time_ms(prepare_call(impl, mode, inputs, grads))
                except Exception as exc:  # reported in the output, never swallowed
                    errors[impl.name] = f"{mode}: {type(exc).__name__}: {exc}"
                    log(f"    {impl.name} {mode} FAILED: {errors[impl.name]}")
                    active.remove(impl)
                    del times[impl.name]
                    continue
                if r >= warmup:
                    times[impl.name].append(elapsed)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times, errors


# Forward disagreement above which a warning is printed (torch.nn vs a correct kernel is
# orders of magnitude below this).
CHECK_TOLERANCE = {"float64": 1e-8, "float32": 1e-3, "float16": 2e-2, "bfloat16": 1e-1}


def forward_check(case, impls, errors) -> dict:
    """Max |difference| of every impl's forward outputs from torch.nn's (or the first impl's)
    on one random input: a kernel that is fast because it is wrong shows up here. Clipping
    and truncation do not change the forward pass, so all impls must agree. An impl whose
    forward raises is removed from `impls` and its error added to `errors`."""
    inputs, _ = fresh_inputs(case)
    outputs = {}
    for impl in list(impls):
        try:
            with torch.no_grad():
                outputs[impl.name] = impl.forward(*inputs)
        except Exception as exc:  # reported in the output, never swallowed
            errors[impl.name] = f"forward failed: {type(exc).__name__}: {exc}"
            log(f"    {impl.name} FAILED: {errors[impl.name]}")
            impls.remove(impl)
    ref_name = BASELINE if BASELINE in outputs else next(iter(outputs), None)
    diffs = {}
    for name, outs in outputs.items():
        diffs[name] = max((a.double() - b.double()).abs().max().item()
                          for a, b in zip(outs, outputs[ref_name]))
        if diffs[name] > CHECK_TOLERANCE[case.dtype]:
            log(f"    WARNING: {name} forward differs from {ref_name} by {diffs[name]:.3g}")
    return diffs


def run_case(case, impl_names, modes, clip, fusedrnn, warmup, repeats):
    clock = Clock(torch.device(case.device))
    impls, errors = build_impls(impl_names, case.cell, case.I, case.H, case.layers,
                                DTYPES[case.dtype], torch.device(case.device), clip, fusedrnn)
    for name, err in errors.items():
        log(f"    {name} FAILED: {err}")
    diffs = forward_check(case, impls, errors)
    rows, raw = [], {}
    for mode in modes:
        log(f"  {case.cell} T={case.T} B={case.B} I={case.I} H={case.H} {mode} ...")
        times, mode_errors = measure_mode(case, impls, mode, clock, warmup, repeats)
        errors.update({f"{k} ({mode})": v for k, v in mode_errors.items()})
        raw[mode] = times
        flops = rnn_flops(case.cell, case.T, case.B, case.I, case.H, case.layers, mode)
        base = summarize(times[BASELINE])["median_ms"] if BASELINE in times else None
        for name, ts in times.items():
            stats = summarize(ts)
            rows.append({
                **dataclasses.asdict(case), "mode": mode, "impl": name,
                **stats,
                "speedup_vs_torchnn": (base / stats["median_ms"]) if base else None,
                "gflops": flops / (stats["median_ms"] * 1e-3) / 1e9,
                "flops": flops,
                "fwd_max_abs_diff": diffs.get(name),
                "times_ms": ts,
            })
    return rows, raw, errors


# --------------------------------------------------------------------------------------
# Summary: headline ratios
# --------------------------------------------------------------------------------------

def paired_ratio(num, den):
    """Median and IQR of per-repeat ratios num[i] / den[i]. Both lists come from the same
    interleaved repeats, so the ratio cancels drift that the two medians alone would not."""
    if not num or not den:
        return None
    r = sorted(a / b for a, b in zip(num, den))
    return {"median": percentile(r, 0.5), "iqr": percentile(r, 0.75) - percentile(r, 0.25)}


def summarize_case(case, raw):
    """Headline ratios of one case (>1 means fusedrnn is faster; overhead in %)."""
    def ratio(mode, num, den):
        times = raw.get(mode, {})
        return paired_ratio(times.get(num), times.get(den))

    out = {**dataclasses.asdict(case)}
    for mode in MODES:
        out[f"{mode}_vs_torchnn"] = ratio(mode, BASELINE, "fused")
    for mode in ("fwd", "bwd", "fwdbwd"):
        r = ratio(mode, "fused_clip", "fused")
        out[f"clip_overhead_{mode}_pct"] = (
            {"median": (r["median"] - 1) * 100, "iqr": r["iqr"] * 100} if r else None)
    out["fwdbwd_vs_reference"] = ratio("fwdbwd", "reference", "fused_clip")
    return out


# --------------------------------------------------------------------------------------
# Machine info and output
# --------------------------------------------------------------------------------------

def _git(*args) -> Optional[str]:
    try:
        res = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def load_average() -> Optional[list]:
    """1/5/15-minute load averages: a loaded machine makes every number here unreliable."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_info(device: torch.device, fusedrnn) -> dict:
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain")
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count_logical": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_version": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "torch_parallel_info": [l.strip() for l in torch.__config__.parallel_info().splitlines()
                                if l.strip()][:8],
        "mkl_available": torch.backends.mkl.is_available(),
        "mkldnn_available": torch.backends.mkldnn.is_available(),
        "fusedrnn_commit": (commit + ("-dirty" if dirty else "")) if commit else "no commit",
        "fusedrnn_file": getattr(fusedrnn, "__file__", None) if fusedrnn else None,
        "fusedrnn_version": getattr(fusedrnn, "__version__", None) if fusedrnn else None,
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "loadavg_start": load_average(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update({
            "gpu_name": props.name,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "gpu_capability": f"{props.major}.{props.minor}",
            "cuda_version": torch.version.cuda,
            "cudnn_version": torch.backends.cudnn.version(),
            "cudnn_enabled": torch.backends.cudnn.enabled,
        })
    return info


def slug(text: str) -> str:
    text = re.sub(r"\((r|tm|c)\)", "", text.lower())
    text = re.sub(r"\b(cpu|processor|core|with|radeon graphics)\b", " ", text)
    text = re.sub(r"@.*", "", text)
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:40] or "unknown"


def output_stem(info: dict, device: torch.device, out_dir: Path) -> Path:
    model = info["gpu_name"] if device.type == "cuda" else info["cpu_model"]
    now = datetime.datetime.now()
    stem = out_dir / f"{device.type}-{slug(model)}-{now:%Y-%m-%d}"
    if stem.with_suffix(".json").exists():  # never overwrite an earlier run of the same day
        stem = stem.with_name(f"{stem.name}-{now:%H%M%S}")
    return stem


def _fmt(value, spec, none="–"):
    return none if value is None else format(value, spec)


def results_table(rows) -> str:
    head = ("| cell | T | B | I | H | layers | dtype | device | mode | impl | median ms "
            "| min ms | IQR ms | ×torch.nn | GFLOP/s |")
    lines = [head, "|---|--:|--:|--:|--:|--:|---|---|---|---|--:|--:|--:|--:|--:|"]
    for r in rows:
        lines.append(
            f"| {r['cell']} | {r['T']} | {r['B']} | {r['I']} | {r['H']} | {r['layers']} "
            f"| {r['dtype']} | {r['device']} | {r['mode']} | {r['impl']} "
            f"| {r['median_ms']:.3f} | {r['min_ms']:.3f} | {r['iqr_ms']:.3f} "
            f"| {_fmt(r['speedup_vs_torchnn'], '.2f')} | {r['gflops']:.3g} |")
    return "\n".join(lines)


def summary_table(summaries) -> str:
    def x(r):
        return "–" if r is None else f"{r['median']:.2f}× ±{r['iqr'] / 2:.2f}"

    def pct(r):
        return "–" if r is None else f"{r['median']:+.1f}% ±{r['iqr'] / 2:.1f}"

    lines = [
        "| cell | T | B | I | H | layers | dtype | train step vs torch.nn | infer vs torch.nn "
        "| fwd vs torch.nn | bwd vs torch.nn | clip+trunc overhead fwd | bwd | train step "
        "| train step vs reference loop |",
        "|---|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for s in summaries:
        lines.append(
            f"| {s['cell']} | {s['T']} | {s['B']} | {s['I']} | {s['H']} | {s['layers']} "
            f"| {s['dtype']} | {x(s['fwdbwd_vs_torchnn'])} | {x(s['infer_vs_torchnn'])} "
            f"| {x(s['fwd_vs_torchnn'])} | {x(s['bwd_vs_torchnn'])} "
            f"| {pct(s['clip_overhead_fwd_pct'])} | {pct(s['clip_overhead_bwd_pct'])} "
            f"| {pct(s['clip_overhead_fwdbwd_pct'])} | {x(s['fwdbwd_vs_reference'])} |")
    return "\n".join(lines)


SUMMARY_LEGEND = """\
Ratios are medians of per-repeat paired ratios (the implementations run interleaved in
each repeat), ± half the IQR of those ratios. "vs torch.nn" = torch.nn time / fused time
(>1: fusedrnn is faster). "clip+trunc overhead" = fused_clip time / fused time − 1.
"vs reference loop" = reference time / fused_clip time, both with the same clip/truncate."""


def header_lines(info: dict, args, clip: ClipConfig) -> list:
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
        + (f", at end: {info['loadavg_end']}" if "loadavg_end" in info else ""),
        f"- fusedrnn commit: {info['fusedrnn_commit']} ({info['fusedrnn_file']})",
        f"- fused_clip / reference options: {clip.label()}",
        f"- warm-up {args.warmup}, repeats {args.repeats}, seed {args.seed}",
        f"- command: `{info['command']}`",
    ]
    return lines


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Benchmark fusedrnn LSTM/GRU against torch.nn and a plain-PyTorch loop.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cell", nargs="+", choices=CELLS, default=list(CELLS))
    p.add_argument("--grid", choices=sorted(GRIDS), default="headline",
                   help="shape set: headline = (T,B,I,H)=%s; full adds fastrnns %s and "
                        "B=1,8,16. Ignored when any of --T/--B/--I/--H is given."
                        % (HEADLINE, FASTRNNS))
    for letter, default, what in (("T", HEADLINE[0], "sequence length"),
                                  ("B", HEADLINE[1], "batch size"),
                                  ("I", HEADLINE[2], "input size"),
                                  ("H", HEADLINE[3], "hidden size")):
        p.add_argument(f"--{letter}", nargs="+", type=int, default=None,
                       help=f"{what}(s); overrides --grid, the other letters default "
                            f"to the headline shape ({default})")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--dtype", choices=list(DTYPES), default="float32")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
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
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    if args.layers < 1:
        p.error("--layers must be >= 1")
    return args


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

    needs_fusedrnn = any(name != "torchnn" for name in args.impls)
    fusedrnn = import_fusedrnn() if needs_fusedrnn else None
    clip = ClipConfig(args.grad_clip, args.grad_clip_mode, args.truncate)
    info = machine_info(device, fusedrnn)
    header = header_lines(info, args, clip)
    print("# fusedrnn benchmark\n\n" + "\n".join(header) + "\n", flush=True)
    if info["loadavg_start"] and info["loadavg_start"][0] > 0.5:
        log(f"bench.py: WARNING: load average {info['loadavg_start'][0]} before starting; "
            "other processes will distort the timings (the paired ratios suffer least)")

    rows, summaries, errors = [], [], []
    for cell in args.cell:
        for T, B, I, H in shapes_from_args(args):
            case = Case(cell, T, B, I, H, args.layers, args.dtype, str(device))
            case_rows, raw, case_errors = run_case(case, args.impls, args.modes, clip,
                                                   fusedrnn, args.warmup, args.repeats)
            rows += case_rows
            summaries.append(summarize_case(case, raw))
            errors += [{**dataclasses.asdict(case), "impl": k, "error": v}
                       for k, v in case_errors.items()]

    info["loadavg_end"] = load_average()
    header = header_lines(info, args, clip)
    table = results_table(rows)
    summary = summary_table(summaries)
    error_lines = [f"- {e['cell']} T={e['T']} B={e['B']} I={e['I']} H={e['H']} "
                   f"{e['impl']}: {e['error']}" for e in errors]
    body = f"## Results\n\n{table}\n\n## Summary\n\n{summary}\n\n{SUMMARY_LEGEND}\n"
    if error_lines:
        body += "\n## Errors\n\n" + "\n".join(error_lines) + "\n"
    print(body, flush=True)

    if not args.no_save:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = output_stem(info, device, args.out)
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        payload = {"machine": info, "config": config, "clip": dataclasses.asdict(clip),
                   "rows": rows, "summary": summaries, "errors": errors}
        stem.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
        stem.with_suffix(".md").write_text(
            "# fusedrnn benchmark\n\n" + "\n".join(header) + "\n\n" + body)
        log(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
