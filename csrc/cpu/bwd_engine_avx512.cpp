// AVX-512 build of the CPU backward engine's kernels; see Note [CPU capability dispatch] in
// kernels_impl.h and Note [CPU backward engine] in bwd_engine.cpp.
#if defined(__x86_64__) || defined(_M_X64)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma")
#endif

#include <immintrin.h>

#include "bwd_engine_params.h"

#define FUSEDRNN_CPU_CAPABILITY avx512
#define FUSEDRNN_VEC_AVX512
#include "bwd_engine_impl.h"

namespace fusedrnn {
namespace cpu {
namespace avx512 {
void fill_bwd_engine(BwdEngineTable<float>* table) { bwd::Entry<bwd::Avx512Vec>::fill(table); }
}  // namespace avx512
}  // namespace cpu
}  // namespace fusedrnn

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif  // x86-64
