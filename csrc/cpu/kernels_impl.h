// The fused pointwise kernels of the CPU path: one pass per time step over a range of batch
// rows, for the LSTM and GRU forward and backward steps.
//
// Note [CPU capability dispatch]
// This header is compiled several times, once per CPU capability, by the small translation
// units capability_avx512.cpp, capability_avx2.cpp and capability_default.cpp (with the
// engines' engine_fwd_impl.h and bwd_engine_impl.h, under the same rules). Each of them
// switches the compiler target on (#pragma GCC target / clang attribute), includes
// <immintrin.h> and the parameter headers, names its capability in FUSEDRNN_CPU_CAPABILITY
// and includes this file, which puts everything into fusedrnn::cpu::<capability> (avx512,
// avx2, or base for the portable code of capability_default.cpp). Nothing here includes a
// header (no std:: template is instantiated under a wider target, so the linker can never pick an
// AVX-512 copy of a shared inline function for generic code). dispatch.cpp asks the CPU at
// run time (like ATen's DispatchStub) and hands out the function table of the widest
// capability it supports; FUSEDRNN_CPU_CAPABILITY=default|avx2|avx512 in the environment
// (or fusedrnn._C._set_cpu_capability) narrows the choice.
//
// Compile-time switches: clip mode (none/value/norm), truncation on/off and cell clip on/off
// are template parameters, so a disabled option costs nothing. Per row, the kind of incoming
// recurrent gradient (last step / truncated / clipped, see rnn_params.h) is also a template
// parameter of the row body; only row-level bookkeeping is decided at run time.

#ifndef FUSEDRNN_CPU_CAPABILITY
#error "kernels_impl.h is included by the capability_<name>.cpp files only"
#endif

