#!/usr/bin/env python
"""A whole single-row (B = 1) layer call reduced to its unavoidable work, timed paired
against torch.nn and fusedrnn in the same interleaved repeats.

The plain floors (benchmarks/floor.py, the benchmark's "call floor") add up ideal rates:
W_hh's bytes over the L2 bandwidth, FLOPs over the FMA peak. They leave out what every
two-thread implementation also pays and what the host does to a call that follows other
work (Note [Interleave order]: a call right after another library's call, a sleep or a
Python loop finds its caches and its second core cold; the benchmark's paired repeats always
time calls in that state). This script times the work itself as a call, in the same
repeats as the two implementations, so that its time carries the same host state:

  input projection   X (T x I) @ W_ih^T, one library GEMM (at::mm; fusedrnn computes it
                     in chunks inside its engine)
  forward loop       T steps of the engine's B = 1 memory pattern on the torch intra-op
                     pool (csrc/cpu/team.h's run_team and SpinBarrier, as the engine):
                     each thread streams its half of W_hh, packed once at setup (never
                     per call) in the engine's panel layout, through the engine's
                     single-row register block (benchmarks/step_pattern.py's kernel),
                     writes its units of h_t to a shared double buffer with one
                     multiply-add each (no activation functions), meets the other at the
                     barrier; training also keeps the step's sums and h_t for the backward
  backward loop      (training) T more steps of the same pattern (the backward streams the
                     same bytes of W_hh per step), keeping each step's products as dgates
  gradients          (training) dW_hh = dG^T H, dW_ih = dG^T X, dx = dG W_ih, db = sum dG:
                     three library GEMMs and a sum

No activations, no cell update, no weight packing, no autograd and no Python module: a
lower bound of what a fused B = 1 call must do, measured. A ratio target above
torch.nn time / floor-call time in a run asks for less time than this work took in that
run. The floor call's phases (median over its timed calls) show where its time goes.

    python benchmarks/call_floor.py [--cell lstm] [--shape 128 64 256] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from benchlib.names import CALL_FLOOR_IMPL, CALL_FLOOR_PEAK_IMPL  # noqa: E402
from step_pattern import PANEL_CPP  # noqa: E402

_CPP = r"""
#include <torch/extension.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>
#if defined(__x86_64__)
#include <immintrin.h>
#define PATTERN_X86 1
#endif

#include "team.h"  // csrc/cpu: the engine's thread team and barrier

namespace {

using Clock = std::chrono::steady_clock;

@PANEL@

float* alloc_floats(size_t n) {
  float* p = static_cast<float*>(std::aligned_alloc(64, (n * 4 + 63) / 64 * 64));
  if (!p) throw std::runtime_error("call_floor: out of memory");
  return p;
}

// Two slices of H / 2 units, one per thread of a two-thread team (a one-thread team
// streams both).
constexpr int kSlices = 2;

struct Floor {
  int64_t T = 0, I = 0, H = 0, G = 0;
  Sizes s{0, 0, 0};
  float* panel[kSlices] = {nullptr, nullptr};
  float* out[kSlices] = {nullptr, nullptr};
  float* hbuf[2] = {nullptr, nullptr};
  at::Tensor x, w_ih, xp, gates, hs, dgates, dw_hh, dw_ih, dx, db;
  ~Floor() {
    for (int p = 0; p < kSlices; ++p) std::free(panel[p]), std::free(out[p]);
    std::free(hbuf[0]), std::free(hbuf[1]);
  }
};

std::unique_ptr<Floor> g_floor;

#ifdef PATTERN_X86
// T steps of the pattern. add: [T][G * H], row t's first H values are added to the step's
// sums of gate 0 (the input part forward, the kept sums backward); keep (or null): [T][G *
// H], the step's sums; hkeep (or null): [T][H], h_t. Returns the team size.
int loop(Floor& f, const float* add, float* keep, float* hkeep) {
  const long U = f.s.U, GH = f.G * f.H;
  for (long k = 0; k < f.H; ++k) f.hbuf[0][k] = 0.f;
  int team = 1;
  fusedrnn::cpu::run_team(kSlices, [&](int tid, int n, fusedrnn::cpu::SpinBarrier& barrier) {
    if (tid == 0) team = n;
    for (long t = 0; t < f.T; ++t) {
      const float* h = f.hbuf[t & 1];
      float* next = f.hbuf[(t + 1) & 1];
      for (int p = tid; p < kSlices; p += n) {
        float* out = f.out[p];
        panel_step(f.panel[p], f.s, h, out);
        const float* a = add + t * GH + p * U;
        for (long u = 0; u < U; ++u) next[p * U + u] = 0.01f * out[u] + a[u];
        if (keep)
          for (long g = 0; g < f.G; ++g)
            std::memcpy(keep + t * GH + g * f.H + p * U, out + g * U, U * 4);
        if (hkeep) std::memcpy(hkeep + t * f.H + p * U, next + p * U, U * 4);
      }
      barrier.wait();
    }
  });
  return team;
}
#endif

}  // namespace

