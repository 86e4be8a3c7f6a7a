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

// Note [Panel stride]
// Floats from one packed panel [K][16] to the next: K * 16 plus two cache lines. Back to
// back, panels are K * 64 bytes apart, a multiple of 4 KiB whenever K is a multiple of 64
// (K = 4H or 3H, or T*B rows): the same k of neighbouring panels then falls into one L1 set,
// and a single-row step, whose register tile reads 8 panels side by side (Blocking::NB1),
// loads 8 lines of one set per k, as many as the set holds. With the pad they fall into
// neighbouring sets. Paired, one process, 2-core AMD EPYC (Zen 4, 32 KiB 8-way L1d),
// padded / unpadded backward time loop: LSTM T=128 B=1 H=256 1.06-1.10x, GRU 1.03-1.06x;
// B=8 and B=32 within 1%, whole training calls within noise
// (benchmarks/results/amd-epyc-2026-12-04-panel-stride-ab.md).
constexpr int64_t kPanelPad = 2 * 64 / static_cast<int64_t>(sizeof(float));
inline int64_t panel_stride_for(int64_t K) { return K * kEngineBlock + kPanelPad; }

// k comes in blocks of 128 terms, each summed in its own FMA chain and then added to the
// running result in block order. Accuracy: one float32 chain over all K = 4H terms (1024 at
// H = 256) gave gradients into h0 with 1.9x torch.nn's error against float64, at the edge of
// the project's 2x rule; chains of 128 plus K / 128 block sums keep the rounding growth
// near BLAS's. Speed: with more rows than one register tile, a panel group's k-block
// (4 panels x 128 x 64 bytes = 32 KiB) stays in L1 while every row tile reads it, instead of
// streaming the whole group from L2 once per tile. The block boundaries are fixed (not
// chosen by M or by the thread's slice), so results stay independent of the thread count.
constexpr int64_t kKBlock = 128;

// The weight gradients (EngineGemm::a_by_columns) sum over all T*B rows: K runs to
// thousands, and with the panel groups outermost every group streamed the thread's whole
// slice of a (K x M floats, 8 MiB at K = 4096, M = 512) from L3 again. So k comes in
// super-blocks of whole k-blocks whose rows of a and panels of b fit kSuperBytes together,
// and every panel group runs inside one: a is read from L3 once. Each output still gets its
// k-blocks in ascending order, so the sums (and bits) are the same. Measured
// (_C._outer_sum, 2 threads, a 2-core Xeon whose L3 reads ~18 GB/s per core; GFLOP/s before
// -> after, best of 5): K=4096 G=1024 R=256 78 -> 130, K=4096 G=1536 R=256 71 -> 105,
// K=6400 G=2048 R=512 68 -> 109-161, K=2048 G=1024 R=1024 84 -> 137; K=1024 (one
// super-block) unchanged.
constexpr int64_t kSuperBytes = int64_t(1) << 20;

// Terms per super-block for M rows of a and nblk panels of elements of `elem` bytes.
inline int64_t weight_grad_super_k(int64_t M, int64_t K, int64_t nblk, int64_t elem) {
  const int64_t per_k = (M + nblk * kEngineBlock) * elem;  // a row of a, a row of every panel
  const int64_t blocks = kSuperBytes / (per_k * kKBlock);
  const int64_t ks = kKBlock * (blocks > 1 ? blocks : 1);
  return ks < K ? ks : K;
}

// A weight gradient's a is copied tile by tile (EngineGemm::a_pack) where the products read
// it more than once (more than one panel group) or where the thread's slice of it is larger
// than this; see Note [Weight gradients on the engine kernel] in bwd_engine.cpp.
constexpr int64_t kWeightGradPackAbove = int64_t(2) << 20;

// Elements of EngineGemm::a_pack for a weight gradient of M rows, K terms and nblk panels:
// a super-block of a, rows rounded up to whole register tiles (at most 8 rows). A smaller M
// may get a longer super-block (weight_grad_super_k rounds to whole k-blocks), which
// gemm_impl then shortens to fit.
inline int64_t weight_grad_pack_elems(int64_t M, int64_t K, int64_t nblk, int64_t elem) {
  return weight_grad_super_k(M, K, nblk, elem) * (M + 7);
}

// C[i, blk*16 .. blk*16+15] = sum_k A[i, k] Bp[blk][k][0..15] for rows i < M and blocks
// blk0 <= blk < blk1. Every output element is one float32 FMA chain over k = 0..K-1 in
// order, whatever the register blocking, so the result does not depend on how blocks are
// split between threads.
template <typename T>
struct EngineGemm {
  int64_t M, K;
  const T* A;     // [M, lda] row-major (dgates_t or dhg_t)
  int64_t lda;
  const T* Bp;    // [nblk][K][16] packed W_hh^T columns: panel blk at Bp + blk * panel_stride()
  T* C;           // [M, ldc]
  int64_t ldc;
  int64_t blk0, blk1;
  // A stored by columns: element (i, k) at A[k * lda + i] (the weight gradients' a^T b, with
  // a [K, M] row-major: Note [Weight gradients on the engine kernel] in bwd_engine.cpp).
  bool a_by_columns = false;
  // With a_by_columns: nullptr, or room for a_pack_elems elements (weight_grad_pack_elems
  // of the largest M it serves), where each super-block of A is copied tile by tile before
  // the products read it (Note [Weight gradients on the engine kernel] in bwd_engine.cpp).
  T* a_pack = nullptr;
  int64_t a_pack_elems = 0;
  // Two outputs side by side (nullptr: C only): the panels from blk_split on write to
  // C2 [M, ldc2] instead, panel blk at column (blk - blk_split) * 16 (Note [One product for
  // the LSTM weight gradients] in bwd_engine.cpp). No register tile spans both.
  T* C2 = nullptr;
  int64_t ldc2 = 0;
  int64_t blk_split = 0;

  int64_t panel_stride() const { return panel_stride_for(K); }
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
  const T* h;           // [M, H]  saved h_t = o * tanh(c_t) before any projection
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
  T* db_rows;           // [M, 4H] in/out: each row's sums of dgates over the steps so far
                        // (Note [Bias gradient in the time loop]), or nullptr
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
  T* dbi_rows;       // [M, 3H] in/out: each row's sums of dxg, and of dhg, over the steps so
  T* dbh_rows;       // far (Note [Bias gradient in the time loop]), or nullptr
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

// out[m * N + n] = sum_k a[m * lda + k] wt[n * K + k] for n < N <= kThinMaxR: an input
// gradient dgates W_ih with few inputs (wt = W_ih^T, [N, K] contiguous). A call covers rows
// [m0, m1); each element is one row's own sum (Note [Thin input gradients] in
// bwd_engine.cpp), whoever computes it.
template <typename T>
struct ThinRows {
  int64_t K, N;
  const T* a;
  int64_t lda;
  const T* wt;
  T* out;  // [M, N]
};

template <typename T>
struct BwdEngineTable {
  void (*gemm)(const EngineGemm<T>&);
  void (*thin_outer)(const ThinOuter<T>&, int64_t c0, int64_t c1);
  void (*thin_rows)(const ThinRows<T>&, int64_t m0, int64_t m1);
  void (*partials)(const EnginePartials<T>&, int64_t blk0, int64_t blk1);
  void (*lstm_units)(const LstmBwdUnits<T>&, int64_t k0, int64_t k1);
  void (*proj_units)(const ProjBwdUnits<T>&, int64_t k0, int64_t k1);
  void (*gru_units)(const GruBwdUnits<T>&, int64_t k0, int64_t k1);
};

}  // namespace cpu
}  // namespace fusedrnn
