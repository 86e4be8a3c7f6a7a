"""Deployment paths (docs/deployment.md): ONNX export with both exporters, checked with
onnxruntime at other batch sizes and sequence lengths than the example; torch.jit.trace
with its own checks; torch.jit.script; clear errors for what a path cannot represent; and
torch.export.export still keeping the fused ops.

The dynamo ONNX exports cost several seconds each, so each one here covers several
modules or options at once (five exports in all).
"""
import io
import logging
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.utils._pytree import tree_leaves

import fusedrnn
from fusedrnn import ops
from fusedrnn.export import UnsupportedExportError, exporting

ATOL = 1e-5


def _need_onnx():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    return pytest.importorskip("onnxruntime")


def _session(ort, model_bytes):
    options = ort.SessionOptions()
    options.log_severity_level = 3  # no shape-mismatch chatter on the declared output shapes
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _onnx_dynamo(model, args, dynamic_shapes):
    """torch.onnx.export(dynamo=True) without the exporter's progress and registry noise;
    returns the ONNXProgram."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.onnx.export(model, args, dynamo=True, dynamic_shapes=dynamic_shapes,
                                     verbose=False)
    finally:
        logger.setLevel(level)


def _check_runtime(ort, program, model, inputs_list):
    """Run the exported model in onnxruntime on each input tuple and compare every output
    with the eager fusedrnn model (the fused kernels)."""
    sess = _session(ort, program.model_proto.SerializeToString())
    names = [i.name for i in sess.get_inputs()]
    for inputs in inputs_list:
        feeds = dict(zip(names, (t.numpy() for t in tree_leaves(inputs))))
        got = sess.run(None, feeds)
        with torch.no_grad():
            want = tree_leaves(model(*inputs))
        assert len(got) == len(want)
        for g, w in zip(got, want):
            torch.testing.assert_close(torch.from_numpy(g), w, atol=ATOL, rtol=0)


def _op_types(program):
    return {node.op_type for node in program.model.graph}


def _dims():
    from torch.export import Dim
    return Dim("B", min=1, max=64), Dim("T", min=1, max=512)


# ---------------------------------------------------------------------------------------
# torch.onnx.export(dynamo=True)


class _Stack(nn.Module):
    """LSTM and GRU (2 layers, bidirectional, batch_first, initial states) with the
    backward-only options, which must export as the plain forward."""

    def __init__(self):
        super().__init__()
        self.lstm = fusedrnn.LSTM(4, 8, num_layers=2, bidirectional=True, batch_first=True,
                                  grad_clip=1.0, grad_clip_mode="norm", truncate=3,
                                  track_grad_norms=True)
        self.gru = fusedrnn.GRU(4, 6, num_layers=2, bidirectional=True, batch_first=True,
                                grad_clip=0.5, truncate=2)

    def forward(self, x, h0, c0, g0):
        y, (h, c) = self.lstm(x, (h0, c0))
        z, g = self.gru(x, g0)
        return y, h, c, z, g


def _stack_inputs(b, t):
    return (torch.randn(b, t, 4), torch.randn(4, b, 8), torch.randn(4, b, 8),
            torch.randn(4, b, 6))


def test_onnx_lstm_gru_dynamic_shapes():
    ort = _need_onnx()
    torch.manual_seed(0)
    model = _Stack().eval()
    B, T = _dims()
    state = {1: B}
    program = _onnx_dynamo(model, _stack_inputs(3, 5), ({0: B, 1: T}, state, state, state))
    types = _op_types(program)
    assert {"LSTM", "GRU"} <= types, types  # ONNX's own RNN nodes, not a step loop
    assert not any(node.domain.startswith("fusedrnn") for node in program.model.graph)
    _check_runtime(ort, program, model, [_stack_inputs(2, 7), _stack_inputs(5, 3),
                                         _stack_inputs(1, 1)])


class _Cells(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = fusedrnn.LSTMCell(4, 8)
        self.gru = fusedrnn.GRUCell(4, 8, bias=False)

    def forward(self, x, h0, c0):
        h, c = self.lstm(x, (h0, c0))
        g = self.gru(x, h0)
        h2, c2 = self.lstm(x)  # zero initial state
        return h, c, g, h2, c2


def test_onnx_cells():
    ort = _need_onnx()
    torch.manual_seed(0)
    model = _Cells().eval()
    B, _ = _dims()
    make = lambda b: (torch.randn(b, 4), torch.randn(b, 8), torch.randn(b, 8))  # noqa: E731
    program = _onnx_dynamo(model, make(3), ({0: B}, {0: B}, {0: B}))
    _check_runtime(ort, program, model, [make(2), make(6)])


class _Scanned(nn.Module):
    """What ONNX's LSTM node cannot express (cell_clip, projection) becomes an ONNX Scan;
    and unbatched (2-D) input."""

    def __init__(self):
        super().__init__()
        self.lstm = fusedrnn.LSTM(4, 8, num_layers=2, bidirectional=True, proj_size=3,
                                  cell_clip=0.25, grad_clip=1.0)
        self.gru = fusedrnn.GRU(4, 5, bidirectional=True)

    def forward(self, x, u):
        y, (h, c) = self.lstm(x)
        z, g = self.gru(u)
        return y, h, c, z, g


def test_onnx_cell_clip_projection_unbatched():
    ort = _need_onnx()
    torch.manual_seed(0)
    model = _Scanned().eval()
    B, T = _dims()
    make = lambda b, t: (torch.randn(t, b, 4), torch.randn(t + 1, 4))  # noqa: E731
    from torch.export import Dim
    program = _onnx_dynamo(model, make(3, 5), ({0: T, 1: B}, {0: Dim("U", min=1, max=512)}))
    assert "Scan" in _op_types(program)
    _check_runtime(ort, program, model, [make(2, 7), make(5, 2)])


class _Ops(nn.Module):
    """The layer ops directly, with per-sequence lengths (ONNX sequence_lens), reverse,
    options, no bias, and cell_clip + projection with lengths (a Scan)."""

    def __init__(self):
        super().__init__()
        self.plain = fusedrnn.LSTM(4, 8)
        self.lstm = fusedrnn.LSTM(4, 8, proj_size=3)
        self.gru = fusedrnn.GRU(4, 8)

    def forward(self, x, lengths):
        p, l, g = self.plain, self.lstm, self.gru
        w = (p.weight_ih_l0, p.weight_hh_l0, p.bias_ih_l0, p.bias_hh_l0)
        a = ops.lstm_layer(x, *w, lengths=lengths)
        b = ops.lstm_layer(x, *w, lengths=lengths, reverse=True, grad_clip=1.0, truncate=2)
        c = ops.gru_layer(x, g.weight_ih_l0, g.weight_hh_l0, g.bias_ih_l0, g.bias_hh_l0,
                          lengths=lengths, reverse=True)
        d = ops.lstm_layer(x, l.weight_ih_l0, l.weight_hh_l0, l.bias_ih_l0, l.bias_hh_l0,
                           weight_hr=l.weight_hr_l0, lengths=lengths, reverse=True,
                           cell_clip=0.2)
        e = ops.gru_layer(x, g.weight_ih_l0, g.weight_hh_l0, reverse=True)
        return a, b, c, d, e


def test_onnx_layer_ops_with_lengths():
    ort = _need_onnx()
    torch.manual_seed(0)
    model = _Ops().eval()
    B, T = _dims()

    def make(t, b):
        lengths = torch.randint(1, t + 1, (b,))
        lengths[0] = t
        return torch.randn(t, b, 4), lengths

    program = _onnx_dynamo(model, make(5, 3), ({0: T, 1: B}, {0: B}))
    assert {"LSTM", "GRU", "Scan"} <= _op_types(program)
    _check_runtime(ort, program, model, [make(7, 2), make(3, 5), make(6, 4)])


def test_onnx_packed_sequence_raises():
    _need_onnx()

    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = fusedrnn.LSTM(4, 8)

        def forward(self, x, lengths):
            return self.lstm(pack_padded_sequence(x, lengths, enforce_sorted=False))[1][0]

    with pytest.raises(Exception, match="PackedSequence input cannot be recorded by "
                                        r"torch.onnx.export\(..., dynamo=True\)"):
        _onnx_dynamo(Packed(), (torch.randn(5, 3, 4), torch.tensor([5, 2, 4])), None)


# ---------------------------------------------------------------------------------------
# torch.onnx.export(dynamo=False): the TorchScript-based exporter (jit tracing)


def _onnx_legacy(model, args, names, dynamic_axes):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, buf, dynamo=False, input_names=names,
                          dynamic_axes=dynamic_axes)
    return buf.getvalue()


def test_onnx_legacy_exporter():
    ort = _need_onnx()
    torch.manual_seed(0)
    model = _Stack().eval()
    names = ["x", "h0", "c0", "g0"]
    axes = {"x": {0: "B", 1: "T"}, "h0": {1: "B"}, "c0": {1: "B"}, "g0": {1: "B"}}
    sess = _session(ort, _onnx_legacy(model, _stack_inputs(3, 5), names, axes))
    for inputs in (_stack_inputs(2, 7), _stack_inputs(4, 2)):
        got = sess.run(None, {n: t.numpy() for n, t in zip(names, inputs)})
        with torch.no_grad():
            want = model(*inputs)
        for g, w in zip(got, want):
            torch.testing.assert_close(torch.from_numpy(g), w, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kwargs", [dict(cell_clip=0.5), dict(proj_size=3)])
def test_onnx_legacy_exporter_limits(kwargs):
    _need_onnx()
    model = fusedrnn.LSTM(4, 8, **kwargs)
    with pytest.raises(UnsupportedExportError, match=r"dynamo=True\) exports it"):
        _onnx_legacy(model, (torch.randn(5, 3, 4),), ["x"], None)


# ---------------------------------------------------------------------------------------
# torch.jit.trace


def _trace(model, example, check_inputs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and TracerWarnings of the input checks
        return torch.jit.trace(model, example, check_inputs=check_inputs)


def _assert_same(traced, model, inputs):
    with torch.no_grad():
        for g, w in zip(tree_leaves(traced(*inputs)), tree_leaves(model(*inputs))):
            torch.testing.assert_close(g, w, atol=ATOL, rtol=0)


def test_trace_modules_and_cells():
    torch.manual_seed(0)
    model = _Stack().eval()
    model.lstm.grad_clip = model.gru.grad_clip = None  # options: see the warning test
    model.lstm.truncate = model.gru.truncate = None
    model.lstm.track_grad_norms = False
    traced = _trace(model, _stack_inputs(3, 5), [_stack_inputs(2, 7)])
    graph = str(traced.inlined_graph)
    assert "aten::lstm" in graph and "aten::gru" in graph and "fusedrnn::" not in graph
    _assert_same(traced, model, _stack_inputs(4, 6))

    cells = _Cells().eval()
    make = lambda b: (torch.randn(b, 4), torch.randn(b, 8), torch.randn(b, 8))  # noqa: E731
    traced = _trace(cells, make(3), [make(5)])
    _assert_same(traced, cells, make(2))


def test_trace_packed_projection_unbatched():
    torch.manual_seed(0)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = fusedrnn.LSTM(4, 8, bidirectional=True, proj_size=3)
            self.gru = fusedrnn.GRU(4, 8)

        def forward(self, x, lengths, u):
            out, (h, c) = self.lstm(pack_padded_sequence(x, lengths, enforce_sorted=False))
            return pad_packed_sequence(out)[0], h, c, self.gru(u)[0]

    model = Model().eval()
    make = lambda t, lengths: (torch.randn(t, len(lengths), 4), torch.tensor(lengths),  # noqa
                               torch.randn(t, 4))
    traced = _trace(model, make(5, [5, 2, 4]), [make(6, [3, 6, 1, 2])])
    _assert_same(traced, model, make(4, [2, 4]))


def test_trace_layer_op_reverse():
    torch.manual_seed(0)
    w_ih, w_hh, b = torch.randn(24, 4), torch.randn(24, 6), torch.randn(24)

    def fn(x, h0):
        return ops.gru_layer(x, w_ih[:18], w_hh[:18], b[:18], None, h0, reverse=True)

    example = (torch.randn(5, 3, 4), torch.randn(3, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(fn, example, check_inputs=[(torch.randn(7, 2, 4),
                                                              torch.randn(2, 6))])
    _assert_same(traced, fn, (torch.randn(3, 4, 4), torch.randn(4, 6)))


def test_trace_warns_about_backward_options():
    model = fusedrnn.GRU(4, 8, grad_clip=1.0, truncate=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        with pytest.warns(UserWarning, match="backward does not apply grad_clip, truncate"):
            torch.jit.trace(model, (torch.randn(5, 3, 4),))


def test_trace_limits_raise():
    x = torch.randn(5, 3, 4)
    with pytest.raises(UnsupportedExportError, match=r"LSTM\(cell_clip=...\) cannot be "
                                                     "recorded by torch.jit.trace"):
        _trace(fusedrnn.LSTM(4, 8, cell_clip=1.0), (x,), None)
    w_ih, w_hh = torch.randn(32, 4), torch.randn(32, 8)
    with pytest.raises(UnsupportedExportError, match="lstm_layer with lengths"):
        _trace(lambda x: ops.lstm_layer(x, w_ih, w_hh, lengths=[5, 4, 2])[0], (x,), None)


# ---------------------------------------------------------------------------------------
# torch.jit.script


class _Holder(nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor):
        return self.rnn(x)


@pytest.mark.parametrize("make", [
    lambda: fusedrnn.LSTM(4, 8, num_layers=2, bidirectional=True, batch_first=True),
    lambda: fusedrnn.LSTM(4, 8, proj_size=3),
    lambda: fusedrnn.GRU(4, 8, num_layers=2, bias=False),
    lambda: fusedrnn.LSTMCell(4, 8),
    lambda: fusedrnn.GRUCell(4, 8),
], ids=["lstm", "lstm-proj", "gru", "lstm-cell", "gru-cell"])
def test_script_default_options(make):
    torch.manual_seed(0)
    rnn = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(_Holder(rnn))
    # the torch.nn twin holds the very same parameters: training one trains the other
    for name, p in rnn.named_parameters():
        assert getattr(scripted.rnn, name) is p
    x = torch.randn(3, 4) if isinstance(rnn, nn.RNNCellBase) else torch.randn(5, 3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "projections not supported with oneDNN"
        _assert_same(scripted, rnn, (x,))


@pytest.mark.parametrize("kwargs, named", [
    (dict(grad_clip=1.0), "grad_clip"),
    (dict(truncate=3), "truncate"),
    (dict(cell_clip=0.5), "cell_clip"),
    (dict(track_grad_norms=True), "track_grad_norms"),
])
def test_script_options_raise(kwargs, named):
    with warnings.catch_warnings(), pytest.raises(UnsupportedExportError) as info:
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(_Holder(fusedrnn.LSTM(4, 8, **kwargs)))
    message = str(info.value)
    assert named in message
    for alternative in ("torch.export.export", "fusedrnn.to_torch", "dynamo=True"):
        assert alternative in message


# ---------------------------------------------------------------------------------------
# What must not change


def test_torch_export_keeps_fused_ops_and_eager_is_not_exporting():
    assert not exporting()
    model = fusedrnn.LSTM(4, 8, bidirectional=True, grad_clip=1.0)
    program = torch.export.export(model, (torch.randn(5, 3, 4),))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert any("fusedrnn.lstm_layer" in t for t in targets), targets
    assert not any("aten.lstm" in t for t in targets), targets


@pytest.mark.parametrize("track", [False, True])
def test_torch_export_dynamic_steps(track):
    """torch.export with a dynamic sequence length, also with track_grad_norms (the record
    is sized by the traced T; an exported graph makes none): the program runs other lengths
    and gives the module's outputs."""
    torch.manual_seed(0)
    model = fusedrnn.LSTM(4, 8, num_layers=2, track_grad_norms=track)
    steps = torch.export.Dim("steps", min=2, max=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "tensor attributes assigned during export"
        program = torch.export.export(model, (torch.randn(5, 3, 4),),
                                      dynamic_shapes=({0: steps},))
    x = torch.randn(9, 3, 4)
    got, (h, c) = program.module()(x)
    want, (h_want, c_want) = model(x)
    assert got.shape == (9, 3, 8)
    assert torch.equal(got, want) and torch.equal(h, h_want) and torch.equal(c, c_want)
