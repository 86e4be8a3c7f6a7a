// CUDA implementations of the layer ops: the same functions, arguments, outputs and saved
// tensor layouts as the CPU ones (csrc/cpu/cpu_ops.h), so fusedrnn/ops.py is device-agnostic.
// Arguments are already checked (csrc/rnn_ops.cpp); see csrc/rnn_ops.h for their meaning and
// LayerSizes in checks.h for the layouts. Only compiled with FUSEDRNN_WITH_CUDA.
#pragma once

#include <optional>
#include <vector>

#include <ATen/ATen.h>

#include "../checks.h"
#include "../rnn_params.h"

namespace fusedrnn {
namespace cuda {

std::vector<at::Tensor> lstm_forward(const LayerSizes& s, const at::Tensor& x,
                                     const at::Tensor& w_ih, const at::Tensor& w_hh,
                                     const OptTensor& b_ih, const OptTensor& b_hh,
                                     const OptTensor& h0, const OptTensor& c0,
                                     const OptTensor& w_hr, bool reverse,
                                     std::optional<double> cell_clip, bool save);

std::vector<at::Tensor> lstm_backward(
    const LayerSizes& s, const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n,
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh, const OptTensor& w_hr,
    const OptTensor& h0, const OptTensor& c0, const at::Tensor& y, const at::Tensor& act,
    const at::Tensor& c_raw, const at::Tensor& h_pre, bool reverse,
    const GradOptions<double>& opt, std::optional<double> cell_clip, bool has_bias,
    bool need_input_grad, bool need_weight_grad, bool track_grad_norms);

std::vector<at::Tensor> gru_forward(const LayerSizes& s, const at::Tensor& x,
                                    const at::Tensor& w_ih, const at::Tensor& w_hh,
                                    const OptTensor& b_ih, const OptTensor& b_hh,
                                    const OptTensor& h0, bool reverse, bool save);

std::vector<at::Tensor> gru_backward(const LayerSizes& s, const at::Tensor& dy,
                                     const at::Tensor& dh_n, const at::Tensor& x,
                                     const at::Tensor& w_ih, const at::Tensor& w_hh,
                                     const OptTensor& h0, const at::Tensor& y,
                                     const at::Tensor& saved, bool reverse,
                                     const GradOptions<double>& opt, bool has_bias,
                                     bool need_input_grad, bool need_weight_grad,
                                     bool track_grad_norms);

}  // namespace cuda
}  // namespace fusedrnn
