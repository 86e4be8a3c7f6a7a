#!/usr/bin/env python
"""The ceilings of this machine, for reading fusedrnn's CPU times against them.

A recurrent step cannot be faster than the slower of two floors: reading W_hh (from
where it lives, ideally each core's own L2) and doing its FLOPs at the FMA peak. This
script measures those ceilings directly, with a small C++ kernel compiled at run time
(torch.utils.cpp_extension.load_inline, -O3, no -march: every SIMD function carries its
own target attribute and the ISA is picked at run time, so the one build runs on
AVX2-only CPUs too):

  fma     peak float32 FMA rate, GFLOP/s, 1 and 2 threads (std::thread, each pinned to its
          own CPU where the affinity mask allows), many independent accumulators per thread
  l1      read bandwidth from a buffer that fits L1d (16 KiB per thread), GB/s
  l2      read bandwidth from a buffer of half the L2 (clamped to 256 KiB-1 MiB) per thread
  llc     read bandwidth from 4x the L2 per thread (usually the last-level cache)
  mem     read bandwidth from a 256 MiB buffer (split between the threads)
  sgemm   torch.mm on 2048x2048 float32: the rate a large, tuned GEMM reaches (practical peak)
  kloop   the engine's register block alone (4 rows x 4 vectors of FMA accumulators, one
          weight vector loaded per 4 FMAs, a broadcast per row) streaming a 640 KiB panel per
          thread from L2, as one thread's half of an H = 256 LSTM step does, GFLOP/s, 1 and 2
          threads: what the FMA peak shrinks to when its operands come from L2 on both cores

Every figure is the best of a few tries: on a shared machine the best is the closest to
what the hardware can do, and a ceiling is what is wanted here (the benchmarks that use it
report medians of their own).

    python benchmarks/floor.py            # table + JSON
    python benchmarks/floor.py --quick    # a second or two (after the first compile)
    python benchmarks/floor.py --json     # the JSON only

From Python (bench scripts): `from floor import measure; ceilings = measure(quick=True)`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from benchlib.machine import REPO_ROOT, cpu_flags, cpu_model  # benchmarks/ is on sys.path

# The CPUs this process may run on, and pinning the calling thread to one of them (-1: leave
# it): C++ that every kernel module of benchmarks/ compiles inside its anonymous namespace
# (Linux: sched_getaffinity / pthread_setaffinity_np; elsewhere no CPUs and no pinning).
PINNING_CPP = r"""
std::vector<int> allowed_cpus() {
  std::vector<int> cpus;
#if defined(__linux__)
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0)
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) cpus.push_back(c);
#endif
  return cpus;
}

bool pin(int cpu) {
#if defined(__linux__)
  if (cpu < 0) return false;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return pthread_setaffinity_np(pthread_self(), sizeof(set), &set) == 0;
#else
  (void)cpu;
  return false;
#endif
}
"""

# The C++ side. Why the shape of each kernel:
# - FMA: a = a * b + c on K independent vector accumulators. One FMA has a latency of 4
#   cycles and (on the CPUs here) two FMA ports, so at least 8 chains must be in flight to
#   fill both ports; 12 leaves headroom for CPUs with a latency of 5 or 6 and still fits
#   the 16 ymm registers of AVX2 (AVX-512 has 32). b < 1 and c small keep the values finite
#   and normal (denormals would slow the loop down and measure the wrong thing).
# - k loop: the forward engine's register block (engine_fwd_impl.h) in a copy of its own,
#   4 rows x 4 weight vectors (AVX2: 3 x 4), the weights kept in registers across the rows,
#   one broadcast per row and column: the FMA peak with its operands streaming from L2.
# - Reads: a sum over the buffer with 8 vector accumulators, so the adds never wait on each
#   other and the loads (two or three per cycle) are the limit. The buffer is allocated and
#   first written by the thread that reads it, after pinning, so its pages are local and it
#   sits in that core's caches.
# - Threads start together on a spin flag; the rate is total work / the slowest thread's
#   time, so a thread that ran alone for a while does not inflate the total.
_CPP = r"""
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>
#include <string>
#include <stdexcept>
#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FLOOR_X86 1
#endif

