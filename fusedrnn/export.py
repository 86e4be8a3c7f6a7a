"""Deployment paths: ONNX export, ``torch.jit.trace`` and ``torch.jit.script``.

The fused ops (``torch.ops.fusedrnn.*``) are unknown to ONNX and to TorchScript. While one
of those graph recorders runs, the modules and ops therefore compute with ATen's own RNN
ops, ONNX nodes or, where neither has an equivalent, a ``scan`` over time steps; the eager
path and ``torch.compile`` / ``torch.export.export`` (which keep the fused ops) are
untouched. docs/deployment.md is the user-facing account of what exports and what raises.

Which recorder runs:

- ``torch.jit.trace`` and the TorchScript-based ONNX exporter (``torch.onnx.export(...,
  dynamo=False)``) run the Python code on plain tensors with the tracer on
  (``torch._C._is_tracing()``, ~45 ns): the ATen ops (``aten::lstm``, ``aten::gru``,
  ``aten::lstm_cell``, ``aten::gru_cell``) are recorded, and the legacy exporter translates
  them to ONNX ``LSTM`` / ``GRU`` nodes.
- ``torch.onnx.export(..., dynamo=True)`` traces with ``torch.export`` (so
  ``torch.compiler.is_compiling()`` is True) and ``torch.onnx.is_in_onnx_export()`` is
  True. Each layer and direction becomes one ONNX ``LSTM`` / ``GRU`` node, written with
  ``torch.onnx.ops.symbolic_multi_out`` (not through ``aten.lstm``, whose export fixes the
  number of steps to the example's); ``lengths`` map to the node's ``sequence_lens``. What
  ONNX's LSTM cannot express (``cell_clip``, projection) is a
  ``torch._higher_order_ops.scan`` over the steps, which the exporter turns into an ONNX
  ``Scan``. The cells decompose into MatMul and pointwise nodes.

Both paths compute the forward the fused kernels compute (docs/design.md §2). ``grad_clip``,
``grad_clip_mode``, ``truncate`` and ``track_grad_norms`` act only in the backward: an
ONNX model has no backward, so they export as they are; a ``torch.jit.trace`` graph can be
trained, and there its backward is ATen's plain one, so tracing warns when they are set.
"""
import warnings
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["UnsupportedExportError", "exporting"]

_is_tracing = torch._C._is_tracing
_is_compiling = torch.compiler.is_compiling


class UnsupportedExportError(RuntimeError):
    """A fusedrnn feature that the running exporter / tracer cannot represent."""


def _in_onnx_export() -> bool:
    return torch.onnx.is_in_onnx_export()


def exporting() -> bool:
    """True while ``torch.jit.trace``, or ``torch.onnx.export`` (either exporter), records
    the model: fusedrnn then computes with ATen ops (see the module docstring). False in
    eager mode, under ``torch.compile`` and under ``torch.export.export``."""
    if _is_compiling():  # (Dynamo cannot call torch._C._is_tracing; it never traces)
        return _in_onnx_export()
    return _is_tracing()


