"""Checks of the extra keyword options (grad_clip, grad_clip_mode, truncate, cell_clip),
shared by the modules, the ops and the reference so that all raise the same errors
(docs/design.md §3)."""
import math
import numbers

__all__ = ["GRAD_CLIP_MODES", "check_options"]

GRAD_CLIP_MODES = ("value", "norm")


def _check_positive_finite(name, value):
    """None, or a real number (not bool) that is > 0 and finite."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"fusedrnn: {name} must be a positive finite number, "
            f"got {value!r} of type {type(value).__name__}"
        )
    # Comparisons rather than math.isfinite: under torch.compile(dynamic=True) a module's
    # float option is a symbolic float, which comparisons handle (NaN fails both).
    if not (value > 0 and value < math.inf):
        raise ValueError(f"fusedrnn: {name} must be a positive finite number, got {value!r}")


def check_options(grad_clip, grad_clip_mode, truncate, cell_clip=None):
    """Validate the gradient-clipping, truncation and cell-clip options.

    grad_clip:      None or a positive finite real number (bool is rejected).
    grad_clip_mode: "value" or "norm" (checked even when grad_clip is None, so that a typo
                    is reported instead of silently ignored).
    truncate:       None or an int >= 1 (bool and float are rejected).
    cell_clip:      None or a positive finite real number (LSTM only).

    Raises TypeError for a value of the wrong type and ValueError for a value of the right
    type outside the allowed range; messages name the argument, what was expected and what
    was received.
    """
    _check_positive_finite("grad_clip", grad_clip)
    if not isinstance(grad_clip_mode, str) or grad_clip_mode not in GRAD_CLIP_MODES:
        raise ValueError(
            f'fusedrnn: grad_clip_mode must be one of "value", "norm", got {grad_clip_mode!r}'
        )
    if truncate is not None:
        if isinstance(truncate, bool) or not isinstance(truncate, numbers.Integral):
            raise TypeError(
                f"fusedrnn: truncate must be a positive int, "
                f"got {truncate!r} of type {type(truncate).__name__}"
            )
        if truncate < 1:
            raise ValueError(f"fusedrnn: truncate must be a positive int (>= 1), got {truncate!r}")
    _check_positive_finite("cell_clip", cell_clip)
