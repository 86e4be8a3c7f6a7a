// Helpers of the CPU drivers (lstm_cpu.cpp, gru_cpu.cpp): row-major GEMM on raw pointers
// through torch's BLAS, and the row-parallel loop of the pointwise kernels.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ops/addmm_cpu_dispatch.h>
#include <ATen/ops/mm_cpu_dispatch.h>

#include "../rnn_params.h"

namespace fusedrnn {
namespace cpu {

// Row-major C[M, N] = op(A) op(B) + beta * C with beta 0 or 1, op(A) [M, K], op(B) [K, N];
// `ta` / `tb` say that A is stored as [K, M] / B as [N, K]. With beta == 0, C is not read.
//
// Note [GEMM in the time loop]
// The per-step recurrent GEMMs wrap raw pointers in non-owning tensors and call the CPU
// kernels of mm / addmm directly (at::cpu::*), skipping the dispatcher: a time loop makes 2T
// such calls. Those kernels run torch's BLAS (MKL, OpenBLAS, ...). at::native::cpublas::gemm
// would be lighter still, but its float/double overloads are not exported by libtorch.
template <typename T>
inline void gemm_rm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
                    const T* B, int64_t ldb, int beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto view = [&](const T* p, int64_t rows, int64_t cols, int64_t ld) {
    return at::from_blob(const_cast<T*>(p), {rows, cols}, {ld, 1}, opts);
  };
  const at::Tensor a = ta ? view(A, K, M, lda).t() : view(A, M, K, lda);
  const at::Tensor b = tb ? view(B, N, K, ldb).t() : view(B, K, N, ldb);
  at::Tensor c = view(C, M, N, ldc);
  if (beta == 0) {
    at::cpu::mm_out(c, a, b);
  } else {
    at::cpu::addmm_(c, a, b);
  }
}

// Runs f(b_begin, b_end) over the batch rows, in parallel once there is enough work per
// thread (`row_work` elements per row) to pay for waking the thread pool.
template <class F>
inline void parallel_rows(int64_t B, int64_t row_work, const F& f) {
  constexpr int64_t kGrainElements = 8192;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, row_work));
  at::parallel_for(0, B, grain, f);
}

// The time processed just before `t`, in processing order (may be out of [0, T)).
inline int64_t previous_time(int64_t t, bool reverse) { return reverse ? t + 1 : t - 1; }

// Rows of m ([T, B, N]) at each row's first processed step (s == 0), as [B, N].
inline at::Tensor first_step_rows(const at::Tensor& m, const std::optional<at::Tensor>& lengths,
                                  bool reverse) {
  if (!reverse) return m[0];
  if (!lengths) return m[m.size(0) - 1];
  const at::Tensor t0 = *lengths - 1;
  const at::Tensor b = at::arange(m.size(1), lengths->options());
  return m.index({t0, b});
}

}  // namespace cpu
}  // namespace fusedrnn
