// The entry points bound in fusedrnn._C (csrc/fusedrnn.cpp). Each checks its arguments
// (csrc/checks.h) and dispatches on device and dtype.
//
// Layouts (Note [Padded and packed layouts] in checks.h): input [T, B, I] with optional
// lengths, or packed input [N, I] with batch_sizes; per-step outputs and saved tensors are
// [T, B, *] or [N, *] accordingly. Shapes below are written for the padded layout.
//
// Saved tensors (returned by the forward, handed back to the backward):
//   LSTM: act [T, B, 4H] gate activations, c_raw [T, B, H] pre-clip cell states (empty when
//         save == false), h_pre [T, B, H] unprojected h (projection only, else empty).
//   GRU:  saved [T, B, 4H] = r, z, n, h W_hn^T + b_hn (empty when save == false).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>

namespace fusedrnn {

using OptTensor = std::optional<at::Tensor>;

// -> {output [T, B, R], h_n [B, R], c_n [B, H], act, c_raw, h_pre}
std::vector<at::Tensor> lstm_forward(const at::Tensor& input, const at::Tensor& weight_ih,
                                     const at::Tensor& weight_hh, const OptTensor& bias_ih,
                                     const OptTensor& bias_hh, const OptTensor& h0,
                                     const OptTensor& c0, const OptTensor& weight_hr,
                                     const OptTensor& lengths, const OptTensor& batch_sizes,
                                     bool reverse, std::optional<double> cell_clip, bool save);

// -> {d_input, d_h0, d_c0, d_weight_ih, d_weight_hh, d_bias, d_weight_hr, record}; a gradient
// that was not asked for (need_input_grad / need_weight_grad / has_bias / projection) is
// empty. d_bias is the gradient of bias_ih and of bias_hh alike. record is [2, T] float32
// with track_grad_norms (row 0: L2 norm of dh_rec_t before clipping, row 1: the fraction the
// clip changed; Note [Recording recurrent gradient norms] in rnn_params.h), else empty.
std::vector<at::Tensor> lstm_backward(
    const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
    const at::Tensor& input, const at::Tensor& weight_ih, const at::Tensor& weight_hh,
    const OptTensor& weight_hr, const OptTensor& h0, const OptTensor& c0,
    const OptTensor& lengths, const OptTensor& batch_sizes, const at::Tensor& output,
    const at::Tensor& act, const at::Tensor& c_raw, const at::Tensor& h_pre, bool reverse,
    std::optional<double> grad_clip, const std::string& grad_clip_mode,
    std::optional<int64_t> truncate, std::optional<double> cell_clip, bool has_bias,
    bool need_input_grad, bool need_weight_grad, bool track_grad_norms);

// -> {output [T, B, H], h_n [B, H], saved}
std::vector<at::Tensor> gru_forward(const at::Tensor& input, const at::Tensor& weight_ih,
                                    const at::Tensor& weight_hh, const OptTensor& bias_ih,
                                    const OptTensor& bias_hh, const OptTensor& h0,
                                    const OptTensor& lengths, const OptTensor& batch_sizes,
                                    bool reverse, bool save);

// -> {d_input, d_h0, d_weight_ih, d_weight_hh, d_bias_ih, d_bias_hh, record} (record as for
// lstm_backward)
std::vector<at::Tensor> gru_backward(
    const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& input,
    const at::Tensor& weight_ih, const at::Tensor& weight_hh, const OptTensor& h0,
    const OptTensor& lengths, const OptTensor& batch_sizes, const at::Tensor& output,
    const at::Tensor& saved, bool reverse,
    std::optional<double> grad_clip, const std::string& grad_clip_mode,
    std::optional<int64_t> truncate, bool has_bias, bool need_input_grad,
    bool need_weight_grad, bool track_grad_norms);

}  // namespace fusedrnn
