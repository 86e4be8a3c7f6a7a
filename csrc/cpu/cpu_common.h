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

// a^T b for a [K, G], b [K, R]: the weight gradients, summed over all T*B rows.
//
// Note [Blocked weight gradients]
// One GEMM over K = T*B rows is the fastest way to form a weight gradient, but for K of a
// few hundred BLAS accumulated it in long float32 chains: at T=20, B=7 dW_hh came out with
// twice torch.nn's error (torch.nn sums per-step products). Summing GEMMs over blocks of at
// least 64 rows (at most 16 blocks) keeps the error at torch.nn's level for small K and
// costs nothing measurable for large K.
inline at::Tensor outer_sum(const at::Tensor& a, const at::Tensor& b) {
  const int64_t K = a.size(0);
  const int64_t block = std::max<int64_t>(64, (K + 15) / 16);
  at::Tensor out = at::mm(a.narrow(0, 0, std::min(block, K)).t(), b.narrow(0, 0, std::min(block, K)));
  for (int64_t k = block; k < K; k += block) {
    const int64_t n = std::min(block, K - k);
    out.addmm_(a.narrow(0, k, n).t(), b.narrow(0, k, n));
  }
  return out;
}

// dW_hh = sum_t dg_t^T h_{t-1} for gate gradients dg [T, B, G] and outputs y [T, B, R].
// The previous state is the previous output, except at a row's first processed step where it
// is h0. Outputs of rows that do not exist at a time are zero, so one shifted GEMM covers all
// later steps and a [B]-row GEMM the h0 term (rows at each row's own first step).
inline at::Tensor recurrent_weight_grad(const at::Tensor& dg, const at::Tensor& y,
                                        const std::optional<at::Tensor>& h0,
                                        const std::optional<at::Tensor>& lengths, bool reverse) {
  const int64_t T = dg.size(0), B = dg.size(1), G = dg.size(2), R = y.size(2);
  at::Tensor dw = at::zeros({G, R}, y.options());
  if (T > 1) {
    const at::Tensor dg_s = reverse ? dg.narrow(0, 0, T - 1) : dg.narrow(0, 1, T - 1);
    const at::Tensor y_s = reverse ? y.narrow(0, 1, T - 1) : y.narrow(0, 0, T - 1);
    dw = outer_sum(dg_s.reshape({(T - 1) * B, G}), y_s.reshape({(T - 1) * B, R}));
  }
  if (h0) {
    at::Tensor first;
    if (!reverse) {
      first = dg[0];
    } else if (!lengths) {
      first = dg[T - 1];
    } else {
      first = dg.index({*lengths - 1, at::arange(B, lengths->options())});
    }
    dw.add_(at::mm(first.t(), *h0));
  }
  return dw;
}

}  // namespace cpu
}  // namespace fusedrnn
