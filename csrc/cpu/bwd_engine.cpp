// Note [CPU backward engine]
// The backward time loop of one LSTM / GRU layer call (float32) runs inside ONE run_team
// region (team.h) instead of a pointwise parallel region plus a BLAS call per step.
//
// Slices. Thread tid of n owns the hidden units [k0, k1) = team_slice(H, 16): whole 16-unit
// blocks (kEngineBlock), the last one possibly short. (With enough rows per thread it owns
// batch rows over all units instead, and the loop has no barrier: split_rows, and Note
// [Engine row split] in engine_fwd.cpp. What follows describes the unit split.) It owns
// the same units of everything indexed by hidden unit: the pointwise pass (all gates of
// its units), the columns of dh_gemm / dh_carry / dc_rec, the columns of dh0. With
// projection it also owns team_slice(P, 16) of the projected units (dr, dh_gemm over P,
// dh0).
//
// Packing. Before the loop each thread copies its columns of W_hh ([K, R], K = 4H or 3H)
// into 16-wide panels [blk][K][16] (zero beyond R) of a workspace allocated before the
// region; the thread that uses a panel writes it, so it sits in that core's L2 (at H = 256
// and 2 threads a slice is 512 KiB of the 2 MiB L2). Per step the micro-kernel
// (bwd_engine_impl.h) computes dh_gemm[rows, its blocks] = dgates_t[rows, 0:K] .
// W_hh[:, its blocks] with MR x NB register tiles (AVX-512: 6 rows x 4 panels = 24 zmm
// accumulators; 8 panels for a single row, where only more independent FMA chains hide the
// latency); with more rows than one tile, k runs in blocks of 128 so a panel group's block
// stays in L1 while every row tile reads it. The engine's recurrent buffers are [B, Rp]
// (Rp = R rounded up to whole blocks), so the kernel always stores whole vectors. With
// projection W_hr [P, H] is packed the same way for dr_t W_hr.
//
// Barriers (per step, no projection):
//   A  pointwise pass over its units for the M rows of step t: the incoming recurrent
//      gradient (dy + dh_n / nothing / clip(dh_gemm + dh_carry)), gate gradients into
//      dgates_t (the [N, 4H] buffer of all steps), cell recurrence dc_rec;
//   -- barrier: B needs all of dgates_t --
//   B  dh_gemm = dgates_t W_hh for its blocks; retire rows into dh0; partial sums (below).
// The next step's A only reads the thread's own columns, and writes the rows of another
// step of dgates, so one barrier per step is enough. The norm clip needs each row's sum of
// squares over all units: B ends with per-row, per-16-unit-block partial sums of
// dh_gemm + dh_carry (and of dc_rec, LSTM), and one more barrier makes them visible; A sums
// a row's blocks in block order. Because every block's partial is computed the same way
// whoever owns it, and every dh_gemm element is one FMA chain over k in order (whatever the
// register tile), results are bitwise identical for any thread count, not only a fixed one.
// With projection: A1 dr_t over its P units; barrier; A2 dh_direct = dr_t W_hr over its H
// blocks, then the LSTM pass with dh_direct; barrier; B as above over P (3 with norm).
//
// Record (Note [Recording recurrent gradient norms]): with track_grad_norms the partials are
// written per step into [N, nblk] buffers (sum of squares, and in value mode the count of
// clipped elements) instead of a reused [B, nblk] one; after the region one pass sums each
// row's blocks in order into the [N, 3] record: the norm mode's record therefore uses the
// very sum the clip decided with. No barrier is added for the record.
//
// Everything after the loop (clip of the h0 / c0 gradients, dx, dW_ih, dW_hh, dW_hr, db)
// stays in lstm_cpu.cpp / gru_cpu.cpp as products over all steps, most of them on this
// engine's micro-kernel (Note [Weight gradients on the engine kernel], Note [Input gradients
// on the engine kernel] below), the rest on oneDNN / MKL. float64 stays on the per-step
// loop.
//
// Two row drivers, one math. The per-step loop's kernels (kernels_impl.h: lstm_bwd_rows,
// gru_bwd_rows) walk a range of rows over all units of each row, and a row's clip norm is
// that row's own sum over its units; the engine's (bwd_engine_impl.h: lstm_rows, gru_rows)
// walk all rows over one thread's unit slice, and the norm comes from the block partials
// of the previous step's B phase, summed in block order (which is what keeps the engine
// bitwise independent of the thread count). So the loops over rows, and the source of the
// norm and of the record, differ; everything a row computes is shared: row_step
// (kernel_common.h), and for_units, incoming_grad / RowClip, lstm_bwd_vector and
// gru_bwd_vector (kernels_impl.h, which bwd_engine_impl.h includes).
#include "bwd_engine.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "buffer_cache.h"
#include "bwd_engine_params.h"
#include "cpu_common.h"
#include "dispatch.h"
#include "row_split.h"
#include "team.h"

