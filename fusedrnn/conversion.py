"""Swap torch.nn's recurrent modules for fusedrnn's and back: ``convert`` and ``to_torch``.

``convert(module, **options)`` replaces every ``torch.nn.LSTM``, ``GRU``, ``LSTMCell`` and
``GRUCell`` in ``module`` (the module itself included, at any depth, in ``Sequential``,
``ModuleList``, ``ModuleDict`` or any other parent) by its fusedrnn namesake;
``to_torch(module)`` does the reverse. What carries over (docs/adopting.md):

* the configuration: every constructor argument (input_size, hidden_size, num_layers, bias,
  batch_first, dropout, bidirectional, proj_size);
* the parameters themselves: the new module holds the very same ``Parameter`` objects
  (values, device, dtype, ``requires_grad``, ``.grad``), so an optimizer built before the
  swap keeps training the swapped model, with its state;
* the training flag and the module's hooks (forward, forward pre, backward, state_dict and
  load_state_dict hooks: the hook tables are handed over, so their handles still remove
  them). Attributes set on a module by hand are not carried over.

Parents are changed in place (``setattr(parent, name, new)``); a module reachable from two
parents becomes one new module in both. The module passed in is returned, or its
replacement when it is itself one of the four classes, so always use the return value.

Only the exact classes are swapped. A user subclass (of torch.nn.LSTM, or of fusedrnn.LSTM
for ``to_torch``) may rely on its class in its own code, so it is left as it is, with a
warning; so is a module whose parameters are not the plain set its class registers (for
instance after ``torch.nn.utils.weight_norm``, which replaces a weight by two others), and a
module with buffers or children of its own. ``torch.nn.utils.parametrize`` gives a module a
class of its own, so it is a subclass here too.

Options (``grad_clip``, ``grad_clip_mode``, ``truncate``, ``track_grad_norms`` for LSTM and
GRU; ``cell_clip`` for LSTM) are checked like the constructors check them, with the same
exceptions and messages, before anything is changed. Each given option is set on every
LSTM/GRU layer it applies to: the converted ones and those that were fusedrnn modules
already (options not given are left as they are there, so converting twice is harmless).
The cells take no options. An option that asks for something (``grad_clip``, ``truncate``,
``cell_clip`` not None, ``grad_clip_mode="norm"``, ``track_grad_norms=True``) while no
module in the tree takes it (``cell_clip`` and no LSTM; any option and only cells) is a
``ValueError``: it would otherwise be dropped silently.

``to_torch`` drops the options. It warns when that changes results: ``cell_clip`` (the
forward), ``grad_clip`` or ``truncate`` (the gradients). ``track_grad_norms`` only records,
so dropping it is silent.
"""
import warnings
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from .modules import GRU, LSTM, GRUCell, LSTMCell
from ._options import check_options

__all__ = ["convert", "to_torch"]

_UNSET = object()

TO_FUSED = {nn.LSTM: LSTM, nn.GRU: GRU, nn.LSTMCell: LSTMCell, nn.GRUCell: GRUCell}
TO_TORCH = {fused: torch_cls for torch_cls, fused in TO_FUSED.items()}

# option -> the fusedrnn classes that take it
_TAKERS = {
    "grad_clip": (LSTM, GRU),
    "grad_clip_mode": (LSTM, GRU),
    "truncate": (LSTM, GRU),
    "track_grad_norms": (LSTM, GRU),
    "cell_clip": (LSTM,),
}
_DEFAULTS = {"grad_clip": None, "grad_clip_mode": "value", "truncate": None,
             "cell_clip": None, "track_grad_norms": False}


def _config(module: nn.Module) -> dict:
    """The constructor arguments (device and dtype aside) of one of the eight classes."""
    if isinstance(module, nn.RNNBase):
        config = dict(input_size=module.input_size, hidden_size=module.hidden_size,
                      num_layers=module.num_layers, bias=module.bias,
                      batch_first=module.batch_first, dropout=module.dropout,
                      bidirectional=module.bidirectional)
        if module.mode == "LSTM":
            config["proj_size"] = module.proj_size
        return config
    return dict(input_size=module.input_size, hidden_size=module.hidden_size,
                bias=module.bias)


