// Input checks shared by every entry point, written once. Messages name the op, the
// argument, what was expected and what was received, e.g.
//   fusedrnn.lstm_layer: h0 must have shape (B, R) = (32, 256), got (32, 128)
// Wrong values and shapes raise ValueError, a non-floating or unsupported input dtype
// TypeError, dtypes or devices that disagree between arguments RuntimeError (as torch does).
#pragma once

#include <cmath>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/ATen.h>

#include "rnn_params.h"

namespace fusedrnn {

// True only in tools/cuda_emu's host build (FUSEDRNN_CUDA_EMU), where CPU tensors stand in
// for CUDA ones and go through the CUDA kernels: the CUDA dtype rules apply to them.
#ifdef FUSEDRNN_CUDA_EMU
constexpr bool kCpuRunsCudaKernels = true;
#else
constexpr bool kCpuRunsCudaKernels = false;
#endif

using OptTensor = std::optional<at::Tensor>;

// Sizes and time layout of a layer's input.
//
// Note [Padded and packed layouts]
// Padded: input [T, B, I], step t is rows t*B .. t*B+B-1 of the [T*B, *] matrices, optional
// per-row lengths in any order (rows that do not exist at t are visited and skipped).
// Packed: input [N, I] in torch.nn.utils.rnn.PackedSequence layout with batch_sizes [T]
// (non-increasing): step t is batch_sizes[t] rows, the longest sequences first. Every visited
// row exists, so GEMMs and pointwise passes cost real tokens only; per-row lengths are derived
// from batch_sizes for the processed-step bookkeeping (rnn_params.h).
struct LayerSizes {
  int64_t T, B, I, H, R;              // R: recurrent state width (P with projection, else H)
  int64_t N;                          // rows of input and output: T*B, or sum(batch_sizes)
  bool packed;
  std::vector<int64_t> offset;        // [T] first row of step t
  std::vector<int64_t> rows;          // [T] rows of step t
  std::optional<at::Tensor> lengths;  // [B] int64 per-row lengths (given, or from batch_sizes)

  // The drivers (CPU and CUDA) write per-step tensors as [N, width] rows, step after step;
  // a padded call returns them as [T, B, width] views, a packed one as they are. A 1-D
  // placeholder or an undefined tensor (a saved tensor the call did not save) is returned
  // unchanged.
  at::Tensor step_major(const at::Tensor& rows) const {
    return packed || !rows.defined() || rows.dim() != 2 ? rows : rows.view({T, B, rows.size(1)});
  }
  // The shape of a per-step tensor of `width` columns as the op returns it: [T, B, width]
  // padded, [N, width] packed (what step_major gives, allocated so without a view op).
  std::vector<int64_t> step_shape(int64_t width) const {
    return packed ? std::vector<int64_t>{N, width} : std::vector<int64_t>{T, B, width};
  }
};

inline std::string shape_str(at::IntArrayRef s) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  if (s.size() == 1) os << ",";
  os << ")";
  return os.str();
}

// `letters` names the dimensions, e.g. "(B, H)".
inline void check_shape(const char* op, const char* name, const at::Tensor& t,
                        std::vector<int64_t> expected, const char* letters) {
  TORCH_CHECK_VALUE(t.sizes().vec() == expected, op, ": ", name, " must have shape ", letters,
                    " = ", shape_str(expected), ", got ", shape_str(t.sizes()));
}

inline void check_like_input(const char* op, const char* name, const at::Tensor& t,
                             const at::Tensor& input) {
  // RuntimeError, like torch's own ops (and torch.nn) for mismatched dtypes.
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), op, ": ", name,
                   " must have the same dtype as input (", input.scalar_type(), "), got ",
                   t.scalar_type());
  TORCH_CHECK(t.device() == input.device(), op, ": ", name,
              " must be on the same device as input (", input.device(), "), got ", t.device());
}

