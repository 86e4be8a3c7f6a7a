"""Shared test utilities.

* seeded builders of op-style tensors (input, weights, biases, initial state);
* adapters that run ``torch.nn.LSTM`` / ``torch.nn.GRU`` with the op signature
  (``nn_lstm_layer`` / ``nn_gru_layer``), reverse direction and lengths included;
* ``forward_backward``: run any layer function, return outputs and every gradient;
* the precision rules: ``assert_tight`` (float64 against float64) and
  ``assert_close_by_reference`` (docs/design.md §4, "tolerance by comparison");
* whole modules: ``module_forward_backward`` (any torch.nn-style RNN or cell, every output
  and gradient) and ``ReferenceRNN`` / ``reference_stack`` (a multi-layer, bidirectional
  stack of fusedrnn.reference layers, options included, the way torch.nn stacks layers).

Shape letters: T steps, B batch, I input, H hidden, P projection, R = P or H.
"""

import math
import os
import subprocess
import sys
import time
import warnings

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import fusedrnn
import fusedrnn.ops as ops
from fusedrnn import reference

GATES = {"lstm": 4, "gru": 3}
REFERENCE = {"lstm": reference.lstm_layer, "gru": reference.gru_layer}

# Tensor arguments of each op, in signature order; weight_hr is keyword-only.
POSITIONAL = {
    "lstm": ("input", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "h0", "c0"),
    "gru": ("input", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "h0"),
}
KEYWORD_TENSORS = {"lstm": ("weight_hr",), "gru": ()}
OUTPUTS = {"lstm": ("output", "h_n", "c_n"), "gru": ("output", "h_n")}
F32, F64 = torch.float32, torch.float64


# ---------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------


def make_tensors(kind, T, B, I, H, P=0, *, bias=True, h0=True, dtype=torch.float64, seed=0,
                 weight_scale=1.0, input_scale=1.0):
    """Seeded random op-style tensors, as a dict name -> tensor (no requires_grad).

    Values are drawn in float64 and then rounded to ``dtype``, so a float32 case and the
    float64 reference built from ``t.double()`` see the very same numbers. Every tensor is
    always drawn (then dropped if not wanted), so switching bias/h0 off does not change the
    other values. Weights are uniform(-k, k) * weight_scale with k = 1/sqrt(H), as torch.nn.
    """
    G, R = GATES[kind], (P or H)
    if kind == "gru":
        assert P == 0, "GRU has no projection"
    gen = torch.Generator().manual_seed(seed)
    k = 1.0 / math.sqrt(H)

    def uniform(*shape, scale):
        return (torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1) * scale

    def normal(*shape, scale):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale

    t = {
        "input": normal(T, B, I, scale=input_scale),   # [T, B, I]
        "weight_ih": uniform(G * H, I, scale=k * weight_scale),  # [GH, I]
        "weight_hh": uniform(G * H, R, scale=k * weight_scale),  # [GH, R]
        "bias_ih": uniform(G * H, scale=k),  # [GH]
        "bias_hh": uniform(G * H, scale=k),  # [GH]
        "h0": normal(B, R, scale=0.5),  # [B, R]
    }
    if kind == "lstm":
        t["c0"] = normal(B, H, scale=0.5)  # [B, H]
        if P:
            t["weight_hr"] = uniform(P, H, scale=k)  # [P, H]
    if not bias:
        del t["bias_ih"], t["bias_hh"]
    if not h0:
        del t["h0"]
        t.pop("c0", None)
    return {name: v.to(dtype) for name, v in t.items()}


def cast(tensors, dtype):
    """The same dict with every tensor converted to dtype (detached, no requires_grad)."""
    return {name: v.detach().to(dtype) for name, v in tensors.items()}


