// The layer functions every backend implements (csrc/cpu/ and csrc/cuda_glue/), declared
// once as function types over one argument struct each: each backend's header declares its
// four with them (cpu_ops.h, cuda_ops.h), so the arguments are listed here only. Arguments
// are already checked (csrc/rnn_ops.cpp); outputs and saved-tensor layouts are the same for
// every backend (csrc/rnn_ops.h for their meaning, LayerSizes in checks.h for the layouts).
//
// Note [One driver per backend]
// The CPU drivers (csrc/cpu/lstm_cpu.cpp, gru_cpu.cpp) and the CUDA ones (csrc/cuda_glue/
// lstm_cuda.cpp, gru_cuda.cpp) run the same algorithm (all-steps input GEMM, a time loop,
// all-steps weight-gradient GEMMs) but are written separately on purpose: the CPU loop is
// either the persistent engine (one parallel region for the whole call, its own packed
// weights and recurrent buffers) or a per-step loop over CPU function tables, with no
// device, stream or storage/arithmetic type split; the CUDA loop issues stream-ordered
// cuBLAS GEMMs and kernel launches with half-precision storage and float32 arithmetic
// buffers (Note [Storage and arithmetic types] in csrc/cuda/cuda_params.h). What the two
// share is shared code: the argument checks and LayerSizes (checks.h, with step_major for
// the returned layouts), the kernel parameter structs (rnn_params.h: StepInfo,
// GradOptions), the row bookkeeping and option switches (kernel_common.h), the gradient
// record's finish (grad_record.h), and the contract these declarations state.
#pragma once

#include <optional>
#include <vector>

#include <ATen/ATen.h>

#include "checks.h"
#include "rnn_params.h"

namespace fusedrnn {

// The arguments of the layer functions, by name. The op schemas (csrc/ops.cpp) and
// csrc/rnn_ops.h say what each one is; csrc/rnn_ops.cpp checks them and fills these
// structs, so the backends receive checked arguments and read them as `a.name`.
// Shapes: x (T, B, I) or packed (N, I); weights as torch.nn.LSTM / GRU (w_hh (G*H, R),
// w_hr (P, H)); states (B, R) and (B, H); saved tensors and gradients in the layouts of
// csrc/rnn_ops.h.

// What a backward call is asked to return besides the state gradients.
struct GradRequest {
  bool input;   // dx
  bool weight;  // dW_ih, dW_hh (, dW_hr)
  bool bias;    // the bias gradients (with weight)
  bool record;  // the gradient record (docs/design.md §8)
};

// The inputs every forward call takes (the LSTM adds c0 and w_hr).
struct LayerInputs {
  const at::Tensor& x;
  const at::Tensor& w_ih;
  const at::Tensor& w_hh;
  const OptTensor& b_ih;
  const OptTensor& b_hh;
  const OptTensor& h0;
};

struct LstmForwardArgs : LayerInputs {
  const OptTensor& c0;
  const OptTensor& w_hr;
  bool reverse;
  std::optional<double> cell_clip;
  bool save;  // return what the backward reads (act, c_raw); otherwise they are empty
};

struct LstmBackwardArgs {
  const at::Tensor& dy;  // gradients of output, h_n, c_n
  const at::Tensor& dh_n;
  const at::Tensor& dc_n;
  const at::Tensor& x;  // inputs of the forward
  const at::Tensor& w_ih;
  const at::Tensor& w_hh;
  const OptTensor& w_hr;
  const OptTensor& h0;
  const OptTensor& c0;
  const at::Tensor& y;  // saved by the forward: output, act, c_raw, h_pre
  const at::Tensor& act;
  const at::Tensor& c_raw;
  const at::Tensor& h_pre;
  bool reverse;
  GradOptions<double> opt;
  std::optional<double> cell_clip;
  GradRequest need;
};

struct GruForwardArgs : LayerInputs {
  bool reverse;
  bool save;  // return `saved` (r, z, n, hn of every step); otherwise it is empty
};

struct GruBackwardArgs {
  const at::Tensor& dy;  // gradients of output, h_n
  const at::Tensor& dh_n;
  const at::Tensor& x;  // inputs of the forward
  const at::Tensor& w_ih;
  const at::Tensor& w_hh;
  const OptTensor& h0;
  const at::Tensor& y;  // saved by the forward: output, saved
  const at::Tensor& saved;
  bool reverse;
  GradOptions<double> opt;
  GradRequest need;
};

// {output, h_n, c_n, act, c_raw, h_pre}
using LstmForwardImpl = std::vector<at::Tensor>(const LayerSizes& s, const LstmForwardArgs& a);
// {dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr, record}
using LstmBackwardImpl = std::vector<at::Tensor>(const LayerSizes& s, const LstmBackwardArgs& a);
// {output, h_n, saved}
using GruForwardImpl = std::vector<at::Tensor>(const LayerSizes& s, const GruForwardArgs& a);
// {dx, dh0, dw_ih, dw_hh, db_ih, db_hh, record}
using GruBackwardImpl = std::vector<at::Tensor>(const LayerSizes& s, const GruBackwardArgs& a);

}  // namespace fusedrnn