def torch_exporting() -> bool:
    """True while ``torch.export`` traces the model (the fused ops stay in its graph); False
    in eager mode and under ``torch.compile``."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting is not None and is_exporting())


def _recorder() -> str:
    """'onnx' (torch.onnx.export, dynamo=True), 'onnx-legacy' (dynamo=False) or 'trace'."""
    if _is_compiling() or not _is_tracing():
        return "onnx"
    return "onnx-legacy" if _in_onnx_export() else "trace"


_RECORDER_NAMES = {
    "onnx": "torch.onnx.export(..., dynamo=True)",
    "onnx-legacy": "torch.onnx.export(..., dynamo=False)",
    "trace": "torch.jit.trace",
}


def _unsupported(what: str, recorder: str, hint: str,
                 torch_export: bool = True) -> UnsupportedExportError:
    tail = (" torch.export.export keeps the fused ops with every option." if torch_export
            else "")
    return UnsupportedExportError(
        f"fusedrnn: {what} cannot be recorded by {_RECORDER_NAMES[recorder]}. {hint}{tail} "
        "See docs/deployment.md.")


_DYNAMO_HINT = "torch.onnx.export(..., dynamo=True) exports it."


def _warn_backward_options(what: str, options: List[str]) -> None:
    """Under torch.jit.trace the recorded graph's backward is ATen's: say what it lacks."""
    if options:
        warnings.warn(
            f"fusedrnn: torch.jit.trace records {what} with torch's ATen ops; the traced "
            f"graph's backward does not apply {', '.join(options)} (the forward is the same). "
            "Train with the fusedrnn module itself, or torch.export.export, to keep them.",
            UserWarning, stacklevel=4)


def _backward_options(grad_clip, truncate, track=False) -> List[str]:
    opts = []
    if grad_clip is not None:
        opts.append("grad_clip")
    if truncate is not None:
        opts.append("truncate")
    if track:
        opts.append("track_grad_norms")
    return opts


# ---------------------------------------------------------------------------------------
# Modules: the whole stack of layers as one ATen call (fusedrnn.modules._FusedRNNBase._run)


def run_module(module, x: Tensor, batch_sizes: Optional[Tensor],
               states: Tuple[Optional[Tensor], ...]):
    """``module._run`` while :func:`exporting`: the layers and directions of an LSTM / GRU
    module as one ``aten::lstm`` / ``aten::gru`` call over its own parameters. x is
    time-major [T, B, I] (or packed data with batch_sizes), states are [L * D, B, *] or None.

    Under the dynamo ONNX exporter the layers and directions are separate layer ops
    instead (:func:`_per_layer`): ``aten.lstm`` would fix the number of steps there.

    Returns (output, finals) as ``_run`` does. Raises :class:`UnsupportedExportError` for
    what the recorder cannot represent.
    """
    recorder = _recorder()
    lstm = module.mode == "LSTM"
    name = type(module).__name__
    cell_clip = getattr(module, "cell_clip", None) if lstm else None
    if batch_sizes is not None and recorder == "onnx":
        check_packed(module)
    module._grad_records = []  # nothing to record: these graphs have no fused backward
    if recorder == "onnx":
        return _per_layer(module, x, states)
    if cell_clip is not None or (lstm and module.proj_size > 0):
        what = f"{name}(cell_clip=...)" if cell_clip is not None else f"{name}(proj_size=...)"
        if cell_clip is not None or recorder == "onnx-legacy":
            raise _unsupported(what, recorder, _DYNAMO_HINT)
    if recorder == "trace":
        _warn_backward_options(name, _backward_options(module.grad_clip, module.truncate,
                                                       module.track_grad_norms))
    params = module._parameters
    weights = [params[n] for n in module._flat_weights_names]
    layers, dirs = module.num_layers, (2 if module.bidirectional else 1)
    rows = layers * dirs
    # batch_sizes[0] stays a tensor, so that the tracer records it (as torch.nn.LSTM does)
    batch = x.size(1) if batch_sizes is None else batch_sizes[0]
    hidden = module.hidden_size
    real = module.proj_size if lstm and module.proj_size > 0 else hidden

    def zeros(size):
        return torch.zeros(rows, batch, size, dtype=x.dtype, device=x.device)

    h0 = states[0] if states[0] is not None else zeros(real)
    args = (module.bias, layers, float(module.dropout), module.training, module.bidirectional)
    if lstm:
        c0 = states[1] if states[1] is not None else zeros(hidden)
        if batch_sizes is None:
            y, h_n, c_n = torch._VF.lstm(x, (h0, c0), weights, *args, False)
        else:
            y, h_n, c_n = torch._VF.lstm(x, batch_sizes, (h0, c0), weights, *args)
        return y, [list(h_n.unbind(0)), list(c_n.unbind(0))]
    if batch_sizes is None:
        y, h_n = torch._VF.gru(x, h0, weights, *args, False)
    else:
        y, h_n = torch._VF.gru(x, batch_sizes, h0, weights, *args)
    return y, [list(h_n.unbind(0))]


def check_packed(module) -> None:
    """PackedSequence input to a module: torch.onnx.export(dynamo=True) cannot record it
    (its batch_sizes are data, and torch.export cannot size the steps by them); say so
    before torch.export fails on the first read of batch_sizes."""
    if _is_compiling() and _in_onnx_export():
        raise _unsupported(
            f"{type(module).__name__} with PackedSequence input", "onnx",
            "Export padded input instead: the modules compute every step for every "
            "sequence, and fusedrnn.ops.lstm_layer / gru_layer(..., lengths=) export "
            "per-sequence lengths (ONNX sequence_lens). torch.jit.trace and "
            "torch.onnx.export(..., dynamo=False) record PackedSequence input.",
            torch_export=False)


def _per_layer(module, x: Tensor, states):
    """The dynamo ONNX exporter: one layer op per layer and direction (each becomes an ONNX
    LSTM / GRU node, or a Scan for cell_clip / projection; see :func:`lstm_op`), as
    ``module._run`` composes them, without the gradient records."""
    finals: List[List[Tensor]] = [[] for _ in states]
    dirs = 2 if module.bidirectional else 1
    for layer in range(module.num_layers):
        if layer > 0 and module.dropout > 0 and module.training:
            x = F.dropout(x, p=module.dropout, training=True)
        outputs = []
        for direction in range(dirs):
            index = layer * dirs + direction
            init = [None if s is None else s[index] for s in states]
            y, *final = module._layer(x, module._weights(layer, direction), init, None,
                                      direction == 1, None)
            outputs.append(y)
            for store, value in zip(finals, final):
                store.append(value)
        x = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
    return x, finals


# ---------------------------------------------------------------------------------------
# Layer ops (fusedrnn.ops._lstm_op / _gru_op): one layer, one direction, or one cell step


def _zeros_bias(bias_ih, bias_hh):
    """Both biases or none (ATen's RNN ops take them as a pair)."""
    if bias_ih is None and bias_hh is None:
        return []
    if bias_ih is None:
        bias_ih = torch.zeros_like(bias_hh)
    if bias_hh is None:
        bias_hh = torch.zeros_like(bias_ih)
    return [bias_ih, bias_hh]


def _single_step(input: Tensor) -> bool:
    """A literal one-step input (the cells): not a symbolic length."""
    steps = input.shape[0]
    return type(steps) is int and steps == 1


def lstm_op(input, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, weight_hr, lengths,
            batch_sizes, reverse, grad_clip, grad_clip_mode, truncate, cell_clip, grad_record):
    """``torch.ops.fusedrnn.lstm_layer`` (same positional arguments and results) while
    :func:`exporting`."""
    recorder = _recorder()
    op = "fusedrnn.ops.lstm_layer"
    _check_layer(op, recorder, batch_sizes, lengths, cell_clip)
    if recorder == "trace":
        _warn_backward_options(op, _backward_options(grad_clip, truncate, grad_record is not None))
    if weight_hr is not None and recorder == "onnx-legacy":
        raise _unsupported(f"{op} with weight_hr (projection)", recorder, _DYNAMO_HINT)
    H = weight_hh.shape[0] // 4
    R = H if weight_hr is None else weight_hr.shape[0]
    B = input.shape[1]
    if h0 is None:
        h0 = input.new_zeros(B, R)
    if c0 is None:
        c0 = input.new_zeros(B, H)
    biases = _zeros_bias(bias_ih, bias_hh)
    if weight_hr is None and _single_step(input) and lengths is None and cell_clip is None:
        h, c = torch._VF.lstm_cell(input[0], (h0, c0), weight_ih, weight_hh, *biases)
        return h.unsqueeze(0), h, c
    if recorder == "onnx":
        if cell_clip is not None or weight_hr is not None:
            return _scan_lstm(input, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, weight_hr,
                              lengths, reverse, cell_clip)
        return _onnx_rnn("LSTM", input, weight_ih, weight_hh, biases, (h0, c0), lengths,
                         reverse)
    weights = [weight_ih, weight_hh] + biases + ([] if weight_hr is None else [weight_hr])
    x = input.flip(0) if reverse else input
    y, h_n, c_n = torch._VF.lstm(x, (h0.unsqueeze(0), c0.unsqueeze(0)), weights,
                                 bool(biases), 1, 0.0, False, False, False)
    return (y.flip(0) if reverse else y), h_n[0], c_n[0]


def gru_op(input, weight_ih, weight_hh, bias_ih, bias_hh, h0, lengths, batch_sizes, reverse,
           grad_clip, grad_clip_mode, truncate, grad_record):
    """``torch.ops.fusedrnn.gru_layer`` (same positional arguments and results) while
    :func:`exporting`."""
    recorder = _recorder()
    op = "fusedrnn.ops.gru_layer"
    _check_layer(op, recorder, batch_sizes, lengths, None)
    if recorder == "trace":
        _warn_backward_options(op, _backward_options(grad_clip, truncate, grad_record is not None))
    H = weight_hh.shape[0] // 3
    if h0 is None:
        h0 = input.new_zeros(input.shape[1], H)
    biases = _zeros_bias(bias_ih, bias_hh)
    if _single_step(input) and lengths is None:
        h = torch._VF.gru_cell(input[0], h0, weight_ih, weight_hh, *biases)
        return h.unsqueeze(0), h
    if recorder == "onnx":
        return _onnx_rnn("GRU", input, weight_ih, weight_hh, biases, (h0,), lengths, reverse)
    x = input.flip(0) if reverse else input
    y, h_n = torch._VF.gru(x, h0.unsqueeze(0), [weight_ih, weight_hh] + biases, bool(biases),
                           1, 0.0, False, False, False)
    return (y.flip(0) if reverse else y), h_n[0]


def _check_layer(op: str, recorder: str, batch_sizes, lengths, cell_clip) -> None:
    if batch_sizes is not None:
        raise _unsupported(
            f"{op} with batch_sizes (packed input)", recorder,
            "Pass PackedSequence input to the fusedrnn.LSTM / GRU module instead (torch.jit."
            "trace and dynamo=False record it), or padded input with lengths= "
            "(dynamo=True).")
    if recorder != "onnx":
        if lengths is not None:
            raise _unsupported(f"{op} with lengths", recorder,
                               "Pass a PackedSequence to the fusedrnn module, or export with "
                               "torch.onnx.export(..., dynamo=True).")
        if cell_clip is not None:
            raise _unsupported(f"{op} with cell_clip", recorder, _DYNAMO_HINT)


# ---------------------------------------------------------------------------------------
# ONNX LSTM / GRU nodes (dynamo ONNX exporter only)

# Gate blocks of torch's layout in ONNX's order: LSTM i,f,g,o -> i,o,f,c; GRU r,z,n -> z,r,h.
_ONNX_GATES = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2)}


