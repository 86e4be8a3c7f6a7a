"""Truncated backpropagation through time (TBPTT) for sequences longer than one forward pass.

A sequence of thousands of steps (a long text, a sensor log) is cut into chunks of ``k1``
steps. Each chunk is one forward pass, one backward pass and (usually) one optimiser step;
the state at the end of a chunk becomes the initial state of the next one, detached, so the
model keeps its memory of the past ("stateful" training) while every backward pass stays
k1 steps long. Within a chunk, ``k2`` bounds how far gradients travel back: it is handed to
the fused kernel as the module's ``truncate`` option (docs/design.md §3), which cuts the
recurrent gradient every k2 processed steps without changing the forward pass::

    tbptt = TBPTT(rnn, k1=100, k2=25)             # rnn: fusedrnn.LSTM or fusedrnn.GRU
    for x_chunk, y_chunk, start in tbptt.chunks(x, y):
        out, _ = tbptt(x_chunk)                   # runs rnn from the carried state
        loss = criterion(head(out), y_chunk)
        loss.backward(); opt.step(); opt.zero_grad()
        tbptt.reset(done)                         # rows whose sequence ended: zero state

A batch here is B independent streams processed side by side; ``reset(rows)`` zeroes the
carried state of the chosen rows, e.g. where a new document starts in that stream.

Shape letters: T steps, B batch, I input, L layers, D directions (2 if bidirectional),
H hidden, R = proj_size if proj_size > 0 else H.
"""
import numbers
from typing import Iterator, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .modules import GRU, LSTM

__all__ = ["TBPTT"]

State = Union[Tensor, Tuple[Tensor, Tensor]]
Rows = Union[Tensor, Sequence[int], Sequence[bool], int]


