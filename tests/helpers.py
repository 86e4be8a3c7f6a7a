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
import warnings

import torch
from torch.func import functional_call
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

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
    """Seeded random gradients for a tuple of outputs (drawn in float64, cast to each dtype)."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(
        torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype) for o in outputs
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


def forward_backward(fn, kind, tensors, *, layout=None, grad_seed=1234, **kwargs):
    """Run fn on leaf copies of tensors and backpropagate seeded random output gradients.

    Returns a dict: "output", "h_n"[, "c_n"] and "grad_<name>" for every tensor argument.
    """
    leaves = {name: v.detach().clone().requires_grad_(True) for name, v in tensors.items()}
    outputs = call_layer(fn, kind, apply_layout(leaves, layout), **kwargs)
    assert len(outputs) == len(OUTPUTS[kind])
    grads = torch.autograd.grad(outputs, list(leaves.values()), upstream_grads(outputs),
                                allow_unused=True)
    result = {name: o.detach() for name, o in zip(OUTPUTS[kind], outputs)}
    for (name, leaf), g in zip(leaves.items(), grads):
        result["grad_" + name] = torch.zeros_like(leaf) if g is None else g
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


def make_nn_module(kind, I, H, P=0, *, bias=True, bidirectional=False, dtype=torch.float64):
    if kind == "lstm":
        return torch.nn.LSTM(I, H, bias=bias, bidirectional=bidirectional, proj_size=P,
                             dtype=dtype)
    assert P == 0
    return torch.nn.GRU(I, H, bias=bias, bidirectional=bidirectional, dtype=dtype)


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
    """torch.nn run of one layer in one direction, returning the op's outputs.

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
    module = make_nn_module(kind, I, H, P, bias=bias, bidirectional=reverse, dtype=input.dtype)
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

    Returns (results, output): results is a dict of detached tensors, "out<i>" for every
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
    results = {f"out{i}": o.detach() for i, o in enumerate(outputs)}
    for name, leaf, g in zip(list(leaves) + list(params), inputs, grads):
        results["grad_" + name] = torch.zeros_like(leaf) if g is None else g
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
