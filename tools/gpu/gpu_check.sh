#!/usr/bin/env bash
# Everything a GPU machine should check of fusedrnn's CUDA path, in one call:
#
#   bash tools/gpu/gpu_check.sh OUTDIR
#
#   1. environment: nvidia-smi, python, torch, CUDA, cuDNN, nvcc versions
#   2. build:       TORCH_CUDA_ARCH_LIST=9.0 pip install --no-build-isolation -e .
#                   (override the architectures with TORCH_CUDA_ARCH_LIST)
#   3. tests:       pytest -k cuda on tests/test_cuda.py and the device-parametrised shared
#                   tests (CUDA_TESTS below; log + junit XML)
#   4. sanitizer:   compute-sanitizer --tool memcheck and --tool racecheck on
#                   tools/gpu/sanitizer_case.py (a small forward + backward of every kernel)
#   5. benchmark:   benchmarks/bench_gpu.py --out OUTDIR
#
# Every step runs even when an earlier one failed (a failed build still gets its log); the
# script exits non-zero if any step failed. OUTDIR receives at most 8 files: summary.txt
# (versions and one line per step), build.log, pytest.log, junit.xml, sanitizer.log,
# bench.log and the benchmark's .json / .md. The steps share a time budget
# (GPU_CHECK_BUDGET seconds, default 540) so the whole call ends within ~9 minutes; a step
# that would start with less than a minute left is reported as not run.
set -uo pipefail

if [ $# -ne 1 ]; then
  echo "usage: bash tools/gpu/gpu_check.sh OUTDIR" >&2
  exit 2
fi
OUT=$1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/../.."  # the repository root: the paths below are relative to it
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
BUDGET=${GPU_CHECK_BUDGET:-540}
START=$(date +%s)
SUMMARY="$OUT/summary.txt"
FAILED=0

: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }

# run NAME CAP_SECONDS LOGFILE COMMAND...: runs COMMAND with a timeout of CAP_SECONDS or
# what is left of the budget, whichever is less; records the outcome in the summary.
run() {
  local name=$1 cap=$2 log=$3
  shift 3
  local left=$((BUDGET - ($(date +%s) - START)))
  if [ "$left" -lt 60 ]; then
    note "[NOT RUN] $name: out of time budget (${BUDGET}s)"
    FAILED=1
    return 1
  fi
  local limit=$((cap < left ? cap : left))
  local t0 rc
  t0=$(date +%s)
  echo "== $name (limit ${limit}s): $*" | tee -a "$log"
  timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1
  rc=$?
  local took=$(($(date +%s) - t0))
  if [ $rc -eq 0 ]; then
    note "[ok]     $name (${took}s)"
  else
    [ $rc -eq 124 ] && note "[FAILED] $name: timed out after ${limit}s" \
                    || note "[FAILED] $name: exit code $rc (${took}s), see $(basename "$log")"
    FAILED=1
  fi
  return $rc
}

# 1. Environment --------------------------------------------------------------------------
{
  echo "# fusedrnn GPU check, $(date -Is)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
  echo
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  echo
  "$PY" - <<'EOF' 2>&1
import platform, torch
print("python", platform.python_version())
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN",
      torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("GPU", p.name, f"capability {p.major}.{p.minor}", f"{p.total_memory / 2**30:.1f} GiB",
          f"{p.multi_processor_count} SMs")
else:
    print("GPU: none visible to torch")
EOF
  command -v nvcc >/dev/null 2>&1 && nvcc --version | tail -n 2 || echo "nvcc: not on PATH"
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
  echo
} >> "$SUMMARY"

# 2. Build --------------------------------------------------------------------------------
run "build" 300 "$OUT/build.log" "$PY" -m pip install --no-build-isolation --no-deps -v -e .
run "import (cuda_built)" 60 "$OUT/build.log" "$PY" -c \
  "import fusedrnn; assert fusedrnn._C.cuda_built, 'fusedrnn._C was built without CUDA'; print('cuda_built = True')"

# 3. CUDA tests ---------------------------------------------------------------------------
# FUSEDRNN_REQUIRE_CUDA=1: no GPU visible to torch fails the tests instead of skipping them.
# The shared tests take the `device` fixture (tests/conftest.py); -k cuda keeps their cuda
# cases and all of tests/test_cuda.py.
CUDA_TESTS="tests/test_cuda.py tests/test_ops.py tests/test_clipping.py tests/test_modules.py tests/test_determinism.py"
# shellcheck disable=SC2086
run "pytest -k cuda $CUDA_TESTS" 240 "$OUT/pytest.log" env FUSEDRNN_REQUIRE_CUDA=1 \
  "$PY" -m pytest $CUDA_TESTS -k cuda -q \
  -p no:cacheprovider --junitxml="$OUT/junit.xml" -rfEs

# 4. compute-sanitizer --------------------------------------------------------------------
SANITIZER=$(command -v compute-sanitizer || true)
for candidate in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
  [ -z "$SANITIZER" ] && [ -x "$candidate" ] && SANITIZER=$candidate
done
if [ -z "$SANITIZER" ]; then
  note "[FAILED] compute-sanitizer: not found on PATH or under /usr/local/cuda"
  echo "compute-sanitizer not found on PATH or under /usr/local/cuda" >> "$OUT/sanitizer.log"
  FAILED=1
else
  # One allocation per tensor, so memcheck sees accesses past a tensor's end.
  export PYTORCH_NO_CUDA_MEMORY_CACHING=1
  run "compute-sanitizer memcheck" 150 "$OUT/sanitizer.log" "$SANITIZER" --tool memcheck \
    --error-exitcode 1 "$PY" tools/gpu/sanitizer_case.py
  # racecheck checks shared memory; restricted to fusedrnn's kernels (cuBLAS's GEMMs are not
  # ours and slow to instrument) when this version of the tool accepts the filter, which a
  # run of `true` (no GPU work) shows.
  filter=(--kernel-name kns=fusedrnn)
  if ! "$SANITIZER" --tool racecheck "${filter[@]}" true >/dev/null 2>&1; then
    echo "(racecheck: kernel-name filter not accepted; checking every kernel)" >> "$OUT/sanitizer.log"
    filter=()
  fi
  run "compute-sanitizer racecheck" 180 "$OUT/sanitizer.log" "$SANITIZER" --tool racecheck \
    "${filter[@]}" --error-exitcode 1 "$PY" tools/gpu/sanitizer_case.py
  unset PYTORCH_NO_CUDA_MEMORY_CACHING
fi

# 5. Benchmark ----------------------------------------------------------------------------
run "bench_gpu.py" 240 "$OUT/bench.log" "$PY" benchmarks/bench_gpu.py --out "$OUT"

note ""
note "total: $(($(date +%s) - START))s; $([ $FAILED -eq 0 ] && echo 'all steps passed' || echo 'SOME STEPS FAILED')"
exit $FAILED
