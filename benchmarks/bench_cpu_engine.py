#!/usr/bin/env python
"""The CPU engine issue's benchmark (issue 11): fusedrnn vs torch.nn on CPU, paired.

Every comparison runs in one process, interleaved within each repeat (the order cycling
through the Williams design of benchlib.timing, as in bench.py), on fresh random inputs
each repeat, float32, with `--threads` intra-op threads (default 2). Four sections
(`--only` picks some):

  layers     fusedrnn.LSTM/GRU vs torch.nn.LSTM/GRU (same weights), 1 layer, the issue's
             shapes, inference (no_grad) and train (forward + backward of sum(out * g));
             fusedrnn also under each CPU time loop (_C._set_cpu_engine 'steps', 'engine';
             the default 'auto' is the main column), with how many calls the engine ran
  cells      fusedrnn.LSTMCell/GRUCell vs torch.nn's, one call, I = H = 64, B in 1, 8, 32,
             97, inference and train
  fixed      the fixed cost of one fusedrnn.ops.lstm_layer / gru_layer call (T=1, B=1,
             I=H=8) timed from Python over loops of calls, next to torch.nn's cell
  overheads  clip (norm) + truncate, and track_grad_norms, each against the same model
             without, train step at T=128 B=8 I=64 H=256

Each layer shape's time per step is shown next to its floors from benchmarks/floor.py
(W_hh bytes / measured cache bandwidth, recurrent FLOPs / measured FMA peak), and every
ratio next to the issue's target. Results: benchmarks/results/<cpu>-<date>-cpu-engine.{md,json}.

    python benchmarks/bench_cpu_engine.py                 # everything (~20-30 min, 2 cores)
    python benchmarks/bench_cpu_engine.py --quick         # smoke run, writes nothing
    python benchmarks/bench_cpu_engine.py --only fixed cells
    python benchmarks/bench_cpu_engine.py --lock /tmp/fusedrnn-bench.lock   # shared machine

See benchmarks/README.md ("bench_cpu_engine.py") for how to read the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import resource
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:  # so that the test (and `python -m`) find benchlib and floor
    sys.path.insert(0, str(_HERE))

import call_floor  # noqa: E402
import floor  # noqa: E402
from benchlib.console import Progress, describe, log  # noqa: E402
from benchlib.impls import import_fusedrnn  # noqa: E402
from benchlib.machine import (DEFAULT_OUT, dated_stem, host_probe_us,  # noqa: E402
                              load_average, machine_info, slug)
from benchlib.markdown import table as md_table  # noqa: E402
from benchlib.names import (CALL_FLOOR_IMPL, CALL_FLOOR_PEAK_IMPL, FLOOR_IMPL,  # noqa: E402
                            nn_cell_impl, op_impl)
from benchlib.timing import (balanced_orders, in_order, paired_ratio,  # noqa: E402
                             summarize)

SECTIONS = ("layers", "cells", "fixed", "overheads")
ENGINE_MODES = ("auto", "steps", "engine")

# (T, B, I, H) -> kind; the kind selects the target row of the table.
LAYER_SHAPES = [
    ((128, 1, 64, 256), "b1"),
    ((128, 8, 64, 256), "b8"),
    ((128, 32, 64, 256), "b32"),
    ((100, 64, 512, 512), "fastrnns"),
    ((64, 1, 1, 64), "forecast"),
    ((24, 16, 8, 32), "forecast"),
    ((64, 32, 1, 64), "forecast"),
]
# Issue 11's targets, ratio torch.nn time / fusedrnn time: {kind: {cell: (infer, train)}}.
LAYER_TARGETS = {
    "b1": {"lstm": (2.0, 2.0), "gru": (2.5, 3.0)},
    "b8": {"lstm": (1.8, 1.8), "gru": (2.5, 3.0)},
    "b32": {"lstm": (1.3, 1.3), "gru": (2.0, 2.0)},
    "fastrnns": {"lstm": (1.0, 1.0), "gru": (1.3, 1.3)},
    "forecast": {"lstm": (1.5, 1.5), "gru": (2.5, 2.5)},
}
CELL_BATCHES = (1, 8, 32, 97)
CELL_SIZE = 64          # I = H for the cells section
CELL_TARGET = 1.25      # both cells, inference and train
FIXED_SIZE = 8          # T=1, B=1, I=H=8 for the fixed-cost section
FIXED_TARGET_US = {"infer": 20.0, "train": 60.0}
OVERHEAD_SHAPE = (128, 8, 64, 256)
OVERHEAD_TARGET_PCT = 3.0
CLIP = dict(grad_clip=1.0, grad_clip_mode="norm", truncate=32)
GATES = {"lstm": 4, "gru": 3}
MODES = ("infer", "train")


# ---------------------------------------------------------------------------------------
# The paired, interleaved timer
# ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class Impl:
    """One contender. prepare(data) does everything untimed (leaves, zeroed gradients) and
    returns the timed closure; it runs `inner` calls, and the time is divided by `inner`.
    engine_mode: the CPU time loop to select (untimed) before each of its calls."""
    name: str
    prepare: Callable[[object], Callable[[], object]]
    engine_mode: Optional[str] = None


@dataclasses.dataclass
class Budget:
    warmup: int
    min_repeats: int
    max_repeats: int
    seconds: float  # wall-clock goal per measurement (all impls, one mode)


class EngineCounter:
    """fusedrnn._C's CPU-engine hooks, where this build has them: selecting the time loop
    and counting the layer calls the engine ran (so a column labelled 'engine' that never
    ran it says so instead of silently timing the per-step path)."""

    def __init__(self, fusedrnn):
        C = getattr(fusedrnn, "_C", None) if fusedrnn is not None else None
        self.set = getattr(C, "_set_cpu_engine", None)
        self.get = getattr(C, "_cpu_engine", None)
        self.runs = getattr(C, "_engine_runs", None)
        self.default = self.get() if self.get else None

    @property
    def can_select(self) -> bool:
        return self.set is not None

    def select(self, mode: Optional[str]) -> None:
        if mode is not None and self.set is not None:
            self.set(mode)

    def total(self) -> Optional[int]:
        # The first four counters are the layer calls per engine loop; the later ones
        # (row-split calls) count some of the same calls again.
        return sum(self.runs()[:4]) if self.runs is not None else None

    def restore(self) -> None:
        if self.set is not None and self.default is not None:
            self.set(self.default)


def time_paired(impls, make_data, budget: Budget, engine: EngineCounter,
                errors: dict, label: str) -> tuple:
    """Interleaved repeats: each repeat draws fresh data and runs every impl once, the order
    cycling through benchlib.timing.balanced_orders. The warm-up repeats size the run: as many timed
    repeats as fit in budget.seconds, within [min_repeats, max_repeats], rounded to whole
    cycles of the order design where that stays within max_repeats.

    Returns ({name: [ms per call]}, {name: calls that ran the engine}, repeats,
    {name: [involuntary context switches during each timed sample]}). An impl that raises
    is dropped and its error stored in `errors` under `label`.

    Note [Preempted samples]
    On a 2-core machine shared with builds and tests, a 2-thread call whose worker thread
    is descheduled waits at the next barrier of every parallel region for a scheduler
    time slice (milliseconds), so a sample is either near the true time or many times it:
    bimodal. The process's involuntary context switches (getrusage, all threads) are read
    around every sample, untimed; a sample with none ran undisturbed. The tables give the
    share of preempted samples and the paired ratio over the repeats where neither side
    was preempted ("clean"), next to the plain paired median over all repeats."""
    active = list(impls)
    times = {i.name: [] for i in active}
    preempt = {i.name: [] for i in active}
    engine_calls = {i.name: 0 for i in active}
    cycle = len(balanced_orders(len(active))) if active else 1
    target = None
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # as timeit: no collector pause inside a timed call
    try:
        r = 0
        while active:
            timed = r - budget.warmup
            if target is not None and timed >= target:
                break
            wall0 = time.perf_counter()
            data = make_data()
            for impl in in_order(active, r):
                try:
                    engine.select(impl.engine_mode)
                    fn = impl.prepare(data)
                    before = engine.total()
                    switches = _involuntary_switches()
                    t0 = time.perf_counter_ns()
                    result = fn()
                    elapsed_ns = time.perf_counter_ns() - t0
                    switches = _involuntary_switches() - switches
                    del result  # freeing outputs and the graph is not part of the call
                    after = engine.total()
                except Exception as exc:  # reported, never swallowed
                    errors[f"{label} {impl.name}"] = describe(exc)
                    log(f"    {label} {impl.name} FAILED: {describe(exc)}")
                    active.remove(impl)
                    times.pop(impl.name, None)
                    preempt.pop(impl.name, None)
                    continue
                if timed >= 0:
                    times[impl.name].append(elapsed_ns / 1e6 / getattr(fn, "inner", 1))
                    preempt[impl.name].append(switches)
                    if before is not None and after > before:
                        engine_calls[impl.name] += 1
            data = None
            r += 1
            if timed == -1 or (budget.warmup == 0 and timed == 0):
                # The last warm-up repeat (or the first timed one) sizes the run.
                per_repeat = max(time.perf_counter() - wall0, 1e-6)
                n = int(budget.seconds / per_repeat)
                n = max(budget.min_repeats, min(budget.max_repeats, n))
                if n >= cycle and (n // cycle) * cycle >= budget.min_repeats:
                    n = (n // cycle) * cycle
                target = n
    finally:
        engine.restore()
        if gc_was_enabled:
            gc.enable()
    repeats = len(next(iter(times.values()))) if times else 0
    return times, engine_calls, repeats, preempt


def _involuntary_switches() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw


def pair_stats(times, preempt, num: str, den: str) -> dict:
    """Ratios num / den: paired over all repeats, paired over the clean repeats (neither
    sample preempted, Note [Preempted samples]) with their count, and the ratio of the two
    minima (the best either side managed; robust to load, but not paired)."""
    a, b = times.get(num), times.get(den)
    if not a or not b:
        return {"ratio": None, "clean_ratio": None, "n_clean": 0, "min_ratio": None}
    pa, pb = preempt.get(num, []), preempt.get(den, [])
    clean = [i for i in range(min(len(a), len(b), len(pa), len(pb)))
             if pa[i] == 0 and pb[i] == 0]
    return {"ratio": paired_ratio(a, b),
            "clean_ratio": paired_ratio([a[i] for i in clean], [b[i] for i in clean]),
            "n_clean": len(clean),
            "min_ratio": min(a) / min(b)}


def impl_entry(ts, preempt, extra=None) -> dict:
    """Per-impl stats with its raw times and preemption counts."""
    pre = preempt or []
    return {**(stats(ts) or {}), **(extra or {}), "times_ms": ts, "preempted": pre,
            "preempted_pct": 100.0 * sum(1 for c in pre if c) / len(pre) if pre else None}


def stats(ts) -> Optional[dict]:
    return summarize(ts) if ts else None


def looped(fn: Callable[[], object], inner: int) -> Callable[[], None]:
    """A closure that runs fn `inner` times (the timer divides by .inner): one call of a
    cell is tens of microseconds, too short to time alone against the clock's and the
    interpreter's jitter."""
    def run():
        for _ in range(inner):
            fn()
    run.inner = inner
    return run


