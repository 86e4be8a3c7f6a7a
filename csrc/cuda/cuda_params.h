// Plain parameter structs of the CUDA kernels (csrc/cuda/*.cu) and the glue that fills them
// (csrc/cuda_glue/). Like rnn_params.h, nothing here knows torch: raw device pointers, sizes
// and flags, so that nvcc alone compiles the kernels and g++ the glue.
//
// All matrices are row-major and contiguous; the shape of each buffer is written next to it
// with the shape letters T steps, B batch, I input, H hidden, R recurrent state width (P with
// projection, else H), M rows of the current step (B padded, batch_sizes[t] packed). A
// pointer to "[M, ...]" points at the first row of the step's block; "[B, ...]" buffers are
// whole-batch running state indexed by the batch row.
//
// Note [Storage and arithmetic types]
// T is the storage type of the layer (float, double, __half, __nv_bfloat16) and A =
// opmath_t<T> the type the kernels compute in (float for the half types, else T). Tensors
// the caller sees or that feed a GEMM with the weights (outputs, saved activations, gate
// gradients) are T. Buffers that only the kernels read back are A: the GEMM results of the
// input projection and of each step (cuBLAS writes them in float32 from half operands, so
// they are rounded once, not twice), the running cell state, and the recurrent gradient
// buffers dh_gemm / dh_carry / dc_rec (Note [Recurrent gradient buffers] in rnn_params.h),
// so a long backward recurrence does not round to 8 bits of mantissa at every step. For
// float and double A == T and everything is as on the CPU.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../rnn_params.h"

namespace fusedrnn {
namespace cuda {

template <typename T>
struct OpMath {
  using type = T;
};
template <>
struct OpMath<__half> {
  using type = float;
};
template <>
struct OpMath<__nv_bfloat16> {
  using type = float;
};
template <typename T>
using opmath_t = typename OpMath<T>::type;

// The structs below use rnn_params.h's StepInfo (where the step sits for each row) and
// GradOptions<A> (clip mode, clip and truncation of the recurrent gradient), as the CPU
// kernels do; the CUDA kernels take the clip mode as a template argument and decide the
// truncation at run time (row_step<true>, csrc/kernel_common.h).

// Projection only: h_state[b] = y_t[b] for the rows that exist at t.
template <typename T>
struct CopyRowsArgs {
  int64_t M, R;
  StepInfo step;
  const T* src;  // [M, R] y_t = h_t W_hr^T
  T* dst;        // [B, R] running (projected) hidden state
};

// The step structs are rnn_params.h's, with the arithmetic type A = opmath_t<T>.
template <typename T>
using LstmFwdArgs = LstmFwdStep<T, opmath_t<T>>;
template <typename T>
using GruFwdArgs = GruFwdStep<T, opmath_t<T>>;
template <typename T>
using LstmBwdArgs = LstmBwdStep<T, opmath_t<T>>;
template <typename T>
using ProjBwdArgs = ProjBwdStep<T, opmath_t<T>>;
template <typename T>
using GruBwdArgs = GruBwdStep<T, opmath_t<T>>;

// The gradient into the initial state: out[b] = clip(a[b] + add[b]) for every batch row
// (the initial state is handed over to step 0 like any other state, docs/design.md §3).
template <typename T>
struct StateGradArgs {
  using A = opmath_t<T>;
  int64_t B, N;
  GradOptions<A> opt;  // clip mode and clip (truncate unused)
  const A* a;    // [B, N]
  const A* add;  // [B, N] or nullptr
  T* out;        // [B, N]
};

}  // namespace cuda
}  // namespace fusedrnn