namespace fusedrnn {
namespace cpu {
namespace FUSEDRNN_CPU_CAPABILITY {

#include "vec.h"
#include "row_steps.h"

// Vector body then scalar tail over the columns [k0, k1): f(VecTag, j) handles columns
// j..j+width-1 (the backward engine's kernels run it over a thread's units).
template <class V, class F>
inline void for_units(int64_t k0, int64_t k1, F&& f) {
  int64_t j = k0;
  for (; j + V::width <= k1; j += V::width) f(V(), j);
  for (; j < k1; ++j) f(ScalarVec<typename V::value_type>(), j);
}

// The same over a whole row of n columns.
template <class V, class F>
inline void for_columns(int64_t n, F&& f) {
  for_units<V>(0, n, static_cast<F&&>(f));
}

template <class V>
inline typename V::value_type sum_squares(const typename V::value_type* x, int64_t n) {
  using T = typename V::value_type;
  typename V::reg acc = V::zero();
  int64_t j = 0;
  for (; j + V::width <= n; j += V::width) {
    const typename V::reg v = V::load(x + j);
    acc = V::fmadd(v, v, acc);
  }
  T s = V::hsum(acc);
  for (; j < n; ++j) s += x[j] * x[j];
  return s;
}

// Sum of squares of a + b over n columns (b may be nullptr).
template <class V>
inline typename V::value_type sum_squares(const typename V::value_type* a,
                                          const typename V::value_type* b, int64_t n) {
  using T = typename V::value_type;
  typename V::reg acc = V::zero();
  int64_t j = 0;
  for (; j + V::width <= n; j += V::width) {
    typename V::reg v = V::load(a + j);
    if (b) v = V::add(v, V::load(b + j));
    acc = V::fmadd(v, v, acc);
  }
  T s = V::hsum(acc);
  for (; j < n; ++j) {
    const T v = b ? a[j] + b[j] : a[j];
    s += v * v;
  }
  return s;
}

// Norm mode: the factor that brings a row's L2 norm down to at most `clip` (1 if it is).
template <typename T>
inline T norm_scale(T sumsq, T clip) {
  const T norm = sizeof(T) == 4 ? __builtin_sqrtf(static_cast<float>(sumsq)) : __builtin_sqrt(sumsq);
  return norm > clip ? clip / norm : T(1);
}

// How the recurrent gradient of one row is clipped: per element (value) or by a row factor.
template <typename T>
struct RowClip {
  T lo, hi;   // value mode
  T scale;    // norm mode
  T sumsq;    // norm mode: the row's sum of squares (reused by the gradient record)
};

// The clip of the row a + b (b may be nullptr).
template <class V, typename T>
inline RowClip<T> make_row_clip(ClipMode mode, T clip, const T* a, const T* b, int64_t n) {
  RowClip<T> rc{-clip, clip, T(1), T(0)};
  if (mode == ClipMode::Norm) {
    rc.sumsq = sum_squares<V>(a, b, n);
    rc.scale = norm_scale<T>(rc.sumsq, clip);
  }
  return rc;
}

template <class VV, ClipMode CM, typename T>
inline typename VV::reg apply_clip(typename VV::reg g, const RowClip<T>& rc) {
  if constexpr (CM == ClipMode::Value) {
    return VV::clamp(g, VV::set1(rc.lo), VV::set1(rc.hi));
  } else if constexpr (CM == ClipMode::Norm) {
    return VV::mul(g, VV::set1(rc.scale));
  } else {
    return g;
  }
}

// The incoming recurrent gradient of one row at column j, by kind: the final-state gradient,
// nothing, or the clipped recurrent gradient rec_a + rec_b (rec_b may be nullptr).
template <class VV, int KIND, ClipMode CM, typename T>
inline typename VV::reg incoming_grad(const T* final_row, const T* rec_a, const T* rec_b,
                                      const RowClip<T>& rc, int64_t j) {
  if constexpr (KIND == kFromFinal) {
    return VV::load(final_row + j);
  } else if constexpr (KIND == kCut) {
    return VV::zero();
  } else {
    typename VV::reg g = VV::load(rec_a + j);
    if (rec_b) g = VV::add(g, VV::load(rec_b + j));
    return apply_clip<VV, CM, T>(g, rc);
  }
}

template <typename T>
inline void zero_row(T* x, int64_t n) {
  for (int64_t j = 0; j < n; ++j) x[j] = T(0);
}

// Note [Recording recurrent gradient norms] (rnn_params.h): the record of one row whose
// recurrent gradient is a + b (b may be nullptr), before the clip `rc` of that row. In norm
// mode the clip has already summed the squares: the record takes its sum and its decision.
template <class V, ClipMode CM, typename T>
inline void record_row(T* rec, T clip, const T* a, const T* b, int64_t n, const RowClip<T>& rc) {
  T share = T(0);
  T sumsq;
  if constexpr (CM == ClipMode::Value) {
    using Rg = typename V::reg;
    Rg acc = V::zero(), changed = V::zero();
    const Rg hi = V::set1(clip), one = V::set1(T(1));
    int64_t j = 0;
    for (; j + V::width <= n; j += V::width) {
      Rg v = V::load(a + j);
      if (b) v = V::add(v, V::load(b + j));
      acc = V::fmadd(v, v, acc);
      changed = V::add(changed, V::select(V::le(V::abs(v), hi), V::zero(), one));
    }
    sumsq = V::hsum(acc);
    T count = V::hsum(changed);
    for (; j < n; ++j) {
      const T v = b ? a[j] + b[j] : a[j];
      sumsq += v * v;
      if (!(__builtin_fabs(static_cast<double>(v)) <= static_cast<double>(clip))) count += T(1);
    }
    share = n > 0 ? count / static_cast<T>(n) : T(0);
  } else if constexpr (CM == ClipMode::Norm) {
    sumsq = rc.sumsq;
    share = rc.scale < T(1) ? T(1) : T(0);
  } else {
    sumsq = sum_squares<V>(a, b, n);
  }
  rec[0] = sumsq;
  rec[1] = share;
  rec[2] = T(1);
}

template <typename T>
inline void record_none(T* rec) {
  if (rec) rec[0] = rec[1] = rec[2] = T(0);
}

// The clip of one row of a per-step kernel whose incoming gradient is of kind KIND: that of
// its recurrent gradient a + b (b may be nullptr, n columns) when KIND is recurrent and a
// clip is on, else none.
template <class V, ClipMode CM, int KIND, typename T>
inline RowClip<T> step_row_clip(T clip, const T* a, const T* b, int64_t n) {
  if constexpr (KIND == kRecurrent && CM != ClipMode::None) {
    return make_row_clip<V, T>(CM, clip, a, b, n);
  } else {
    return RowClip<T>{T(0), T(0), T(1), T(0)};
  }
}

// The record of one row at a step (rec may be nullptr: not recording): its recurrent
// gradient a + b before the clip rc when KIND is recurrent, else the empty record.
template <class V, ClipMode CM, int KIND, typename T>
inline void record_step(T* rec, T clip, const T* a, const T* b, int64_t n, const RowClip<T>& rc) {
  if (!rec) return;
  if constexpr (KIND == kRecurrent) {
    record_row<V, CM, T>(rec, clip, a, b, n, rc);
  } else {
    record_none(rec);
  }
}

// A row that does not exist at t carries its recurrent gradient: carry += gemm.
template <typename T>
inline void carry_row(T* carry, const T* gemm, int64_t n) {
  for (int64_t j = 0; j < n; ++j) carry[j] += gemm[j];
}

// The x part of a gate at offset `at` of a row (q * H + j): xg, plus the bias where the
// kernel adds it (bias != nullptr; the CPU drivers fold the biases into xg instead).
template <class VV, typename T>
inline typename VV::reg x_part(const T* xg, const T* bias, int64_t at) {
  typename VV::reg x = VV::load(xg + at);
  if (bias) x = VV::add(x, VV::load(bias + at));
  return x;
}

// ---------------------------------------------------------------------------------------
// LSTM forward step: activations, cell update, optional cell clip, h = o * tanh(c).

template <class V, bool CCLIP>
void lstm_fwd_rows(const LstmFwdStep<typename V::value_type>& p, int64_t b0, int64_t b1) {
  using T = typename V::value_type;
  const int64_t H = p.H;
  for (int64_t b = b0; b < b1; ++b) {
    const bool active = p.step.lengths == nullptr || p.step.t < p.step.lengths[b];
    T* h_out = p.h_out + b * H;
    // Saved values (act, c_raw) only when saving (c_raw != nullptr).
    if (!active) {  // outputs and saved values of absent rows are zero, never stale memory
      zero_row(h_out, H);
      if (p.c_raw) {
        zero_row(p.act + b * 4 * H, 4 * H);
        zero_row(p.c_raw + b * H, H);
      }
      continue;
    }
    const T* xg = p.xg + b * 4 * H;
    T* act = p.act + b * 4 * H;  // may alias xg: column j is read before it is written
    const T* hg = p.hg + b * 4 * H;
    const T* bias = p.bias;
    T* c = p.c + b * H;
    T* c_raw = p.c_raw ? p.c_raw + b * H : nullptr;
    T* h_state = p.h_state ? p.h_state + b * H : nullptr;
    const T cc = p.cell_clip;
    for_columns<V>(H, [&](auto tag, int64_t j) {
      using VV = decltype(tag);
      using R = typename VV::reg;
      // Gate q's pre-activation: the x part (plus the bias when the kernel adds it) plus
      // the recurrent part.
      auto pre = [&](int q) {
        return VV::add(x_part<VV>(xg, bias, q * H + j), VV::load(hg + q * H + j));
      };
      const R i = VV::sigmoid(pre(0));
      const R f = VV::sigmoid(pre(1));
      const R gg = VV::tanh(pre(2));
      const R o = VV::sigmoid(pre(3));
      const R cr = VV::fmadd(f, VV::load(c + j), VV::mul(i, gg));
      if (c_raw) {
        VV::store(act + j, i);
        VV::store(act + H + j, f);
        VV::store(act + 2 * H + j, gg);
        VV::store(act + 3 * H + j, o);
        VV::store(c_raw + j, cr);
      }
      R cn = cr;
      if constexpr (CCLIP) cn = VV::clamp(cr, VV::set1(-cc), VV::set1(cc));
      VV::store(c + j, cn);
      const R h = VV::mul(o, VV::tanh(cn));
      VV::store(h_out + j, h);
      if (h_state) VV::store(h_state + j, h);
    });
  }
}

template <class V>
void lstm_fwd(const LstmFwdStep<typename V::value_type>& p, int64_t b0, int64_t b1) {
  if (p.has_cell_clip) {
    lstm_fwd_rows<V, true>(p, b0, b1);
  } else {
    lstm_fwd_rows<V, false>(p, b0, b1);
  }
}

// ---------------------------------------------------------------------------------------
// The backward math of one vector of units at j, shared by the per-step kernels below and
// the backward engine's (bwd_engine_impl.h): those differ only in how they walk rows and
// units, in the stride of their recurrent buffers and in where a norm clip's row sum
// comes from; each computes the incoming gradients and calls these.

// LSTM: dh and dc_in are the gradients into h_t and c_t (incoming recurrent parts
// included); a is the row's saved activations i, f, g, o, c_prev its previous cell state
// (pre-clip when clamp_prev) or nullptr, h the row's saved h_t = o * tanh(c_t) (before any
// projection). Writes the gate gradients into dg and the gradient into c_{t-1}
// into dc_rec.
//
// Note [tanh(c_t) from the saved h_t]
// The backward needs tanh(c_t) (c_t after the cell clip). The forward computed it and kept
// only h_t = o * tanh(c_t), rounded, beside o: so tanh(c_t) = h_t / o, one division instead
// of a tanh (an exp, a division and a polynomial), and the same value to one rounding more
// (h_t / o = tanh(c_t) (1 + d1)(1 + d2), |d| <= 2^-24; the tanh itself is good to ~2 ulp).
// Where o is 0 (a sigmoid below about -88, or a row absent at t, whose saved values are
// zero) every term with tanh(c_t) is multiplied by o, and 0 is used. Where o is tiny, h_t is
// denormal and h_t / o is off by up to its relative rounding, but again each use is scaled
// by o. Measured (2-core Zen 4 EPYC,
// 2 threads, training calls paired in one process, 150 rounds, new / old time): LSTM T=64
// B=32 I=1 H=64 0.979, T=24 B=16 I=8 H=32 0.995, T=128 I=64 H=256 B=32 0.998, B=8 0.998,
// B=1 1.005; gradient errors against float64 as before (within 1.25x either way, torch.nn's
// 1.4-5x larger) (benchmarks/results/amd-epyc-2026-12-04-b1-training-paired-ab.md).
template <class VV, bool CCLIP, typename T>
inline void lstm_bwd_vector(typename VV::reg dh, typename VV::reg dc_in, const T* a,
                            const T* c_raw, const T* c_prev, bool clamp_prev, T cc, int64_t H,
                            int64_t j, T* dg, T* dc_rec, const T* h) {
  using Rg = typename VV::reg;
  const Rg one = VV::set1(T(1));
  const Rg i = VV::load(a + j);
  const Rg f = VV::load(a + H + j);
  const Rg g = VV::load(a + 2 * H + j);
  const Rg o = VV::load(a + 3 * H + j);
  const Rg cr = VV::load(c_raw + j);
  Rg cp = c_prev ? VV::load(c_prev + j) : VV::zero();
  if constexpr (CCLIP) {
    if (clamp_prev) cp = VV::clamp(cp, VV::set1(-cc), VV::set1(cc));
  }
  // Note [tanh(c_t) from the saved h_t]
  const Rg tc = VV::select(VV::le(o, VV::zero()), VV::zero(), VV::div(VV::load(h + j), o));
  // dc_t = dc_in + dh * o * (1 - tanh(c)^2), then zero where the cell clip was active
  // (torch.clamp passes the gradient where -cc <= c_raw <= cc).
  Rg dct = VV::fmadd(VV::mul(dh, o), VV::fnmadd(tc, tc, one), dc_in);
  if constexpr (CCLIP) dct = VV::select(VV::le(VV::abs(cr), VV::set1(cc)), dct, VV::zero());
  VV::store(dg + j, VV::mul(VV::mul(dct, g), VV::mul(i, VV::sub(one, i))));
  VV::store(dg + H + j, VV::mul(VV::mul(dct, cp), VV::mul(f, VV::sub(one, f))));
  VV::store(dg + 2 * H + j, VV::mul(VV::mul(dct, i), VV::fnmadd(g, g, one)));
  VV::store(dg + 3 * H + j, VV::mul(VV::mul(dh, tc), VV::mul(o, VV::sub(one, o))));
  VV::store(dc_rec + j, VV::mul(dct, f));
}

// GRU: dh is the gradient into h_t (incoming recurrent part included); sv the row's saved
// r, z, n, hn; h_prev its previous state or nullptr (zeros). Writes the gradients of
// x W_ih^T + b_ih (dxg) and of h W_hh^T + b_hh (dhg), and the direct part of the gradient
// into h_{t-1}, dh * z, into dh_carry (whose unit j the caller has already read).
template <class VV, typename T>
inline void gru_bwd_vector(typename VV::reg dh, const T* sv, const T* h_prev, int64_t H,
                           int64_t j, T* dxg, T* dhg, T* dh_carry) {
  using Rg = typename VV::reg;
  const Rg one = VV::set1(T(1));
  const Rg r = VV::load(sv + j);
  const Rg z = VV::load(sv + H + j);
  const Rg n = VV::load(sv + 2 * H + j);
  const Rg hn = VV::load(sv + 3 * H + j);
  const Rg hp = h_prev ? VV::load(h_prev + j) : VV::zero();
  // h = (1 - z) n + z h_prev
  const Rg dn_pre = VV::mul(VV::mul(dh, VV::sub(one, z)), VV::fnmadd(n, n, one));
  const Rg dz_pre = VV::mul(VV::mul(dh, VV::sub(hp, n)), VV::mul(z, VV::sub(one, z)));
  const Rg dr_pre = VV::mul(VV::mul(dn_pre, hn), VV::mul(r, VV::sub(one, r)));
  VV::store(dxg + j, dr_pre);
  VV::store(dxg + H + j, dz_pre);
  VV::store(dxg + 2 * H + j, dn_pre);
  VV::store(dhg + j, dr_pre);
  VV::store(dhg + H + j, dz_pre);
  VV::store(dhg + 2 * H + j, VV::mul(dn_pre, r));
  VV::store(dh_carry + j, VV::mul(dh, z));
}

// ---------------------------------------------------------------------------------------
// LSTM backward step.

template <class V, ClipMode CM, bool CCLIP, int KIND>
inline void lstm_bwd_row(const LstmBwdStep<typename V::value_type>& p, int64_t b, bool first) {
  using T = typename V::value_type;
  const int64_t H = p.H, R = p.R;
  const T* a = p.act + b * 4 * H;
  const T* c_raw = p.c_raw + b * H;
  const T* h = p.h + b * H;
  const T* c_prev = first ? (p.c0 ? p.c0 + b * H : nullptr)
                          : (p.c_raw_prev ? p.c_raw_prev + b * H : nullptr);
  const bool clamp_prev = CCLIP && !first;  // c_raw_prev is pre-clip, c0 is not clipped
  const T* dh_direct = p.dh_direct ? p.dh_direct + b * H : nullptr;
  const T* dy = p.dy ? p.dy + b * R : nullptr;
  const T* dh_n = p.dh_n ? p.dh_n + b * R : nullptr;
  const T* dh_gemm = p.dh_gemm ? p.dh_gemm + b * R : nullptr;
  T* dh_carry = p.dh_carry ? p.dh_carry + b * R : nullptr;
  const T* dc_n = p.dc_n + b * H;
  T* dc_rec = p.dc_rec + b * H;
  T* dg = p.dgates + b * 4 * H;
  const T cc = p.cell_clip;

  const RowClip<T> clip_h = dh_direct ? step_row_clip<V, ClipMode::None, KIND, T>(p.opt.clip, dh_gemm, dh_carry, R)
                                      : step_row_clip<V, CM, KIND, T>(p.opt.clip, dh_gemm, dh_carry, R);
  const RowClip<T> clip_c = step_row_clip<V, CM, KIND, T>(p.opt.clip, dc_rec, nullptr, H);
  // p.record is set only without projection (proj_bwd records the projected state).
  record_step<V, CM, KIND, T>(p.record ? p.record + b * 3 : nullptr, p.opt.clip, dh_gemm, dh_carry, R, clip_h);

  for_columns<V>(H, [&](auto tag, int64_t j) {
    using VV = decltype(tag);
    const typename VV::reg dh =
        dh_direct ? VV::load(dh_direct + j)
                  : VV::add(VV::load(dy + j),
                            incoming_grad<VV, KIND, CM, T>(dh_n, dh_gemm, dh_carry, clip_h, j));
    lstm_bwd_vector<VV, CCLIP, T>(dh, incoming_grad<VV, KIND, CM, T>(dc_n, dc_rec, nullptr, clip_c, j),
                                  a, c_raw, c_prev, clamp_prev, cc, H, j, dg, dc_rec, h);
  });
  // This row's incoming gradient is consumed; the next one is dgates W_hh alone.
  if (dh_carry) zero_row(dh_carry, R);
}

template <class V, ClipMode CM, bool TRUNC, bool CCLIP>
void lstm_bwd_rows(const LstmBwdStep<typename V::value_type>& p, int64_t b0, int64_t b1) {
  const int64_t H = p.H;
  for (int64_t b = b0; b < b1; ++b) {
    const RowStep rs = row_step<TRUNC>(p.step, b, p.opt.truncate);
    if (!rs.active) {  // state carried: recurrent gradients pass through unchanged
      zero_row(p.dgates + b * 4 * H, 4 * H);
      if (p.dh_carry) carry_row(p.dh_carry + b * p.R, p.dh_gemm + b * p.R, p.R);
      record_none(p.record ? p.record + b * 3 : nullptr);
      continue;
    }
    with_incoming(rs.incoming, [&](auto kind) {
      lstm_bwd_row<V, CM, CCLIP, decltype(kind)::value>(p, b, rs.first);
    });
  }
}

// ---------------------------------------------------------------------------------------
// Projection: total gradient of the projected state at step t.

template <class V, ClipMode CM, int KIND>
inline void proj_bwd_row(const ProjBwdStep<typename V::value_type>& p, int64_t b) {
  using T = typename V::value_type;
  const int64_t R = p.R;
  const T* dy = p.dy + b * R;
  const T* dh_n = p.dh_n + b * R;
  const T* dh_gemm = p.dh_gemm + b * R;
  T* dh_carry = p.dh_carry + b * R;
  T* dr = p.dr + b * R;
  const RowClip<T> rc = step_row_clip<V, CM, KIND, T>(p.opt.clip, dh_gemm, dh_carry, R);
  record_step<V, CM, KIND, T>(p.record ? p.record + b * 3 : nullptr, p.opt.clip, dh_gemm, dh_carry, R, rc);
  for_columns<V>(R, [&](auto tag, int64_t j) {
    using VV = decltype(tag);
    VV::store(dr + j, VV::add(VV::load(dy + j),
                              incoming_grad<VV, KIND, CM, T>(dh_n, dh_gemm, dh_carry, rc, j)));
  });
  zero_row(dh_carry, R);
}

template <class V, ClipMode CM, bool TRUNC>
void proj_bwd_rows(const ProjBwdStep<typename V::value_type>& p, int64_t b0, int64_t b1) {
  for (int64_t b = b0; b < b1; ++b) {
    const RowStep rs = row_step<TRUNC>(p.step, b, p.opt.truncate);
    if (!rs.active) {
      zero_row(p.dr + b * p.R, p.R);
      carry_row(p.dh_carry + b * p.R, p.dh_gemm + b * p.R, p.R);
      record_none(p.record ? p.record + b * 3 : nullptr);
      continue;
    }
    with_incoming(rs.incoming, [&](auto kind) { proj_bwd_row<V, CM, decltype(kind)::value>(p, b); });
  }
}

// ---------------------------------------------------------------------------------------
// GRU forward step.

template <class V>
void gru_fwd(const GruFwdStep<typename V::value_type>& p, int64_t b0, int64_t b1) {
  using T = typename V::value_type;
  const int64_t H = p.H;
  for (int64_t b = b0; b < b1; ++b) {
    const bool active = p.step.lengths == nullptr || p.step.t < p.step.lengths[b];
    T* h_out = p.h_out + b * H;
    if (!active) {  // outputs and saved values of absent rows are zero, never stale memory
      zero_row(h_out, H);
      if (p.saved) zero_row(p.saved + b * 4 * H, 4 * H);
      continue;
    }
    const T* xg = p.xg + b * 3 * H;
    const T* hg = p.hg + b * 3 * H;
    const T* bias_x = p.bias_x;
    const T* b_hn = p.b_hn;
    T* sv = p.saved ? p.saved + b * 4 * H : nullptr;  // nullptr: nothing is saved
    T* h = p.h_state + b * H;
    for_columns<V>(H, [&](auto tag, int64_t j) {
      using VV = decltype(tag);
      using Rg = typename VV::reg;
      const Rg r = VV::sigmoid(VV::add(x_part<VV>(xg, bias_x, j), VV::load(hg + j)));
      const Rg z = VV::sigmoid(VV::add(x_part<VV>(xg, bias_x, H + j), VV::load(hg + H + j)));
      Rg hn = VV::load(hg + 2 * H + j);
      if (b_hn) hn = VV::add(hn, VV::load(b_hn + j));
      const Rg n = VV::tanh(VV::fmadd(r, hn, x_part<VV>(xg, bias_x, 2 * H + j)));
      const Rg hp = VV::load(h + j);
      const Rg hnew = VV::fmadd(z, VV::sub(hp, n), n);  // (1 - z) n + z h
      if (sv) {
        VV::store(sv + j, r);
        VV::store(sv + H + j, z);
        VV::store(sv + 2 * H + j, n);
        VV::store(sv + 3 * H + j, hn);
      }
      VV::store(h_out + j, hnew);
      VV::store(h + j, hnew);
    });
  }
}

// ---------------------------------------------------------------------------------------
// GRU backward step.

template <class V, ClipMode CM, int KIND>
inline void gru_bwd_row(const GruBwdStep<typename V::value_type>& p, int64_t b, bool first) {
  using T = typename V::value_type;
  const int64_t H = p.H;
  const T* sv = p.saved + b * 4 * H;
  const T* h_prev = first ? (p.h0 ? p.h0 + b * H : nullptr) : p.h_prev + b * H;
  const T* dy = p.dy + b * H;
  const T* dh_n = p.dh_n + b * H;
  const T* dh_gemm = p.dh_gemm + b * H;
  T* dh_carry = p.dh_carry + b * H;
  T* dxg = p.dxg + b * 3 * H;
  T* dhg = p.dhg + b * 3 * H;
  const RowClip<T> rc = step_row_clip<V, CM, KIND, T>(p.opt.clip, dh_gemm, dh_carry, H);
  // Before the column loop, which overwrites dh_carry.
  record_step<V, CM, KIND, T>(p.record ? p.record + b * 3 : nullptr, p.opt.clip, dh_gemm, dh_carry, H, rc);
  for_columns<V>(H, [&](auto tag, int64_t j) {
    using VV = decltype(tag);
    const typename VV::reg dh =
        VV::add(VV::load(dy + j), incoming_grad<VV, KIND, CM, T>(dh_n, dh_gemm, dh_carry, rc, j));
    gru_bwd_vector<VV, T>(dh, sv, h_prev, H, j, dxg, dhg, dh_carry);
  });
}

template <class V, ClipMode CM, bool TRUNC>
void gru_bwd_rows(const GruBwdStep<typename V::value_type>& p, int64_t b0, int64_t b1) {
  const int64_t H = p.H;
  for (int64_t b = b0; b < b1; ++b) {
    const RowStep rs = row_step<TRUNC>(p.step, b, p.opt.truncate);
    if (!rs.active) {  // state carried: the recurrent gradient passes through unchanged
      zero_row(p.dxg + b * 3 * H, 3 * H);
      zero_row(p.dhg + b * 3 * H, 3 * H);
      carry_row(p.dh_carry + b * H, p.dh_gemm + b * H, H);
      record_none(p.record ? p.record + b * 3 : nullptr);
      continue;
    }
    with_incoming(rs.incoming, [&](auto kind) {
      gru_bwd_row<V, CM, decltype(kind)::value>(p, b, rs.first);
    });
  }
}

// ---------------------------------------------------------------------------------------
// Clip whole rows (the gradient into h0 / c0).

template <class V>
void clip_rows(typename V::value_type* x, int64_t N, GradOptions<typename V::value_type> opt,
               int64_t b0, int64_t b1) {
  using T = typename V::value_type;
  for (int64_t b = b0; b < b1; ++b) {
    T* row = x + b * N;
    const RowClip<T> rc = make_row_clip<V, T>(opt.clip_mode, opt.clip, row, nullptr, N);
    for_columns<V>(N, [&](auto tag, int64_t j) {
      using VV = decltype(tag);
      const typename VV::reg g = VV::load(row + j);
      if (opt.clip_mode == ClipMode::Value) {
        VV::store(row + j, apply_clip<VV, ClipMode::Value, T>(g, rc));
      } else if (opt.clip_mode == ClipMode::Norm) {
        VV::store(row + j, apply_clip<VV, ClipMode::Norm, T>(g, rc));
      }
    });
  }
}

// ---------------------------------------------------------------------------------------
// Option switches and the function table.

template <class V>
struct Entry {
  using T = typename V::value_type;
  static void lstm_bwd(const LstmBwdStep<T>& p, int64_t b0, int64_t b1) {
    with_grad_options(p.opt, [&](auto cm, auto trunc) {
      with_flag(p.has_cell_clip, [&](auto cclip) {
        lstm_bwd_rows<V, decltype(cm)::value, decltype(trunc)::value, decltype(cclip)::value>(p, b0, b1);
      });
    });
  }
  static void proj_bwd(const ProjBwdStep<T>& p, int64_t b0, int64_t b1) {
    with_grad_options(p.opt, [&](auto cm, auto trunc) {
      proj_bwd_rows<V, decltype(cm)::value, decltype(trunc)::value>(p, b0, b1);
    });
  }
  static void gru_bwd(const GruBwdStep<T>& p, int64_t b0, int64_t b1) {
    with_grad_options(p.opt, [&](auto cm, auto trunc) {
      gru_bwd_rows<V, decltype(cm)::value, decltype(trunc)::value>(p, b0, b1);
    });
  }

  static void fill(CpuKernelTable<T>* table) {
    table->lstm_fwd = &FUSEDRNN_CPU_CAPABILITY::lstm_fwd<V>;
    table->lstm_bwd = &lstm_bwd;
    table->proj_bwd = &proj_bwd;
    table->gru_fwd = &FUSEDRNN_CPU_CAPABILITY::gru_fwd<V>;
    table->gru_bwd = &gru_bwd;
    table->clip_rows = &FUSEDRNN_CPU_CAPABILITY::clip_rows<V>;
  }
};

}  // namespace FUSEDRNN_CPU_CAPABILITY
}  // namespace cpu
}  // namespace fusedrnn
