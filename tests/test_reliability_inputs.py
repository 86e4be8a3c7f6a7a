"""Reliability, part 1: bad input everywhere, numerical edges, property-based parity,
determinism and interop.

1. Bad input (docs/design.md §7) for the ops (padded and packed ``batch_sizes=`` form) and the
   modules: shapes, dtypes, devices (meta tensors), lengths, batch_sizes and the extra
   options. Every case must raise ValueError / TypeError / RuntimeError with a message that
   names the argument. test_ops.py covers the padded op form of the most common cases and
   test_modules*.py the exception *types* of the modules; what is here is new: the packed
   form, the remaining cases, and the messages.
2. Numerical edges: NaN confined to its batch row (forward and backward, with clipping),
   +-inf like torch.nn, an empty batch like torch.nn, T = 10,000 with H = 1 and H = 1 stacks
   (double backward: tests/test_double_backward.py).
3. Property-based (hypothesis, derandomized): the modules against fusedrnn.reference
   composed layer by layer (helpers.ReferenceRNN), float64, over random shapes and options.
4. Determinism: bitwise identical results for identical runs, on 1 and 2 threads.
5. Interop: torch.save/load of a model, torch.func.functional_call, no_grad /
   inference_mode, frozen parameters, gradients wanted for the input or the weights only.

Shape letters: T steps, B batch, I input, H hidden, P projection, R = P or H, L layers,
D directions, N packed rows.
"""

import re
import time
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import fusedrnn
import fusedrnn.ops as ops
from helpers import (
    POSITIONAL,
    ReferenceRNN,
    assert_tight,
    call_layer,
    make_tensors,
    upstream_grads,
)

F32, F64 = torch.float32, torch.float64
OPS = {"lstm": ops.lstm_layer, "gru": ops.gru_layer}
FUSED = {"lstm": fusedrnn.LSTM, "gru": fusedrnn.GRU}
TORCHNN = {"lstm": nn.LSTM, "gru": nn.GRU}
KINDS = ["lstm", "gru"]

pytestmark = pytest.mark.filterwarnings(
    "ignore:LSTM with projections is not supported with oneDNN:UserWarning")




def case_id(*parts):
    return "-".join(str(p) for p in parts)


# =======================================================================================
# 1. Bad input
# =======================================================================================

# Op arguments: T=4, B=3, I=5, H=6 (P=2 for the projected LSTM). Packed form: lengths 4, 3, 1
# (sorted), so N = 8 and batch_sizes = [3, 2, 2, 1].
OP_T, OP_B, OP_I, OP_H, OP_P = 4, 3, 5, 6, 2
PACKED_LENGTHS = [4, 3, 1]
BATCH_SIZES = [3, 2, 2, 1]
N_PACKED = sum(BATCH_SIZES)
FORMS = ["padded", "packed"]


def op_arguments(kind, form, proj=False):
    """Valid float64 arguments of one op call: (tensors by name, keyword arguments)."""
    tensors = make_tensors(kind, OP_T, OP_B, OP_I, OP_H, OP_P if proj else 0)
    kwargs = {}
    if form == "packed":
        packed = pack_padded_sequence(tensors["input"], torch.tensor(PACKED_LENGTHS))
        tensors["input"] = packed.data  # [N, I]
        kwargs["batch_sizes"] = packed.batch_sizes
        assert packed.batch_sizes.tolist() == BATCH_SIZES
    return tensors, kwargs


def call_op(kind, form, changes, proj=False):
    """Call the op with valid arguments, some replaced: changes(tensors) -> {name: value};
    names of tensor arguments replace tensors, anything else is a keyword argument."""
    tensors, kwargs = op_arguments(kind, form, proj)
    for name, value in changes(dict(tensors)).items():
        if name in POSITIONAL[kind] or name == "weight_hr":
            tensors[name] = value
        else:
            kwargs[name] = value
    return call_layer(OPS[kind], kind, tensors, **kwargs)


def _rand(*shape, dtype=F64):
    return torch.randn(*shape, dtype=dtype)


def test_op_arguments_are_valid():
    """The base arguments of the bad-input tables work: each case is about its change."""
    for kind in KINDS:
        for form in FORMS:
            for proj in ([False, True] if kind == "lstm" else [False]):
                out = call_op(kind, form, lambda t: {}, proj=proj)
                rows = (N_PACKED,) if form == "packed" else (OP_T, OP_B)
                assert out[0].shape == rows + ((OP_P if proj else OP_H),)


# --- 1a. Shapes -------------------------------------------------------------------------

def _shape_cases():
    """(kind, proj, name, changes, match); all raise ValueError or RuntimeError."""
    H, I, B, P = OP_H, OP_I, OP_B, OP_P
    cases = []
    for kind in KINDS:
        G = 4 if kind == "lstm" else 3
        cases += [
            (kind, False, "input_rank_1", lambda t: dict(input=t["input"].flatten()), "input"),
            (kind, False, "input_features", lambda t: dict(input=torch.cat(
                [t["input"], t["input"][..., :1]], -1)), "input|weight_ih"),
            (kind, False, "weight_ih_rank_1", lambda t: dict(weight_ih=t["weight_ih"].flatten()),
             "weight_ih"),
            (kind, False, "weight_ih_rank_3", lambda t: dict(weight_ih=t["weight_ih"][None]),
             "weight_ih"),
            (kind, False, "weight_ih_rows", lambda t, G=G: dict(weight_ih=_rand(G * H + 1, I)),
             "weight_ih"),
            (kind, False, "weight_ih_cols", lambda t, G=G: dict(weight_ih=_rand(G * H, I + 1)),
             "weight_ih"),
            (kind, False, "weight_ih_empty", lambda t: dict(weight_ih=_rand(0, I)), "weight_ih"),
            (kind, False, "weight_hh_cols", lambda t, G=G: dict(weight_hh=_rand(G * H, H + 1)),
             "weight_hh"),
            (kind, False, "weight_hh_rows", lambda t, G=G: dict(weight_hh=_rand(G * H - 1, H)),
             "weight_hh"),
            (kind, False, "weight_hh_rank_3", lambda t: dict(weight_hh=t["weight_hh"][None]),
             "weight_hh"),
            (kind, False, "bias_ih_size", lambda t, G=G: dict(bias_ih=_rand(G * H + 1)),
             "bias_ih"),
            (kind, False, "bias_hh_rank_2", lambda t: dict(bias_hh=t["bias_hh"][None]),
             "bias_hh"),
            (kind, False, "h0_hidden", lambda t: dict(h0=_rand(B, H + 1)), "h0"),
            (kind, False, "h0_batch", lambda t: dict(h0=_rand(B + 1, H)), "h0"),
            (kind, False, "h0_rank_1", lambda t: dict(h0=t["h0"][0]), "h0"),
            (kind, False, "h0_rank_3", lambda t: dict(h0=t["h0"][None]), "h0"),
        ]
    cases += [
        ("lstm", False, "c0_hidden", lambda t: dict(c0=_rand(B, H - 1)), "c0"),
        ("lstm", False, "c0_batch", lambda t: dict(c0=_rand(B - 1, H)), "c0"),
        ("lstm", False, "c0_rank_1", lambda t: dict(c0=t["c0"][0]), "c0"),
        ("lstm", False, "c0_rank_3", lambda t: dict(c0=t["c0"][None]), "c0"),
        ("lstm", True, "weight_hr_cols", lambda t: dict(weight_hr=_rand(P, H + 1)), "weight_hr"),
        ("lstm", True, "weight_hr_rank_1", lambda t: dict(weight_hr=t["weight_hr"].flatten()),
         "weight_hr"),
        ("lstm", True, "weight_hr_rows_vs_weight_hh", lambda t: dict(weight_hr=_rand(P + 1, H)),
         "weight_hh|weight_hr"),
        ("lstm", True, "h0_hidden_not_proj", lambda t: dict(h0=_rand(B, H)), "h0"),
        ("lstm", True, "c0_proj_not_hidden", lambda t: dict(c0=_rand(B, P)), "c0"),
    ]
    return cases


