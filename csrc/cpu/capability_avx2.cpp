// AVX2 + FMA build of the CPU kernels: the per-step pointwise kernels (kernels_impl.h), the
// forward engine's micro-kernels (engine_fwd_impl.h) and the backward engine's kernels
// (bwd_engine_impl.h), all compiled for one capability in one translation unit; see
// Note [CPU capability dispatch] in kernels_impl.h.
#if defined(__x86_64__) || defined(_M_X64)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

#include <immintrin.h>

#include "kernel_tables.h"

#define FUSEDRNN_CPU_CAPABILITY avx2
#define FUSEDRNN_VEC_AVX2
#define FUSEDRNN_ENGINE_VEC Avx2Vec
#define FUSEDRNN_ENGINE_REGS 16
#include "capability_impl.h"

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif  // x86-64
