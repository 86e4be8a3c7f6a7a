// StepLinear: the recurrent GEMMs of the CPU time loops; see Note [oneDNN for the step GEMMs]
// in cpu_common.h.
#include <atomic>
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include "cpu_common.h"
#include "dispatch.h"

namespace fusedrnn {
namespace cpu {

namespace {

// A oneDNN call costs about 14 us more than at::cpu::mm_out (boxed dispatch, output
// allocation, primitive lookup; measured with T=128 steps of a 1x16x64 GEMM on 2 cores) and
// runs the step GEMM about 1.4x faster, so it pays from a few million multiply-adds per call
// (the headline 32x256x1024 step has 8.4M).
constexpr int64_t kOneDnnMinMacs = 4 << 20;

// RowsLinear's one product over all rows (the input projection x W_ih^T + b) packs the weight
// for that one call. On a 2-core Xeon (Sapphire Rapids class, a VM) the packing alone took
// 0.45-0.6 ms whatever the weight's size, and at::addmm (MKL) ran the product faster than
// oneDNN with its packing except for many rows of few inputs (ms, min of 15 interleaved,
// addmm / oneDNN: M=512 I=64 G=1024 0.49 / 0.86, M=1024 I=64 G=256 0.27 / 0.63, M=1024
// I=256 G=1024 2.90 / 3.76, M=512 I=512 G=1024 2.98 / 3.62, M=2048 I=256 G=1024 5.84 /
// 6.84, M=4096 I=128 G=1024 7.09 / 7.28, M=6400 I=512 G=2048 88.7 / 94.4; but M=2048 I=64
// G=1024 3.40 / 2.67, M=4096 I=64 G=1024 5.09 / 3.56, M=4096 I=64 G=768 5.39 / 4.23, M=6400
// I=64 G=2048 34.5 / 31.1). Whole calls with the projection on at::addmm instead, paired
// medians: GRU T=128 B=4 I=64 H=256 1.15x (inference) / 1.04x (training), B=6 I=128 1.14x /
// 1.04x, LSTM T=128 B=4 I=512 H=256 1.18x / 1.06x, LSTM T=100 B=64 I=512 H=512 inference
// (chunked, the packing shared by 12 chunks) 1.07x. So on Intel CPUs only products of at
// most 64 inputs and at least 2^27 multiply-adds keep oneDNN. (The step GEMMs pack once per
// call for T steps and keep it.)
constexpr int64_t kOneDnnRowsMaxKOnIntel = 64;
constexpr int64_t kOneDnnRowsMinMacsOnIntel = int64_t(1) << 27;

struct OneDnnOps {
  std::optional<c10::OperatorHandle> reorder, linear;
};

const OneDnnOps& onednn_ops() {
  static const OneDnnOps ops = [] {
    OneDnnOps o;
    if (at::hasMKLDNN()) {
      auto& d = c10::Dispatcher::singleton();
      o.reorder = d.findOp(c10::OperatorName("mkldnn::_reorder_linear_weight", ""));
      o.linear = d.findOp(c10::OperatorName("mkldnn::_linear_pointwise", ""));
    }
    return o;
  }();
  return ops;
}

bool onednn_available() {
  const OneDnnOps& o = onednn_ops();
  return o.reorder.has_value() && o.linear.has_value();
}

// Whether `name` ("onednn" or "blas") asks for oneDNN; `what` names where the value came
// from, for the error message.
bool onednn_named(const std::string& name, const char* what) {
  TORCH_CHECK_VALUE(name == "onednn" || name == "blas", "fusedrnn: ", what,
                    " must be 'onednn' or 'blas', got '", name, "'");
  return name == "onednn";
}

std::atomic<bool>& use_onednn() {
  static std::atomic<bool> flag([] {
    const char* env = std::getenv("FUSEDRNN_CPU_STEP_GEMM");
    const bool want = onednn_named(env && *env ? env : "onednn", "FUSEDRNN_CPU_STEP_GEMM");
    return want && onednn_available();
  }());
  return flag;
}

}  // namespace

std::string step_gemm() { return use_onednn() ? "onednn" : "blas"; }

std::string set_step_gemm(const std::string& name) {
  use_onednn() = onednn_named(name, "step GEMM backend") && onednn_available();
  return step_gemm();
}

template <typename T>
StepLinear<T>::StepLinear(const at::Tensor& weight, int64_t M, int64_t calls)
    : N_(weight.size(0)), K_(weight.size(1)), weight_(weight) {
  // Note [Direct products for small calls]: the weight read in place, forward ([N, K]
  // row-major) or transposed (a .t() view, the backward's W_hh).
  if (M * N_ * K_ <= kDirectMacs && (weight_.stride(1) == 1 || weight_.stride(0) == 1)) {
    direct_ = true;
    return;
  }
  if (std::is_same<T, float>::value && use_onednn() && M * N_ * K_ >= kOneDnnMinMacs &&
      M * calls >= kOneDnnMinRows) {
    torch::jit::Stack stack{weight_.contiguous(), c10::IValue(M)};
    onednn_ops().reorder->callBoxed(&stack);
    packed_ = stack[0].toTensor();
  }
}

template <typename T>
const T* StepLinear<T>::operator()(const T* in, int64_t M) {
  const auto opts = weight_.options();
  if (direct_) {
    if (!out_.defined() || out_.size(0) < M) out_ = empty_buffer({M, N_}, opts);
    direct_linear(in, K_, weight_.const_data_ptr<T>(), weight_.stride(0), weight_.stride(1),
                  static_cast<const T*>(nullptr), M, N_, K_, out_.data_ptr<T>(), N_);
    return out_.data_ptr<T>();
  }
  const at::Tensor x = at::from_blob(const_cast<T*>(in), {M, K_}, {K_, 1}, opts);
  if (M == 0) {
    out_ = empty_buffer({0, N_}, opts);
  } else if (packed_.defined() && M * N_ * K_ >= kOneDnnMinMacs) {
    torch::jit::Stack stack{x, packed_, c10::IValue(), c10::IValue(std::string("none")),
                            c10::IValue(c10::List<std::optional<at::Scalar>>()), c10::IValue()};
    onednn_ops().linear->callBoxed(&stack);
    out_ = stack[0].toTensor();
    TORCH_INTERNAL_ASSERT(out_.is_contiguous() && out_.size(0) == M && out_.size(1) == N_);
  } else {
    if (!out_.defined() || out_.size(0) != M) out_ = empty_buffer({M, N_}, opts);
    at::cpu::mm_out(out_, x, weight_.t());
  }
  return out_.data_ptr<T>();
}

RowsLinear::RowsLinear(const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       int64_t rows, bool contiguous_input)
    : weight_(weight), bias_(bias) {
  const int64_t N = weight.size(0), K = weight.size(1);
  if (direct_product(rows * N * K) && contiguous_input && weight.is_contiguous() &&
      (!bias || bias->is_contiguous())) {  // Note [Direct products for small calls]
    backend_ = Backend::Direct;
  } else if (weight.scalar_type() == at::kFloat && use_onednn() && rows >= kOneDnnMinRows &&
             rows * N * K >= kOneDnnMinMacs &&
             (!intel_cpu() || (K <= kOneDnnRowsMaxKOnIntel &&
                               rows * N * K >= kOneDnnRowsMinMacsOnIntel))) {
    backend_ = Backend::OneDnn;
    torch::jit::Stack pack{weight.contiguous(), c10::IValue(rows)};
    onednn_ops().reorder->callBoxed(&pack);
    packed_ = pack[0].toTensor();
    if (bias_) bias_ = bias_->contiguous();
  }
}

at::Tensor RowsLinear::operator()(const at::Tensor& x) const {
  const int64_t M = x.size(0), N = weight_.size(0), K = weight_.size(1);
  switch (backend_) {
    case Backend::Direct: {
      TORCH_INTERNAL_ASSERT(x.is_contiguous());
      at::Tensor out = empty_buffer({M, N}, x.options());  // Note [Small CPU buffers]
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fusedrnn.linear_rows", [&] {
        direct_linear(x.const_data_ptr<scalar_t>(), K, weight_.const_data_ptr<scalar_t>(), K, 1,
                      bias_ ? bias_->const_data_ptr<scalar_t>() : nullptr, M, N, K,
                      out.data_ptr<scalar_t>(), N);
      });
      return out;
    }
    case Backend::OneDnn: {
      torch::jit::Stack stack{x.contiguous(), packed_, bias_ ? c10::IValue(*bias_) : c10::IValue(),
                              c10::IValue(std::string("none")),
                              c10::IValue(c10::List<std::optional<at::Scalar>>()), c10::IValue()};
      onednn_ops().linear->callBoxed(&stack);
      at::Tensor out = stack[0].toTensor();
      TORCH_INTERNAL_ASSERT(out.is_contiguous());
      return out;
    }
    case Backend::Aten:
      break;
  }
  at::Tensor out = empty_buffer({M, N}, x.options());  // Note [CPU buffer cache]
  return bias_ ? at::addmm_out(out, *bias_, x, weight_.t()) : at::mm_out(out, x, weight_.t());
}