def upstream_grads(outputs, seed=1234):
    """Seeded random gradients for a tuple of outputs, drawn on the CPU in float64 (the same
    for every device and dtype), then moved to each output's device and dtype."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(
        torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device, o.dtype)
        for o in outputs
    )


# ---------------------------------------------------------------------------------------
# Layouts: the same values seen through non-contiguous views (differentiable)
# ---------------------------------------------------------------------------------------


def _every_other(x, dim):
    """A non-contiguous view with the values of x: interleave zeros along dim, slice ::2."""
    y = torch.stack([x, torch.zeros_like(x)], dim=dim + 1).flatten(dim, dim + 1)
    return y[(slice(None),) * dim + (slice(None, None, 2),)]


def _transposed(x):
    """A non-contiguous view with the values of a 2-D x: column-major storage."""
    return x.t().contiguous().t()


def apply_layout(tensors, layout):
    """Return views of the tensors with the requested memory layout.

    None:         as given (contiguous)
    "slice":      input = x[:, ::2] of a [T, 2B, I] tensor, h0/c0 sliced ::2 in the last dim
                  (inner stride 2), weights sliced ::2 in the last dim
    "batch_first": input = a contiguous [B, T, I] tensor transposed to [T, B, I];
                  h0/c0 and weights stored column-major
    """
    if layout is None:
        return dict(tensors)
    out = {}
    for name, v in tensors.items():
        if layout == "slice":
            if name == "input":
                out[name] = _every_other(v, 1)
            elif v.dim() == 2:
                out[name] = _every_other(v, 1)
            else:
                out[name] = _every_other(v, 0)
        elif layout == "batch_first":
            if name == "input":
                out[name] = v.transpose(0, 1).contiguous().transpose(0, 1)
            elif v.dim() == 2:
                out[name] = _transposed(v)
            else:
                out[name] = v
        else:
            raise ValueError(f"unknown layout {layout!r}")
        assert torch.equal(out[name], v)
    return out


# ---------------------------------------------------------------------------------------
# Running a layer function
# ---------------------------------------------------------------------------------------


def call_layer(fn, kind, tensors, **kwargs):
    """fn(input, weight_ih, ...) with the op's argument layout; missing tensors are None."""
    args = [tensors.get(name) for name in POSITIONAL[kind]]
    for name in KEYWORD_TENSORS[kind]:
        if name in tensors:
            kwargs[name] = tensors[name]
    return fn(*args, **kwargs)


def forward_backward(fn, kind, tensors, *, layout=None, grad_seed=1234, device=None, **kwargs):
    """Run fn on leaf copies of tensors (on ``device`` if given) and backpropagate seeded
    random output gradients.

    Returns a dict of CPU tensors: "output", "h_n"[, "c_n"] and "grad_<name>" for every
    tensor argument.
    """
    leaves = {name: v.detach().to(device).clone().requires_grad_(True)
              for name, v in tensors.items()}
    outputs = call_layer(fn, kind, apply_layout(leaves, layout), **kwargs)
    assert len(outputs) == len(OUTPUTS[kind])
    grads = torch.autograd.grad(outputs, list(leaves.values()), upstream_grads(outputs),
                                allow_unused=True)
    result = {name: o.detach().cpu() for name, o in zip(OUTPUTS[kind], outputs)}
    for (name, leaf), g in zip(leaves.items(), grads):
        result["grad_" + name] = (torch.zeros_like(leaf) if g is None else g).detach().cpu()
    return result


# ---------------------------------------------------------------------------------------
# torch.nn with the op signature
# ---------------------------------------------------------------------------------------


def nn_param_names(kind, bias=True, proj=False, reverse=False):
    """torch.nn parameter names of layer 0 (of the reverse direction if reverse)."""
    sfx = "_reverse" if reverse else ""
    names = {"weight_ih": f"weight_ih_l0{sfx}", "weight_hh": f"weight_hh_l0{sfx}"}
    if bias:
        names.update(bias_ih=f"bias_ih_l0{sfx}", bias_hh=f"bias_hh_l0{sfx}")
    if proj:
        names["weight_hr"] = f"weight_hr_l0{sfx}"
    return names


def make_nn_module(kind, I, H, P=0, *, bias=True, bidirectional=False, dtype=torch.float64,
                   device=None):
    if kind == "lstm":
        return torch.nn.LSTM(I, H, bias=bias, bidirectional=bidirectional, proj_size=P,
                             dtype=dtype, device=device)
    assert P == 0
    return torch.nn.GRU(I, H, bias=bias, bidirectional=bidirectional, dtype=dtype,
                        device=device)


def copy_weights_into(module, tensors, reverse=False):
    """Copy op-style weights (weight_ih, weight_hh, bias_ih, bias_hh, weight_hr) into layer 0
    of a torch.nn.LSTM/GRU (its reverse direction if reverse). Returns the module."""
    names = nn_param_names("lstm" if isinstance(module, torch.nn.LSTM) else "gru",
                           bias=module.bias, proj=getattr(module, "proj_size", 0) > 0,
                           reverse=reverse)
    with torch.no_grad():
        for ours, theirs in names.items():
            getattr(module, theirs).copy_(tensors[ours])
    return module


