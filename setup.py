"""Build fusedrnn._C, the C++ (and, when possible, CUDA) extension.

Needs torch installed first and no build isolation:
    pip install --no-build-isolation -e .
Nothing here downloads anything: torch is deliberately not an install requirement, so pip
can never replace the installed torch (a CPU build, say) with a multi-GB CUDA build.

Environment:
    FUSEDRNN_SKIP_CUDA=1   build the CPU extension only, even where CUDA is available.
    TORCH_CUDA_ARCH_LIST   GPU architectures of the CUDA build (torch's own variable).
"""
import glob
import os
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:  # pragma: no cover - only hit on a misconfigured build
    sys.exit(
        "fusedrnn: building needs torch installed first, and pip's build isolation off:\n"
        "    pip install torch          (on a CPU-only machine: pip install torch==2.13.0)\n"
        "    pip install --no-build-isolation -e ."
    )

HERE = os.path.dirname(os.path.abspath(__file__))


def rel(pattern):
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


def want_cuda(cuda_sources):
    if os.environ.get("FUSEDRNN_SKIP_CUDA", "0") not in ("", "0"):
        return False
    return bool(cuda_sources) and torch.version.cuda is not None and CUDA_HOME is not None


cpp_sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
cuda_sources = rel("csrc/cuda/*.cu") + rel("csrc/cuda_glue/*.cpp")
# -O3 and no -march=native: the CPU kernels pick AVX-512 / AVX2 / portable code at run time.
# -fopenmp: ATen's parallel_for in our code and the engine's thread team (csrc/cpu/team.h)
# run on torch's own OpenMP pool; without it ATen's headers compile parallel_for serially.
# The libgomp.so.1 we link against resolves at load time to the copy torch has loaded.
# GCC's inlining budget is per translation unit, and each capability TU compiles all of the
# CPU kernels (csrc/cpu/capability_*.cpp): with the default budget GCC stopped inlining the
# activations into the forward engine's epilogue and called them out of line (the LSTM
# engine lost 20% at B=8). A larger unit-growth budget keeps them inline.
# -g0: Python's own build flags add -g; the debug information of the capability TUs' many
# kernel instances cost a quarter of their compile time (capability_avx512.cpp 143 -> 108 s
# on a 2-core Xeon VM; the object 31 MB -> 2.7 MB) and changes no instruction (the .text
# sections are byte for byte the same). Symbols stay, so profilers still name functions.
cxx_flags = ["-O3", "-g0"]
if sys.platform.startswith("linux") and "clang" not in (os.environ.get("CXX") or ""):
    cxx_flags += ["--param=inline-unit-growth=200", "--param=large-function-growth=400"]
link_flags = []
if sys.platform.startswith("linux"):
    cxx_flags.append("-fopenmp")
    link_flags.append("-fopenmp")

if want_cuda(cuda_sources):
    ext = CUDAExtension(
        "fusedrnn._C",
        cpp_sources + cuda_sources,
        define_macros=[("FUSEDRNN_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
        extra_link_args=link_flags,
    )
else:
    ext = CppExtension("fusedrnn._C", cpp_sources, extra_compile_args={"cxx": cxx_flags},
                       extra_link_args=link_flags)

setup(
    name="fusedrnn",
    version="0.1.0",
    description="Fused LSTM/GRU kernels for PyTorch with gradient clipping and truncated BPTT "
    "inside the backward pass",
    packages=find_packages(include=["fusedrnn", "fusedrnn.*"]),
    python_requires=">=3.9",
    install_requires=[],  # torch must already be installed; see the module docstring
    extras_require={
        # onnx / onnxscript / onnxruntime: tests/test_export.py (docs/deployment.md)
        "test": ["pytest", "hypothesis", "numpy", "onnx", "onnxscript", "onnxruntime"],
        "plot": ["matplotlib"],  # fusedrnn.plot
        "examples": ["matplotlib", "tqdm", "statsmodels"],  # statsmodels: the sunspots data
    },
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension},
    zip_safe=False,
)
