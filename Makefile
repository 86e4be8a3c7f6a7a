# The user's first hour: `make setup`, then `make test`, `make demo`, `make bench`.
# `make adding`: the adding problem (T=200), vanilla RNN vs LSTM/GRU, gradient-flow plots.
# `make cuda-emu`: the CUDA kernels' logic emulated on the CPU under the CPU test suites (not a GPU check).
# `make setup` is idempotent: a second run only checks, it installs and builds nothing.

PYTHON ?= python3

# Python packages the tests, the benchmark and the demo need (import names = pip names).
DEPS := pybind11 ninja pytest hypothesis numpy tqdm matplotlib statsmodels onnx onnxscript onnxruntime
# torch is pinned: a bare `pip install torch` would pull several GB of CUDA packages.
TORCH := torch==2.13.0
# Files whose change means fusedrnn._C must be rebuilt.
BUILD_INPUTS := setup.py csrc

.PHONY: setup deps torch build test demo adding bench cuda-emu

setup: build

torch:
	@if ! $(PYTHON) -c "import torch" 2>/dev/null; then \
	  echo "installing $(TORCH) (CPU)..."; \
	  $(PYTHON) -m pip install $(TORCH); \
	fi

# find_spec only looks a module up (no import), so the check takes well under a second.
deps: torch
	@if ! $(PYTHON) -c "import importlib.util as u, sys; \
	sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))" $(DEPS); then \
	  echo "installing $(DEPS)..."; \
	  $(PYTHON) -m pip install $(DEPS); \
	fi

# Rebuild when the extension is missing, does not import (e.g. torch changed), or a file
# of csrc/ or setup.py is newer than it. The first build installs the package in editable
# mode (pip install -e, which compiles every file); once this checkout is installed that way,
# later builds run `setup.py build_ext --inplace`, whose ninja build in build/ recompiles only
# the files that changed. The .so is touched after the build because an unchanged build may
# keep its old timestamp.
build: deps
	@so=$$(ls fusedrnn/_C*.so 2>/dev/null | head -n 1); \
	if [ -z "$$so" ] || [ -n "$$(find $(BUILD_INPUTS) -type f -newer "$$so")" ] \
	   || ! $(PYTHON) -c "import fusedrnn._C" 2>/dev/null; then \
	  if [ -n "$$so" ] && [ -d build ] && [ "$$(cd /tmp && $(PYTHON) -c \
	       'import importlib.util as u, os; s = u.find_spec("fusedrnn"); \
	        print(os.path.dirname(s.origin) if s and s.origin else "")' 2>/dev/null)" \
	       = "$(CURDIR)/fusedrnn" ]; then \
	    echo "rebuilding fusedrnn._C (changed files only)..."; \
	    $(PYTHON) setup.py -q build_ext --inplace && touch fusedrnn/_C*.so; \
	  else \
	    echo "building fusedrnn._C (a few minutes)..."; \
	    $(PYTHON) -m pip install --no-build-isolation -e . && touch fusedrnn/_C*.so; \
	  fi; \
	else \
	  echo "fusedrnn._C is up to date ($$so)"; \
	fi

test: setup
	$(PYTHON) -m pytest -q tests

demo: setup
	$(PYTHON) examples/forecast.py

# torch.nn.RNN vs fusedrnn.LSTM/GRU on the adding problem, T=200, with grad_clip and
# truncate variants: table, learning curves and gradient-flow PNGs in examples/results/adding/
# (2.5-3 minutes on an AVX-512 CPU, about 7 on an AVX2-only one; README).
adding: setup
	$(PYTHON) examples/adding_problem.py

bench: setup
	$(PYTHON) benchmarks/bench.py

# Opt-in developer tool, not part of `make test`: see tools/cuda_emu/README.md (about 8 minutes on 2 cores).
cuda-emu: setup
	$(PYTHON) tools/cuda_emu/run.py