# Already in test_ops.py::test_bad_input_raises for the padded form (same change).
_SHAPES_IN_TEST_OPS = {"weight_ih_rows", "weight_ih_cols", "h0_hidden", "h0_batch", "h0_rank_3"}


def _shape_params():
    params = []
    for kind, proj, name, changes, match in _shape_cases():
        for form in FORMS:
            if form == "padded" and name in _SHAPES_IN_TEST_OPS:
                continue
            params.append(pytest.param(kind, form, proj, changes, match,
                                       id=case_id(kind, form, name)))
    # Packed-only: the padded [T, B, I] layout given with batch_sizes.
    for kind in KINDS:
        params.append(pytest.param(
            kind, "packed", False, lambda t: dict(input=_rand(OP_T, OP_B, OP_I)), "input",
            id=case_id(kind, "packed", "input_rank_3_with_batch_sizes")))
    return params


@pytest.mark.parametrize("kind, form, proj, changes, match", _shape_params())
def test_op_bad_shape(kind, form, proj, changes, match):
    with pytest.raises((ValueError, RuntimeError), match=match):
        call_op(kind, form, changes, proj=proj)


# --- 1b. dtypes -------------------------------------------------------------------------

def _dtype_mismatch_params():
    """One argument in another floating dtype than all the others (both directions)."""
    params = []
    for kind, proj in (("lstm", True), ("gru", False)):
        names = list(POSITIONAL[kind]) + (["weight_hr"] if proj else [])
        for form in FORMS:
            for odd_dtype, base_dtype in ((F32, F64), (F64, F32)):
                for name in names:
                    if form == "padded" and odd_dtype == F32 and name in ("input", "h0",
                                                                          "bias_hh"):
                        continue  # test_ops.py: dtype_input32_weights64, dtype_h0, dtype_bias
                    params.append(pytest.param(
                        kind, form, proj, name, odd_dtype, base_dtype,
                        id=case_id(kind, form, f"{name}_{odd_dtype}".replace("torch.", ""))))
    return params


@pytest.mark.parametrize("kind, form, proj, name, odd_dtype, base_dtype",
                         _dtype_mismatch_params())
def test_op_dtype_mismatch(kind, form, proj, name, odd_dtype, base_dtype):
    """checks.h: dtypes that disagree between arguments are a RuntimeError (as in torch)
    naming the argument that differs from the input (the first weight if the input is the
    odd one)."""
    def changes(t):
        new = {n: v.to(base_dtype) for n, v in t.items()}
        new[name] = t[name].to(odd_dtype)
        return new

    match = "input|weight_ih" if name == "input" else name
    with pytest.raises(RuntimeError, match=match) as info:
        call_op(kind, form, changes, proj=proj)
    assert "dtype" in str(info.value)


UNSUPPORTED_DTYPES = [torch.int64, torch.int32, torch.bool, torch.complex64, torch.complex128]
if hasattr(torch, "float8_e4m3fn"):
    UNSUPPORTED_DTYPES.append(torch.float8_e4m3fn)


@pytest.mark.parametrize("dtype", UNSUPPORTED_DTYPES, ids=str)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("everything", [True, False], ids=["all_args", "input_only"])
def test_op_unsupported_input_dtype(kind, form, dtype, everything):
    """Integer, bool, complex and float8 input (docs/design.md §4: CPU takes float32, float64 and,
    computed in float32, bfloat16 / float16; tests/test_half_cpu.py): TypeError naming the
    input, whether the other arguments agree or not."""
    def changes(t):
        if everything:
            return {n: (v != 0) if dtype == torch.bool else v.to(dtype) for n, v in t.items()}
        x = t["input"]
        return dict(input=(x > 0) if dtype == torch.bool else x.to(dtype))

    with pytest.raises(TypeError, match="input") as info:
        call_op(kind, form, changes)
    assert re.search(r"float|dtype|" + str(dtype).replace("torch.", ""), str(info.value),
                     re.IGNORECASE)


# --- 1c. Devices: meta tensors mixed with CPU tensors -------------------------------------

def _device_params():
    params = []
    for kind, proj in (("lstm", True), ("gru", False)):
        names = list(POSITIONAL[kind]) + (["weight_hr"] if proj else [])
        for form in FORMS:
            for name in names:
                params.append(pytest.param(kind, form, proj, name,
                                           id=case_id(kind, form, name)))
            index_arg = "batch_sizes" if form == "packed" else "lengths"
            params.append(pytest.param(
                kind, form, proj, index_arg, id=case_id(kind, form, index_arg)))
    return params


@pytest.mark.parametrize("kind, form, proj, name", _device_params())
def test_op_device_mismatch(kind, form, proj, name):
    """One argument on the meta device, the rest on CPU: a RuntimeError naming the device
    mismatch and the argument (torch.nn: "Input and hidden tensors are not at the same
    device"), never a result computed from memory that does not exist."""
    def changes(t):
        if name == "lengths":
            return dict(lengths=torch.tensor([4, 1, 3], device="meta"))
        if name == "batch_sizes":
            return dict(batch_sizes=torch.tensor(BATCH_SIZES, device="meta"))
        return {name: t[name].to("meta")}

    match = "input|weight_ih" if name == "input" else name
    # checks.h: devices that disagree between tensors are a RuntimeError, as in torch; for
    # the index tensors (documented as CPU tensors) any of the three types will do.
    errors = (RuntimeError, ValueError, TypeError) if name in ("lengths", "batch_sizes") \
        else RuntimeError
    with pytest.raises(errors, match=match) as info:
        call_op(kind, form, changes, proj=proj)
    assert re.search("device|meta|cpu", str(info.value), re.IGNORECASE)


