"""Single-layer, single-direction autograd ops over the compiled kernels.

``lstm_layer`` and ``gru_layer`` are the public entry points (the modules are thin
compositions of them). They call ``torch.ops.fusedrnn.lstm_layer`` / ``gru_layer``, ops
registered in C++ (schemas in csrc/ops.cpp) with CPU and CUDA kernels and their autograd
formula in C++ (csrc/autograd.cpp, Note [Autograd of the layer ops]): a forward or backward
call runs no Python beyond the small wrappers below. This module holds the ops' fake (meta)
kernels, so ``torch.library.opcheck`` passes and ``torch.compile(fullgraph=True)`` traces
them, forward and backward, without a graph break.

Shapes use T steps, B batch, I input, H hidden, P projection, R = P with projection else H.
The full contract (lengths, reverse, clipping and truncation semantics) is in
docs/ops_api.md and docs/design.md §2-3; ``fusedrnn.reference`` is the same math in plain PyTorch.
"""
import numbers
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import export as _export
from ._options import check_options

try:
    from . import _C
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        "fusedrnn: the compiled extension fusedrnn._C could not be imported "
        f"({exc}). Build it from the repository root with\n"
        "    pip install --no-build-isolation -e .\n"
        "(torch must be installed first; see README.md)."
    ) from exc

__all__ = ["lstm_layer", "gru_layer", "new_grad_record"]

Lengths = Union[Tensor, Sequence[int], None]


def _lengths_tensor(lengths: Lengths) -> Optional[Tensor]:
    """Per-sequence lengths as an int64 CPU tensor (from an integer tensor on any real device,
    or a sequence of ints); the C++ checks then validate shape and range."""
    if lengths is None:
        return None
    if isinstance(lengths, Tensor):
        if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
            raise TypeError(f"fusedrnn: lengths must be an integer tensor, got dtype {lengths.dtype}")
        if lengths.device.type == "meta":
            raise RuntimeError("fusedrnn: lengths must be a CPU tensor (values are needed), "
                               "got a meta tensor")
        return lengths.to(device="cpu", dtype=torch.int64)
    if isinstance(lengths, (str, bytes)) or not hasattr(lengths, "__iter__"):
        raise TypeError("fusedrnn: lengths must be an int64 tensor or a sequence of ints, got "
                        f"{type(lengths).__name__}")
    values = list(lengths)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"fusedrnn: lengths must hold ints, got {v!r} of type {type(v).__name__}")
    return torch.tensor(values, dtype=torch.int64)


def _check_batch_sizes(batch_sizes: Optional[Tensor]) -> None:
    """What Python must know before reading batch_sizes[0]; the C++ checks do the rest."""
    if batch_sizes is None:
        return
    if not isinstance(batch_sizes, Tensor):
        raise TypeError("fusedrnn: batch_sizes must be an int64 CPU tensor (PackedSequence."
                        f"batch_sizes), got {type(batch_sizes).__name__}")
    if batch_sizes.device.type != "cpu":
        raise RuntimeError(f"fusedrnn: batch_sizes must be a CPU tensor, got {batch_sizes.device}")
    if batch_sizes.dtype != torch.int64:
        raise TypeError(f"fusedrnn: batch_sizes must be an int64 tensor, got {batch_sizes.dtype}")
    if batch_sizes.dim() != 1 or batch_sizes.numel() == 0:
        raise ValueError("fusedrnn: batch_sizes must be 1-D with at least one step, got shape "
                         f"{tuple(batch_sizes.shape)}")


def _check_devices(op: str, input: Tensor, tensors, index_tensors) -> None:
    """Device agreement, checked in the fake kernels too: with one meta tensor among CPU
    tensors the dispatcher runs the fake kernel, which must not return made-up values."""
    for name, t in tensors:
        if t is not None and t.device != input.device:
            raise RuntimeError(f"fusedrnn.{op}: {name} must be on the same device as input "
                               f"({input.device}), got {t.device}")
    for name, t in index_tensors:
        if t is not None and t.device.type != "cpu":
            raise RuntimeError(f"fusedrnn.{op}: {name} must be a CPU tensor, got {t.device}")


