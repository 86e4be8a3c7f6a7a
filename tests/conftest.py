"""pytest configuration for the fusedrnn tests.

* makes tests/helpers.py importable whatever the pytest import mode;
* runs torch single-threaded by default: the tensors here are tiny, and on a small, busy
  machine intra-op thread wake-ups cost 10-100x the arithmetic. FUSEDRNN_TEST_THREADS=N
  overrides; test_determinism.py::test_multithreaded_matches_single_threaded covers parallel paths;
* hypothesis: no deadline (first calls pay one-off start-up costs);
* fixtures: ``threads`` (set torch's thread count for one test), ``split`` (the CPU engines'
  thread split for one test: 'auto', 'rule', 'units' or 'rows'), ``cpu_capability`` (the CPU
  kernels' SIMD capability for one test, skipped where the CPU lacks it) and ``device`` (every test
  that takes it runs on "cpu" and on "cuda"; the cuda cases skip without a GPU unless
  FUSEDRNN_REQUIRE_CUDA=1, as tools/gpu/gpu_check.sh sets, where a GPU that torch cannot see
  fails them instead). TF32 is off for the cuda cases (cuDNN would use it for float32, and
  the 2x rule compares with torch.nn's full float32 error).
"""

import os
import sys

import pytest
import torch
from hypothesis import settings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

torch.set_num_threads(int(os.environ.get("FUSEDRNN_TEST_THREADS", "1")))

settings.register_profile("fusedrnn", deadline=None, print_blob=True)
settings.load_profile("fusedrnn")


REQUIRE_CUDA = os.environ.get("FUSEDRNN_REQUIRE_CUDA", "0") not in ("", "0")
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(
        not torch.cuda.is_available() and not REQUIRE_CUDA,
        reason="needs a CUDA GPU (FUSEDRNN_REQUIRE_CUDA=1 makes this a failure)")),
]


@pytest.fixture(params=DEVICES)
def device(request):
    """The device a shared test runs on: torch.device("cpu") or torch.device("cuda")."""
    if request.param != "cuda":
        yield torch.device(request.param)
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield torch.device("cuda")
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture
def threads():
    """Set torch's intra-op thread count for one test (this file runs single-threaded)."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.fixture
def split():
    """Set the CPU engines' thread split ('auto', 'rule', 'units', 'rows'; Note [Engine row
    split]) for one test; restored afterwards."""
    from fusedrnn import _C

    saved = _C._engine_split()

    def set_split(name):
        assert _C._set_engine_split(name) == name

    yield set_split
    _C._set_engine_split(saved)


@pytest.fixture
def cpu_capability():
    """Set the CPU kernels' capability ('default', 'avx2', 'avx512') for one test; the test
    is skipped where this CPU lacks it. Restored afterwards."""
    from fusedrnn import _C

    saved = _C._cpu_capability()

    def use(name):
        if _C._set_cpu_capability(name) != name:
            pytest.skip(f"this CPU does not support {name}")

    yield use
    _C._set_cpu_capability(saved)