def _onnx_gates(kind: str, w: Tensor) -> Tensor:
    """Rows of a weight [G*H, *] or bias [G*H] reordered to ONNX's gate order, with ONNX's
    leading num_directions axis (1)."""
    order = _ONNX_GATES[kind]
    H = w.shape[0] // len(order)
    # narrow (ONNX Slice), not chunk (Split): the exporter's optimiser folds Slices of the
    # weights into reordered initializers
    return torch.cat([w.narrow(0, k * H, H) for k in order], 0).unsqueeze(0)


def _onnx_rnn(kind, input, weight_ih, weight_hh, biases, states, lengths, reverse):
    """One layer in one direction as one ONNX ``LSTM`` / ``GRU`` node (opset 14
    semantics, written with ``torch.onnx.ops.symbolic_multi_out``): ONNX's node has
    ``sequence_lens`` with fusedrnn's semantics for ``lengths`` (outputs past a sequence's
    length are zero, its final state is the one at its length, reverse starts at its last
    step) and ``direction="reverse"``, and its step count stays symbolic. Torch's
    ``aten.lstm`` is not used here: its export fixes the number of steps to the example's.
    GRU: ``linear_before_reset=1`` is torch's "reset after" form."""
    T, B = input.shape[0], input.shape[1]
    H = weight_hh.shape[1] if kind == "GRU" else weight_hh.shape[0] // 4
    W = _onnx_gates(kind, weight_ih)
    R = _onnx_gates(kind, weight_hh)
    bias = torch.cat([_onnx_gates(kind, b) for b in biases], 1) if biases else None
    seq_lens = None if lengths is None else lengths.to(device=input.device, dtype=torch.int32)
    attrs = {"hidden_size": int(H), "direction": "reverse" if reverse else "forward"}
    if kind == "GRU":
        attrs["linear_before_reset"] = 1
    inputs = [input, W, R, bias, seq_lens] + [s.unsqueeze(0) for s in states]
    outs = torch.onnx.ops.symbolic_multi_out(
        kind, inputs, attrs, dtypes=[input.dtype] * (1 + len(states)),
        shapes=[[T, 1, B, H]] + [[1, B, H]] * len(states), version=14)
    return (outs[0].squeeze(1),) + tuple(o.squeeze(0) for o in outs[1:])