namespace fusedrnn {
namespace cpu {

namespace {

// The kernel table of the capability in use (dispatch.cpp's choice, which can change at run
// time with _set_cpu_capability).
const BwdEngineTable<float>& bwd_table() { return capability_kernels().engine_bwd; }

inline int64_t blocks_of(int64_t units) { return (units + kEngineBlock - 1) / kEngineBlock; }

// Panels [blk][K][16] of the columns blk*16 .. blk*16+15 of the K rows row(k) of C floats
// each (a null row: zeros; zero beyond C), for blk0 <= blk < blk1; panel blk starts at
// out + blk * panel_stride_for(K) (Note [Panel stride] in bwd_engine_params.h).
template <class Row>
void pack_panel_rows(const Row& row, int64_t K, int64_t C, float* out, int64_t blk0,
                     int64_t blk1) {
  // k outermost: each source row is read once, left to right, and every panel is written
  // in order. A whole block is one fixed-size copy (inlined); the last block of a row that
  // ends inside it, and null rows, are zero-filled.
  const int64_t stride = panel_stride_for(K);
  const int64_t whole = std::min(blk1, C / kEngineBlock);  // [blk0, whole): 16 columns
  for (int64_t k = 0; k < K; ++k) {
    const float* src = row(k);
    float* o = out + k * kEngineBlock;
    int64_t blk = blk0;
    if (src) {
      for (; blk < whole; ++blk) {
        std::memcpy(o + blk * stride, src + blk * kEngineBlock, sizeof(float) * kEngineBlock);
      }
    }
    for (; blk < blk1; ++blk) {
      float* d = o + blk * stride;
      const int64_t c0 = blk * kEngineBlock;
      const int64_t w = src ? std::max<int64_t>(0, std::min(kEngineBlock, C - c0)) : 0;
      for (int64_t c = 0; c < w; ++c) d[c] = src[c0 + c];
      for (int64_t c = w; c < kEngineBlock; ++c) d[c] = 0.f;
    }
  }
}

// The panels of W [K, C] (row-major).
void pack_panels(const float* W, int64_t K, int64_t C, float* out, int64_t blk0, int64_t blk1) {
  pack_panel_rows([&](int64_t k) { return W + k * C; }, K, C, out, blk0, blk1);
}

// Per-row bookkeeping of the glue (the kernels have their own copy).
enum RowKind { kFinal = 0, kCut = 1, kRecurrent = 2 };
inline bool row_recurrent(int64_t T, int64_t t, bool reverse, const int64_t* lengths, int64_t b,
                          int64_t truncate) {
  const int64_t len = lengths ? lengths[b] : T;
  if (t >= len) return false;
  const int64_t s = reverse ? len - 1 - t : t;
  if (s == len - 1) return false;
  return !(truncate > 0 && (s + 1) % truncate == 0);
}

// The [N, 3] record from the per-block partials (sq, cnt: [N, nblk]); see
// Note [Recording recurrent gradient norms].
void finish_record(const LayerSizes& s, bool reverse, const GradOptions<float>& opt,
                   const float* sq, const float* cnt, int64_t nblk, int64_t R, float* rec) {
  const int64_t* len = s.lengths ? s.lengths->data_ptr<int64_t>() : nullptr;
  for (int64_t t = 0; t < s.T; ++t) {
    for (int64_t b = 0; b < s.rows[t]; ++b) {
      const int64_t row = s.offset[t] + b;
      float* r = rec + row * 3;
      if (!row_recurrent(s.T, t, reverse, len, b, opt.truncate)) {
        r[0] = r[1] = r[2] = 0.f;
        continue;
      }
      float sumsq = 0.f;
      for (int64_t k = 0; k < nblk; ++k) sumsq += sq[row * nblk + k];
      float share = 0.f;
      if (opt.clip_mode == ClipMode::Value) {
        float count = 0.f;
        for (int64_t k = 0; k < nblk; ++k) count += cnt[row * nblk + k];
        share = count / static_cast<float>(R);
      } else if (opt.clip_mode == ClipMode::Norm) {
        share = std::sqrt(sumsq) > opt.clip ? 1.f : 0.f;
      }
      r[0] = sumsq;
      r[1] = share;
      r[2] = 1.f;
    }
  }
}

// Note [CPU backward engine selection]
// Measured on the 2-core AVX-512 Xeon (2 MiB L2 per core), float32, backward only, CPU time
// with 1 thread (the machine was shared, so 2-thread wall times were noisy and every one of
// them also favoured the engine):
//   T=128 I=64 H=256  B=1: engine 4.3 ms, steps 5.8 | B=8: 15.7 / 18.7 | B=32: 53.7 / 65.5
//   T=32 B=64 I=512 H=512: 146.5 / 151.3;  T=16 B=256 H=256: 52.4 / 54.0
//   T=16 B=512 H=128: 35.3 / 41.1;  T=16 B=1 H=1024: 34.4 / 42.7
//   T=8 B=128 H=1024 (W_hh 16 MiB, 8x the L2): 184.2 / 180.5 (a tie; 2 threads: 804 / 918 wall)
// (both include the same all-steps GEMMs after the loop, about half of the time at B >= 8).
// The engine wins or ties everywhere measured; it only loses its edge once a thread's W_hh
// slice is far beyond its L2 at a large batch, where BLAS's own cache blocking is as good.
// Rule: the engine, unless the slice exceeds 4x the L2 (8 MiB) and B >= 64.
// Threads: a step with fewer than 128K multiply-adds (about two microseconds of FMA work on
// one core) gains less from a second thread than the barriers cost. Time loop per step,
// LSTM, minimum over repeats on the shared machine, 1 / 2 threads: B=1 H=64 (16K MACs)
// 0.7 / 1.5 us, B=16 H=32 (64K) 2.3 / 4.1 us, B=4 H=128 (256K) 5.3 / 5.8 us, B=1 H=256
// (256K, bound by reading W_hh: each thread reads half) 10.4 / 6.7 us. Such calls run on one
// thread in Auto mode only: Engine mode, used by the tests, always takes every thread it
// can, so small test shapes still exercise the barriers.
constexpr int64_t kL2Bytes = int64_t(2) << 20;
constexpr int64_t kMinMacsPerThreadStep = int64_t(128) << 10;

// Threads of the team: every thread needs at least one block of units. `rows`: the team
// would split rows (split_rows), whose loop has no barrier to amortize.
int engine_threads(int64_t B, int64_t K, int64_t units, bool rows) {
  if (engine_mode() == EngineMode::Auto && !rows && B * K * units < kMinMacsPerThreadStep) {
    return 1;
  }
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), blocks_of(units))));
}

std::atomic<int64_t> loop_ns{0};

// run_team(want, body), its wall time added to loop_ns.
template <class Body>
void timed_team(int want, const Body& body) {
  const auto start = std::chrono::steady_clock::now();
  run_team(want, body);
  loop_ns.fetch_add(std::chrono::duration_cast<std::chrono::nanoseconds>(
                        std::chrono::steady_clock::now() - start).count(),
                    std::memory_order_relaxed);
}