at::Tensor linear_rows(const at::Tensor& x, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias) {
  return RowsLinear(weight, bias, x.size(0), x.is_contiguous())(x);
}

at::Tensor rows_times(const at::Tensor& a, const at::Tensor& w) {
  const int64_t M = a.size(0), K = a.size(1), N = w.size(1);
  if (a.is_contiguous() && w.is_contiguous() && direct_product(M * K * N)) {
    at::Tensor out = empty_buffer({M, N}, a.options());
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "fusedrnn.rows_times", [&] {
      direct_linear(a.const_data_ptr<scalar_t>(), K, w.const_data_ptr<scalar_t>(), 1, N,
                    static_cast<const scalar_t*>(nullptr), M, N, K, out.data_ptr<scalar_t>(), N);
    });
    return out;
  }
  const InputGradPath path = input_grad_path(a, w);
  if (path == InputGradPath::Engine) return engine_rows_times(a, w);
  if (path == InputGradPath::Thin) return engine_thin_rows_times(a, w);
  if (path == InputGradPath::Default && a.scalar_type() == at::kFloat && use_onednn() &&
      M >= kOneDnnMinRows &&
      M * K * N >= kOneDnnMinMacs) {
    return RowsLinear(w.t().contiguous(), std::nullopt, M, a.is_contiguous())(a);
  }
  return at::mm(a, w);
}