def _check_steps(name: str, value, allow_none: bool) -> Optional[int]:
    """A positive int (bool rejected), or None where allowed."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        what = "a positive int or None" if allow_none else "a positive int"
        raise TypeError(f"fusedrnn.tbptt: {name} must be {what}, "
                        f"got {value!r} of type {type(value).__name__}")
    if value < 1:
        raise ValueError(f"fusedrnn.tbptt: {name} must be a positive int (>= 1), got {value!r}")
    return int(value)


class TBPTT:
    """Stateful truncated BPTT driver for a fusedrnn LSTM or GRU.

    The driver holds the state carried from one chunk to the next. Calling it runs the
    module on one chunk from that state with the module's ``truncate`` set to ``k2`` for the
    duration of the call (restored afterwards, also when the forward raises; the value is
    captured by the forward, so the later backward uses it), and keeps the new final state,
    detached, for the next call. The module's other options (``grad_clip``, ...) apply as
    set. Because it changes the module's ``truncate`` attribute during a call, do not call
    the same module from another thread at the same time.

    With a bidirectional module the reverse direction runs over each chunk on its own, from
    the chunk's last step back to its first, and its carried state is handed on like the
    forward direction's (the module's h_n layout): it cannot see steps of later chunks.

    Args:
        rnn: a :class:`fusedrnn.LSTM` or :class:`fusedrnn.GRU` (any number of layers,
            directions, ``batch_first`` either way). torch.nn modules are rejected: they
            cannot truncate the gradient inside their kernel.
        k1: chunk length in steps used by :meth:`chunks` (the last chunk may be shorter).
        k2: how far back the gradient of a chunk travels: the recurrent gradient is cut every
            k2 processed steps of each chunk (the module's ``truncate``), so k2 <= k1. None
            (default): the whole chunk backpropagates; the module's own ``truncate`` is
            overridden by None during the calls.
        state: initial state, as the module's ``hx``: (h [L*D, B, R], c [L*D, B, H]) for an
            LSTM, h [L*D, B, H] for a GRU, or None for zeros. Used as given by the first
            call (a learned initial state receives its gradient); later states are detached.

    Attributes:
        state: the state the next call starts from (None: zeros), see :attr:`state`.
    """

    def __init__(self, rnn: nn.Module, k1: int, k2: Optional[int] = None, *,
                 state: Optional[State] = None):
        if not isinstance(rnn, (LSTM, GRU)):
            hint = ""
            if isinstance(rnn, nn.RNNBase):
                hint = (f"; {type(rnn).__module__}.{type(rnn).__name__} cannot truncate the "
                        "gradient inside its kernel: use fusedrnn.LSTM / fusedrnn.GRU, drop-in "
                        "replacements that load its state_dict")
            raise TypeError("fusedrnn.tbptt: rnn must be a fusedrnn.LSTM or fusedrnn.GRU, got "
                            f"{type(rnn).__name__}{hint}")
        self._rnn = rnn
        self._k1 = _check_steps("k1", k1, allow_none=False)
        self._k2 = _check_steps("k2", k2, allow_none=True)
        if self._k2 is not None and self._k2 > self._k1:
            raise ValueError(f"fusedrnn.tbptt: k2 must be <= k1 = {self._k1}, got {self._k2}: "
                             "the carried state is detached, so no gradient crosses a chunk "
                             "boundary")
        self._state: Optional[State] = None
        self.state = state

    # -----------------------------------------------------------------------------------
    # Properties

    @property
    def rnn(self) -> nn.Module:
        """The module being driven."""
        return self._rnn

    @property
    def k1(self) -> int:
        """Chunk length of :meth:`chunks`."""
        return self._k1

    @property
    def k2(self) -> Optional[int]:
        """Truncation length inside a chunk (the module's ``truncate`` during a call)."""
        return self._k2

    @property
    def _is_lstm(self) -> bool:
        return isinstance(self._rnn, LSTM)

    @property
    def _time_dim(self) -> int:
        return 1 if self._rnn.batch_first else 0

    @property
    def state(self) -> Optional[State]:
        """The state the next call starts from, in the module's ``hx`` layout: (h, c) for an
        LSTM, h for a GRU, or None (zeros). After a call it is the call's final state,
        detached. Assigning a state validates its shapes; assigning None forgets it."""
        return self._state

    @state.setter
    def state(self, state: Optional[State]) -> None:
        self._state = None if state is None else self._check_state(state)

    def _check_state(self, state) -> State:
        rnn = self._rnn
        LD = rnn.num_layers * (2 if rnn.bidirectional else 1)
        if self._is_lstm:
            if not (isinstance(state, (tuple, list)) and len(state) == 2
                    and all(isinstance(s, Tensor) for s in state)):
                raise TypeError("fusedrnn.tbptt: an LSTM state must be a tuple (h, c) of two "
                                f"tensors or None, got {type(state).__name__}")
            R = rnn.proj_size if rnn.proj_size > 0 else rnn.hidden_size
            named = (("h", state[0], R), ("c", state[1], rnn.hidden_size))
        else:
            if not isinstance(state, Tensor):
                raise TypeError("fusedrnn.tbptt: a GRU state must be a tensor h or None, got "
                                f"{type(state).__name__}")
            named = (("h", state, rnn.hidden_size),)
        batch = named[0][1].shape[1] if named[0][1].dim() == 3 else None
        for name, s, width in named:
            if s.dim() != 3 or s.shape[0] != LD or s.shape[2] != width or s.shape[1] != batch:
                want = f"(L*D, B, {width}) = ({LD}, {batch if batch is not None else 'B'}, {width})"
                raise ValueError(f"fusedrnn.tbptt: state {name} must have shape {want}, "
                                 f"got {tuple(s.shape)}")
        return (state[0], state[1]) if self._is_lstm else state

    def _batch(self) -> Optional[int]:
        """Batch size of the carried state, or None without one."""
        if self._state is None:
            return None
        return (self._state[0] if self._is_lstm else self._state).shape[1]

    # -----------------------------------------------------------------------------------
    # Chunking, running, resetting

    def _check_input(self, x, name: str) -> None:
        if isinstance(x, PackedSequence):
            raise TypeError(f"fusedrnn.tbptt: {name} must be a padded tensor, not a "
                            "PackedSequence: carried state needs every row to run the same "
                            "steps; pad the streams and use reset(rows) where a sequence ends")
        if not isinstance(x, Tensor):
            raise TypeError(f"fusedrnn.tbptt: {name} must be a tensor, got {type(x).__name__}")
        if x.dim() != 3:
            layout = "(B, T, I) (batch_first=True)" if self._rnn.batch_first else \
                "(T, B, I) (batch_first=False)"
            raise ValueError(f"fusedrnn.tbptt: {name} must be 3-D {layout}, got shape "
                             f"{tuple(x.shape)}")

    def chunks(self, x: Tensor, *aligned: Tensor) -> Iterator[Tuple]:
        """Cut a long sequence (and tensors aligned with it in time) into chunks of k1 steps.

        Args:
            x: the input, [T, B, I], or [B, T, I] if the module is batch_first.
            *aligned: more tensors with the same time dimension (dim 0, or dim 1 if
                batch_first) of the same length T, e.g. targets [T, B] or [T, B, C].

        Returns:
            An iterator of tuples ``(x_chunk, *aligned_chunks, start)``: views of steps
            [start, start + k1) along the time dimension, for start = 0, k1, 2*k1, ...; the
            last chunk holds the remaining T - start <= k1 steps.
        """
        self._check_input(x, "x")
        dim = self._time_dim
        T = x.shape[dim]
        for i, a in enumerate(aligned):
            if not isinstance(a, Tensor):
                raise TypeError(f"fusedrnn.tbptt: aligned[{i}] must be a tensor, got "
                                f"{type(a).__name__}")
            if a.dim() <= dim or a.shape[dim] != T:
                raise ValueError(f"fusedrnn.tbptt: aligned[{i}] must have T = {T} steps along "
                                 f"dim {dim} like x, got shape {tuple(a.shape)}")
        return self._chunks(x, aligned, dim, T)

    def _chunks(self, x, aligned, dim, T):
        for start in range(0, T, self._k1):
            n = min(self._k1, T - start)
            yield (x.narrow(dim, start, n), *(a.narrow(dim, start, n) for a in aligned), start)

    def __call__(self, x: Tensor):
        """Run the module on one chunk from the carried state; carry its final state on.

        Args:
            x: one chunk, [T, B, I] or [B, T, I] if the module is batch_first (any T >= 1;
                :meth:`chunks` makes chunks of k1 steps). B must equal the batch of the
                carried state, if there is one.

        Returns:
            What the module returns: ``(output, (h_n, c_n))`` for an LSTM, ``(output, h_n)``
            for a GRU, attached to the graph (the detached copy of the final state is kept
            in :attr:`state` for the next call).
        """
        self._check_input(x, "x")
        batch = x.shape[0 if self._rnn.batch_first else 1]
        carried = self._batch()
        if carried is not None and carried != batch:
            raise ValueError(f"fusedrnn.tbptt: the batch size changed from {carried} (carried "
                             f"state) to {batch} (x); call reset() to forget the carried state "
                             "before changing the batch size")
        rnn = self._rnn
        saved = rnn.truncate
        rnn.truncate = self._k2
        try:
            output, final = rnn(x, self._state)
        finally:
            rnn.truncate = saved
        if self._is_lstm:
            self._state = (final[0].detach(), final[1].detach())
        else:
            self._state = final.detach()
        return output, final

    def reset(self, rows: Optional[Rows] = None) -> None:
        """Zero the carried state of some batch rows, or forget it entirely.

        Args:
            rows: None: forget the state (the next call starts from zeros, for any batch
                size). Otherwise the rows to zero, in every layer and direction (h and c):
                a bool mask [B] (tensor or list), or row indices (an int, a list of ints or
                an integer tensor; negative indices count from the end). The other rows
                keep their state. Without a carried state there is nothing to zero.

        Raises:
            TypeError: rows is not a mask or indices.
            ValueError: a mask whose length is not B.
            IndexError: an index outside [-B, B).
        """
        if rows is None:
            self._state = None
            return
        mask = self._row_mask(rows, self._batch())
        if mask is None:
            return
        zero = lambda s: s.masked_fill(mask.to(s.device).view(1, -1, 1), 0)  # noqa: E731
        if self._is_lstm:
            self._state = (zero(self._state[0]), zero(self._state[1]))
        else:
            self._state = zero(self._state)

    @staticmethod
    def _row_mask(rows: Rows, batch: Optional[int]) -> Optional[Tensor]:
        """rows as a bool mask [B] on the CPU; None when there is no state (rows are still
        type-checked)."""
        if isinstance(rows, numbers.Integral) and not isinstance(rows, bool):
            rows = [int(rows)]
        if isinstance(rows, (list, tuple)):
            if all(isinstance(r, bool) for r in rows) and rows:
                rows = torch.tensor(rows, dtype=torch.bool)
            elif all(isinstance(r, numbers.Integral) and not isinstance(r, bool) for r in rows):
                rows = torch.tensor([int(r) for r in rows], dtype=torch.int64)
            else:
                raise TypeError("fusedrnn.tbptt: rows must be a bool mask or a list of int "
                                f"indices, got {rows!r}")
        if not isinstance(rows, Tensor):
            raise TypeError("fusedrnn.tbptt: rows must be None, a bool mask [B] or int indices, "
                            f"got {type(rows).__name__}")
        if rows.dtype.is_floating_point or rows.dtype.is_complex:
            raise TypeError(f"fusedrnn.tbptt: rows must be a bool or integer tensor, got "
                            f"{rows.dtype}")
        if rows.dim() > 1:
            raise ValueError(f"fusedrnn.tbptt: rows must be 1-D, got shape {tuple(rows.shape)}")
        rows = rows.reshape(-1).cpu()
        if batch is None:
            return None
        if rows.dtype == torch.bool:
            if rows.numel() != batch:
                raise ValueError(f"fusedrnn.tbptt: the rows mask must have B = {batch} "
                                 f"entries, got {rows.numel()}")
            return rows
        bad = (rows < -batch) | (rows >= batch)
        if bool(bad.any()):
            raise IndexError(f"fusedrnn.tbptt: row indices must lie in [-{batch}, {batch}), got "
                             f"{rows[bad].tolist()}")
        mask = torch.zeros(batch, dtype=torch.bool)
        mask[rows] = True
        return mask

    def __repr__(self) -> str:
        return f"TBPTT({type(self._rnn).__name__}, k1={self._k1}, k2={self._k2})"
