// Launchers of the CUDA pointwise kernels: plain C++ functions over the structs of
// cuda_params.h and a cudaStream_t, defined in lstm_kernels.cu, gru_kernels.cu and
// state_kernels.cu for T = float, double, __half and __nv_bfloat16. Torch-free, so the glue
// (csrc/cuda_glue/) compiles with the host compiler and the kernels with nvcc alone.
//
// Each launcher enqueues one kernel on `stream` and returns cudaGetLastError() (the glue
// wraps it in C10_CUDA_CHECK). None of them synchronises or allocates.
#pragma once

#include <cuda_runtime_api.h>

#include "cuda_params.h"

namespace fusedrnn {
namespace cuda {

// LSTM forward step: activations, cell update, optional cell clip, h = o * tanh(c).
template <typename T>
cudaError_t lstm_fwd_step(const LstmFwdArgs<T>& p, cudaStream_t stream);

// Projection: copy y_t into the running state for the rows that exist at t.
template <typename T>
cudaError_t copy_state_rows(const CopyRowsArgs<T>& p, cudaStream_t stream);

// LSTM backward step (clip / truncation of the recurrent gradients, gate gradients).
template <typename T>
cudaError_t lstm_bwd_step(const LstmBwdArgs<T>& p, cudaStream_t stream);

// Projection: total gradient of the projected state at step t.
template <typename T>
cudaError_t proj_bwd_step(const ProjBwdArgs<T>& p, cudaStream_t stream);

// GRU forward and backward steps.
template <typename T>
cudaError_t gru_fwd_step(const GruFwdArgs<T>& p, cudaStream_t stream);
template <typename T>
cudaError_t gru_bwd_step(const GruBwdArgs<T>& p, cudaStream_t stream);

// Clipped (or plain) gradient into h0 / c0, cast to T.
template <typename T>
cudaError_t state_grad(const StateGradArgs<T>& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace fusedrnn