float* fptr(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

// Note [Bias gradient in the time loop]
// A bias gradient is the sum of a gate gradient over all T * B rows (LSTM: dgates, [N, 4H];
// GRU: dxg and dhg, [N, 3H]). Summed after the loop, that is one more pass over a buffer
// that has left the caches by then (dgates is 4 MiB at T = 128, B = 8, H = 256 and 16 MiB at
// B = 32: 0.3-0.4 and 1.7-2.4 ms on the 2-core Xeon, memory-bound). So the loop adds each
// row's gate gradients, while it writes them, to that row's running sums ([B, G] rows, in
// L1/L2); after the loop one pass adds the B rows in row order. Every row (and unit) has one
// owner in both splits and every sum runs over the steps in loop order, so the result does
// not depend on the thread count or the split. The row sums start from zeros_buffer.

// out[c] = rows[0][c] + rows[1][c] + ... in row order, for rows [B, C] (float32, contiguous):
// direct_column_sum's loop, whatever the size (column_sum may hand large ones to at::sum).
at::Tensor sum_of_rows(const at::Tensor& rows) {
  const int64_t B = rows.size(0), C = rows.size(1);
  at::Tensor out = empty_buffer({C}, rows.options());
  direct_column_sum(rows.const_data_ptr<float>(), C, B, C, out.data_ptr<float>());
  return out;
}

// What the LSTM and GRU loops share: the packed W_hh, the recurrent gradient buffers over the
// units the GEMM writes (Note [Recurrent gradient buffers] in rnn_params.h: dh_gemm and
// dh_carry, [B, Up] with Up = units rounded up to whole blocks), the per-row block partials
// for the norm clip and the record, and what happens at the end of every step.
struct RecurrentGrad {
  int64_t K, U, Up, nblk;  // W_hh is [K, U]
  at::Tensor panels, gemm, carry, sq, cnt;
  float *panels_p, *gemm_p, *carry_p, *sq_p, *cnt_p;
  bool norm, track;

  RecurrentGrad(const LayerSizes& s, const GradOptions<float>& opt, int64_t K_, int64_t U_,
                bool track_, const at::TensorOptions& opts)
      : K(K_), U(U_), Up(blocks_of(U_) * kEngineBlock), nblk(blocks_of(U_)),
        norm(opt.clip_mode == ClipMode::Norm), track(track_) {
    // From the buffer cache (Note [CPU buffer cache]), like every workspace of the backward
    // engine: fresh memory costs a pass over memory per call here. Training, paired, at::empty
    // / at::zeros time over the cache's: LSTM T=128 B=1 I=64 H=256 1.03-1.06, GRU 1.05,
    // T=64 B=1 I=1 H=64 1.06, T=24 B=16 I=8 H=32 1.05; B >= 8 within 1%
    // (benchmarks/results/intel-xeon-2026-12-03-backward-workspaces-ab.md).
    panels = empty_buffer({nblk * panel_stride_for(K)}, opts);  // [nblk][K][16], padded
    gemm = zeros_buffer({s.B, Up}, opts);    // dgates_{t+1} W_hh
    carry = zeros_buffer({s.B, Up}, opts);
    // Per row and block (Note [CPU backward engine]): per step with the record, else one
    // reused [B, nblk] buffer.
    if (norm || track) sq = zeros_buffer({track ? s.N : s.B, nblk}, opts);
    if (track && opt.clip_mode == ClipMode::Value) cnt = zeros_buffer({s.N, nblk}, opts);
    panels_p = panels.data_ptr<float>();
    gemm_p = gemm.data_ptr<float>();
    carry_p = carry.data_ptr<float>();
    sq_p = fptr(sq);
    cnt_p = fptr(cnt);
  }

  // The partials of the rows of the step starting at row `off` (nullptr: none are kept).
  float* partials_at(int64_t off) const { return track ? sq_p + off * nblk : sq_p; }

  // The GEMM dh_gemm = A W_hh over the blocks [blk0, blk1) (A and M set per step).
  EngineGemm<float> gemm_of(int64_t blk0, int64_t blk1) const {
    return {0, K, nullptr, K, panels_p, gemm_p, Up, blk0, blk1};
  }

  // After the GEMM of step `step` (time t, M rows), for the units [u0, u1) and the rows
  // `rs` of one thread: rows the next step no longer visits (packed, reverse; every row
  // after the last step) have their whole gradient into h0 now; then the next step's
  // partials over its blocks. Returns how many of the thread's rows (from rs.b0) had their
  // partials written when the norm clip needs them before the next step, else -1.
  int64_t end_step(const LayerSizes& s, bool reverse, int64_t step, int64_t t, int64_t M,
                   const BwdEngineTable<float>& k, float clip, float* dh0, int64_t u0,
                   int64_t u1, const RowSlice& rs) const {
    const bool last = step + 1 == s.T;
    const int64_t tn = reverse ? t + 1 : t - 1;
    const int64_t next = last ? 0 : std::min(s.rows[tn], M);
    for (int64_t b = std::max(next, rs.b0); b < std::min(M, rs.b1); ++b) {
      for (int64_t j = u0; j < u1; ++j) dh0[b * U + j] = carry_p[b * Up + j] + gemm_p[b * Up + j];
    }
    if (last || !(norm || track)) return -1;
    const int64_t offn = s.offset[tn];
    const int64_t b0 = rs.b0, rows = rs.of(next);
    EnginePartials<float> ph{rows, Up, nblk, gemm_p + b0 * Up, carry_p + b0 * Up,
                             partials_at(offn) + b0 * nblk,
                             cnt_p ? cnt_p + (offn + b0) * nblk : nullptr, clip};
    k.partials(ph, u0 / kEngineBlock, blocks_of(u1));
    return norm ? rows : -1;
  }
};

// Note [Engine row split] (engine_fwd.cpp) in the backward: the same rule (split_rows,
// row_split.h). A row's recurrent gradient, its clip norm and its record need nothing from
// other rows; the partials, the GEMM chains and the order in which a row sums its block
// partials are the unit split's, so the results are bitwise the same.

inline const float* at_row(const float* p, int64_t row, int64_t ld) {
  return p ? p + row * ld : nullptr;
}
inline float* at_row(float* p, int64_t row, int64_t ld) { return p ? p + row * ld : nullptr; }
inline const int64_t* at_row(const int64_t* p, int64_t row) { return p ? p + row : nullptr; }

}  // namespace

int64_t bwd_engine_loop_ns() { return loop_ns.load(std::memory_order_relaxed); }

// Note [Weight gradients on the engine kernel]
// The weight gradients dW = a^T b (a [K, G]: gate gradients of all T*B rows; b [K, R]:
// inputs or previous states) were MKL GEMMs. On a 2-core AMD EPYC (Zen 5) MKL runs its
// generic path at about 40% of the FMA peak, and these are most of a training call's
// arithmetic after the time loop. They now run on the backward engine's micro-kernel:
// b is packed into 16-column panels [blk][K][16] like W_hh, and the kernel reads a in place
// by columns (EngineGemm::a_by_columns: a row of MR broadcasts per k is MR consecutive
// floats of a's row k), so neither operand is transposed. Threads split the G rows of dW.
// Each element is summed as the engine sums: a fresh FMA chain per block of 128 rows
// (kKBlock), added onto the result in block order, which also keeps the float32 error at
// the level Note [Blocked weight gradients] asks for, and makes the result independent of
// the thread count. Every float32 product past outer_sum's direct loops takes this path:
// from 0.03M to 33M multiply-adds it ran 1.4-3.5x faster than the BLAS paths it replaced
// (`_C._outer_sum`, paired). Products with at most kThinMaxR columns (R = I of an input)
// take ThinOuter instead, which reads each row of a once and sums alike. float32 only; the
// rest stays with outer_sum's paths.
//
// Packing (EngineGemm::a_pack). Reading a by columns in place costs little while the
// thread's slice of it sits in L2 and one panel group reads it; past that every panel group
// re-read it from L3, with a 4 KiB row stride that put all of a register tile's reads in
// one L1 set. So each super-block of a is first copied tile by tile ([k][MR] per tile of MR
// rows) where there is more than one panel group or the slice is over kWeightGradPackAbove
// (2 MiB); the products then read it contiguously. The sums are unchanged (bitwise).
// Measured (_C._outer_sum, 2 threads, a 2-core Xeon, Sapphire Rapids class, GFLOP/s
// without -> with the copy, min of 15 interleaved): K=1016 G=1024 R=256 128 -> 148,
// K=4064 G=1024 R=256 129 -> 156, K=6400 G=2048 R=512 111 -> 161, K=4096 G=1024 R=64
// 84 -> 110, K=2048 G=2048 R=64 74 -> 119; with one panel group and a slice in L2 the copy
// lost (K=1024 G=1024 R=64 125 -> 107), so there it is left out.
//
// Intel CPUs are the exception for wide products: there MKL takes its own tuned path, and
// on the same Xeon it ran products of at least kBlasMacsOnIntel multiply-adds with
// R >= kBlasMinROnIntel as fast or faster (blas / engine time, paired medians: K=6336
// G=2048 R=512 1.01, K=6336 G=1536 R=512 0.98, K=2048 G=1024 R=1024 0.92) while the
// narrower ones ran faster here (R=256: 0.94-1.08; R=128: K=4096 G=1024 1.19, K=6400
// G=2048 1.23; R=64: K=4096 G=1024 1.24, K=6400 G=2048 1.48). (Before the copy existed,
// MKL won every product of 2^27 or more here, and took them all.) So "auto" (the default)
// keeps those wide, large products with BLAS on Intel CPUs; "engine" and "blas" force one
// everywhere.
namespace {
enum class WeightGradMode : int { Auto = 0, Engine = 1, Blas = 2 };
constexpr int64_t kBlasMacsOnIntel = int64_t(1) << 27;  // above K=G=1024, R=64
constexpr int64_t kBlasMinROnIntel = 512;

// "auto", "engine" or "blas"; `what` names where the value came from, for the error message.
int weight_grad_mode_named(const std::string& name, const char* what) {
  TORCH_CHECK_VALUE(name == "auto" || name == "engine" || name == "blas", "fusedrnn: ", what,
                    " must be 'auto', 'engine' or 'blas', got '", name, "'");
  return static_cast<int>(name == "blas"     ? WeightGradMode::Blas
                          : name == "engine" ? WeightGradMode::Engine
                                             : WeightGradMode::Auto);
}

std::atomic<int>& weight_grad_mode() {
  static std::atomic<int> mode([] {
    const char* env = std::getenv("FUSEDRNN_WEIGHT_GRAD");
    return weight_grad_mode_named(env && *env ? env : "auto", "FUSEDRNN_WEIGHT_GRAD");
  }());
  return mode;
}

}  // namespace