namespace {

using Clock = std::chrono::steady_clock;
constexpr int kAcc = 12;     // independent FMA chains per thread (see the Python comment)
constexpr int kReadAcc = 8;  // independent add chains in the read loop

#ifdef FLOOR_X86
__attribute__((target("avx512f")))
float fma_avx512(long iters) {
  __m512 acc[kAcc];
  for (int k = 0; k < kAcc; ++k) acc[k] = _mm512_set1_ps(0.001f * (k + 1));
  const __m512 b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
  for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int k = 0; k < kAcc; ++k) acc[k] = _mm512_fmadd_ps(acc[k], b, c);
  }
  __m512 s = acc[0];
  for (int k = 1; k < kAcc; ++k) s = _mm512_add_ps(s, acc[k]);
  return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma")))
float fma_avx2(long iters) {
  __m256 acc[kAcc];
  for (int k = 0; k < kAcc; ++k) acc[k] = _mm256_set1_ps(0.001f * (k + 1));
  const __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int k = 0; k < kAcc; ++k) acc[k] = _mm256_fmadd_ps(acc[k], b, c);
  }
  __m256 s = acc[0];
  for (int k = 1; k < kAcc; ++k) s = _mm256_add_ps(s, acc[k]);
  float out[8];
  _mm256_storeu_ps(out, s);
  float r = 0.f;
  for (float v : out) r += v;
  return r;
}

