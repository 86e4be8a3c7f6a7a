"""Bad input (docs/design.md §7), for the ops (padded and packed ``batch_sizes=`` form), the
modules and the cells: shapes, dtypes, devices (meta tensors), lengths, batch_sizes and the
options. Every case raises ValueError / TypeError / RuntimeError with a message that names
the argument; where torch.nn has the same check, the same exception type (and for the cells
the same order of checks) as torch.nn. Construction-time errors of the modules and cells.

Shape letters: T steps, B batch, I input, H hidden, P projection, R = P or H, L layers,
D directions, N packed rows.
"""

import re
import warnings

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fusedrnn
import fusedrnn.ops as ops
from fusedrnn import reference
from helpers import (
    B,
    B1,
    CELLS,
    CLASSES,
    F32,
    F64,
    FUSED,
    GATES,
    H,
    H1,
    I,
    I1,
    KINDS,
    LD,
    LENGTHS_UNSORTED,
    MB,
    MH,
    MI,
    MT,
    NN,
    NN_CLASSES,
    OPS,
    POSITIONAL,
    T,
    T1,
    VARIANTS,
    call_layer,
    case_id,
    fused,
    kind_of,
    make_layer_input,
    make_layer_pair,
    make_pair,
    make_tensors,
    variant_pair,
    _module_pair,
    _state,
)


pytestmark = pytest.mark.filterwarnings(
    "ignore:LSTM with projections is not supported with oneDNN:UserWarning")


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


# Already in test_bad_input_raises below for the padded form (same change).
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
                        continue  # test_bad_input_raises: dtype_input32_weights64, dtype_h0, dtype_bias
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
    theirs = NN_CLASSES[kind](OP_I, OP_H, num_layers=2, bidirectional=True, device="meta")
    x = torch.empty(OP_T, OP_B, OP_I, device="meta")
    y, state = module(x)
    y_nn, state_nn = theirs(x)
    assert y.device.type == "meta" and y.shape == y_nn.shape
    for a, b in zip(state if kind == "lstm" else (state,),
                    state_nn if kind == "lstm" else (state_nn,)):
        assert a.device.type == "meta" and a.shape == b.shape


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
    """The packed form validates the options like the padded one (test_bad_input_raises)."""
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


