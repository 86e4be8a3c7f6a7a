#!/usr/bin/env python
"""Build `fusedrnn_cuda_emu`: the CUDA kernels and glue of csrc/, compiled as host C++.

    python tools/cuda_emu/build.py        # prints the path of the built module

The current sources of csrc/ are copied to build/cuda_emu/src/, a few lines are rewritten
(kernel launches -> emu::launch, CUDA-only torch headers, the CPU dispatch) and the result is
built with torch.utils.cpp_extension into build/cuda_emu/obj/ (incremental: unchanged
sources are not rewritten, so ninja rebuilds only what changed). Every rewrite names the
exact text it expects; if the sources moved on and a pattern no longer matches, the build
stops with EmuPatchError naming the file and the pattern instead of building something else.
See tools/cuda_emu/README.md.
"""

import os
import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CSRC = ROOT / "csrc"
OUT = ROOT / "build" / "cuda_emu"
SRC = OUT / "src"
OBJ = OUT / "obj"
NAME = "fusedrnn_cuda_emu"


class EmuPatchError(RuntimeError):
    pass


def _fail(rel, what, pattern):
    raise EmuPatchError(
        f"tools/cuda_emu/build.py: csrc/{rel}: {what}:\n    {pattern!r}\n"
        "The sources changed since the emulation's rewrites were written; update the rewrite "
        "in tools/cuda_emu/build.py (nothing was built).")


def sub(rel, text, old, new, count=1):
    """Replace exactly `count` occurrences of `old` (count=None: all, at least one)."""
    n = text.count(old)
    if n == 0 or (count is not None and n != count):
        _fail(rel, f"expected {count or 'at least 1'} occurrence(s), found {n}, of", old)
    return text.replace(old, new)


def resub(rel, text, pattern, repl, count=None):
    """re.subn with a check on the number of matches (count=None: at least one)."""
    text, n = re.subn(pattern, repl, text)
    if n == 0 or (count is not None and n != count):
        _fail(rel, f"expected {count or 'at least 1'} match(es), found {n}, of the regex", pattern)
    return text


# kernel<<<grid, block, 0, stream>>>(args); -> ::emu::launch(grid, block, [&] { kernel(args); });
LAUNCH = r"([\w:]+(?:<[^;<>]*>)?)<<<\s*([^,;]+?)\s*,\s*([^,;]+?)\s*,\s*0\s*,\s*stream\s*>>>\(([^;]*)\);"
LAUNCH_REPL = r"::emu::launch(\2, \3, [&] { \1(\4); });"


