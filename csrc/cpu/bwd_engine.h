// The persistent CPU backward engine (Note [CPU backward engine] in bwd_engine.cpp): the
// backward time loop of one LSTM / GRU layer call in one parallel region. The drivers
// (lstm_cpu.cpp, gru_cpu.cpp) call it in place of their per-step loop and keep everything
// after the loop (h0 / c0 clip, the all-steps GEMMs, the record's reduction).
#pragma once

#include <optional>
#include <string>
#include <utility>

#include <ATen/ATen.h>

#include "../checks.h"
#include "../rnn_params.h"

namespace fusedrnn {
namespace cpu {

// Whether the engine runs a float32 backward call of this shape: engine_mode() (Steps: never,
// Engine: always), else the measured crossover rule (see bwd_engine.cpp). gates: 4 or 3.
bool bwd_engine_selected(const LayerSizes& s, int gates);

// The LSTM backward time loop. Outputs (allocated by the caller, any content):
//   dgates [N, 4H], dh0 [B, R], dc0 [B, H] (unclipped: the caller clips h0 / c0 gradients),
//   dr [N, P] with projection, record [N, 3] when the grad record is on (else undefined).
// With db: *db = the bias gradient, the sum of dgates' rows [4H], summed in the loop (Note
// [Bias gradient in the time loop] in bwd_engine.cpp).
// Inputs as lstm_backward_impl has them (contiguous float32); h [N, H] is the saved h_t = o *
// tanh(c_t) (the output, or h_pre with projection).
void lstm_bwd_engine(const LayerSizes& s, bool reverse, const GradOptions<float>& opt,
                     std::optional<double> cell_clip, const at::Tensor& w_hh,
                     const OptTensor& w_hr, const at::Tensor& act, const at::Tensor& c_raw,
                     const at::Tensor& h, const OptTensor& c0, const at::Tensor& dy,
                     const at::Tensor& dhn, const at::Tensor& dcn, at::Tensor& dgates,
                     at::Tensor& dh0, at::Tensor& dc0, at::Tensor& dr, at::Tensor& record,
                     at::Tensor* db);

// The GRU backward time loop. Outputs: dxg, dhg [N, 3H], dh0 [B, H] (unclipped), record; with
// db_ih / db_hh the sums of dxg's / dhg's rows [3H] (the bias gradients), as for the LSTM.
void gru_bwd_engine(const LayerSizes& s, bool reverse, const GradOptions<float>& opt,
                    const at::Tensor& w_hh, const at::Tensor& saved, const at::Tensor& y,
                    const OptTensor& h0, const at::Tensor& dy, const at::Tensor& dhn,
                    at::Tensor& dxg, at::Tensor& dhg, at::Tensor& dh0, at::Tensor& record,
                    at::Tensor* db_ih, at::Tensor* db_hh);

// Nanoseconds spent inside the engine's run_team regions so far (all calls, all threads'
// wall time once per call): lets benchmarks separate the time loop from the all-steps GEMMs.
int64_t bwd_engine_loop_ns();

// a^T b for float32 a [K, G], b [K, R] on the engine's kernels (Note [Weight gradients on
// the engine kernel] in bwd_engine.cpp), where engine_outer_sum_applies: outer_sum's path
// for every float32 weight gradient past its direct loops.
bool engine_outer_sum_applies(const at::Tensor& a, const at::Tensor& b);
at::Tensor engine_outer_sum(const at::Tensor& a, const at::Tensor& b);
// An LSTM layer's (dW_ih, dW_hh) as one product on the engine's kernels (Note [One product
// for the LSTM weight gradients] in bwd_engine.cpp): dgates [N, 4H], x2d [N, I], the
// outputs y (the previous states), h0; nullopt where it does not apply (outer_sum and
// recurrent_weight_grad then compute them).
std::optional<std::pair<at::Tensor, at::Tensor>> engine_lstm_weight_grads(
    const LayerSizes& s, const at::Tensor& dgates, const at::Tensor& x2d, const at::Tensor& y,
    const OptTensor& h0, bool reverse);
// Where rows_times computes an input gradient a w (dgates W_ih) past its direct loops (Note
// [Input gradients on the engine kernel] in bwd_engine.cpp): engine_rows_times (float32
// a [M, K], w [K, N] contiguous), at::mm, or rows_times' own choice (oneDNN / at::mm).
// With at most kThinMaxR columns (Thin): engine_thin_rows_times (Note [Thin input
// gradients]).
enum class InputGradPath { Engine, Thin, Mm, Default };
InputGradPath input_grad_path(const at::Tensor& a, const at::Tensor& w);
at::Tensor engine_rows_times(const at::Tensor& a, const at::Tensor& w);
at::Tensor engine_thin_rows_times(const at::Tensor& a, const at::Tensor& w);
// "engine" or "blas" (FUSEDRNN_WEIGHT_GRAD=blas at start, or set_weight_grad_backend, puts
// them back on outer_sum's BLAS paths: for tests and benchmarks).
std::string weight_grad_backend();
std::string set_weight_grad_backend(const std::string& name);

}  // namespace cpu
}  // namespace fusedrnn
