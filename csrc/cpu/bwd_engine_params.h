// Plain structs of the CPU backward engine's kernels (Note [CPU backward engine] in
// bwd_engine.cpp). Like rnn_params.h this header is included by the per-capability
// translation units (capability_<name>.cpp), so it includes nothing but rnn_params.h.
//
// Shape letters as in rnn_params.h, plus
//   M  rows of the current step (s.rows[t]),
//   K  rows of W_hh = columns of the gate gradients (4H LSTM, 3H GRU),
//   Rp R rounded up to whole 16-unit blocks: the row stride of the engine's own recurrent
//      buffers (dh_gemm, dh_carry, dc_rec), so the micro-kernel always stores whole blocks,
//   nblk = Rp / 16 (or Hp / 16 for the cell-state partials).
#pragma once

#include "../rnn_params.h"

namespace fusedrnn {
namespace cpu {

// Units per block: the column width of a packed W_hh panel, the granularity of a thread's
// slice and of the per-row partial sums of squares (whatever the SIMD width, so that results
// do not depend on the capability's width or on the thread count).
constexpr int64_t kEngineBlock = 16;

// C[i, blk*16 .. blk*16+15] = sum_k A[i, k] Bp[blk][k][0..15] for rows i < M and blocks
// blk0 <= blk < blk1. Every output element is one float32 FMA chain over k = 0..K-1 in
// order, whatever the register blocking, so the result does not depend on how blocks are
// split between threads.
template <typename T>
struct EngineGemm {
  int64_t M, K;
  const T* A;     // [M, lda] row-major (dgates_t or dhg_t)
  int64_t lda;
  const T* Bp;    // [nblk][K][16] packed W_hh^T columns: panel blk at Bp + blk * K * 16
  T* C;           // [M, ldc]
  int64_t ldc;
  int64_t blk0, blk1;
  // A stored by columns: element (i, k) at A[k * lda + i] (the weight gradients' a^T b, with
  // a [K, M] row-major: Note [Weight gradients on the engine kernel] in bwd_engine.cpp).
  bool a_by_columns = false;
};

// Per-row, per-block partials of a recurrent gradient a + b (b may be nullptr), both [M, ld]
// with zero padding beyond the real units: sq[i * nblk + blk] = sum of squares over the
// block, and with cnt: how many of its elements the value clip changes (|v| > clip or NaN).
template <typename T>
struct EnginePartials {
  int64_t M, ld, nblk;
  const T* a;
  const T* b;
  T* sq;    // [M, nblk]
  T* cnt;   // [M, nblk] or nullptr
  T clip;
};

// One LSTM backward step (no projection, or projection with dh_direct), pointwise part, for
// the hidden units [k0, k1) of one thread and all M rows of the step. Semantics of
// LstmBwdStep (rnn_params.h), with the engine's padded [B, Hp] recurrent buffers.
template <typename T>
struct LstmBwdUnits {
  int64_t M, H, Hp;
  StepInfo step;
  GradOptions<T> opt;
  const T* act;         // [M, 4H] saved activations at t
  const T* c_raw;       // [M, H]  saved pre-clip cell state at t
  const T* c_raw_prev;  // [., H]  at the previous processed time, or nullptr
  const T* c0;          // [B, H]  or nullptr (zeros)
  const T* dy;          // [M, H]  no projection
  const T* dh_n;        // [B, H]  no projection
  const T* dc_n;        // [B, H]
  const T* dh_direct;   // [B, Hp] projection: gradient of o * tanh(c_t) (clip / cut applied); else nullptr
  const T* dh_gemm;     // [B, Hp] no projection: dgates_{t+1} W_hh
  T* dh_carry;          // [B, Hp] no projection: carried part (Note [Recurrent gradient buffers])
  T* dc_rec;            // [B, Hp] in: gradient into c_t; out: into c_{t-1}
  const T* part_h;      // [M, nblk_h] norm mode, no projection: partials of dh_gemm + dh_carry
  const T* part_c;      // [M, nblk_c] norm mode: partials of dc_rec
  int64_t nblk_h, nblk_c;
  T* dgates;            // [M, 4H] out
  T cell_clip;
  bool has_cell_clip;
};

// Projection: dr_t (the total gradient of the projected state) for the units [k0, k1) of P.
template <typename T>
struct ProjBwdUnits {
  int64_t M, P, Pp;
  StepInfo step;
  GradOptions<T> opt;
  const T* dy;        // [M, P]
  const T* dh_n;      // [B, P]
  const T* dh_gemm;   // [B, Pp]
  T* dh_carry;        // [B, Pp]
  const T* part_h;    // [M, nblk] norm mode
  int64_t nblk;
  T* dr;              // [M, P] out (the saved dr of all steps, for dW_hr)
  T* dr_pad;          // [B, Pp] out: the same rows in the padded layout (the A of dr W_hr)
};

// One GRU backward step, pointwise part, for the hidden units [k0, k1): GruBwdStep semantics.
template <typename T>
struct GruBwdUnits {
  int64_t M, H, Hp;
  StepInfo step;
  GradOptions<T> opt;
  const T* saved;    // [M, 4H] r, z, n, hn at t
  const T* h_prev;   // [., H]  output at the previous processed time, or nullptr
  const T* h0;       // [B, H]  or nullptr
  const T* dy;       // [M, H]
  const T* dh_n;     // [B, H]
  const T* dh_gemm;  // [B, Hp]
  T* dh_carry;       // [B, Hp]
  const T* part_h;   // [M, nblk] norm mode
  int64_t nblk;
  T* dxg;            // [M, 3H] out
  T* dhg;            // [M, 3H] out
};

// The engine's kernels for one scalar type and one CPU capability. The *_units kernels take
// a unit range [k0, k1) of the hidden (or projected) units; partials a block range.
// out[r * G + g] = sum_k a[k * lda + g] b[k * ldb + r] for r < R <= kThinMaxR: a weight
// gradient a^T b with few columns R (I = 1 forecasting inputs), stored transposed [R, G].
// Columns g come in chunks of kThinChunk; a call covers chunks [c0, c1).
constexpr int64_t kThinMaxR = 8, kThinChunk = 32;
template <typename T>
struct ThinOuter {
  int64_t K, G, R;
  const T* a;
  int64_t lda;
  const T* b;
  int64_t ldb;
  T* out;  // [R, G]
};

template <typename T>
struct BwdEngineTable {
  void (*gemm)(const EngineGemm<T>&);
  void (*thin_outer)(const ThinOuter<T>&, int64_t c0, int64_t c1);
  void (*partials)(const EnginePartials<T>&, int64_t blk0, int64_t blk1);
  void (*lstm_units)(const LstmBwdUnits<T>&, int64_t k0, int64_t k1);
  void (*proj_units)(const ProjBwdUnits<T>&, int64_t k0, int64_t k1);
  void (*gru_units)(const GruBwdUnits<T>&, int64_t k0, int64_t k1);
};

}  // namespace cpu
}  // namespace fusedrnn