def _rebuild(module: nn.Module, cls) -> Optional[nn.Module]:
    """A ``cls`` with module's configuration, Parameter objects, training flag and hooks;
    None when module's parameters, buffers or children are not what its class registers."""
    params = module._parameters
    dtypes = {p.dtype for p in params.values() if p is not None}
    dtype = dtypes.pop() if len(dtypes) == 1 else None
    if dtype is not None and not dtype.is_floating_point:
        dtype = None
    with warnings.catch_warnings():
        # (the constructor's warnings, e.g. dropout with one layer, were given when the
        # module was built)
        warnings.simplefilter("ignore")
        # On the meta device: nothing is allocated and the global RNG is not drawn from.
        new = cls(**_config(module), device="meta", dtype=dtype)
    expected = new._parameters
    if (list(expected) != list(params) or module._buffers or module._modules
            or any((p is None) != (expected[n] is None)
                   or (p is not None and p.shape != expected[n].shape)
                   for n, p in params.items())):
        return None
    for name, param in params.items():
        if param is not None:
            setattr(new, name, param)  # RNNBase's __setattr__ keeps _flat_weights in step
    if isinstance(new, nn.RNNBase):
        new._init_flat_weights()
    new.training = module.training
    for key, value in vars(module).items():  # the hook tables and their flags
        if "hook" in key:
            new.__dict__[key] = value
    return new


def _walk(root: nn.Module) -> Tuple[List[nn.Module], List[Tuple[nn.Module, str, nn.Module]]]:
    """Every module once (root first) and every (parent, name, child) slot."""
    modules, slots, seen = [root], [], {id(root)}
    stack = [root]
    while stack:  # depth first, in registration order (as named_modules)
        parent = stack.pop()
        if parent is not root:
            modules.append(parent)
        children = []
        for name, child in parent._modules.items():
            if child is None:
                continue
            slots.append((parent, name, child))
            if id(child) not in seen:
                seen.add(id(child))
                children.append(child)
        stack.extend(reversed(children))
    return modules, slots


def _describe(module: nn.Module) -> str:
    return type(module).__qualname__


def _swap(root: nn.Module, table: Dict[type, type], who: str):
    """Plan the swap of every module whose class is a key of table: (replacements by id,
    modules left alone as (module, reason), all modules, slots). Changes nothing."""
    if not isinstance(root, nn.Module):
        raise TypeError(f"fusedrnn.{who}: expected a torch.nn.Module, got "
                        f"{type(root).__name__}")
    modules, slots = _walk(root)
    new: Dict[int, nn.Module] = {}
    skipped: List[Tuple[nn.Module, str]] = []
    sources = tuple(table)
    for module in modules:
        cls = type(module)
        if cls in table:
            replacement = _rebuild(module, table[cls])
            if replacement is None:
                skipped.append((module, "its parameters, buffers or children are not the "
                                        "ones its class registers (weight_norm?)"))
            else:
                new[id(module)] = replacement
        elif isinstance(module, sources) and not isinstance(module, tuple(table.values())):
            skipped.append((module, "a subclass (only the exact classes are swapped)"))
    return new, skipped, modules, slots


def _warn_skipped(who: str, skipped):
    if skipped:
        names = "; ".join(f"{_describe(m)}: {why}" for m, why in skipped)
        warnings.warn(f"fusedrnn.{who}: left unchanged: {names}", UserWarning, stacklevel=3)


def _commit(root: nn.Module, new: Dict[int, nn.Module], slots) -> nn.Module:
    for parent, name, child in slots:
        if id(child) in new:
            setattr(parent, name, new[id(child)])
    return new.get(id(root), root)


def _set_options(module: nn.Module, options: dict) -> None:
    """Set given options on a fusedrnn LSTM/GRU, normalised as its constructor does."""
    for name, value in options.items():
        if not isinstance(module, _TAKERS[name]):
            continue
        if name in ("grad_clip", "cell_clip"):
            value = None if value is None else float(value)
        elif name == "truncate":
            value = None if value is None else int(value)
        setattr(module, name, value)