def _normalized_options(grad_clip, grad_clip_mode, truncate, cell_clip=None):
    check_options(grad_clip, grad_clip_mode, truncate, cell_clip)
    return (
        None if grad_clip is None else float(grad_clip),
        None if truncate is None else int(truncate),
        None if cell_clip is None else float(cell_clip),
    )


def _batch_and_rows(input: Tensor, h0: Optional[Tensor], batch_sizes: Optional[Tensor]):
    """For the fake kernels: (B, leading shape of per-step tensors). Padded input [T, B, I]
    -> (B, (T, B)); packed input [N, I] -> (B, (N,)) with B = h0.shape[0], or, without h0,
    batch_sizes[0]: a data-dependent size (the wrappers always pass h0 with batch_sizes)."""
    if batch_sizes is None:
        return input.shape[1], (input.shape[0], input.shape[1])
    if h0 is not None:
        return h0.shape[0], (input.shape[0],)
    return torch.library.get_ctx().new_dynamic_size(), (input.shape[0],)


def _packed_states(input: Tensor, batch_sizes: Optional[Tensor], states, widths):
    """With batch_sizes (checked by the caller), initial states default to zeros here (the
    ops need them to know B)."""
    if batch_sizes is None:
        return states
    B = int(batch_sizes[0])
    return tuple(input.new_zeros(B, w) if s is None else s for s, w in zip(states, widths))


def _steps(input: Tensor, batch_sizes: Optional[Tensor]) -> int:
    return input.shape[0] if batch_sizes is None else batch_sizes.shape[0]


def new_grad_record(steps: int, device=None) -> Tensor:
    """A gradient record for ``grad_record=`` of :func:`lstm_layer` / :func:`gru_layer`: a
    zero float32 tensor [2, steps] that requires grad.

    After ``backward()`` its ``.grad`` holds, per time step t (time order), row 0: the L2
    norm over batch and hidden units of the recurrent gradient dh_rec_t (the gradient that
    flows into h_t from the next processed step, before clipping; docs/design.md §3), and row 1:
    the fraction of it that the clip changed (elements in mode "value", batch rows in mode
    "norm"; 0 without clipping). Steps without a recurrent gradient (each sequence's last
    processed step, truncation points) record 0. ``steps`` is T (padded input) or
    ``len(batch_sizes)`` (packed). Like any gradient, a second backward through the same
    graph adds to it.
    """
    if isinstance(steps, torch.SymInt):
        # A traced length (torch.export / torch.compile with a dynamic T): the op checks the
        # record's shape against the input's when it runs.
        return torch.zeros(2, steps, dtype=torch.float32, device=device, requires_grad=True)
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"fusedrnn: steps must be a positive int, got {steps!r}")
    return torch.zeros(2, int(steps), dtype=torch.float32, device=device, requires_grad=True)


def _check_grad_record(op: str, record: Optional[Tensor], input: Tensor,
                       batch_sizes: Optional[Tensor]) -> None:
    if record is None:
        return
    if not isinstance(record, Tensor):
        raise TypeError(f"fusedrnn.{op}: grad_record must be a tensor (see "
                        f"fusedrnn.ops.new_grad_record), got {type(record).__name__}")
    steps = _steps(input, batch_sizes)
    if record.dtype != torch.float32:
        raise TypeError(f"fusedrnn.{op}: grad_record must be float32, got {record.dtype}")
    if tuple(record.shape) != (2, steps):
        raise ValueError(f"fusedrnn.{op}: grad_record must have shape (2, T) = (2, {steps}), "
                         f"got {tuple(record.shape)}")
    if record.device != input.device:
        raise RuntimeError(f"fusedrnn.{op}: grad_record must be on the same device as input "
                           f"({input.device}), got {record.device}")
    if not record.requires_grad:
        raise ValueError(f"fusedrnn.{op}: grad_record must require grad (its .grad receives "
                         "the record); use fusedrnn.ops.new_grad_record")


# ---------------------------------------------------------------------------------------
# Fake (meta) kernels of the ops registered in csrc/ops.cpp


def _lstm_sizes(weight_hh: Tensor, weight_hr: Optional[Tensor]):
    H = weight_hh.shape[0] // 4
    return H, (H if weight_hr is None else weight_hr.shape[0])