inline void check_input(const char* op, const at::Tensor& x, bool packed) {
  if (packed) {
    TORCH_CHECK_VALUE(x.dim() == 2, op, ": with batch_sizes, input must be 2-D packed data (N, I), got ",
                      x.dim(), "-D with shape ", shape_str(x.sizes()));
  } else {
    TORCH_CHECK_VALUE(x.dim() == 3, op, ": input must be 3-D (T, B, I), got ", x.dim(),
                      "-D with shape ", shape_str(x.sizes()));
  }
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), op,
                   ": input must be a floating-point tensor, got ", x.scalar_type());
  if (x.device().is_cpu() && !kCpuRunsCudaKernels) {
    TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
                     ": on CPU input must be float32 or float64, got ", x.scalar_type());
  } else if (x.is_cuda() || kCpuRunsCudaKernels) {
    // The CUDA kernels exist for these four (docs/design.md §4); float8 types are floating too.
    const at::ScalarType t = x.scalar_type();
    TORCH_CHECK_TYPE(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16,
                     op, ": on CUDA input must be float32, float64, float16 or bfloat16, got ", t);
  }
  if (!packed) {
    TORCH_CHECK_VALUE(x.size(0) >= 1, op, ": input must have at least one time step, got T = 0 (shape ",
                      shape_str(x.sizes()), ")");
  }
}

// Packed layout from batch_sizes (see Note [Padded and packed layouts]).
inline void packed_layout(const char* op, const at::Tensor& batch_sizes, int64_t N, LayerSizes& s) {
  TORCH_CHECK_TYPE(batch_sizes.scalar_type() == at::kLong, op,
                   ": batch_sizes must be an int64 tensor, got ", batch_sizes.scalar_type());
  TORCH_CHECK(batch_sizes.device().is_cpu(), op, ": batch_sizes must be a CPU tensor, got ",
              batch_sizes.device());
  TORCH_CHECK_VALUE(batch_sizes.dim() == 1 && batch_sizes.size(0) >= 1, op,
                    ": batch_sizes must be 1-D with at least one step, got shape ",
                    shape_str(batch_sizes.sizes()));
  const at::Tensor bs = batch_sizes.contiguous();
  const int64_t* p = bs.data_ptr<int64_t>();
  s.T = bs.size(0);
  s.B = p[0];
  int64_t total = 0;
  for (int64_t t = 0; t < s.T; ++t) {
    TORCH_CHECK_VALUE(p[t] >= 1 && p[t] <= (t ? p[t - 1] : p[0]), op,
                      ": batch_sizes must be positive and non-increasing, got batch_sizes[", t,
                      "] = ", p[t], (t ? " after " : ""), (t ? std::to_string(p[t - 1]) : ""));
    s.offset.push_back(total);
    s.rows.push_back(p[t]);
    total += p[t];
  }
  TORCH_CHECK_VALUE(total == N, op, ": batch_sizes must sum to the rows of input (", N,
                    "), got ", total);
  at::Tensor lengths = at::zeros({s.B}, bs.options());
  int64_t* l = lengths.data_ptr<int64_t>();
  for (int64_t t = 0; t < s.T; ++t) {
    for (int64_t b = 0; b < p[t]; ++b) l[b] = t + 1;
  }
  s.lengths = lengths;
}

inline void check_lengths(const char* op, const OptTensor& lengths, int64_t T, int64_t B) {
  if (!lengths) return;
  const at::Tensor& l = *lengths;
  TORCH_CHECK_TYPE(l.scalar_type() == at::kLong, op, ": lengths must be an int64 tensor, got ",
                   l.scalar_type());
  TORCH_CHECK(l.device().is_cpu(), op, ": lengths must be a CPU tensor, got ", l.device());
  check_shape(op, "lengths", l, {B}, "(B,)");
  const at::Tensor lc = l.contiguous();
  const int64_t* p = lc.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(p[b] >= 1 && p[b] <= T, op, ": lengths must lie in [1, T] = [1, ", T,
                      "], got lengths[", b, "] = ", p[b]);
  }
}

