"""pytest configuration for the fusedrnn tests.

* makes tests/helpers.py importable whatever the pytest import mode;
* runs torch single-threaded by default: the tensors here are tiny, and on a small, busy
  machine intra-op thread wake-ups cost 10-100x the arithmetic. FUSEDRNN_TEST_THREADS=N
  overrides; test_ops.py::test_multithreaded_matches_single_threaded covers parallel paths;
* hypothesis: no deadline (first calls pay one-off start-up costs).
"""

import os
import sys

import torch
from hypothesis import settings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

torch.set_num_threads(int(os.environ.get("FUSEDRNN_TEST_THREADS", "1")))

settings.register_profile("fusedrnn", deadline=None, print_blob=True)
settings.load_profile("fusedrnn")