bool supported() {
#ifdef PATTERN_X86
  return __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

// Allocates the call's buffers and packs random weights once (each slice first touched by
// the team thread that streams it).
void setup(int64_t T, int64_t I, int64_t H, int64_t G) {
#ifdef PATTERN_X86
  if (!supported()) throw std::runtime_error("call_floor: needs AVX-512");
  if (H % 64 != 0 || H > 512 || G < 1 || G > 4 || T < 1 || I < 1)
    throw std::runtime_error(
        "call_floor: H must be a multiple of 64, <= 512; 1 <= G <= 4; T >= 1; I >= 1");
  auto f = std::make_unique<Floor>();
  f->T = T, f->I = I, f->H = H, f->G = G;
  f->s = Sizes{G, H / kSlices, H};
  const size_t n = (size_t)(G * f->s.U * H);
  fusedrnn::cpu::run_team(kSlices, [&](int tid, int nt, fusedrnn::cpu::SpinBarrier&) {
    for (int p = tid; p < kSlices; p += nt) {
      f->panel[p] = static_cast<float*>(std::aligned_alloc(64, n * 4));
      f->out[p] = static_cast<float*>(std::aligned_alloc(64, (size_t)G * f->s.U * 4));
      if (!f->panel[p] || !f->out[p]) continue;
      unsigned seed = 977u * (unsigned)(p + 1);
      for (size_t i = 0; i < n; ++i) {
        seed = seed * 1103515245u + 12345u;
        f->panel[p][i] = (((seed >> 8) & 0xFFFF) / 32768.f - 1.f) * 0.02f;
      }
    }
  });
  for (int p = 0; p < kSlices; ++p)
    if (!f->panel[p] || !f->out[p]) throw std::runtime_error("call_floor: out of memory");
  f->hbuf[0] = alloc_floats(H);
  f->hbuf[1] = alloc_floats(H);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1234);
  f->x = at::randn({T, I}, gen);
  f->w_ih = at::randn({G * H, I}, gen) * 0.1;
  f->xp = at::empty({T, G * H});
  f->gates = at::empty({T, G * H});
  f->dgates = at::empty({T, G * H});
  f->hs = at::empty({T, H});
  f->dw_hh = at::empty({G * H, H});
  f->dw_ih = at::empty({G * H, I});
  f->dx = at::empty({T, I});
  f->db = at::empty({G * H});
  g_floor = std::move(f);
#else
  (void)T, (void)I, (void)H, (void)G;
  throw std::runtime_error("call_floor: x86-64 only");
#endif
}

