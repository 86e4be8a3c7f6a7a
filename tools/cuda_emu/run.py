#!/usr/bin/env python
"""Run fusedrnn's CPU test suites through the CUDA kernels, emulated on the CPU.

    python tools/cuda_emu/run.py [pytest args...]      (or: make cuda-emu)

Builds build/cuda_emu/ from the current csrc/ (build.py), then runs pytest with the
emu_plugin, by default on DEFAULT_TESTS; with test paths among the arguments, on those
instead. Needs the real extension built first (`make setup`): fusedrnn imports it. This is an
emulation on the CPU, not a GPU validation: see tools/cuda_emu/README.md.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

from build import HERE, ROOT, build
from emu_plugin import BANNER

DEFAULT_TESTS = ["tests/test_ops.py", "tests/test_clipping.py", "tests/test_grad_norms.py",
                 "tests/test_modules.py", "tests/test_cells.py", "tests/test_packed.py",
                 "tests/test_toolkit_tbptt.py"]


def banner(text):
    line = "=" * 78
    print(f"{line}\n{text}\n{line}", flush=True)


def has_test_path(args):
    return any((ROOT / a.split("::")[0]).exists() for a in args if not a.startswith("-"))


def main(args):
    start = time.perf_counter()
    banner(BANNER)
    module = build()
    print(f"cuda_emu: built {module.__file__} in {time.perf_counter() - start:.0f} s", flush=True)
    if not has_test_path(args):
        args = args + DEFAULT_TESTS
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    rc = subprocess.call([sys.executable, "-m", "pytest", "-p", "emu_plugin", *args],
                         cwd=ROOT, env=env)
    banner(f"{BANNER}\ncuda_emu: pytest exit code {rc}, "
           f"{time.perf_counter() - start:.0f} s wall in all")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
