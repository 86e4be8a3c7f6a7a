#!/usr/bin/env python
"""The single-row (B = 1) recurrent step's memory pattern alone, without fusedrnn.

At B = 1 a step of the CPU engine is bound by streaming each thread's slice of W_hh from
its core's L2 (512 KiB per thread for an H = 256 LSTM on two threads). The plain floor
(benchmarks/floor.py: the slice over the measured L2 read bandwidth) leaves out what every
two-thread implementation of the recurrence must also do once per step: hand each thread's
half of h_t to the other and wait for it. This script times that pattern in a small C++
kernel compiled at run time (as floor.py's, AVX-512 only), step by step, in five variants:

  panel-1t          one thread streams its slice in the engine's panel layout (Note [Engine
                    panel layout]: per block of 16 units, K columns of G vectors) with the
                    engine's single-row register block (2 unit blocks side by side: 8
                    accumulators, one broadcast of h[k] per column); no synchronisation
  natural-1t        the same rows read in place (row-major W_hh, no packing): dot products
                    of 4 rows at a time against h held in registers, horizontal sums at the
                    end of each 16-row block
  panel-2t-free     two pinned threads, each with its own slice, no synchronisation
  panel-2t-barrier  the same with the engine's spin barrier (csrc/cpu/team.h) after every step
  panel-2t-shared   the engine's exchange as well: each thread writes its units of h_t to a
                    shared double buffer, waits at the barrier, and reads all of h_{t-1}
                    (prefetched at the start of the step): the engine's B = 1 step without
                    its pointwise math

Per variant: median, mean and 90th percentile of the per-step times over the steps of the
best try (by mean; a barrier-synchronised loop pays the slower thread every step, so its
mean is the figure a whole call pays). The record of the first runs is
benchmarks/results/amd-epyc-2026-12-04-b1-step-pattern.md.

    python benchmarks/step_pattern.py [--hidden 256] [--gates 4] [--steps 3000] [--tries 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

# The engine's single-row register block over one thread's panel: this script's kernel, and
# the time loops of benchmarks/call_floor.py (which includes it too). Needs PATTERN_X86
# (defined with <immintrin.h> on x86-64) before it.
PANEL_CPP = r"""
struct Sizes {
  long G, U, K;  // gates, units of the thread's slice (a multiple of 32), columns (= H)
};

#ifdef PATTERN_X86
// One step of a thread's slice in the panel layout [U / 16][K][G][16]: two unit blocks side
// by side (G * 2 accumulators), one broadcast of h[k] per column, as the engine's single-row
// register block. out: [G][U].
__attribute__((target("avx512f")))
void panel_step(const float* panel, const Sizes& s, const float* h, float* out) {
  for (long j = 0; j < s.U / 16; j += 2) {
    __m512 acc[4][2];
    for (int g = 0; g < 4; ++g) acc[g][0] = acc[g][1] = _mm512_setzero_ps();
    const float* p0 = panel + j * s.K * s.G * 16;
    const float* p1 = p0 + s.K * s.G * 16;
    for (long k = 0; k < s.K; ++k) {
      const __m512 x = _mm512_set1_ps(h[k]);
      for (int g = 0; g < s.G; ++g) {
        acc[g][0] = _mm512_fmadd_ps(x, _mm512_load_ps(p0 + (k * s.G + g) * 16), acc[g][0]);
        acc[g][1] = _mm512_fmadd_ps(x, _mm512_load_ps(p1 + (k * s.G + g) * 16), acc[g][1]);
      }
    }
    for (int g = 0; g < s.G; ++g) {
      _mm512_store_ps(out + g * s.U + j * 16, acc[g][0]);
      _mm512_store_ps(out + g * s.U + (j + 1) * 16, acc[g][1]);
    }
  }
}
#endif
"""

_CPP = r"""
#include <algorithm>
#include <atomic>
#include <cmath>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>
#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#define PATTERN_X86 1
#endif

#include "team.h"  // csrc/cpu: the engine's SpinBarrier

