// Step records of the recurrent gradient (Note [Recording recurrent gradient norms] in
// rnn_params.h) reduced to what the ops return. ATen only, so the CPU and CUDA glue share it.
#pragma once

#include <cmath>
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
  if (rec.device().is_cpu() && rec.is_contiguous()) {
    // The same sums as below in one loop: the dozen ATen calls below cost ~40 us a call
    // (timed from Python at T=128 B=8), against a small training step of a few ms.
    at::Tensor out = at::empty({2, s.T}, rec.options().dtype(at::kFloat));
    float* o = out.data_ptr<float>();
    AT_DISPATCH_FLOATING_TYPES(rec.scalar_type(), "fusedrnn.finish_grad_record", [&] {
      const scalar_t* r = rec.const_data_ptr<scalar_t>();
      for (int64_t t = 0; t < s.T; ++t) {
        const int64_t first = s.packed ? s.offset[t] : t * s.B;
        const int64_t n = s.packed ? s.rows[t] : s.B;
        double sq = 0, clipped = 0, counted = 0;
        for (int64_t b = 0; b < n; ++b) {
          const scalar_t* row = r + (first + b) * 3;
          sq += static_cast<double>(row[0]);
          clipped += static_cast<double>(row[1]);
          counted += static_cast<double>(row[2]);
        }
        o[t] = static_cast<float>(std::sqrt(sq));
        o[s.T + t] = counted > 0 ? static_cast<float>(clipped / counted) : 0.0f;
      }
    });
    return out;
  }
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