def calibrate_inner(calls, block_s: float, cap: int = 20000) -> int:
    """Calls per timed block so that the slowest impl's block lasts about block_s."""
    slowest = 0.0
    for call in calls:
        call()  # first call: allocations, dispatcher caches
        best = float("inf")
        for _ in range(10):  # the best of 10: one slow call under load must not size it
            t0 = time.perf_counter()
            call()
            best = min(best, time.perf_counter() - t0)
        slowest = max(slowest, best)
    return max(1, min(cap, int(block_s / max(slowest, 1e-7))))


# ---------------------------------------------------------------------------------------
# Floors
# ---------------------------------------------------------------------------------------

def step_floor(cell: str, B: int, H: int, mode: str, threads: int, ceilings,
               I: int = 0) -> dict:
    """The time per step no implementation can beat, from the measured ceilings.

    bytes: W_hh (G*H x H float32, G = 4 LSTM / 3 GRU) is read once per step forward
    (h_{t-1} @ W_hh^T) and once more backward (dgates_t @ W_hh); split over the threads,
    each reads its slice from its own L2 when the slice fits (else from the LLC), so the
    floor is the bytes over the aggregate bandwidth at `threads`.
    flops: the recurrent product, 2*B*G*H*H per step forward; backward about twice that,
    so a train step counts 3x. The input projection and the weight gradients are not
    counted (they are one large GEMM over all steps, off the sequential path).
    fma_all_floor_us counts them too (2*B*G*H*(H+I) per step, 3x for train): the whole
    call's FLOPs at the FMA peak, per step, against which "FMA use" is measured.

    call_floor_us is the whole call's floor per step, phase by phase, since the time loops
    and the all-steps GEMMs run one after the other: each pass of the time loop (one
    forward; train: one more backward) at max(W_hh bytes over the bandwidth, its product's
    2*B*G*H*H FLOPs at the peak), plus the all-steps GEMMs at the peak (the input
    projection 2*B*G*H*I; train: also the input gradient and dW_ih, 2*B*G*H*I each, and
    dW_hh, 2*B*G*H*H). It leaves out the pointwise math and the fixed cost of a call.
    """
    G = GATES[cell]
    whh = G * H * H * 4
    mult_bytes, mult_flops = (1, 1) if mode == "infer" else (2, 3)
    out = {"whh_bytes": whh, "bytes_per_step": mult_bytes * whh,
           "flops_per_step": mult_flops * 2.0 * B * G * H * H,
           "flops_all_per_step": mult_flops * 2.0 * B * G * H * (H + I)}
    if ceilings is None:
        return out
    slice_bytes = whh / max(threads, 1)
    l2_size = ceilings["machine"]["caches"].get("L2")
    level = "l2" if l2_size is None or slice_bytes <= l2_size else "llc"
    bw = floor.bandwidth(ceilings, level, threads)
    peak = floor.fma_peak(ceilings, threads)
    out["bw_level"] = level
    out["bytes_floor_us"] = out["bytes_per_step"] / (bw * 1e9) * 1e6 if bw else None
    out["flops_floor_us"] = out["flops_per_step"] / (peak * 1e9) * 1e6 if peak else None
    out["fma_all_floor_us"] = out["flops_all_per_step"] / (peak * 1e9) * 1e6 if peak else None
    sgemm = ceilings.get("sgemm", {}).get(str(threads), {}).get("gflops")
    out["sgemm_fma_use"] = sgemm / peak if sgemm and peak else None
    floors = [v for v in (out["bytes_floor_us"], out["flops_floor_us"]) if v]
    out["floor_us"] = max(floors) if floors else None
    if bw and peak:
        passes = 1 if mode == "infer" else 2
        loop_us = max(whh / (bw * 1e9), 2.0 * B * G * H * H / (peak * 1e9)) * 1e6
        gemm_flops = call_floor.gemm_flops(B, I, H, G, mode != "infer")
        out["call_floor_us"] = passes * loop_us + gemm_flops / (peak * 1e9) * 1e6
    out["bound"] = (None if not floors else
                    "bytes" if out["floor_us"] == out["bytes_floor_us"] else "flops")
    return out


