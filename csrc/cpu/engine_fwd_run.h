// The CPU forward engine as the layer drivers (lstm_cpu.cpp, gru_cpu.cpp) call it; see
// Note [CPU time-loop engine] in engine_fwd.cpp.
#pragma once

#include <optional>

#include <ATen/ATen.h>

#include "../checks.h"

namespace fusedrnn {
namespace cpu {

// Whether the float32 forward of this layer call runs on the engine: the mode
// (dispatch.h: Engine / Steps / Auto) and, for Auto, the measured crossover rule.
// G: 4 (LSTM) or 3 (GRU); P: projection size, 0 without; save: a backward will follow.
bool use_forward_engine(const LayerSizes& s, int64_t G, int64_t P, bool save);

// The whole LSTM time loop of one layer call (float32). In: gates [N, 4H] = x W_ih^T + b,
// h [B, R] and c [B, H] the initial state. Out: gates hold the activations (act), y [N, R],
// h and c the final state, c_raw [N, H] when save, h_pre [N, H] with projection; exactly as
// lstm_forward_impl's per-step loop leaves them.
// With `input` (Note [Engine input part] in engine_fwd.cpp) the engine computes the x part
// itself and gates is only written (when save; a placeholder otherwise).
struct EngineInputArgs {
  at::Tensor x;     // [N, I], contiguous
  at::Tensor w_ih;  // [G * H, I]
  std::optional<at::Tensor> bias;  // [G * H] (input_bias), or none
};
void lstm_forward_engine(const LayerSizes& s, at::Tensor& gates, const at::Tensor& w_hh,
                         const OptTensor& w_hr, at::Tensor& y, at::Tensor& h, at::Tensor& c,
                         at::Tensor& c_raw, at::Tensor& h_pre, bool reverse,
                         std::optional<double> cell_clip, bool save,
                         const EngineInputArgs* input = nullptr,
                         const OptTensor& x_bias = std::nullopt);

// Whether an engine call computes the x part itself (Note [Engine input part]).
bool engine_input_part(const LayerSizes& s, int64_t G, int64_t P);

// The whole GRU time loop (float32). In: xg [N, 3H], b_hn [H] (undefined without bias),
// h [B, H] the initial state. Out: y [N, H], h the final state, saved [N, 4H] when defined.
// With `input` the engine computes xg itself (Note [Engine input part]); xg is then unused.
// x_bias (without `input` only, both engines): the bias that the all-steps product left out
// of gates / xg, added as the engine reads them (Note [Bias of the all-steps product]).
void gru_forward_engine(const LayerSizes& s, const at::Tensor& xg, const at::Tensor& w_hh,
                        const at::Tensor& b_hn, at::Tensor& y, at::Tensor& h, at::Tensor& saved,
                        bool reverse, const EngineInputArgs* input = nullptr,
                        const OptTensor& x_bias = std::nullopt);

}  // namespace cpu
}  // namespace fusedrnn
