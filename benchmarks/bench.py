#!/usr/bin/env python
"""fusedrnn benchmark driver: fused LSTM/GRU kernels vs torch.nn vs a plain-PyTorch loop.

Every implementation is timed in the same process, on the same shapes, dtype, device and
(identical) weights, interleaved within each repeat so that clock drift, thermal state and
background load hit them equally. See benchmarks/README.md for how to read the output.

    python benchmarks/bench.py                      # headline shape, LSTM + GRU, CPU
    python benchmarks/bench.py --grid full          # + fastrnns default and small batches
    python benchmarks/bench.py --grid issue3        # 2-layer bidirectional, padded vs packed
    python benchmarks/bench.py --grid issue7        # cost of track_grad_norms in the backward
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
    flashrnn    (CUDA only, when the `flashrnn` package imports; UNTESTED) flashrnn's fused
                LSTM/GRU, with the input projection GEMM done inside the timed call

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
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from _markdown import table as md_table  # benchmarks/ is on sys.path when run

REPO_ROOT = Path(__file__).resolve().parent.parent
# Runs land in an untracked folder; a run worth keeping is written (or copied) to
# benchmarks/results/ with --out, from which the README results block is generated.
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "local"

CELLS = ("lstm", "gru")
MODES = ("fwd", "bwd", "fwdbwd", "infer")
IMPLS = ("fused", "fused_clip", "fused_track", "fused_clip_track", "torchnn", "reference",
         "flashrnn")
# The implementations run by default; flashrnn is added on CUDA when it imports.
DEFAULT_IMPLS = ("fused", "fused_clip", "torchnn", "reference")
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
    "issue3": [HEADLINE],
    "issue7": [HEADLINE],
}

# Presets that fix more than the shapes. Their settings apply even when --T/--B/--I/--H
# replace the shapes; --layers, --modes and --impls given explicitly override them.
#   issue3: 2-layer bidirectional LSTM/GRU, (a) padded equal-length batch vs (b) packed
#   batch with lengths uniform in [T/4, T]; training step and inference. fused_clip is
#   timed in fwdbwd as the like-for-like partner of the (clipping, truncating) reference
#   loop; infer leaves out the reference (it only restates the forward loop) and fused_clip
#   (its forward is fused's).
PRESETS = {
    "issue3": {
        "layers": 2,
        "bidirectional": True,
        "packed": (False, True),
        "modes": ("fwdbwd", "infer"),
        "impls": {"fwdbwd": ("fused", "fused_clip", "torchnn", "reference"),
                  "infer": ("fused", "torchnn")},
    },
    #   issue7: the cost of track_grad_norms=True: backward and training step, with and
    #   without clipping, each against the same kernels without recording.
    "issue7": {
        "modes": ("bwd", "fwdbwd"),
        "impls": {m: ("fused", "fused_track", "fused_clip", "fused_clip_track", "torchnn")
                  for m in ("bwd", "fwdbwd")},
    },
}


_BAR = None  # the tqdm progress bar while one is active (see Progress)


def log(msg: str) -> None:
    """Progress and errors go to stderr, so stdout is exactly the markdown report."""
    if _BAR is not None:
        _BAR.write(msg, file=sys.stderr)  # above the bar, not through it
    else:
        print(msg, file=sys.stderr, flush=True)


class Progress:
    """A tqdm bar over all repeats of the run (warm-up included) when tqdm is installed and
    not disabled; otherwise nothing beyond the per-mode stderr lines (`log`)."""

    def __init__(self, total: int, enabled: bool = True):
        global _BAR
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, unit="rep", file=sys.stderr, dynamic_ncols=True,
                                leave=True)
                _BAR = self.bar

    @property
    def active(self) -> bool:
        return self.bar is not None

    def describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(text, refresh=True)
        else:
            log(f"  {text} ...")

    def step(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        global _BAR
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            _BAR = None


def describe(exc: BaseException, limit: int = 600) -> str:
    """`Type: message` for the report, without the argument dump of a pybind11 signature
    mismatch ("Invoked with: <every tensor>") and capped at `limit` characters."""
    text = str(exc).split("\n\nInvoked with:")[0].strip()
    if len(text) > limit:
        text = text[:limit] + " [...]"
    return f"{type(exc).__name__}: {text}"


# --------------------------------------------------------------------------------------
# FLOP model
# --------------------------------------------------------------------------------------

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
# Peak memory of one call: CUDA allocator peak on GPU, peak RSS on CPU
# --------------------------------------------------------------------------------------

def _proc_status_kib(field: str) -> Optional[int]:
    """A `kB` field (VmRSS, VmHWM) of /proc/self/status, or None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _malloc_trim() -> None:
    """Give free glibc heap pages back to the OS (malloc_trim(0)), so that memory freed by
    earlier calls and reused by the measured one is counted again; a no-op elsewhere."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of one call in bytes, over what the process held right before it.

    Note [Peak memory]
    CUDA: torch.cuda.max_memory_allocated() after torch.cuda.reset_peak_memory_stats(),
    minus torch.cuda.memory_allocated() before the call (both after a synchronize): the
    peak of tensor memory the caching allocator handed out during the call, exact, and
    not counting its cache, cuDNN/cuBLAS workspaces outside it or the CUDA context.

    CPU, on Linux (method "vmhwm"): glibc's free heap pages are returned to the OS
    (malloc_trim(0)), RSS is read (VmRSS), the kernel's peak-RSS counter is reset to the
    current RSS by writing "5" to /proc/self/clear_refs (Linux >= 4.0), the call runs, and
    the result is VmHWM - VmRSS_before: the largest amount of additional resident memory
    the process had at any instant of the call. Exact, not sampled, but it is RSS, not
    tensor bytes: it counts pages touched (an allocation never written is not counted),
    includes anything else the process did meanwhile (other threads, Python objects), and
    leaves out memory already resident before the call that the call reused (buffers a
    library keeps between calls, e.g. oneDNN scratchpads and weight caches allocated in the
    warm-up; free-list memory that malloc_trim could not return). A lower bound of the
    call's working set, comparable between implementations on the same machine.

    CPU fallback (method "rss-sampled", when clear_refs cannot be written): a background
    thread reads VmRSS about every millisecond during the call and the result is the
    largest sample minus VmRSS before. It misses peaks shorter than the sampling interval
    or inside C++ code that holds the GIL, so it can only be lower than the true peak.

    Elsewhere (no /proc): None, shown as "–".

    The untimed call sees fresh inputs, created (like the inputs of `bwd`'s untimed
    forward) before the "before" reading: `fwd` counts the activations kept for backward
    plus the outputs, `bwd` the extra memory of the backward pass over the saved graph
    (gradients included), `fwdbwd` the peak of a whole step, `infer` the forward without
    autograd.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.method = None
        if device.type == "cuda":
            self.method = "cuda"
        elif _proc_status_kib("VmRSS") is not None:
            self.method = "vmhwm" if self._reset_hwm() else "rss-sampled"

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def describe(self) -> str:
        return {
            "cuda": "CUDA allocator: max_memory_allocated() during the call (peak reset "
                    "before) minus memory_allocated() before",
            "vmhwm": "CPU peak RSS: VmHWM during the call (reset via /proc/self/clear_refs, "
                     "after malloc_trim) minus VmRSS before; resident memory the call added "
                     "at its peak, a lower bound of its working set (memory reused from "
                     "before the call is not counted)",
            "rss-sampled": "CPU peak RSS sampled about every 1 ms by a thread during the "
                           "call minus VmRSS before (misses short peaks: a lower bound)",
            None: "not measured (no /proc on this system)",
        }[self.method]

    def measure(self, fn: Callable[[], object]) -> Optional[int]:
        if self.method is None:
            fn()
            return None
        if self.method == "cuda":
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            result = fn()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - before
            del result
            return peak
        _malloc_trim()
        before = _proc_status_kib("VmRSS")
        if self.method == "vmhwm" and self._reset_hwm():
            result = fn()
            peak = _proc_status_kib("VmHWM")
        else:
            samples, done = [before], threading.Event()

            def sample():
                while not done.is_set():
                    samples.append(_proc_status_kib("VmRSS") or 0)
                    time.sleep(0.001)

            thread = threading.Thread(target=sample, daemon=True)
            thread.start()
            try:
                result = fn()
                samples.append(_proc_status_kib("VmRSS") or 0)
            finally:
                done.set()
                thread.join()
            peak = max(samples)
        del result
        return max(0, peak - before) * 1024


# --------------------------------------------------------------------------------------
# Implementations under test
# --------------------------------------------------------------------------------------

@dataclasses.dataclass
class Impl:
    """One implementation: forward(*inputs) returns (out, h_n[, c_n]) as a flat tuple.

    kind "module" (fused, fused_clip, torchnn): inputs (x, h0, c0), x a tensor or a
    PackedSequence; out is a tensor (a packed output's `.data`). kind "reference": inputs
    (x, h0, c0, lengths), x always the padded [T, B, I] tensor, lengths None or [B].
    """

    name: str
    forward: Callable[..., tuple]
    params: list
    kind: str = "module"

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
            f"bench.py: cannot import fusedrnn ({describe(exc)}).\n"
            "  Build it first, from the repository root:\n"
            "      pip install --no-build-isolation -e .      (FUSEDRNN_SKIP_CUDA=1 for CPU only)\n"
            "  or time torch.nn alone with:  --impls torchnn")
    missing = [name for name in ("LSTM", "GRU") if not hasattr(fusedrnn, name)]
    missing += [f"reference.{name}" for name in ("lstm_layer", "gru_layer")
                if not hasattr(fusedrnn.reference, name)]
    if missing:
        sys.exit(f"bench.py: fusedrnn at {getattr(fusedrnn, '__file__', '?')} lacks "
                 f"{', '.join(missing)} (docs/design.md §1 / docs/ops_api.md)")
    return fusedrnn


def _module_forward(module: torch.nn.Module, cell: str) -> Callable[..., tuple]:
    """(out, h_n[, c_n]); a packed output is returned as its `.data` tensor (what the loss
    and its gradient are defined on)."""
    def data(out):
        return out.data if isinstance(out, PackedSequence) else out

    if cell == "lstm":
        def forward(x, h0, c0):
            out, (h_n, c_n) = module(x, (h0, c0))
            return data(out), h_n, c_n
    else:
        def forward(x, h0, c0):
            out, h_n = module(x, h0)
            return data(out), h_n
    return forward


def _reference_forward(reference, weights: torch.nn.Module, cell: str, layers: int,
                       directions: int, clip: ClipConfig) -> Callable[..., tuple]:
    """Stack single-layer, single-direction reference calls into a multi-layer, optionally
    bidirectional RNN, exactly as torch.nn composes its layers (weights in torch.nn naming).

    Layer k, direction d uses the parameters `*_l{k}` (d = 0) or `*_l{k}_reverse` (d = 1,
    run with reverse=True) and the initial state h0[k * D + d] (c0 likewise); the final
    states come back in the same layer-major order. The input of layer k > 0 is the
    concatenation of both directions' outputs of layer k - 1 ([T, B, D * H]). `lengths`
    (None, or [B] in the batch order of x) goes to every call: a reverse direction then
    starts at each sequence's own last element and padded steps output zeros.
    """
    layer_fn = reference.lstm_layer if cell == "lstm" else reference.gru_layer
    per_layer = [
        [tuple(getattr(weights, f"{name}_l{k}" + ("_reverse" if d == 1 else ""))
               for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
         for d in range(directions)]
        for k in range(layers)
    ]
    options = clip.kwargs()

    def forward(x, h0, c0, lengths=None):
        inp, h_list, c_list = x, [], []
        for k, layer in enumerate(per_layer):
            outs = []
            for d, w in enumerate(layer):
                index = k * directions + d
                if cell == "lstm":
                    y, h_k, c_k = layer_fn(inp, *w, h0[index], c0[index], lengths=lengths,
                                           reverse=d == 1, **options)
                    c_list.append(c_k)
                else:
                    y, h_k = layer_fn(inp, *w, h0[index], lengths=lengths, reverse=d == 1,
                                      **options)
                h_list.append(h_k)
                outs.append(y)
            inp = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        states = (torch.stack(h_list),) + ((torch.stack(c_list),) if cell == "lstm" else ())
        return (inp,) + states

    return forward


def flashrnn_available() -> bool:
    """Whether the optional `flashrnn` package (NX-AI FlashRNN, CUDA) imports."""
    try:
        from flashrnn.flashrnn import flashrnn  # noqa: F401
    except Exception:  # ImportError, or a CUDA build error at import
        return False
    return True


def flashrnn_unsupported(case) -> Optional[str]:
    """Why flashrnn is not timed on this case, or None. The wrapper below covers the single
    layer, unidirectional, padded case on CUDA in the dtypes flashrnn takes."""
    if not case.device.startswith("cuda"):
        return "CUDA only"
    if case.layers != 1 or case.directions != 1 or case.packed:
        return "only 1 layer, unidirectional, padded batches are wrapped"
    if case.dtype not in ("float32", "float16", "bfloat16"):
        return f"flashrnn has no {case.dtype}"
    return None


def _flashrnn_forward(weights: torch.nn.Module, cell: str, dtype: str) -> Callable[..., tuple]:
    """flashrnn's fused kernel behind the (x, h0, c0) -> (out, h_n[, c_n]) interface.

    UNTESTED: written without a GPU or the flashrnn package, from flashrnn 1.0.x's
    `flashrnn(Wx, R, b, states=None, function=..., backend="cuda_fused", dtype=...)` with
    Wx [B, T, G, NH, D], R [G, NH, D, D], b [G_b, NH, D] and outputs (h, last_h) taken as
    [S, B, T, NH, D] and [S, B, 1, NH, D]; one head (NH = 1, D = H). Check the shapes
    against the installed version before trusting a number.

    Equal work: flashrnn takes the input projection Wx precomputed, so the GEMM
    x @ W_ih^T + b_ih runs here, inside the timed call, as it does inside fusedrnn and
    torch.nn. Differences that remain: flashrnn starts from zero state (h0/c0 are
    ignored, so no gradient w.r.t. them is computed), its gate order is not mapped from
    torch.nn's (so its outputs are not compared in the forward check), and its recurrent
    weights are W_hh reshaped, not transposed to its convention.
    """
    from flashrnn.flashrnn import flashrnn

    gates = {"lstm": 4, "gru": 3}[cell]
    H = weights.hidden_size
    w_ih, w_hh = weights.weight_ih_l0, weights.weight_hh_l0
    b_ih, b_hh = weights.bias_ih_l0, weights.bias_hh_l0

    def forward(x, h0, c0):
        T, B, _ = x.shape
        wx = torch.nn.functional.linear(x.transpose(0, 1), w_ih, b_ih)  # [B, T, G*H]
        wx = wx.reshape(B, T, gates, 1, H)
        R = w_hh.reshape(gates, 1, H, H)
        b = b_hh.reshape(gates, 1, H)
        if cell == "gru":  # flashrnn's GRU takes 4 bias vectors
            b = torch.cat([b, torch.zeros_like(b[:1])], dim=0)
        h, last_h = flashrnn(wx, R, b, function=cell, dtype=dtype)
        out = h[0, :, :, 0, :].transpose(0, 1)  # [T, B, H]
        states = tuple(last_h[s, :, -1, 0, :].unsqueeze(0)
                       for s in range(2 if cell == "lstm" else 1))
        return (out,) + states

    return forward


def build_impls(names, cell, I, H, layers, directions, dtype, device, clip: ClipConfig,
                fusedrnn):
    """Instantiate the requested implementations with identical weights.

    The fused module (when requested) is built first and its state_dict is loaded into all
    others; otherwise torch.nn's initialisation is the source. Construction errors are
    returned per implementation instead of aborting the run.
    """
    nn_cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    ctor = dict(num_layers=layers, bidirectional=directions == 2, device=device, dtype=dtype)
    modules, errors = {}, {}
    for name in names:
        try:
            if name == "fused":
                modules[name] = getattr(fusedrnn, cell.upper())(I, H, **ctor)
            elif name == "fused_clip":
                modules[name] = getattr(fusedrnn, cell.upper())(I, H, **ctor, **clip.kwargs())
            elif name == "fused_track":
                modules[name] = getattr(fusedrnn, cell.upper())(I, H, **ctor,
                                                                track_grad_norms=True)
            elif name == "fused_clip_track":
                modules[name] = getattr(fusedrnn, cell.upper())(I, H, **ctor, **clip.kwargs(),
                                                                track_grad_norms=True)
            else:  # torchnn, and the parameter container of reference and flashrnn
                modules[name] = nn_cls(I, H, **ctor)
        except Exception as exc:  # recorded and reported, never swallowed
            errors[name] = f"construction failed: {describe(exc)}"

    source = modules.get("fused") or next(iter(modules.values()), None)
    impls = []
    for name, module in modules.items():
        if module is not source:
            try:
                module.load_state_dict(source.state_dict())
            except Exception as exc:
                errors[name] = f"load_state_dict failed: {describe(exc)}"
                continue
        if name == "reference":
            forward = _reference_forward(fusedrnn.reference, module, cell, layers, directions,
                                         clip)
            impls.append(Impl(name, forward, list(module.parameters()), kind="reference"))
        elif name == "flashrnn":
            dtype_name = {v: k for k, v in DTYPES.items()}[dtype]
            try:
                forward = _flashrnn_forward(module, cell, dtype_name)
            except Exception as exc:
                errors[name] = f"flashrnn wrapper failed: {describe(exc)}"
                continue
            impls.append(Impl(name, forward, list(module.parameters())))
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

    out = {**case.fields(), "lengths": list(case.lengths) if case.packed else None}
    for mode in MODES:
        out[f"{mode}_vs_torchnn"] = ratio(mode, BASELINE, "fused")
    for mode in ("fwd", "bwd", "fwdbwd"):
        r = ratio(mode, "fused_clip", "fused")
        out[f"clip_overhead_{mode}_pct"] = (
            {"median": (r["median"] - 1) * 100, "iqr": r["iqr"] * 100} if r else None)
    for mode in ("bwd", "fwdbwd"):
        for tracked, plain in (("fused_track", "fused"), ("fused_clip_track", "fused_clip")):
            r = ratio(mode, tracked, plain)
            out[f"track_overhead_{plain}_{mode}_pct"] = (
                {"median": (r["median"] - 1) * 100, "iqr": r["iqr"] * 100} if r else None)
    out["fwdbwd_vs_reference"] = ratio("fwdbwd", "reference", "fused_clip")
    for mode in ("fwdbwd", "infer"):
        out[f"{mode}_vs_flashrnn"] = ratio(mode, "flashrnn", "fused")
    return out


# Fields that identify a configuration apart from its batch layout (padded / packed).
CONFIG_KEYS = ("cell", "T", "B", "I", "H", "layers", "directions", "dtype", "device")


def packed_vs_padded(summaries, rows):
    """Per-token comparison of every configuration that ran both padded and packed.

    For each mode and impl present in both: (median_padded / (T * B)) /
    (median_packed / sum(lengths)), > 1 when a real token costs less in the packed batch
    than a token of the padded one. The two cases ran one after the other, not interleaved,
    so this is a ratio of medians, not a paired ratio; the same ratio of the minimum times
    is given as a check ("min"). Also carries each case's paired train-step / infer ratios
    vs torch.nn."""
    def key(d):
        return tuple(d[k] for k in CONFIG_KEYS)

    by_case = {(key(s), s["packed"]): s for s in summaries}
    by_row = {(key(r), r["packed"], r["mode"], r["impl"]): r for r in rows}
    out = []
    for (k, packed), s_packed in by_case.items():
        s_padded = by_case.get((k, False))
        if not packed or s_padded is None:
            continue
        entry = {**{name: s_packed[name] for name in CONFIG_KEYS},
                 "tokens_padded": s_padded["tokens"], "tokens_packed": s_packed["tokens"],
                 "lengths": s_packed["lengths"], "per_token": {}}
        for mode in MODES:
            entry[f"{mode}_vs_torchnn_padded"] = s_padded[f"{mode}_vs_torchnn"]
            entry[f"{mode}_vs_torchnn_packed"] = s_packed[f"{mode}_vs_torchnn"]
            for impl in IMPLS:
                a = by_row.get((k, False, mode, impl))
                b = by_row.get((k, True, mode, impl))
                if a is None or b is None:
                    continue
                entry["per_token"].setdefault(mode, {})[impl] = {
                    stat: (a[f"{stat}_ms"] / a["tokens"]) / (b[f"{stat}_ms"] / b["tokens"])
                    for stat in ("median", "min")}
        out.append(entry)
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


def _busy_cpu_seconds() -> Optional[float]:
    """CPU seconds all processes have spent busy since boot (/proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
        ticks = [int(v) for v in fields]
    except (OSError, ValueError, IndexError):
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """CPU time that *other* processes used while the benchmark ran: the machine's busy CPU
    seconds (/proc/stat) minus this process's own (all its threads). The load average cannot
    tell them apart: a run with 2 threads on 2 cores reads ~2 by itself."""

    def __init__(self):
        self.wall0 = time.perf_counter()
        self.busy0 = _busy_cpu_seconds()
        self.own0 = time.process_time()

    def cores(self) -> Optional[float]:
        """Average number of cores other processes kept busy since construction."""
        busy = _busy_cpu_seconds()
        wall = time.perf_counter() - self.wall0
        if busy is None or self.busy0 is None or wall <= 0:
            return None
        others = (busy - self.busy0) - (time.process_time() - self.own0)
        return round(max(others, 0.0) / wall, 2)


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


_CONFIG_COLUMNS = [
    ("cell", "---", lambda s: s["cell"]),
    ("T", "--:", lambda s: str(s["T"])),
    ("B", "--:", lambda s: str(s["B"])),
    ("I", "--:", lambda s: str(s["I"])),
    ("H", "--:", lambda s: str(s["H"])),
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
        def cell(c):
            r = c["per_token"].get(mode, {}).get(impl)
            return "–" if r is None else f"{r['median']:.2f}× (min {r['min']:.2f}×)"
        return cell

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
"vs flashrnn" (CUDA, when flashrnn imports; untested wrapper) = flashrnn time / fused time.
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
                        "B=1,8,16; issue3 = the headline shape with 2 layers, "
                        "bidirectional, padded and packed batches, modes fwdbwd and infer "
                        "(fwdbwd: fused, fused_clip, torchnn, reference; infer: fused, "
                        "torchnn). --T/--B/--I/--H replace the grid's shapes (issue3 keeps "
                        "its other settings)." % (HEADLINE, FASTRNNS))
    for letter, default, what in (("T", HEADLINE[0], "sequence length"),
                                  ("B", HEADLINE[1], "batch size"),
                                  ("I", HEADLINE[2], "input size"),
                                  ("H", HEADLINE[3], "hidden size")):
        p.add_argument(f"--{letter}", nargs="+", type=int, default=None,
                       help=f"{what}(s); replaces the shapes of --grid, the other "
                            f"letters default to the headline shape ({default})")
    p.add_argument("--layers", type=int, default=None,
                   help="num_layers (default 1; the issue3 grid: 2)")
    p.add_argument("--bidirectional", action="store_true",
                   help="bidirectional=True (h0 [L*2, B, H], output [T, B, 2H]); always on "
                        "in the issue3 grid")
    p.add_argument("--packed", action="store_true",
                   help="packed batch: lengths uniform in [ceil(T/4), T] (longest = T, "
                        "seed --seed), a PackedSequence for fused/torchnn, padded tensor + "
                        "lengths for the reference. The issue3 grid runs padded and packed")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--modes", nargs="+", choices=MODES, default=None,
                   help="default: all (the issue3 grid: fwdbwd infer)")
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=None,
                   help="for every mode; default: all but flashrnn, which is added on "
                        "CUDA when the flashrnn package imports (the issue3 grid: per "
                        "mode, see --grid)")
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
    # flashrnn (UNTESTED wrapper): by default on CUDA when it imports; asked for explicitly,
    # it is dropped with a note where it cannot run.
    wants_flashrnn = args.impls is None or "flashrnn" in args.impls
    if wants_flashrnn and device.type == "cuda":
        if flashrnn_available():
            if args.impls is None:
                for names in plan["mode_impls"].values():
                    names.append("flashrnn")
        else:
            notes.append("flashrnn: the package does not import here, not compared")
    elif args.impls is not None and "flashrnn" in args.impls:
        notes.append("flashrnn: CUDA only, not run on this device")
    if not (device.type == "cuda" and flashrnn_available()):
        for names in plan["mode_impls"].values():
            if "flashrnn" in names:
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