# ---------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------

def _load_same_weights(src: torch.nn.Module, *others: torch.nn.Module) -> None:
    for m in others:
        m.load_state_dict(src.state_dict())


def _zero_grad(*modules) -> None:
    for m in modules:
        for p in m.parameters():
            p.grad = None


def _leaves(*tensors):
    return tuple(None if t is None else t.detach().requires_grad_() for t in tensors)


def _layer_call(module, cell, x, h0, c0):
    """The module's output tensor (the loss is sum(output * g))."""
    return module(x, (h0, c0))[0] if cell == "lstm" else module(x, h0)[0]


def _layer_prepare(module, cell, mode):
    def prepare(data):
        x, h0, c0, g = data
        if mode == "infer":
            def call():
                with torch.no_grad():
                    return _layer_call(module, cell, x, h0, c0)
            return call
        _zero_grad(module)
        lx, lh, lc = _leaves(x, h0, c0)
        return lambda: torch.autograd.backward(_layer_call(module, cell, lx, lh, lc), g)
    return prepare


def run_layers(args, fusedrnn, engine, ceilings, errors, notes, progress, lock) -> list:
    rows = []
    modes_cols = list(args.engine_modes) if engine.can_select else []
    if not engine.can_select:
        notes.append("this fusedrnn build has no _C._set_cpu_engine: engine columns left out")
    for cell in args.cells:
        for (T, B, I, H), kind in layer_shapes(args):
            label = f"{cell} T={T} B={B} I={I} H={H}"
            torch.manual_seed(args.seed)
            fused = getattr(fusedrnn, cell.upper())(I, H)
            ref = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](I, H)
            _load_same_weights(fused, ref)

            def make_data(T=T, B=B, I=I, H=H, cell=cell):
                return (torch.randn(T, B, I), torch.randn(1, B, H),
                        torch.randn(1, B, H) if cell == "lstm" else None,
                        torch.randn(T, B, H))

            # Forward check, per time loop: a fast wrong kernel must show up here.
            x, h0, c0, _ = make_data()
            diffs = {}
            with torch.no_grad():
                want = _layer_call(ref, cell, x, h0, c0)
                for m in (modes_cols or [None]):
                    engine.select(m)
                    got = _layer_call(fused, cell, x, h0, c0)
                    diffs[m or "auto"] = (got - want).abs().max().item()
                engine.restore()
            for m, d in diffs.items():
                if d > 1e-3:
                    log(f"    WARNING: {label} fused ({m}) forward differs from torch.nn "
                        f"by {d:.3g}")
            fc = make_call_floor(args, cell, (T, B, I, H), ceilings, notes)
            for mode in MODES:
                if mode not in args.modes:
                    continue
                impls = [Impl("torch.nn", _layer_prepare(ref, cell, mode))]
                if modes_cols:
                    impls += [Impl(f"fused:{m}", _layer_prepare(fused, cell, mode), m)
                              for m in modes_cols]
                else:
                    impls.append(Impl("fused:auto", _layer_prepare(fused, cell, mode)))
                if fc is not None:
                    impls.append(Impl(CALL_FLOOR_IMPL, fc.prepare(mode)))
                progress.describe(f"layers {label} {mode}")
                with lock:
                    times, eng, n, pre = time_paired(impls, make_data, args.budget, engine,
                                                errors, f"layers {label} {mode}")
                progress.step()
                phases = None
                if fc is not None and times.get(CALL_FLOOR_IMPL):
                    try:
                        fc.check(mode)
                    except RuntimeError as exc:  # a floor that did no real work: reported
                        errors[f"layers {label} {mode} {CALL_FLOOR_IMPL}"] = describe(exc)
                        times.pop(CALL_FLOOR_IMPL)
                        pre.pop(CALL_FLOOR_IMPL, None)
                    else:
                        fc.add_at_peak(times, pre, mode, floor.fma_peak(ceilings, args.threads))
                        phases = call_floor.phase_medians(fc.timed_phases(mode, n))
                rows.append(layer_row(cell, (T, B, I, H), kind, mode, times, eng, n, diffs,
                                      args.threads, ceilings, pre, phases))
    return rows


def make_call_floor(args, cell, shape, ceilings, notes):
    """The B = 1 floor call (benchmarks/call_floor.py) for a layer shape, or None: only at
    B = 1, with floors measured, H a multiple of 64 up to 512, on an AVX-512 CPU with a
    compiler (a note says why where it cannot run)."""
    T, B, I, H = shape
    if B != 1 or ceilings is None or args.no_call_floor or H % 64 or H > 512:
        return None
    try:
        return call_floor.FloorCall(cell, T, I, H)
    except Exception as exc:  # no compiler, no AVX-512: the run goes on without it
        msg = f"the B=1 floor call did not run: {describe(exc, 200)}"
        if msg not in notes:
            notes.append(msg)
        return None


def layer_shapes(args) -> list:
    """[((T, B, I, H), target kind or None)]: the issue's shapes, or those of --shape (a
    shape that is not the issue's gets no target)."""
    if not args.shapes:
        return LAYER_SHAPES
    kinds = dict(LAYER_SHAPES)
    return [(s, kinds.get(s)) for s in args.shapes]