# ---------------------------------------------------------------------------------------
# Scans (dynamo ONNX exporter only): what ONNX's LSTM / GRU nodes cannot express


def _scan():
    try:
        from torch._higher_order_ops.scan import scan
    except ImportError as exc:  # pragma: no cover - depends on the torch version
        raise UnsupportedExportError(
            "fusedrnn: exporting cell_clip, projection or lengths to ONNX needs "
            f"torch._higher_order_ops.scan, which this torch ({torch.__version__}) lacks."
        ) from exc
    return scan


def _step_mask(input: Tensor, lengths: Optional[Tensor]) -> Optional[Tensor]:
    """[T, B, 1] bool: True where step t < lengths[b]."""
    if lengths is None:
        return None
    steps = torch.arange(input.shape[0], device=input.device).unsqueeze(1)
    return (steps < lengths.to(input.device).unsqueeze(0)).unsqueeze(-1)


def _scan_lstm(input, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, weight_hr, lengths,
               reverse, cell_clip):
    """One LSTM layer as a scan over steps, with the fused kernels' semantics (docs/design.md §2,
    docs/ops_api.md): a sequence past its length keeps its state and outputs zeros, and in
    reverse it starts from its own last step (the state is held until then)."""
    gx = F.linear(input, weight_ih, bias_ih)  # [T, B, 4H]: one GEMM for all steps
    mask = _step_mask(input, lengths)

    def step(carry, xs):
        h, c = carry
        gates = xs[0] + F.linear(h, weight_hh, bias_hh)
        i, f, g, o = gates.chunk(4, 1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        if cell_clip is not None:
            c_new = c_new.clamp(-cell_clip, cell_clip)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        if weight_hr is not None:
            h_new = F.linear(h_new, weight_hr)
        if mask is None:
            return (h_new, c_new), h_new.clone()
        m = xs[1]
        h_new = torch.where(m, h_new, h)
        return (h_new, torch.where(m, c_new, c)), torch.where(m, h_new, 0.0)

    xs = (gx,) if mask is None else (gx, mask)
    (h_n, c_n), y = _scan()(step, (h0, c0), xs, reverse=bool(reverse))
    return y, h_n, c_n


def _scan_gru(input, weight_ih, weight_hh, bias_ih, bias_hh, h0, lengths, reverse):
    """One GRU layer as a scan over steps (see :func:`_scan_lstm` for lengths)."""
    gx = F.linear(input, weight_ih, bias_ih)  # [T, B, 3H]
    mask = _step_mask(input, lengths)

    def step(h, xs):
        gi = xs[0]
        gh = F.linear(h, weight_hh, bias_hh)
        i_r, i_z, i_n = gi.chunk(3, 1)
        h_r, h_z, h_n = gh.chunk(3, 1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        h_new = n + z * (h - n)
        if mask is None:
            return h_new, h_new.clone()
        m = xs[1]
        h_new = torch.where(m, h_new, h)
        return h_new, torch.where(m, h_new, 0.0)

    xs = (gx,) if mask is None else (gx, mask)
    h_n, y = _scan()(step, h0, xs, reverse=bool(reverse))
    return y, h_n


# ---------------------------------------------------------------------------------------
# torch.jit.script: __prepare_scriptable__ of the modules


def _fusedrnn_class(module) -> bool:
    """The module is one of fusedrnn's own classes, not a user subclass (whose forward the
    torch.nn twin would drop)."""
    return type(module).__module__ == "fusedrnn.modules"


def prepare_scriptable(module):
    """``__prepare_scriptable__`` of the fusedrnn modules, which ``torch.jit.script`` calls
    before compiling: TorchScript cannot call the fused ops, so a module whose options all
    have their defaults is scripted as its torch.nn namesake holding the *same* Parameter
    objects (same results, torch's kernels; training the scripted module trains this one).
    A module with an option that changes the forward or the backward raises instead."""
    if not _fusedrnn_class(module):
        return module
    name = type(module).__name__
    options = []
    if isinstance(module, nn.RNNBase):
        options = _backward_options(module.grad_clip, module.truncate, module.track_grad_norms)
        if getattr(module, "cell_clip", None) is not None:
            options.insert(0, "cell_clip")
    if options:
        raise UnsupportedExportError(
            f"fusedrnn.{name} with {', '.join(options)} cannot be compiled by "
            "torch.jit.script: TorchScript cannot call the fused kernels, and torch.nn's "
            f"{name} has no such option. Alternatives: torch.export.export(model, args) "
            "keeps the fused ops and every option; torch.onnx.export(model, args, "
            "dynamo=True) for inference; torch.jit.trace(model, args) records torch's ATen "
            "ops (its backward has no clipping or truncation); fusedrnn.to_torch(module) "
            "gives the torch.nn module without the options, which scripts "
            "(docs/deployment.md).")
    return torch_twin(module)


def torch_twin(module):
    """The torch.nn module computing what ``module`` computes with default options, sharing
    its Parameter objects, training flag and hooks (fusedrnn.to_torch's rebuild of one
    module, without touching the model it sits in)."""
    from .conversion import TO_TORCH, _rebuild  # (conversion imports the modules)

    twin = _rebuild(module, TO_TORCH[type(module)])
    if twin is None:
        raise UnsupportedExportError(
            f"fusedrnn.{type(module).__name__}: its parameters, buffers or submodules are "
            "not those of its class, so it has no torch.nn equivalent to script")
    return twin