@pytest.mark.parametrize("kind", KINDS)
def test_all_meta_gives_meta_shapes(kind):
    """Everything on the meta device is legitimate (shape inference): meta outputs with the
    right shapes, as torch.nn on a meta module does."""
    tensors, _ = op_arguments(kind, "padded", proj=kind == "lstm")
    out = call_layer(OPS[kind], kind, {n: v.to("meta") for n, v in tensors.items()})
    R = OP_P if kind == "lstm" else OP_H
    assert all(o.device.type == "meta" for o in out)
    assert out[0].shape == (OP_T, OP_B, R) and out[1].shape == (OP_B, R)
    torch.manual_seed(0)
    module = FUSED[kind](OP_I, OP_H, num_layers=2, bidirectional=True, device="meta")
    theirs = TORCHNN[kind](OP_I, OP_H, num_layers=2, bidirectional=True, device="meta")
    x = torch.empty(OP_T, OP_B, OP_I, device="meta")
    y, state = module(x)
    y_nn, state_nn = theirs(x)
    assert y.device.type == "meta" and y.shape == y_nn.shape
    for a, b in zip(state if kind == "lstm" else (state,),
                    state_nn if kind == "lstm" else (state_nn,)):
        assert a.device.type == "meta" and a.shape == b.shape


# --- 1d. lengths (padded) and batch_sizes (packed) -------------------------------------


LENGTHS_CASES = [
    # name, lengths, errors, marks
    ("list_zero", [4, 0, 2], ValueError, ()),
    ("list_T_plus_1", [4, OP_T + 1, 2], ValueError, ()),
    ("list_negative", [4, -1, 2], ValueError, ()),
    ("list_too_short", [4, 2], ValueError, ()),
    ("list_too_long", [4, 2, 1, 1], ValueError, ()),
    ("tensor_T_plus_1_int32", torch.tensor([1, OP_T + 1, 2], dtype=torch.int32), ValueError, ()),
    ("tensor_0d", torch.tensor(3), ValueError, ()),
    ("tensor_empty", torch.zeros(0, dtype=torch.int64), ValueError, ()),
    ("tensor_bool", torch.tensor([True, True, False]), TypeError, ()),
    ("tensor_float64", torch.tensor([4.0, 2.0, 1.0], dtype=F64), TypeError, ()),
    ("tensor_complex", torch.tensor([4, 2, 1], dtype=torch.complex64), TypeError, ()),
    ("list_float_fraction", [2.5, 4, 1], (TypeError, ValueError), ()),
    ("list_float_nan", [float("nan"), 4, 1], (TypeError, ValueError), ()),
    ("scalar_int", 3, (TypeError, ValueError), ()),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lengths, errors", [
    pytest.param(lengths, errors, id=name, marks=marks)
    for name, lengths, errors, marks in LENGTHS_CASES
])
def test_op_bad_lengths(kind, lengths, errors):
    with pytest.raises(errors, match="lengths"):
        call_op(kind, "padded", lambda t: dict(lengths=lengths))



BATCH_SIZES_CASES = [
    # name, batch_sizes, errors, marks
    ("increasing", torch.tensor([2, 3, 2, 1]), ValueError, ()),
    ("zero_last", torch.tensor([3, 3, 2, 0]), ValueError, ()),
    ("zero_middle", torch.tensor([4, 0, 4, 0]), ValueError, ()),
    ("negative", torch.tensor([3, 3, 3, -1]), ValueError, ()),
    ("sum_too_small", torch.tensor([3, 2, 1, 1]), ValueError, ()),
    ("sum_too_large", torch.tensor([3, 3, 2, 1]), ValueError, ()),
    ("empty", torch.zeros(0, dtype=torch.int64), ValueError, ()),
    ("float", torch.tensor([3.0, 2.0, 2.0, 1.0]), TypeError, ()),
    ("int32", torch.tensor(BATCH_SIZES, dtype=torch.int32), TypeError, ()),
    ("rank_2", torch.tensor([BATCH_SIZES]), (ValueError, TypeError), ()),
    ("rank_0", torch.tensor(N_PACKED), (ValueError, TypeError), ()),
    ("list", list(BATCH_SIZES), TypeError, ()),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch_sizes, errors", [
    pytest.param(bs, errors, id=name, marks=marks) for name, bs, errors, marks in BATCH_SIZES_CASES
])
def test_op_bad_batch_sizes(kind, batch_sizes, errors):
    with pytest.raises(errors, match="batch_sizes"):
        call_op(kind, "packed", lambda t: dict(batch_sizes=batch_sizes, h0=None, c0=None)
                if kind == "lstm" else dict(batch_sizes=batch_sizes, h0=None))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lengths", [torch.tensor(PACKED_LENGTHS), PACKED_LENGTHS],
                         ids=["tensor", "list"])
def test_op_lengths_and_batch_sizes_together(kind, lengths):
    with pytest.raises(ValueError, match="lengths.*batch_sizes|batch_sizes.*lengths"):
        call_op(kind, "packed", lambda t: dict(lengths=lengths))


# --- 1e. Options ------------------------------------------------------------------------

# grad_clip and cell_clip: a positive finite real number (not bool), docs/design.md §3.
BAD_CLIP_VALUES = [
    (-1.0, ValueError), (0.0, ValueError), (0, ValueError), (float("nan"), ValueError),
    (float("inf"), ValueError), (-float("inf"), ValueError), ("0.5", TypeError),
    (True, TypeError), (1j, TypeError), ([1.0], TypeError),
]
OPTION_CASES = (
    [("grad_clip", v, e) for v, e in BAD_CLIP_VALUES]
    + [("cell_clip", v, e) for v, e in BAD_CLIP_VALUES]
    + [
        # option, value, errors
        ("grad_clip_mode", "max", ValueError),
        ("grad_clip_mode", "Value", ValueError),
        ("grad_clip_mode", None, (ValueError, TypeError)),
        ("grad_clip_mode", 1, (ValueError, TypeError)),
        ("truncate", 0, ValueError),
        ("truncate", -1, ValueError),
        ("truncate", 2.5, TypeError),
        ("truncate", 2.0, TypeError),
        ("truncate", True, TypeError),
        ("truncate", "2", TypeError),
    ]
)


def _option_params(kinds=KINDS):
    return [pytest.param(kind, option, value, errors, id=case_id(kind, option, repr(value)))
            for kind in kinds for option, value, errors in OPTION_CASES
            if not (kind == "gru" and option == "cell_clip")]


@pytest.mark.parametrize("kind, option, value, errors", _option_params())
def test_op_bad_option_packed(kind, option, value, errors):
    """The packed form validates the options like the padded one (test_ops.py)."""
    with pytest.raises(errors, match=option):
        call_op(kind, "packed", lambda t: {option: value, "grad_clip": 0.5}
                if option != "grad_clip" else {option: value})


@pytest.mark.parametrize("kind, option, value, errors", _option_params())
def test_module_bad_option_at_construction(kind, option, value, errors):
    with pytest.raises(errors, match=option):
        FUSED[kind](3, 4, num_layers=2, bidirectional=True, **{option: value})


@pytest.mark.parametrize("kind, option, value, errors", _option_params())
def test_module_option_changed_after_construction_is_checked_at_forward(kind, option, value,
                                                                        errors):
    """An option attribute set to a bad value after construction fails in forward, with the
    option's name, instead of running with it (or being ignored)."""
    module = FUSED[kind](3, 4, num_layers=2, bidirectional=True, dtype=F64)
    setattr(module, option, value)
    with pytest.raises(errors, match=option):
        module(torch.randn(5, 2, 3, dtype=F64))