// n_floats is a multiple of 16 * kReadAcc (the caller rounds the buffer size).
__attribute__((target("avx512f")))
float read_avx512(const float* p, long n_floats, long passes) {
  __m512 acc[kReadAcc];
  for (int k = 0; k < kReadAcc; ++k) acc[k] = _mm512_setzero_ps();
  for (long r = 0; r < passes; ++r) {
    for (long i = 0; i < n_floats; i += 16 * kReadAcc) {
#pragma GCC unroll 8
      for (int k = 0; k < kReadAcc; ++k)
        acc[k] = _mm512_add_ps(acc[k], _mm512_load_ps(p + i + 16 * k));
    }
  }
  __m512 s = acc[0];
  for (int k = 1; k < kReadAcc; ++k) s = _mm512_add_ps(s, acc[k]);
  return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2")))
float read_avx2(const float* p, long n_floats, long passes) {
  __m256 acc[kReadAcc];
  for (int k = 0; k < kReadAcc; ++k) acc[k] = _mm256_setzero_ps();
  for (long r = 0; r < passes; ++r) {
    for (long i = 0; i < n_floats; i += 8 * kReadAcc) {
#pragma GCC unroll 8
      for (int k = 0; k < kReadAcc; ++k)
        acc[k] = _mm256_add_ps(acc[k], _mm256_load_ps(p + i + 8 * k));
    }
  }
  __m256 s = acc[0];
  for (int k = 1; k < kReadAcc; ++k) s = _mm256_add_ps(s, acc[k]);
  float out[8];
  _mm256_storeu_ps(out, s);
  float r = 0.f;
  for (float v : out) r += v;
  return r;
}

// The engine's k loop: acc[m][v] += x[m][k] * panel[k][v] for 4 rows m and 4 vectors v
// over the panel's K columns, one panel block of K * 4 vectors after the other, prefetching
// 8 columns ahead as the engine does. Returns a sum of the accumulators.
__attribute__((target("avx512f")))
float kloop_avx512(const float* panel, long blocks, long K, const float* x, long passes) {
  __m512 total = _mm512_setzero_ps();
  for (long r = 0; r < passes; ++r) {
    for (long j = 0; j < blocks; ++j) {
      const float* pj = panel + j * K * 64;
      __m512 acc[4][4];
      for (int m = 0; m < 4; ++m)
        for (int v = 0; v < 4; ++v) acc[m][v] = _mm512_setzero_ps();
      for (long k = 0; k < K; ++k) {
        const float* wk = pj + k * 64;
        for (int l = 0; l < 4; ++l) _mm_prefetch((const char*)(wk + 8 * 64 + 16 * l), _MM_HINT_T0);
        __m512 w[4];
        for (int v = 0; v < 4; ++v) {
          w[v] = _mm512_loadu_ps(wk + 16 * v);
          asm("" : "+v"(w[v]));
        }
        for (int m = 0; m < 4; ++m) {
          const __m512 xm = _mm512_set1_ps(x[m * K + k]);
          for (int v = 0; v < 4; ++v) acc[m][v] = _mm512_fmadd_ps(xm, w[v], acc[m][v]);
        }
      }
      for (int m = 0; m < 4; ++m)
        for (int v = 0; v < 4; ++v) total = _mm512_add_ps(total, acc[m][v]);
    }
  }
  return _mm512_reduce_add_ps(total);
}

__attribute__((target("avx2,fma")))
float kloop_avx2(const float* panel, long blocks, long K, const float* x, long passes) {
  // 16 accumulators (4 rows x 2 vectors of 8 lanes, two halves of each 16-lane block) in the
  // 16 ymm registers leave none for the weights: 3 rows x 4 vectors, as the engine's AVX2
  // blocks stay within the register file.
  __m256 total = _mm256_setzero_ps();
  for (long r = 0; r < passes; ++r) {
    for (long j = 0; j < blocks; ++j) {
      const float* pj = panel + j * K * 32;
      __m256 acc[3][4];
      for (int m = 0; m < 3; ++m)
        for (int v = 0; v < 4; ++v) acc[m][v] = _mm256_setzero_ps();
      for (long k = 0; k < K; ++k) {
        const float* wk = pj + k * 32;
        _mm_prefetch((const char*)(wk + 8 * 32), _MM_HINT_T0);
        _mm_prefetch((const char*)(wk + 8 * 32 + 16), _MM_HINT_T0);
        __m256 w[4];
        for (int v = 0; v < 4; ++v) w[v] = _mm256_loadu_ps(wk + 8 * v);
        for (int m = 0; m < 3; ++m) {
          const __m256 xm = _mm256_set1_ps(x[m * K + k]);
          for (int v = 0; v < 4; ++v) acc[m][v] = _mm256_fmadd_ps(xm, w[v], acc[m][v]);
        }
      }
      for (int m = 0; m < 3; ++m)
        for (int v = 0; v < 4; ++v) total = _mm256_add_ps(total, acc[m][v]);
    }
  }
  float out[8];
  _mm256_storeu_ps(out, total);
  float r = 0.f;
  for (float v : out) r += v;
  return r;
}
#endif

// Portable versions: plain loops over arrays the compiler vectorises with the baseline ISA
// (SSE2 on x86-64, NEON on aarch64). Only used when neither AVX2+FMA nor AVX-512 is there.
float fma_default(long iters) {
  float acc[kAcc * 4];
  for (int k = 0; k < kAcc * 4; ++k) acc[k] = 0.001f * (k + 1);
  for (long i = 0; i < iters; ++i)
    for (int k = 0; k < kAcc * 4; ++k) acc[k] = acc[k] * 0.999999f + 1e-7f;
  float r = 0.f;
  for (float v : acc) r += v;
  return r;
}

float read_default(const float* p, long n_floats, long passes) {
  float acc[32] = {0};
  for (long r = 0; r < passes; ++r)
    for (long i = 0; i < n_floats; i += 32)
      for (int k = 0; k < 32; ++k) acc[k] += p[i + k];
  float r = 0.f;
  for (float v : acc) r += v;
  return r;
}

bool has(const char* feature) {
#ifdef FLOOR_X86
  if (std::strcmp(feature, "avx512") == 0) return __builtin_cpu_supports("avx512f");
  if (std::strcmp(feature, "avx2") == 0)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return std::strcmp(feature, "default") == 0;
}

std::string resolve(const std::string& isa) {
  if (isa == "auto") return has("avx512") ? "avx512" : has("avx2") ? "avx2" : "default";
  if (!has(isa.c_str())) throw std::runtime_error("floor: this CPU lacks " + isa);
  return isa;
}

// Floats per vector register for the ISA: the FLOPs of one FMA instruction are 2x this.
int lanes(const std::string& isa) { return isa == "avx512" ? 16 : isa == "avx2" ? 8 : 1; }

@PINNING@

// Runs body(thread index) on `threads` pinned threads that start together; returns each
// thread's seconds from the common start to its own end.
template <class Setup, class Body>
std::vector<double> run_threads(int threads, Setup setup, Body body, bool* pinned) {
  std::vector<int> cpus = allowed_cpus();
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<double> seconds(threads, 0.0);
  std::vector<char> pin_ok(threads, 0);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      // A thread per CPU only when there are enough CPUs; otherwise the OS places them.
      int cpu = (int)cpus.size() >= threads ? cpus[t] : -1;
      pin_ok[t] = pin(cpu);
      setup(t);
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) {
      }
      auto t0 = Clock::now();
      body(t);
      seconds[t] = std::chrono::duration<double>(Clock::now() - t0).count();
    });
  }
  while (ready.load() < threads) std::this_thread::yield();
  go.store(true, std::memory_order_release);
  for (auto& th : pool) th.join();
  bool all = true;
  for (char ok : pin_ok) all = all && ok;
  if (pinned) *pinned = all;
  return seconds;
}

