"""pytest plugin: run fusedrnn's ops through the emulated CUDA build, on CPU tensors.

Loaded by tools/cuda_emu/run.py (`pytest -p emu_plugin`, with tools/cuda_emu on sys.path)
after build.py has built build/cuda_emu/obj/fusedrnn_cuda_emu.so. Loading that library after
fusedrnn._C registers the CUDA glue and kernels of csrc/ as the CPU kernels of the
torch.ops.fusedrnn ops (overriding the real ones; torch warns about the override), so that CPU
tensors go through them (see the README). The schemas, the autograd formula and the CPU-path
switches such as `_cpu_capability` stay the real fusedrnn._C's.
"""

import importlib.util

import pytest

from build import NAME, OBJ

BANNER = ("fusedrnn CUDA EMULATION on the CPU (tools/cuda_emu): the CUDA kernels' logic, run "
          "as host threads. NOT a GPU validation.")


def _load_emulated():
    path = OBJ / f"{NAME}.so"
    if not path.exists():
        raise pytest.UsageError(f"{path} is missing: run `python tools/cuda_emu/run.py`, which "
                                "builds it first")
    import torch  # noqa: F401  (the extension links against torch's libraries)

    spec = importlib.util.spec_from_file_location(NAME, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_configure(config):
    import fusedrnn  # noqa: F401  (the real library first: the emulated one overrides it)

    emulated = _load_emulated()
    assert emulated.emulated and emulated.cuda_built


def pytest_report_header(config):
    return [BANNER]


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_sep("=", BANNER, yellow=True, bold=True)