def layer_row(cell, shape, kind, mode, times, eng, n, diffs, threads, ceilings,
              preempt=None, call_floor_phases=None) -> dict:
    preempt = preempt or {}
    T, B, I, H = shape
    target = LAYER_TARGETS[kind][cell][MODES.index(mode)] if kind else None
    row = {"cell": cell, "T": T, "B": B, "I": I, "H": H, "kind": kind, "mode": mode,
           "repeats": n, "target": target,
           "impls": {name: impl_entry(ts, preempt.get(name),
                                      {"engine_calls": eng.get(name, 0)})
                     for name, ts in times.items()},
           "fwd_max_abs_diff": diffs}
    main = "fused:auto"
    row.update(pair_stats(times, preempt, "torch.nn", main))
    row["met"] = (None if row["ratio"] is None or target is None
                  else row["ratio"]["median"] >= target)
    # The engine's gain, paired in the same run: steps / engine and steps / auto.
    row["engine_vs_steps"] = paired_ratio(times.get("fused:steps"), times.get("fused:engine"))
    row["auto_vs_steps"] = paired_ratio(times.get("fused:steps"), times.get(main))
    row["floor"] = step_floor(cell, B, H, mode, threads, ceilings, I)
    fma_all = row["floor"].get("fma_all_floor_us")
    for name, s in row["impls"].items():
        if s.get("median_ms") is not None:
            s["us_per_step"] = s["median_ms"] * 1e3 / T
            f = row["floor"].get("floor_us")
            s["gap"] = s["us_per_step"] / f if f else None
            cf = row["floor"].get("call_floor_us")
            s["call_gap"] = s["us_per_step"] / cf if cf else None
            # The share of the FMA peak the whole call runs at (all its FLOPs).
            s["fma_use"] = fma_all / s["us_per_step"] if fma_all else None
    nn_step = row["impls"].get("torch.nn", {}).get("us_per_step")
    # What the target asks: the FMA share at which a call takes torch.nn's time / target.
    row["floor"]["target_fma_use"] = (fma_all * target / nn_step
                                      if fma_all and target and nn_step else None)
    # The room the target leaves above the call floor: the time per step it allows over
    # call_floor_us. Below 1, no implementation can meet it on this machine.
    cf = row["floor"].get("call_floor_us")
    row["floor"]["target_room"] = (nn_step / target / cf
                                   if cf and target and nn_step else None)
    if CALL_FLOOR_IMPL in times:
        row["call_floor"] = call_floor_stats(times, preempt, target, call_floor_phases)
    return row


def call_floor_stats(times, preempt, target, phases) -> dict:
    """The B = 1 floor call against torch.nn and fusedrnn, paired in the same repeats
    (median ratios; None where a side is missing), its phases (median us), and
    target_room: the time the target allows (torch.nn's / target) over the floor call's,
    with its GEMMs at the peak where measured: below 1.00x the target asks for less time
    than the call's bare work took in that run."""
    def ratio(a, b):
        st = pair_stats(times, preempt, a, b)["ratio"]
        return st["median"] if st else None

    best = CALL_FLOOR_PEAK_IMPL if times.get(CALL_FLOOR_PEAK_IMPL) else CALL_FLOOR_IMPL
    out = {"nn_over_floor": ratio("torch.nn", CALL_FLOOR_IMPL),
           "nn_over_floor_at_peak": ratio("torch.nn", CALL_FLOOR_PEAK_IMPL),
           "fused_over_floor": ratio("fused:auto", CALL_FLOOR_IMPL),
           "fused_over_floor_at_peak": ratio("fused:auto", CALL_FLOOR_PEAK_IMPL),
           "phases_us": phases}
    nn_best = ratio("torch.nn", best)
    out["target_room"] = nn_best / target if nn_best and target else None
    return out


def _cell_prepare(cell_module, cell, mode, inner):
    def prepare(data):
        x, h, c, gh = data
        state = (h, c) if cell == "lstm" else h
        if mode == "infer":
            def one():
                with torch.no_grad():
                    return cell_module(x, state)
            return looped(one, inner)
        _zero_grad(cell_module)
        lx, lh, lc = _leaves(x, h, c)
        lstate = (lh, lc) if cell == "lstm" else lh

        def one():
            out = cell_module(lx, lstate)
            torch.autograd.backward(out[0] if cell == "lstm" else out, gh)
        return looped(one, inner)
    return prepare


def run_cells(args, fusedrnn, engine, errors, progress, lock) -> list:
    rows = []
    n = CELL_SIZE
    for cell in args.cells:
        for B in args.cell_batches or CELL_BATCHES:
            torch.manual_seed(args.seed)
            fused = getattr(fusedrnn, cell.upper() + "Cell")(n, n)
            ref = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}[cell](n, n)
            _load_same_weights(fused, ref)

            def make_data(B=B, cell=cell):
                return (torch.randn(B, n), torch.randn(B, n),
                        torch.randn(B, n) if cell == "lstm" else None, torch.randn(B, n))

            label = f"{cell}Cell B={B} I=H={n}"
            for mode in MODES:
                if mode not in args.modes:
                    continue
                probe = make_data()
                inner = calibrate_inner([_cell_prepare(m, cell, mode, 1)(probe)
                                         for m in (ref, fused)], args.block_s)
                impls = [Impl("torch.nn", _cell_prepare(ref, cell, mode, inner)),
                         Impl("fused", _cell_prepare(fused, cell, mode, inner))]
                progress.describe(f"cells {label} {mode}")
                with lock:
                    times, _, reps, pre = time_paired(impls, make_data, args.budget_small,
                                                      engine, errors, f"cells {label} {mode}")
                progress.step()
                pair = pair_stats(times, pre, "torch.nn", "fused")
                ratio = pair["ratio"]
                rows.append({"cell": cell, "B": B, "I": n, "H": n, "mode": mode,
                             "calls_per_sample": inner, "repeats": reps,
                             "impls": {k: impl_entry(v, pre.get(k)) for k, v in times.items()},
                             **pair, "target": CELL_TARGET,
                             "met": None if ratio is None else ratio["median"] >= CELL_TARGET})
    return rows