def test_gru_op_rejects_lstm_only_arguments():
    tensors, _ = op_arguments("gru", "padded")
    with pytest.raises(TypeError, match="weight_hr"):
        call_layer(ops.gru_layer, "gru", tensors, weight_hr=_rand(2, OP_H))
    with pytest.raises(TypeError, match="cell_clip"):
        call_layer(ops.gru_layer, "gru", tensors, cell_clip=1.0)


# --- 1f. Modules: bad forward input, with the message checked ---------------------------

MI, MH, ML, MD = 3, 4, 2, 2  # module input size, hidden size, layers, directions
MT, MB = 5, 3


def _module_pair(kind, proj=0, **kwargs):
    torch.manual_seed(0)
    extra = dict(proj_size=proj) if proj else {}
    ours = FUSED[kind](MI, MH, num_layers=ML, bidirectional=True, dtype=F64, **extra, **kwargs)
    theirs = TORCHNN[kind](MI, MH, num_layers=ML, bidirectional=True, dtype=F64, **extra)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _state(kind, shape, dtype=F64, c_shape=None, c_dtype=None, device="cpu"):
    h = torch.randn(*shape, dtype=dtype, device=device)
    if kind == "gru":
        return h
    c = torch.randn(*(c_shape or shape), dtype=c_dtype or dtype, device=device)
    return h, c


def _packed(batch_sizes=BATCH_SIZES, features=MI, dtype=F64, data=None):
    """A hand-made PackedSequence (N_PACKED rows of data unless given)."""
    bs = batch_sizes if isinstance(batch_sizes, torch.Tensor) else torch.tensor(batch_sizes)
    if data is None:
        data = torch.randn(N_PACKED, features, dtype=dtype)
    return PackedSequence(data, bs, None, None)


LD = ML * MD


def _module_bad_inputs(kind):
    """name -> (make (input, hx), errors, match, marks)."""
    x = lambda: torch.randn(MT, MB, MI, dtype=F64)  # noqa: E731
    cases = {
        "input_rank_1": (lambda: (torch.randn(MI, dtype=F64), None), ValueError, "input", ()),
        "input_rank_4": (lambda: (x()[None], None), ValueError, "input", ()),
        "input_features": (lambda: (torch.randn(MT, MB, MI + 1, dtype=F64), None),
                           RuntimeError, "input", ()),
        "zero_steps": (lambda: (x()[:0], None), RuntimeError, "sequence length", ()),
        "zero_steps_unbatched": (lambda: (torch.randn(0, MI, dtype=F64), None), RuntimeError,
                                 "sequence length", ()),
        "input_float32": (lambda: (x().float(), None), ValueError, "input dtype", ()),
        "input_int64": (lambda: (x().long(), None), ValueError, "input dtype", ()),
        "input_bool": (lambda: (x() > 0, None), ValueError, "input dtype", ()),
        "input_complex": (lambda: (x().to(torch.complex128), None), ValueError, "input dtype",
                          ()),
        "hx_batch": (lambda: (x(), _state(kind, (LD, MB + 1, MH))), RuntimeError, "hidden", ()),
        "hx_layers": (lambda: (x(), _state(kind, (LD - 1, MB, MH))), RuntimeError, "hidden",
                      ()),
        "hx_hidden": (lambda: (x(), _state(kind, (LD, MB, MH + 1))), RuntimeError, "hidden",
                      ()),
        "hx_rank_2": (lambda: (x(), _state(kind, (LD, MH))), RuntimeError, "hx", ()),
        "hx_float32": (lambda: (x(), _state(kind, (LD, MB, MH), dtype=F32)), RuntimeError,
                       "h0|hx|hidden", ()),
        "input_meta": (lambda: (x().to("meta"), None), RuntimeError, "device", ()),
        "hx_meta": (lambda: (x(), _state(kind, (LD, MB, MH), device="meta")), RuntimeError,
                    "device", ()),
        # PackedSequence input: batch_sizes as the ops see them.
        "packed_batch_sizes_increasing": (lambda: (_packed(batch_sizes=[2, 3, 2, 1]), None),
                                          (ValueError, RuntimeError), "batch_sizes", ()),
        "packed_batch_sizes_zero": (lambda: (_packed(batch_sizes=[3, 3, 2, 0]), None),
                                    (ValueError, RuntimeError), "batch_sizes", ()),
        "packed_batch_sizes_sum_small": (lambda: (_packed(batch_sizes=[3, 2, 1, 1]), None),
                                         (ValueError, RuntimeError), "batch_sizes", ()),
        "packed_batch_sizes_sum_large": (lambda: (_packed(batch_sizes=[3, 3, 2, 1]), None),
                                         (ValueError, RuntimeError), "batch_sizes", ()),
        "packed_batch_sizes_float": (
            lambda: (_packed(batch_sizes=torch.tensor([3.0, 2, 2, 1])), None),
            (TypeError, RuntimeError), "batch_sizes", ()),
        "packed_batch_sizes_int32": (
            lambda: (_packed(batch_sizes=torch.tensor(BATCH_SIZES, dtype=torch.int32)), None),
            (TypeError, RuntimeError), "batch_sizes", ()),
        "packed_data_rank_3": (lambda: (_packed(data=torch.randn(N_PACKED, 1, MI, dtype=F64)),
                                        None), RuntimeError, "input", ()),
        "packed_data_features": (lambda: (_packed(features=MI + 1), None), RuntimeError,
                                 "input", ()),
        "packed_data_float32": (lambda: (_packed(dtype=F32), None), (ValueError, RuntimeError),
                                "dtype", ()),
        "packed_data_int64": (lambda: (_packed(data=torch.ones(N_PACKED, MI,
                                                               dtype=torch.int64)), None),
                              (ValueError, RuntimeError, TypeError), "dtype", ()),
        "packed_hx_batch": (lambda: (_packed(), _state(kind, (LD, 4, MH))), RuntimeError,
                            "hidden", ()),
        "packed_hx_hidden": (lambda: (_packed(), _state(kind, (LD, 3, MH + 1))), RuntimeError,
                             "hidden", ()),
        "packed_hx_float32": (lambda: (_packed(), _state(kind, (LD, 3, MH), dtype=F32)),
                              RuntimeError, "h0|hx|hidden", ()),
        "packed_data_meta": (lambda: (_packed(data=torch.randn(N_PACKED, MI, dtype=F64,
                                                               device="meta")), None),
                             RuntimeError, "device", ()),
    }
    if kind == "lstm":
        cases.update({
            "cx_hidden": (lambda: (x(), _state(kind, (LD, MB, MH), c_shape=(LD, MB, MH + 1))),
                          RuntimeError, r"hidden\[1\]|c0|cx", ()),
            "cx_float32": (lambda: (x(), _state(kind, (LD, MB, MH), c_dtype=F32)),
                           RuntimeError, "c0|cx|hidden", ()),
            "hx_one_state": (lambda: (x(), (torch.randn(LD, MB, MH, dtype=F64),)),
                             RuntimeError, "hidden states", ()),
            "cx_meta": (lambda: (x(), (torch.randn(LD, MB, MH, dtype=F64),
                                       torch.randn(LD, MB, MH, dtype=F64, device="meta"))),
                        RuntimeError, "device", ()),
        })
    return cases