def _nn_layer(kind, input, weights, h0, c0, lengths, reverse):
    """torch.nn run of one layer in one direction (on the input's device; cuDNN on CUDA),
    returning the op's outputs.

    The given tensors are substituted for the module's parameters with functional_call, so
    gradients flow back to them. reverse=True runs a bidirectional module and keeps its
    reverse half (the forward half gets the module's own, detached, random weights and does
    not reach the loss). lengths go through pack_padded_sequence(enforce_sorted=False).
    """
    T, B, I = input.shape
    H = weights["weight_ih"].shape[0] // GATES[kind]
    P = weights["weight_hr"].shape[0] if weights.get("weight_hr") is not None else 0
    R = P or H
    bias = weights.get("bias_ih") is not None
    assert bias == (weights.get("bias_hh") is not None), "torch.nn needs both biases or none"
    module = make_nn_module(kind, I, H, P, bias=bias, bidirectional=reverse, dtype=input.dtype,
                            device=input.device)
    params = {k: v.detach() for k, v in module.named_parameters()}
    for ours, theirs in nn_param_names(kind, bias, P > 0, reverse).items():
        params[theirs] = weights[ours]

    def state(s, width):  # [B, width] -> [D, B, width], zeros if None
        if s is None:
            s = input.new_zeros(B, width)
        return torch.stack([torch.zeros_like(s), s]) if reverse else s[None]

    hx = state(h0, R)
    if kind == "lstm":
        hx = (hx, state(c0, H))
    x = input if lengths is None else pack_padded_sequence(input, lengths, enforce_sorted=False)
    with warnings.catch_warnings():  # "LSTM with projections is not supported with oneDNN"
        warnings.simplefilter("ignore", UserWarning)
        out, hn = functional_call(module, params, (x, hx))
    if lengths is not None:
        out, _ = pad_packed_sequence(out, total_length=T)
    if reverse:
        out = out[..., R:]
    if kind == "lstm":
        return out, hn[0][-1], hn[1][-1]
    return out, hn[-1]


def nn_lstm_layer(input, weight_ih, weight_hh, bias_ih=None, bias_hh=None, h0=None, c0=None,
                  *, weight_hr=None, lengths=None, reverse=False):
    """torch.nn.LSTM with the signature of fusedrnn.ops.lstm_layer (no clip options)."""
    weights = dict(weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih, bias_hh=bias_hh,
                   weight_hr=weight_hr)
    return _nn_layer("lstm", input, weights, h0, c0, lengths, reverse)


def nn_gru_layer(input, weight_ih, weight_hh, bias_ih=None, bias_hh=None, h0=None, *,
                 lengths=None, reverse=False):
    """torch.nn.GRU with the signature of fusedrnn.ops.gru_layer."""
    weights = dict(weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih, bias_hh=bias_hh)
    return _nn_layer("gru", input, weights, h0, None, lengths, reverse)


TORCHNN = {"lstm": nn_lstm_layer, "gru": nn_gru_layer}


# ---------------------------------------------------------------------------------------
# Precision rules
# ---------------------------------------------------------------------------------------


