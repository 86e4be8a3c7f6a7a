#!/usr/bin/env python
"""Build `fusedrnn_cuda_emu`: the CUDA kernels and glue of csrc/, compiled as host C++.

    python tools/cuda_emu/build.py        # prints the path of the built module

Nothing in csrc/ is copied or rewritten: the real sources are compiled in place with
FUSEDRNN_CUDA_EMU defined and tools/cuda_emu/cuda_emul.h force-included. The sources know
that switch in a few places only, each marked "tools/cuda_emu": the one kernel launch
(launch_rows in csrc/cuda/common.cuh) runs the block's threads on the host, the CUDA
glue's device guard, stream and mixed-dtype GEMMs (csrc/cuda_glue/cuda_common.h) become
their CPU stand-ins, the CUDA dtype rules apply to CPU tensors (csrc/checks.h), and the
CUDA backend is registered for the CPU key (csrc/rnn_ops.cpp; csrc/fusedrnn.cpp binds
nothing). The .cu files are compiled through one-line wrappers under build/cuda_emu/src/
(`#include "cuda/<name>.cu"`), since torch's extension builder sends .cu files to nvcc.
The objects go to build/cuda_emu/obj/ (incremental: ninja rebuilds what changed).
See tools/cuda_emu/README.md.
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CSRC = ROOT / "csrc"
OUT = ROOT / "build" / "cuda_emu"
SRC = OUT / "src"
OBJ = OUT / "obj"
NAME = "fusedrnn_cuda_emu"


def write_if_changed(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def cuda_include():
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "include" / "cuda_runtime.h").exists():
            return str(Path(home) / "include")
    sys.exit("tools/cuda_emu: the CUDA headers (cuda_runtime.h) were not found; set CUDA_HOME")


def sources():
    """The translation units: csrc's glue and bindings in place, a wrapper per .cu file."""
    units = []
    for path in sorted(CSRC.rglob("*.cpp")):
        rel = path.relative_to(CSRC).as_posix()
        if rel.startswith("cpu/"):
            continue  # the CPU kernels are not part of the emulated build
        if rel in ("ops.cpp", "autograd.cpp"):
            continue  # the schemas and autograd kernels are the real library's
        units.append(str(path))
    wanted = set()
    for path in sorted((CSRC / "cuda").glob("*.cu")):
        rel = path.relative_to(CSRC).as_posix()
        wrapper = SRC / (path.stem + "_emu.cpp")
        write_if_changed(wrapper, f"// tools/cuda_emu: csrc/{rel} as host C++\n"
                                  f'#include "{rel}"\n')
        wanted.add(wrapper)
        units.append(str(wrapper))
    for old in [p for p in SRC.rglob("*") if p.is_file()] if SRC.exists() else []:
        if old not in wanted:
            old.unlink()
    units.append(str(HERE / "emu_rt.cpp"))
    return units


def build(verbose=False):
    from torch.utils.cpp_extension import load

    units = sources()
    OBJ.mkdir(parents=True, exist_ok=True)
    flags = ["-std=c++20", "-O1", "-include", str(HERE / "cuda_emul.h"), "-DFUSEDRNN_WITH_CUDA",
             "-DFUSEDRNN_CUDA_EMU",
             "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
             "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
             "-Wno-attributes", "-w"]
    module = load(NAME, units, extra_cflags=flags, extra_include_paths=[cuda_include(), str(CSRC)],
                  build_directory=str(OBJ), verbose=verbose)
    return module


if __name__ == "__main__":
    print(build(verbose="-v" in sys.argv).__file__)