// Keeps the results alive so the loops are not removed; atomic because every thread
// writes it.
std::atomic<float> g_sink{0.f};

}  // namespace

// Returns [flops, seconds of thread 0, ..., pinned (1/0)].
std::vector<double> fma_run(int64_t iters, int64_t threads, const std::string& isa_in) {
  const std::string isa = resolve(isa_in);
  bool pinned = false;
  auto secs = run_threads((int)threads, [](int) {}, [&](int) {
    float r;
#ifdef FLOOR_X86
    if (isa == "avx512") r = fma_avx512(iters);
    else if (isa == "avx2") r = fma_avx2(iters);
    else
#endif
      r = fma_default(iters);
    g_sink.store(r, std::memory_order_relaxed);
  }, &pinned);
  const double per_iter = isa == "default" ? 2.0 * kAcc * 4 : 2.0 * kAcc * lanes(isa);
  std::vector<double> out{per_iter * (double)iters * (double)threads};
  out.insert(out.end(), secs.begin(), secs.end());
  out.push_back(pinned ? 1.0 : 0.0);
  return out;
}

// Each thread reads its own buffer of bytes_per_thread `passes` times (after one untimed
// pass that brings it into cache). Returns [bytes read, seconds per thread..., pinned].
std::vector<double> read_run(int64_t bytes_per_thread, int64_t passes, int64_t threads,
                             const std::string& isa_in) {
  const std::string isa = resolve(isa_in);
  const long chunk = 16 * kReadAcc;  // floats per unrolled iteration, for every ISA
  long n = (long)(bytes_per_thread / 4 / chunk) * chunk;
  if (n < chunk) n = chunk;
  std::vector<float*> bufs(threads, nullptr);
  auto read = [&](const float* p, long reps) {
#ifdef FLOOR_X86
    if (isa == "avx512") return read_avx512(p, n, reps);
    if (isa == "avx2") return read_avx2(p, n, reps);
#endif
    return read_default(p, n, reps);
  };
  bool pinned = false;
  auto secs = run_threads((int)threads, [&](int t) {
    // First touch by the reading thread, after pinning: local pages, warm caches.
    float* p = static_cast<float*>(std::aligned_alloc(64, (size_t)n * 4));
    for (long i = 0; i < n; ++i) p[i] = 1e-6f * (float)(i & 1023);
    g_sink.store(read(p, 1), std::memory_order_relaxed);
    bufs[t] = p;
  }, [&](int t) {
    g_sink.store(read(bufs[t], passes), std::memory_order_relaxed);
  }, &pinned);
  for (float* p : bufs) std::free(p);
  std::vector<double> out{(double)n * 4.0 * (double)passes * (double)threads};
  out.insert(out.end(), secs.begin(), secs.end());
  out.push_back(pinned ? 1.0 : 0.0);
  return out;
}