std::string weight_grad_backend() {
  switch (static_cast<WeightGradMode>(weight_grad_mode().load())) {
    case WeightGradMode::Engine: return "engine";
    case WeightGradMode::Blas: return "blas";
    default: return "auto";
  }
}

std::string set_weight_grad_backend(const std::string& name) {
  weight_grad_mode() = weight_grad_mode_named(name, "weight gradient backend");
  return weight_grad_backend();
}

bool engine_outer_sum_applies(const at::Tensor& a, const at::Tensor& b) {
  const auto mode = static_cast<WeightGradMode>(weight_grad_mode().load());
  if (mode == WeightGradMode::Blas || a.scalar_type() != at::kFloat) return false;
  if (a.size(0) == 0 || a.size(1) == 0 || b.size(1) == 0) return false;
  if (b.size(1) <= kThinMaxR) return a.stride(1) == 1 && b.stride(1) == 1;
  if (mode == WeightGradMode::Auto && intel_cpu() && b.size(1) >= kBlasMinROnIntel &&
      a.size(0) * a.size(1) * b.size(1) >= kBlasMacsOnIntel) {
    return false;
  }
  return a.is_contiguous() && b.is_contiguous();
}

namespace {
// The parallel_for grain, in units of `macs_per_unit` multiply-adds each, that gives a task
// about 256K of them (at least `min_units`): small products stay on the calling thread.
int64_t grain_for(int64_t macs_per_unit, int64_t min_units) {
  return std::max<int64_t>(min_units, (int64_t(1) << 18) / macs_per_unit);
}

// A weight gradient with at most kThinMaxR columns (the input weights of I = 1..8 inputs):
// padded to a 16-column panel, the micro-kernel would do 16 / R times the work, and MKL ran
// it at 2 GFLOP/s (K=2048, G=256, R=1: 300 us); ThinOuter reads each row of a once.
at::Tensor thin_outer_sum(const at::Tensor& a, const at::Tensor& b) {
  const int64_t K = a.size(0), G = a.size(1), R = b.size(1);
  at::Tensor out = empty_buffer({R, G}, a.options());
  const ThinOuter<float> p{K, G, R, a.const_data_ptr<float>(), a.stride(0),
                           b.const_data_ptr<float>(), b.stride(0), out.data_ptr<float>()};
  const BwdEngineTable<float>& table = bwd_table();
  const int64_t chunks = (G + kThinChunk - 1) / kThinChunk;
  at::parallel_for(0, chunks, grain_for(K * kThinChunk * R, 1), [&](int64_t c0, int64_t c1) { table.thin_outer(p, c0, c1); });
  return R == 1 ? out.view({G, 1}) : out.t().contiguous();
}

// b [K, C] (float32, contiguous) as 16-column panels [blk][K][16], zero beyond C: the B
// operand of the engine's products.
at::Tensor packed_panels(const at::Tensor& b) {
  const int64_t K = b.size(0), C = b.size(1), nblk = blocks_of(C);
  at::Tensor panels = empty_buffer({nblk * panel_stride_for(K)}, b.options());
  const float* bp = b.const_data_ptr<float>();
  float* pp = panels.data_ptr<float>();
  at::parallel_for(0, nblk, 1, [&](int64_t b0, int64_t b1) { pack_panels(bp, K, C, pp, b0, b1); });
  return panels;
}
}  // namespace

namespace {
// a^T b over b's packed panels (nblk of them, [blk][K][16]): out [G, nblk * 16].
// With c2: panels [split, nblk) go to c2 [G, ldc2] instead (EngineGemm::C2).
void outer_sum_into(const at::Tensor& a, const float* pp, int64_t nblk, float* op, int64_t ldc,
                    float* c2 = nullptr, int64_t ldc2 = 0, int64_t split = 0) {
  const int64_t K = a.size(0), G = a.size(1), Rp = nblk * kEngineBlock;
  const float* ap = a.const_data_ptr<float>();
  const BwdEngineTable<float>& table = bwd_table();
  // Tasks of whole 16-row groups of dW, each with its own room to pack a in.
  const int64_t groups = blocks_of(G);
  const int64_t tasks = std::max<int64_t>(
      1, std::min<int64_t>(at::get_num_threads(), groups / grain_for(K * Rp * kEngineBlock, 1)));
  const int64_t rows = (groups + tasks - 1) / tasks * kEngineBlock;
  const int64_t room = weight_grad_pack_elems(rows, K, nblk, sizeof(float));
  at::Tensor pack = empty_buffer({tasks * room}, a.options());
  float* pk = pack.data_ptr<float>();
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t g0 = t * rows, g1 = std::min(G, g0 + rows);
      if (g0 >= g1) continue;
      EngineGemm<float> g{g1 - g0, K, ap + g0, G, pp, op + g0 * ldc, ldc, 0, nblk};
      g.a_by_columns = true;
      g.a_pack = pk + t * room;
      g.a_pack_elems = room;
      if (c2) {
        g.C2 = c2 + g0 * ldc2;
        g.ldc2 = ldc2;
        g.blk_split = split;
      }
      table.gemm(g);
    }
  });
}

at::Tensor outer_sum_on_panels(const at::Tensor& a, const float* pp, int64_t nblk) {
  at::Tensor out = empty_buffer({a.size(1), nblk * kEngineBlock}, a.options());
  outer_sum_into(a, pp, nblk, out.data_ptr<float>(), nblk * kEngineBlock);
  return out;
}
}  // namespace

