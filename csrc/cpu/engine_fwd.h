// Plain parameter structs and the kernel table of the CPU forward engine (float32); see
// Note [CPU time-loop engine] in engine_fwd.cpp. Included by the per-capability translation
// units (capability_<name>.cpp, Note [CPU capability dispatch]): raw pointers and
// sizes only, nothing of torch or std. Shape letters as in rnn_params.h; M is the number of
// rows of the step (s.rows[t], a prefix of the B rows), W the capability's unit width (SIMD
// lanes), G the gates per unit (LSTM 4, GRU 3, projection 1).
#pragma once

#include "../rnn_params.h"

namespace fusedrnn {
namespace cpu {

// Note [Engine panel layout]
// The weight rows of the units a thread owns, packed once per call: units in blocks of W
// (the last block of H zero-padded), and block j holds its K weight columns one after the
// other, each as G vectors of W lanes:
//   panel[j][k][g][l] = weight[g * U + j * W + l][k]     ([ceil(U / W), K, G, W])
// for a weight [G * U, K] (W_hh: U = H, K = R; W_hr: G = 1, U = P, K = H). The micro-kernel
// walks one block (or a few neighbouring blocks) with k: each k loads G (x NB) vectors and
// broadcasts one input value per row, so every load is contiguous and feeds all rows.
inline int64_t panel_floats(int64_t G, int64_t U, int64_t K, int64_t W) {
  return (U + W - 1) / W * W * G * K;
}

// Whether the micro-kernel prefetches its panel a few columns ahead (Note [Panel prefetch]
// in engine_fwd.cpp).
bool engine_panel_prefetch();

// Note [Engine input part] (engine_fwd.cpp): a step's x W_ih^T + bias computed by the
// engine for the thread's rows and units; x == nullptr: not computed (the step reads it from
// the all-steps buffer: LstmEngineStep::gates, GruEngineStep::xg).
struct EngineInput {
  const float* x;      // [M, K] the step's input rows, or nullptr
  const float* panel;  // W_ih packed (Note [Engine panel layout]), U = H, K = I
  const float* bias;   // [G * H] (input_bias), or nullptr
  int64_t K;           // I
};

// One LSTM step for the units of one thread (everything per row as in LstmFwdStep).
struct LstmEngineStep {
  int64_t M, B, H, R;
  int64_t t;               // the time step (for lengths)
  const int64_t* lengths;  // [B] or nullptr
  const float* panel;      // W_hh packed (Note [Engine panel layout]), G = 4, U = H, K = R
  const float* h_prev;     // [B, R] state entering the step (all units; read only)
  float* h_next;           // [B, R] state leaving the step, or nullptr (projection)
  float* gates;            // [M, 4H] in (no input.x): x W_ih^T + b_ih + b_hh of the step;
                           // out: activations (only when saving, c_raw != nullptr)
  float* c;                // [B, H] running cell state (unchanged for absent rows)
  float* c_raw;            // [M, H] out: cell state before the clip, or nullptr: not saving
  float* h_out;            // [M, H] out: o * tanh(c_t) (the output, or h_pre with projection)
  float cell_clip;
  bool has_cell_clip;
  EngineInput input;       // G = 4, bias b_ih + b_hh; with input.x gates is only written
  const float* x_bias;     // [4H] or nullptr: without input.x, added to the x part read from
                           // gates (Note [Bias of the all-steps product])
};

// One GRU step for the units of one thread (as in GruFwdStep).
struct GruEngineStep {
  int64_t M, B, H;
  int64_t t;
  const int64_t* lengths;
  const float* panel;   // W_hh packed, G = 3, U = H, K = H
  const float* h_prev;  // [B, H]
  float* h_next;        // [B, H]
  const float* xg;      // [M, 3H] x W_ih^T + b_ih (+ b_hh for r and z)
  const float* b_hn;    // [H] or nullptr
  float* saved;         // [M, 4H] out: r, z, n, h W_hn^T + b_hn, or nullptr
  float* h_out;         // [M, H] out: h_t (zero for absent rows)
  EngineInput input;     // G = 3, bias b_ih + (b_hr, b_hz, 0); with input.x, xg is unused
  const float* x_bias;    // [3H] or nullptr: without input.x, added to the x part read from
                          // xg (Note [Bias of the all-steps product])
};

// The projection of one LSTM step for the outputs p of one thread: r_t = h_t W_hr^T.
struct ProjEngineStep {
  int64_t M, B, H, P;
  int64_t t;
  const int64_t* lengths;
  const float* panel;   // W_hr packed, G = 1, U = P, K = H
  const float* h_pre;   // [M, H] o * tanh(c_t) of the step (all units)
  const float* r_prev;  // [B, P] projected state entering the step
  float* r_next;        // [B, P] projected state leaving it
  float* y;             // [M, P] out: r_t (zero for absent rows)
};

// The engine's kernels for one CPU capability. Unit ranges [u0, u1) start at a multiple of
// `width`; rows [M, B) (rows a packed step does not have) carry their state.
struct EngineFwdKernels {
  int64_t width;  // W
  // Pack units [u0, u1) of weight [G * U, K] into `panel` (the whole call's panel).
  void (*pack)(const float* weight, int64_t G, int64_t U, int64_t K, int64_t u0, int64_t u1,
               float* panel);
  void (*lstm_step)(const LstmEngineStep& p, int64_t u0, int64_t u1);
  void (*gru_step)(const GruEngineStep& p, int64_t u0, int64_t u1);
  void (*proj_step)(const ProjEngineStep& p, int64_t p0, int64_t p1);
  // The x part of M rows (row m at in.x + m * in.K) for units [u0, u1) of G gates:
  // out[m * ldo + g * U + u] = sum_k x[m][k] W_ih[g * U + u][k] (k ascending, from zero)
  // + bias[g * U + u], the same arithmetic as the input part of a step (EngineInput).
  void (*input_rows)(const EngineInput& in, int64_t G, int64_t M, int64_t U, int64_t u0,
                     int64_t u1, float* out, int64_t ldo);
};

}  // namespace cpu
}  // namespace fusedrnn
