// Step records of the recurrent gradient (Note [Recording recurrent gradient norms] in
// rnn_params.h) reduced to what the ops return. ATen only, so the CPU and CUDA glue share it.
#pragma once

#include <vector>

#include <ATen/ATen.h>

#include "checks.h"

namespace fusedrnn {

// rec: [N, 3] per-row records of one layer's backward (padded: N = T*B, row t*B+b; packed:
// the rows of step t are offset[t] .. offset[t]+rows[t]-1). Returns [2, T] float32 on rec's
// device: row 0 the L2 norm of dh_rec_t over batch and hidden units, row 1 the fraction the
// clip changed. Sums run over rows in a fixed order in float64, so the result is
// deterministic.
inline at::Tensor finish_grad_record(const at::Tensor& rec, const LayerSizes& s) {
  at::Tensor rows = rec.to(at::kDouble);
  if (s.packed) {
    // Gather into the padded [T * B, 3] layout; missing rows read an appended zero row.
    std::vector<int64_t> src(static_cast<size_t>(s.T * s.B), s.N);
    for (int64_t t = 0; t < s.T; ++t) {
      for (int64_t b = 0; b < s.rows[t]; ++b) src[t * s.B + b] = s.offset[t] + b;
    }
    const at::Tensor index =
        at::tensor(src, at::TensorOptions().dtype(at::kLong)).to(rec.device());
    rows = at::cat({rows, at::zeros({1, 3}, rows.options())}).index_select(0, index);
  }
  const at::Tensor per_step = rows.view({s.T, s.B, 3}).sum(1);  // [T, 3]
  const at::Tensor norms = per_step.select(1, 0).sqrt();
  const at::Tensor counted = per_step.select(1, 2);
  const at::Tensor fraction =
      at::where(counted > 0, per_step.select(1, 1) / counted.clamp_min(1), at::zeros_like(counted));
  return at::stack({norms, fraction}).to(at::kFloat);
}

// The empty [N, 3] record buffer of one layer's backward, or an undefined tensor when off.
inline at::Tensor new_grad_record(const LayerSizes& s, const at::TensorOptions& opts, bool on) {
  return on ? at::empty({s.N, 3}, opts) : at::Tensor();
}

}  // namespace fusedrnn
