// AVX2 + FMA build of the forward engine's micro-kernels; see Note [CPU capability dispatch]
// (kernels_impl.h) and Note [CPU time-loop engine] (engine_fwd.cpp).
#if defined(__x86_64__) || defined(_M_X64)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

#include <immintrin.h>

#include "engine_fwd.h"

#define FUSEDRNN_CPU_CAPABILITY avx2
#define FUSEDRNN_VEC_AVX2
#define FUSEDRNN_ENGINE_VEC Avx2Vec
#define FUSEDRNN_ENGINE_REGS 16
#include "engine_fwd_impl.h"

namespace fusedrnn {
namespace cpu {
namespace avx2 {
void fill_engine_fwd(EngineFwdKernels* table) { fwd_engine::fill(table); }
}  // namespace avx2
}  // namespace cpu
}  // namespace fusedrnn

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif  // x86-64
