"""One benchmark case (cell, shape, layers, directions, batch layout, dtype, device): its
inputs, the FLOP model, the interleaved timing and memory loops over the implementations,
the forward check, and run_case, which does all of it for one case."""

from __future__ import annotations

import dataclasses
import gc
import math
from typing import Callable, Optional

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .console import describe, log
from .impls import BASELINE, DTYPES, IMPLS, Impl, build_impls, flashrnn_unsupported
from .memory import PeakMemory
from .timing import Clock, in_order, summarize

MODES = ("fwd", "bwd", "fwdbwd", "infer")


def rnn_flops(cell: str, T: int, B: int, I: int, H: int, layers: int, mode: str,
              directions: int = 1, tokens: Optional[int] = None) -> float:
    """Nominal floating-point operations of one call, used for the GFLOP/s column.

    Only the matrix products are counted (they dominate; pointwise gate math is ignored).
    Per layer and direction, the forward pass multiplies [x_t, h_{t-1}] ([B, I_k+H]) by the
    stacked gate weights ([I_k+H, G*H]) at each step, with G = 4 gates for LSTM (i, f, g, o)
    and G = 3 for GRU (r, z, n), a multiply-add counted as 2 FLOPs:

        forward = sum over layers k and directions of 2 * N * (I_k + H) * G * H

    N is the number of real tokens: T * B for a padded (equal-length) batch, sum(lengths)
    for a packed one (`tokens`); padding is not work, so an implementation that computes on
    pad positions gets no credit for it. I_0 = I; a later layer reads the concatenated
    outputs of all D directions of the layer below, so I_k = D * H for k > 0 (D = 2 when
    bidirectional, else 1). Each direction has its own weights and does its own products,
    hence the sum over directions (a factor D).

    Backward needs two products of the same size per forward product (gradient w.r.t. the
    inputs/state and w.r.t. the weights), so backward ~ 2x forward and a training step
    (forward + backward) ~ 3x forward. `fwd` and `infer` count as 1x forward.
    """
    gates = {"lstm": 4, "gru": 3}[cell]
    n = T * B if tokens is None else tokens
    forward = 0
    for k in range(layers):
        layer_in = I if k == 0 else directions * H
        forward += directions * 2 * n * (layer_in + H) * gates * H
    factor = {"fwd": 1, "infer": 1, "bwd": 2, "fwdbwd": 3}[mode]
    return float(factor * forward)



@dataclasses.dataclass(frozen=True)
class Case:
    cell: str
    T: int
    B: int
    I: int
    H: int
    layers: int
    directions: int  # 2 when bidirectional
    packed: bool
    dtype: str
    device: str
    lengths: Optional[tuple] = None  # per-sequence lengths of a packed batch, batch order

    @property
    def tokens(self) -> int:
        """Real tokens per batch: sum(lengths) when packed, T * B otherwise."""
        return sum(self.lengths) if self.packed else self.T * self.B

    def fields(self) -> dict:
        """The case as row fields (lengths left out: they are listed once per case)."""
        out = dataclasses.asdict(self)
        del out["lengths"]
        out["tokens"] = self.tokens
        return out


