// Note [CPU backward engine]
// The backward time loop of one LSTM / GRU layer call (float32) runs inside ONE run_team
// region (team.h) instead of a pointwise parallel region plus a BLAS call per step.
//
// Slices. Thread tid of n owns the hidden units [k0, k1) = team_slice(H, 16): whole 16-unit
// blocks (kEngineBlock), the last one possibly short. It owns the same units of everything
// indexed by hidden unit: the pointwise pass (all gates of its units), the columns of
// dh_gemm / dh_carry / dc_rec, the columns of dh0. With projection it also owns
// team_slice(P, 16) of the projected units (dr, dh_gemm over P, dh0).
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
// stays in lstm_cpu.cpp / gru_cpu.cpp as all-steps oneDNN / MKL GEMMs. float64 stays on the
// per-step loop.
#include "bwd_engine.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <string>

#include "bwd_engine_params.h"
#include "dispatch.h"
#include "team.h"

namespace fusedrnn {
namespace cpu {

namespace base {
void fill_bwd_engine(BwdEngineTable<float>* table);
}
#if defined(__x86_64__) || defined(_M_X64)
namespace avx2 {
void fill_bwd_engine(BwdEngineTable<float>* table);
}
namespace avx512 {
void fill_bwd_engine(BwdEngineTable<float>* table);
}
#endif

namespace {

// The kernel table of the capability in use (dispatch.cpp's choice, which can change at run
// time with _set_cpu_capability).
const BwdEngineTable<float>& bwd_table() {
  struct Tables {
    BwdEngineTable<float> base{}, avx2{}, avx512{};
    Tables() {
      fusedrnn::cpu::base::fill_bwd_engine(&base);
#if defined(__x86_64__) || defined(_M_X64)
      fusedrnn::cpu::avx2::fill_bwd_engine(&avx2);
      fusedrnn::cpu::avx512::fill_bwd_engine(&avx512);
#endif
    }
  };
  static const Tables tables;
  const std::string cap = capability();
#if defined(__x86_64__) || defined(_M_X64)
  if (cap == "avx512") return tables.avx512;
  if (cap == "avx2") return tables.avx2;
#endif
  return tables.base;
}

inline int64_t blocks_of(int64_t units) { return (units + kEngineBlock - 1) / kEngineBlock; }

// Panels [blk][K][16] of the columns blk*16 .. blk*16+15 of W [K, C] (zero beyond C), for
// blk0 <= blk < blk1.
void pack_panels(const float* W, int64_t K, int64_t C, float* out, int64_t blk0, int64_t blk1) {
  for (int64_t blk = blk0; blk < blk1; ++blk) {
    float* o = out + blk * K * kEngineBlock;
    const int64_t c0 = blk * kEngineBlock, w = std::min(kEngineBlock, C - c0);
    for (int64_t k = 0; k < K; ++k) {
      std::memcpy(o + k * kEngineBlock, W + k * C + c0, sizeof(float) * w);
      for (int64_t c = w; c < kEngineBlock; ++c) o[k * kEngineBlock + c] = 0.f;
    }
  }
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

// Threads of the team: every thread needs at least one block of units.
int engine_threads(int64_t B, int64_t K, int64_t units) {
  if (engine_mode() == EngineMode::Auto && B * K * units < kMinMacsPerThreadStep) return 1;
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

}  // namespace

int64_t bwd_engine_loop_ns() { return loop_ns.load(std::memory_order_relaxed); }

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
                     const OptTensor& c0_in, const at::Tensor& dy, const at::Tensor& dhn,
                     const at::Tensor& dcn, at::Tensor& dgates, at::Tensor& dh0,
                     at::Tensor& dc0, at::Tensor& dr, at::Tensor& record) {
  count_engine_run(EngineRun::LstmBackward);
  const BwdEngineTable<float>& k = bwd_table();
  const int64_t T_ = s.T, B = s.B, N = s.N, H = s.H, R = s.R, K = 4 * H;
  const bool proj = w_hr_in.has_value();
  const auto opts = act.options();
  const at::Tensor w_hh = w_hh_in.contiguous();                       // [4H, R]
  const at::Tensor w_hr = proj ? w_hr_in->contiguous() : at::Tensor();  // [P, H]
  const at::Tensor c0 = c0_in ? c0_in->contiguous() : at::Tensor();
  const int64_t nblk_r = blocks_of(R), Rp = nblk_r * kEngineBlock;
  const int64_t nblk_h = blocks_of(H), Hp = nblk_h * kEngineBlock;
  const bool norm = opt.clip_mode == ClipMode::Norm;
  const bool track = record.defined();
  const int64_t* len_p = s.lengths ? s.lengths->data_ptr<int64_t>() : nullptr;

  // Workspaces, once per call (Note [Recurrent gradient buffers] for gemm / carry).
  const at::Tensor wp = at::empty({K * Rp}, opts);                     // W_hh panels [nblk_r][K][16]
  const at::Tensor wrp = proj ? at::empty({R * Hp}, opts) : at::Tensor();  // W_hr panels [nblk_h][P][16]
  const at::Tensor gemm = at::zeros({B, Rp}, opts);                    // dgates_{t+1} W_hh
  const at::Tensor carry = at::zeros({B, Rp}, opts);
  const at::Tensor dc = at::zeros({B, Hp}, opts);                      // dc_rec
  const at::Tensor dr_pad = proj ? at::zeros({B, Rp}, opts) : at::Tensor();    // dr_t, padded
  const at::Tensor direct = proj ? at::zeros({B, Hp}, opts) : at::Tensor();    // dr_t W_hr
  // Partial sums per row and block (Note [CPU backward engine]).
  const at::Tensor psq = (norm || track) ? at::zeros({track ? N : B, nblk_r}, opts) : at::Tensor();
  const at::Tensor pcnt =
      (track && opt.clip_mode == ClipMode::Value) ? at::zeros({N, nblk_r}, opts) : at::Tensor();
  const at::Tensor pc = norm ? at::zeros({B, nblk_h}, opts) : at::Tensor();

  const float* w_hh_p = w_hh.data_ptr<float>();
  const float* w_hr_p = proj ? w_hr.data_ptr<float>() : nullptr;
  float* wp_p = wp.data_ptr<float>();
  float* wrp_p = fptr(wrp);
  float* gemm_p = gemm.data_ptr<float>();
  float* carry_p = carry.data_ptr<float>();
  float* dc_p = dc.data_ptr<float>();
  float* drpad_p = fptr(dr_pad);
  float* direct_p = fptr(direct);
  float* psq_p = fptr(psq);
  float* pcnt_p = fptr(pcnt);
  float* pc_p = fptr(pc);
  float* dg_p = dgates.data_ptr<float>();
  float* dh0_p = dh0.data_ptr<float>();
  float* dr_p = proj ? dr.data_ptr<float>() : nullptr;
  const float* act_p = act.data_ptr<float>();
  const float* craw_p = c_raw.data_ptr<float>();
  const float* dy_p = dy.data_ptr<float>();
  const float* dhn_p = dhn.data_ptr<float>();
  const float* dcn_p = dcn.data_ptr<float>();
  const float* c0_p = fptr(c0);

  LstmBwdUnits<float> base{};
  base.H = H;
  base.Hp = Hp;
  base.step = StepInfo{T_, 0, reverse, len_p};
  base.opt = opt;
  base.c0 = c0_p;
  base.dh_n = proj ? nullptr : dhn_p;
  base.dc_n = dcn_p;
  base.dh_direct = direct_p;
  base.dh_gemm = proj ? nullptr : gemm_p;
  base.dh_carry = proj ? nullptr : carry_p;
  base.dc_rec = dc_p;
  base.part_c = pc_p;
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
  pbase.dh_gemm = gemm_p;
  pbase.dh_carry = carry_p;
  pbase.nblk = nblk_r;
  pbase.dr_pad = drpad_p;

  // The partials of step `t` rows live per step with the record, else in one reused buffer.
  auto part_rows = [&](int64_t off) { return track ? psq_p + off * nblk_r : psq_p; };

  timed_team(engine_threads(B, K, std::min(H, R)), [&](int tid, int n, SpinBarrier& barrier) {
    int64_t k0, k1, q0, q1;  // hidden units, recurrent (R) units
    team_slice(H, kEngineBlock, tid, n, &k0, &k1);
    team_slice(R, kEngineBlock, tid, n, &q0, &q1);
    const int64_t hb0 = k0 / kEngineBlock, hb1 = blocks_of(k1);
    const int64_t rb0 = q0 / kEngineBlock, rb1 = blocks_of(q1);
    if (rb1 > rb0) pack_panels(w_hh_p, K, R, wp_p, rb0, rb1);
    if (proj && hb1 > hb0) pack_panels(w_hr_p, R, H, wrp_p, hb0, hb1);

    LstmBwdUnits<float> u = base;
    ProjBwdUnits<float> pu = pbase;
    EngineGemm<float> g{};
    g.K = K;
    g.lda = K;
    g.Bp = wp_p;
    g.C = gemm_p;
    g.ldc = Rp;
    g.blk0 = rb0;
    g.blk1 = rb1;
    EngineGemm<float> gr{};  // projection: dh_direct = dr_t W_hr
    gr.K = R;
    gr.A = drpad_p;
    gr.lda = Rp;
    gr.Bp = wrp_p;
    gr.C = direct_p;
    gr.ldc = Hp;
    gr.blk0 = hb0;
    gr.blk1 = hb1;

    for (int64_t step = 0; step < T_; ++step) {
      const int64_t t = reverse ? step : T_ - 1 - step;
      const int64_t tp = reverse ? t + 1 : t - 1;
      const int64_t M = s.rows[t], off = s.offset[t];
      if (proj) {
        pu.M = M;
        pu.step.t = t;
        pu.dy = dy_p + off * R;
        pu.dr = dr_p + off * R;
        pu.part_h = psq_p ? part_rows(off) : nullptr;
        k.proj_units(pu, q0, q1);
        barrier.wait();  // A2 needs all of dr_t
        gr.M = M;
        k.gemm(gr);
      }
      u.M = M;
      u.step.t = t;
      u.act = act_p + off * 4 * H;
      u.c_raw = craw_p + off * H;
      u.c_raw_prev = (tp >= 0 && tp < T_) ? craw_p + s.offset[tp] * H : nullptr;
      u.dy = proj ? nullptr : dy_p + off * R;
      u.dgates = dg_p + off * 4 * H;
      u.part_h = psq_p ? part_rows(off) : nullptr;
      k.lstm_units(u, k0, k1);
      barrier.wait();  // B needs all of dgates_t

      g.M = M;
      g.A = dg_p + off * 4 * H;
      k.gemm(g);
      // Rows the next backward step no longer visits (packed, reverse; all rows after the
      // last step) have their whole gradient into h0 now.
      const bool last = step + 1 == T_;
      const int64_t tn = reverse ? t + 1 : t - 1;
      const int64_t next = last ? 0 : std::min(s.rows[tn], M);
      for (int64_t b = next; b < M; ++b) {
        for (int64_t j = q0; j < q1; ++j) {
          dh0_p[b * R + j] = carry_p[b * Rp + j] + gemm_p[b * Rp + j];
        }
      }
      if (!last && (norm || track)) {
        const int64_t Mn = std::min(s.rows[tn], M), offn = s.offset[tn];
        EnginePartials<float> ph{Mn, Rp, nblk_r, gemm_p, carry_p, part_rows(offn),
                                 pcnt_p ? pcnt_p + offn * nblk_r : nullptr, opt.clip};
        k.partials(ph, rb0, rb1);
        if (norm) {
          EnginePartials<float> pcp{Mn, Hp, nblk_h, dc_p, nullptr, pc_p, nullptr, opt.clip};
          k.partials(pcp, hb0, hb1);
          barrier.wait();  // the next step's A sums every block of its rows
        }
      }
    }
  });

  dc0.copy_(dc.narrow(1, 0, H));
  if (track) {
    finish_record(s, reverse, opt, psq_p, pcnt_p, nblk_r, R, record.data_ptr<float>());
  }
}

void gru_bwd_engine(const LayerSizes& s, bool reverse, const GradOptions<float>& opt,
                    const at::Tensor& w_hh_in, const at::Tensor& saved, const at::Tensor& y,
                    const OptTensor& h0_in, const at::Tensor& dy, const at::Tensor& dhn,
                    at::Tensor& dxg, at::Tensor& dhg, at::Tensor& dh0, at::Tensor& record) {
  count_engine_run(EngineRun::GruBackward);
  const BwdEngineTable<float>& k = bwd_table();
  const int64_t T_ = s.T, B = s.B, N = s.N, H = s.H, K = 3 * H;
  const auto opts = saved.options();
  const at::Tensor w_hh = w_hh_in.contiguous();  // [3H, H]
  const at::Tensor h0 = h0_in ? h0_in->contiguous() : at::Tensor();
  const int64_t nblk = blocks_of(H), Hp = nblk * kEngineBlock;
  const bool norm = opt.clip_mode == ClipMode::Norm;
  const bool track = record.defined();
  const int64_t* len_p = s.lengths ? s.lengths->data_ptr<int64_t>() : nullptr;

  const at::Tensor wp = at::empty({K * Hp}, opts);  // W_hh panels [nblk][3H][16]
  const at::Tensor gemm = at::zeros({B, Hp}, opts);
  const at::Tensor carry = at::zeros({B, Hp}, opts);
  const at::Tensor psq = (norm || track) ? at::zeros({track ? N : B, nblk}, opts) : at::Tensor();
  const at::Tensor pcnt =
      (track && opt.clip_mode == ClipMode::Value) ? at::zeros({N, nblk}, opts) : at::Tensor();

  const float* w_hh_p = w_hh.data_ptr<float>();
  float* wp_p = wp.data_ptr<float>();
  float* gemm_p = gemm.data_ptr<float>();
  float* carry_p = carry.data_ptr<float>();
  float* psq_p = fptr(psq);
  float* pcnt_p = fptr(pcnt);
  float* dhg_p = dhg.data_ptr<float>();
  float* dxg_p = dxg.data_ptr<float>();
  float* dh0_p = dh0.data_ptr<float>();
  const float* sv_p = saved.data_ptr<float>();
  const float* y_p = y.data_ptr<float>();
  const float* dy_p = dy.data_ptr<float>();

  GruBwdUnits<float> base{};
  base.H = H;
  base.Hp = Hp;
  base.step = StepInfo{T_, 0, reverse, len_p};
  base.opt = opt;
  base.h0 = fptr(h0);
  base.dh_n = dhn.data_ptr<float>();
  base.dh_gemm = gemm_p;
  base.dh_carry = carry_p;
  base.nblk = nblk;
  auto part_rows = [&](int64_t off) { return track ? psq_p + off * nblk : psq_p; };

  timed_team(engine_threads(B, K, H), [&](int tid, int n, SpinBarrier& barrier) {
    int64_t k0, k1;
    team_slice(H, kEngineBlock, tid, n, &k0, &k1);
    const int64_t b0 = k0 / kEngineBlock, b1 = blocks_of(k1);
    if (b1 > b0) pack_panels(w_hh_p, K, H, wp_p, b0, b1);
    GruBwdUnits<float> u = base;
    EngineGemm<float> g{};
    g.K = K;
    g.lda = K;
    g.Bp = wp_p;
    g.C = gemm_p;
    g.ldc = Hp;
    g.blk0 = b0;
    g.blk1 = b1;
    for (int64_t step = 0; step < T_; ++step) {
      const int64_t t = reverse ? step : T_ - 1 - step;
      const int64_t tp = reverse ? t + 1 : t - 1;
      const int64_t M = s.rows[t], off = s.offset[t];
      u.M = M;
      u.step.t = t;
      u.saved = sv_p + off * 4 * H;
      u.h_prev = (tp >= 0 && tp < T_) ? y_p + s.offset[tp] * H : nullptr;
      u.dy = dy_p + off * H;
      u.dxg = dxg_p + off * 3 * H;
      u.dhg = dhg_p + off * 3 * H;
      u.part_h = psq_p ? part_rows(off) : nullptr;
      k.gru_units(u, k0, k1);
      barrier.wait();  // the GEMM needs all of dhg_t

      g.M = M;
      g.A = dhg_p + off * 3 * H;
      k.gemm(g);
      const bool last = step + 1 == T_;
      const int64_t tn = reverse ? t + 1 : t - 1;
      const int64_t next = last ? 0 : std::min(s.rows[tn], M);
      for (int64_t b = next; b < M; ++b) {
        for (int64_t j = k0; j < k1; ++j) dh0_p[b * H + j] = carry_p[b * Hp + j] + gemm_p[b * Hp + j];
      }
      if (!last && (norm || track)) {
        const int64_t Mn = std::min(s.rows[tn], M), offn = s.offset[tn];
        EnginePartials<float> ph{Mn, Hp, nblk, gemm_p, carry_p, part_rows(offn),
                                 pcnt_p ? pcnt_p + offn * nblk : nullptr, opt.clip};
        k.partials(ph, b0, b1);
        if (norm) barrier.wait();  // the next step's pass sums every block of its rows
      }
    }
  });

  if (track) finish_record(s, reverse, opt, psq_p, pcnt_p, nblk, H, record.data_ptr<float>());
}

}  // namespace cpu
}  // namespace fusedrnn