at::Tensor engine_outer_sum(const at::Tensor& a, const at::Tensor& b) {
  count_engine_run(EngineRun::WeightGrad);
  if (b.size(1) <= kThinMaxR) return thin_outer_sum(a, b);
  const int64_t R = b.size(1), nblk = blocks_of(R);
  const at::Tensor panels = packed_panels(b);
  at::Tensor out = outer_sum_on_panels(a, panels.const_data_ptr<float>(), nblk);
  return nblk * kEngineBlock == R ? out : out.narrow(1, 0, R).contiguous();
}

// Note [One product for the LSTM weight gradients]
// dW_ih = dgates^T x and dW_hh = dgates^T h_prev both read all of dgates ([N, 4H]: 4 MiB
// at T=128, B=8, H=256; 16 MiB at B=32), which by then has left L2, and the product with
// x alone (R = I = 64) keeps the kernel's register tiles too narrow to run at its speed.
// So where both products would run on the engine kernel, they are one: the panels of x's
// columns and of the previous states' side by side, one pass over dgates. When I and R are
// whole 16-column panels, the product's register tiles write dW_ih and dW_hh in place
// (EngineGemm::C2); otherwise the two are copied out of the [4H, I + R] product (rounded up
// to whole panels). The previous state of a row is packed straight from y (or h0, or
// zeros) by Note [Previous state of a row] (cpu_common.h): no shifted copy. Each element
// is summed as engine_outer_sum sums (every product term of a row k in one k-blocked
// chain), so the result still does not depend on the thread count; against the two
// products it differs only in where dW_hh's h0 term joins its sum.
std::optional<std::pair<at::Tensor, at::Tensor>> engine_lstm_weight_grads(
    const LayerSizes& s, const at::Tensor& dgates, const at::Tensor& x2d, const at::Tensor& y,
    const OptTensor& h0, bool reverse) {
  const int64_t N = s.N, I = s.I, R = s.R;
  if (dgates.scalar_type() != at::kFloat || I <= kThinMaxR || N == 0 || R == 0) {
    return std::nullopt;
  }
  const at::Tensor y2d = y.view({N, R});
  if (!engine_outer_sum_applies(dgates, x2d) || !engine_outer_sum_applies(dgates, y2d) ||
      !x2d.is_contiguous() || !y2d.is_contiguous() || (h0 && !h0->is_contiguous())) {
    return std::nullopt;
  }
  count_engine_run(EngineRun::WeightGrad);  // two weight gradients, one product
  count_engine_run(EngineRun::WeightGrad);
  // The row each row k of dgates pairs with: the state entering its step (nullptr: zeros).
  const std::vector<const float*> prev = previous_state_rows<float>(
      s, y2d.const_data_ptr<float>(), h0 ? h0->const_data_ptr<float>() : nullptr, R, reverse);
  const int64_t nx = blocks_of(I), nh = blocks_of(R);
  at::Tensor panels = empty_buffer({(nx + nh) * panel_stride_for(N)}, dgates.options());
  float* pp = panels.data_ptr<float>();
  const float* xp = x2d.const_data_ptr<float>();
  float* hpanels = pp + nx * panel_stride_for(N);
  auto prev_row = [&](int64_t k) { return prev[static_cast<size_t>(k)]; };
  at::parallel_for(0, nx + nh, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      if (blk < nx) {
        pack_panels(xp, N, I, pp, blk, blk + 1);
      } else {
        pack_panel_rows(prev_row, N, R, hpanels, blk - nx, blk - nx + 1);
      }
    }
  });
  if (nx * kEngineBlock == I && nh * kEngineBlock == R) {
    // Whole panels on both sides: the product writes the two gradients in place. The copy
    // of dW_hh out of the joint result took 0.33-0.38 ms per call in torch.profiler at
    // T = 128, B = 1, I = 64, H = 256; whole training calls, paired, gained 0.4-0.9%
    // (benchmarks/results/intel-xeon-2026-12-03-direct-weight-grads-ab.md).
    at::Tensor dw_ih = empty_buffer({dgates.size(1), I}, dgates.options());
    at::Tensor dw_hh = empty_buffer({dgates.size(1), R}, dgates.options());
    outer_sum_into(dgates, pp, nx + nh, dw_ih.data_ptr<float>(), I, dw_hh.data_ptr<float>(), R,
                   nx);
    return std::make_pair(dw_ih, dw_hh);
  }
  const at::Tensor out = outer_sum_on_panels(dgates, pp, nx + nh);
  return std::make_pair(out.narrow(1, 0, I).contiguous(),
                        out.narrow(1, nx * kEngineBlock, R).contiguous());
}

// Note [Input gradients on the engine kernel]
// The input gradient dx = dgates W_ih ([N, K] x [K, I], K = 4H or 3H) is one product over
// all T*B rows after the time loop. rows_times gave it to oneDNN, which on a 2-core AMD EPYC
// ran it 1.5-2.2x faster than MKL; but every call packs W_ih first
// (mkldnn::_reorder_linear_weight), and on a 2-core Xeon (Sapphire Rapids class, a VM) that
// packing alone took 0.45-0.6 ms whatever the weight's size: more than the whole product at
// T=128 B=8 H=256. The engine's micro-kernel needs no such step: W_ih is copied into
// 16-column panels [blk][K][16] (as W_hh for the time loop; 256 KiB at H=256, I=64), the
// rows of dgates are read in place, MR rows per register tile, and threads split the rows.
// Each element is summed as the time loop's products are: a fresh FMA chain per k-block of
// kKBlock terms, added in block order, so the result does not depend on the thread count.
// Its loops are the time loop's, made for few rows: every panel group streams all of a's
// rows again in 512-byte pieces, so it only wins while a thread's rows of a stay in L2
// (kRowsTimesSliceBytes) and one group (I <= 64) covers the output; and copying W_ih only
// pays from kRowsTimesMinRows rows. Measured on that Xeon (_C._rows_times, 2 threads, min
// of 15 interleaved, ms; engine / at::mm / oneDNN with its packing): M=1024 K=1024 N=64
// 0.90 / 1.16 / 1.56, M=1024 K=768 N=64 0.65 / 0.84 / 1.38, M=512 K=1024 N=64 0.46 / 0.53
// / 1.05; outside the rule M=256 K=1024 N=64 0.248 / 0.233 / 0.244, M=97 K=256 N=64
// 0.038 / 0.028 / 0.028 (the LSTMCell's: 1.20-1.24x of torch.nn's training speed with
// the engine here against 1.27-1.39x), M=4096 K=1024 N=64 4.74 / 4.62 / 4.78, M=4096
// K=768 N=64 3.74 / 2.95 / 3.38, M=6400 K=2048 N=512 133 / 63 / 74. On a 2-core AMD EPYC
// (Zen 4; _C._rows_times, 2 threads, median of 60 interleaved, us; engine / oneDNN (auto
// before) / "blas"): M=1024 K=1024 N=64 651 / 874 / 894, M=128 K=1024 N=64 102 / 109 / 112,
// M=4096 K=1024 N=64 3073 / 2986 / 3092; whole training calls inside the rule, paired, ran
// 1.04x (LSTM T=128 B=8 I=64 H=256), 1.06x (GRU, same shape) and 1.09x (LSTM B=4) faster
// with it (amd-epyc-2026-12-04-dx-engine-rule-ab.md). So "auto" (the default) takes the
// engine inside the rule on every CPU; outside it at::mm on Intel CPUs (never oneDNN, for
// its packing), and rows_times' oneDNN / at::mm paths elsewhere (on a 2-core Zen 5 EPYC
// the engine for every float32 input gradient was within noise of those in whole training
// steps, and 0.93x at T=100 B=64 H=512: amd-epyc-2026-12-02-dx-engine-ab.md).
namespace {
constexpr int64_t kRowsTimesMaxN = 64, kRowsTimesMinRows = 512;
constexpr int64_t kRowsTimesSliceBytes = int64_t(2) << 20;
}  // namespace

