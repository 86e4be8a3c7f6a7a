// The ops of the torch.ops.fusedrnn namespace: their one schema is in csrc/ops.cpp, their
// device kernels (argument checks, then the backend) in csrc/rnn_ops.cpp, their autograd
// formula in csrc/autograd.cpp, their fake (meta) kernels in fusedrnn/ops.py.
//
//   lstm_layer / gru_layer                 the public ops (autograd-aware): outputs, final states
//   lstm_layer_forward / gru_layer_forward the forward that also returns what backward needs
//   lstm_layer_backward / gru_layer_backward  BPTT: gradients (and the gradient record)
//
// Layouts (Note [Padded and packed layouts] in checks.h): input [T, B, I] with optional
// lengths, or packed input [N, I] with batch_sizes; per-step outputs and saved tensors are
// [T, B, *] or [N, *] accordingly. Shapes below are written for the padded layout.
//
// Saved tensors (returned by *_forward, handed back to *_backward):
//   LSTM: act [T, B, 4H] gate activations, c_raw [T, B, H] pre-clip cell states, h_pre
//         [T, B, H] unprojected h (projection only, else empty).
//   GRU:  saved [T, B, 4H] = r, z, n, h W_hn^T + b_hn.
#pragma once

#include <optional>
#include <tuple>

#include <ATen/ATen.h>

namespace fusedrnn {

using OptTensor = std::optional<at::Tensor>;
using Tensor3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using Tensor6 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Tensor7 =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Tensor8 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                           at::Tensor, at::Tensor>;

// The C++ signatures of the ops, argument for argument as in the schemas of csrc/ops.cpp.
using LstmLayerFn = Tensor3(const at::Tensor& input, const at::Tensor& weight_ih,
                            const at::Tensor& weight_hh, const OptTensor& bias_ih,
                            const OptTensor& bias_hh, const OptTensor& h0, const OptTensor& c0,
                            const OptTensor& weight_hr, const OptTensor& lengths,
                            const OptTensor& batch_sizes, bool reverse,
                            std::optional<double> grad_clip, c10::string_view grad_clip_mode,
                            std::optional<int64_t> truncate, std::optional<double> cell_clip,
                            const OptTensor& grad_record);

using LstmForwardFn = Tensor6(const at::Tensor& input, const at::Tensor& weight_ih,
                              const at::Tensor& weight_hh, const OptTensor& bias_ih,
                              const OptTensor& bias_hh, const OptTensor& h0, const OptTensor& c0,
                              const OptTensor& weight_hr, const OptTensor& lengths,
                              const OptTensor& batch_sizes, bool reverse,
                              std::optional<double> cell_clip);

// -> (d_input, d_h0, d_c0, d_weight_ih, d_weight_hh, d_bias, d_weight_hr, record); gradients
// not asked for are empty tensors; d_bias serves bias_ih and bias_hh alike; record is [2, T]
// float32 with track_grad_norms (Note [Recording recurrent gradient norms]), else empty.
using LstmBackwardFn = Tensor8(
    const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
    const at::Tensor& input, const at::Tensor& weight_ih, const at::Tensor& weight_hh,
    const OptTensor& weight_hr, const OptTensor& h0, const OptTensor& c0,
    const OptTensor& lengths, const OptTensor& batch_sizes, const at::Tensor& output,
    const at::Tensor& act, const at::Tensor& c_raw, const at::Tensor& h_pre, bool reverse,
    std::optional<double> grad_clip, c10::string_view grad_clip_mode,
    std::optional<int64_t> truncate, std::optional<double> cell_clip, bool has_bias,
    bool need_input_grad, bool need_weight_grad, bool track_grad_norms);

using GruLayerFn = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor& input, const at::Tensor& weight_ih, const at::Tensor& weight_hh,
    const OptTensor& bias_ih, const OptTensor& bias_hh, const OptTensor& h0,
    const OptTensor& lengths, const OptTensor& batch_sizes, bool reverse,
    std::optional<double> grad_clip, c10::string_view grad_clip_mode,
    std::optional<int64_t> truncate, const OptTensor& grad_record);

using GruForwardFn = Tensor3(const at::Tensor& input, const at::Tensor& weight_ih,
                             const at::Tensor& weight_hh, const OptTensor& bias_ih,
                             const OptTensor& bias_hh, const OptTensor& h0,
                             const OptTensor& lengths, const OptTensor& batch_sizes,
                             bool reverse);

// -> (d_input, d_h0, d_weight_ih, d_weight_hh, d_bias_ih, d_bias_hh, record)
using GruBackwardFn = Tensor7(
    const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& input,
    const at::Tensor& weight_ih, const at::Tensor& weight_hh, const OptTensor& h0,
    const OptTensor& lengths, const OptTensor& batch_sizes, const at::Tensor& output,
    const at::Tensor& saved, bool reverse, std::optional<double> grad_clip,
    c10::string_view grad_clip_mode, std::optional<int64_t> truncate, bool has_bias,
    bool need_input_grad, bool need_weight_grad, bool track_grad_norms);

}  // namespace fusedrnn