# torch.nn has no check of its own for these (batch_sizes, a 1-tuple hx, packed data of the
# wrong rank or dtype): whatever its arithmetic happens to raise is no contract to follow.
NO_TORCHNN_CONTRACT = {
    "packed_batch_sizes_increasing", "packed_batch_sizes_zero", "packed_batch_sizes_sum_small",
    "packed_batch_sizes_sum_large", "packed_batch_sizes_float", "packed_batch_sizes_int32",
    "hx_one_state", "packed_data_rank_3", "packed_data_float32", "packed_data_int64",
    "packed_data_features", "packed_hx_batch", "packed_hx_hidden", "packed_hx_float32",
}

MODULE_BAD_PARAMS = [
    pytest.param(kind, name, id=case_id(kind, name), marks=spec[3])
    for kind in KINDS for name, spec in _module_bad_inputs(kind).items()
]


@pytest.mark.parametrize("kind, name", MODULE_BAD_PARAMS)
def test_module_bad_input(kind, name):
    """fusedrnn.LSTM / GRU (2 layers, bidirectional) reject bad forward input with a message
    naming the argument. Where torch.nn raises too, the type is torch.nn's (or a subclass)."""
    make, errors, match, _ = _module_bad_inputs(kind)[name]
    ours, theirs = _module_pair(kind)
    torch.manual_seed(1)
    inp, hx = make()
    with pytest.raises(errors, match=match) as info:
        ours(inp, hx)
    theirs_exc = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            theirs(inp, hx)
        except Exception as exc:  # noqa: BLE001 - only its type is used
            theirs_exc = exc
    if theirs_exc is not None and name not in NO_TORCHNN_CONTRACT:
        assert isinstance(info.value, type(theirs_exc)), (
            f"fusedrnn raised {type(info.value).__name__}, torch.nn "
            f"{type(theirs_exc).__name__}: {theirs_exc}")


@pytest.mark.parametrize("kind", KINDS)
def test_meta_module_with_cpu_input(kind):
    """A module on the meta device called with a CPU input: torch.nn raises "Input and
    parameter tensors are not at the same device"."""
    module = FUSED[kind](MI, MH, device="meta", dtype=F64)
    with pytest.raises(RuntimeError, match="device"):
        module(torch.randn(MT, MB, MI, dtype=F64))


CELLS = {"lstm": fusedrnn.LSTMCell, "gru": fusedrnn.GRUCell}



def _cell_bad_inputs(kind):
    """name -> (make (input, hx), errors, match, marks)."""
    x = lambda: torch.randn(MB, MI, dtype=F64)  # noqa: E731

    def state(dtype=F64, device="cpu", which=0):
        parts = [torch.randn(MB, MH, dtype=F64) for _ in range(2 if kind == "lstm" else 1)]
        parts[which] = parts[which].to(dtype=dtype, device=device)
        return tuple(parts) if kind == "lstm" else parts[0]

    cases = {
        "input_float32": (lambda: (x().float(), None), RuntimeError, "input|weight_ih|dtype",
                          ()),
        "input_int64": (lambda: (x().long(), None), RuntimeError, "input", ()),
        "input_bool": (lambda: (x() > 0, None), RuntimeError, "input", ()),
        "input_complex": (lambda: (x().to(torch.complex128), None), RuntimeError, "input",
                          ()),
        "hx_float32": (lambda: (x(), state(F32)), RuntimeError, "h0|hx|hidden", ()),
        "hx_meta": (lambda: (x(), state(device="meta")), RuntimeError, "device", ()),
        "input_meta": (lambda: (x().to("meta"), None), RuntimeError, "device", ()),
    }
    if kind == "lstm":
        cases["cx_float32"] = (lambda: (x(), state(F32, which=1)), RuntimeError,
                               "c0|cx|hidden", ())
    return cases


@pytest.mark.parametrize("kind, name", [
    pytest.param(kind, name, id=case_id(kind, name), marks=spec[3])
    for kind in KINDS for name, spec in _cell_bad_inputs(kind).items()
])
def test_cell_bad_input(kind, name):
    make, errors, match, _ = _cell_bad_inputs(kind)[name]
    torch.manual_seed(0)
    cell = CELLS[kind](MI, MH, dtype=F64)
    inp, hx = make()
    with pytest.raises(errors, match=match):
        cell(inp, hx)


# =======================================================================================
# 2. Numerical edges
# =======================================================================================


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


NAN_OPTIONS = {
    "plain": {},
    "value": dict(grad_clip=0.1),
    "norm": dict(grad_clip=0.1, grad_clip_mode="norm"),
    "norm_truncate": dict(grad_clip=0.2, grad_clip_mode="norm", truncate=2),
}


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("options", list(NAN_OPTIONS))
@pytest.mark.parametrize("kind", KINDS)
def test_nan_stays_in_its_batch_row(kind, options, dtype, packed):
    """A NaN in one batch row of the input: the other rows' outputs, final states and input
    gradients are finite and bitwise equal to the run without the NaN (rows never mix, not
    even through a norm clip); the poisoned row is NaN, as in torch.nn."""
    torch.manual_seed(0)
    module = FUSED[kind](3, 5, num_layers=2, bidirectional=True, dtype=dtype,
                         **NAN_OPTIONS[options])
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(2.0)  # make the clip act
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, 3, generator=gen, dtype=F64).to(dtype)
    hx = _state(kind, (4, 4, 5), dtype=dtype)
    lengths = [6, 3, 5, 4] if packed else None
    bad = 1
    poisoned = x.clone()
    poisoned[2, bad, 1] = float("nan")
    clean = run_module(module, x, hx, lengths)
    dirty = run_module(module, poisoned, hx, lengths)
    others = [b for b in range(4) if b != bad]
    for name in ["out", "grad_x"] + [k for k in clean if k.startswith("state")] + \
            [k for k in clean if k.startswith("grad_hx")]:
        batch_dim = 1  # out, grad_x: [T, B, *]; states and their grads: [L*D, B, *]
        a = clean[name].index_select(batch_dim, torch.tensor(others))
        b = dirty[name].index_select(batch_dim, torch.tensor(others))
        assert torch.isfinite(b).all(), f"{name}: NaN leaked into other rows"
        assert torch.equal(a, b), f"{name}: other rows changed by a NaN in row {bad}"
    assert dirty["out"][:, bad].isnan().any()
    assert dirty["grad_x"][:, bad].isnan().any()
    # The clip had something to do (the test is not vacuous).
    if options != "plain":
        plain = FUSED[kind](3, 5, num_layers=2, bidirectional=True, dtype=dtype)
        plain.load_state_dict(module.state_dict())
        unclipped = run_module(plain, x, hx, lengths)
        assert not torch.equal(unclipped["grad_x"], clean["grad_x"])