InputGradPath input_grad_path(const at::Tensor& a, const at::Tensor& w) {
  const auto mode = static_cast<WeightGradMode>(weight_grad_mode().load());
  if (mode == WeightGradMode::Blas || a.scalar_type() != at::kFloat) return InputGradPath::Default;
  const int64_t M = a.size(0), K = a.size(1), N = w.size(1);
  const bool fits = M > 0 && K > 0 && N > 0 && a.is_contiguous() && w.is_contiguous();
  if (fits && N <= kThinMaxR) return InputGradPath::Thin;  // Note [Thin input gradients]
  if (mode == WeightGradMode::Engine) return fits ? InputGradPath::Engine : InputGradPath::Default;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const bool wins = M >= kRowsTimesMinRows && N <= kRowsTimesMaxN &&
                    M * K * int64_t(sizeof(float)) <= threads * kRowsTimesSliceBytes;
  if (fits && wins) return InputGradPath::Engine;
  // Outside the rule: at::mm on Intel CPUs (oneDNN's packing of W_ih), oneDNN / at::mm
  // elsewhere.
  return intel_cpu() ? InputGradPath::Mm : InputGradPath::Default;
}

at::Tensor engine_rows_times(const at::Tensor& a, const at::Tensor& w) {
  count_engine_run(EngineRun::InputGrad);
  const int64_t M = a.size(0), K = a.size(1), N = w.size(1);
  const int64_t nblk = blocks_of(N), Np = nblk * kEngineBlock;
  const at::Tensor panels = packed_panels(w);
  const float* pp = panels.const_data_ptr<float>();
  at::Tensor out = empty_buffer({M, Np}, a.options());  // Note [CPU buffer cache]
  const float* ap = a.const_data_ptr<float>();
  float* op = out.data_ptr<float>();
  const BwdEngineTable<float>& table = bwd_table();
  at::parallel_for(0, M, grain_for(K * Np, 1), [&](int64_t m0, int64_t m1) {
    table.gemm(EngineGemm<float>{m1 - m0, K, ap + m0 * K, K, pp, op + m0 * Np, Np, 0, nblk});
  });
  return Np == N ? out : out.narrow(1, 0, N).contiguous();
}

// Note [Thin input gradients]
// The input gradient dgates W_ih of a layer with few inputs (I <= kThinMaxR: the forecasting
// models' 1-8 features) is N = I dot products of length K = 4H (3H) per row of dgates. At
// such widths at::mm (MKL) reads dgates at a fraction of the cache bandwidth (M=2048 K=256
// N=1: 55 us for 2 MiB on the 2-core Zen 4 EPYC), and the panel micro-kernel would pad N to
// 16 columns. ThinRows reads each row once, for all N columns, with W_ih^T ([N, K], copied
// first) in L1; threads split the rows, and each element is its row's own sum in a fixed
// order (vector lanes over k, then their sum, then the last K % width terms), so results do
// not depend on the thread count. Auto and "engine" take it on every CPU, "blas" never.
at::Tensor engine_thin_rows_times(const at::Tensor& a, const at::Tensor& w) {
  count_engine_run(EngineRun::InputGrad);
  const int64_t M = a.size(0), K = a.size(1), N = w.size(1);
  // W_ih^T: w itself when it has one column.
  at::Tensor wt = w;
  if (N > 1) {
    wt = empty_buffer({N, K}, w.options());
    wt.copy_(w.t());
  }
  at::Tensor out = empty_buffer({M, N}, a.options());  // Note [CPU buffer cache]
  const ThinRows<float> p{K, N, a.const_data_ptr<float>(), K, wt.const_data_ptr<float>(),
                          out.data_ptr<float>()};
  const BwdEngineTable<float>& table = bwd_table();
  at::parallel_for(0, M, grain_for(K * N, 1),
                   [&](int64_t m0, int64_t m1) { table.thin_rows(p, m0, m1); });
  return out;
}

bool bwd_engine_selected(const LayerSizes& s, int gates) {
  switch (engine_mode()) {
    case EngineMode::Engine: return true;
    case EngineMode::Steps: return false;
    default: break;
  }
  // One step (the cells) never repays packing W_hh: see Note [Forward engine crossover].
  // LSTMCell training B=8 / 32 / 97, H=256, I=128: per-step loop 1.00 / 0.99 / 1.00x of
  // torch.nn's time against the engine's 0.75 / 0.88 / 0.92x.
  if (s.T == 1) return false;
  const int64_t K = gates * s.H;
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), blocks_of(s.R)));
  const int64_t slice_bytes = K * s.R * static_cast<int64_t>(sizeof(float)) / threads;
  return !(slice_bytes > 4 * kL2Bytes && s.B >= 64);
}

