// Plain-loop matrix products for tiny layer calls (cpu_common.h uses them).
//
// Note [Direct products for small calls]
// A layer call at T = 1 with a few units (I = H = 8: the fixed cost of issue 11, LSTMCell /
// GRUCell loops on small models) does a few hundred multiply-adds per product, and each
// ATen product or reduction around the time loop (the input projection, the step GEMM, dx,
// dW_ih, dW_hh, db, the bias sum) costs about 1 us of dispatch, allocation, views and BLAS
// setup: ten of them are a visible share of the whole call. Below kDirectMacs multiply-adds
// the drivers compute them with the loops here instead, into tensors they allocate once.
// The loops are single-threaded, and every output is one chain from zero, summed in
// ascending order (k for a product, rows for a sum over rows), so results do not depend on
// the number of threads. Sums over rows are direct only up to kDirectRows rows: the length
// of the float32 chains that Note [Blocked weight gradients] allows.
#pragma once

#include <cstdint>

namespace fusedrnn {
namespace cpu {

constexpr int64_t kDirectMacs = 4096;
constexpr int64_t kDirectRows = 64;
// A column sum (a bias gradient) adds each element once: up to this many elements (and
// kDirectRows rows) its plain loop costs less than at::sum's reduction set-up.
constexpr int64_t kDirectSumElements = 16 << 10;

inline bool direct_product(int64_t macs) { return macs <= kDirectMacs; }
inline bool direct_row_sum(int64_t rows, int64_t macs) {
  return rows <= kDirectRows && macs <= kDirectMacs;
}
inline bool direct_column_sum_applies(int64_t rows, int64_t cols) {
  return rows <= kDirectRows && rows * cols <= kDirectSumElements;
}

// out[m, n] = sum_k a[m, k] w[n, k] (+ bias[n] after the sum), m < M, n < N; a row-major
// with leading dimension lda, w element (n, k) at w[n * wn + k * wk], out rows ldo apart.
// The loop order follows the contiguous dimension of w; the sums are the same either way.
template <typename T>
void direct_linear(const T* a, int64_t lda, const T* w, int64_t wn, int64_t wk, const T* bias,
                   int64_t M, int64_t N, int64_t K, T* out, int64_t ldo) {
  for (int64_t m = 0; m < M; ++m) {
    const T* am = a + m * lda;
    T* om = out + m * ldo;
    if (wk == 1) {
      for (int64_t n = 0; n < N; ++n) {
        const T* wr = w + n * wn;
        T acc = T(0);
        for (int64_t k = 0; k < K; ++k) acc += am[k] * wr[k];
        om[n] = acc;
      }
    } else {
      for (int64_t n = 0; n < N; ++n) om[n] = T(0);
      for (int64_t k = 0; k < K; ++k) {
        const T av = am[k];
        const T* wc = w + k * wk;
        for (int64_t n = 0; n < N; ++n) om[n] += av * wc[n * wn];
      }
    }
    if (bias) {
      for (int64_t n = 0; n < N; ++n) om[n] += bias[n];
    }
  }
}

// out[g, r] (+)= sum_n a[n, g] b[n, r] over rows n < rows (ascending): a weight gradient.
// a and b row-major with leading dimensions lda, ldb; out [G, R] contiguous.
template <typename T>
void direct_outer_sum(const T* a, int64_t lda, const T* b, int64_t ldb, int64_t rows, int64_t G,
                      int64_t R, T* out, bool accumulate) {
  if (!accumulate) {
    for (int64_t i = 0; i < G * R; ++i) out[i] = T(0);
  }
  for (int64_t n = 0; n < rows; ++n) {
    const T* an = a + n * lda;
    const T* bn = b + n * ldb;
    for (int64_t g = 0; g < G; ++g) {
      const T av = an[g];
      T* og = out + g * R;
      for (int64_t r = 0; r < R; ++r) og[r] += av * bn[r];
    }
  }
}

// out[g] = sum_n a[n, g] over rows n < rows (ascending): a bias gradient.
template <typename T>
void direct_column_sum(const T* a, int64_t lda, int64_t rows, int64_t G, T* out) {
  for (int64_t g = 0; g < G; ++g) out[g] = T(0);
  for (int64_t n = 0; n < rows; ++n) {
    const T* an = a + n * lda;
    for (int64_t g = 0; g < G; ++g) out[g] += an[g];
  }
}

}  // namespace cpu
}  // namespace fusedrnn