def assert_same_nonfinite(actual, expected, rtol, atol):
    """Same NaN positions, same +-inf positions, finite values close (atol scaled by the
    magnitude of the finite part of expected)."""
    assert set(actual) == set(expected)
    for name, e in expected.items():
        a = actual[name]
        if e is None or a is None:
            assert a is None and e is None, name
            continue
        finite = torch.isfinite(e)
        scale = max(1.0, e[finite].abs().max().item()) if finite.any() else 1.0
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol * scale, equal_nan=True,
                                   msg=lambda m, name=name: f"{name}: {m}")


def _inf_input(case, dtype):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 3, 3, generator=gen, dtype=F64).to(dtype)
    inf = float("inf")
    if case == "pos_inf":
        x[2, 1, 0] = inf
    elif case == "neg_inf":
        x[1, 2, 2] = -inf
    elif case == "mixed_row":
        x[3, 0, 0], x[3, 0, 1] = inf, -inf
    elif case == "all_inf":
        x.fill_(inf)
    elif case == "huge_finite":
        x[2] *= 1e30
    return x




@pytest.mark.parametrize("case, dtype", [
    pytest.param(case, dtype, id=case_id(case, str(dtype).replace("torch.", "")),
                 )
    for case in ["pos_inf", "neg_inf", "mixed_row", "all_inf", "huge_finite"]
    for dtype in (F32, F64)
])
@pytest.mark.parametrize("kind", KINDS)
def test_infinite_input_like_torchnn(kind, case, dtype):
    """+-inf (and huge) inputs: every output and gradient equals torch.nn's, NaN == NaN and
    inf == inf included (2 layers, bidirectional)."""
    torch.manual_seed(0)
    ours = FUSED[kind](3, 4, num_layers=2, bidirectional=True, dtype=dtype)
    theirs = TORCHNN[kind](3, 4, num_layers=2, bidirectional=True, dtype=dtype)
    theirs.load_state_dict(ours.state_dict())
    x = _inf_input(case, dtype)
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == F64 else dict(rtol=1e-4, atol=1e-5)
    assert_same_nonfinite(run_module(ours, x), run_module(theirs, x), **tol)


@pytest.mark.parametrize("options", [{}, dict(grad_clip=0.1, grad_clip_mode="norm", truncate=2)],
                         ids=["plain", "options"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["nohx", "hx"])
@pytest.mark.parametrize("kind", KINDS)
def test_empty_batch_like_torchnn(kind, with_hx, batch_first, options):
    """B = 0 (padded): the same output shapes as torch.nn and the same (empty or zero)
    gradients, forward and backward, with and without hx and options."""
    torch.manual_seed(0)
    ours = FUSED[kind](3, 4, num_layers=2, bidirectional=True, batch_first=batch_first,
                       dtype=F64, **options)
    theirs = TORCHNN[kind](3, 4, num_layers=2, bidirectional=True, batch_first=batch_first,
                           dtype=F64)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(0, 5, 3, dtype=F64) if batch_first else torch.randn(5, 0, 3, dtype=F64)
    hx = _state(kind, (4, 0, 4)) if with_hx else None
    mine, expected = run_module(ours, x, hx), run_module(theirs, x, hx)
    assert set(mine) == set(expected)
    for name, e in expected.items():
        a = mine[name]
        assert (a is None) == (e is None), name
        if e is not None:
            assert a.shape == e.shape and a.dtype == e.dtype, name
            assert torch.equal(a, e), name


@pytest.mark.parametrize("kind", KINDS)
def test_empty_batch_op(kind):
    """The ops with B = 0 (and an empty lengths tensor): empty outputs, zero weight
    gradients."""
    tensors = make_tensors(kind, 4, 0, 3, 5)
    leaves = {n: v.requires_grad_(True) for n, v in tensors.items()}
    out = call_layer(OPS[kind], kind, leaves, lengths=torch.zeros(0, dtype=torch.int64),
                     grad_clip=0.5, grad_clip_mode="norm")
    assert out[0].shape == (4, 0, 5) and out[1].shape == (0, 5)
    grads = torch.autograd.grad([o.sum() for o in out], list(leaves.values()),
                                allow_unused=True)
    for (name, leaf), g in zip(leaves.items(), grads):
        assert g is not None and g.shape == leaf.shape, name
        assert torch.equal(g, torch.zeros_like(leaf)), name


@pytest.mark.parametrize("kind", KINDS)
def test_empty_packed_sequence_like_torchnn(kind):
    """An empty PackedSequence (no sequences): torch.nn cannot run it either; fusedrnn
    raises the same exception type (pack_padded_sequence itself refuses B = 0)."""
    ours, theirs = _module_pair(kind)
    empty = PackedSequence(torch.zeros(0, MI, dtype=F64), torch.zeros(0, dtype=torch.int64),
                           None, None)
    with pytest.raises(Exception) as expected:
        theirs(empty)
    with pytest.raises(type(expected.value)):
        ours(empty)
    with pytest.raises(RuntimeError, match="empty"):
        pack_padded_sequence(torch.zeros(3, 0, MI), torch.zeros(0, dtype=torch.int64),
                             enforce_sorted=False)


@pytest.mark.parametrize("kind", KINDS)
def test_very_long_sequence_matches_torchnn(kind):
    """T = 10,000, H = 1, B = 2, I = 1, float64: forward and backward equal torch.nn's
    tightly, in well under a second (a generous 10 s bound catches quadratic work)."""
    torch.manual_seed(0)
    ours = FUSED[kind](1, 1, dtype=F64)
    theirs = TORCHNN[kind](1, 1, dtype=F64)
    theirs.load_state_dict(ours.state_dict())
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(10_000, 2, 1, generator=gen, dtype=F64)
    hx = _state(kind, (1, 2, 1))
    run_module(ours, x[:3], hx)  # warm-up (one-off start-up costs)
    start = time.perf_counter()
    mine = run_module(ours, x, hx)
    elapsed = time.perf_counter() - start
    assert_tight(mine, run_module(theirs, x, hx))
    assert elapsed < 10.0, f"T=10000 forward+backward took {elapsed:.1f} s"


@pytest.mark.parametrize("kind", KINDS)
def test_long_sequence_with_options_matches_reference(kind):
    """T = 2,000, H = 1, packed with very unequal lengths, value clip + truncation every 64
    steps + cell clip: equal to fusedrnn.reference (the bookkeeping of s % k over long
    sequences and many truncation points)."""
    options = dict(grad_clip=0.05, truncate=64)
    if kind == "lstm":
        options["cell_clip"] = 0.5
    torch.manual_seed(0)
    ours = FUSED[kind](1, 1, num_layers=1, bidirectional=True, dtype=F64, **options)
    with torch.no_grad():
        for p in ours.parameters():
            p.mul_(3.0)
    ref = ReferenceRNN(kind, ours, **options)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2000, 2, 1, generator=gen, dtype=F64)
    lengths = [1999, 700]
    assert_tight(run_module(ours, x, None, lengths), run_module(ref, x, None, lengths))


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("kind", KINDS)
def test_hidden_size_one_stack(kind, packed):
    """H = 1 (and I = 1) on a 2-layer bidirectional stack: torch.nn parity without options,
    reference parity with every option."""
    torch.manual_seed(0)
    ours = FUSED[kind](1, 1, num_layers=2, bidirectional=True, dtype=F64)
    theirs = TORCHNN[kind](1, 1, num_layers=2, bidirectional=True, dtype=F64)
    theirs.load_state_dict(ours.state_dict())
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(7, 3, 1, generator=gen, dtype=F64)
    hx = _state(kind, (4, 3, 1))
    lengths = [7, 2, 5] if packed else None
    assert_tight(run_module(ours, x, hx, lengths), run_module(theirs, x, hx, lengths))

    options = dict(grad_clip=0.02, grad_clip_mode="norm", truncate=3)
    if kind == "lstm":
        options["cell_clip"] = 0.3
    clipped = FUSED[kind](1, 1, num_layers=2, bidirectional=True, dtype=F64, **options)
    clipped.load_state_dict(ours.state_dict())
    result = run_module(clipped, x, hx, lengths)
    assert_tight(result, run_module(ReferenceRNN(kind, clipped, **options), x, hx, lengths))