def intel_cpu():
    """Whether this is an Intel CPU, as csrc/cpu/dispatch.cpp's intel_cpu() decides (Linux:
    /proc/cpuinfo's vendor); some of the library's rules depend on it."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("vendor_id") and "GenuineIntel" in line for line in f)
    except OSError:
        return False


def max_abs_err(a, b):
    """max |a - b| in float64 (0 for empty tensors)."""
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    if a.numel() == 0:
        return 0.0
    return (a.double() - b.double()).abs().max().item()


def _items(x):
    return x.items() if isinstance(x, dict) else [("tensor", x)]


def assert_close_by_reference(ours, torchnn, ref64, floor):
    """docs/design.md §4 "tolerance by comparison", per tensor:

        max|ours - ref64| <= 2 * max|torchnn - ref64| + floor

    ours, torchnn: results in the low-precision dtype; ref64: float64 reference computed from
    the same (rounded) values. Accepts tensors or dicts of tensors with the same keys.
    floor: an absolute number, or a function of the reference tensor returning one.
    """
    if isinstance(ref64, dict):
        assert set(ours) == set(ref64) == set(torchnn), (sorted(ours), sorted(torchnn),
                                                        sorted(ref64))
    failures = []
    for name, ref in _items(ref64):
        mine = ours[name] if isinstance(ours, dict) else ours
        base = torchnn[name] if isinstance(torchnn, dict) else torchnn
        assert ref.dtype == torch.float64, f"{name}: reference must be float64, got {ref.dtype}"
        assert mine.dtype == base.dtype, f"{name}: {mine.dtype} vs {base.dtype}"
        f = floor(ref) if callable(floor) else floor
        err_ours, err_base = max_abs_err(mine, ref), max_abs_err(base, ref)
        if not err_ours <= 2 * err_base + f:  # also catches nan
            failures.append(
                f"{name}: max|ours - ref64| = {err_ours:.3e} > 2 * max|torchnn - ref64| + floor"
                f" = 2 * {err_base:.3e} + {f:.3e} (max|ref64| = "
                f"{ref.abs().max().item() if ref.numel() else 0.0:.3e})"
            )
    assert not failures, "precision rule failed:\n  " + "\n  ".join(failures)


def relative_floor(scale):
    """A floor proportional to the reference magnitude: scale * max(1, max|ref|)."""
    def floor(ref):
        return scale * max(1.0, ref.abs().max().item() if ref.numel() else 0.0)
    return floor


FLOOR32 = relative_floor(2e-6)


def assert_tight(actual, expected, rtol=1e-9, atol=1e-10):
    """float64 against float64: close to rounding, per tensor (dicts: same keys).

    atol is scaled by max(1, max|expected|) so large gradients are compared relatively.
    """
    if isinstance(expected, dict):
        assert set(actual) == set(expected), (sorted(actual), sorted(expected))
    for name, exp in _items(expected):
        act = actual[name] if isinstance(actual, dict) else actual
        scale = max(1.0, exp.abs().max().item()) if exp.numel() else 1.0
        torch.testing.assert_close(act, exp, rtol=rtol, atol=atol * scale,
                                   msg=lambda m, name=name: f"{name}: {m}")


def max_diff(a, b):
    """Largest max|a[k] - b[k]| over the gradient entries of two result dicts."""
    return max(max_abs_err(a[k], b[k]) for k in a if k.startswith("grad_"))


# ---------------------------------------------------------------------------------------
# Whole modules: run one, and the layer-by-layer reference of a stack
# ---------------------------------------------------------------------------------------


def packed_meta(packed):
    """(batch_sizes, sorted_indices, unsorted_indices) of a PackedSequence, None if absent."""
    return packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices


def assert_same_packing(actual, expected):
    """Two PackedSequences (or two tensors) with the same batch_sizes and index permutations."""
    assert isinstance(actual, PackedSequence) == isinstance(expected, PackedSequence), (
        f"output type {type(actual).__name__} != {type(expected).__name__}")
    if not isinstance(expected, PackedSequence):
        return
    for name, a, e in zip(("batch_sizes", "sorted_indices", "unsorted_indices"),
                          packed_meta(actual), packed_meta(expected)):
        if e is None:
            assert a is None, f"{name}: expected None, got {a}"
        else:
            assert a is not None and torch.equal(a, e), f"{name}: {a} != {e}"


def module_forward_backward(module, leaves, build, grad_seed=1234, cell=False):
    """Run ``module(*build(leaves))`` and backpropagate seeded random output gradients.

    leaves: dict name -> leaf tensor (requires_grad): the caller's data (input, h0, c0);
    build:  leaves -> (input, hx): the module's arguments made from the leaves with
            differentiable operations (transposes, strided views, packing), so gradients
            reach the leaves whatever the layout.
    cell:   the module is a cell returning h or (h, c), not (output, state).

    Returns (results, output): results is a dict of detached CPU tensors, "out<i>" for every
    output tensor (the data of a packed output first, then h_n[, c_n]), "grad_<leaf>" for
    every leaf and "grad_<param>" for every named parameter (zeros where unused); output is
    the raw first output of a sequence module (for its PackedSequence metadata), or None.
    """
    input, hx = build(leaves)
    result = module(input, hx)
    if cell:
        first, states = None, tuple(result) if isinstance(result, tuple) else (result,)
    else:
        first, state = result
        states = tuple(state) if isinstance(state, tuple) else (state,)
    outputs = (() if first is None else
               (first.data if isinstance(first, PackedSequence) else first,)) + states
    params = dict(module.named_parameters())
    inputs = list(leaves.values()) + list(params.values())
    grads = torch.autograd.grad(outputs, inputs, upstream_grads(outputs, grad_seed),
                                allow_unused=True)
    results = {f"out{i}": o.detach().cpu() for i, o in enumerate(outputs)}
    for name, leaf, g in zip(list(leaves) + list(params), inputs, grads):
        results["grad_" + name] = (torch.zeros_like(leaf) if g is None else g).detach().cpu()
    return results, first


def _pack_like(padded, packed):
    """The rows of a zero-padded time-major [T, B, X] tensor (caller's batch order) as the
    data of a PackedSequence laid out like ``packed`` (same batch_sizes, sorted_indices)."""
    B = padded.shape[1]
    order = (packed.sorted_indices if packed.sorted_indices is not None
             else torch.arange(B))
    rows = [padded[t, order[:n]] for t, n in enumerate(packed.batch_sizes.tolist())]
    return PackedSequence(torch.cat(rows), packed.batch_sizes, packed.sorted_indices,
                          packed.unsorted_indices)


def reference_stack(kind, params, x, hx=None, *, num_layers, bidirectional, bias=True,
                    proj_size=0, lengths=None, **options):
    """A multi-layer, optionally bidirectional LSTM/GRU composed of fusedrnn.reference
    layers, the way torch.nn stacks them (no dropout):

    layer l's input is cat(forward output, reverse output) of layer l-1; the reverse
    direction uses reverse=True and the ``_reverse`` weights; h0/c0 index l * D + d;
    weight_hr for projection; ``lengths`` (per sequence) for every layer and direction.

    params: torch.nn parameter names -> tensors; x: [T, B, I] zero-padded, time-major;
    hx: None, h0 [L*D, B, R] (GRU) or (h0 [L*D, B, R], c0 [L*D, B, H]) (LSTM), either
    state may be None; lengths: int64 [B] or None; options: grad_clip, grad_clip_mode,
    truncate[, cell_clip].
    Returns (output [T, B, D*R] zero-padded, h_n [L*D, B, R][, c_n [L*D, B, H]]).
    """
    D = 2 if bidirectional else 1
    h0, c0 = (hx if isinstance(hx, tuple) else (hx, None))
    layer_input, h_n, c_n = x, [], []
    for layer in range(num_layers):
        outputs = []
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            k = layer * D + d
            args = [layer_input, params["weight_ih" + sfx], params["weight_hh" + sfx],
                    params["bias_ih" + sfx] if bias else None,
                    params["bias_hh" + sfx] if bias else None,
                    None if h0 is None else h0[k]]
            if kind == "lstm":
                args.append(None if c0 is None else c0[k])
                weight_hr = params["weight_hr" + sfx] if proj_size else None
                y, h, c = REFERENCE[kind](*args, weight_hr=weight_hr, lengths=lengths,
                                          reverse=bool(d), **options)
                c_n.append(c)
            else:
                y, h = REFERENCE[kind](*args, lengths=lengths, reverse=bool(d), **options)
            outputs.append(y)
            h_n.append(h)
        layer_input = torch.cat(outputs, dim=-1)
    if kind == "lstm":
        return layer_input, torch.stack(h_n), torch.stack(c_n)
    return layer_input, torch.stack(h_n)


class ReferenceRNN(torch.nn.Module):
    """A torch.nn-style module (tensor or PackedSequence input, batch_first, unbatched
    input, hx in the caller's batch order) computing ``reference_stack`` with the
    parameters of ``module`` (shared, so gradients land on the same tensors' names) and
    fusedrnn options ``options``. Dropout is not modelled (use eval mode or dropout=0)."""

    def __init__(self, kind, module, **options):
        super().__init__()
        self.kind, self.options = kind, options
        for attr in ("num_layers", "bidirectional", "bias", "batch_first", "proj_size",
                     "dropout"):
            setattr(self, attr, getattr(module, attr))
        for name, p in module.named_parameters():
            self.register_parameter(name, p)

    def forward(self, input, hx=None):
        assert not (self.training and self.dropout), "ReferenceRNN does not model dropout"
        packed = isinstance(input, PackedSequence)
        batched = packed or input.dim() == 3
        lengths = None
        if packed:
            x, lengths = pad_packed_sequence(input)  # [T, B, I], lengths in caller order
        elif not batched:
            x = input.unsqueeze(1)  # [T, I] -> [T, 1, I]
        else:
            x = input.transpose(0, 1) if self.batch_first else input
        if hx is not None and not batched:
            hx = tuple(h.unsqueeze(1) for h in hx) if isinstance(hx, tuple) else hx.unsqueeze(1)
        out, *state = reference_stack(
            self.kind, dict(self.named_parameters()), x, hx, num_layers=self.num_layers,
            bidirectional=self.bidirectional, bias=self.bias, proj_size=self.proj_size,
            lengths=lengths, **self.options)
        if not batched:
            out, state = out.squeeze(1), [s.squeeze(1) for s in state]
        elif packed:
            out = _pack_like(out, input)
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, (tuple(state) if self.kind == "lstm" else state[0])


# ---------------------------------------------------------------------------------------
# Shared by the test files: op cases, module pairs and inputs, subprocess runs
# ---------------------------------------------------------------------------------------


OPS = {"lstm": ops.lstm_layer, "gru": ops.gru_layer}


class Case:
    """One configuration: shapes, flags, lengths, memory layout."""

    def __init__(self, kind, T, B, I, H, P=0, *, bias=True, h0=True, reverse=False,
                 lengths=None, layout=None, weight_scale=1.0, input_scale=1.0):
        self.kind, self.T, self.B, self.I, self.H, self.P = kind, T, B, I, H, P
        self.bias, self.h0, self.reverse, self.lengths, self.layout = (bias, h0, reverse,
                                                                       lengths, layout)
        self.weight_scale, self.input_scale = weight_scale, input_scale

    def tensors(self, dtype):
        return make_tensors(self.kind, self.T, self.B, self.I, self.H, self.P, bias=self.bias,
                            h0=self.h0, dtype=dtype, weight_scale=self.weight_scale,
                            input_scale=self.input_scale)

    def kwargs(self):
        lengths = None if self.lengths is None else torch.tensor(self.lengths)
        return dict(reverse=self.reverse, lengths=lengths, layout=self.layout)

    def run(self, fn, dtype=F64, tensors=None, device=None, **options):
        """forward_backward of fn on this case (on ``device``; CPU results)."""
        tensors = self.tensors(dtype) if tensors is None else tensors
        return forward_backward(fn, self.kind, tensors, device=device, **self.kwargs(),
                                **options)

    def __repr__(self):
        parts = [f"{self.kind}", f"T{self.T}B{self.B}I{self.I}H{self.H}"]
        parts += [f"P{self.P}"] if self.P else []
        parts += [] if self.bias else ["no_bias"]
        parts += [] if self.h0 else ["no_h0"]
        parts += ["reverse"] if self.reverse else []
        parts += [f"len{''.join(map(str, self.lengths))}"] if self.lengths else []
        parts += [self.layout] if self.layout else []
        return "-".join(parts)


OP_VARIANTS = [("lstm", False), ("lstm", True), ("gru", False)]


CLASSES = {"lstm": (fusedrnn.LSTM, torch.nn.LSTM), "gru": (fusedrnn.GRU, torch.nn.GRU)}


KINDS = ["lstm", "gru"]


T1, B1, I1, H1 = 5, 3, 4, 6


def make_layer_pair(kind, dtype=F64, seed=0, options=None, **kwargs):
    """(fusedrnn module, torch.nn module) with identical parameters; options (grad_clip...)
    go to the fusedrnn module only."""
    ours_cls, nn_cls = CLASSES[kind]
    torch.manual_seed(seed)
    ours = ours_cls(I1, H1, dtype=dtype, **kwargs, **(options or {}))
    theirs = nn_cls(I1, H1, dtype=dtype, **kwargs)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def make_layer_input(kind, dtype=F64, batch_first=False, batched=True, with_hx=True, seed=1):
    """(x, hx) leaves with requires_grad; hx is None, a tensor (GRU) or a tuple (LSTM)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64).to(dtype).requires_grad_(True)

    if batched:
        x = randn(B1, T1, I1) if batch_first else randn(T1, B1, I1)
        state_shape = (1, B1, H1)
    else:
        x = randn(T1, I1)
        state_shape = (1, H1)
    hx = None
    if with_hx:
        hx = (randn(*state_shape), randn(*state_shape)) if kind == "lstm" else randn(*state_shape)
    return x, hx


def run_layer_module(module, x, hx):
    """Outputs and gradients (input, hx, every parameter) of one forward/backward."""
    out, state = module(x, hx)
    states = state if isinstance(state, tuple) else (state,)
    outputs = (out, *states)
    hx_leaves = [] if hx is None else list(hx) if isinstance(hx, tuple) else [hx]
    params = dict(module.named_parameters())
    leaves = [x, *hx_leaves, *params.values()]
    grads = torch.autograd.grad(outputs, leaves, upstream_grads(outputs))
    names = ["input"] + [f"hx{i}" for i in range(len(hx_leaves))] + list(params)
    result = {f"out{i}": o.detach() for i, o in enumerate(outputs)}
    result.update({"grad_" + n: g for n, g in zip(names, grads)})
    return result


def _stack_input(kind, num_layers=1, bidirectional=False, proj_size=0, seed=1):
    """(x [T, B, I], hx) leaves for a stack of num_layers * D layers (R = proj_size or H)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64).requires_grad_(True)

    LD = num_layers * (2 if bidirectional else 1)
    x = randn(T1, B1, I1)
    h = randn(LD, B1, proj_size or H1)
    return x, ((h, randn(LD, B1, H1)) if kind == "lstm" else h)


NN = {"LSTM": nn.LSTM, "GRU": nn.GRU, "LSTMCell": nn.LSTMCell, "GRUCell": nn.GRUCell}


T, B, I, H, P = 5, 4, 3, 4, 2


# variant -> (class name, proj_size)
VARIANTS = {"lstm": ("LSTM", 0), "gru": ("GRU", 0), "lstm_proj": ("LSTM", P)}


def fused(name):
    """fusedrnn.<name>, looked up at test time."""
    return getattr(fusedrnn, name)


def kind_of(name):
    return "lstm" if name.startswith("LSTM") else "gru"


def make_pair(name, input_size=I, hidden_size=H, *, seed=0, dtype=F64, options=None,
              **kwargs):
    """(fusedrnn module, torch.nn module) with the torch.nn module's parameters (strict
    load_state_dict); options (grad_clip, ...) go to the fusedrnn module only."""
    torch.manual_seed(seed)
    theirs = NN[name](input_size, hidden_size, dtype=dtype, **kwargs)
    ours = fused(name)(input_size, hidden_size, dtype=dtype, **kwargs, **(options or {}))
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def variant_pair(variant, **kwargs):
    name, proj = VARIANTS[variant]
    if proj:
        kwargs["proj_size"] = proj
    return make_pair(name, **kwargs)


def make_leaves(kind, *, L=2, D=1, proj=0, T=T, B=B, I=I, H=H, batched=True, with_hx=True,
                seed=1):
    """Seeded float64 leaves: "x" time-major [T, B, I] (or [T, I]) and, if with_hx,
    "h0" [L*D, B, R] (or [L*D, R]) and for LSTM "c0" [L*D, B, H]."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64).requires_grad_(True)

    leaves = {"x": randn(T, B, I) if batched else randn(T, I)}
    if with_hx:
        lead = (L * D, B) if batched else (L * D,)
        leaves["h0"] = randn(*lead, proj or H)
        if kind == "lstm":
            leaves["c0"] = randn(*lead, H)
    return leaves


def relayout(t, layout):
    """The values of t through a differentiable view with the requested memory layout."""
    if layout == "contiguous":
        out = t.contiguous()
    elif layout == "sliced":  # inner stride 2
        out = _every_other(t.contiguous(), t.dim() - 1)
    elif layout == "transposed":  # dims 0 and 1 swapped in storage
        out = t.transpose(0, 1).contiguous().transpose(0, 1)
    else:
        raise ValueError(layout)
    if layout != "contiguous" and t.numel() > 1:
        assert not out.is_contiguous()
    return out


def builder(kind, *, batch_first=False, layout="contiguous", lengths=None,
            lengths_as="tensor", enforce_sorted=False):
    """leaves -> (input, hx) in the module's format: batch_first, memory layout, packed."""

    def build(leaves):
        x = leaves["x"]
        if x.dim() == 3 and batch_first:
            x = x.transpose(0, 1)
        x = relayout(x, layout)
        states = [relayout(leaves[n], layout) for n in ("h0", "c0") if n in leaves]
        hx = None if not states else tuple(states) if kind == "lstm" else states[0]
        if lengths is not None:
            lens = torch.tensor(lengths) if lengths_as == "tensor" else list(lengths)
            x = pack_padded_sequence(x, lens, batch_first=batch_first,
                                     enforce_sorted=enforce_sorted)
        return x, hx

    return build


def compare(ours, theirs, leaves, build, cell=False):
    """Run both modules on the same leaves; assert equal outputs and gradients (float64)."""
    result, out = module_forward_backward(ours, leaves, build, cell=cell)
    expected, out_expected = module_forward_backward(theirs, leaves, build, cell=cell)
    if not cell:
        assert_same_packing(out, out_expected)
    assert_tight(result, expected)
    return result, expected


LENGTHS_UNSORTED = [3, 5, 1, 3]  # a tie, T itself and a length-1 sequence


CLIP_CONFIGS = {
    "lstm": ("LSTM", dict(num_layers=2, bidirectional=True, proj_size=P),
             dict(grad_clip=0.03, grad_clip_mode="norm", truncate=2, cell_clip=0.5)),
    "gru": ("GRU", dict(num_layers=2, bidirectional=True),
            dict(grad_clip=0.02, truncate=3)),
}


CELLS = ["LSTMCell", "GRUCell"]


def cell_leaves(kind, batched, with_hx, seed=3):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64).requires_grad_(True)

    lead = (B,) if batched else ()
    leaves = {"x": randn(*lead, I)}
    if with_hx:
        leaves["h0"] = randn(*lead, H)
        if kind == "lstm":
            leaves["c0"] = randn(*lead, H)
    return leaves