void lstm_bwd_engine(const LayerSizes& s, bool reverse, const GradOptions<float>& opt,
                     std::optional<double> cell_clip, const at::Tensor& w_hh_in,
                     const OptTensor& w_hr_in, const at::Tensor& act, const at::Tensor& c_raw,
                     const at::Tensor& h_saved, const OptTensor& c0_in, const at::Tensor& dy,
                     const at::Tensor& dhn, const at::Tensor& dcn, at::Tensor& dgates,
                     at::Tensor& dh0, at::Tensor& dc0, at::Tensor& dr, at::Tensor& record,
                     at::Tensor* db) {
  count_engine_run(EngineRun::LstmBackward);
  const BwdEngineTable<float>& k = bwd_table();
  const int64_t T_ = s.T, B = s.B, H = s.H, R = s.R, K = 4 * H;
  const bool proj = w_hr_in.has_value();
  const auto opts = act.options();
  const at::Tensor w_hh = w_hh_in.contiguous();                       // [4H, R]
  const at::Tensor w_hr = proj ? w_hr_in->contiguous() : at::Tensor();  // [P, H]
  const at::Tensor c0 = c0_in ? c0_in->contiguous() : at::Tensor();
  const int64_t nblk_h = blocks_of(H), Hp = nblk_h * kEngineBlock;
  const bool norm = opt.clip_mode == ClipMode::Norm;
  const bool track = record.defined();

  // Workspaces, once per call: the recurrent gradient over R units, and the LSTM's own.
  const RecurrentGrad rg(s, opt, K, R, track, opts);
  const int64_t Rp = rg.Up, nblk_r = rg.nblk;
  // W_hr panels [nblk_h][P][16]; dc_rec; dr_t, padded; dr_t W_hr; partials of dc_rec.
  const at::Tensor wrp = proj ? empty_buffer({nblk_h * panel_stride_for(R)}, opts) : at::Tensor();
  const at::Tensor dc = zeros_buffer({B, Hp}, opts);
  const at::Tensor dr_pad = proj ? zeros_buffer({B, Rp}, opts) : at::Tensor();
  const at::Tensor direct = proj ? zeros_buffer({B, Hp}, opts) : at::Tensor();
  const at::Tensor pc = norm ? zeros_buffer({B, nblk_h}, opts) : at::Tensor();
  // The bias gradient's row sums (Note [Bias gradient in the time loop]).
  const at::Tensor db_rows = db ? zeros_buffer({B, K}, opts) : at::Tensor();

  const float* w_hh_p = w_hh.data_ptr<float>();
  const float* w_hr_p = proj ? w_hr.data_ptr<float>() : nullptr;
  float* wrp_p = fptr(wrp);
  float* dc_p = dc.data_ptr<float>();
  float* drpad_p = fptr(dr_pad);
  float* direct_p = fptr(direct);
  float* pc_p = fptr(pc);
  float* dg_p = dgates.data_ptr<float>();
  float* dh0_p = dh0.data_ptr<float>();
  float* dr_p = proj ? dr.data_ptr<float>() : nullptr;
  const float* act_p = act.data_ptr<float>();
  const float* craw_p = c_raw.data_ptr<float>();
  // [N, H]: h_t = o * tanh(c_t), the output without projection, h_pre with (Note [tanh(c_t)
  // from the saved h_t], kernels_impl.h).
  const float* hsaved_p = h_saved.data_ptr<float>();
  const float* dy_p = dy.data_ptr<float>();
  const float* dhn_p = dhn.data_ptr<float>();

  LstmBwdUnits<float> base{};
  base.H = H;
  base.Hp = Hp;
  base.step = StepInfo{T_, 0, reverse, s.lengths ? s.lengths->data_ptr<int64_t>() : nullptr};
  base.opt = opt;
  base.c0 = fptr(c0);
  base.dh_n = proj ? nullptr : dhn_p;
  base.dc_n = dcn.data_ptr<float>();
  base.dh_direct = direct_p;
  base.dh_gemm = proj ? nullptr : rg.gemm_p;
  base.dh_carry = proj ? nullptr : rg.carry_p;
  base.dc_rec = dc_p;
  base.part_c = pc_p;
  base.db_rows = fptr(db_rows);
  base.nblk_h = nblk_r;
  base.nblk_c = nblk_h;
  base.has_cell_clip = cell_clip.has_value();
  base.cell_clip = cell_clip ? static_cast<float>(*cell_clip) : 0.f;

  ProjBwdUnits<float> pbase{};
  pbase.P = R;
  pbase.Pp = Rp;
  pbase.step = base.step;
  pbase.opt = opt;
  pbase.dh_n = dhn_p;
  pbase.dh_gemm = rg.gemm_p;
  pbase.dh_carry = rg.carry_p;
  pbase.nblk = nblk_r;
  pbase.dr_pad = drpad_p;

  const int64_t panel_bytes =
      (rg.panels.numel() + (proj ? wrp.numel() : 0)) * int64_t(sizeof(float));
  TimedSplit split(
      plan_split(EngineRun::LstmBackwardRows, s, panel_bytes, at::get_num_threads()));
  timed_team(engine_threads(B, K, std::min(H, R), split.plan.rows),
             [&](int tid, int n, SpinBarrier& barrier) {
    int64_t k0, k1, q0, q1;  // hidden units, recurrent (R) units
    team_slice(H, kEngineBlock, tid, n, &k0, &k1);
    team_slice(R, kEngineBlock, tid, n, &q0, &q1);
    if (q1 > q0) pack_panels(w_hh_p, K, R, rg.panels_p, q0 / kEngineBlock, blocks_of(q1));
    if (proj && k1 > k0) pack_panels(w_hr_p, R, H, wrp_p, k0 / kEngineBlock, blocks_of(k1));
    RowSlice rs;
    const bool rows = enter_row_split(split, s, tid, n, barrier,
                                      EngineRun::LstmBackwardRows, &rs);
    if (rows) k0 = 0, k1 = H, q0 = 0, q1 = R;
    const int64_t hb0 = k0 / kEngineBlock, hb1 = blocks_of(k1);
    const int64_t rb0 = q0 / kEngineBlock, rb1 = blocks_of(q1);
    const int64_t b0 = rs.b0;

    // The whole-batch buffers from the thread's first row on.
    LstmBwdUnits<float> u = base;
    u.step.lengths = at_row(base.step.lengths, b0);
    u.c0 = at_row(base.c0, b0, H);
    u.dh_n = at_row(base.dh_n, b0, R);
    u.dc_n = at_row(base.dc_n, b0, H);
    u.dh_direct = at_row(base.dh_direct, b0, Hp);
    u.dh_gemm = at_row(base.dh_gemm, b0, Rp);
    u.dh_carry = at_row(base.dh_carry, b0, Rp);
    u.dc_rec = at_row(base.dc_rec, b0, Hp);
    u.part_c = at_row(base.part_c, b0, nblk_h);
    u.db_rows = at_row(base.db_rows, b0, K);
    ProjBwdUnits<float> pu = pbase;
    pu.step.lengths = u.step.lengths;
    pu.dh_n = at_row(pbase.dh_n, b0, R);
    pu.dh_gemm = at_row(pbase.dh_gemm, b0, Rp);
    pu.dh_carry = at_row(pbase.dh_carry, b0, Rp);
    pu.dr_pad = at_row(pbase.dr_pad, b0, Rp);
    EngineGemm<float> g = rg.gemm_of(rb0, rb1);
    g.C = at_row(g.C, b0, Rp);
    // Projection: dh_direct = dr_t W_hr (M set per step).
    EngineGemm<float> gr{0, R, at_row(drpad_p, b0, Rp), Rp, wrp_p, at_row(direct_p, b0, Hp), Hp,
                         hb0, hb1};

    for (int64_t step = 0; step < T_; ++step) {
      const int64_t t = reverse ? step : T_ - 1 - step;
      const int64_t tp = reverse ? t + 1 : t - 1;
      const int64_t M = rs.of(s.rows[t]), off = s.offset[t] + b0;
      float* part = rg.sq_p ? rg.partials_at(s.offset[t]) + b0 * nblk_r : nullptr;
      if (proj) {
        pu.M = M;
        pu.step.t = t;
        pu.dy = dy_p + off * R;
        pu.dr = dr_p + off * R;
        pu.part_h = part;
        k.proj_units(pu, q0, q1);
        if (!rows) barrier.wait();  // A2 needs all of dr_t
        gr.M = M;
        k.gemm(gr);
      }
      u.M = M;
      u.step.t = t;
      u.act = act_p + off * 4 * H;
      u.c_raw = craw_p + off * H;
      u.h = hsaved_p + off * H;
      u.c_raw_prev = (tp >= 0 && tp < T_) ? craw_p + (s.offset[tp] + b0) * H : nullptr;
      u.dy = proj ? nullptr : dy_p + off * R;
      u.dgates = dg_p + off * 4 * H;
      u.part_h = part;
      k.lstm_units(u, k0, k1);
      if (!rows) barrier.wait();  // B needs all of dgates_t

      g.M = M;
      g.A = dg_p + off * 4 * H;
      k.gemm(g);
      const int64_t next = rg.end_step(s, reverse, step, t, s.rows[t], k, opt.clip, dh0_p, q0,
                                       q1, rs);
      if (next >= 0) {
        EnginePartials<float> pcp{next, Hp, nblk_h, at_row(dc_p, b0, Hp), nullptr,
                                  at_row(pc_p, b0, nblk_h), nullptr, opt.clip};
        k.partials(pcp, hb0, hb1);
        if (!rows) barrier.wait();  // the next step's A sums every block of its rows
      }
    }
  });
  split.finish(T_);

  dc0.copy_(dc.narrow(1, 0, H));
  if (track) finish_record(s, reverse, opt, rg.sq_p, rg.cnt_p, nblk_r, R, record.data_ptr<float>());
  if (db) *db = sum_of_rows(db_rows);
}

