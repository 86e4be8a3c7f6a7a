// Helpers of the CUDA drivers that are not per-step: index copies and the weight gradients.
#include "cuda_common.h"

#include <algorithm>

namespace fusedrnn {
namespace cuda {

at::Tensor device_index(const std::vector<int64_t>& index, const at::Tensor& like) {
  const at::Tensor host = at::tensor(index, at::TensorOptions().dtype(at::kLong));
  return host.to(like.options().dtype(at::kLong), /*non_blocking=*/true);
}

// Note [Weight gradients on CUDA]
// A weight gradient sums K = N products (every token of the layer). Half types: one GEMM
// with float32 output (cuBLAS accumulates in float32); the glue casts the result to the
// dtype at the very end, so the weight gradients accumulate in float32 throughout.
// float32: one long GEMM accumulates each entry in a single float32 chain of K terms, the
// error Note [Blocked weight gradients] (csrc/cpu/cpu_common.h) measured at twice torch.nn's
// on the CPU. As there, K is cut into at most 16 blocks of at least 64 rows, but the blocks
// are one batched GEMM ([nb, G, X], every block in parallel, so the GPU stays as busy as
// with one GEMM) followed by a fixed-order sum over the blocks (an ATen reduction, no
// atomics); the remainder rows of an uneven split go into one addmm. The [nb, G, X] partial
// sums are capped at 2^26 elements (256 MiB): huge layers get fewer blocks. float64: one GEMM.
at::Tensor weight_grad(const at::Tensor& a, const at::Tensor& b) {
  const at::ScalarType dtype = a.scalar_type();
  if (dtype != at::kFloat) return mm_acc(a.t(), b);
  const int64_t K = a.size(0), G = a.size(1), X = b.size(1);
  constexpr int64_t kMaxPartial = int64_t(1) << 26;
  const int64_t blocks =
      std::min<int64_t>({16, K / 64, kMaxPartial / std::max<int64_t>(1, G * X)});
  if (blocks <= 1) return at::mm(a.t(), b);
  const int64_t rows = K / blocks, covered = blocks * rows;
  const at::Tensor a3 = a.narrow(0, 0, covered).reshape({blocks, rows, G}).transpose(1, 2);
  const at::Tensor b3 = b.narrow(0, 0, covered).reshape({blocks, rows, X});
  at::Tensor out = at::bmm(a3, b3).sum(0);  // [G, X]
  if (covered < K) {
    out.addmm_(a.narrow(0, covered, K - covered).t(), b.narrow(0, covered, K - covered));
  }
  return out;
}

namespace {

// The state entering each step, row by row, in the packed layout of y ([N, R]): the previous
// step's output, or h0 (zeros without it) at each row's first processed step. Gathered with
// one index_select from cat(y, h0); the index is built on the host from batch_sizes.
at::Tensor previous_states(const LayerSizes& s, const at::Tensor& y, const OptTensor& h0,
                           bool reverse) {
  std::vector<int64_t> index(static_cast<size_t>(s.N));
  for (int64_t t = 0; t < s.T; ++t) {
    const int64_t tp = previous_time(t, reverse);
    // Rows that also exist at tp (a prefix: the longest sequences come first) continue from
    // there; the others start at t, from h0.
    const int64_t cont = (tp >= 0 && tp < s.T) ? std::min(s.rows[t], s.rows[tp]) : 0;
    for (int64_t b = 0; b < s.rows[t]; ++b) {
      index[s.offset[t] + b] = b < cont ? s.offset[tp] + b : s.N + b;
    }
  }
  const at::Tensor init = h0 ? h0->contiguous() : at::zeros({s.B, s.R}, y.options());
  return at::cat({y, init}).index_select(0, device_index(index, y));
}

}  // namespace

at::Tensor recurrent_weight_grad(const LayerSizes& s, const at::Tensor& dg, const at::Tensor& y,
                                 const OptTensor& h0, bool reverse) {
  if (s.packed) return weight_grad(dg, previous_states(s, y, h0, reverse));
  // Padded: outputs of rows that do not exist at a time are zero and so are their gate
  // gradients, so one shifted GEMM covers every step after a row's first, and the h0 term
  // takes the gate gradients of each row's first processed step.
  const int64_t T = s.T, B = s.B, G = dg.size(1), R = y.size(1);
  at::Tensor dw;
  if (T > 1) {
    const int64_t n = (T - 1) * B;
    dw = reverse ? weight_grad(dg.narrow(0, 0, n), y.narrow(0, B, n))
                 : weight_grad(dg.narrow(0, B, n), y.narrow(0, 0, n));
  } else {
    dw = at::zeros({G, R}, y.options().dtype(acc_type(y.scalar_type())));
  }
  if (h0) {
    at::Tensor first;
    if (!reverse) {
      first = dg.narrow(0, 0, B);
    } else if (!s.lengths) {
      first = dg.narrow(0, (T - 1) * B, B);
    } else {
      // Reverse with lengths: row b starts at t = lengths[b] - 1.
      const int64_t* len = s.lengths->data_ptr<int64_t>();
      std::vector<int64_t> index(static_cast<size_t>(B));
      for (int64_t b = 0; b < B; ++b) index[b] = (len[b] - 1) * B + b;
      first = dg.index_select(0, device_index(index, dg));
    }
    dw.add_(mm_acc(first.t(), h0->contiguous()));
  }
  return dw;
}

}  // namespace cuda
}  // namespace fusedrnn