def cell_build(kind, layout="contiguous"):
    def build(leaves):
        x = leaves["x"]
        states = [leaves[n] for n in ("h0", "c0") if n in leaves]
        if layout == "sliced":
            x = _every_other(x, x.dim() - 1)
            states = [_every_other(s, s.dim() - 1) for s in states]
        hx = None if not states else tuple(states) if kind == "lstm" else states[0]
        return x, hx
    return build


STACK_CONFIGS = {
    "lstm_2l_bi_proj": ("LSTM", dict(num_layers=2, bidirectional=True, proj_size=P)),
    "gru_2l_bi": ("GRU", dict(num_layers=2, bidirectional=True)),
    "lstm_2l_nobias": ("LSTM", dict(num_layers=2, bias=False)),
    "gru_3l_bf_dropout": ("GRU", dict(num_layers=3, batch_first=True, dropout=0.25)),
}


FUSED = {"lstm": fusedrnn.LSTM, "gru": fusedrnn.GRU}


NN_CLASSES = {"lstm": nn.LSTM, "gru": nn.GRU}


def case_id(*parts):
    return "-".join(str(p) for p in parts)


MI, MH, ML, MD = 3, 4, 2, 2  # module input size, hidden size, layers, directions


MT, MB = 5, 3


def _module_pair(kind, proj=0, **kwargs):
    torch.manual_seed(0)
    extra = dict(proj_size=proj) if proj else {}
    ours = FUSED[kind](MI, MH, num_layers=ML, bidirectional=True, dtype=F64, **extra, **kwargs)
    theirs = NN_CLASSES[kind](MI, MH, num_layers=ML, bidirectional=True, dtype=F64, **extra)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _state(kind, shape, dtype=F64, c_shape=None, c_dtype=None, device="cpu"):
    h = torch.randn(*shape, dtype=dtype, device=device)
    if kind == "gru":
        return h
    c = torch.randn(*(c_shape or shape), dtype=c_dtype or dtype, device=device)
    return h, c