def convert(module: nn.Module, *, grad_clip=_UNSET, grad_clip_mode=_UNSET, truncate=_UNSET,
            cell_clip=_UNSET, track_grad_norms=_UNSET) -> nn.Module:
    """Replace every torch.nn.LSTM / GRU / LSTMCell / GRUCell in ``module`` (itself included)
    by the fusedrnn class with the same configuration, the same Parameter objects, training
    flag and hooks, and set the given options on the LSTM/GRU layers (fusedrnn ones already
    there included). Returns ``module``, or its replacement when ``module`` is itself one
    of the four classes.

    Example::

        model = fusedrnn.convert(model, grad_clip=1.0)

    Options (keyword-only, as in fusedrnn.LSTM/GRU): ``grad_clip``, ``grad_clip_mode``,
    ``truncate``, ``track_grad_norms`` (LSTM, GRU) and ``cell_clip`` (LSTM). Checked like
    the constructors check them, before anything changes. A given option asking for
    something that no module in the tree takes is a ValueError. Subclasses and modules with
    an unusual parameter set are left as they are, with a warning. See the module
    docstring and docs/adopting.md.
    """
    given = {name: value for name, value in (
        ("grad_clip", grad_clip), ("grad_clip_mode", grad_clip_mode),
        ("truncate", truncate), ("cell_clip", cell_clip),
        ("track_grad_norms", track_grad_norms)) if value is not _UNSET}
    full = {**_DEFAULTS, **given}
    check_options(full["grad_clip"], full["grad_clip_mode"], full["truncate"])
    if not isinstance(full["track_grad_norms"], bool):
        raise TypeError("fusedrnn: track_grad_norms must be a bool, got "
                        f"{type(full['track_grad_norms']).__name__}")
    check_options(None, "value", None, full["cell_clip"])

    new, skipped, modules, slots = _swap(module, TO_FUSED, "convert")
    # The fusedrnn LSTM/GRU layers after the swap: converted ones and those already there.
    layers = [new.get(id(m), m) for m in modules]
    layers = [m for m in layers if type(m) in (LSTM, GRU)]
    for name, value in given.items():
        if value != _DEFAULTS[name] and not any(isinstance(m, _TAKERS[name]) for m in layers):
            takers = " or ".join(c.__name__ for c in _TAKERS[name])
            raise ValueError(f"fusedrnn.convert: {name}={value!r} applies to {takers} "
                             f"modules, and the module contains none")
    if given:
        skipped += [(m, "a subclass of a fusedrnn class: options not applied")
                    for m in modules if isinstance(m, (LSTM, GRU)) and type(m) not in
                    (LSTM, GRU)]
    _warn_skipped("convert", skipped)
    for layer in layers:
        _set_options(layer, given)
    return _commit(module, new, slots)


def to_torch(module: nn.Module) -> nn.Module:
    """The reverse of :func:`convert`: every fusedrnn LSTM / GRU / LSTMCell / GRUCell in
    ``module`` (itself included) becomes its torch.nn namesake with the same configuration,
    Parameter objects, training flag and hooks. The fusedrnn options are dropped, with a
    warning when that changes results (``cell_clip``: the forward; ``grad_clip``,
    ``truncate``: the gradients). Returns ``module``, or its replacement when ``module`` is
    itself one of the four classes. Use it for tools that look for torch.nn's classes
    (dynamic quantization, TorchScript, older exporters)."""
    new, skipped, modules, slots = _swap(module, TO_TORCH, "to_torch")
    _warn_skipped("to_torch", skipped)
    dropped = []
    for m in modules:
        if id(m) not in new or not isinstance(m, (LSTM, GRU)):
            continue
        parts = [f"{name}={getattr(m, name)!r}" for name in ("grad_clip", "truncate",
                                                              "cell_clip")
                 if getattr(m, name, None) is not None]
        if parts:
            dropped.append(f"{type(m).__name__}({', '.join(parts)})")
    if dropped:
        warnings.warn("fusedrnn.to_torch: torch.nn has no equivalent of these options, which "
                      "change the forward (cell_clip) or the gradients (grad_clip, "
                      f"truncate); dropped: {'; '.join(dropped)}", UserWarning, stacklevel=2)
    return _commit(module, new, slots)