def _lstm_check_devices(input, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, weight_hr,
                        lengths, batch_sizes, grad_record=None):
    _check_devices("lstm_layer", input,
                   [("weight_ih", weight_ih), ("weight_hh", weight_hh), ("bias_ih", bias_ih),
                    ("bias_hh", bias_hh), ("h0", h0), ("c0", c0), ("weight_hr", weight_hr),
                    ("grad_record", grad_record)],
                   [("lengths", lengths), ("batch_sizes", batch_sizes)])


@torch.library.register_fake("fusedrnn::lstm_layer")
def _lstm_layer_fake(input, weight_ih, weight_hh, bias_ih=None, bias_hh=None, h0=None, c0=None,
                     weight_hr=None, lengths=None, batch_sizes=None, reverse=False,
                     grad_clip=None, grad_clip_mode="value", truncate=None, cell_clip=None,
                     grad_record=None):
    _lstm_check_devices(input, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, weight_hr,
                        lengths, batch_sizes, grad_record)
    H, R = _lstm_sizes(weight_hh, weight_hr)
    B, rows = _batch_and_rows(input, h0, batch_sizes)
    new = input.new_empty
    return new(*rows, R), new(B, R), new(B, H)


@torch.library.register_fake("fusedrnn::lstm_layer_forward")
def _lstm_layer_forward_fake(input, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, weight_hr,
                             lengths, batch_sizes, reverse, cell_clip):
    _lstm_check_devices(input, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, weight_hr,
                        lengths, batch_sizes)
    H, R = _lstm_sizes(weight_hh, weight_hr)
    B, rows = _batch_and_rows(input, h0, batch_sizes)
    new = input.new_empty
    return (new(*rows, R), new(B, R), new(B, H), new(*rows, 4 * H), new(*rows, H),
            new(*rows, H) if weight_hr is not None else new(0))


@torch.library.register_fake("fusedrnn::lstm_layer_backward")
def _lstm_layer_backward_fake(grad_output, grad_h_n, grad_c_n, input, weight_ih, weight_hh,
                              weight_hr, h0, c0, lengths, batch_sizes, output, act, c_raw, h_pre,
                              reverse, grad_clip, grad_clip_mode, truncate, cell_clip, has_bias,
                              need_input_grad, need_weight_grad, track_grad_norms):
    I = input.shape[-1]
    H, R = _lstm_sizes(weight_hh, weight_hr)
    B, _ = _batch_and_rows(input, h0, batch_sizes)
    new = input.new_empty
    w = need_weight_grad
    return (
        new(input.shape) if need_input_grad else new(0),
        new(B, R),
        new(B, H),
        new(4 * H, I) if w else new(0),
        new(4 * H, R) if w else new(0),
        new(4 * H) if w and has_bias else new(0),
        new(R, H) if w and weight_hr is not None else new(0),
        _record_fake(input, batch_sizes, track_grad_norms),
    )


def _record_fake(input: Tensor, batch_sizes: Optional[Tensor], track: bool) -> Tensor:
    if not track:
        return input.new_empty(0)
    return input.new_empty(2, _steps(input, batch_sizes), dtype=torch.float32)


def _gru_check_devices(input, weight_ih, weight_hh, bias_ih, bias_hh, h0, lengths, batch_sizes,
                       grad_record=None):
    _check_devices("gru_layer", input,
                   [("weight_ih", weight_ih), ("weight_hh", weight_hh), ("bias_ih", bias_ih),
                    ("bias_hh", bias_hh), ("h0", h0), ("grad_record", grad_record)],
                   [("lengths", lengths), ("batch_sizes", batch_sizes)])


@torch.library.register_fake("fusedrnn::gru_layer")
def _gru_layer_fake(input, weight_ih, weight_hh, bias_ih=None, bias_hh=None, h0=None,
                    lengths=None, batch_sizes=None, reverse=False, grad_clip=None,
                    grad_clip_mode="value", truncate=None, grad_record=None):
    _gru_check_devices(input, weight_ih, weight_hh, bias_ih, bias_hh, h0, lengths, batch_sizes,
                       grad_record)
    H = weight_hh.shape[0] // 3
    B, rows = _batch_and_rows(input, h0, batch_sizes)
    return input.new_empty(*rows, H), input.new_empty(B, H)


