"""Peak memory of one call: the CUDA allocator's peak on GPU, the peak RSS on CPU (see
Note [Peak memory] in PeakMemory)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Optional

import torch


def _proc_status_kib(field: str) -> Optional[int]:
    """A `kB` field (VmRSS, VmHWM) of /proc/self/status, or None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _malloc_trim() -> None:
    """Give free glibc heap pages back to the OS (malloc_trim(0)), so that memory freed by
    earlier calls and reused by the measured one is counted again; a no-op elsewhere."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of one call in bytes, over what the process held right before it.

    Note [Peak memory]
    CUDA: torch.cuda.max_memory_allocated() after torch.cuda.reset_peak_memory_stats(),
    minus torch.cuda.memory_allocated() before the call (both after a synchronize): the
    peak of tensor memory the caching allocator handed out during the call, exact, and
    not counting its cache, cuDNN/cuBLAS workspaces outside it or the CUDA context.

    CPU, on Linux (method "vmhwm"): glibc's free heap pages are returned to the OS
    (malloc_trim(0)), RSS is read (VmRSS), the kernel's peak-RSS counter is reset to the
    current RSS by writing "5" to /proc/self/clear_refs (Linux >= 4.0), the call runs, and
    the result is VmHWM - VmRSS_before: the largest amount of additional resident memory
    the process had at any instant of the call. Exact, not sampled, but it is RSS, not
    tensor bytes: it counts pages touched (an allocation never written is not counted),
    includes anything else the process did meanwhile (other threads, Python objects), and
    leaves out memory already resident before the call that the call reused (buffers a
    library keeps between calls, e.g. oneDNN scratchpads and weight caches allocated in the
    warm-up; free-list memory that malloc_trim could not return). A lower bound of the
    call's working set, comparable between implementations on the same machine.

    CPU fallback (method "rss-sampled", when clear_refs cannot be written): a background
    thread reads VmRSS about every millisecond during the call and the result is the
    largest sample minus VmRSS before. It misses peaks shorter than the sampling interval
    or inside C++ code that holds the GIL, so it can only be lower than the true peak.

    Elsewhere (no /proc): None, shown as "–".

    The untimed call sees fresh inputs, created (like the inputs of `bwd`'s untimed
    forward) before the "before" reading: `fwd` counts the activations kept for backward
    plus the outputs, `bwd` the extra memory of the backward pass over the saved graph
    (gradients included), `fwdbwd` the peak of a whole step, `infer` the forward without
    autograd.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.method = None
        if device.type == "cuda":
            self.method = "cuda"
        elif _proc_status_kib("VmRSS") is not None:
            self.method = "vmhwm" if self._reset_hwm() else "rss-sampled"

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def describe(self) -> str:
        return {
            "cuda": "CUDA allocator: max_memory_allocated() during the call (peak reset "
                    "before) minus memory_allocated() before",
            "vmhwm": "CPU peak RSS: VmHWM during the call (reset via /proc/self/clear_refs, "
                     "after malloc_trim) minus VmRSS before; resident memory the call added "
                     "at its peak, a lower bound of its working set (memory reused from "
                     "before the call is not counted)",
            "rss-sampled": "CPU peak RSS sampled about every 1 ms by a thread during the "
                           "call minus VmRSS before (misses short peaks: a lower bound)",
            None: "not measured (no /proc on this system)",
        }[self.method]

    def measure(self, fn: Callable[[], object]) -> Optional[int]:
        if self.method is None:
            fn()
            return None
        if self.method == "cuda":
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            result = fn()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - before
            del result
            return peak
        _malloc_trim()
        before = _proc_status_kib("VmRSS")
        if self.method == "vmhwm" and self._reset_hwm():
            result = fn()
            peak = _proc_status_kib("VmHWM")
        else:
            samples, done = [before], threading.Event()

            def sample():
                while not done.is_set():
                    samples.append(_proc_status_kib("VmRSS") or 0)
                    time.sleep(0.001)

            thread = threading.Thread(target=sample, daemon=True)
            thread.start()
            try:
                result = fn()
                samples.append(_proc_status_kib("VmRSS") or 0)
            finally:
                done.set()
                thread.join()
            peak = max(samples)
        del result
        return max(0, peak - before) * 1024