def run_fixed(args, fusedrnn, engine, errors, progress, lock) -> list:
    """One op call at T=1, B=1, I=H=8: nearly all of it is the fixed cost per call."""
    rows = []
    n = FIXED_SIZE
    for cell in args.cells:
        G = GATES[cell]
        torch.manual_seed(args.seed)
        ref = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}[cell](n, n)
        weights = [p.detach().clone() for p in (ref.weight_ih, ref.weight_hh, ref.bias_ih,
                                                ref.bias_hh)]
        op = fusedrnn.ops.lstm_layer if cell == "lstm" else fusedrnn.ops.gru_layer

        def make_data(cell=cell):
            return (torch.randn(1, 1, n), torch.randn(1, n),
                    torch.randn(1, n) if cell == "lstm" else None, torch.randn(1, 1, n))

        def op_prepare(mode, inner, op=op, cell=cell):
            def prepare(data):
                x, h, c, g = data
                states = (h, c) if cell == "lstm" else (h,)
                if mode == "infer":
                    def one():
                        with torch.no_grad():
                            return op(x, *weights, *states)
                    return looped(one, inner)
                w = _leaves(*weights)
                lx, *ls = _leaves(x, *states)

                def one():
                    torch.autograd.backward(op(lx, *w, *ls)[0], g)
                return looped(one, inner)
            return prepare

        def floor_prepare(mode, inner, cell=cell):
            # What torch itself charges for touching the op's tensors in one op: no grad, one
            # torch.cat of their flat views (made once: a single dispatch per call); with
            # grad, one torch.cat of the flat views of the same autograd leaves and its
            # backward (a view per leaf, one cat, and one AccumulateGrad per leaf).
            def prepare(data):
                x, h, c, _ = data
                tensors = (x, *weights, h) + ((c,) if cell == "lstm" else ())
                if mode == "infer":
                    flat = [t.view(-1) for t in tensors]

                    def one():
                        with torch.no_grad():
                            return torch.cat(flat)
                    return looped(one, inner)
                leaves = _leaves(*tensors)
                grad = torch.randn(sum(t.numel() for t in tensors))

                def one():
                    torch.autograd.backward(torch.cat([t.view(-1) for t in leaves]), grad)
                return looped(one, inner)
            return prepare

        for mode in MODES:
            if mode not in args.modes:
                continue
            probe = make_data()
            cell_prep = _cell_prepare(ref, cell, mode, 1)
            # torch.nn's cell takes [B, I] and returns [B, H]: its gradient is g[0].
            ref_impl = lambda data, p=cell_prep: p((data[0][0], data[1], data[2], data[3][0]))
            inner = calibrate_inner([op_prepare(mode, 1)(probe), ref_impl(probe)],
                                    args.block_s)
            cell_prep_n = _cell_prepare(ref, cell, mode, inner)
            impls = [Impl(op_impl(cell), op_prepare(mode, inner)),
                     Impl(nn_cell_impl(cell),
                          lambda data, p=cell_prep_n: p((data[0][0], data[1], data[2],
                                                         data[3][0]))),
                     Impl(FLOOR_IMPL, floor_prepare(mode, inner))]
            label = f"fixed {cell} T=1 B=1 I=H={n} {mode}"
            progress.describe(label)
            with lock:
                times, _, reps, pre = time_paired(impls, make_data, args.budget_small,
                                                  engine, errors, label)
            progress.step()
            op_stats = stats(times.get(impls[0].name))
            target = FIXED_TARGET_US[mode]
            rows.append({"cell": cell, "mode": mode, "G": G, "calls_per_sample": inner,
                         "repeats": reps,
                         "impls": {k: impl_entry(v, pre.get(k)) for k, v in times.items()},
                         "op_us": op_stats["median_ms"] * 1e3 if op_stats else None,
                         "target_us": target,
                         "met": None if op_stats is None
                         else op_stats["median_ms"] * 1e3 <= target})
    return rows


def run_overheads(args, fusedrnn, engine, errors, progress, lock) -> list:
    rows = []
    T, B, I, H = args.overhead_shape
    for cell in args.cells:
        cls = getattr(fusedrnn, cell.upper())
        torch.manual_seed(args.seed)
        base = cls(I, H)
        clip = cls(I, H, **CLIP)
        track = cls(I, H, track_grad_norms=True)
        _load_same_weights(base, clip, track)

        def make_data(cell=cell):
            return (torch.randn(T, B, I), torch.randn(1, B, H),
                    torch.randn(1, B, H) if cell == "lstm" else None, torch.randn(T, B, H))

        impls = [Impl("fused", _layer_prepare(base, cell, "train")),
                 Impl("fused+clip(norm)+truncate", _layer_prepare(clip, cell, "train")),
                 Impl("fused+track_grad_norms", _layer_prepare(track, cell, "train"))]
        label = f"overheads {cell} T={T} B={B} I={I} H={H} train"
        progress.describe(label)
        with lock:
            times, _, reps, pre = time_paired(impls, make_data, args.budget, engine, errors,
                                              label)
        progress.step()
        row = {"cell": cell, "T": T, "B": B, "I": I, "H": H, "mode": "train",
               "repeats": reps, "options": {"clip": CLIP, "track_grad_norms": True},
               "impls": {k: impl_entry(v, pre.get(k)) for k, v in times.items()},
               "target_pct": OVERHEAD_TARGET_PCT}
        for key, name in (("clip", impls[1].name), ("track", impls[2].name)):
            pair = pair_stats(times, pre, name, "fused")
            c = pair["clean_ratio"]
            row[f"{key}_clean_overhead_pct"] = (None if c is None else
                                                {"median": (c["median"] - 1) * 100,
                                                 "iqr": c["iqr"] * 100, "n": pair["n_clean"]})
            r = pair["ratio"]
            row[f"{key}_overhead_pct"] = (None if r is None else
                                          {"median": (r["median"] - 1) * 100,
                                           "iqr": r["iqr"] * 100})
            row[f"{key}_met"] = (None if r is None
                                 else (r["median"] - 1) * 100 <= OVERHEAD_TARGET_PCT)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------

E = "–"


def _f(v, spec=".3g"):
    return E if v is None else format(v, spec)


def floor_legend(rows) -> str:
    sg = next((r["floor"].get("sgemm_fma_use") for r in rows
               if r["floor"].get("sgemm_fma_use")), None)
    return ("Floors per step: W_hh bytes over the measured cache bandwidth; FLOPs of the "
            "recurrent product over the measured FMA peak. \"FMA use\": the whole call's "
            "FLOPs (input projection and, for train, the backward's GEMMs included) at the "
            "FMA peak, over the measured time per step; \"the target needs\" is the same "
            "at torch.nn's time divided by the target ratio. Call floor: each pass of the "
            "time loop at the larger of its two floors, plus the all-steps GEMMs (input "
            "projection; train: input and weight gradients) at the FMA peak, per step; "
            "\"target / call floor\" is the time per step the target allows over it (below "
            "1.00x no implementation can meet the target here). For scale: a large square "
            "sgemm (torch.mm, floors above) runs at "
            + (f"{100 * sg:.0f}%" if sg else "(not measured)") + " of the same peak.")


def _pct(v):
    return E if v is None else f"{100 * v:.0f}%"


def _ratio(r):
    return E if r is None else f"{r['median']:.2f}x ±{r['iqr'] / 2:.2f}"


def _met(m):
    return E if m is None else ("met" if m else "**not met**")


def _ms(s):
    """median [min-max] ms."""
    if not s or s.get("median_ms") is None:
        return E
    return f"{s['median_ms']:.3g} [{s['min_ms']:.3g}-{s['max_ms']:.3g}]"


def _us(s):
    if not s or s.get("median_ms") is None:
        return E
    return f"{s['median_ms'] * 1e3:.1f} [{s['min_ms'] * 1e3:.1f}-{s['max_ms'] * 1e3:.1f}]"


def _clean(r):
    """The paired ratio over the repeats where neither side was preempted, (n of them)."""
    c = r.get("clean_ratio")
    return E if c is None else f"{c['median']:.2f}x ({r['n_clean']})"


def _preempted(a, b):
    def cell(r):
        pa = r["impls"].get(a, {}).get("preempted_pct")
        pb = r["impls"].get(b, {}).get("preempted_pct")
        return E if pa is None or pb is None else f"{pa:.0f} / {pb:.0f}"
    return cell