def rewrite(rel, text):
    """The emulation's edits of one csrc/ file (rel: its path under csrc/)."""
    if rel.startswith("cuda/") and "<<<" in text:
        text = resub(rel, text, LAUNCH, LAUNCH_REPL)
        if "<<<" in text:
            _fail(rel, "a kernel launch the emulation cannot rewrite (only "
                  "`kernel<<<grid, block, 0, stream>>>(args);`) near",
                  text[text.index("<<<") - 60:text.index("<<<") + 60])
    if rel == "checks.h":
        # The CPU-only dtype check (float32/float64) must not reject the half types the CUDA
        # path accepts: the emulated "device" is the CPU.
        text = sub(rel, text, "  if (x.device().is_cpu()) {\n    TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat",
                   "  if (false) {  // cuda_emu: CUDA dtype rules on CPU tensors\n"
                   "    TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat")
    elif rel == "cuda_glue/cuda_common.h":
        text = sub(rel, text, "#include <c10/cuda/CUDAException.h>\n#include <c10/cuda/CUDAGuard.h>\n"
                   "#include <c10/cuda/CUDAStream.h>\n",
                   '#define C10_CUDA_CHECK(x) TORCH_CHECK((x) == cudaSuccess, "emulated launch failed")\n')
        text = sub(rel, text, "      : device(input.device()), no_autocast(c10::autocast_dispatch_keyset) {}\n"
                   "  c10::cuda::CUDAGuard device;\n",
                   "      : no_autocast(c10::autocast_dispatch_keyset) { (void)input; }\n")
        text = sub(rel, text, "inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }",
                   "inline cudaStream_t current_stream() { return nullptr; }")
        # CPU ATen has no mm with an output dtype: float32 GEMM, then one rounding into out.
        text = sub(rel, text, "    at::mm_out(out, a, b, out.scalar_type());",
                   "    out.copy_(at::mm(a.to(at::kFloat), b.to(at::kFloat)));")
        text = sub(rel, text, "  return acc == a.scalar_type() ? at::mm(a, b) : at::mm(a, b, acc);",
                   "  return acc == a.scalar_type() ? at::mm(a, b) : at::mm(a.to(acc), b.to(acc));")
    elif rel == "rnn_ops.cpp":
        # CPU tensors go to the CUDA implementations: the emulated library registers the
        # CUDA backend's kernels for the CPU key, overriding the real library's (loaded first).
        text = sub(rel, text, "TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) { register_kernels<CpuBackend>(m); }",
                   "TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) { register_kernels<CudaBackend>(m); }  // cuda_emu")
        text = sub(rel, text, "&cpu::", "&cuda::", count=None)
    elif rel == "fusedrnn.cpp":
        # Only the layer ops: the CPU-path switches live in the real fusedrnn._C.
        cut = '  m.def("_cpu_capability"'
        if text.count(cut) != 1:
            _fail(rel, "expected 1 occurrence of", cut)
        text = text[:text.index(cut)] + '  m.attr("cuda_built") = true;\n  m.attr("emulated") = true;\n}\n'
    return text


def write_if_changed(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def cuda_include():
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "include" / "cuda_runtime.h").exists():
            return str(Path(home) / "include")
    sys.exit("tools/cuda_emu: the CUDA headers (cuda_runtime.h) were not found; set CUDA_HOME")


def generate():
    """Write the rewritten sources under build/cuda_emu/src/; return the translation units."""
    wanted = {}
    for path in sorted(CSRC.rglob("*")):
        if not path.is_file() or path.suffix not in (".h", ".cuh", ".inc", ".cpp", ".cu"):
            continue
        rel = path.relative_to(CSRC).as_posix()
        if rel.startswith("cpu/") and path.suffix == ".cpp":
            continue  # the CPU kernels are not part of the emulated build
        if rel in ("ops.cpp", "autograd.cpp"):
            continue  # the schemas and autograd kernels are the real library's
        dest = rel[:-3] + "_emu.cpp" if rel.endswith(".cu") else rel
        wanted[dest] = rewrite(rel, path.read_text())
    wanted["emu_rt.cpp"] = ("// cuda_emu: the CUDA runtime calls of the kernels, on the host.\n"
                            "cudaError_t cudaGetLastError(void) { return cudaSuccess; }\n")
    for old in [p for p in SRC.rglob("*") if p.is_file()] if SRC.exists() else []:
        if old.relative_to(SRC).as_posix() not in wanted:
            old.unlink()
    for rel, text in wanted.items():
        write_if_changed(SRC / rel, text)
    return [str(SRC / rel) for rel in sorted(wanted) if rel.endswith(".cpp")]


def build(verbose=False):
    from torch.utils.cpp_extension import load

    sources = generate()
    OBJ.mkdir(parents=True, exist_ok=True)
    flags = ["-std=c++20", "-O1", "-include", str(HERE / "cuda_emul.h"), "-DFUSEDRNN_WITH_CUDA",
             "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
             "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
             "-Wno-attributes", "-w"]
    module = load(NAME, sources, extra_cflags=flags, extra_include_paths=[cuda_include(), str(SRC)],
                  build_directory=str(OBJ), verbose=verbose)
    return module


if __name__ == "__main__":
    try:
        print(build(verbose="-v" in sys.argv).__file__)
    except EmuPatchError as e:
        sys.exit(str(e))