std::optional<at::Tensor> input_bias(const std::optional<at::Tensor>& b_ih,
                                     const std::optional<at::Tensor>& b_hh, int64_t G,
                                     int64_t hh) {
  if (!b_ih && !b_hh) return std::nullopt;
  const at::Tensor& any = b_ih ? *b_ih : *b_hh;
  at::Tensor bias = empty_buffer({G}, any.options());
  AT_DISPATCH_FLOATING_TYPES(any.scalar_type(), "fusedrnn.input_bias", [&] {
    const at::Tensor bi = b_ih ? b_ih->contiguous() : at::Tensor();
    const at::Tensor bh = b_hh ? b_hh->contiguous() : at::Tensor();
    const scalar_t* ip = b_ih ? bi.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* hp = b_hh ? bh.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* bp = bias.data_ptr<scalar_t>();
    for (int64_t j = 0; j < G; ++j) {
      const scalar_t in = ip ? ip[j] : scalar_t(0);
      bp[j] = hp && j < hh ? in + hp[j] : in;
    }
  });
  return bias;
}

template <typename T>
std::vector<const T*> previous_state_rows(const LayerSizes& s, const T* y, const T* h0,
                                          int64_t R, bool reverse) {
  const int64_t* len = s.lengths ? s.lengths->data_ptr<int64_t>() : nullptr;
  std::vector<const T*> prev(static_cast<size_t>(s.N), nullptr);
  for (int64_t t = 0; t < s.T; ++t) {
    const int64_t tp = reverse ? t + 1 : t - 1;
    const bool has_tp = tp >= 0 && tp < s.T;
    for (int64_t b = 0; b < s.rows[t]; ++b) {
      const T* h0_row = h0 ? h0 + b * R : nullptr;
      const T*& row = prev[static_cast<size_t>(s.offset[t] + b)];
      if (!s.packed && len) {
        // Padded with lengths: rows past their length have zero gradients; a reverse row
        // starts at its own last step.
        const int64_t first = reverse ? len[b] - 1 : 0;
        if (t == first) {
          row = h0_row;
        } else if (reverse ? t < first : t < len[b]) {
          row = y + (s.offset[tp] + b) * R;
        }
      } else if (has_tp && b < s.rows[tp]) {
        row = y + (s.offset[tp] + b) * R;  // packed: rows continuing from tp are a prefix
      } else {
        row = h0_row;
      }
    }
  }
  return prev;
}

