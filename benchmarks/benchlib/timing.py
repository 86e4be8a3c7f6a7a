"""Timing: the clock (perf_counter on CPU, CUDA events on GPU), percentiles and summary
statistics, the balanced (Williams) run orders of interleaved repeats, paired ratios, and a
fusedrnn-only training loop for the in-process A/B scripts."""

from __future__ import annotations

import time
from typing import Callable

import torch


class Clock:
    """Times one call in milliseconds; the call's return value is released after the clock stops."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)

    def time_ms(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            # Everything queued before (input generation, the untimed forward of `bwd`)
            # must be finished, or it would be billed to this call.
            torch.cuda.synchronize()
            self.start.record()
            result = fn()
            self.end.record()
            self.end.synchronize()
            elapsed = self.start.elapsed_time(self.end)
        else:
            t0 = time.perf_counter()
            result = fn()
            elapsed = (time.perf_counter() - t0) * 1e3
        del result  # freeing outputs / the autograd graph is not part of the measurement
        return elapsed



def percentile(sorted_values, q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of an already sorted list."""
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(times):
    s = sorted(times)
    return {"median_ms": percentile(s, 0.5), "min_ms": s[0], "max_ms": s[-1],
            "iqr_ms": percentile(s, 0.75) - percentile(s, 0.25), "n": len(s)}


def balanced_orders(n: int) -> list:
    """Run orders for n implementations, one per repeat, cycled: a Williams design.

    Note [Interleave order]
    Every repeat runs every implementation once (interleaved, so drift hits all alike), but
    not always in the same order. A fixed A,B,C order measured badly on a 2-core VM: the
    first call after the untimed work of a repeat, and the call right after the
    plain-PyTorch loop, pay a thread wake-up/cache penalty (two copies of the *same*
    torch.nn module differed by up to 2x at tiny shapes). In a Williams design each
    implementation takes every position equally often and follows every other one equally
    often (over n orders for even n, 2n for odd n), so these effects are spread evenly.
    n = 4: 0132, 1203, 2310, 3021.
    """
    base, lo, hi = [0], 1, n - 1
    while len(base) < n:
        base.append(lo)
        lo += 1
        if len(base) < n:
            base.append(hi)
            hi -= 1
    orders = [[(b + i) % n for b in base] for i in range(n)]
    if n % 2:
        orders += [order[::-1] for order in orders]
    return orders


def in_order(items, r: int) -> list:
    """items in the order of repeat r (see balanced_orders)."""
    if not items:
        return []
    orders = balanced_orders(len(items))
    return [items[i] for i in orders[r % len(orders)]]


def paired_ratio(num, den):
    """Median and IQR of per-repeat ratios num[i] / den[i]. Both lists come from the same
    interleaved repeats, so the ratio cancels drift that the two medians alone would not."""
    if not num or not den:
        return None
    r = sorted(a / b for a, b in zip(num, den))
    return {"median": percentile(r, 0.5), "iqr": percentile(r, 0.75) - percentile(r, 0.25)}


def training_loop(cell: str, shape, budget_s: float = 0.1):
    """A fusedrnn-only training loop for in-process A/B scripts: (timed, k), where timed(k)
    runs k steps (forward, backward, SGD step) of a fresh single-layer `cell` ("lstm" or
    "gru") on fixed random data of `shape` (T, B, I, H) and returns seconds per step, and k
    is how many steps take about budget_s."""
    import fusedrnn

    T, B, I, H = shape
    torch.manual_seed(0)
    m = getattr(fusedrnn, cell.upper())(I, H)
    opt = torch.optim.SGD(m.parameters(), lr=1e-3)
    x, g = torch.randn(T, B, I), torch.randn(T, B, H)

    def step():
        out, _ = m(x.detach().requires_grad_())
        out.backward(g)
        opt.step()
        opt.zero_grad()

    def timed(k):
        t0 = time.perf_counter()
        for _ in range(k):
            step()
        return (time.perf_counter() - t0) / k

    return timed, max(1, int(budget_s / max(timed(1), 1e-4)))
