// The register-blocked micro-kernels of the CPU forward engine (Note [CPU time-loop engine]
// in engine_fwd.cpp): one time step for the units of one thread, the recurrent dot products
// and the pointwise math in one pass while the gate values are in registers.
//
// Compiled once per capability by capability_avx512.cpp, capability_avx2.cpp and
// capability_default.cpp under the rules of Note [CPU capability dispatch] (kernels_impl.h):
// no header is included here, everything lands in fusedrnn::cpu::<capability>::fwd_engine.
// The including file defines FUSEDRNN_CPU_CAPABILITY, the vector type in FUSEDRNN_ENGINE_VEC
// and the number of vector registers in FUSEDRNN_ENGINE_REGS (they bound the register
// blocks, see max_rows).

#ifndef FUSEDRNN_CPU_CAPABILITY
#error "engine_fwd_impl.h is included by the capability_<name>.cpp files only"
#endif

namespace fusedrnn {
namespace cpu {
namespace FUSEDRNN_CPU_CAPABILITY {
namespace fwd_engine {

#include "vec.h"

using V = FUSEDRNN_ENGINE_VEC;
using Rg = typename V::reg;
constexpr int kW = V::width;
constexpr int kRegs = FUSEDRNN_ENGINE_REGS;
// The epilogues (pointwise math) are inlined into each register block: a call would spill
// all accumulators and switch vector widths (vzeroupper) once per row and unit block.
#if defined(__GNUC__) || defined(__clang__)
#define FUSEDRNN_ENGINE_INLINE __attribute__((always_inline))
#define FUSEDRNN_ENGINE_NOINLINE __attribute__((noinline))
#else
#define FUSEDRNN_ENGINE_INLINE
#define FUSEDRNN_ENGINE_NOINLINE
#endif
constexpr int kMaxRows = 8;  // rows of one register block at most
// How far ahead (in panel columns k) the micro-kernel prefetches.
constexpr int64_t kPrefetchColumns = 8;

// n <= kW lanes from p (the rest zero): the last unit block of H may be partial, and a full
// load there could read past the end of a buffer.
inline Rg load_n(const float* p, int64_t n) {
  if (n == kW) return V::load(p);
  float tmp[kW];
  for (int l = 0; l < kW; ++l) tmp[l] = l < n ? p[l] : 0.0f;
  return V::load(tmp);
}

// v + bias[off ..] (n lanes), or v without a bias: every x part the engines use adds its
// bias this one way (Note [Engine input part], Note [Chunked input part], Note [Bias of the
// all-steps product]), so the paths give the same values.
inline Rg plus_bias(Rg v, const float* bias, int64_t off, int64_t n) {
  return bias ? V::add(v, load_n(bias + off, n)) : v;
}

inline void store_n(float* p, Rg v, int64_t n) {
  if (n == kW) {
    V::store(p, v);
    return;
  }
  float tmp[kW];
  V::store(tmp, v);
  for (int64_t l = 0; l < n; ++l) p[l] = tmp[l];
}

// The cache lines of one vector at p (two when it straddles a line).
inline void prefetch_vector(const float* p) {
  __builtin_prefetch(p);
  __builtin_prefetch(p + kW - 1);
}

// The G gate vectors of row b at unit u of a [rows, G * H] per-step buffer.
inline void prefetch_gates(const float* rows, int G, int64_t H, int64_t b, int64_t u) {
  const float* g = rows + b * G * H + u;
  for (int q = 0; q < G; ++q) prefetch_vector(g + q * H);
}

inline void zero_n(float* p, int64_t n) {
  for (int64_t l = 0; l < n; ++l) p[l] = 0.0f;
}

inline void copy_n(float* dst, const float* src, int64_t n) {
  for (int64_t l = 0; l < n; ++l) dst[l] = src[l];
}

// Note [Engine panel layout] (engine_fwd.h). A whole unit block of one gate is the
// transpose of kW weight rows: kW x kW tiles are transposed in registers (kW row loads, a
// few shuffles, kW stores); the last columns (K % kW) and a partial last unit block go
// element by element. Every call packs (the weights may have changed since the last), so
// this is a fixed cost per call: the 512 KiB slice of an H = 256 LSTM's W_hh took 68 us
// element by element and 23 us by tiles (one thread of a 2-core AVX-512 Xeon, weights
// in cache). The tiles go gate by gate, each gate's kW rows left to right: kW row streams
// at a time, which the hardware prefetchers follow. With k outermost and the G gates'
// tiles inside, G * kW streams were open at once: a standalone model of the copy took 18 us
// against 14 for the slice above with W_hh in L3 (one thread, Zen 4 EPYC); whole calls
// were 1.00-1.025x faster gate by gate
// (benchmarks/results/amd-epyc-2026-12-04-dx-engine-rule-ab.md).
void pack(const float* weight, int64_t G, int64_t U, int64_t K, int64_t u0, int64_t u1,
          float* panel) {
  for (int64_t j = u0 / kW; j * kW < u1; ++j) {
    const int64_t lanes = U - j * kW < kW ? U - j * kW : kW;
    float* out = panel + j * K * G * kW;
    int64_t k = 0;
    if (lanes == kW) {
      const int64_t kt = K / kW * kW;  // columns in whole tiles
      for (int64_t g = 0; g < G; ++g) {
        const float* rows = weight + (g * U + j * kW) * K;
        for (int64_t kk = 0; kk < kt; kk += kW) {
          Rg tile[kW];
#pragma GCC unroll 16
          for (int l = 0; l < kW; ++l) tile[l] = V::load(rows + l * K + kk);
          V::transpose(tile);
#pragma GCC unroll 16
          for (int c = 0; c < kW; ++c) V::store(out + ((kk + c) * G + g) * kW, tile[c]);
        }
      }
      k = kt;
      if (k == K) continue;
      out += k * G * kW;
    }
    for (; k < K; ++k) {
      for (int64_t g = 0; g < G; ++g) {
        const float* col = weight + (g * U + j * kW) * K + k;
        for (int64_t l = 0; l < kW; ++l) *out++ = l < lanes ? col[l * K] : 0.0f;
      }
    }
  }
}

template <class Reg>
inline void keep_in_register(Reg& r) {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  if constexpr (kW > 1) asm("" : "+v"(r));
#else
  (void)r;
#endif
}

// Rows that fit one register block with NB unit blocks: MB * G * NB accumulators, G * NB
// weight vectors and a broadcast in the kRegs vector registers (one row always: its FMAs
// can take the weights from memory).
template <int G, int NB>
constexpr int max_rows() {
  constexpr int rows = (kRegs - 1) / (G * NB) - 1;
  return rows < 1 ? 1 : (rows > kMaxRows ? kMaxRows : rows);
}

// The micro-kernel: acc[m][g][nb] = sum_k x[m][k] * panel[j + nb][k][g][:] over k = 0..K-1
// in order, starting from zero, for MB rows and NB neighbouring unit blocks; then
// epi(m, nb, acc[m][.][nb]) for each. Every accumulator is one FMA chain over k whatever MB
// and NB are, so a result does not depend on how rows and units were blocked (or split
// between threads): this is what makes the engine bitwise deterministic.
// Not inlined into its caller: inlined, the register block shares the register allocation
// of the whole step function, and the GRU's (8 rows, 24 accumulators) ran 2x slower
// (T=128 B=32 H=256 no grad, 55 -> 105 us per step on the AMD EPYC).
template <int G, int MB, int NB, class Epi>
FUSEDRNN_ENGINE_NOINLINE void gate_block(const float* panel, int64_t K, const float* const* x,
                                         const Epi& epi) {
  static_assert(MB <= max_rows<G, NB>(), "register block too large");
  Rg acc[MB][G][NB];
#pragma GCC unroll 8
  for (int m = 0; m < MB; ++m)
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g)
#pragma GCC unroll 8
      for (int nb = 0; nb < NB; ++nb) acc[m][g][nb] = V::zero();
  const int64_t block = K * G * kW;  // distance between neighbouring unit blocks
  const bool prefetch = engine_panel_prefetch();
  for (int64_t k = 0; k < K; ++k) {
    const float* wk = panel + k * G * kW;
    // Ask for the panel a few columns ahead where that helps (Note [Panel prefetch]).
    if (prefetch) {
#pragma GCC unroll 8
      for (int nb = 0; nb < NB; ++nb)
#pragma GCC unroll 8
        for (int64_t line = 0; line < G * kW; line += 16) {
          __builtin_prefetch(wk + nb * block + kPrefetchColumns * G * kW + line);
        }
    }
    Rg w[G][NB];
#pragma GCC unroll 8
    for (int nb = 0; nb < NB; ++nb)
#pragma GCC unroll 8
      for (int g = 0; g < G; ++g) {
        w[g][nb] = V::load(wk + nb * block + g * kW);
        // Keep the weight vector in a register: left alone, GCC folds the load into each
        // row's FMA, and MB loads of every weight per column make the block load-bound.
        if constexpr (MB > 1) keep_in_register(w[g][nb]);
      }
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) {
      const Rg xm = V::set1(x[m][k]);
#pragma GCC unroll 8
      for (int g = 0; g < G; ++g)
#pragma GCC unroll 8
        for (int nb = 0; nb < NB; ++nb) acc[m][g][nb] = V::fmadd(xm, w[g][nb], acc[m][g][nb]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MB; ++m) {
#pragma GCC unroll 8
    for (int nb = 0; nb < NB; ++nb) {
      Rg a[G];
#pragma GCC unroll 8
      for (int g = 0; g < G; ++g) a[g] = acc[m][g][nb];
      epi(m, nb, a);
    }
  }
}

// gate_block with MB chosen at run time (1 <= mb <= max_rows<G, NB>()).
template <int G, int NB, int MB = 1, class Epi>
inline void gate_block_rows(int mb, const float* panel, int64_t K, const float* const* x,
                            const Epi& epi) {
  if constexpr (MB < max_rows<G, NB>()) {
    if (mb != MB) {
      gate_block_rows<G, NB, MB + 1>(mb, panel, K, x, epi);
      return;
    }
  }
  gate_block<G, MB, NB>(panel, K, x, epi);
}

// Unit blocks side by side: with few rows they give the independent FMA chains (about 8
// are needed: the FMA latency times the FMAs per cycle) and more panel streams in flight;
// with more rows the rows give the chains, and one unit block lets a register block hold
// more rows (fewer passes over the panel).
template <int G>
inline int unit_blocks_for(int64_t M) {
  if (G * M <= 2 && M <= max_rows<G, 4>()) return 4;
  if (G * M <= 8 && M <= max_rows<G, 2>()) return 2;
  return 1;
}

// Runs the register blocks of one step: units [u0, u1) of the panel (u0 a multiple of kW)
// against rows 0..M-1 of x (row m at x + m * ldx, K values), calling
// epi(row, first unit, lanes, acc[G], xpart) for each row and unit block, after pre(row,
// first unit) has prefetched what that epilogue will read (before the register block runs).
// With `in` (EngineInput, engine_fwd.h), each register block first runs the same rows and units of the input part and
// keeps it (plus the bias) in a small buffer, which the epilogue gets as xpart ([G][kW]
// floats); otherwise xpart is nullptr.
//
// Unit blocks are the outer loop: the panel of NB blocks (NB * K * G * kW floats) stays in
// L1/L2 while all rows go past it, so each weight is read from L2 once per row block and
// from farther away at most once per step.
// kInput says at compile time whether `in` may be given (the GRU's and the projection's
// blocks never take one, and then get no input pass).
template <int G, bool kInput = false, class Epi, class Pre>
void run_blocks(const float* panel, int64_t K, const float* x, int64_t ldx, int64_t M,
                int64_t U, int64_t u0, int64_t u1, const Epi& epi, const Pre& pre,
                const EngineInput* in = nullptr) {
  const int NB = unit_blocks_for<G>(M);
  const int max_mb = NB == 4 ? max_rows<G, 4>() : (NB == 2 ? max_rows<G, 2>() : max_rows<G, 1>());
  const int64_t row_blocks = (M + max_mb - 1) / max_mb;
  for (int64_t j = u0 / kW; j * kW < u1;) {
    const int64_t left = (u1 - j * kW + kW - 1) / kW;
    const int nb = left >= NB ? NB : 1;
    const float* pj = panel + j * K * G * kW;
    for (int64_t rb = 0, m0 = 0; rb < row_blocks; ++rb) {
      // Balanced row blocks: M = 8 with at most 6 per block runs 4 + 4, not 6 + 2.
      const int mb = static_cast<int>(M / row_blocks + (rb < M % row_blocks ? 1 : 0));
      const float* xs[kMaxRows];
      for (int m = 0; m < mb; ++m) xs[m] = x + (m0 + m) * ldx;
      // The epilogue's operands (the x part of the gates, the state) are rows of big
      // per-step buffers, 4H floats apart: no hardware prefetcher follows that stride, and
      // at B >= 8 they come from memory. Ask for them now; the k loop hides the latency.
      // Measured (interleaved A/B, 2-core Xeon, LSTM T=128 H=256 no grad): +3% at B=8,
      // +5% at B=32, nothing at B=1 or in training.
      for (int m = 0; m < mb; ++m) {
        for (int b = 0; b < nb; ++b) pre(m0 + m, (j + b) * kW);
      }
      alignas(64) float xpart[kInput ? kMaxRows : 1][kInput ? 4 : 1][G][kW];
      auto blocks = [&](const float* pnl, int64_t k, const float* const* rows_x,
                        const auto& f) {
        if (nb == 4) {
          gate_block_rows<G, 4>(mb, pnl, k, rows_x, f);
        } else if (nb == 2) {
          gate_block_rows<G, 2>(mb, pnl, k, rows_x, f);
        } else {
          gate_block_rows<G, 1>(mb, pnl, k, rows_x, f);
        }
      };
      if constexpr (kInput) {
        const float* xi[kMaxRows];
        for (int m = 0; m < mb; ++m) xi[m] = in->x + (m0 + m) * in->K;
        blocks(in->panel + j * in->K * G * kW, in->K, xi,
               [&](int m, int b, const Rg* acc) FUSEDRNN_ENGINE_INLINE {
          const int64_t u = (j + b) * kW, n = U - u < kW ? U - u : kW;
#pragma GCC unroll 8
          for (int g = 0; g < G; ++g) {
            V::store(xpart[m][b][g], plus_bias(acc[g], in->bias, g * U + u, n));
          }
        });
      }
      blocks(pj, K, xs, [&](int m, int b, const Rg* acc) FUSEDRNN_ENGINE_INLINE {
        const int64_t u = (j + b) * kW;
        const float* xp = nullptr;
        if constexpr (kInput) xp = xpart[m][b][0];
        epi(m0 + m, u, U - u < kW ? U - u : kW, acc, xp);
      });
      m0 += mb;
    }
    j += nb;
  }
}

// Asks for the rows of a step's operands before its register blocks run: the state h_{t-1}
// (rows of `ld` floats, the other threads' units just written in their caches) and, with the
// input part, the rows of x_t (in memory or L3). The blocks read them one column k at a
// time, which leaves the misses to the hardware prefetchers one by one; asked for at once,
// their latencies overlap. Measured (2-core AVX-512 Xeon, T=128 I=64 H=256, 2 threads, 25
// interleaved pairs, time without / with, min): LSTM no grad B=1 1.04, B=8 1.04, B=32 1.02,
// training B=1 1.07, B=8 1.00; GRU no grad 1.00-1.03; the small forecasting shapes (H <= 64)
// 0.99-1.02 (benchmarks/results/intel-xeon-2026-12-03-row-prefetch-ab.md).
inline void prefetch_rows(const float* h_prev, int64_t ld, int64_t M, const EngineInput& in) {
  auto row = [](const float* r, int64_t n) {
    for (int64_t k = 0; k < n; k += 16) __builtin_prefetch(r + k);  // a 64-byte line
    __builtin_prefetch(r + n - 1);  // the last line, when the row is not line-aligned
  };
  for (int64_t b = 0; b < M; ++b) {
    row(h_prev + b * ld, ld);
    if (in.x) row(in.x + b * in.K, in.K);
  }
}

inline bool row_active(const int64_t* lengths, int64_t t, int64_t b) {
  return lengths == nullptr || t < lengths[b];
}

// Rows [M, B): not part of a packed step; their state is carried to the next buffer.
inline void carry_rows(const float* prev, float* next, int64_t ld, int64_t M, int64_t B,
                       int64_t u0, int64_t u1) {
  for (int64_t b = M; b < B; ++b) copy_n(next + b * ld + u0, prev + b * ld + u0, u1 - u0);
}

// ---------------------------------------------------------------------------------------
// LSTM: the same pointwise math as lstm_fwd_rows (kernels_impl.h), on the accumulators.

template <bool CCLIP>
void lstm_step_impl(const LstmEngineStep& p, int64_t u0, int64_t u1) {
  const int64_t H = p.H, R = p.R;
  const Rg lo = V::set1(-p.cell_clip), hi = V::set1(p.cell_clip);
  auto epi = [&](int64_t b, int64_t u, int64_t n, const Rg* acc,
                 const float* xp) FUSEDRNN_ENGINE_INLINE {
    float* g = p.gates ? p.gates + b * 4 * H + u : nullptr;  // none: input part, no saving
    float* h_out = p.h_out + b * H + u;
    float* c_raw = p.c_raw ? p.c_raw + b * H + u : nullptr;
    // Without saving (c_raw == nullptr: no backward will read them) the activations are not
    // written back: at B = 32 the gates of all steps (16 MiB at T = 128, H = 256) live in
    // memory, and the write-back costs more per step than the pointwise math.
    if (!row_active(p.lengths, p.t, b)) {  // state carried; outputs and saved values zero
      zero_n(h_out, n);
      if (c_raw) {
        for (int q = 0; q < 4; ++q) zero_n(g + q * H, n);
        zero_n(c_raw, n);
      }
      if (p.h_next) copy_n(p.h_next + b * R + u, p.h_prev + b * R + u, n);
      return;
    }
    // The x part is added to the finished recurrent sum (Note [Recurrent gradient buffers]).
    // (the x part: computed in this block, Note [Engine input part], or from the buffer)
    auto xg = [&](int q) FUSEDRNN_ENGINE_INLINE {
      if (xp) return V::load(xp + q * kW);
      return plus_bias(load_n(g + q * H, n), p.x_bias, q * H + u, n);
    };
    const Rg i = V::sigmoid(V::add(xg(0), acc[0]));
    const Rg f = V::sigmoid(V::add(xg(1), acc[1]));
    const Rg gg = V::tanh(V::add(xg(2), acc[2]));
    const Rg o = V::sigmoid(V::add(xg(3), acc[3]));
    float* c = p.c + b * H + u;
    const Rg cr = V::fmadd(f, load_n(c, n), V::mul(i, gg));
    if (c_raw) {
      store_n(g, i, n);
      store_n(g + H, f, n);
      store_n(g + 2 * H, gg, n);
      store_n(g + 3 * H, o, n);
      store_n(c_raw, cr, n);
    }
    Rg cn = cr;
    if constexpr (CCLIP) cn = V::clamp(cr, lo, hi);
    store_n(c, cn, n);
    const Rg h = V::mul(o, V::tanh(cn));
    store_n(h_out, h, n);
    if (p.h_next) store_n(p.h_next + b * R + u, h, n);
  };
  auto pre = [&](int64_t b, int64_t u) FUSEDRNN_ENGINE_INLINE {
    if (!p.input.x) prefetch_gates(p.gates, 4, H, b, u);
    prefetch_vector(p.c + b * H + u);
  };
  prefetch_rows(p.h_prev, R, p.M, p.input);
  if (p.input.x) {
    run_blocks<4, true>(p.panel, R, p.h_prev, R, p.M, H, u0, u1, epi, pre, &p.input);
  } else {
    run_blocks<4, false>(p.panel, R, p.h_prev, R, p.M, H, u0, u1, epi, pre);
  }
  if (p.h_next) carry_rows(p.h_prev, p.h_next, R, p.M, p.B, u0, u1);
}

void lstm_step(const LstmEngineStep& p, int64_t u0, int64_t u1) {
  if (p.has_cell_clip) {
    lstm_step_impl<true>(p, u0, u1);
  } else {
    lstm_step_impl<false>(p, u0, u1);
  }
}

// ---------------------------------------------------------------------------------------
// GRU: the pointwise math of gru_fwd (kernels_impl.h).

void gru_step(const GruEngineStep& p, int64_t u0, int64_t u1) {
  const int64_t H = p.H;
  auto epi = [&](int64_t b, int64_t u, int64_t n, const Rg* acc,
                 const float* xp) FUSEDRNN_ENGINE_INLINE {
    float* h_out = p.h_out + b * H + u;
    float* sv = p.saved ? p.saved + b * 4 * H + u : nullptr;
    const float* hp_row = p.h_prev + b * H + u;
    float* hn_row = p.h_next + b * H + u;
    if (!row_active(p.lengths, p.t, b)) {
      zero_n(h_out, n);
      if (sv) {
        for (int q = 0; q < 4; ++q) zero_n(sv + q * H, n);
      }
      copy_n(hn_row, hp_row, n);
      return;
    }
    // (the x part: computed in this block, Note [Engine input part], or from the buffer)
    auto xg = [&](int q) FUSEDRNN_ENGINE_INLINE {
      if (xp) return V::load(xp + q * kW);
      return plus_bias(load_n(p.xg + b * 3 * H + u + q * H, n), p.x_bias, q * H + u, n);
    };
    const Rg r = V::sigmoid(V::add(xg(0), acc[0]));
    const Rg z = V::sigmoid(V::add(xg(1), acc[1]));
    Rg hn = acc[2];
    if (p.b_hn) hn = V::add(hn, load_n(p.b_hn + u, n));
    const Rg nn = V::tanh(V::fmadd(r, hn, xg(2)));
    const Rg hp = load_n(hp_row, n);
    const Rg hnew = V::fmadd(z, V::sub(hp, nn), nn);  // (1 - z) n + z h
    if (sv) {
      store_n(sv, r, n);
      store_n(sv + H, z, n);
      store_n(sv + 2 * H, nn, n);
      store_n(sv + 3 * H, hn, n);
    }
    store_n(h_out, hnew, n);
    store_n(hn_row, hnew, n);
  };
  auto pre = [&](int64_t b, int64_t u) FUSEDRNN_ENGINE_INLINE {
    if (!p.input.x) prefetch_gates(p.xg, 3, H, b, u);
  };
  prefetch_rows(p.h_prev, H, p.M, p.input);
  if (p.input.x) {
    run_blocks<3, true>(p.panel, H, p.h_prev, H, p.M, H, u0, u1, epi, pre, &p.input);
  } else {
    run_blocks<3, false>(p.panel, H, p.h_prev, H, p.M, H, u0, u1, epi, pre);
  }
  carry_rows(p.h_prev, p.h_next, H, p.M, p.B, u0, u1);
}

// ---------------------------------------------------------------------------------------
// Projection: r_t = h_t W_hr^T for outputs [p0, p1).

void proj_step(const ProjEngineStep& p, int64_t p0, int64_t p1) {
  const int64_t P = p.P;
  run_blocks<1>(p.panel, p.H, p.h_pre, p.H, p.M, P, p0, p1,
                [&](int64_t b, int64_t u, int64_t n, const Rg* acc,
                    const float*) FUSEDRNN_ENGINE_INLINE {
    if (!row_active(p.lengths, p.t, b)) {
      zero_n(p.y + b * P + u, n);
      copy_n(p.r_next + b * P + u, p.r_prev + b * P + u, n);
      return;
    }
    store_n(p.y + b * P + u, acc[0], n);
    store_n(p.r_next + b * P + u, acc[0], n);
  }, [](int64_t, int64_t) {});
  carry_rows(p.r_prev, p.r_next, P, p.M, p.B, p0, p1);
}

// ---------------------------------------------------------------------------------------
// The input part of several steps at once (Note [Chunked input part] in engine_fwd.cpp).

template <int G>
void input_rows_g(const EngineInput& in, int64_t M, int64_t U, int64_t u0, int64_t u1,
                  float* out, int64_t ldo) {
  run_blocks<G>(in.panel, in.K, in.x, in.K, M, U, u0, u1,
                [&](int64_t m, int64_t u, int64_t n, const Rg* acc,
                    const float*) FUSEDRNN_ENGINE_INLINE {
    float* o = out + m * ldo + u;
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) store_n(o + g * U, plus_bias(acc[g], in.bias, g * U + u, n), n);
  }, [](int64_t, int64_t) {});
}

void input_rows(const EngineInput& in, int64_t G, int64_t M, int64_t U, int64_t u0,
                int64_t u1, float* out, int64_t ldo) {
  if (G == 4) {
    input_rows_g<4>(in, M, U, u0, u1, out, ldo);
  } else {
    input_rows_g<3>(in, M, U, u0, u1, out, ldo);
  }
}

inline void fill(EngineFwdKernels* table) {
  table->width = kW;
  table->pack = &pack;
  table->lstm_step = &lstm_step;
  table->gru_step = &gru_step;
  table->proj_step = &proj_step;
  table->input_rows = &input_rows;
}

}  // namespace fwd_engine
}  // namespace FUSEDRNN_CPU_CAPABILITY
}  // namespace cpu
}  // namespace fusedrnn