@torch.library.register_fake("fusedrnn::gru_layer_forward")
def _gru_layer_forward_fake(input, weight_ih, weight_hh, bias_ih, bias_hh, h0, lengths,
                            batch_sizes, reverse):
    _gru_check_devices(input, weight_ih, weight_hh, bias_ih, bias_hh, h0, lengths, batch_sizes)
    H = weight_hh.shape[0] // 3
    B, rows = _batch_and_rows(input, h0, batch_sizes)
    new = input.new_empty
    return new(*rows, H), new(B, H), new(*rows, 4 * H)


@torch.library.register_fake("fusedrnn::gru_layer_backward")
def _gru_layer_backward_fake(grad_output, grad_h_n, input, weight_ih, weight_hh, h0, lengths,
                             batch_sizes, output, saved, reverse, grad_clip, grad_clip_mode,
                             truncate, has_bias, need_input_grad, need_weight_grad,
                             track_grad_norms):
    I = input.shape[-1]
    H = weight_hh.shape[0] // 3
    B, _ = _batch_and_rows(input, h0, batch_sizes)
    new = input.new_empty
    w = need_weight_grad
    return (
        new(input.shape) if need_input_grad else new(0),
        new(B, H),
        new(3 * H, I) if w else new(0),
        new(3 * H, H) if w else new(0),
        new(3 * H) if w and has_bias else new(0),
        new(3 * H) if w and has_bias else new(0),
        _record_fake(input, batch_sizes, track_grad_norms),
    )


# ---------------------------------------------------------------------------------------
# Public wrappers


_lstm_traceable = torch.ops.fusedrnn.lstm_layer.default
_gru_traceable = torch.ops.fusedrnn.gru_layer.default
_is_compiling = torch.compiler.is_compiling
_any_autocast = torch._C._is_any_autocast_enabled


# CPU bfloat16 / float16 (docs/design.md §4): the CPU kernels compute float32 and float64 only,
# so the wrappers run half-precision CPU calls in float32 (see _in_float32). The check is one
# dtype lookup on the float32/float64 path; CUDA half tensors go to their native kernels.
_HALF = frozenset((torch.bfloat16, torch.float16))
# Tensor arguments of the ops, in positional order (what _in_float32 casts).
_LSTM_TENSORS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "h0", "c0", "weight_hr")
_GRU_TENSORS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "h0")
_is_tracing = torch._C._is_tracing


def _lstm_op(input, *args):
    """torch.ops.fusedrnn.lstm_layer, positionally. A plain tensor outside torch.compile
    takes fusedrnn._C's direct entry (the same dispatcher op, ~5 us a call cheaper than the
    boxed torch.ops path); Dynamo, FX proxies and tensor subclasses get the torch.ops one.
    CPU half tensors and calls under CPU autocast run in float32 (_in_float32). While
    torch.jit.trace or torch.onnx.export records, fusedrnn.export computes it with ATen ops,
    ONNX nodes or a scan instead (docs/deployment.md)."""
    if input.dtype in _HALF or _any_autocast():
        out = _in_float32(_lstm_op, "lstm_layer", _LSTM_TENSORS, input, args)
        if out is not None:
            return out
    return _lstm_direct(input, *args)


def _lstm_direct(input, *args):
    """_lstm_op past its half-precision / autocast check (lstm_layer has made it)."""
    if type(input) is Tensor and not _is_compiling():
        if _is_tracing():  # torch.jit.trace, torch.onnx.export(dynamo=False): ATen ops
            return _export.lstm_op(input, *args)
        try:
            return _C.lstm_layer(input, *args)
        except TypeError as exc:
            _reword_dtype_error(exc)
            raise
    if _export.exporting():  # torch.onnx.export(dynamo=True): ONNX nodes or a scan
        return _export.lstm_op(input, *args)
    return _lstm_traceable(input, *args)


def _gru_op(input, *args):
    """torch.ops.fusedrnn.gru_layer, positionally (see _lstm_op)."""
    if input.dtype in _HALF or _any_autocast():
        out = _in_float32(_gru_op, "gru_layer", _GRU_TENSORS, input, args)
        if out is not None:
            return out
    return _gru_direct(input, *args)


