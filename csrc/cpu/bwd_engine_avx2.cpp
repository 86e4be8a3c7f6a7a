// AVX2 + FMA build of the CPU backward engine's kernels; see Note [CPU capability dispatch] in
// kernels_impl.h and Note [CPU backward engine] in bwd_engine.cpp.
#if defined(__x86_64__) || defined(_M_X64)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

#include <immintrin.h>

#include "bwd_engine_params.h"

#define FUSEDRNN_CPU_CAPABILITY avx2
#define FUSEDRNN_VEC_AVX2
#include "bwd_engine_impl.h"

namespace fusedrnn {
namespace cpu {
namespace avx2 {
void fill_bwd_engine(BwdEngineTable<float>* table) { bwd::Entry<bwd::Avx2Vec>::fill(table); }
}  // namespace avx2
}  // namespace cpu
}  // namespace fusedrnn

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif  // x86-64