def layers_tables(rows) -> str:
    def shape(r):
        return f"{r['T']}, {r['B']}, {r['I']}, {r['H']}"

    ratio_cols = [
        ("cell", "---", lambda r: r["cell"]),
        ("T, B, I, H", "---", shape),
        ("mode", "---", lambda r: r["mode"]),
        ("torch.nn ms", "--:", lambda r: _ms(r["impls"].get("torch.nn"))),
        ("fusedrnn ms", "--:", lambda r: _ms(r["impls"].get("fused:auto"))),
        ("×torch.nn (paired)", "--:", lambda r: _ratio(r["ratio"])),
        ("clean pairs", "--:", _clean),
        ("of mins", "--:", lambda r: _f(r.get("min_ratio"), ".2f") + "x"),
        ("preempted % nn / fused", "--:", _preempted("torch.nn", "fused:auto")),
        ("target", "--:", lambda r: E if r["target"] is None else f">= {r['target']:g}x"),
        ("", "---", lambda r: _met(r["met"])),
        ("repeats", "--:", lambda r: str(r["repeats"])),
    ]

    def per_step(name):
        return lambda r: _f(r["impls"].get(name, {}).get("us_per_step"), ".1f")

    def floor_cell(key):
        return lambda r: _f(r["floor"].get(key), ".2f")

    def fma_use(name):
        return lambda r: _pct(r["impls"].get(name, {}).get("fma_use"))

    def gap(name):
        return lambda r: _f(r["impls"].get(name, {}).get("call_gap"), ".2f") + "x" \
            if r["impls"].get(name, {}).get("call_gap") else E

    floor_cols = [
        ("cell", "---", lambda r: r["cell"]),
        ("T, B, I, H", "---", shape),
        ("mode", "---", lambda r: r["mode"]),
        ("torch.nn us/step", "--:", per_step("torch.nn")),
        ("fusedrnn us/step", "--:", per_step("fused:auto")),
        ("W_hh KiB (read/step)", "--:",
         lambda r: f"{r['floor']['whh_bytes'] / 1024:g} ({r['floor']['bytes_per_step'] / 1024:g})"),
        ("bytes floor us", "--:",
         lambda r: E if r["floor"].get("bytes_floor_us") is None else
         f"{r['floor']['bytes_floor_us']:.2f} ({r['floor']['bw_level'].upper()})"),
        ("MFLOP/step", "--:", lambda r: f"{r['floor']['flops_per_step'] / 1e6:.3g}"),
        ("FLOP floor us", "--:", floor_cell("flops_floor_us")),
        ("FMA use torch.nn", "--:", fma_use("torch.nn")),
        ("FMA use fusedrnn", "--:", fma_use("fused:auto")),
        ("FMA use the target needs", "--:",
         lambda r: _pct(r["floor"].get("target_fma_use"))),
        ("call floor us", "--:", floor_cell("call_floor_us")),
        ("fusedrnn / call floor", "--:", gap("fused:auto")),
        ("torch.nn / call floor", "--:", gap("torch.nn")),
        ("target / call floor", "--:",
         lambda r: E if r["floor"].get("target_room") is None else
         f"{r['floor']['target_room']:.2f}x"),
    ]

    def engine_calls(name):
        def cell(r):
            s = r["impls"].get(name)
            return E if not s or not s.get("n") else f"{s['engine_calls']}/{s['n']}"
        return cell

    engine_cols = [
        ("cell", "---", lambda r: r["cell"]),
        ("T, B, I, H", "---", shape),
        ("mode", "---", lambda r: r["mode"]),
        ("steps ms", "--:", lambda r: _ms(r["impls"].get("fused:steps"))),
        ("engine ms", "--:", lambda r: _ms(r["impls"].get("fused:engine"))),
        ("auto ms", "--:", lambda r: _ms(r["impls"].get("fused:auto"))),
        ("steps/engine", "--:", lambda r: _ratio(r["engine_vs_steps"])),
        ("steps/auto", "--:", lambda r: _ratio(r["auto_vs_steps"])),
        ("engine ran (engine col)", "--:", engine_calls("fused:engine")),
        ("engine ran (auto col)", "--:", engine_calls("fused:auto")),
    ]
    parts = ["### fusedrnn vs torch.nn (ratio = torch.nn time / fusedrnn time; "
             "median [min-max] ms)", "", md_table(ratio_cols, rows, 3), "",
             "### Time per step vs this machine's floors", "",
             md_table(floor_cols, rows, 3), "", floor_legend(rows), ""]
    cf_rows = [r for r in rows if r.get("call_floor")]
    if cf_rows:
        parts += ["### B=1: the floor call in the same repeats (benchmarks/call_floor.py)", "",
                  md_table(call_floor_cols(shape), cf_rows, 3), "", CALL_FLOOR_LEGEND, ""]
    if any("fused:steps" in r["impls"] for r in rows):
        parts += ["### CPU time loops: _set_cpu_engine('steps' / 'engine' / 'auto'), paired",
                  "", md_table(engine_cols, rows, 3), ""]
    return "\n".join(parts)


CALL_FLOOR_LEGEND = (
    "Floor call: the B=1 call's unavoidable work alone (library input projection; the "
    "engine's B=1 memory pattern as the forward and, train, the backward loop, with its "
    "barrier and shared state but no activations; train: the gradient GEMMs), no packing, "
    "no autograd; 'at peak': its GEMMs at the FMA peak instead. target / floor call: the "
    "time the target allows over the floor call's (at peak): below 1.00x the target asks "
    "for less time than that bare work took in this run.")


def call_floor_cols(shape) -> list:
    def x(key):
        return lambda r: _f(r["call_floor"].get(key), ".2f") + "x" \
            if r["call_floor"].get(key) else E

    def phases(r):
        p = r["call_floor"].get("phases_us") or {}
        return E if not p else " / ".join(f"{p[k]:.0f}" for k in call_floor.PHASES)

    return [
        ("cell", "---", lambda r: r["cell"]),
        ("T, B, I, H", "---", shape),
        ("mode", "---", lambda r: r["mode"]),
        ("floor call ms", "--:", lambda r: _ms(r["impls"].get(CALL_FLOOR_IMPL))),
        ("torch.nn / floor call", "--:", x("nn_over_floor")),
        ("torch.nn / floor call at peak", "--:", x("nn_over_floor_at_peak")),
        ("fusedrnn / floor call", "--:", x("fused_over_floor")),
        ("fusedrnn / floor call at peak", "--:", x("fused_over_floor_at_peak")),
        ("target", "--:", lambda r: E if r["target"] is None else f">= {r['target']:g}x"),
        ("target / floor call", "--:", x("target_room")),
        ("phases us: proj / fwd / bwd / grads", "--:", phases),
    ]


def cells_table(rows) -> str:
    cols = [
        ("cell", "---", lambda r: f"{r['cell'].upper()}Cell"),
        ("B", "--:", lambda r: str(r["B"])),
        ("I = H", "--:", lambda r: str(r["H"])),
        ("mode", "---", lambda r: r["mode"]),
        ("torch.nn us/call", "--:", lambda r: _us(r["impls"].get("torch.nn"))),
        ("fusedrnn us/call", "--:", lambda r: _us(r["impls"].get("fused"))),
        ("×torch.nn (paired)", "--:", lambda r: _ratio(r["ratio"])),
        ("clean pairs", "--:", _clean),
        ("of mins", "--:", lambda r: _f(r.get("min_ratio"), ".2f") + "x"),
        ("preempted % nn / fused", "--:", _preempted("torch.nn", "fused")),
        ("target", "--:", lambda r: f">= {r['target']:g}x"),
        ("", "---", lambda r: _met(r["met"])),
        ("calls/sample × repeats", "--:", lambda r: f"{r['calls_per_sample']} × {r['repeats']}"),
    ]
    return md_table(cols, rows, 4)


