// Entry points of fusedrnn._C: check the arguments once, then dispatch on the device.
#include "rnn_ops.h"

#include "checks.h"
#include "cpu/cpu_ops.h"
#ifdef FUSEDRNN_WITH_CUDA
#include "cuda_glue/cuda_ops.h"
#endif

namespace fusedrnn {

namespace {

constexpr const char* kLstm = "fusedrnn.lstm_layer";
constexpr const char* kGru = "fusedrnn.gru_layer";

// The implementations of this build; the arguments' devices agree (checked before).
enum class Backend { Cpu, Cuda };

Backend backend(const char* op, const at::Tensor& input) {
  if (input.device().is_cpu()) return Backend::Cpu;
#ifdef FUSEDRNN_WITH_CUDA
  if (input.is_cuda()) return Backend::Cuda;
  TORCH_CHECK_NOT_IMPLEMENTED(false, op, ": no kernel for device ", input.device(),
                              " in this build of fusedrnn (CPU and CUDA)");
#else
  TORCH_CHECK_NOT_IMPLEMENTED(false, op, ": no kernel for device ", input.device(),
                              " in this build of fusedrnn (CPU only)");
#endif
  return Backend::Cpu;  // not reached
}

}  // namespace

std::vector<at::Tensor> lstm_forward(const at::Tensor& input, const at::Tensor& weight_ih,
                                     const at::Tensor& weight_hh, const OptTensor& bias_ih,
                                     const OptTensor& bias_hh, const OptTensor& h0,
                                     const OptTensor& c0, const OptTensor& weight_hr,
                                     const OptTensor& lengths, const OptTensor& batch_sizes,
                                     bool reverse, std::optional<double> cell_clip, bool save) {
  const LayerSizes s = check_layer_inputs(kLstm, 4, input, weight_ih, weight_hh, bias_ih, bias_hh,
                                          h0, c0, weight_hr, lengths, batch_sizes);
  check_positive_finite(kLstm, "cell_clip", cell_clip);
  [[maybe_unused]] const Backend where = backend(kLstm, input);
#ifdef FUSEDRNN_WITH_CUDA
  if (where == Backend::Cuda) {
    return cuda::lstm_forward(s, input, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0,
                              weight_hr, reverse, cell_clip, save);
  }
#endif
  return cpu::lstm_forward(s, input, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, weight_hr,
                           reverse, cell_clip, save);
}

std::vector<at::Tensor> lstm_backward(
    const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
    const at::Tensor& input, const at::Tensor& weight_ih, const at::Tensor& weight_hh,
    const OptTensor& weight_hr, const OptTensor& h0, const OptTensor& c0,
    const OptTensor& lengths, const OptTensor& batch_sizes, const at::Tensor& output,
    const at::Tensor& act, const at::Tensor& c_raw, const at::Tensor& h_pre, bool reverse,
    std::optional<double> grad_clip, const std::string& grad_clip_mode,
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
  check_grad(kLstm, "c_raw (saved; was the forward run with save=True?)", c_raw,
             step_shape(s, s.H), h_letters, input);
  if (weight_hr) check_grad(kLstm, "h_pre (saved)", h_pre, step_shape(s, s.H), h_letters, input);
  [[maybe_unused]] const Backend where = backend(kLstm, input);
#ifdef FUSEDRNN_WITH_CUDA
  if (where == Backend::Cuda) {
    return cuda::lstm_backward(s, grad_output, grad_h_n, grad_c_n, input, weight_ih, weight_hh,
                               weight_hr, h0, c0, output, act, c_raw, h_pre, reverse, opt,
                               cell_clip, has_bias, need_input_grad, need_weight_grad,
                               track_grad_norms);
  }
#endif
  return cpu::lstm_backward(s, grad_output, grad_h_n, grad_c_n, input, weight_ih, weight_hh,
                            weight_hr, h0, c0, output, act, c_raw, h_pre, reverse, opt,
                            cell_clip, has_bias, need_input_grad, need_weight_grad,
                            track_grad_norms);
}

std::vector<at::Tensor> gru_forward(const at::Tensor& input, const at::Tensor& weight_ih,
                                    const at::Tensor& weight_hh, const OptTensor& bias_ih,
                                    const OptTensor& bias_hh, const OptTensor& h0,
                                    const OptTensor& lengths, const OptTensor& batch_sizes,
                                    bool reverse, bool save) {
  const LayerSizes s = check_layer_inputs(kGru, 3, input, weight_ih, weight_hh, bias_ih, bias_hh,
                                          h0, std::nullopt, std::nullopt, lengths, batch_sizes);
  [[maybe_unused]] const Backend where = backend(kGru, input);
#ifdef FUSEDRNN_WITH_CUDA
  if (where == Backend::Cuda) {
    return cuda::gru_forward(s, input, weight_ih, weight_hh, bias_ih, bias_hh, h0, reverse,
                             save);
  }
#endif
  return cpu::gru_forward(s, input, weight_ih, weight_hh, bias_ih, bias_hh, h0, reverse, save);
}

std::vector<at::Tensor> gru_backward(
    const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& input,
    const at::Tensor& weight_ih, const at::Tensor& weight_hh, const OptTensor& h0,
    const OptTensor& lengths, const OptTensor& batch_sizes, const at::Tensor& output,
    const at::Tensor& saved, bool reverse,
    std::optional<double> grad_clip, const std::string& grad_clip_mode,
    std::optional<int64_t> truncate, bool has_bias, bool need_input_grad,
    bool need_weight_grad, bool track_grad_norms) {
  const LayerSizes s = check_layer_inputs(kGru, 3, input, weight_ih, weight_hh, std::nullopt,
                                          std::nullopt, h0, std::nullopt, std::nullopt, lengths,
                                          batch_sizes);
  const GradOptions<double> opt = grad_options<double>(kGru, grad_clip, grad_clip_mode, truncate);
  const char* h_letters = s.packed ? "(N, H)" : "(T, B, H)";
  check_grad(kGru, "grad_output", grad_output, step_shape(s, s.H), h_letters, input);
  check_grad(kGru, "grad_h_n", grad_h_n, {s.B, s.H}, "(B, H)", input);
  check_grad(kGru, "output (saved)", output, step_shape(s, s.H), h_letters, input);
  check_grad(kGru, "saved (was the forward run with save=True?)", saved, step_shape(s, 4 * s.H),
             s.packed ? "(N, 4H)" : "(T, B, 4H)", input);
  [[maybe_unused]] const Backend where = backend(kGru, input);
#ifdef FUSEDRNN_WITH_CUDA
  if (where == Backend::Cuda) {
    return cuda::gru_backward(s, grad_output, grad_h_n, input, weight_ih, weight_hh, h0,
                              output, saved, reverse, opt, has_bias, need_input_grad,
                              need_weight_grad, track_grad_norms);
  }
#endif
  return cpu::gru_backward(s, grad_output, grad_h_n, input, weight_ih, weight_hh, h0,
                           output, saved, reverse, opt, has_bias, need_input_grad,
                           need_weight_grad, track_grad_norms);
}

}  // namespace fusedrnn