// One call: [input projection, forward loop, backward loop, gradients] in seconds (0 for
// what inference does not run), then the team size.
std::vector<double> call(bool train) {
#ifdef PATTERN_X86
  if (!g_floor) throw std::runtime_error("call_floor: setup() first");
  Floor& f = *g_floor;
  const auto t0 = Clock::now();
  at::mm_out(f.xp, f.x, f.w_ih.t());
  const auto t1 = Clock::now();
  const int team = loop(f, f.xp.data_ptr<float>(), train ? f.gates.data_ptr<float>() : nullptr,
                        train ? f.hs.data_ptr<float>() : nullptr);
  const auto t2 = Clock::now();
  auto t3 = t2, t4 = t2;
  if (train) {
    loop(f, f.gates.data_ptr<float>(), f.dgates.data_ptr<float>(), nullptr);
    t3 = Clock::now();
    at::mm_out(f.dw_hh, f.dgates.t(), f.hs);
    at::mm_out(f.dw_ih, f.dgates.t(), f.x);
    at::mm_out(f.dx, f.dgates, f.w_ih);
    at::sum_out(f.db, f.dgates, 0);
    t4 = Clock::now();
  }
  auto sec = [](Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double>(b - a).count();
  };
  return {sec(t0, t1), sec(t1, t2), sec(t2, t3), sec(t3, t4), (double)team};
#else
  (void)train;
  throw std::runtime_error("call_floor: x86-64 only");
#endif
}

// The call's buffers after the last call: xp, gates, hs, dgates (the loops' kept sums and
// states), dW_hh, dW_ih, dx, db.
std::vector<at::Tensor> outputs() {
  if (!g_floor) throw std::runtime_error("call_floor: setup() first");
  const Floor& f = *g_floor;
  return {f.xp, f.gates, f.hs, f.dgates, f.dw_hh, f.dw_ih, f.dx, f.db};
}
"""

PHASES = ("input_projection", "forward_loop", "backward_loop", "gradients")
GATES = {"lstm": 4, "gru": 3}
_MODULE = None
_BUILD_ERROR = None  # a failed build is not retried in the same process


def build(verbose: bool = False):
    global _MODULE, _BUILD_ERROR
    if _BUILD_ERROR is not None:
        raise _BUILD_ERROR
    if _MODULE is None:
        from torch.utils.cpp_extension import load_inline
        try:
            _MODULE = load_inline(
                name="fusedrnn_call_floor_v1", cpp_sources=_CPP.replace("@PANEL@", PANEL_CPP),
                functions=["setup", "call", "supported", "outputs"],
                extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"],
                extra_include_paths=[str(_HERE.parent / "csrc" / "cpu")], verbose=verbose)
        except Exception as exc:
            _BUILD_ERROR = exc
            raise
    return _MODULE


def phase_medians(phases) -> dict:
    """{phase: median microseconds} over a list of call() results, and the total."""
    out = {name: statistics.median(p[i] for p in phases) * 1e6 for i, name in enumerate(PHASES)}
    out["total"] = statistics.median(sum(p[:4]) for p in phases) * 1e6
    out["team"] = int(min(p[4] for p in phases)) if phases else 0
    return out


def check_outputs(mod, train: bool) -> None:
    """Raises unless the last call left finite, non-zero results in every buffer it wrote
    (a floor call that computed nothing, or on infinities, would time nothing real)."""
    names = ("xp", "gates", "hs", "dgates", "dW_hh", "dW_ih", "dx", "db")
    written = names if train else ("xp",)
    for name, t in zip(names, mod.outputs()):
        if name in written and not (bool(torch.isfinite(t).all()) and t.abs().max().item() > 0):
            raise RuntimeError(f"call_floor: the floor call's {name} is zero or not finite")


def gemm_flops(rows: int, I: int, H: int, G: int, train: bool) -> float:
    """FLOPs of a layer call's all-steps GEMMs over `rows` rows (T * B; B per step): the
    input projection; training also the input gradient, dW_ih and dW_hh. The floor call's
    library GEMMs, and bench_cpu_engine.step_floor's call floor."""
    return 2.0 * rows * G * H * I * (3 if train else 1) + (2.0 * rows * G * H * H if train else 0.0)


