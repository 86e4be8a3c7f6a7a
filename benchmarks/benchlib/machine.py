"""The machine and the run: CPU model and flags, load (load average, and the CPU time
other processes take during the run), the machine info recorded with every result, the
git commit, and the names of the output files."""

from __future__ import annotations

import datetime
import os
import platform
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
# Runs land in an untracked folder; a run worth keeping is written (or copied) to
# benchmarks/results/ with --out, from which the README results block is generated.
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "local"


def _git(*args) -> Optional[str]:
    try:
        res = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def _cpuinfo_field(name: str) -> Optional[str]:
    """The value of a /proc/cpuinfo field of the first processor, None where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1]
    except OSError:
        pass
    return None


def cpu_model() -> str:
    model = _cpuinfo_field("model name")
    if model is not None:
        return model.strip()
    return platform.processor() or platform.machine() or "unknown-cpu"


def cpu_flags() -> list:
    """The CPU's flags from /proc/cpuinfo (first processor), [] where there is none."""
    return (_cpuinfo_field("flags") or "").split()


def load_average() -> Optional[list]:
    """1/5/15-minute load averages: a loaded machine makes every number here unreliable."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def host_probe_us(calls: int = 2000, blocks: int = 5) -> float:
    """Microseconds per call of torch.add on two 8-float tensors (median of `blocks` loops):
    nearly all of it is the dispatcher and the interpreter, whose speed on a shared VM moves
    with what the neighbours do to the caches and the clock (the 2-core Xeon VM of the
    results: ~1.3 us in its fast minutes, 3-5 us in its slow ones). Recorded at the start
    and the end of a run, it tells which kind of minutes the run had."""
    a, b = torch.randn(8), torch.randn(8)
    for _ in range(calls // 10):
        torch.add(a, b)
    times = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(calls):
            torch.add(a, b)
        times.append((time.perf_counter() - t0) / calls * 1e6)
    return round(sorted(times)[len(times) // 2], 2)


def _busy_cpu_seconds() -> Optional[float]:
    """CPU seconds all processes have spent busy since boot (/proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
        ticks = [int(v) for v in fields]
    except (OSError, ValueError, IndexError):
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """CPU time that *other* processes used while the benchmark ran: the machine's busy CPU
    seconds (/proc/stat) minus this process's own (all its threads). The load average cannot
    tell them apart: a run with 2 threads on 2 cores reads ~2 by itself."""

    def __init__(self):
        self.wall0 = time.perf_counter()
        self.busy0 = _busy_cpu_seconds()
        self.own0 = time.process_time()

    def cores(self) -> Optional[float]:
        """Average number of cores other processes kept busy since construction."""
        busy = _busy_cpu_seconds()
        wall = time.perf_counter() - self.wall0
        if busy is None or self.busy0 is None or wall <= 0:
            return None
        others = (busy - self.busy0) - (time.process_time() - self.own0)
        return round(max(others, 0.0) / wall, 2)


def machine_info(device: torch.device, fusedrnn) -> dict:
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain")
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count_logical": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_version": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "torch_parallel_info": [l.strip() for l in torch.__config__.parallel_info().splitlines()
                                if l.strip()][:8],
        "mkl_available": torch.backends.mkl.is_available(),
        "mkldnn_available": torch.backends.mkldnn.is_available(),
        "fusedrnn_commit": (commit + ("-dirty" if dirty else "")) if commit else "no commit",
        "fusedrnn_file": getattr(fusedrnn, "__file__", None) if fusedrnn else None,
        "fusedrnn_version": getattr(fusedrnn, "__version__", None) if fusedrnn else None,
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "loadavg_start": load_average(),
        "host_probe_us_start": host_probe_us(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update({
            "gpu_name": props.name,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "gpu_capability": f"{props.major}.{props.minor}",
            "cuda_version": torch.version.cuda,
            "cudnn_version": torch.backends.cudnn.version(),
            "cudnn_enabled": torch.backends.cudnn.enabled,
        })
    return info


def slug(text: str) -> str:
    text = re.sub(r"\((r|tm|c)\)", "", text.lower())
    text = re.sub(r"\b(cpu|processor|core|with|radeon graphics)\b", " ", text)
    text = re.sub(r"@.*", "", text)
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:40] or "unknown"


def dated_stem(out_dir: Path, prefix: str, suffix: str = "") -> Path:
    """out_dir / "<prefix>-<date><suffix>" (no extension), with the time of day added after
    the date when a .json of that name exists: never overwrite an earlier run of the day."""
    now = datetime.datetime.now()
    stem = out_dir / f"{prefix}-{now:%Y-%m-%d}{suffix}"
    if stem.with_suffix(".json").exists():
        stem = out_dir / f"{prefix}-{now:%Y-%m-%d-%H%M%S}{suffix}"
    return stem


def output_stem(info: dict, device: torch.device, out_dir: Path) -> Path:
    """bench.py's files: <device>-<cpu or gpu model>-<date>[-<time>]."""
    model = info["gpu_name"] if device.type == "cuda" else info["cpu_model"]
    return dated_stem(out_dir, f"{device.type}-{slug(model)}")