// Shapes (T, B, I, H, R) of a layer's arguments, after checking all of them.
// `gates` is 4 for LSTM and 3 for GRU.
inline LayerSizes check_layer_inputs(const char* op, int64_t gates, const at::Tensor& x,
                                     const at::Tensor& w_ih, const at::Tensor& w_hh,
                                     const OptTensor& b_ih, const OptTensor& b_hh,
                                     const OptTensor& h0, const OptTensor& c0,
                                     const OptTensor& w_hr, const OptTensor& lengths,
                                     const OptTensor& batch_sizes) {
  check_input(op, x, batch_sizes.has_value());
  LayerSizes s{};
  if (batch_sizes) {
    TORCH_CHECK_VALUE(!lengths, op, ": pass lengths (padded input) or batch_sizes (packed "
                      "input), not both");
    s.packed = true;
    s.I = x.size(1);
    s.N = x.size(0);
    packed_layout(op, *batch_sizes, s.N, s);
  } else {
    s.packed = false;
    s.T = x.size(0);
    s.B = x.size(1);
    s.I = x.size(2);
    s.N = s.T * s.B;
    for (int64_t t = 0; t < s.T; ++t) {
      s.offset.push_back(t * s.B);
      s.rows.push_back(s.B);
    }
    check_lengths(op, lengths, s.T, s.B);
    if (lengths) s.lengths = lengths->contiguous();
  }
  check_like_input(op, "weight_ih", w_ih, x);
  check_like_input(op, "weight_hh", w_hh, x);
  TORCH_CHECK_VALUE(w_ih.dim() == 2 && w_ih.size(0) % gates == 0 && w_ih.size(0) > 0, op,
                    ": weight_ih must have shape (", gates, "H, I) with H >= 1, got ",
                    shape_str(w_ih.sizes()));
  s.H = w_ih.size(0) / gates;
  check_shape(op, "weight_ih", w_ih, {gates * s.H, s.I}, gates == 4 ? "(4H, I)" : "(3H, I)");
  s.R = s.H;
  if (w_hr) {
    check_like_input(op, "weight_hr", *w_hr, x);
    TORCH_CHECK_VALUE(w_hr->dim() == 2 && w_hr->size(0) >= 1, op,
                      ": weight_hr must have shape (P, H) with P >= 1, got ", shape_str(w_hr->sizes()));
    s.R = w_hr->size(0);
    check_shape(op, "weight_hr", *w_hr, {s.R, s.H}, "(P, H)");
  }
  check_shape(op, "weight_hh", w_hh, {gates * s.H, s.R},
              w_hr ? "(4H, P)" : (gates == 4 ? "(4H, H)" : "(3H, H)"));
  for (const auto& pair : {std::make_pair("bias_ih", &b_ih), std::make_pair("bias_hh", &b_hh)}) {
    if (*pair.second) {
      check_like_input(op, pair.first, **pair.second, x);
      check_shape(op, pair.first, **pair.second, {gates * s.H}, gates == 4 ? "(4H,)" : "(3H,)");
    }
  }
  if (h0) {
    check_like_input(op, "h0", *h0, x);
    check_shape(op, "h0", *h0, {s.B, s.R}, w_hr ? "(B, P)" : "(B, H)");
  }
  if (c0) {
    check_like_input(op, "c0", *c0, x);
    check_shape(op, "c0", *c0, {s.B, s.H}, "(B, H)");
  }
  return s;
}

inline void check_positive_finite(const char* op, const char* name, const std::optional<double>& v) {
  if (v) {
    TORCH_CHECK_VALUE(std::isfinite(*v) && *v > 0, op, ": ", name,
                      " must be a positive finite number, got ", *v);
  }
}

// The backward options of docs/design.md §3 as a kernel struct.
template <typename T>
inline GradOptions<T> grad_options(const char* op, const std::optional<double>& grad_clip,
                                   std::string_view grad_clip_mode,
                                   const std::optional<int64_t>& truncate) {
  check_positive_finite(op, "grad_clip", grad_clip);
  TORCH_CHECK_VALUE(grad_clip_mode == "value" || grad_clip_mode == "norm", op,
                    ": grad_clip_mode must be 'value' or 'norm', got '", grad_clip_mode, "'");
  if (truncate) {
    TORCH_CHECK_VALUE(*truncate >= 1, op, ": truncate must be a positive int, got ", *truncate);
  }
  GradOptions<T> o;
  o.clip_mode = !grad_clip ? ClipMode::None
                           : (grad_clip_mode == "norm" ? ClipMode::Norm : ClipMode::Value);
  o.clip = grad_clip ? static_cast<T>(*grad_clip) : T(0);
  o.truncate = truncate ? *truncate : 0;
  return o;
}

// Shape of a per-step tensor of the layer ([T, B, width] padded, [N, width] packed) and its
// letters for messages.
inline std::vector<int64_t> step_shape(const LayerSizes& s, int64_t width) {
  return s.packed ? std::vector<int64_t>{s.N, width} : std::vector<int64_t>{s.T, s.B, width};
}

// A gradient tensor from autograd: shape as expected, same dtype/device as the input.
inline at::Tensor check_grad(const char* op, const char* name, const at::Tensor& g,
                             std::vector<int64_t> expected, const char* letters,
                             const at::Tensor& input) {
  check_like_input(op, name, g, input);
  check_shape(op, name, g, expected, letters);
  return g.contiguous();
}

}  // namespace fusedrnn