template std::vector<const float*> previous_state_rows(const LayerSizes&, const float*,
                                                       const float*, int64_t, bool);
template std::vector<const double*> previous_state_rows(const LayerSizes&, const double*,
                                                        const double*, int64_t, bool);

at::Tensor previous_states(const LayerSizes& s, const at::Tensor& y,
                           const std::optional<at::Tensor>& h0, bool reverse) {
  const int64_t R = y.size(-1);
  const at::Tensor yc = y.reshape({s.N, R}).contiguous();
  const at::Tensor hc = h0 ? h0->contiguous() : at::Tensor();
  at::Tensor prev = empty_buffer({s.N, R}, y.options());
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "fusedrnn.previous_states", [&] {
    const std::vector<const scalar_t*> rows = previous_state_rows<scalar_t>(
        s, yc.const_data_ptr<scalar_t>(), h0 ? hc.const_data_ptr<scalar_t>() : nullptr, R,
        reverse);
    scalar_t* out = prev.data_ptr<scalar_t>();
    at::parallel_for(0, s.N, std::max<int64_t>(1, 32768 / std::max<int64_t>(R, 1)),
                     [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        const scalar_t* src = rows[static_cast<size_t>(k)];
        if (src) {
          std::memcpy(out + k * R, src, R * sizeof(scalar_t));
        } else {
          std::memset(out + k * R, 0, R * sizeof(scalar_t));
        }
      }
    });
  });
  return prev.view(y.sizes());
}

template class StepLinear<float>;
template class StepLinear<double>;

template <typename T>
InputProjection<T>::InputProjection(const LayerSizes& s, const at::Tensor& x,
                                    const at::Tensor& weight,
                                    const std::optional<at::Tensor>& bias, bool reverse,
                                    bool saved)
    : s_(s), x_(x), linear_(weight, bias, s.N, x.is_contiguous()), reverse_(reverse),
      G_(weight.size(0)) {
  // Every chunk uses the backend (and the packed weight) chosen for all N rows, so that a
  // row comes out the same either way.
  const int64_t row_bytes = G_ * int64_t(sizeof(T));
  const int64_t chunk_rows = std::max(kOneDnnMinRows, kProjectionChunkBytes / row_bytes);
  if (!saved && s.N * row_bytes > 2 * kProjectionChunkBytes && s.B > 0) {
    steps_per_chunk_ = std::max<int64_t>(1, chunk_rows / s.B);
    count_engine_run(EngineRun::ChunkedProjection);
  } else {
    rows_ = linear_(x_);
    first_ = 0;
    last_ = s.T - 1;
  }
}

template <typename T>
T* InputProjection<T>::step(int64_t t) {
  if (t < first_ || t > last_) {
    // The next chunk in the loop's order, starting at t.
    first_ = reverse_ ? std::max<int64_t>(0, t - steps_per_chunk_ + 1) : t;
    last_ = reverse_ ? t : std::min(s_.T - 1, t + steps_per_chunk_ - 1);
    const int64_t r0 = s_.offset[first_], r1 = s_.offset[last_] + s_.rows[last_];
    rows_ = linear_(x_.narrow(0, r0, r1 - r0));
  }
  return rows_.data_ptr<T>() + (s_.offset[t] - s_.offset[first_]) * G_;
}

template <typename T>
at::Tensor InputProjection<T>::whole() const {
  return steps_per_chunk_ ? empty_buffer({0}, x_.options()) : rows_;
}

template class InputProjection<float>;
template class InputProjection<double>;

}  // namespace cpu
}  // namespace fusedrnn
