// Device helpers shared by the CUDA kernel files: conversions between the storage type T and
// the arithmetic type A (Note [Storage and arithmetic types] in cuda_params.h), the
// activations, the row bookkeeping of rnn_params.h, the clip of the recurrent gradient, a
// deterministic block reduction, and the launch shapes.
//
// Note [CUDA kernel layout]
// Every pointwise kernel works on a [M, cols] block of one time step: blockIdx.x is the batch
// row, so all row-level decisions (the row exists at t, its incoming gradient kind, its
// clip) are uniform in a block and branches on them never diverge; threads stride over the
// row's columns (consecutive threads read consecutive elements: coalesced). When a kernel
// needs a sum over the whole row (norm clip, gradient record) the row is ONE block
// (gridDim.y == 1) and the sum is a fixed-order block reduction, so results never depend on
// scheduling and no atomics are used; otherwise gridDim.y splits long rows into chunks.
//
// Only explicit conversion intrinsics are used (__half2float, __float2bfloat16_rn, ...):
// torch's extension build compiles with __CUDA_NO_HALF_CONVERSIONS__ and friends.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "cuda_params.h"

namespace fusedrnn {
namespace cuda {
namespace detail {

// ---------------------------------------------------------------------------------------
// Storage <-> arithmetic type.

__device__ __forceinline__ float load(const float* p) { return *p; }
__device__ __forceinline__ double load(const double* p) { return *p; }
__device__ __forceinline__ float load(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(double* p, double v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// ---------------------------------------------------------------------------------------
// Activations in the arithmetic type. Accurate library functions (setup.py builds without
// --use_fast_math): these kernels are bound by memory and latency, not by arithmetic, and
// the precision bar is 2x torch.nn's error.

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
__device__ __forceinline__ float tanh_(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_(double x) { return tanh(x); }
__device__ __forceinline__ float abs_(float x) { return fabsf(x); }
__device__ __forceinline__ double abs_(double x) { return fabs(x); }
__device__ __forceinline__ float sqrt_(float x) { return sqrtf(x); }
__device__ __forceinline__ double sqrt_(double x) { return sqrt(x); }

// NaN-preserving clamp, as torch.clamp and the CPU kernels (vec.h).
template <typename A>
__device__ __forceinline__ A clamp(A x, A lo, A hi) {
  return x < lo ? lo : (x > hi ? hi : x);
}

// ---------------------------------------------------------------------------------------
// Row bookkeeping: Note [Per-row step bookkeeping] in rnn_params.h.

#define FUSEDRNN_ROW_FN __device__ __forceinline__
#include "../kernel_common.h"
#undef FUSEDRNN_ROW_FN

__device__ __forceinline__ bool row_exists(const StepInfo& st, int64_t b) {
  return st.lengths == nullptr || st.t < st.lengths[b];
}

// ---------------------------------------------------------------------------------------
// Clip of the recurrent gradient.

// Norm mode: the factor that brings a row's L2 norm down to at most `clip` (1 if it is).
template <typename A>
__device__ __forceinline__ A norm_scale(A sumsq, A clip) {
  const A norm = sqrt_(sumsq);
  return norm > clip ? clip / norm : A(1);
}

template <ClipMode CM, typename A>
__device__ __forceinline__ A apply_clip(A g, A clip, A scale) {
  if constexpr (CM == ClipMode::Value) {
    return clamp(g, -clip, clip);
  } else if constexpr (CM == ClipMode::Norm) {
    return g * scale;
  } else {
    return g;
  }
}

// The incoming recurrent gradient of one element, by the row's kind: the final-state
// gradient, nothing, or the clipped recurrent gradient `rec`.
template <ClipMode CM, typename A>
__device__ __forceinline__ A incoming(int kind, A final_value, A rec, A clip, A scale) {
  if (kind == kFromFinal) return final_value;
  if (kind == kCut) return A(0);
  return apply_clip<CM>(rec, clip, scale);
}

// Value mode's record counts the elements the clamp changes: |v| > clip, NaN included
// (as the CPU kernels count them).
template <typename A>
__device__ __forceinline__ A changed_by_value_clip(A v, A clip) {
  return abs_(v) <= clip ? A(0) : A(1);
}

// ---------------------------------------------------------------------------------------
// Deterministic block reduction: sums N values over the block and hands every thread the
// result. Warp tree by shuffles, then every thread adds the warp partials in warp order: the
// summation order depends on blockDim only, never on timing. blockDim.x must be a multiple
// of 32 (at most 1024); every thread of the block must call it.

constexpr int kMaxWarps = 32;

template <int N, typename A>
__device__ __forceinline__ void block_sum(A (&v)[N]) {
  __shared__ A partial[kMaxWarps][N];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
#pragma unroll
  for (int k = 0; k < N; ++k) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      v[k] += __shfl_down_sync(0xffffffffu, v[k], offset);
    }
  }
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < N; ++k) partial[warp][k] = v[k];
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < N; ++k) {
    A s = A(0);
    for (int w = 0; w < warps; ++w) s += partial[w][k];
    v[k] = s;
  }
  __syncthreads();  // `partial` may be written again by a later call
}

// The record of one row: Note [Recording recurrent gradient norms] in rnn_params.h.
// sums = {sum of squares, elements changed by the value clip}; n = row width.
template <ClipMode CM, typename A>
__device__ __forceinline__ void write_record(A* rec, A sumsq, A changed, int64_t n, A clip) {
  A share = A(0);
  if constexpr (CM == ClipMode::Value) share = changed / static_cast<A>(n);
  if constexpr (CM == ClipMode::Norm) share = norm_scale(sumsq, clip) < A(1) ? A(1) : A(0);
  rec[0] = sumsq;
  rec[1] = share;
  rec[2] = A(1);
}

template <typename A>
__device__ __forceinline__ void write_no_record(A* rec) {
  rec[0] = rec[1] = rec[2] = A(0);
}

}  // namespace detail

// ---------------------------------------------------------------------------------------
// Launch shapes (host side), Note [CUDA kernel layout].

// Threads per block: 256 for plain pointwise kernels; 512 when one block covers a whole row,
// so rows up to 512 wide need a single pass.
constexpr int kThreads = 256;
constexpr int kRowThreads = 512;

// Enqueues kernel(p) over `rows` rows of `cols` columns on `stream`: one block per row
// (whole_row, for kernels that reduce over the row) or rows split into column chunks.
// Nothing is launched for zero rows (an empty batch is valid input, as in torch.nn).
template <typename P>
cudaError_t launch_rows(void (*kernel)(P), int64_t rows, int64_t cols, bool whole_row,
                        cudaStream_t stream, const P& p) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  if (rows < 0 || rows > 0x7fffffff || cols < 0) return cudaErrorInvalidConfiguration;
  const int64_t max_threads = whole_row ? kRowThreads : kThreads;
  int64_t threads = (cols + 31) / 32 * 32;  // a multiple of 32: block_sum relies on it
  if (threads > max_threads) threads = max_threads;
  int64_t chunks = whole_row ? 1 : (cols + threads - 1) / threads;
  if (chunks > 65535) chunks = 65535;  // the column loops stride over the rest
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(chunks));
  const dim3 block(static_cast<unsigned>(threads));
#ifdef FUSEDRNN_CUDA_EMU
  // tools/cuda_emu's host build (Note [Emulated launch] in tools/cuda_emu/cuda_emul.h): the
  // block's threads run on the host. Every kernel launch of fusedrnn goes through here.
  ::emu::launch(grid, block, [&] { kernel(p); });
#else
  kernel<<<grid, block, 0, stream>>>(p);
#endif
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace fusedrnn

// The column loop of Note [CUDA kernel layout]: j over this block's columns of a row.
#define FUSEDRNN_COLUMNS(j, cols)                                                    \
  for (int64_t j = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;     \
       j < (cols); j += static_cast<int64_t>(gridDim.y) * blockDim.x)