// Each thread streams its own panel of panel_bytes (K columns per block) `passes` times
// through the engine's register block (after one untimed pass that brings it into cache).
// Returns [flops, seconds per thread..., pinned]; flops 0 for the portable ISA (no such
// block there).
std::vector<double> kloop_run(int64_t panel_bytes, int64_t K, int64_t passes, int64_t threads,
                              const std::string& isa_in) {
  const std::string isa = resolve(isa_in);
  const long lanes_per_block = isa == "avx512" ? 64 : 32;
  const long blocks = std::max<long>(1, (long)(panel_bytes / 4 / (K * lanes_per_block)));
  const long rows = isa == "avx512" ? 4 : 3;
  std::vector<float*> panels(threads, nullptr), xs(threads, nullptr);
  auto run = [&](int t, long reps) {
#ifdef FLOOR_X86
    if (isa == "avx512") return kloop_avx512(panels[t], blocks, K, xs[t], reps);
    if (isa == "avx2") return kloop_avx2(panels[t], blocks, K, xs[t], reps);
#endif
    return 0.f;
  };
  bool pinned = false;
  auto secs = run_threads((int)threads, [&](int t) {
    const size_t n = (size_t)(blocks * K * lanes_per_block);
    float* p = static_cast<float*>(std::aligned_alloc(64, (n * 4 + 63) / 64 * 64));
    float* x = static_cast<float*>(std::aligned_alloc(64, ((size_t)(rows * K) * 4 + 63) / 64 * 64));
    for (size_t i = 0; i < n; ++i) p[i] = 1e-3f * (float)(i & 255);
    for (long i = 0; i < rows * K; ++i) x[i] = 1e-3f * (float)(i & 127);
    panels[t] = p;
    xs[t] = x;
    g_sink.store(run(t, 1), std::memory_order_relaxed);
  }, [&](int t) {
    g_sink.store(run(t, passes), std::memory_order_relaxed);
  }, &pinned);
  for (float* p : panels) std::free(p);
  for (float* x : xs) std::free(x);
  const double lanes = isa == "avx512" ? 64.0 : (isa == "avx2" ? 32.0 : 0.0);
  std::vector<double> out{2.0 * rows * lanes * (double)K * (double)blocks * (double)passes *
                          (double)threads};
  out.insert(out.end(), secs.begin(), secs.end());
  out.push_back(pinned ? 1.0 : 0.0);
  return out;
}

