// The device kernels of the torch.ops.fusedrnn ops (schemas in csrc/ops.cpp): check the
// arguments once, then call the backend's layer functions (csrc/layer_ops.h). The same
// checked kernel serves every backend; the dispatcher picks CPU or CUDA from the tensors.
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu/cpu_ops.h"
#include "rnn_ops.h"
#ifdef FUSEDRNN_WITH_CUDA
#include "cuda_glue/cuda_ops.h"
#endif

namespace fusedrnn {

namespace {

constexpr const char* kLstm = "fusedrnn.lstm_layer";
constexpr const char* kGru = "fusedrnn.gru_layer";

// A backend: its four layer functions (csrc/layer_ops.h).
#ifndef FUSEDRNN_CUDA_EMU
struct CpuBackend {
  static constexpr auto lstm_forward = &cpu::lstm_forward;
  static constexpr auto lstm_backward = &cpu::lstm_backward;
  static constexpr auto gru_forward = &cpu::gru_forward;
  static constexpr auto gru_backward = &cpu::gru_backward;
};
#endif

#ifdef FUSEDRNN_WITH_CUDA
struct CudaBackend {
  static constexpr auto lstm_forward = &cuda::lstm_forward;
  static constexpr auto lstm_backward = &cuda::lstm_backward;
  static constexpr auto gru_forward = &cuda::gru_forward;
  static constexpr auto gru_backward = &cuda::gru_backward;
};
#endif

// The backends call ATen (GEMMs, allocation) inside the kernels. Autocast must not reach
// those calls: it would run a kernel's GEMMs in its lower-precision dtype (or fail on a
// dtype mix) when an op, or a backward, runs inside torch.autocast. The wrappers in
// fusedrnn/ops.py decide the dtypes of an op under autocast (docs/design.md §4); inside the
// kernel everything runs in the dtype of its arguments.
using NoAutocast = c10::impl::ExcludeDispatchKeyGuard;

template <class Backend>
std::vector<at::Tensor> lstm_forward(const at::Tensor& input, const at::Tensor& weight_ih,
                                     const at::Tensor& weight_hh, const OptTensor& bias_ih,
                                     const OptTensor& bias_hh, const OptTensor& h0,
                                     const OptTensor& c0, const OptTensor& weight_hr,
                                     const OptTensor& lengths, const OptTensor& batch_sizes,
                                     bool reverse, std::optional<double> cell_clip, bool save) {
  const LayerSizes s = check_layer_inputs(kLstm, 4, input, weight_ih, weight_hh, bias_ih, bias_hh,
                                          h0, c0, weight_hr, lengths, batch_sizes);
  check_positive_finite(kLstm, "cell_clip", cell_clip);
  NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  return Backend::lstm_forward(s, {{input, weight_ih, weight_hh, bias_ih, bias_hh, h0}, c0,
                                   weight_hr, reverse, cell_clip, save});
}

// lstm_layer without autograd (inference, or below the Autograd kernel when nothing needs a
// gradient): nothing is saved. The grad options are checked as the backward would check them.
template <class Backend>
Tensor3 lstm_layer(const at::Tensor& input, const at::Tensor& weight_ih,
                   const at::Tensor& weight_hh, const OptTensor& bias_ih, const OptTensor& bias_hh,
                   const OptTensor& h0, const OptTensor& c0, const OptTensor& weight_hr,
                   const OptTensor& lengths, const OptTensor& batch_sizes, bool reverse,
                   std::optional<double> grad_clip, c10::string_view grad_clip_mode,
                   std::optional<int64_t> truncate, std::optional<double> cell_clip,
                   const OptTensor& /*grad_record: never read*/) {
  grad_options<double>(kLstm, grad_clip, grad_clip_mode, truncate);
  std::vector<at::Tensor> out =
      lstm_forward<Backend>(input, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, weight_hr,
                            lengths, batch_sizes, reverse, cell_clip, /*save=*/false);
  return {out[0], out[1], out[2]};
}

template <class Backend>
Tensor6 lstm_layer_forward(const at::Tensor& input, const at::Tensor& weight_ih,
                           const at::Tensor& weight_hh, const OptTensor& bias_ih,
                           const OptTensor& bias_hh, const OptTensor& h0, const OptTensor& c0,
                           const OptTensor& weight_hr, const OptTensor& lengths,
                           const OptTensor& batch_sizes, bool reverse,
                           std::optional<double> cell_clip) {
  std::vector<at::Tensor> out =
      lstm_forward<Backend>(input, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, weight_hr,
                            lengths, batch_sizes, reverse, cell_clip, /*save=*/true);
  return {out[0], out[1], out[2], out[3], out[4], out[5]};
}

template <class Backend>
Tensor8 lstm_layer_backward(
    const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
    const at::Tensor& input, const at::Tensor& weight_ih, const at::Tensor& weight_hh,
    const OptTensor& weight_hr, const OptTensor& h0, const OptTensor& c0,
    const OptTensor& lengths, const OptTensor& batch_sizes, const at::Tensor& output,
    const at::Tensor& act, const at::Tensor& c_raw, const at::Tensor& h_pre, bool reverse,
    std::optional<double> grad_clip, c10::string_view grad_clip_mode,
    std::optional<int64_t> truncate, std::optional<double> cell_clip, bool has_bias,
    bool need_input_grad, bool need_weight_grad, bool track_grad_norms) {
  const LayerSizes s = check_layer_inputs(kLstm, 4, input, weight_ih, weight_hh, std::nullopt,
                                          std::nullopt, h0, c0, weight_hr, lengths, batch_sizes);
  const GradOptions<double> opt = grad_options<double>(kLstm, grad_clip, grad_clip_mode, truncate);
  check_positive_finite(kLstm, "cell_clip", cell_clip);
  const char* r_letters = s.packed ? (weight_hr ? "(N, P)" : "(N, H)")
                                   : (weight_hr ? "(T, B, P)" : "(T, B, H)");
  const char* g_letters = s.packed ? "(N, 4H)" : "(T, B, 4H)";
  const char* h_letters = s.packed ? "(N, H)" : "(T, B, H)";
  check_grad(kLstm, "grad_output", grad_output, step_shape(s, s.R), r_letters, input);
  check_grad(kLstm, "grad_h_n", grad_h_n, {s.B, s.R}, weight_hr ? "(B, P)" : "(B, H)", input);
  check_grad(kLstm, "grad_c_n", grad_c_n, {s.B, s.H}, "(B, H)", input);
  check_grad(kLstm, "output (saved)", output, step_shape(s, s.R), r_letters, input);
  check_grad(kLstm, "act (saved)", act, step_shape(s, 4 * s.H), g_letters, input);
  check_grad(kLstm, "c_raw (saved)", c_raw, step_shape(s, s.H), h_letters, input);
  if (weight_hr) check_grad(kLstm, "h_pre (saved)", h_pre, step_shape(s, s.H), h_letters, input);
  NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  const GradRequest need{need_input_grad, need_weight_grad, has_bias, track_grad_norms};
  std::vector<at::Tensor> g = Backend::lstm_backward(
      s, {grad_output, grad_h_n, grad_c_n, input, weight_ih, weight_hh, weight_hr, h0, c0,
          output, act, c_raw, h_pre, reverse, opt, cell_clip, need});
  return {g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]};
}

template <class Backend>
std::vector<at::Tensor> gru_forward(const at::Tensor& input, const at::Tensor& weight_ih,
                                    const at::Tensor& weight_hh, const OptTensor& bias_ih,
                                    const OptTensor& bias_hh, const OptTensor& h0,
                                    const OptTensor& lengths, const OptTensor& batch_sizes,
                                    bool reverse, bool save) {
  const LayerSizes s = check_layer_inputs(kGru, 3, input, weight_ih, weight_hh, bias_ih, bias_hh,
                                          h0, std::nullopt, std::nullopt, lengths, batch_sizes);
  NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  return Backend::gru_forward(s, {{input, weight_ih, weight_hh, bias_ih, bias_hh, h0}, reverse,
                                  save});
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor> gru_layer(
    const at::Tensor& input, const at::Tensor& weight_ih, const at::Tensor& weight_hh,
    const OptTensor& bias_ih, const OptTensor& bias_hh, const OptTensor& h0,
    const OptTensor& lengths, const OptTensor& batch_sizes, bool reverse,
    std::optional<double> grad_clip, c10::string_view grad_clip_mode,
    std::optional<int64_t> truncate, const OptTensor& /*grad_record: never read*/) {
  grad_options<double>(kGru, grad_clip, grad_clip_mode, truncate);
  std::vector<at::Tensor> out = gru_forward<Backend>(input, weight_ih, weight_hh, bias_ih,
                                                     bias_hh, h0, lengths, batch_sizes, reverse,
                                                     /*save=*/false);
  return {out[0], out[1]};
}

template <class Backend>
Tensor3 gru_layer_forward(const at::Tensor& input, const at::Tensor& weight_ih,
                          const at::Tensor& weight_hh, const OptTensor& bias_ih,
                          const OptTensor& bias_hh, const OptTensor& h0,
                          const OptTensor& lengths, const OptTensor& batch_sizes, bool reverse) {
  std::vector<at::Tensor> out = gru_forward<Backend>(input, weight_ih, weight_hh, bias_ih,
                                                     bias_hh, h0, lengths, batch_sizes, reverse,
                                                     /*save=*/true);
  return {out[0], out[1], out[2]};
}

template <class Backend>
Tensor7 gru_layer_backward(
    const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& input,
    const at::Tensor& weight_ih, const at::Tensor& weight_hh, const OptTensor& h0,
    const OptTensor& lengths, const OptTensor& batch_sizes, const at::Tensor& output,
    const at::Tensor& saved, bool reverse, std::optional<double> grad_clip,
    c10::string_view grad_clip_mode, std::optional<int64_t> truncate, bool has_bias,
    bool need_input_grad, bool need_weight_grad, bool track_grad_norms) {
  const LayerSizes s = check_layer_inputs(kGru, 3, input, weight_ih, weight_hh, std::nullopt,
                                          std::nullopt, h0, std::nullopt, std::nullopt, lengths,
                                          batch_sizes);
  const GradOptions<double> opt = grad_options<double>(kGru, grad_clip, grad_clip_mode, truncate);
  const char* h_letters = s.packed ? "(N, H)" : "(T, B, H)";
  check_grad(kGru, "grad_output", grad_output, step_shape(s, s.H), h_letters, input);
  check_grad(kGru, "grad_h_n", grad_h_n, {s.B, s.H}, "(B, H)", input);
  check_grad(kGru, "output (saved)", output, step_shape(s, s.H), h_letters, input);
  check_grad(kGru, "saved (saved)", saved, step_shape(s, 4 * s.H),
             s.packed ? "(N, 4H)" : "(T, B, 4H)", input);
  NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  const GradRequest need{need_input_grad, need_weight_grad, has_bias, track_grad_norms};
  std::vector<at::Tensor> g = Backend::gru_backward(
      s, {grad_output, grad_h_n, input, weight_ih, weight_hh, h0, output, saved, reverse, opt,
          need});
  return {g[0], g[1], g[2], g[3], g[4], g[5], g[6]};
}

template <class Backend>
void register_kernels(torch::Library& m) {
  m.impl("lstm_layer", &lstm_layer<Backend>);
  m.impl("lstm_layer_forward", &lstm_layer_forward<Backend>);
  m.impl("lstm_layer_backward", &lstm_layer_backward<Backend>);
  m.impl("gru_layer", &gru_layer<Backend>);
  m.impl("gru_layer_forward", &gru_layer_forward<Backend>);
  m.impl("gru_layer_backward", &gru_layer_backward<Backend>);
}

}  // namespace

#ifdef FUSEDRNN_CUDA_EMU
// tools/cuda_emu's host build: CPU tensors go through the CUDA backend (this library is
// loaded after fusedrnn._C, and its CPU kernels replace the real ones).
TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) { register_kernels<CudaBackend>(m); }
#else
TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) { register_kernels<CpuBackend>(m); }
#endif

#ifdef FUSEDRNN_WITH_CUDA
TORCH_LIBRARY_IMPL(fusedrnn, CUDA, m) { register_kernels<CudaBackend>(m); }
#endif

}  // namespace fusedrnn