namespace {

using Clock = std::chrono::steady_clock;

@PANEL@

#ifdef PATTERN_X86
// Sixteen vectors -> one vector whose lanes are their sums (in some fixed lane order).
__attribute__((target("avx512f")))
inline __m512 sum16(const __m512* a) {
  __m512 b[8], c[4], d[2];
  for (int i = 0; i < 8; ++i)
    b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xEE));
  for (int i = 0; i < 4; ++i)
    c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xDD));
  for (int i = 0; i < 2; ++i)
    d[i] = _mm512_add_ps(_mm512_shuffle_ps(c[2 * i], c[2 * i + 1], 0x44),
                         _mm512_shuffle_ps(c[2 * i], c[2 * i + 1], 0xEE));
  return _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], 0x88), _mm512_shuffle_ps(d[0], d[1], 0xDD));
}

// The same outputs from rows read in place: rows [G][U][K] (K a multiple of 16, <= 512).
__attribute__((target("avx512f")))
void natural_step(const float* rows, const Sizes& s, const float* h, float* out) {
  const long nv = s.K / 16;
  for (long g = 0; g < s.G; ++g) {
    for (long j = 0; j < s.U; j += 16) {
      __m512 acc[16];
      const float* r = rows + (g * s.U + j) * s.K;
      for (int q = 0; q < 16; q += 4) {
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (long v = 0; v < nv; ++v) {
          const __m512 hv = _mm512_loadu_ps(h + v * 16);
          a0 = _mm512_fmadd_ps(_mm512_load_ps(r + (q + 0) * s.K + v * 16), hv, a0);
          a1 = _mm512_fmadd_ps(_mm512_load_ps(r + (q + 1) * s.K + v * 16), hv, a1);
          a2 = _mm512_fmadd_ps(_mm512_load_ps(r + (q + 2) * s.K + v * 16), hv, a2);
          a3 = _mm512_fmadd_ps(_mm512_load_ps(r + (q + 3) * s.K + v * 16), hv, a3);
        }
        acc[q] = a0, acc[q + 1] = a1, acc[q + 2] = a2, acc[q + 3] = a3;
      }
      _mm512_store_ps(out + g * s.U + j, sum16(acc));
    }
  }
}
#endif

@PINNING@

float* alloc_floats(size_t n) {
  float* p = static_cast<float*>(std::aligned_alloc(64, (n * 4 + 63) / 64 * 64));
  if (!p) throw std::runtime_error("step_pattern: out of memory");
  return p;
}

}  // namespace