# =======================================================================================
# 3. Property-based: modules against fusedrnn.reference, layer by layer (float64)
# =======================================================================================


@st.composite
def stack_configs(draw, kind):
    T = draw(st.integers(1, 6))
    B = draw(st.integers(1, 4))
    H = draw(st.integers(1, 5))
    config = dict(
        T=T, B=B, I=draw(st.integers(1, 5)), H=H,
        num_layers=draw(st.integers(1, 2)),
        bidirectional=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bias=draw(st.booleans()),
        with_hx=draw(st.booleans()),
        lengths=draw(st.one_of(st.none(), st.lists(st.integers(1, T), min_size=B,
                                                   max_size=B))),
        proj=draw(st.integers(0, H - 1)) if kind == "lstm" and H > 1 else 0,
        scale=draw(st.sampled_from([1.0, 3.0])),
        seed=draw(st.integers(0, 2**16)),
    )
    options = {}
    mode = draw(st.sampled_from([None, "value", "norm"]))
    if mode is not None:
        options["grad_clip"] = draw(st.floats(0.005, 1.0))
        options["grad_clip_mode"] = mode
    truncate = draw(st.one_of(st.none(), st.integers(1, T + 1)))
    if truncate is not None:
        options["truncate"] = truncate
    if kind == "lstm" and draw(st.booleans()):
        options["cell_clip"] = draw(st.floats(0.05, 2.0))
    config["options"] = options
    return config


def _check_against_reference(kind, c):
    torch.manual_seed(c["seed"])
    extra = dict(proj_size=c["proj"]) if c["proj"] else {}
    module = FUSED[kind](c["I"], c["H"], num_layers=c["num_layers"], bias=c["bias"],
                         batch_first=c["batch_first"], bidirectional=c["bidirectional"],
                         dtype=F64, **extra, **c["options"])
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(c["scale"])
    ref = ReferenceRNN(kind, module, **c["options"])
    gen = torch.Generator().manual_seed(c["seed"] + 1)
    T, B = c["T"], c["B"]
    x = torch.randn(*((B, T) if c["batch_first"] else (T, B)), c["I"], generator=gen,
                    dtype=F64)
    hx = None
    if c["with_hx"]:
        LD = c["num_layers"] * (2 if c["bidirectional"] else 1)
        h = torch.randn(LD, B, c["proj"] or c["H"], generator=gen, dtype=F64)
        hx = (h, torch.randn(LD, B, c["H"], generator=gen, dtype=F64)) if kind == "lstm" else h
    lengths = c["lengths"]
    mine = run_module(module, x, hx, lengths, c["batch_first"])
    expected = run_module(ref, x, hx, lengths, c["batch_first"])
    assert_tight(mine, expected)


PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                             suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(config=stack_configs("lstm"))
def test_property_lstm_matches_reference(config):
    _check_against_reference("lstm", config)


@PROPERTY_SETTINGS
@given(config=stack_configs("gru"))
def test_property_gru_matches_reference(config):
    _check_against_reference("gru", config)


# =======================================================================================
# 4. Determinism
# =======================================================================================


