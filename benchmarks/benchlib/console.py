"""Progress and error reporting for the benchmark scripts: `log` (stderr, above a tqdm bar
when one is active), `Progress` (the bar, or plain lines without tqdm) and `describe`
(an exception as one short line for the report). Standard library only."""

from __future__ import annotations

import sys

_BAR = None  # the tqdm progress bar while one is active (see Progress)


def log(msg: str) -> None:
    """Progress and errors go to stderr, so stdout is exactly the markdown report."""
    if _BAR is not None:
        _BAR.write(msg, file=sys.stderr)  # above the bar, not through it
    else:
        print(msg, file=sys.stderr, flush=True)


class Progress:
    """A tqdm bar over all repeats of the run (warm-up included) when tqdm is installed and
    not disabled; otherwise nothing beyond the per-mode stderr lines (`log`)."""

    def __init__(self, total: int, enabled: bool = True):
        global _BAR
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, unit="rep", file=sys.stderr, dynamic_ncols=True,
                                leave=True)
                _BAR = self.bar

    @property
    def active(self) -> bool:
        return self.bar is not None

    def describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(text, refresh=True)
        else:
            log(f"  {text} ...")

    def step(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        global _BAR
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            _BAR = None


def describe(exc: BaseException, limit: int = 600) -> str:
    """`Type: message` for the report, without the argument dump of a pybind11 signature
    mismatch ("Invoked with: <every tensor>") and capped at `limit` characters."""
    text = str(exc).split("\n\nInvoked with:")[0].strip()
    if len(text) > limit:
        text = text[:limit] + " [...]"
    return f"{type(exc).__name__}: {text}"