class FloorCall:
    """One shape's floor call for a paired timer (bench_cpu_engine.time_paired):
    prepare(mode) is an Impl's prepare, and every call keeps its phases per mode. The
    compiled module holds one shape at a time: the newest FloorCall's."""

    def __init__(self, cell: str, T: int, I: int, H: int, mod=None):
        self.mod = mod if mod is not None else build()
        if not self.mod.supported():
            raise RuntimeError("call_floor: needs AVX-512")
        self.mod.setup(T, I, H, GATES[cell])
        self.cell, self.T, self.I, self.H = cell, T, I, H
        self.phases = {"infer": [], "train": []}

    def prepare(self, mode: str):
        train, phases = mode == "train", self.phases[mode]

        def prepare(data):
            def call():
                phases.append(self.mod.call(train))
            return call
        return prepare

    def timed_phases(self, mode: str, n: int) -> list:
        """The phases of the last n calls of `mode` (a paired run's timed repeats)."""
        return self.phases[mode][-n:] if n else []

    def add_at_peak(self, times: dict, preempt: dict, mode: str, peak_gflops: float) -> None:
        """Adds CALL_FLOOR_PEAK_IMPL to a paired run's times (ms) and preemption counts:
        each timed floor call with its measured GEMM phases replaced by their FLOPs at
        peak_gflops (the library GEMMs run below the peak at these sizes, and an
        implementation may do better)."""
        ts = times.get(CALL_FLOOR_IMPL)
        if not ts or not peak_gflops:
            return
        at_peak_ms = gemm_flops(self.T, self.I, self.H, GATES[self.cell],
                                mode == "train") / (peak_gflops * 1e9) * 1e3
        times[CALL_FLOOR_PEAK_IMPL] = [
            t - (p[0] + p[3]) * 1e3 + at_peak_ms
            for t, p in zip(ts, self.timed_phases(mode, len(ts)))]
        preempt[CALL_FLOOR_PEAK_IMPL] = list(preempt.get(CALL_FLOOR_IMPL, []))

    def check(self, mode: str) -> None:
        check_outputs(self.mod, mode == "train")


def measure(cell: str, T: int, I: int, H: int, modes=("infer", "train"), seconds: float = 20.0,
            min_repeats: int = 16, max_repeats: int = 96, warmup: int = 2,
            with_fused: bool = True, seed: int = 0, fma_peak_gflops=None) -> dict:
    """Paired times of torch.nn, fusedrnn (where importable and with_fused) and the floor
    call at B = 1, per mode: medians (ms), paired ratios and the floor call's phases, in the
    repeats (after other work) and back to back (the floor call alone, warm). With
    fma_peak_gflops, also the floor call with its GEMMs at that peak (FloorCall.add_at_peak),
    paired like the others."""
    import bench_cpu_engine as bce
    fc = FloorCall(cell, T, I, H)
    mod = fc.mod
    torch.manual_seed(seed)
    ref = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](I, H)
    fusedrnn = fused = None
    if with_fused:
        from benchlib.impls import import_fusedrnn
        fusedrnn = import_fusedrnn()
        fused = getattr(fusedrnn, cell.upper())(I, H)
        bce._load_same_weights(ref, fused)
    engine = bce.EngineCounter(fusedrnn)

    def make_data():
        return (torch.randn(T, 1, I), torch.randn(1, 1, H),
                torch.randn(1, 1, H) if cell == "lstm" else None, torch.randn(T, 1, H))

    out = {"cell": cell, "T": T, "B": 1, "I": I, "H": H, "threads": torch.get_num_threads(),
           "modes": {}}
    for mode in modes:
        train = mode == "train"
        impls = [bce.Impl("torch.nn", bce._layer_prepare(ref, cell, mode))]
        if fused is not None:
            impls.append(bce.Impl("fusedrnn", bce._layer_prepare(fused, cell, mode)))
        impls.append(bce.Impl(CALL_FLOOR_IMPL, fc.prepare(mode)))
        errors = {}
        budget = bce.Budget(warmup, min_repeats, max_repeats, seconds)
        times, _, n, pre = bce.time_paired(impls, make_data, budget, engine, errors,
                                           f"{cell} {mode}")
        if errors:
            raise RuntimeError(f"call_floor: {errors}")
        timed_phases = fc.timed_phases(mode, n)
        fc.add_at_peak(times, pre, mode, fma_peak_gflops)
        # The floor call alone, back to back (warm): as many calls as the repeats had.
        alone = [mod.call(train) for _ in range(max(n, 8))]
        check_outputs(mod, train)
        res = {"repeats": n,
               "median_ms": {k: statistics.median(v) for k, v in times.items()},
               "ratio": {}, "clean_ratio": {},
               "floor_phases_us": phase_medians(timed_phases),
               "floor_alone_phases_us": phase_medians(alone)}
        floors = [k for k in (CALL_FLOOR_IMPL, CALL_FLOOR_PEAK_IMPL) if k in times]
        pairs = [("torch.nn", f) for f in floors]
        if fused is not None:
            pairs += [("torch.nn", "fusedrnn")] + [("fusedrnn", f) for f in floors]
        for a, b in pairs:
            st = bce.pair_stats(times, pre, a, b)
            key = f"{a} / {b}"
            res["ratio"][key] = st["ratio"]["median"] if st["ratio"] else None
            res["clean_ratio"][key] = (st["clean_ratio"]["median"]
                                       if st["clean_ratio"] else None)
            res.setdefault("n_clean", {})[key] = st["n_clean"]
        target = bce.LAYER_TARGETS.get("b1", {}).get(cell) if (T, I, H) == (128, 64, 256) else None
        if target:
            res["target"] = target[0 if mode == "infer" else 1]
        out["modes"][mode] = res
    return out