void gru_bwd_engine(const LayerSizes& s, bool reverse, const GradOptions<float>& opt,
                    const at::Tensor& w_hh_in, const at::Tensor& saved, const at::Tensor& y,
                    const OptTensor& h0_in, const at::Tensor& dy, const at::Tensor& dhn,
                    at::Tensor& dxg, at::Tensor& dhg, at::Tensor& dh0, at::Tensor& record,
                    at::Tensor* db_ih, at::Tensor* db_hh) {
  count_engine_run(EngineRun::GruBackward);
  const BwdEngineTable<float>& k = bwd_table();
  const int64_t T_ = s.T, B = s.B, H = s.H, K = 3 * H;
  const at::Tensor w_hh = w_hh_in.contiguous();  // [3H, H]
  const at::Tensor h0 = h0_in ? h0_in->contiguous() : at::Tensor();
  const bool track = record.defined();
  const RecurrentGrad rg(s, opt, K, H, track, saved.options());
  // The bias gradients' row sums (Note [Bias gradient in the time loop]).
  const at::Tensor dbi_rows = db_ih ? zeros_buffer({B, K}, saved.options()) : at::Tensor();
  const at::Tensor dbh_rows = db_hh ? zeros_buffer({B, K}, saved.options()) : at::Tensor();

  const float* w_hh_p = w_hh.data_ptr<float>();
  float* dhg_p = dhg.data_ptr<float>();
  float* dxg_p = dxg.data_ptr<float>();
  float* dh0_p = dh0.data_ptr<float>();
  const float* sv_p = saved.data_ptr<float>();
  const float* y_p = y.data_ptr<float>();
  const float* dy_p = dy.data_ptr<float>();

  GruBwdUnits<float> base{};
  base.H = H;
  base.Hp = rg.Up;
  base.step = StepInfo{T_, 0, reverse, s.lengths ? s.lengths->data_ptr<int64_t>() : nullptr};
  base.opt = opt;
  base.h0 = fptr(h0);
  base.dh_n = dhn.data_ptr<float>();
  base.dh_gemm = rg.gemm_p;
  base.dh_carry = rg.carry_p;
  base.nblk = rg.nblk;
  base.dbi_rows = fptr(dbi_rows);
  base.dbh_rows = fptr(dbh_rows);

  const int64_t panel_bytes = rg.panels.numel() * int64_t(sizeof(float));
  TimedSplit split(
      plan_split(EngineRun::GruBackwardRows, s, panel_bytes, at::get_num_threads()));
  timed_team(engine_threads(B, K, H, split.plan.rows),
             [&](int tid, int n, SpinBarrier& barrier) {
    int64_t k0, k1;
    team_slice(H, kEngineBlock, tid, n, &k0, &k1);
    if (k1 > k0) pack_panels(w_hh_p, K, H, rg.panels_p, k0 / kEngineBlock, blocks_of(k1));
    RowSlice rs;
    const bool rows = enter_row_split(split, s, tid, n, barrier,
                                      EngineRun::GruBackwardRows, &rs);
    if (rows) k0 = 0, k1 = H;
    const int64_t b0 = rs.b0, Hp = rg.Up;
    // The whole-batch buffers from the thread's first row on.
    GruBwdUnits<float> u = base;
    u.step.lengths = at_row(base.step.lengths, b0);
    u.h0 = at_row(base.h0, b0, H);
    u.dh_n = at_row(base.dh_n, b0, H);
    u.dh_gemm = at_row(base.dh_gemm, b0, Hp);
    u.dh_carry = at_row(base.dh_carry, b0, Hp);
    u.dbi_rows = at_row(base.dbi_rows, b0, K);
    u.dbh_rows = at_row(base.dbh_rows, b0, K);
    EngineGemm<float> g = rg.gemm_of(k0 / kEngineBlock, blocks_of(k1));
    g.C = at_row(g.C, b0, Hp);
    for (int64_t step = 0; step < T_; ++step) {
      const int64_t t = reverse ? step : T_ - 1 - step;
      const int64_t tp = reverse ? t + 1 : t - 1;
      const int64_t M = rs.of(s.rows[t]), off = s.offset[t] + b0;
      u.M = M;
      u.step.t = t;
      u.saved = sv_p + off * 4 * H;
      u.h_prev = (tp >= 0 && tp < T_) ? y_p + (s.offset[tp] + b0) * H : nullptr;
      u.dy = dy_p + off * H;
      u.dxg = dxg_p + off * 3 * H;
      u.dhg = dhg_p + off * 3 * H;
      u.part_h = rg.sq_p ? rg.partials_at(s.offset[t]) + b0 * rg.nblk : nullptr;
      k.gru_units(u, k0, k1);
      if (!rows) barrier.wait();  // the GEMM needs all of dhg_t

      g.M = M;
      g.A = dhg_p + off * 3 * H;
      k.gemm(g);
      if (rg.end_step(s, reverse, step, t, s.rows[t], k, opt.clip, dh0_p, k0, k1, rs) >= 0 &&
          !rows) {
        barrier.wait();  // the next step's pass sums every block of its rows
      }
    }
  });
  split.finish(T_);

  if (track) finish_record(s, reverse, opt, rg.sq_p, rg.cnt_p, rg.nblk, H, record.data_ptr<float>());
  if (db_ih) *db_ih = sum_of_rows(dbi_rows);
  if (db_hh) *db_hh = sum_of_rows(dbh_rows);
}

}  // namespace cpu
}  // namespace fusedrnn