def _gru_direct(input, *args):
    """_gru_op past its half-precision / autocast check (gru_layer has made it)."""
    if type(input) is Tensor and not _is_compiling():
        if _is_tracing():
            return _export.gru_op(input, *args)
        try:
            return _C.gru_layer(input, *args)
        except TypeError as exc:
            _reword_dtype_error(exc)
            raise
    if _export.exporting():
        return _export.gru_op(input, *args)
    return _gru_traceable(input, *args)


def _reword_dtype_error(exc: TypeError) -> None:
    """The C++ check's CPU dtype message, updated for the dtypes the wrappers add."""
    message = str(exc)
    if "on CPU input must be float32 or float64" in message:
        exc.args = (message.replace("float32 or float64", "float32, float64, bfloat16 or "
                                    "float16 (the half types computed in float32)"),)


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The autocast dtype when ``torch.autocast(device_type)`` is enabled, else None."""
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4: per-device-type spelling
        if not torch.is_autocast_enabled(device_type):
            return None
        return torch.get_autocast_dtype(device_type)
    if device_type == "cuda":
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None
    if not torch.is_autocast_cpu_enabled():
        return None
    return torch.get_autocast_cpu_dtype()


def _in_float32(op, name: str, names, input: Tensor, args, out_dtypes=None):
    """Run ``op`` (_lstm_op / _gru_op) in float32 on a CPU call the kernels cannot take
    as it is; None when the call is not such a call (the op then runs as it is).

    Two cases, both for CPU input only:
    * input bfloat16 / float16 with every tensor argument in that dtype: outputs in it too;
    * under ``torch.autocast("cpu")`` (input not float64): any mix of float32 and half
      tensors, as torch.nn accepts there; outputs in ``out_dtypes`` (``lstm_layer`` /
      ``gru_layer`` pass torch.nn's), else in the dtype torch.nn's cells return: the
      autocast dtype promoted with the dtype of the carried state (c0 / h0, or the input
      when None), since their state update runs in that promoted dtype.
    A half input among tensors of another dtype outside autocast is a RuntimeError naming
    the argument, as for any dtype mismatch. The casts are differentiable ``.float()`` /
    ``.to()`` calls (and traced by torch.compile), so each gradient comes back in its own
    tensor's dtype; the op itself sees float32 only. lengths, batch_sizes and the float32
    grad_record are not cast."""
    if not isinstance(input, Tensor) or input.device.type != "cpu":
        return None
    count = len(names)
    tensors = args[:count]
    dtype = input.dtype
    autocast = _autocast_dtype("cpu") if dtype != torch.float64 else None
    if autocast is not None:
        if out_dtypes is None:
            state = tensors[count - 2 if name == "lstm_layer" else count - 1]  # c0 / h0
            carried = (state if isinstance(state, Tensor) else input).dtype
            out_dtypes = (torch.promote_types(autocast, carried),) * 3

        def eligible(t):  # what autocast would cast: floating, not float64
            return t.is_floating_point() and t.dtype != torch.float64
    elif dtype in _HALF:
        for arg, t in zip(names, tensors):
            if isinstance(t, Tensor) and t.dtype != dtype:
                raise RuntimeError(f"fusedrnn.{name}: {arg} must have the same dtype as input "
                                   f"({dtype}), got {t.dtype}")
        out_dtypes = (dtype,) * 3

        def eligible(t):
            return True
    else:
        return None
    cast = [t.float() if isinstance(t, Tensor) and eligible(t) else t for t in tensors]
    x = input.float() if eligible(input) else input
    if autocast is None:
        outputs = op(x, *cast, *args[count:])
    else:
        # The CPU kernels call ATen matmuls, which autocast would run in its dtype.
        with torch.autocast("cpu", enabled=False):
            outputs = op(x, *cast, *args[count:])
    return tuple(o if o.dtype == d else o.to(d) for o, d in zip(outputs, out_dtypes))


def _autocast_cuda(input: Tensor, *tensors: Optional[Tensor]) -> Tuple[Optional[Tensor], ...]:
    """(input, *tensors), cast to the autocast dtype when ``input`` is a CUDA tensor inside
    ``torch.autocast("cuda")``, as torch.nn.LSTM / GRU run there; otherwise unchanged.

    The casts are ordinary differentiable ``.to()`` calls, so gradients come back in each
    tensor's own dtype, and the op itself only ever sees tensors of one dtype. Like autocast,
    float64 tensors (and None) are left alone; the gradient record stays float32 (it is not
    passed here)."""
    if not isinstance(input, Tensor) or not input.is_cuda:
        return (input,) + tensors
    dtype = _autocast_dtype("cuda")
    if dtype is None:
        return (input,) + tensors

    def cast(t: Optional[Tensor]) -> Optional[Tensor]:
        if (not isinstance(t, Tensor) or not t.is_floating_point() or t.dtype == torch.float64
                or t.dtype == dtype):
            return t
        return t.to(dtype)

    return tuple(cast(t) for t in (input,) + tensors)


def _autocast_cpu(input: Tensor, state: Optional[Tensor], onednn_layer: bool,
                  projected: bool = False):
    """Output dtypes of a layer under ``torch.autocast("cpu")`` for CPU input (None when
    autocast is off or the input is float64, which autocast leaves alone), as torch.nn's:
    its LSTM layer without projection on padded input runs oneDNN's RNN layer, which
    autocast runs wholly in the autocast dtype (``onednn_layer``: all outputs in it); its
    other layers (GRU, packed or projected LSTM) run matmuls in the autocast dtype and carry
    the state (c of LSTM, h of GRU) in that dtype promoted with the initial state's (or, when
    None, the input's): float32 for float32 input; a projected h (``projected``) comes from a
    matmul, in the autocast dtype. The call itself then computes in float32 (_in_float32)
    instead of rounding operands to the autocast dtype."""
    if input.device.type != "cpu" or input.dtype == torch.float64:
        return None
    dtype = _autocast_dtype("cpu")
    if dtype is None or onednn_layer:
        return None if dtype is None else (dtype, dtype, dtype)
    carried = torch.promote_types(dtype, (input if state is None else state).dtype)
    return (dtype, dtype, carried) if projected else (carried,) * 3


def lstm_layer(
    input: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Optional[Tensor] = None,
    bias_hh: Optional[Tensor] = None,
    h0: Optional[Tensor] = None,
    c0: Optional[Tensor] = None,
    *,
    weight_hr: Optional[Tensor] = None,
    lengths: Lengths = None,
    batch_sizes: Optional[Tensor] = None,
    reverse: bool = False,
    grad_clip: Optional[float] = None,
    grad_clip_mode: str = "value",
    truncate: Optional[int] = None,
    cell_clip: Optional[float] = None,
    grad_record: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer in one direction over a time-major sequence.

    Args:
        input: [T, B, I].
        weight_ih: [4H, I], weight_hh: [4H, R], bias_ih / bias_hh: [4H] or None (torch.nn
            layout, gates i, f, g, o).
        h0: [B, R] or None (zeros); c0: [B, H] or None (zeros).
        weight_hr: [P, H] projection (``proj_size`` of torch.nn.LSTM), or None.
        lengths: per-sequence lengths [B] (int tensor or sequence, 1 <= len <= T, any order);
            a row stops updating after its length and its outputs there are zero.
        batch_sizes: packed layout instead of padded: ``input`` is the ``data`` [N, I] of a
            ``PackedSequence`` and this its ``batch_sizes`` [T]; outputs are packed [N, R]
            the same way and h0 / c0 / h_n / c_n are in its sorted batch order. Every GEMM
            then covers real tokens only.
        reverse: run from the end of each sequence to its start.
        grad_clip, grad_clip_mode, truncate: clipping / truncation of the recurrent gradient
            inside BPTT (docs/design.md §3); the forward is unchanged.
        cell_clip: clamp the cell state to [-cell_clip, cell_clip] (forward and backward).
        grad_record: a float32 [2, T] tensor that requires grad (:func:`new_grad_record`);
            the backward writes the per-step norm of the recurrent gradient before clipping
            and the fraction the clip changed into its ``.grad``. None: nothing is recorded
            and nothing is computed for it.

    Returns:
        (output [T, B, R], h_n [B, R], c_n [B, H]).
    """
    # (The per-call checks are written out inline, and autocast is looked up once: each
    # Python call here costs about as much as a small kernel.)
    if (grad_clip is not None or truncate is not None or cell_clip is not None
            or grad_clip_mode != "value"):
        grad_clip, truncate, cell_clip = _normalized_options(grad_clip, grad_clip_mode,
                                                             truncate, cell_clip)
    autocast_cpu = None
    if _any_autocast():
        if input.is_cuda:
            input, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, weight_hr = _autocast_cuda(
                input, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, weight_hr)
        else:
            autocast_cpu = _autocast_cpu(input, c0, weight_hr is None and batch_sizes is None,
                                         weight_hr is not None)
    if lengths is not None:
        lengths = _lengths_tensor(lengths)
    if batch_sizes is not None:
        _check_batch_sizes(batch_sizes)
        H = weight_hh.shape[0] // 4
        h0, c0 = _packed_states(input, batch_sizes,
                                (h0, c0), (H if weight_hr is None else weight_hr.shape[0], H))
    if grad_record is not None:
        _check_grad_record("lstm_layer", grad_record, input, batch_sizes)
    # Positional: keyword arguments cost more per call (csrc/ops.cpp).
    args = (weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, weight_hr, lengths, batch_sizes,
            bool(reverse), grad_clip, grad_clip_mode, truncate, cell_clip, grad_record)
    if autocast_cpu is not None or input.dtype in _HALF:
        out = _in_float32(_lstm_op, "lstm_layer", _LSTM_TENSORS, input, args, autocast_cpu)
        if out is not None:
            return out
    return _lstm_direct(input, *args)


def gru_layer(
    input: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Optional[Tensor] = None,
    bias_hh: Optional[Tensor] = None,
    h0: Optional[Tensor] = None,
    *,
    lengths: Lengths = None,
    batch_sizes: Optional[Tensor] = None,
    reverse: bool = False,
    grad_clip: Optional[float] = None,
    grad_clip_mode: str = "value",
    truncate: Optional[int] = None,
    grad_record: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """One GRU layer in one direction over a time-major sequence.

    Args:
        input: [T, B, I].
        weight_ih: [3H, I], weight_hh: [3H, H], bias_ih / bias_hh: [3H] or None (torch.nn
            layout, gates r, z, n; "reset after" form as in torch.nn / cuDNN).
        h0: [B, H] or None (zeros).
        lengths, batch_sizes, reverse, grad_clip, grad_clip_mode, truncate, grad_record: as
            for :func:`lstm_layer`.

    Returns:
        (output [T, B, H], h_n [B, H]).
    """
    if grad_clip is not None or truncate is not None or grad_clip_mode != "value":
        grad_clip, truncate, _ = _normalized_options(grad_clip, grad_clip_mode, truncate)
    autocast_cpu = None
    if _any_autocast():  # (as in lstm_layer)
        if input.is_cuda:
            input, weight_ih, weight_hh, bias_ih, bias_hh, h0 = _autocast_cuda(
                input, weight_ih, weight_hh, bias_ih, bias_hh, h0)
        else:
            autocast_cpu = _autocast_cpu(input, h0, False)
    if lengths is not None:
        lengths = _lengths_tensor(lengths)
    if batch_sizes is not None:
        _check_batch_sizes(batch_sizes)
        (h0,) = _packed_states(input, batch_sizes, (h0,), (weight_hh.shape[0] // 3,))
    if grad_record is not None:
        _check_grad_record("gru_layer", grad_record, input, batch_sizes)
    args = (weight_ih, weight_hh, bias_ih, bias_hh, h0, lengths, batch_sizes, bool(reverse),
            grad_clip, grad_clip_mode, truncate, grad_record)
    if autocast_cpu is not None or input.dtype in _HALF:
        out = _in_float32(_gru_op, "gru_layer", _GRU_TENSORS, input, args, autocast_cpu)
        if out is not None:
            return out
    return _gru_direct(input, *args)


from . import _double_backward  # noqa: E402,F401  (kernels of the *_layer_grad ops)