def fixed_table(rows) -> str:
    cols = [
        ("op", "---", lambda r: op_impl(r['cell'])),
        ("mode", "---", lambda r: "no-grad" if r["mode"] == "infer" else "forward+backward"),
        ("op us/call", "--:", lambda r: _us(r["impls"].get(op_impl(r['cell'])))),
        ("torch.nn cell us/call", "--:",
         lambda r: _us(r["impls"].get(nn_cell_impl(r['cell'])))),
        ("floor: torch.cat of the same tensors us/call", "--:",
         lambda r: _us(r["impls"].get(FLOOR_IMPL))),
        ("preempted % op / nn", "--:",
         lambda r: _preempted(op_impl(r['cell']), nn_cell_impl(r['cell']))(r)),
        ("target", "--:", lambda r: f"<= {r['target_us']:g} us"),
        ("", "---", lambda r: _met(r["met"])),
        ("calls/sample × repeats", "--:", lambda r: f"{r['calls_per_sample']} × {r['repeats']}"),
    ]
    return md_table(cols, rows, 2)


def overheads_table(rows) -> str:
    def pct(key):
        def cell(r):
            v = r.get(f"{key}_overhead_pct")
            if v is None:
                return E
            n = f" ({v['n']})" if "n" in v else ""
            return f"{v['median']:+.1f}% ±{v['iqr'] / 2:.1f}{n}"
        return cell

    cols = [
        ("cell", "---", lambda r: r["cell"]),
        ("T, B, I, H", "---", lambda r: f"{r['T']}, {r['B']}, {r['I']}, {r['H']}"),
        ("fused ms", "--:", lambda r: _ms(r["impls"].get("fused"))),
        ("+clip(norm)+truncate ms", "--:",
         lambda r: _ms(r["impls"].get("fused+clip(norm)+truncate"))),
        ("overhead", "--:", pct("clip")),
        ("clean", "--:", pct("clip_clean")),
        ("", "---", lambda r: _met(r.get("clip_met"))),
        ("+track_grad_norms ms", "--:", lambda r: _ms(r["impls"].get("fused+track_grad_norms"))),
        ("overhead", "--:", pct("track")),
        ("clean ", "--:", pct("track_clean")),
        (" ", "---", lambda r: _met(r.get("track_met"))),
        ("repeats", "--:", lambda r: str(r["repeats"])),
    ]
    return md_table(cols, rows, 2)


def report(result: dict) -> str:
    info, m = result["machine"], result["machine"]["floor_machine"]
    lines = [f"# CPU engine benchmark (issue 11), {info['date']}", "",
             f"- CPU: {m['cpu_model']}, {info['cpu_count_logical']} logical cores "
             f"({info['cpu_affinity']} usable); flags: {' '.join(m['flags'])}",
             f"- fusedrnn._C._cpu_capability(): {m['fusedrnn_capability']}; "
             f"_cpu_engine() default: {result['config']['engine_default']}; "
             f"step GEMM: {result['config']['step_gemm']}",
             f"- torch {info['torch_version']}, fusedrnn {info['fusedrnn_version']} "
             f"(commit {info['fusedrnn_commit']}, {info['fusedrnn_file']})",
             f"- threads: {result['config']['threads']} (torch.get_num_threads() = "
             f"{info['torch_num_threads']}); float32; fresh torch.randn inputs every repeat",
             f"- load average at start {info['loadavg_start']}, at end "
             f"{info.get('loadavg_end')}",
             f"- host speed probe (`torch.add` of two 8-float tensors, us per call): "
             f"{info.get('host_probe_us_start')} at start, {info.get('host_probe_us_end')} "
             f"at end",
             f"- command: `{info['command']}`; took {result['seconds']:.0f} s"]
    lines += [f"- note: {n}" for n in result["notes"]]
    lines.append("")
    if result.get("floor"):
        lines += ["## Floors (benchmarks/floor.py, quick)" if result["floor"].get("quick")
                  else "## Floors (benchmarks/floor.py)", "", floor.table(result["floor"]), ""]
    if result.get("layers"):
        lines += ["## Layers (1 layer, unidirectional; train = forward + backward of "
                  "sum(output * g), input and h0/c0 require grad)", "",
                  layers_tables(result["layers"])]
    if result.get("cells"):
        lines += ["## Cells (one call; train = forward + backward of sum(h' * g))", "",
                  cells_table(result["cells"]), ""]
    if result.get("fixed"):
        lines += ["## Fixed cost per call (T=1, B=1, I=H=8, timed from Python over loops "
                  "of calls)", "", fixed_table(result["fixed"]), ""]
    if result.get("overheads"):
        lines += ["## Overheads on the fast path (train step, paired against the same "
                  "model without the option)", "", overheads_table(result["overheads"]), ""]
    if result["errors"]:
        lines += ["## Errors", ""] + [f"- {k}: {v}" for k, v in result["errors"].items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------

class FileLock:
    """flock(PATH) held around each measurement (not the whole run): on a shared machine
    other benchmarks wait at most one measurement, and no two time at once. A no-op
    without a path."""

    def __init__(self, path: Optional[str]):
        self.path, self.fd = path, None

    def __enter__(self):
        if self.path:
            import fcntl
            self.fd = open(self.path, "a")
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            import fcntl
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            self.fd.close()
            self.fd = None


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Issue 11's CPU benchmark: fusedrnn vs torch.nn, paired, with floors.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny repeats and budgets, quick floors, writes nothing "
                        "unless --save")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads(N)")
    p.add_argument("--cells", nargs="+", choices=("lstm", "gru"), default=["lstm", "gru"])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--shape", nargs=4, type=int, action="append", metavar=("T", "B", "I", "H"),
                   dest="shapes", help="layers: these shapes instead of the issue's "
                   "(repeatable; a shape not in the issue's table has no target)")
    p.add_argument("--cell-batches", nargs="+", type=int, default=None,
                   help=f"cells: these batch sizes instead of {CELL_BATCHES}")
    p.add_argument("--overhead-shape", nargs=4, type=int, default=list(OVERHEAD_SHAPE),
                   metavar=("T", "B", "I", "H"), help="overheads: the shape")
    p.add_argument("--engine-modes", nargs="+", choices=ENGINE_MODES, default=list(ENGINE_MODES),
                   help="fusedrnn columns in the layers section ('auto' is always timed)")
    p.add_argument("--warmup", type=int, default=2, help="untimed repeats per measurement")
    p.add_argument("--min-repeats", type=int, default=8)
    p.add_argument("--max-repeats", type=int, default=48)
    p.add_argument("--seconds", type=float, default=8.0,
                   help="time goal per layer measurement (all impls, one mode); the warm-up "
                        "sizes the repeats to it within [min, max]")
    p.add_argument("--seconds-small", type=float, default=3.0,
                   help="the same for the cells and fixed-cost sections")
    p.add_argument("--block-ms", type=float, default=5.0,
                   help="cells / fixed cost: length of one timed loop of calls")
    p.add_argument("--floor-json", type=Path, default=None,
                   help="use these ceilings (a floor.py --json output or an earlier result "
                        "JSON) instead of measuring them")
    p.add_argument("--no-floor", action="store_true", help="no floors (no compiler needed)")
    p.add_argument("--no-call-floor", action="store_true",
                   help="layers: no B=1 floor call (benchmarks/call_floor.py) in the repeats "
                        "of the B=1 shapes")
    p.add_argument("--lock", default=None,
                   help="flock this file around each measurement, e.g. "
                        "/tmp/fusedrnn-bench.lock on a shared machine")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--save", action="store_true", help="write the result files even with --quick")
    p.add_argument("--no-save", action="store_true")
    p.add_argument("--no-progress-bar", action="store_true")
    args = p.parse_args(argv)
    if "auto" not in args.engine_modes:
        args.engine_modes = ["auto"] + list(args.engine_modes)
    args.shapes = [tuple(s) for s in args.shapes] if args.shapes else None
    args.overhead_shape = tuple(args.overhead_shape)
    if args.quick:
        args.warmup, args.min_repeats, args.max_repeats = 1, 2, 4
        args.seconds, args.seconds_small, args.block_ms = 0.2, 0.1, 1.0
    args.budget = Budget(args.warmup, args.min_repeats, args.max_repeats, args.seconds)
    args.budget_small = Budget(args.warmup, args.min_repeats, args.max_repeats,
                               args.seconds_small)
    args.block_s = args.block_ms / 1e3
    args.save_files = (args.save or not args.quick) and not args.no_save
    return args


