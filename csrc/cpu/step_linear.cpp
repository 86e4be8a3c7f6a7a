// StepLinear: the recurrent GEMMs of the CPU time loops; see Note [oneDNN for the step GEMMs]
// in cpu_common.h.
#include <atomic>
#include <algorithm>
#include <cstdlib>

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include "cpu_common.h"

namespace fusedrnn {
namespace cpu {

namespace {

// A oneDNN call costs about 14 us more than at::cpu::mm_out (boxed dispatch, output
// allocation, primitive lookup; measured with T=128 steps of a 1x16x64 GEMM on 2 cores) and
// runs the step GEMM about 1.4x faster, so it pays from a few million multiply-adds per call
// (the headline 32x256x1024 step has 8.4M).
constexpr int64_t kOneDnnMinMacs = 4 << 20;

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

std::atomic<bool>& use_onednn() {
  static std::atomic<bool> flag([] {
    const char* env = std::getenv("FUSEDRNN_CPU_STEP_GEMM");
    return onednn_available() && !(env && std::string(env) == "blas");
  }());
  return flag;
}

}  // namespace

std::string step_gemm() { return use_onednn() ? "onednn" : "blas"; }

std::string set_step_gemm(const std::string& name) {
  TORCH_CHECK_VALUE(name == "onednn" || name == "blas",
                    "fusedrnn: step GEMM backend must be 'onednn' or 'blas', got '", name, "'");
  use_onednn() = name == "onednn" && onednn_available();
  return step_gemm();
}

template <typename T>
StepLinear<T>::StepLinear(const at::Tensor& weight, int64_t M, int64_t calls)
    : N_(weight.size(0)), K_(weight.size(1)), weight_(weight) {
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
  const at::Tensor x = at::from_blob(const_cast<T*>(in), {M, K_}, {K_, 1}, opts);
  if (M == 0) {
    out_ = at::empty({0, N_}, opts);
  } else if (packed_.defined() && M * N_ * K_ >= kOneDnnMinMacs) {
    torch::jit::Stack stack{x, packed_, c10::IValue(), c10::IValue(std::string("none")),
                            c10::IValue(c10::List<std::optional<at::Scalar>>()), c10::IValue()};
    onednn_ops().linear->callBoxed(&stack);
    out_ = stack[0].toTensor();
    TORCH_INTERNAL_ASSERT(out_.is_contiguous() && out_.size(0) == M && out_.size(1) == N_);
  } else {
    if (!out_.defined() || out_.size(0) != M) out_ = at::empty({M, N_}, opts);
    at::cpu::mm_out(out_, x, weight_.t());
  }
  return out_.data_ptr<T>();
}

at::Tensor linear_rows(const at::Tensor& x, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias) {
  if (x.scalar_type() == at::kFloat && use_onednn() && x.size(0) >= kOneDnnMinRows &&
      x.size(0) * weight.size(0) * weight.size(1) >= kOneDnnMinMacs) {
    torch::jit::Stack pack{weight.contiguous(), c10::IValue(x.size(0))};
    onednn_ops().reorder->callBoxed(&pack);
    torch::jit::Stack stack{x.contiguous(), pack[0], bias ? c10::IValue(bias->contiguous()) : c10::IValue(),
                            c10::IValue(std::string("none")),
                            c10::IValue(c10::List<std::optional<at::Scalar>>()), c10::IValue()};
    onednn_ops().linear->callBoxed(&stack);
    at::Tensor out = stack[0].toTensor();
    TORCH_INTERNAL_ASSERT(out.is_contiguous());
    return out;
  }
  return bias ? at::addmm(*bias, x, weight.t()) : at::mm(x, weight.t());
}

at::Tensor previous_states(const LayerSizes& s, const at::Tensor& y,
                           const std::optional<at::Tensor>& h0, bool reverse) {
  at::Tensor prev = at::zeros_like(y);
  for (int64_t t = 0; t < s.T; ++t) {
    const int64_t tp = reverse ? t + 1 : t - 1;
    // Rows that also exist at tp (a prefix: the longest sequences come first) continue from
    // there; the others start at t.
    const int64_t cont = (tp >= 0 && tp < s.T) ? std::min(s.rows[t], s.rows[tp]) : 0;
    if (cont > 0) prev.narrow(0, s.offset[t], cont).copy_(y.narrow(0, s.offset[tp], cont));
    if (h0 && cont < s.rows[t]) {
      prev.narrow(0, s.offset[t] + cont, s.rows[t] - cont)
          .copy_(h0->narrow(0, cont, s.rows[t] - cont));
    }
  }
  return prev;
}

template class StepLinear<float>;
template class StepLinear<double>;

}  // namespace cpu
}  // namespace fusedrnn