@pytest.fixture
def threads():
    """Set torch's intra-op thread count for one test and restore it afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _seeded_run(kind, options, packed, seed=7):
    """Everything from one seed: module, input, hx, a forward and backward (float32)."""
    torch.manual_seed(seed)
    module = FUSED[kind](16, 48, num_layers=2, bidirectional=True, dtype=F32, **options)
    x = torch.randn(8, 64, 16)
    hx = _state(kind, (4, 64, 48), dtype=F32)
    lengths = torch.randint(1, 9, (64,)).tolist() if packed else None
    return run_module(module, x, hx, lengths)


DETERMINISM_VARIANTS = {  # name -> (options, packed)
    "padded_plain": ({}, False),
    "packed_norm_clip_truncate": (dict(grad_clip=0.05, grad_clip_mode="norm", truncate=3), True),
}


@pytest.mark.parametrize("variant", list(DETERMINISM_VARIANTS))
@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_bitwise_deterministic(kind, num_threads, variant, threads):
    """Two runs with the same seed and thread count give bitwise identical outputs and
    gradients (B = 64, H = 48: large enough for the parallel paths on 2 threads)."""
    options, packed = DETERMINISM_VARIANTS[variant]
    threads(num_threads)
    assert torch.get_num_threads() == num_threads
    first = _seeded_run(kind, options, packed)
    second = _seeded_run(kind, options, packed)
    assert set(first) == set(second)
    for name in first:
        assert torch.equal(first[name], second[name]), name


# =======================================================================================
# 5. Interop
# =======================================================================================


class Tagger(nn.Module):
    """Linear -> fusedrnn / torch.nn RNN (2 layers, bidirectional, batch_first) -> Linear."""

    def __init__(self, kind, fused=True, **options):
        super().__init__()
        self.inp = nn.Linear(3, 4, dtype=F64)
        cls = FUSED[kind] if fused else TORCHNN[kind]
        self.rnn = cls(4, 5, num_layers=2, bidirectional=True, batch_first=True, dtype=F64,
                       **options)
        self.out = nn.Linear(10, 2, dtype=F64)

    def forward(self, x):
        y, _ = self.rnn(torch.tanh(self.inp(x)))
        return self.out(y)


MODEL_OPTIONS = {"lstm": dict(grad_clip=0.05, grad_clip_mode="norm", truncate=2, cell_clip=0.5),
                 "gru": dict(grad_clip=0.05, truncate=3)}


def _model_grads(model, x):
    leaf = x.clone().requires_grad_(True)
    y = model(leaf)
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(y, [leaf] + list(params.values()), upstream_grads([y])[0])
    return {"y": y.detach(), "grad_x": grads[0],
            **{"grad_" + n: g for n, g in zip(params, grads[1:])}}


@pytest.mark.parametrize("kind", KINDS)
def test_torch_save_load_whole_model(kind, tmp_path):
    """A model containing a fusedrnn RNN survives torch.save / torch.load (weights_only=False)
    with its options: bitwise equal outputs and gradients."""
    torch.manual_seed(0)
    model = Tagger(kind, **MODEL_OPTIONS[kind])
    path = tmp_path / "model.pt"
    torch.save(model, path)
    loaded = torch.load(path, weights_only=False)
    assert type(loaded.rnn) is FUSED[kind]
    for option, value in MODEL_OPTIONS[kind].items():
        assert getattr(loaded.rnn, option) == value
    x = torch.randn(3, 6, 3, dtype=F64)
    before, after = _model_grads(model, x), _model_grads(loaded, x)
    for name in before:
        assert torch.equal(before[name], after[name]), name
    # and a state_dict checkpoint of the same model loads into a torch.nn twin
    twin = Tagger(kind, fused=False)
    twin.load_state_dict(torch.load(path, weights_only=False).state_dict())
    model_plain = Tagger(kind)
    model_plain.load_state_dict(model.state_dict())
    assert_tight(_model_grads(model_plain, x), _model_grads(twin, x))


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("kind", KINDS)
def test_functional_call_with_swapped_parameters(kind, packed):
    """torch.func.functional_call with other parameter tensors computes exactly what the
    module computes with those parameters loaded (outputs and gradients), and leaves the
    module's own parameters untouched."""
    ours, _ = _module_pair(kind, **MODEL_OPTIONS[kind])
    gen = torch.Generator().manual_seed(9)
    swapped = {n: torch.randn(p.shape, generator=gen, dtype=F64).requires_grad_(True)
               for n, p in ours.named_parameters()}
    own = {n: p.detach().clone() for n, p in ours.named_parameters()}
    x = torch.randn(MT, MB, MI, generator=gen, dtype=F64)
    hx = _state(kind, (LD, MB, MH))
    inp = pack_padded_sequence(x, [5, 2, 4], enforce_sorted=False) if packed else x

    out, state = functional_call(ours, swapped, (inp, hx))
    outputs = ((out.data if packed else out),) + (state if isinstance(state, tuple) else (state,))
    grads = torch.autograd.grad(outputs, list(swapped.values()), upstream_grads(outputs))

    loaded = FUSED[kind](MI, MH, num_layers=ML, bidirectional=True, dtype=F64,
                         **MODEL_OPTIONS[kind])
    loaded.load_state_dict({n: v.detach() for n, v in swapped.items()})
    out2, state2 = loaded(inp, hx)
    outputs2 = ((out2.data if packed else out2),) + (state2 if isinstance(state2, tuple)
                                                     else (state2,))
    grads2 = torch.autograd.grad(outputs2, list(loaded.parameters()), upstream_grads(outputs2))
    for a, b in zip(outputs, outputs2):
        assert torch.equal(a, b)
    for name, a, b in zip(swapped, grads, grads2):
        assert torch.equal(a, b), name
    for n, p in ours.named_parameters():
        assert torch.equal(p, own[n]) and p.grad is None, n


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("context", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("kind", KINDS)
def test_no_grad_and_inference_mode_forward(kind, dtype, context, packed):
    """Forward under torch.no_grad / torch.inference_mode equals the grad-mode forward
    (bitwise: the forward does not depend on whether the backward is wanted) and builds no
    graph."""
    torch.manual_seed(0)
    module = FUSED[kind](MI, MH, num_layers=2, bidirectional=True, dtype=dtype,
                         **MODEL_OPTIONS[kind])
    x = torch.randn(MT, MB, MI, dtype=dtype, requires_grad=True)
    hx = _state(kind, (LD, MB, MH), dtype=dtype)

    def run():
        inp = pack_padded_sequence(x, [5, 2, 4], enforce_sorted=False) if packed else x
        out, state = module(inp, hx)
        return ((out.data if packed else out),) + (state if isinstance(state, tuple)
                                                   else (state,))

    with_grad = run()
    assert all(o.requires_grad for o in with_grad)
    with (torch.no_grad() if context == "no_grad" else torch.inference_mode()):
        without = run()
    for a, b in zip(without, with_grad):
        assert not a.requires_grad and a.grad_fn is None
        if context == "inference_mode":
            assert a.is_inference()
        assert torch.equal(a, b.detach())


def _frozen_pair(kind, frozen):
    ours, theirs = _module_pair(kind)
    for module in (ours, theirs):
        for name, p in module.named_parameters():
            if frozen(name):
                p.requires_grad_(False)
    return ours, theirs


FREEZE = {
    "first_layer": lambda name: "_l0" in name,
    "weight_hh": lambda name: name.startswith("weight_hh"),
    "reverse_direction": lambda name: name.endswith("_reverse"),
    "all": lambda name: True,
}


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("freeze", list(FREEZE))
@pytest.mark.parametrize("kind", KINDS)
def test_frozen_parameters(kind, freeze, packed):
    """requires_grad=False parameters get no .grad; the input, hx and the trainable
    parameters get torch.nn's gradients (loss.backward(), as in training)."""
    ours, theirs = _frozen_pair(kind, FREEZE[freeze])
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(MT, MB, MI, generator=gen, dtype=F64)
    hx = _state(kind, (LD, MB, MH))
    lengths = [5, 2, 4] if packed else None
    grads = []
    for module in (ours, theirs):
        leaf = x.clone().requires_grad_(True)
        h = tuple(s.clone().requires_grad_(True) for s in hx) if kind == "lstm" else \
            hx.clone().requires_grad_(True)
        inp = pack_padded_sequence(leaf, lengths, enforce_sorted=False) if packed else leaf
        out, state = module(inp, h)
        out = out.data if packed else out
        states = state if isinstance(state, tuple) else (state,)
        outputs = (out,) + states
        loss = sum((o * g).sum() for o, g in zip(outputs, upstream_grads(outputs)))
        loss.backward()
        result = {"x": leaf.grad}
        result.update({f"hx{i}": s.grad for i, s in
                       enumerate(h if isinstance(h, tuple) else (h,))})
        for name, p in module.named_parameters():
            if p.requires_grad:
                result[name] = p.grad
            else:
                assert p.grad is None, f"{type(module).__module__}: frozen {name} got a grad"
        grads.append(result)
    assert set(grads[0]) == set(grads[1])
    assert all(g is not None for g in grads[0].values())
    assert_tight(grads[0], grads[1])


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("wanted", ["input_only", "weights_only"])
@pytest.mark.parametrize("kind", KINDS)
def test_gradient_for_input_only_or_weights_only(kind, wanted, packed):
    """Only the input requires grad (all parameters frozen, no hx), or only the weights (a
    plain input): torch.autograd.grad gives torch.nn's gradients."""
    ours, theirs = _module_pair(kind)
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(MT, MB, MI, generator=gen, dtype=F64)
    results = []
    for module in (ours, theirs):
        for p in module.parameters():
            p.requires_grad_(wanted == "weights_only")
        leaf = x.clone().requires_grad_(wanted == "input_only")
        inp = pack_padded_sequence(leaf, [5, 2, 4], enforce_sorted=False) if packed else leaf
        out, state = module(inp)
        outputs = ((out.data if packed else out),) + (state if isinstance(state, tuple)
                                                      else (state,))
        wrt = [leaf] if wanted == "input_only" else list(module.parameters())
        results.append(dict(enumerate(torch.autograd.grad(outputs, wrt,
                                                          upstream_grads(outputs)))))
    assert_tight(results[0], results[1])
