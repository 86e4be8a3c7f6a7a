"""The implementations under test (fusedrnn modules with and without clipping, truncation
and track_grad_norms, torch.nn, the plain-PyTorch reference loop, and the untested
flashrnn wrapper), built with identical weights behind one (x, h0, c0) -> (out, h_n[, c_n])
interface."""

from __future__ import annotations

import dataclasses
import sys
from typing import Callable, Optional

import torch
from torch.nn.utils.rnn import PackedSequence

from .console import describe
from .machine import REPO_ROOT

CELLS = ("lstm", "gru")
IMPLS = ("fused", "fused_clip", "fused_track", "fused_clip_track", "torchnn", "reference",
         "flashrnn")
# The implementations run by default. flashrnn never is: its wrapper is untested and runs
# only when asked for by name (--impls flashrnn).
DEFAULT_IMPLS = ("fused", "fused_clip", "torchnn", "reference")
BASELINE = "torchnn"
DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


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