def draw_lengths(T: int, B: int, seed: int) -> tuple:
    """Per-sequence lengths of a packed batch: uniform integers in [ceil(T/4), T] from a
    generator seeded with `seed` (so every impl, repeat, cell and run with the same T, B and
    seed gets the same lengths), then one row (at a random position) set to T, so that the
    longest sequence is T and padded and packed runs span the same number of steps."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max(1, math.ceil(T / 4)), T + 1, (B,), generator=gen)
    lengths[int(torch.randint(0, B, (1,), generator=gen))] = T
    return tuple(int(n) for n in lengths)


def fresh_inputs(case: Case) -> dict:
    """Random input, initial state and output gradients (never zeros); shared by all impls
    within one repeat so they are compared on the same data.

    Returns {impl kind: (inputs, grads)} (see Impl). h0/c0: [L * D, B, H]; output gradient
    [T, B, D * H], or, for a packed batch, [sum(lengths), D * H] like the packed output's
    `.data`. Packed: "module" impls get pack_padded_sequence(x, lengths,
    enforce_sorted=False) (built here, untimed) and that gradient; the reference gets the
    padded x, the lengths (batch order of x) and the same gradient scattered into [T, B,
    D * H] with zeros at padded steps, so every impl computes the same loss.
    """
    T, B, I, H, L, D = case.T, case.B, case.I, case.H, case.layers, case.directions
    dtype, device = DTYPES[case.dtype], torch.device(case.device)
    x = torch.randn(T, B, I, dtype=dtype, device=device)
    h0 = torch.randn(L * D, B, H, dtype=dtype, device=device)
    c0 = torch.randn(L * D, B, H, dtype=dtype, device=device) if case.cell == "lstm" else None
    n_states = 2 if case.cell == "lstm" else 1
    g_states = [torch.randn(L * D, B, H, dtype=dtype, device=device) for _ in range(n_states)]
    if not case.packed:
        g_out = torch.randn(T, B, D * H, dtype=dtype, device=device)
        return {"module": ((x, h0, c0), [g_out] + g_states),
                "reference": ((x, h0, c0, None), [g_out] + g_states)}
    lengths = torch.tensor(case.lengths, dtype=torch.int64)  # CPU, as packing wants
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    g_data = torch.randn(case.tokens, D * H, dtype=dtype, device=device)
    g_padded, _ = pad_packed_sequence(
        PackedSequence(g_data, packed.batch_sizes, packed.sorted_indices,
                       packed.unsorted_indices), total_length=T)
    return {"module": ((packed, h0, c0), [g_data] + g_states),
            "reference": ((x, h0, c0, lengths.to(device)), [g_padded] + g_states)}


def _leaf(value):
    """A fresh autograd leaf for a floating-point input (for a PackedSequence: its data)."""
    if isinstance(value, PackedSequence):
        return PackedSequence(value.data.detach().requires_grad_(), value.batch_sizes,
                              value.sorted_indices, value.unsorted_indices)
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.detach().requires_grad_()
    return value  # None, integer lengths


def prepare_call(impl: Impl, mode: str, inputs, grads) -> Callable[[], object]:
    """Everything that must not be timed happens here; the returned closure is the timed part."""
    impl.zero_grad()
    if mode == "infer":
        def call():
            with torch.no_grad():
                return impl.forward(*inputs)
        return call

    leaves = tuple(_leaf(t) for t in inputs)
    if mode == "fwd":
        return lambda: impl.forward(*leaves)
    if mode == "bwd":
        outputs = impl.forward(*leaves)  # untimed forward
        return lambda: torch.autograd.backward(outputs, grads)
    if mode == "fwdbwd":
        return lambda: torch.autograd.backward(impl.forward(*leaves), grads)
    raise ValueError(f"unknown mode {mode!r}")


def measure_mode(case, impls, mode, clock, warmup, repeats, progress=None):
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
            data = fresh_inputs(case)
            for impl in in_order(active, r):
                inputs, grads = data[impl.kind]
                try:
                    elapsed = clock.time_ms(prepare_call(impl, mode, inputs, grads))
                except Exception as exc:  # reported in the output, never swallowed
                    errors[impl.name] = f"{mode}: {describe(exc)}"
                    log(f"    {impl.name} {mode} FAILED: {errors[impl.name]}")
                    active.remove(impl)
                    del times[impl.name]
                    continue
                if r >= warmup:
                    times[impl.name].append(elapsed)
            data = inputs = grads = None  # free this repeat's tensors before the next draw
            if progress is not None:
                progress.step()
    finally:
        if gc_was_enabled:
            gc.enable()
    return times, errors


def measure_memory(case, impls, mode, meter: PeakMemory) -> dict:
    """{impl name: peak bytes of one untimed call (None: not measured or failed)}, each
    impl on the same fresh inputs; see Note [Peak memory]."""
    if meter.method is None:
        return {impl.name: None for impl in impls}
    data = fresh_inputs(case)
    peaks = {}
    gc.collect()
    for impl in impls:
        inputs, grads = data[impl.kind]
        try:
            peaks[impl.name] = meter.measure(prepare_call(impl, mode, inputs, grads))
        except Exception as exc:  # timed fine but the extra call failed: say so, go on
            log(f"    {impl.name} {mode} memory measurement failed: {describe(exc)}")
            peaks[impl.name] = None
        impl.zero_grad()
        gc.collect()
    return peaks


# Forward disagreement above which a warning is printed (torch.nn vs a correct kernel is
# orders of magnitude below this).
CHECK_TOLERANCE = {"float64": 1e-8, "float32": 1e-3, "float16": 2e-2, "bfloat16": 1e-1}


def forward_check(case, impls, errors) -> dict:
    """Max |difference| of every impl's forward outputs from torch.nn's (or the first impl's)
    on one random input: a kernel that is fast because it is wrong shows up here. Clipping
    and truncation do not change the forward pass, so all impls must agree. For a packed
    batch the reference's padded output is packed first, so the comparison is over the real
    steps (all impls see the same padded x, h0, c0). An impl whose forward raises is
    removed from `impls` and its error added to `errors`."""
    data = fresh_inputs(case)
    outputs = {}
    for impl in list(impls):
        inputs, _ = data[impl.kind]
        try:
            with torch.no_grad():
                outs = impl.forward(*inputs)
                if case.packed and impl.kind == "reference":
                    packed = pack_padded_sequence(outs[0], torch.tensor(case.lengths),
                                                  enforce_sorted=False)
                    outs = (packed.data,) + tuple(outs[1:])
                outputs[impl.name] = outs
        except Exception as exc:  # reported in the output, never swallowed
            errors[impl.name] = f"forward failed: {describe(exc)}"
            log(f"    {impl.name} FAILED: {errors[impl.name]}")
            impls.remove(impl)
    # flashrnn starts from zero state and keeps its own gate order: not comparable
    outputs.pop("flashrnn", None)
    ref_name = BASELINE if BASELINE in outputs else next(iter(outputs), None)
    diffs = {}
    for name, outs in outputs.items():
        diffs[name] = max((a.double() - b.double()).abs().max().item()
                          for a, b in zip(outs, outputs[ref_name]))
        if diffs[name] > CHECK_TOLERANCE[case.dtype]:
            log(f"    WARNING: {name} forward differs from {ref_name} by {diffs[name]:.3g}")
    return diffs


def case_label(case) -> str:
    return (f"{case.cell} T={case.T} B={case.B} I={case.I} H={case.H} L={case.layers}"
            f"{' bidir' if case.directions == 2 else ''}"
            f" {'packed' if case.packed else 'padded'}")


def run_case(case, mode_impls, clip, fusedrnn, warmup, repeats, progress=None,
             meter: Optional[PeakMemory] = None, notes: Optional[list] = None):
    """Time one case. mode_impls: {mode: [impl names]}, in the order the modes run; every
    impl named for any mode is built (and forward-checked) once. With a `meter`, each
    impl's peak memory is measured in one extra untimed call per mode after the timing.
    flashrnn is left out of cases it does not cover, with a line in `notes`."""
    clock = Clock(torch.device(case.device))
    all_names = [n for n in IMPLS if any(n in names for names in mode_impls.values())]
    why = flashrnn_unsupported(case) if "flashrnn" in all_names else None
    if why is not None:
        all_names.remove("flashrnn")
        if notes is not None:
            notes.append(f"flashrnn not timed for {case_label(case)}: {why}")
    impls, errors = build_impls(all_names, case.cell, case.I, case.H, case.layers,
                                case.directions, DTYPES[case.dtype], torch.device(case.device),
                                clip, fusedrnn)
    for name, err in errors.items():
        log(f"    {name} FAILED: {err}")
    diffs = forward_check(case, impls, errors)
    rows, raw = [], {}
    for mode, names in mode_impls.items():
        if progress is not None:
            progress.describe(f"{case_label(case)} {mode}")
        else:
            log(f"  {case_label(case)} {mode} ...")
        mode_impls_now = [impl for impl in impls if impl.name in names]
        times, mode_errors = measure_mode(case, mode_impls_now, mode, clock, warmup, repeats,
                                          progress)
        peaks = (measure_memory(case, [i for i in mode_impls_now if i.name in times], mode,
                                meter) if meter is not None else {})
        errors.update({f"{k} ({mode})": v for k, v in mode_errors.items()})
        raw[mode] = times
        flops = rnn_flops(case.cell, case.T, case.B, case.I, case.H, case.layers, mode,
                          case.directions, case.tokens)
        base = summarize(times[BASELINE])["median_ms"] if BASELINE in times else None
        for name, ts in times.items():
            stats = summarize(ts)
            rows.append({
                **case.fields(), "mode": mode, "impl": name,
                **stats,
                "speedup_vs_torchnn": (base / stats["median_ms"]) if base else None,
                "tokens_per_s": case.tokens / (stats["median_ms"] * 1e-3),
                "gflops": flops / (stats["median_ms"] * 1e-3) / 1e9,
                "flops": flops,
                "fwd_max_abs_diff": diffs.get(name),
                "peak_mem_bytes": peaks.get(name),
                "times_ms": ts,
            })
    return rows, raw, errors