def load_ceilings(args, notes, lock) -> Optional[dict]:
    if args.no_floor:
        notes.append("floors not measured (--no-floor)")
        return None
    if args.floor_json is not None:
        data = json.loads(args.floor_json.read_text())
        data = data.get("floor", data)  # an earlier result JSON carries it under "floor"
        notes.append(f"floors from {args.floor_json}")
        return data
    try:
        with lock:
            return floor.measure(quick=True, threads=tuple(sorted({1, args.threads})))
    except Exception as exc:  # no compiler, no headers: the run goes on without floors
        notes.append(f"floors not measured: floor.py failed ({describe(exc, 300)})")
        log(f"  floor.py failed, no floors: {describe(exc, 300)}")
        return None


def units(args) -> int:
    """Measurements in the run, for the progress bar."""
    n = 0
    cells, modes = len(args.cells), len(args.modes)
    if "layers" in args.only:
        n += cells * len(layer_shapes(args)) * modes
    if "cells" in args.only:
        n += cells * len(args.cell_batches or CELL_BATCHES) * modes
    if "fixed" in args.only:
        n += cells * modes
    if "overheads" in args.only:
        n += cells
    return n


def run(args) -> dict:
    """Run the selected sections; returns the result dict (also what the JSON holds)."""
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    fusedrnn = import_fusedrnn()
    import fusedrnn.ops  # noqa: F401  (the fixed-cost section calls the ops directly)
    engine = EngineCounter(fusedrnn)
    lock = FileLock(args.lock)
    notes, errors = [], {}
    info = machine_info(torch.device("cpu"), fusedrnn)
    info["floor_machine"] = floor.machine()
    ceilings = load_ceilings(args, notes, lock)
    C = fusedrnn._C
    # The kernels' SIMD level as the imported build reports it (floor_machine's copy comes
    # from floor.py's own import and is None when that fails); the README block shows it.
    info["cpu_capability"] = C._cpu_capability() if hasattr(C, "_cpu_capability") else None
    config = {k: v for k, v in vars(args).items()
              if k not in ("budget", "budget_small", "out", "floor_json")}
    config.update({"engine_default": engine.default,
                   "step_gemm": C._step_gemm() if hasattr(C, "_step_gemm") else None,
                   "engine_runs_at_start": list(engine.runs()) if engine.runs else None,
                   "budget": dataclasses.asdict(args.budget),
                   "budget_small": dataclasses.asdict(args.budget_small)})
    result = {"machine": info, "config": config, "floor": ceilings, "notes": notes,
              "errors": errors}
    progress = Progress(units(args), enabled=not args.no_progress_bar)
    try:
        if "layers" in args.only:
            result["layers"] = run_layers(args, fusedrnn, engine, ceilings, errors, notes,
                                          progress, lock)
            if engine.runs is not None and "engine" in args.engine_modes and not any(
                    r["impls"].get("fused:engine", {}).get("engine_calls")
                    for r in result["layers"]):
                notes.append("_C._engine_runs() stayed 0 for every 'engine' column: this "
                             "build has no persistent engine (or it applies to none of "
                             "these shapes); the steps/engine/auto columns all timed the "
                             "per-step path (an A/A check of the noise)")
        if "cells" in args.only:
            result["cells"] = run_cells(args, fusedrnn, engine, errors, progress, lock)
        if "fixed" in args.only:
            result["fixed"] = run_fixed(args, fusedrnn, engine, errors, progress, lock)
        if "overheads" in args.only:
            result["overheads"] = run_overheads(args, fusedrnn, engine, errors, progress,
                                                lock)
    finally:
        progress.close()
        engine.restore()
    config["engine_runs_at_end"] = list(engine.runs()) if engine.runs else None
    info["loadavg_end"] = load_average()
    info["host_probe_us_end"] = host_probe_us()
    result["seconds"] = time.perf_counter() - t0
    result["targets"] = targets_summary(result)
    return result


def targets_summary(result) -> dict:
    """How many of the issue's targets this run met, per section."""
    out = {}
    for section, key in (("layers", "met"), ("cells", "met"), ("fixed", "met")):
        rows = result.get(section) or []
        vals = [r[key] for r in rows if r.get(key) is not None]
        out[section] = {"met": sum(vals), "of": len(vals)}
    rows = result.get("overheads") or []
    vals = [r[k] for r in rows for k in ("clip_met", "track_met") if r.get(k) is not None]
    out["overheads"] = {"met": sum(vals), "of": len(vals)}
    return out


def output_stem(result, out_dir: Path) -> Path:
    """<cpu>-<date>[-<time>]-cpu-engine (no extension)."""
    return dated_stem(out_dir, slug(result["machine"]["cpu_model"]), "-cpu-engine")


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
    text = report(result)
    summary = ", ".join(f"{k} {v['met']}/{v['of']}" for k, v in result["targets"].items()
                        if v["of"])
    text += f"\nTargets met: {summary or 'none measured'}\n"
    print(text)
    if args.save_files:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = output_stem(result, args.out)
        stem.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str) + "\n")
        stem.with_suffix(".md").write_text(text)
        log(f"wrote {stem}.md and .json")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