LD = ML * MD


def run_module(module, x, hx=None, lengths=None, batch_first=False, grad_seed=1234):
    """Forward + backward of a module on a leaf copy of x (padded, caller's layout), with
    seeded random upstream gradients on every output; lengths: pack (unsorted) first.
    Returns a dict: "out" (padded [T, B, *] or caller layout), "state<i>", "grad_x",
    "grad_<param>" (None where a parameter got no gradient) and "grad_hx<i>"."""
    x = x.detach().clone().requires_grad_(True)
    hx_leaves = []
    if hx is not None:
        hx_leaves = [h.detach().clone().requires_grad_(True)
                     for h in (hx if isinstance(hx, tuple) else (hx,))]
        hx = tuple(hx_leaves) if isinstance(hx, tuple) else hx_leaves[0]
    inp = x
    if lengths is not None:
        inp = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    out, state = module(inp, hx)
    if lengths is not None:
        out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=x.shape[
            1 if batch_first else 0])
    states = state if isinstance(state, tuple) else (state,)
    outputs = (out,) + tuple(states)
    params = [p for p in module.parameters() if p.requires_grad]
    leaves = [x] + hx_leaves + params
    grads = torch.autograd.grad(outputs, leaves, upstream_grads(outputs, grad_seed),
                                allow_unused=True)
    result = {"out": out.detach()}
    result.update({f"state{i}": s.detach() for i, s in enumerate(states)})
    result["grad_x"] = grads[0]
    result.update({f"grad_hx{i}": g for i, g in enumerate(grads[1:1 + len(hx_leaves)])})
    named = {id(p): n for n, p in module.named_parameters()}
    result.update({"grad_" + named[id(p)]: g for p, g in zip(params, grads[1 + len(hx_leaves):])})
    return result


TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


REPO = os.path.dirname(TESTS_DIR)


WORKER = os.path.join(TESTS_DIR, "_reliability_worker.py")


SUBPROCESS_TIMEOUT_S = 120


def _child_env(threads=1):
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               GLOO_SOCKET_IFNAME="lo", PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def _run_children(argvs, env, timeout=SUBPROCESS_TIMEOUT_S):
    """Start one ``python _reliability_worker.py *argv`` per argv, wait for all of them
    under one deadline, and kill whatever is still running on the way out (timeout, error
    or test failure). Fails with every child's output unless all exit with status 0."""
    procs = []
    try:
        for argv in argvs:
            procs.append(subprocess.Popen([sys.executable, WORKER, *argv], cwd=REPO, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        outputs, timed_out = [], False
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
                p.kill()
                out, _ = p.communicate(timeout=10)
            outputs.append(out.decode(errors="replace"))
        report = "\n".join(f"--- child {argv} (exit {p.returncode}) ---\n{out[-4000:]}"
                           for argv, p, out in zip(argvs, procs, outputs))
        assert not timed_out, f"child processes ran past {timeout} s:\n{report}"
        assert all(p.returncode == 0 for p in procs), f"a child process failed:\n{report}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)


def runtime_kernels(build, script):
    """The C++ module a benchmark script compiles at run time (`build()`), or a pytest skip
    where it cannot run here: no compiler, headers that do not compile, or a CPU without
    what its kernels need (`supported()` false). `script` names it in the skip message."""
    import shutil

    import pytest
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip(f"no C++ compiler on PATH: {script} compiles its kernels at run time")
    try:
        mod = build()
    except Exception as exc:  # missing headers, ninja, ...: not a bug of the script
        pytest.skip(f"{script}'s kernels do not compile here: {exc}")
    if not mod.supported():
        pytest.skip(f"{script} needs AVX-512")
    return mod