bool supported() {
#ifdef PATTERN_X86
  return __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

#ifdef PATTERN_X86
// The sizes of one thread's share of a two-thread split of H units (every variant streams
// that much, the one-thread ones too), after checking the CPU and the arguments.
Sizes sizes_for(int64_t H, int64_t G) {
  if (!supported()) throw std::runtime_error("step_pattern: needs AVX-512");
  if (H % 64 != 0 || H > 512 || G < 1 || G > 4)
    throw std::runtime_error("step_pattern: H must be a multiple of 64, <= 512; 1 <= G <= 4");
  return Sizes{G, H / 2, H};
}
#endif

// Largest relative error of panel_step and natural_step against a double-precision
// reference on random data (one thread's share of H units, G gates): [panel, natural].
// natural_step's lanes come out in sum16's order, so each 16-row block is compared as a
// sorted set of sums.
std::vector<double> check(int64_t H, int64_t G) {
#ifdef PATTERN_X86
  const Sizes s = sizes_for(H, G);
  const size_t n = (size_t)(s.G * s.U * s.K);
  float* rows = alloc_floats(n);
  float* panel = alloc_floats(n);
  float* h = alloc_floats(H);
  float* out = alloc_floats(s.G * s.U);
  unsigned seed = 12345;
  auto rnd = [&] { seed = seed * 1103515245u + 12345u; return ((seed >> 8) & 0xFFFF) / 32768.f - 1.f; };
  for (size_t i = 0; i < n; ++i) rows[i] = rnd();
  for (long k = 0; k < H; ++k) h[k] = rnd();
  for (long g = 0; g < s.G; ++g)  // panel[j][k][g][l] = rows[g][j * 16 + l][k]
    for (long u = 0; u < s.U; ++u)
      for (long k = 0; k < s.K; ++k)
        panel[(((u / 16) * s.K + k) * s.G + g) * 16 + u % 16] = rows[(g * s.U + u) * s.K + k];
  std::vector<double> want(s.G * s.U);
  for (long r = 0; r < s.G * s.U; ++r) {
    double acc = 0;
    for (long k = 0; k < s.K; ++k) acc += (double)rows[r * s.K + k] * h[k];
    want[r] = acc;
  }
  std::vector<double> err{0.0, 0.0};
  panel_step(panel, s, h, out);
  for (long r = 0; r < s.G * s.U; ++r)
    err[0] = std::max(err[0], std::abs(out[r] - want[r]) / (1.0 + std::abs(want[r])));
  natural_step(rows, s, h, out);
  for (long r0 = 0; r0 < s.G * s.U; r0 += 16) {
    std::vector<double> a(out + r0, out + r0 + 16), b(want.begin() + r0, want.begin() + r0 + 16);
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    for (int l = 0; l < 16; ++l) err[1] = std::max(err[1], std::abs(a[l] - b[l]) / (1.0 + std::abs(b[l])));
  }
  std::free(rows), std::free(panel), std::free(h), std::free(out);
  return err;
#else
  (void)H, (void)G;
  throw std::runtime_error("step_pattern: x86-64 only");
#endif
}

// Per-step seconds of thread 0 (and, with two threads, of thread 1 after them) for one try
// of `steps` steps. variant: "panel-1t", "natural-1t", "panel-2t-free", "panel-2t-barrier",
// "panel-2t-shared". H: hidden size (K = H columns); every thread streams the rows of H / 2
// units of G gates, one thread's share of a two-thread split, also in the one-thread
// variants. Returns [pinned (1/0), times...].
std::vector<double> run(const std::string& variant, int64_t H, int64_t G, int64_t steps) {
#ifdef PATTERN_X86
  const bool two = variant.rfind("panel-2t", 0) == 0;
  const bool natural = variant == "natural-1t";
  if (!two && variant != "panel-1t" && !natural)
    throw std::runtime_error("step_pattern: unknown variant " + variant);
  const int threads = two ? 2 : 1;
  const Sizes s = sizes_for(H, G);
  const bool barrier_on = variant == "panel-2t-barrier" || variant == "panel-2t-shared";
  const bool shared = variant == "panel-2t-shared";
  fusedrnn::cpu::SpinBarrier barrier(threads);  // the engine's own (team.h)
  float* state[2] = {alloc_floats(H), alloc_floats(H)};
  for (long k = 0; k < H; ++k) state[0][k] = state[1][k] = 1e-3f * (float)(k & 63);
  std::vector<int> cpus = allowed_cpus();
  std::vector<std::vector<double>> times(threads);
  std::vector<char> pinned(threads, 0);
  std::atomic<int> ready{0};
  auto body = [&](int t) {
    if ((int)cpus.size() >= threads) pinned[t] = pin(cpus[t]);
    const size_t n = (size_t)(s.G * s.U * s.K);
    float* w = alloc_floats(n);  // first touch by its reader: in that core's caches
    for (size_t i = 0; i < n; ++i) w[i] = 1e-4f * (float)(i & 255);
    float* own_h = alloc_floats(H);
    std::memcpy(own_h, state[0], H * 4);
    float* out = alloc_floats(s.G * s.U);
    times[t].resize(steps);
    ready.fetch_add(1);
    while (ready.load(std::memory_order_acquire) < threads) {
    }
    for (long step = -20; step < steps; ++step) {  // 20 untimed steps bring w into cache
      const auto t0 = Clock::now();
      const float* h = shared ? state[(step + 40) % 2] : own_h;
      if (shared)
        for (long k = 0; k < H; k += 16) __builtin_prefetch(h + k);
      if (natural) natural_step(w, s, h, out);
      else panel_step(w, s, h, out);
      if (shared) {  // this thread's units of h_t (gate 0's sums, scaled to stay finite)
        float* next = state[(step + 41) % 2] + t * s.U;
        for (long u = 0; u < s.U; ++u) next[u] = 1e-3f * out[u];
      } else {
        own_h[step & (H - 1) & ~15L] += 1e-9f * out[0];
      }
      if (barrier_on) barrier.wait();
      if (step >= 0) times[t][step] = std::chrono::duration<double>(Clock::now() - t0).count();
    }
    std::free(w);
    std::free(own_h);
    std::free(out);
  };
  // Every measuring thread is a new one (the caller is never pinned: its affinity would
  // outlive the call).
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(body, t);
  for (auto& th : pool) th.join();
  std::free(state[0]);
  std::free(state[1]);
  bool all = true;
  for (char p : pinned) all = all && p;
  std::vector<double> res{all ? 1.0 : 0.0};
  for (auto& v : times) res.insert(res.end(), v.begin(), v.end());
  return res;
#else
  (void)variant, (void)H, (void)G, (void)steps;
  throw std::runtime_error("step_pattern: x86-64 only");
#endif
}
"""

VARIANTS = ("panel-1t", "natural-1t", "panel-2t-free", "panel-2t-barrier", "panel-2t-shared")


def _build(verbose: bool = False):
    from torch.utils.cpp_extension import load_inline
    from benchlib.machine import REPO_ROOT  # benchmarks/ is on sys.path
    from floor import PINNING_CPP
    return load_inline(name="fusedrnn_step_pattern_v2",
                       cpp_sources=_CPP.replace("@PINNING@", PINNING_CPP).replace("@PANEL@", PANEL_CPP),
                       functions=["run", "check", "supported"], extra_cflags=["-O3"],
                       extra_include_paths=[str(REPO_ROOT / "csrc" / "cpu")],
                       extra_ldflags=["-lpthread"], verbose=verbose)


def _stats(steps_us) -> dict:
    ordered = sorted(steps_us)
    return {"median_us": statistics.median(ordered), "mean_us": statistics.fmean(ordered),
            "p90_us": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]}


def summarize(per_step_s, threads: int, lockstep: bool) -> dict:
    """Median / mean / p90 in microseconds of the per-step times. Threads in lockstep (a
    barrier every step): each step at the slower thread's time; free-running threads drift
    apart, so there each thread is summarised alone and the slower one (by mean) reported."""
    n = len(per_step_s) // threads
    per_thread = [[v * 1e6 for v in per_step_s[t * n:(t + 1) * n]] for t in range(threads)]
    if lockstep:
        return _stats([max(col) for col in zip(*per_thread)])
    return max((_stats(v) for v in per_thread), key=lambda s: s["mean_us"])


def measure(hidden: int, gates: int, steps: int, tries: int, variants=VARIANTS) -> dict:
    mod = _build()
    if not mod.supported():
        raise SystemExit("step_pattern: this CPU has no AVX-512")
    out = {}
    for _ in range(tries):  # variants interleaved, so that all see the same host stretches
        for v in variants:
            res = mod.run(v, hidden, gates, steps)
            threads = 2 if v.startswith("panel-2t") else 1
            s = summarize(res[1:], threads, lockstep=v in ("panel-2t-barrier", "panel-2t-shared"))
            s["pinned"] = bool(res[0])
            if v not in out or s["mean_us"] < out[v]["mean_us"]:
                out[v] = s
    kib = gates * (hidden // 2) * hidden * 4 / 1024  # a thread's share of W_hh on two threads
    for s in out.values():
        s["kib_per_thread"] = kib
        s["gb_per_s_per_thread"] = kib * 1024 / (s["mean_us"] * 1e-6) / 1e9
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--gates", type=int, default=4, help="4: LSTM, 3: GRU")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--tries", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    res = measure(args.hidden, args.gates, args.steps, args.tries)
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    print(f"H={args.hidden} G={args.gates}, {args.steps} steps, best of {args.tries} tries by mean")
    print("| variant | KiB per thread and step | median us | mean us | p90 us | GB/s per thread (mean) |")
    print("|---|--:|--:|--:|--:|--:|")
    for v, s in res.items():
        print(f"| {v} | {s['kib_per_thread']:.0f} | {s['median_us']:.2f} | {s['mean_us']:.2f} | "
              f"{s['p90_us']:.2f} | {s['gb_per_s_per_thread']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