def _packed_input(batch_sizes=BATCH_SIZES, features=MI, dtype=F64, data=None):
    """A hand-made PackedSequence (N_PACKED rows of data unless given)."""
    bs = batch_sizes if isinstance(batch_sizes, torch.Tensor) else torch.tensor(batch_sizes)
    if data is None:
        data = torch.randn(N_PACKED, features, dtype=dtype)
    return PackedSequence(data, bs, None, None)




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
        "packed_batch_sizes_increasing": (lambda: (_packed_input(batch_sizes=[2, 3, 2, 1]), None),
                                          (ValueError, RuntimeError), "batch_sizes", ()),
        "packed_batch_sizes_zero": (lambda: (_packed_input(batch_sizes=[3, 3, 2, 0]), None),
                                    (ValueError, RuntimeError), "batch_sizes", ()),
        "packed_batch_sizes_sum_small": (lambda: (_packed_input(batch_sizes=[3, 2, 1, 1]), None),
                                         (ValueError, RuntimeError), "batch_sizes", ()),
        "packed_batch_sizes_sum_large": (lambda: (_packed_input(batch_sizes=[3, 3, 2, 1]), None),
                                         (ValueError, RuntimeError), "batch_sizes", ()),
        "packed_batch_sizes_float": (
            lambda: (_packed_input(batch_sizes=torch.tensor([3.0, 2, 2, 1])), None),
            (TypeError, RuntimeError), "batch_sizes", ()),
        "packed_batch_sizes_int32": (
            lambda: (_packed_input(batch_sizes=torch.tensor(BATCH_SIZES, dtype=torch.int32)), None),
            (TypeError, RuntimeError), "batch_sizes", ()),
        "packed_data_rank_3": (lambda: (_packed_input(data=torch.randn(N_PACKED, 1, MI, dtype=F64)),
                                        None), RuntimeError, "input", ()),
        "packed_data_features": (lambda: (_packed_input(features=MI + 1), None), RuntimeError,
                                 "input", ()),
        "packed_data_float32": (lambda: (_packed_input(dtype=F32), None), (ValueError, RuntimeError),
                                "dtype", ()),
        "packed_data_int64": (lambda: (_packed_input(data=torch.ones(N_PACKED, MI,
                                                               dtype=torch.int64)), None),
                              (ValueError, RuntimeError, TypeError), "dtype", ()),
        "packed_hx_batch": (lambda: (_packed_input(), _state(kind, (LD, 4, MH))), RuntimeError,
                            "hidden", ()),
        "packed_hx_hidden": (lambda: (_packed_input(), _state(kind, (LD, 3, MH + 1))), RuntimeError,
                             "hidden", ()),
        "packed_hx_float32": (lambda: (_packed_input(), _state(kind, (LD, 3, MH), dtype=F32)),
                              RuntimeError, "h0|hx|hidden", ()),
        "packed_data_meta": (lambda: (_packed_input(data=torch.randn(N_PACKED, MI, dtype=F64,
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


CELL_CLASSES = {"lstm": fusedrnn.LSTMCell, "gru": fusedrnn.GRUCell}


def _cell_bad_input_cases(kind):
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
    for kind in KINDS for name, spec in _cell_bad_input_cases(kind).items()
])
def test_cell_bad_input(kind, name):
    make, errors, match, _ = _cell_bad_input_cases(kind)[name]
    torch.manual_seed(0)
    cell = CELL_CLASSES[kind](MI, MH, dtype=F64)
    inp, hx = make()
    with pytest.raises(errors, match=match):
        cell(inp, hx)


SHAPE_ERRORS = (RuntimeError, ValueError)


DTYPE_ERRORS = (RuntimeError, TypeError, ValueError)


def _bad(kind, **changes):
    """Valid arguments (T=4, B=3, I=5, H=6, P=0) with some entries replaced."""
    tensors = make_tensors(kind, 4, 3, 5, 6)
    kwargs = {}
    for name, value in changes.items():
        if name in tensors:
            tensors[name] = value
        else:
            kwargs[name] = value
    return tensors, kwargs


def _bad_input_cases():
    cases = []
    for kind in ("lstm", "gru"):
        g = GATES[kind]
        t = make_tensors(kind, 4, 3, 5, 6)
        cases += [
            (kind, "input_rank_2", dict(input=t["input"][0]), SHAPE_ERRORS, "input"),
            (kind, "input_rank_4", dict(input=t["input"][None]), SHAPE_ERRORS, "input"),
            (kind, "T_zero", dict(input=t["input"][:0]), SHAPE_ERRORS, "input"),
            (kind, "weight_ih_cols", dict(weight_ih=torch.randn(g * 6, 4, dtype=F64)),
             SHAPE_ERRORS, "weight_ih"),
            (kind, "weight_ih_rows", dict(weight_ih=torch.randn(g * 6 + 1, 5, dtype=F64)),
             SHAPE_ERRORS, "weight_ih"),
            (kind, "weight_hh_shape", dict(weight_hh=torch.randn(g * 6, 5, dtype=F64)),
             SHAPE_ERRORS, "weight_hh"),
            (kind, "weight_hh_rank", dict(weight_hh=torch.randn(g * 6 * 6, dtype=F64)),
             SHAPE_ERRORS, "weight_hh"),
            (kind, "bias_ih_size", dict(bias_ih=torch.randn(g * 6 + 2, dtype=F64)),
             SHAPE_ERRORS, "bias_ih"),
            (kind, "bias_hh_size", dict(bias_hh=torch.randn(6, dtype=F64)),
             SHAPE_ERRORS, "bias_hh"),
            (kind, "h0_hidden", dict(h0=torch.randn(3, 5, dtype=F64)), SHAPE_ERRORS, "h0"),
            (kind, "h0_batch", dict(h0=torch.randn(2, 6, dtype=F64)), SHAPE_ERRORS, "h0"),
            (kind, "h0_rank", dict(h0=torch.randn(1, 3, 6, dtype=F64)), SHAPE_ERRORS, "h0"),
            (kind, "dtype_input32_weights64", dict(input=t["input"].float()),
             DTYPE_ERRORS, "input|weight_ih"),
            (kind, "dtype_h0", dict(h0=t["h0"].float()), DTYPE_ERRORS, "h0"),
            (kind, "dtype_bias", dict(bias_hh=t["bias_hh"].float()), DTYPE_ERRORS, "bias_hh"),
            (kind, "integer_input", dict(input=torch.ones(4, 3, 5, dtype=torch.int64),
                                         weight_ih=t["weight_ih"]), DTYPE_ERRORS, "input"),
            (kind, "lengths_zero", dict(lengths=torch.tensor([4, 0, 2])), SHAPE_ERRORS,
             "lengths"),
            (kind, "lengths_above_T", dict(lengths=torch.tensor([4, 5, 2])), SHAPE_ERRORS,
             "lengths"),
            (kind, "lengths_negative", dict(lengths=torch.tensor([4, -1, 2])), SHAPE_ERRORS,
             "lengths"),
            (kind, "lengths_size", dict(lengths=torch.tensor([4, 2])), SHAPE_ERRORS,
             "lengths"),
            (kind, "lengths_rank", dict(lengths=torch.tensor([[4, 2, 1]])), SHAPE_ERRORS,
             "lengths"),
            (kind, "lengths_float", dict(lengths=torch.tensor([4.0, 2.0, 1.0])),
             DTYPE_ERRORS, "lengths"),
            (kind, "grad_clip_negative", dict(grad_clip=-1.0), (ValueError,), "grad_clip"),
            (kind, "grad_clip_zero", dict(grad_clip=0.0), (ValueError,), "grad_clip"),
            (kind, "grad_clip_nan", dict(grad_clip=float("nan")), (ValueError,), "grad_clip"),
            (kind, "grad_clip_inf", dict(grad_clip=float("inf")), (ValueError,), "grad_clip"),
            (kind, "grad_clip_bool", dict(grad_clip=True), (TypeError,), "grad_clip"),
            (kind, "grad_clip_str", dict(grad_clip="0.5"), (TypeError,), "grad_clip"),
            (kind, "grad_clip_mode", dict(grad_clip=1.0, grad_clip_mode="l2"), (ValueError,),
             "grad_clip_mode"),
            (kind, "grad_clip_mode_alone", dict(grad_clip_mode="max"), (ValueError,),
             "grad_clip_mode"),
            (kind, "truncate_zero", dict(truncate=0), (ValueError,), "truncate"),
            (kind, "truncate_negative", dict(truncate=-2), (ValueError,), "truncate"),
            (kind, "truncate_float", dict(truncate=2.0), (TypeError,), "truncate"),
            (kind, "truncate_bool", dict(truncate=True), (TypeError,), "truncate"),
        ]
        if kind == "lstm":
            cases += [
                (kind, "c0_shape", dict(c0=torch.randn(3, 5, dtype=F64)), SHAPE_ERRORS, "c0"),
                (kind, "weight_hr_shape", dict(weight_hr=torch.randn(3, 5, dtype=F64)),
                 SHAPE_ERRORS, "weight_hr|weight_hh"),
                (kind, "cell_clip_negative", dict(cell_clip=-0.5), (ValueError,), "cell_clip"),
                (kind, "cell_clip_inf", dict(cell_clip=float("inf")), (ValueError,),
                 "cell_clip"),
                (kind, "cell_clip_bool", dict(cell_clip=True), (TypeError,), "cell_clip"),
                (kind, "cell_clip_str", dict(cell_clip="1"), (TypeError,), "cell_clip"),
            ]
        else:
            cases.append((kind, "gru_has_no_cell_clip", dict(cell_clip=1.0), (TypeError,),
                          "cell_clip"))
    return [pytest.param(*c, id=f"{c[0]}-{c[1]}") for c in cases]


@pytest.mark.parametrize("kind, name, changes, errors, match", _bad_input_cases())
def test_bad_input_raises(kind, name, changes, errors, match):
    tensors, kwargs = _bad(kind, **changes)
    with pytest.raises(errors, match=match) as info:
        call_layer(OPS[kind], kind, tensors, **kwargs)
    if name.startswith("dtype") or name == "integer_input":
        assert re.search(r"dtype|[Ff]loat|[Dd]ouble|[Ll]ong|[Ii]nt", str(info.value))
    # The same call with the offending entry fixed works (the test is about that entry).
    good, good_kwargs = _bad(kind)
    call_layer(OPS[kind], kind, good, **good_kwargs)


def test_check_options_is_shared_with_reference():
    """ops validates options with the same function (same messages) as the reference."""
    tensors = make_tensors("gru", 3, 2, 3, 4)
    for options in (dict(grad_clip=-1.0), dict(truncate=2.5), dict(grad_clip_mode="x")):
        with pytest.raises((TypeError, ValueError)) as ours:
            call_layer(ops.gru_layer, "gru", tensors, **options)
        with pytest.raises(type(ours.value)) as ref:
            call_layer(reference.gru_layer, "gru", tensors, **options)
        assert str(ours.value) == str(ref.value)


BAD_OPTIONS = [
    ("grad_clip", -1.0, ValueError),
    ("grad_clip", 0.0, ValueError),
    ("grad_clip", float("nan"), ValueError),
    ("grad_clip", float("inf"), ValueError),
    ("grad_clip", True, TypeError),
    ("grad_clip", "1", TypeError),
    ("grad_clip_mode", "l2", ValueError),
    ("truncate", 0, ValueError),
    ("truncate", -1, ValueError),
    ("truncate", 1.5, TypeError),
    ("truncate", 2.0, TypeError),
    ("truncate", False, TypeError),
    ("cell_clip", -0.5, ValueError),
    ("cell_clip", float("inf"), ValueError),
    ("cell_clip", "0.5", TypeError),
]


@pytest.mark.parametrize("kind, name, value, exc", [
    pytest.param(kind, name, value, exc, id=f"{kind}-{name}={value!r}")
    for kind in KINDS for name, value, exc in BAD_OPTIONS
    if not (kind == "gru" and name == "cell_clip")
])
def test_invalid_options_raise_at_construction(kind, name, value, exc):
    with pytest.raises(exc, match=name):
        CLASSES[kind][0](I1, H1, **{name: value})


def test_gru_has_no_cell_clip():
    with pytest.raises(TypeError, match="cell_clip"):
        fusedrnn.GRU(I1, H1, cell_clip=1.0)


@pytest.mark.parametrize("case", ["input_size", "hidden_shape", "input_rank"])
@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_raises_like_torchnn(kind, case):
    ours, theirs = make_layer_pair(kind)
    x, hx = make_layer_input(kind)
    if case == "input_size":
        x = torch.randn(T1, B1, I1 + 1, dtype=F64)
    elif case == "hidden_shape":
        hx = (torch.randn(1, B1 + 1, H1, dtype=F64),) * 2 if kind == "lstm" else \
            torch.randn(1, B1 + 1, H1, dtype=F64)
    else:
        x = torch.randn(T1, B1, I1, 1, dtype=F64)
    with pytest.raises(Exception) as expected:
        theirs(x, hx)
    with pytest.raises(type(expected.value)):
        ours(x, hx)


def _exception_type(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the type is what is compared
        return type(e), e
    return None, None


def assert_raises_like(ours_fn, theirs_fn):
    """torch.nn raises (the table entry is a real error); fusedrnn raises the same type
    (or a subclass of it)."""
    theirs_type, theirs_exc = _exception_type(theirs_fn)
    assert theirs_type is not None, "torch.nn accepts this: the table entry is wrong"
    ours_type, ours_exc = _exception_type(ours_fn)
    assert ours_type is not None and issubclass(ours_type, theirs_type), (
        f"fusedrnn raised {ours_type.__name__ if ours_type else 'nothing'} ({ours_exc}); "
        f"torch.nn raises {theirs_type.__name__} ({theirs_exc})")


CELL_CTOR_ERRORS = {
    "hidden_float": ((I, 2.0), {}),
    "input_float": ((2.0, H), {}),
    "hidden_negative": ((I, -1), {}),
}


@pytest.mark.parametrize("case", list(CELL_CTOR_ERRORS))
@pytest.mark.parametrize("name", CELLS)
def test_cell_constructor_errors_like_torchnn(name, case):
    args, kwargs = CELL_CTOR_ERRORS[case]
    assert_raises_like(lambda: fused(name)(*args, **kwargs), lambda: NN[name](*args, **kwargs))


def _cell_bad_inputs(kind):
    def state(*shape, dtype=F64):
        s = torch.randn(*shape, dtype=dtype)
        return (s, torch.randn(*shape, dtype=dtype)) if kind == "lstm" else s

    cases = {
        "input_3d": (torch.randn(1, B, I, dtype=F64), None),
        "input_0d": (torch.tensor(1.0, dtype=F64), None),
        "input_size": (torch.randn(B, I + 1, dtype=F64), None),
        "hx_batch": (torch.randn(B, I, dtype=F64), state(B + 1, H)),
        "hx_hidden": (torch.randn(B, I, dtype=F64), state(B, H + 1)),
        "hx_rank_for_1d_input": (torch.randn(I, dtype=F64), state(1, H)),
        "hx_rank_for_2d_input": (torch.randn(B, I, dtype=F64), state(H)),
        "input_dtype": (torch.randn(B, I, dtype=F32), None),
        "hx_dtype": (torch.randn(B, I, dtype=F64), state(B, H, dtype=F32)),
        # two faults: torch.nn reports the size first (test_cell_error_order_like_torchnn)
        "input_size_and_dtype": (torch.randn(B, I + 1, dtype=F32), None),
        "hx_batch_and_input_dtype": (torch.randn(B, I, dtype=F32), state(B + 1, H)),
        "hx_hidden_and_dtype": (torch.randn(B, I, dtype=F64), state(B, H + 1, dtype=F32)),
    }
    if kind == "lstm":  # torch.nn: RuntimeError "lstm_cell expects two hidden states"
        h = torch.randn(B, H, dtype=F64)
        cases["hx_one_state"] = (torch.randn(B, I, dtype=F64), (h,))
        cases["hx_three_states"] = (torch.randn(B, I, dtype=F64), (h, h, h))
        # unbatched: torch.nn indexes hx[1] (IndexError); a None state: AttributeError
        cases["hx_one_state_unbatched"] = (torch.randn(I, dtype=F64), (h[0],))
        cases["hx_none_state"] = (torch.randn(B, I, dtype=F64), (h, None))
    return cases


CELL_BAD_CASES = [(n, c) for n in CELLS for c in _cell_bad_inputs(kind_of(n))]


@pytest.mark.parametrize("name, case", CELL_BAD_CASES,
                         ids=[f"{n}-{c}" for n, c in CELL_BAD_CASES])
def test_cell_bad_input_like_torchnn(name, case):
    ours, theirs = make_pair(name)
    x, hx = _cell_bad_inputs(kind_of(name))[case]
    assert_raises_like(lambda: ours(x, hx), lambda: theirs(x, hx))


def _outcome(fn):
    """(exception type, first line of its message), or (None, None) if fn returns."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - what is raised is what is compared
        return type(e), str(e).split("\n")[0]
    return None, None


# torch.nn's own cell checks (its Python forward and its cell kernels); other torch.nn
# errors come from its arithmetic (e.g. an unbatched input with a state [H, H] when B == H)
# and only their type is compared.
CELL_CHECK_MESSAGE = re.compile(r"(input has inconsistent|Input batch size|hidden\d has "
                                r"inconsistent|lstm_cell expects|(LSTM|GRU)Cell: Expected|"
                                r"Dimension out of range)")


def _cell_grid(kind):
    """(input, hx) for every mix of faults: input rank 0-3, width, dtype; each state None
    or rank 1-3, batch, width, dtype (for the LSTM the cell state c over a subset)."""
    def tensor(rank, batch, width, dtype):
        return torch.randn({0: (), 1: (width,), 2: (batch, width),
                            3: (1, batch, width)}[rank], dtype=dtype)

    inputs = [tensor(r, B, w, d) for r in (0, 1, 2, 3) for w in (I, I + 1) for d in (F64, F32)]
    states = [tensor(r, b, w, d) for r in (1, 2, 3) for b in (B, B + 1) for w in (H, H + 1)
              for d in (F64, F32)]
    if kind == "gru":
        hxs = [None] + states
    else:
        cs = [tensor(2, B, H, F64), tensor(3, B, H, F64), tensor(2, B + 1, H, F64),
              tensor(2, B, H + 1, F64), tensor(2, B, H, F32), tensor(1, B, H, F64)]
        hxs = [None] + [(h, c) for h in states for c in cs]
    return [(x, hx) for x in inputs for hx in hxs]


@pytest.mark.parametrize("name", CELLS)
def test_cell_error_order_like_torchnn(name):
    """Over every mix of faults in input and states, the cells raise where torch.nn raises,
    the same exception type and, for the rank and size checks, the same message: the first
    fault torch.nn reports is the one reported (sizes before dtypes). torch.nn finds a dtype
    mismatch in a matrix product ("mat1 and mat2 must have the same dtype"); fusedrnn names
    the argument instead. Where torch.nn's checks pass and its arithmetic fails, only the
    type is compared. Two differences, on purpose (docs/design.md § 7): torch.nn
    type-promotes an LSTM cell state c of another dtype, and broadcasts an unbatched LSTM's
    2-D cell state [H, H] into a 3-D result (when B == H); fusedrnn rejects both."""
    ours, theirs = make_pair(name)
    mismatches = []
    for x, hx in _cell_grid(kind_of(name)):
        expected = _outcome(lambda: theirs(x, hx))
        got = _outcome(lambda: ours(x, hx))
        if expected[0] is None:
            promoted = isinstance(hx, tuple) and hx[1].dtype != x.dtype
            # torch.nn broadcasts an unbatched LSTM's 2-D c [H, H] (B == H) into a 3-D
            # result; fusedrnn rejects it
            mixed = isinstance(hx, tuple) and hx[1].dim() != x.dim()
            if got[0] is not None and not ((promoted or mixed) and "hx[1]" in got[1]):
                mismatches.append((x.shape, x.dtype, hx, "raised", got))
            continue
        if got[0] is None or not issubclass(got[0], expected[0]):
            mismatches.append((x.shape, x.dtype, hx, expected, got))
        elif "must have the same dtype" in expected[1]:
            if "dtype" not in got[1]:
                mismatches.append((x.shape, x.dtype, hx, expected, got))
        elif CELL_CHECK_MESSAGE.match(expected[1]) and got[1] != expected[1]:
            mismatches.append((x.shape, x.dtype, hx, expected, got))
    assert not mismatches, f"{len(mismatches)} cases differ, first: {mismatches[0]}"


CTOR_ERRORS = [
    ("LSTM", (I, H), dict(dropout=-0.1)),
    ("LSTM", (I, H), dict(dropout=1.5)),
    ("GRU", (I, H), dict(dropout=2)),
    ("LSTM", (I, H), dict(dropout=True)),
    ("GRU", (I, H), dict(dropout="x")),
    ("LSTM", (I, 4.0), {}),
    ("GRU", (3.0, H), {}),
    ("LSTM", (0, H), {}),
    ("GRU", (I, 0), {}),
    ("LSTM", (I, -2), {}),
    ("GRU", (I, H), dict(num_layers=0)),
    ("LSTM", (I, H), dict(num_layers=2.0)),
    ("LSTM", (I, H), dict(proj_size=-1)),
    ("LSTM", (I, H), dict(proj_size=H)),
    ("LSTM", (I, H), dict(proj_size=H + 1)),
    ("LSTM", (I, H), dict(proj_size=2.0)),
    ("GRU", (I, H), dict(proj_size=2)),
    ("GRU", (I, H), dict(proj_size=0)),
]


@pytest.mark.parametrize("name, args, kwargs", CTOR_ERRORS,
                         ids=[f"{n}-{a}-{k}" for n, a, k in CTOR_ERRORS])
def test_constructor_errors_like_torchnn(name, args, kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_raises_like(lambda: fused(name)(*args, **kwargs),
                           lambda: NN[name](*args, **kwargs))


def _seq_bad_inputs(kind, proj):
    """name -> (input, hx) for a 2-layer bidirectional module (I, H[, P]), float64."""
    L, D, R = 2, 2, proj or H

    def state(h_shape, c_shape=None, dtype=F64):
        h = torch.randn(*h_shape, dtype=dtype)
        if kind == "lstm":
            return h, torch.randn(*(c_shape or h_shape[:-1] + (H,)), dtype=dtype)
        return h

    x = torch.randn(T, B, I, dtype=F64)
    packed = pack_padded_sequence(x, LENGTHS_UNSORTED, enforce_sorted=False)
    cases = {
        "input_1d": (torch.randn(I, dtype=F64), None),
        "input_4d": (x[None], None),
        "input_size": (torch.randn(T, B, I + 1, dtype=F64), None),
        "input_size_unbatched": (torch.randn(T, I + 1, dtype=F64), None),
        "input_dtype": (x.float(), None),
        "zero_steps": (x[:0], None),
        "hx_batch": (x, state((L * D, B + 1, R))),
        "hx_layers": (x, state((L * D - 1, B, R))),
        "hx_hidden": (x, state((L * D, B, R + 1))),
        "hx_2d_for_batched": (x, state((L * D, R))),
        "hx_3d_for_unbatched": (x[:, 0], state((L * D, 1, R))),
        "hx_dtype": (x, state((L * D, B, R), dtype=F32)),
        "packed_hx_batch": (packed, state((L * D, B - 1, R))),
        "packed_input_size": (pack_padded_sequence(torch.randn(T, B, I + 1, dtype=F64),
                                                   LENGTHS_UNSORTED, enforce_sorted=False),
                              None),
    }
    if kind == "lstm":
        cases["cx_hidden"] = (x, state((L * D, B, R), (L * D, B, H + 1)))
        cases["cx_batch"] = (x, state((L * D, B, R), (L * D, B + 1, H)))
        # torch.nn: RuntimeError "lstm expects two hidden states"
        cases["hx_three_states"] = (x, state((L * D, B, R)) + (torch.randn(L * D, B, H,
                                                                          dtype=F64),))
        if proj:
            cases["h_is_hidden_not_proj"] = (x, state((L * D, B, H)))
    return cases


SEQ_BAD_CASES = [(v, c) for v in VARIANTS
                 for c in _seq_bad_inputs(kind_of(VARIANTS[v][0]), VARIANTS[v][1])]


@pytest.mark.parametrize("variant, case", SEQ_BAD_CASES,
                         ids=[f"{v}-{c}" for v, c in SEQ_BAD_CASES])
def test_bad_forward_input_like_torchnn(variant, case):
    name, proj = VARIANTS[variant]
    ours, theirs = variant_pair(variant, num_layers=2, bidirectional=True)
    x, hx = _seq_bad_inputs(kind_of(name), proj)[case]
    assert_raises_like(lambda: ours(x, hx), lambda: theirs(x, hx))