std::string best_isa() { return resolve("auto"); }
bool isa_supported(const std::string& isa) { return has(isa.c_str()); }
"""
_CPP = _CPP.replace("@PINNING@", PINNING_CPP)

_MODULE = None
TRIES = {True: 4, False: 15}  # per figure: quick / full (memory: 1 / 3)


def _build(verbose: bool = False):
    """Compile (once per process; cached on disk by torch between processes) the kernels."""
    global _MODULE
    if _MODULE is None:
        from torch.utils.cpp_extension import load_inline
        _MODULE = load_inline(
            name="fusedrnn_floor_v3",
            cpp_sources=_CPP,
            functions=["fma_run", "read_run", "kloop_run", "best_isa", "isa_supported"],
            # No -march: the SIMD functions select their own ISA by target attribute, so
            # one build (shared through the torch extensions cache) runs on any x86-64.
            extra_cflags=["-O3"],
            extra_ldflags=["-lpthread"],
            verbose=verbose,
        )
    return _MODULE


# ---------------------------------------------------------------------------------------
# Machine description
# ---------------------------------------------------------------------------------------

# /proc/cpuinfo flags worth naming in a report about SIMD kernels (the rest is noise here).
INTERESTING_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw",
                     "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
                     "amx_tile", "amx_bf16", "amx_int8")


def cache_sizes() -> dict:
    """{'L1d': bytes, 'L2': bytes, 'L3': bytes} of cpu0 from sysfs (missing levels left out)."""
    out = {}
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(base.glob("index*")) if base.exists() else []:
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if kind == "Instruction":
            continue
        mult = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(size[-1], 1)
        value = int(size.rstrip("KMG")) * mult
        out["L1d" if level == "1" else f"L{level}"] = value
    return out


def fusedrnn_capability() -> Optional[str]:
    """fusedrnn._C._cpu_capability() ('avx512', 'avx2', 'default'), None without fusedrnn."""
    root = str(REPO_ROOT)
    if root not in sys.path:
        sys.path.append(root)
    try:
        import fusedrnn._C as C
        return C._cpu_capability()
    except Exception:  # not built, or an older build without the function
        return None


def machine() -> dict:
    flags = cpu_flags()
    return {
        "cpu_model": cpu_model(),
        "cpus_allowed": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "flags": [f for f in INTERESTING_FLAGS if f in flags],
        "caches": cache_sizes(),
        "fusedrnn_capability": fusedrnn_capability(),
        "torch_version": torch.__version__,
    }


# ---------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------

def _fma(mod, isa: str, threads: int, seconds: float):
    """A closure running one try: (GFLOP/s, details)."""
    # Calibrate the iteration count on one short run so each try lasts about `seconds`.
    probe = 200_000
    res = mod.fma_run(probe, 1, isa)
    per_iter = max(res[1], 1e-9) / probe
    iters = max(probe, int(seconds / per_iter))

    def once():
        r = mod.fma_run(iters, threads, isa)
        secs = r[1:1 + threads]
        return r[0] / max(secs) / 1e9, {"pinned": bool(r[-1]),
                                         "per_thread_gflops": [r[0] / threads / s / 1e9
                                                               for s in secs]}
    return once


def _read(mod, isa: str, bytes_per_thread: int, threads: int, seconds: float):
    """A closure running one try: (GB/s, details)."""
    # One pass timed to size the run; large buffers get at least 2 passes.
    res = mod.read_run(bytes_per_thread, 1, 1, isa)
    per_pass = max(res[1], 1e-9)
    passes = max(2, int(seconds / per_pass))

    def once():
        r = mod.read_run(bytes_per_thread, passes, threads, isa)
        secs = r[1:1 + threads]
        return r[0] / max(secs) / 1e9, {"pinned": bool(r[-1]),
                                         "bytes_per_thread": bytes_per_thread,
                                         "per_thread_gbs": [r[0] / threads / s / 1e9
                                                            for s in secs]}
    return once


KLOOP_PANEL_BYTES = 640 << 10  # one thread's W_hh + W_ih slice of an H=256, I=64 LSTM
KLOOP_K = 320                  # its columns: R + I


def _kloop(mod, isa: str, threads: int, seconds: float):
    """A closure running one try of the engine-shaped k loop: (GFLOP/s, details)."""
    res = mod.kloop_run(KLOOP_PANEL_BYTES, KLOOP_K, 1, 1, isa)
    per_pass = max(res[1], 1e-9)
    passes = max(2, int(seconds / per_pass))

    def once():
        r = mod.kloop_run(KLOOP_PANEL_BYTES, KLOOP_K, passes, threads, isa)
        secs = r[1:1 + threads]
        return r[0] / max(secs) / 1e9, {"pinned": bool(r[-1]), "isa": isa,
                                         "panel_bytes": KLOOP_PANEL_BYTES, "K": KLOOP_K,
                                         "per_thread_gflops": [r[0] / threads / s / 1e9
                                                               for s in secs]}
    return once


def _sgemm(threads: int, n: int):
    """A closure running one try of torch.mm n x n at `threads`: (GFLOP/s, details)."""
    a, b = torch.randn(n, n), torch.randn(n, n)

    def once():
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            torch.mm(a, b)  # a thread-count change re-initialises pools and packing
            t0 = time.perf_counter()
            torch.mm(a, b)
            elapsed = time.perf_counter() - t0
        finally:
            torch.set_num_threads(old)
        return 2.0 * n ** 3 / elapsed / 1e9, {"n": n}
    return once


def l2_buffer_bytes(caches: dict) -> int:
    """Half the L2 (the other half is left for the code, stack and the neighbour's lines an
    inclusive L2 keeps), clamped to 256 KiB-1 MiB: the size of a thread's W_hh slice that
    the persistent engine wants to keep in L2."""
    l2 = caches.get("L2", 1 << 20)
    return int(min(max(l2 // 2, 256 << 10), 1 << 20))


def measure(quick: bool = False, threads=(1, 2), verbose: bool = False,
            isas=None) -> dict:
    """Measure this machine's ceilings; returns a JSON-able dict (see the module docstring).

    quick: about 1-2 s in all (after the first compile, which takes ~1 min and is cached by
    torch); otherwise about 10-20 s. threads: the thread counts to measure (thread counts
    above the CPUs in the affinity mask are left out). isas: the SIMD ISAs to measure the
    FMA peak with (default: the best the CPU has, and AVX2 as well on an AVX-512 CPU, since
    fusedrnn may run its AVX2 kernels there). Bandwidths use the best ISA.
    Raises whatever compilation raises (no compiler, no headers): callers decide.
    """
    mod = _build(verbose)
    info = machine()
    best = mod.best_isa()
    if isas is None:
        isas = [best] + (["avx2"] if best == "avx512" else [])
    allowed = info["cpus_allowed"] or 1
    threads = [t for t in threads if t <= allowed] or [1]
    # Many short tries rather than a few long ones: on a shared machine the best try is
    # the one where no other job ran, and with 2 threads that needs both CPUs free at
    # once, which short windows catch far more often.
    seconds = 0.02 if quick else 0.05
    tries = TRIES[quick]
    caches = info["caches"]
    l2_bytes = l2_buffer_bytes(caches)
    llc_bytes = 4 * caches.get("L2", 1 << 20)
    mem_total = 256 << 20
    out = {"machine": info, "isa": best, "quick": quick, "threads": threads,
           "fma": {}, "l1": {}, "l2": {}, "llc": {}, "mem": {}, "sgemm": {}, "kloop": {}}
    t_start = time.perf_counter()
    # (section, key, rate name, one-try closure, tries). The tries are taken round-robin
    # over all figures, so each figure's best is drawn from the whole run rather than from
    # one burst of a second during which another job may have held a CPU.
    figures = []
    for isa in isas:
        figures += [("fma", (isa, str(t)), "gflops", _fma(mod, isa, t, seconds), tries)
                    for t in threads]
    for t in threads:
        key = str(t)
        figures += [
            ("l1", (key,), "gbs", _read(mod, best, 16 << 10, t, seconds), tries),
            ("l2", (key,), "gbs", _read(mod, best, l2_bytes, t, seconds), tries),
            ("llc", (key,), "gbs", _read(mod, best, llc_bytes, t, seconds), tries),
            # The 256 MiB is split between the threads, so the total read is the same.
            ("mem", (key,), "gbs", _read(mod, best, mem_total // t, t, seconds * 2),
             1 if quick else 3),
            ("sgemm", (key,), "gflops", _sgemm(t, 1024 if quick else 2048),
             3 if quick else 5),
        ]
        if best != "default":  # the portable build has no register block to model
            figures.append(("kloop", (key,), "gflops", _kloop(mod, best, t, seconds), tries))
    for attempt in range(max(f[-1] for f in figures)):
        for section, keys, rate_name, once, n_tries in figures:
            if attempt >= n_tries:
                continue
            rate, details = once()
            dest = out[section]
            for k in keys[:-1]:
                dest = dest.setdefault(k, {})
            if keys[-1] not in dest or rate > dest[keys[-1]][rate_name]:
                dest[keys[-1]] = {rate_name: rate, **details}
    out["seconds"] = time.perf_counter() - t_start
    return out


def fma_peak(result: dict, threads: int, isa: Optional[str] = None) -> Optional[float]:
    """GFLOP/s at `threads` for `isa` (default: the one fusedrnn uses, else the best)."""
    fma = result.get("fma", {})
    isa = isa or result["machine"].get("fusedrnn_capability") or result.get("isa")
    entry = fma.get(isa) or fma.get(result.get("isa")) or {}
    return (entry.get(str(threads)) or {}).get("gflops")


def kloop_rate(result: dict, threads: int) -> Optional[float]:
    """GFLOP/s of the engine-shaped k loop at `threads` (None where not measured)."""
    return ((result.get("kloop") or {}).get(str(threads)) or {}).get("gflops")


def bandwidth(result: dict, level: str, threads: int) -> Optional[float]:
    """GB/s of `level` ('l1', 'l2', 'llc', 'mem') at `threads`."""
    return (result.get(level, {}).get(str(threads)) or {}).get("gbs")


def _kib(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n >> 10} KiB"


def table(result: dict) -> str:
    """A readable markdown table of measure()'s result."""
    m = result["machine"]
    threads = result["threads"]
    caches = ", ".join(f"{k} {_kib(v)}" for k, v in m["caches"].items())
    lines = [f"CPU: {m['cpu_model']} ({m['cpus_allowed']} CPUs allowed; {caches})",
             f"flags: {' '.join(m['flags']) or '-'}",
             f"fusedrnn._C._cpu_capability(): {m['fusedrnn_capability']}; floor ISA: "
             f"{result['isa']}; torch {m['torch_version']}",
             "",
             "| ceiling | " + " | ".join(f"{t} thread{'s' if t > 1 else ''}" for t in threads)
             + " |",
             "|---|" + "--:|" * len(threads)]
    for isa, per in result["fma"].items():
        lines.append(f"| FMA peak ({isa}), GFLOP/s | "
                     + " | ".join(f"{per[str(t)]['gflops']:.1f}" for t in threads) + " |")
    for level, label in (("l1", "L1 read"), ("l2", "L2 read"), ("llc", "L3/LLC read"),
                         ("mem", "memory read")):
        size = result[level][str(threads[0])]["bytes_per_thread"]
        lines.append(f"| {label} ({_kib(size)}/thread at 1 thread), GB/s | "
                     + " | ".join(f"{result[level][str(t)]['gbs']:.1f}" for t in threads)
                     + " |")
    kloop = result.get("kloop") or {}
    if kloop:
        first = kloop[str(threads[0])]
        lines.append(f"| engine k loop ({first['isa']}, panel {_kib(first['panel_bytes'])}/thread "
                     f"in L2), GFLOP/s | "
                     + " | ".join(f"{kloop[str(t)]['gflops']:.1f}" for t in threads) + " |")
    n = result["sgemm"][str(threads[0])]["n"]
    lines.append(f"| sgemm torch.mm {n}x{n}, GFLOP/s | "
                 + " | ".join(f"{result['sgemm'][str(t)]['gflops']:.1f}" for t in threads)
                 + " |")
    pinned = all(v.get("pinned") for per in result["fma"].values() for v in per.values())
    lines.append("")
    lines.append(f"best of {TRIES[result['quick']]} tries each (memory {1 if result['quick'] else 3}, "
                 f"sgemm {3 if result['quick'] else 5}); threads pinned: "
                 f"{'yes' if pinned else 'no'}; took {result['seconds']:.1f} s. On a shared "
                 "machine the 2-thread figures need both CPUs free at once: lower bounds.")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short runs (about 1-2 s)")
    p.add_argument("--json", action="store_true", help="print the JSON only")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--verbose", action="store_true", help="show the compiler's output")
    args = p.parse_args(argv)
    result = measure(quick=args.quick, threads=tuple(args.threads), verbose=args.verbose)
    if not args.json:
        print(table(result))
        print()
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