def report(res: dict) -> str:
    lines = [f"{res['cell']} T={res['T']} B=1 I={res['I']} H={res['H']}, "
             f"{res['threads']} threads"]
    for mode, r in res["modes"].items():
        lines.append(f"\n{mode}: {r['repeats']} paired repeats")
        lines.append("  medians (ms): "
                     + ", ".join(f"{k} {v:.3f}" for k, v in r["median_ms"].items()))
        for key, v in r["ratio"].items():
            c = r["clean_ratio"].get(key)
            lines.append(f"  {key}: {v:.3f}x (clean {c:.3f}x over {r['n_clean'][key]})"
                         if c else f"  {key}: {v:.3f}x")
        if "target" in r:
            best = max(v for k, v in r["ratio"].items() if k.startswith("torch.nn / floor"))
            verdict = ("below the target: the target asks for less time than this work took"
                       if best < r["target"] else "at or above the target")
            lines.append(f"  target {r['target']:.2f}x; torch.nn / floor call at best "
                         f"{best:.3f}x: {verdict}")
        for label, key in (("floor call in the repeats", "floor_phases_us"),
                           ("floor call alone, back to back", "floor_alone_phases_us")):
            p = r[key]
            lines.append(f"  {label} (us, median): " + ", ".join(
                f"{name} {p[name]:.0f}" for name in PHASES + ("total",)) + f"; team {p['team']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--cell", choices=tuple(GATES), default="lstm")
    ap.add_argument("--shape", nargs=3, type=int, default=[128, 64, 256], metavar=("T", "I", "H"))
    ap.add_argument("--modes", nargs="+", choices=("infer", "train"), default=["infer", "train"])
    ap.add_argument("--seconds", type=float, default=20.0, help="time goal per mode")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-fused", action="store_true", help="torch.nn and the floor call only")
    ap.add_argument("--no-peak", action="store_true",
                    help="do not measure the FMA peak (benchmarks/floor.py --quick) for the "
                         "'GEMMs at peak' figure")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    T, I, H = args.shape
    peak = None
    if not args.no_peak:
        import floor
        peak = floor.fma_peak(floor.measure(quick=True, threads=(args.threads,)), args.threads)
    res = measure(args.cell, T, I, H, tuple(args.modes), args.seconds,
                  with_fused=not args.no_fused, fma_peak_gflops=peak)
    res["fma_peak_gflops"] = peak
    from benchlib.machine import cpu_flags
    res["capability"] = None
    if not args.no_fused:
        import fusedrnn
        res["capability"] = fusedrnn._C._cpu_capability()
    res["torch"] = torch.__version__
    res["cpu_flags"] = [f for f in cpu_flags() if f.startswith("avx") or f == "fma"]
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    print(report(res) + (f"\nFMA peak {peak:.0f} GFLOP/s" if peak else "")
          + f"\ncapability {res['capability']}, torch {res['torch']}, "
          f"flags {' '.join(res['cpu_flags'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
