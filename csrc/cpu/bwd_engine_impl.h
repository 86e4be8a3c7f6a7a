// The CPU backward engine's kernels (Note [CPU backward engine] in bwd_engine.cpp): the
// register-blocked micro-kernel of dgates_t W_hh over a thread's packed W_hh panels, the
// per-block partial sums of squares of the norm clip and the gradient record, and the
// pointwise passes of one step over a thread's units.
//
// Compiled once per CPU capability by capability_avx512.cpp, capability_avx2.cpp and
// capability_default.cpp, exactly like kernels_impl.h (Note [CPU capability dispatch]): no
// header is included here, and everything lives in fusedrnn::cpu::<capability>::bwd (a
// namespace of its own, so nothing here can collide with kernels_impl.h's inline functions
// of the same capability).

#ifndef FUSEDRNN_CPU_CAPABILITY
#error "bwd_engine_impl.h is included by the capability_<name>.cpp files only"
#endif

namespace fusedrnn {
namespace cpu {
namespace FUSEDRNN_CPU_CAPABILITY {
namespace bwd {

// vec.h, row_steps.h and the shared backward math (lstm_bwd_vector, gru_bwd_vector,
// incoming_grad) come from the enclosing capability namespace: capability_<name>.cpp
// includes kernels_impl.h first.

// ---------------------------------------------------------------------------------------
// Register blocking of the micro-kernel, per vector width: at most MR rows of A at a time,
// NB 16-unit panels per row chunk (NB1 when the step has a single row: a GEMV, where only
// more independent accumulator chains hide the FMA latency). MR * NB * (16 / width)
// accumulators plus NB * (16 / width) loaded B vectors and one broadcast must fit the
// register file (32 zmm, 16 ymm).
template <int W>
struct Blocking;
template <>
struct Blocking<16> {  // AVX-512
  static constexpr int MR = 6, NB = 4, NB1 = 8, NB2 = 8;
};
template <>
struct Blocking<8> {  // AVX2
  static constexpr int MR = 6, NB = 1, NB1 = 4, NB2 = 2;
};
template <>
struct Blocking<1> {  // portable
  static constexpr int MR = 2, NB = 1, NB1 = 1, NB2 = 1;
};

// The terms k0 <= k < k1 of the product, summed in a fresh FMA chain and then added onto C
// (stored when k0 == 0). See kKBlock for why k comes in blocks. A points at term k0: A(i, k)
// is at A[i * lda + (k - k0)], or with ACOL at A[(k - k0) * lda + i]
// (EngineGemm::a_by_columns, and the packed copy gemm_impl makes of such an A).
template <class V, int MR, int NB, bool ACOL>
inline void micro_kernel(const typename V::value_type* A, int64_t lda,
                         const typename V::value_type* Bp, int64_t panel, int64_t k0, int64_t k1,
                         typename V::value_type* C, int64_t ldc) {
  using T = typename V::value_type;
  using Rg = typename V::reg;
  constexpr int VP = static_cast<int>(kEngineBlock) / V::width;  // vectors per panel row
  constexpr int NV = NB * VP;
  Rg acc[MR][NV];
#pragma GCC unroll 64
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 64
    for (int p = 0; p < NB; ++p) {
#pragma GCC unroll 64
      for (int v = 0; v < VP; ++v) {
        acc[i][p * VP + v] = V::zero();
      }
    }
  }
  for (int64_t k = k0; k < k1; ++k) {
    Rg b[NV];
    const T* bk = Bp + k * kEngineBlock;
#pragma GCC unroll 64
    for (int p = 0; p < NB; ++p) {
#pragma GCC unroll 64
      for (int v = 0; v < VP; ++v) b[p * VP + v] = V::load(bk + p * panel + v * V::width);
    }
#pragma GCC unroll 64
    for (int i = 0; i < MR; ++i) {
      const Rg a = V::set1(ACOL ? A[(k - k0) * lda + i] : A[i * lda + (k - k0)]);
#pragma GCC unroll 64
      for (int q = 0; q < NV; ++q) acc[i][q] = V::fmadd(a, b[q], acc[i][q]);
    }
  }
#pragma GCC unroll 64
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 64
    for (int p = 0; p < NB; ++p) {
#pragma GCC unroll 64
      for (int v = 0; v < VP; ++v) {
        T* c = C + i * ldc + p * kEngineBlock + v * V::width;
        V::store(c, k0 == 0 ? acc[i][p * VP + v] : V::add(V::load(c), acc[i][p * VP + v]));
      }
    }
  }
}

template <class V, int MR, bool ACOL>
inline void micro_nb(int nb, const typename V::value_type* A, int64_t lda,
                     const typename V::value_type* Bp, int64_t panel, int64_t k0, int64_t k1,
                     typename V::value_type* C, int64_t ldc) {
  // Only the (MR, NB) pairs the blocking can ask for are instantiated.
  constexpr int maxnb = MR == 1 ? Blocking<V::width>::NB1
                                : (MR == 2 ? Blocking<V::width>::NB2 : Blocking<V::width>::NB);
  switch (nb) {
    case 1: micro_kernel<V, MR, 1, ACOL>(A, lda, Bp, panel, k0, k1, C, ldc); break;
    case 2: if constexpr (maxnb >= 2) micro_kernel<V, MR, 2, ACOL>(A, lda, Bp, panel, k0, k1, C, ldc); break;
    case 3: if constexpr (maxnb >= 3) micro_kernel<V, MR, 3, ACOL>(A, lda, Bp, panel, k0, k1, C, ldc); break;
    case 4: if constexpr (maxnb >= 4) micro_kernel<V, MR, 4, ACOL>(A, lda, Bp, panel, k0, k1, C, ldc); break;
    case 5: if constexpr (maxnb >= 5) micro_kernel<V, MR, 5, ACOL>(A, lda, Bp, panel, k0, k1, C, ldc); break;
    case 6: if constexpr (maxnb >= 6) micro_kernel<V, MR, 6, ACOL>(A, lda, Bp, panel, k0, k1, C, ldc); break;
    case 7: if constexpr (maxnb >= 7) micro_kernel<V, MR, 7, ACOL>(A, lda, Bp, panel, k0, k1, C, ldc); break;
    default: if constexpr (maxnb >= 8) micro_kernel<V, MR, 8, ACOL>(A, lda, Bp, panel, k0, k1, C, ldc); break;
  }
}

template <class V, bool ACOL>
inline void micro(int mr, int nb, const typename V::value_type* A, int64_t lda,
                  const typename V::value_type* Bp, int64_t panel, int64_t k0, int64_t k1,
                  typename V::value_type* C, int64_t ldc) {
  constexpr int MRX = Blocking<V::width>::MR;
  switch (mr) {
    case 1: micro_nb<V, 1, ACOL>(nb, A, lda, Bp, panel, k0, k1, C, ldc); break;
    case 2: if constexpr (MRX >= 2) micro_nb<V, 2, ACOL>(nb, A, lda, Bp, panel, k0, k1, C, ldc); break;
    case 3: if constexpr (MRX >= 3) micro_nb<V, 3, ACOL>(nb, A, lda, Bp, panel, k0, k1, C, ldc); break;
    case 4: if constexpr (MRX >= 4) micro_nb<V, 4, ACOL>(nb, A, lda, Bp, panel, k0, k1, C, ldc); break;
    case 5: if constexpr (MRX >= 5) micro_nb<V, 5, ACOL>(nb, A, lda, Bp, panel, k0, k1, C, ldc); break;
    default: if constexpr (MRX >= 6) micro_nb<V, 6, ACOL>(nb, A, lda, Bp, panel, k0, k1, C, ldc); break;
  }
}

// k comes in blocks of kKBlock terms (bwd_engine_params.h).

// Rows s0 <= k < s1 of an A stored by columns (A(i, k) at A[k * lda + i], M rows), copied
// for the register tiles: the rows i0 .. i0+MR-1 of tile c as [s1 - s0][MR] at
// out + c * (s1 - s0) * MR (the last tile's rows past M are left as they are). k goes in
// groups of 8 with the tiles inside: a group reads 8 rows of A (8 lines per tile, which
// the next tile reads on from L1) and writes 8 * MR contiguous floats per tile. Tile by tile
// over every k (with lda a multiple of 4 KiB all of a tile's reads fall in one L1 set), or
// k by k over every tile (all the tiles' write streams fell into 4 sets at M = 512), the
// copy cost as much as the products at R = 64.
template <typename T, int MR>
void pack_by_columns(const T* A, int64_t lda, int64_t M, int64_t s0, int64_t s1, T* out) {
  constexpr int64_t kGroup = 8;
  const int64_t kn = s1 - s0;
  for (int64_t k0 = s0; k0 < s1; k0 += kGroup) {
    const int64_t k1 = s1 - k0 < kGroup ? s1 : k0 + kGroup;
    T* o = out + (k0 - s0) * MR;
    for (int64_t i = 0; i < M; i += MR, o += kn * MR) {
      const int mr = M - i < MR ? static_cast<int>(M - i) : MR;
      for (int64_t k = k0; k < k1; ++k) {
        const T* a = A + k * lda + i;
        T* d = o + (k - k0) * MR;
        if (mr == MR) {
#pragma GCC unroll 8
          for (int r = 0; r < MR; ++r) d[r] = a[r];
        } else {
          for (int r = 0; r < mr; ++r) d[r] = a[r];
        }
      }
    }
  }
}

template <class V, bool ACOL>
void gemm_impl(const EngineGemm<typename V::value_type>& g) {
  using T = typename V::value_type;
  using Bl = Blocking<V::width>;
  constexpr int MR = Bl::MR;
  static_assert(MR <= 8, "weight_grad_pack_elems counts tiles of at most 8 rows");
  // Row chunks of MR (the last one shorter); the panel group width follows the chunk height.
  const int nbmax = g.M == 1 ? Bl::NB1 : (g.M == 2 ? Bl::NB2 : Bl::NB);
  const int64_t kb = kKBlock;
  const int64_t panel = g.panel_stride();  // elements from one panel to the next
  // The weight gradients (ACOL): k in super-blocks (weight_grad_super_k), and with a_pack
  // each super-block's rows of a copied tile by tile first (Note [Weight gradients on the
  // engine kernel] in bwd_engine.cpp).
  int64_t ks = ACOL ? weight_grad_super_k(g.M, g.K, g.blk1 - g.blk0, sizeof(T)) : g.K;
  bool packed = ACOL && g.a_pack != nullptr &&
                (g.blk1 - g.blk0 > nbmax || g.K * g.M * int64_t(sizeof(T)) > kWeightGradPackAbove);
  if (packed) {
    // The copy of a super-block must fit a_pack: fewer k-blocks per super-block if need be
    // (the sums do not depend on the super-blocks), none if not even one fits.
    const int64_t tile_rows = (g.M + MR - 1) / MR * MR;
    if (ks * tile_rows > g.a_pack_elems) {
      const int64_t fit = g.a_pack_elems / (tile_rows * kb) * kb;
      if (fit > 0) {
        ks = fit;
      } else {
        packed = false;
      }
    }
  }
  for (int64_t s0 = 0; s0 < g.K; s0 += ks) {
    const int64_t s1 = g.K - s0 < ks ? g.K : s0 + ks;
    if (packed) pack_by_columns<T, MR>(g.A, g.lda, g.M, s0, s1, g.a_pack);
    for (int64_t blk = g.blk0, nb = 0; blk < g.blk1; blk += nb) {
      // The panels up to the end, or to the second output's first panel.
      const int64_t end = g.C2 && blk < g.blk_split && g.blk_split < g.blk1 ? g.blk_split : g.blk1;
      nb = end - blk < nbmax ? end - blk : nbmax;
      T* c = g.C2 && blk >= g.blk_split ? g.C2 + (blk - g.blk_split) * kEngineBlock
                                        : g.C + blk * kEngineBlock;
      const int64_t ldc = g.C2 && blk >= g.blk_split ? g.ldc2 : g.ldc;
      const auto* bp = g.Bp + blk * panel;
      for (int64_t k0 = s0; k0 < s1; k0 += kb) {
        const int64_t k1 = g.K - k0 < kb ? g.K : k0 + kb;
        for (int64_t i = 0; i < g.M; i += MR) {
          const int mr = static_cast<int>(g.M - i < MR ? g.M - i : MR);
          const T* a = packed ? g.a_pack + (i / MR) * (s1 - s0) * MR + (k0 - s0) * MR
                              : (ACOL ? g.A + k0 * g.lda + i : g.A + i * g.lda + k0);
          micro<V, ACOL>(mr, static_cast<int>(nb), a, packed ? MR : g.lda, bp, panel, k0, k1,
                         c + i * ldc, ldc);
        }
      }
    }
  }
}

template <class V>
void gemm(const EngineGemm<typename V::value_type>& g) {
  if (g.M <= 0) return;
  if (g.a_by_columns) {
    gemm_impl<V, true>(g);
  } else {
    gemm_impl<V, false>(g);
  }
}

// ---------------------------------------------------------------------------------------
// Weight gradients with few columns (ThinOuter): each row k of a is read once and added,
// times b[k, r], into R accumulators per column vector; k in blocks of kKBlock (a fresh
// chain per block, added onto the result in block order, as gemm sums). A chunk of
// kThinChunk columns is whole vectors except at the end of G, where the last columns take
// the width-1 path: the chunks are fixed, so results do not depend on the thread count.
template <class V, int R>
inline void thin_chunk(const ThinOuter<typename V::value_type>& p, int64_t g) {
  using T = typename V::value_type;
  using Rg = typename V::reg;
  constexpr int NV = static_cast<int>(kThinChunk) / V::width;
  for (int64_t k0 = 0; k0 < p.K; k0 += kKBlock) {
    const int64_t k1 = p.K - k0 < kKBlock ? p.K : k0 + kKBlock;
    Rg acc[R][NV];
#pragma GCC unroll 64
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 64
      for (int v = 0; v < NV; ++v) acc[r][v] = V::zero();
    }
    for (int64_t k = k0; k < k1; ++k) {
      const T* ak = p.a + k * p.lda + g;
      const T* bk = p.b + k * p.ldb;
      Rg av[NV];
#pragma GCC unroll 64
      for (int v = 0; v < NV; ++v) av[v] = V::load(ak + v * V::width);
#pragma GCC unroll 64
      for (int r = 0; r < R; ++r) {
        const Rg bv = V::set1(bk[r]);
#pragma GCC unroll 64
        for (int v = 0; v < NV; ++v) acc[r][v] = V::fmadd(bv, av[v], acc[r][v]);
      }
    }
#pragma GCC unroll 64
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 64
      for (int v = 0; v < NV; ++v) {
        T* o = p.out + r * p.G + g + v * V::width;
        V::store(o, k0 == 0 ? acc[r][v] : V::add(V::load(o), acc[r][v]));
      }
    }
  }
}

template <class V, int R>
void thin_outer_r(const ThinOuter<typename V::value_type>& p, int64_t c0, int64_t c1) {
  using S = ScalarVec<typename V::value_type>;
  for (int64_t c = c0; c < c1; ++c) {
    const int64_t g = c * kThinChunk;
    if (g + kThinChunk <= p.G) {
      thin_chunk<V, R>(p, g);
    } else {
      // The last, partial chunk: one column at a time, the same sums.
      for (int64_t gg = g; gg < p.G; ++gg) {
        for (int64_t k0 = 0; k0 < p.K; k0 += kKBlock) {
          const int64_t k1 = p.K - k0 < kKBlock ? p.K : k0 + kKBlock;
          for (int r = 0; r < R; ++r) {
            typename V::value_type acc = 0;
            for (int64_t k = k0; k < k1; ++k) {
              acc = S::fmadd(p.b[k * p.ldb + r], p.a[k * p.lda + gg], acc);
            }
            auto& o = p.out[r * p.G + gg];
            o = k0 == 0 ? acc : o + acc;
          }
        }
      }
    }
  }
}

// f(Tag<n>()) (kernel_common.h's tag dispatch) for a column count n of the thin kernels,
// 1..kThinMaxR (larger counts take the largest).
template <int N = 1, class F>
inline void with_thin_columns(int64_t n, const F& f) {
  if constexpr (N < kThinMaxR) {
    if (n <= N) {
      f(Tag<N>());
    } else {
      with_thin_columns<N + 1>(n, f);
    }
  } else {
    f(Tag<N>());
  }
}

template <class V>
void thin_outer(const ThinOuter<typename V::value_type>& p, int64_t c0, int64_t c1) {
  with_thin_columns(p.R, [&](auto r) { thin_outer_r<V, decltype(r)::value>(p, c0, c1); });
}

// ---------------------------------------------------------------------------------------
// Input gradients with few columns (ThinRows): per row, N dot products over K, each summed in
// V::width lanes (lane l takes k = l, l + width, ...) that are then added up, and the last
// K % width terms after them, one by one.
template <class V, int N>
void thin_rows_n(const ThinRows<typename V::value_type>& p, int64_t m0, int64_t m1) {
  using T = typename V::value_type;
  using Rg = typename V::reg;
  using S = ScalarVec<T>;
  constexpr int64_t W = V::width;
  const int64_t kv = p.K / W * W;
  for (int64_t m = m0; m < m1; ++m) {
    const T* a = p.a + m * p.lda;
    Rg acc[N];
#pragma GCC unroll 8
    for (int n = 0; n < N; ++n) acc[n] = V::zero();
    for (int64_t k = 0; k < kv; k += W) {
      const Rg av = V::load(a + k);
#pragma GCC unroll 8
      for (int n = 0; n < N; ++n) acc[n] = V::fmadd(av, V::load(p.wt + n * p.K + k), acc[n]);
    }
#pragma GCC unroll 8
    for (int n = 0; n < N; ++n) {
      T sum = V::hsum(acc[n]);
      for (int64_t k = kv; k < p.K; ++k) sum = S::fmadd(a[k], p.wt[n * p.K + k], sum);
      p.out[m * p.N + n] = sum;
    }
  }
}

template <class V>
void thin_rows(const ThinRows<typename V::value_type>& p, int64_t m0, int64_t m1) {
  with_thin_columns(p.N, [&](auto n) { thin_rows_n<V, decltype(n)::value>(p, m0, m1); });
}

// ---------------------------------------------------------------------------------------
// Partial sums of squares per 16-unit block (norm clip and gradient record).

template <class V>
void partials(const EnginePartials<typename V::value_type>& p, int64_t blk0, int64_t blk1) {
  using T = typename V::value_type;
  using Rg = typename V::reg;
  constexpr int VP = static_cast<int>(kEngineBlock) / V::width;
  const Rg clip = V::set1(p.clip), one = V::set1(T(1));
  for (int64_t i = 0; i < p.M; ++i) {
    const T* a = p.a + i * p.ld;
    const T* b = p.b ? p.b + i * p.ld : nullptr;
    for (int64_t blk = blk0; blk < blk1; ++blk) {
      Rg acc = V::zero(), changed = V::zero();
#pragma GCC unroll 16
      for (int v = 0; v < VP; ++v) {
        const int64_t j = blk * kEngineBlock + v * V::width;
        Rg x = V::load(a + j);
        if (b) x = V::add(x, V::load(b + j));
        acc = V::fmadd(x, x, acc);
        if (p.cnt) changed = V::add(changed, V::select(V::le(V::abs(x), clip), V::zero(), one));
      }
      p.sq[i * p.nblk + blk] = V::hsum(acc);
      if (p.cnt) p.cnt[i * p.nblk + blk] = V::hsum(changed);
    }
  }
}

// The norm clip's factor for a row from its block partials, summed in block order (the same
// sum whatever the thread count).
template <typename T>
inline T norm_scale_of(const T* part, int64_t nblk, T clip) {
  T sumsq = T(0);
  for (int64_t k = 0; k < nblk; ++k) sumsq += part[k];
  return norm_scale<T>(sumsq, clip);
}

// The clip of a row whose norm-mode factor is `scale` (value mode: [-clip, clip]), for
// incoming_grad (kernels_impl.h).
template <typename T>
inline RowClip<T> row_clip(T clip, T scale) {
  return RowClip<T>{-clip, clip, scale, T(0)};
}

template <typename T>
inline void zero_units(T* x, int64_t k0, int64_t k1) {
  for (int64_t j = k0; j < k1; ++j) x[j] = T(0);
}

// Adds a row's G gate gradients at units j.. (one vector of VV) to its running sums (Note
// [Bias gradient in the time loop] in bwd_engine.cpp); sums == nullptr: none kept.
template <class VV, typename T>
inline void add_to_sums(T* sums, const T* g, int G, int64_t H, int64_t j) {
  if (!sums) return;
  for (int q = 0; q < G; ++q) {
    VV::store(sums + q * H + j, VV::add(VV::load(sums + q * H + j), VV::load(g + q * H + j)));
  }
}

// A row that does not exist at t carries its recurrent gradient: carry += gemm.
template <typename T>
inline void carry_units(T* carry, const T* gemm, int64_t k0, int64_t k1) {
  for (int64_t j = k0; j < k1; ++j) carry[j] += gemm[j];
}

// ---------------------------------------------------------------------------------------
// LSTM, one step, units [k0, k1).

template <class V, ClipMode CM, bool CCLIP, int KIND>
inline void lstm_row(const LstmBwdUnits<typename V::value_type>& p, int64_t b, bool first,
                     int64_t k0, int64_t k1) {
  using T = typename V::value_type;
  const int64_t H = p.H, Hp = p.Hp;
  const T* a = p.act + b * 4 * H;
  const T* c_raw = p.c_raw + b * H;
  const T* h = p.h + b * H;
  const T* c_prev = first ? (p.c0 ? p.c0 + b * H : nullptr)
                          : (p.c_raw_prev ? p.c_raw_prev + b * H : nullptr);
  const bool clamp_prev = CCLIP && !first;  // c_raw_prev is pre-clip, c0 is not clipped
  const T* dh_direct = p.dh_direct ? p.dh_direct + b * Hp : nullptr;
  const T* dy = p.dy ? p.dy + b * H : nullptr;
  const T* dh_n = p.dh_n ? p.dh_n + b * H : nullptr;
  const T* dh_gemm = p.dh_gemm ? p.dh_gemm + b * Hp : nullptr;
  T* dh_carry = p.dh_carry ? p.dh_carry + b * Hp : nullptr;
  const T* dc_n = p.dc_n + b * H;
  T* dc_rec = p.dc_rec + b * Hp;
  T* dg = p.dgates + b * 4 * H;
  T* db = p.db_rows ? p.db_rows + b * 4 * H : nullptr;
  const T cc = p.cell_clip, clip = p.opt.clip;
  T scale_h = T(1), scale_c = T(1);
  if constexpr (KIND == kRecurrent && CM == ClipMode::Norm) {
    if (!dh_direct) scale_h = norm_scale_of(p.part_h + b * p.nblk_h, p.nblk_h, clip);
    scale_c = norm_scale_of(p.part_c + b * p.nblk_c, p.nblk_c, clip);
  }
  const RowClip<T> clip_h = row_clip(clip, scale_h), clip_c = row_clip(clip, scale_c);
  for_units<V>(k0, k1, [&](auto tag, int64_t j) {
    using VV = decltype(tag);
    const typename VV::reg dh =
        dh_direct ? VV::load(dh_direct + j)
                  : VV::add(VV::load(dy + j),
                            incoming_grad<VV, KIND, CM, T>(dh_n, dh_gemm, dh_carry, clip_h, j));
    lstm_bwd_vector<VV, CCLIP, T>(dh, incoming_grad<VV, KIND, CM, T>(dc_n, dc_rec, nullptr, clip_c, j),
                                  a, c_raw, c_prev, clamp_prev, cc, H, j, dg, dc_rec, h);
    add_to_sums<VV>(db, dg, 4, H, j);
  });
  // This row's incoming gradient is consumed; the next one is dgates W_hh alone.
  if (dh_carry) zero_units(dh_carry, k0, k1);
}

template <class V, ClipMode CM, bool TRUNC, bool CCLIP>
void lstm_rows(const LstmBwdUnits<typename V::value_type>& p, int64_t k0, int64_t k1) {
  const int64_t H = p.H;
  StepInfo st = p.step;
  for (int64_t b = 0; b < p.M; ++b) {
    const RowStep rs = row_step<TRUNC>(st, b, p.opt.truncate);
    if (!rs.active) {  // state carried: recurrent gradients pass through unchanged
      for (int g = 0; g < 4; ++g) zero_units(p.dgates + b * 4 * H + g * H, k0, k1);
      if (p.dh_carry) carry_units(p.dh_carry + b * p.Hp, p.dh_gemm + b * p.Hp, k0, k1);
      continue;
    }
    with_incoming(rs.incoming, [&](auto kind) {
      lstm_row<V, CM, CCLIP, decltype(kind)::value>(p, b, rs.first, k0, k1);
    });
  }
}

// ---------------------------------------------------------------------------------------
// Projection: dr_t over the units [k0, k1) of P.

template <class V, ClipMode CM, int KIND>
inline void proj_row(const ProjBwdUnits<typename V::value_type>& p, int64_t b, int64_t k0,
                     int64_t k1) {
  using T = typename V::value_type;
  const int64_t P = p.P, Pp = p.Pp;
  const T* dy = p.dy + b * P;
  const T* dh_n = p.dh_n + b * P;
  const T* dh_gemm = p.dh_gemm + b * Pp;
  T* dh_carry = p.dh_carry + b * Pp;
  T* dr = p.dr + b * P;
  T* dr_pad = p.dr_pad + b * Pp;
  const T clip = p.opt.clip;
  T scale = T(1);
  if constexpr (KIND == kRecurrent && CM == ClipMode::Norm) {
    scale = norm_scale_of(p.part_h + b * p.nblk, p.nblk, clip);
  }
  const RowClip<T> rc = row_clip(clip, scale);
  for_units<V>(k0, k1, [&](auto tag, int64_t j) {
    using VV = decltype(tag);
    const typename VV::reg v =
        VV::add(VV::load(dy + j), incoming_grad<VV, KIND, CM, T>(dh_n, dh_gemm, dh_carry, rc, j));
    VV::store(dr + j, v);
    VV::store(dr_pad + j, v);
  });
  zero_units(dh_carry, k0, k1);
}

template <class V, ClipMode CM, bool TRUNC>
void proj_rows(const ProjBwdUnits<typename V::value_type>& p, int64_t k0, int64_t k1) {
  for (int64_t b = 0; b < p.M; ++b) {
    const RowStep rs = row_step<TRUNC>(p.step, b, p.opt.truncate);
    if (!rs.active) {
      zero_units(p.dr + b * p.P, k0, k1);
      zero_units(p.dr_pad + b * p.Pp, k0, k1);
      carry_units(p.dh_carry + b * p.Pp, p.dh_gemm + b * p.Pp, k0, k1);
      continue;
    }
    with_incoming(rs.incoming, [&](auto kind) { proj_row<V, CM, decltype(kind)::value>(p, b, k0, k1); });
  }
}

// ---------------------------------------------------------------------------------------
// GRU, one step, units [k0, k1).

template <class V, ClipMode CM, int KIND>
inline void gru_row(const GruBwdUnits<typename V::value_type>& p, int64_t b, bool first,
                    int64_t k0, int64_t k1) {
  using T = typename V::value_type;
  const int64_t H = p.H, Hp = p.Hp;
  const T* sv = p.saved + b * 4 * H;
  const T* h_prev = first ? (p.h0 ? p.h0 + b * H : nullptr) : p.h_prev + b * H;
  const T* dy = p.dy + b * H;
  const T* dh_n = p.dh_n + b * H;
  const T* dh_gemm = p.dh_gemm + b * Hp;
  T* dh_carry = p.dh_carry + b * Hp;
  T* dxg = p.dxg + b * 3 * H;
  T* dhg = p.dhg + b * 3 * H;
  T* dbi = p.dbi_rows ? p.dbi_rows + b * 3 * H : nullptr;
  T* dbh = p.dbh_rows ? p.dbh_rows + b * 3 * H : nullptr;
  const T clip = p.opt.clip;
  T scale = T(1);
  if constexpr (KIND == kRecurrent && CM == ClipMode::Norm) {
    scale = norm_scale_of(p.part_h + b * p.nblk, p.nblk, clip);
  }
  const RowClip<T> rc = row_clip(clip, scale);
  for_units<V>(k0, k1, [&](auto tag, int64_t j) {
    using VV = decltype(tag);
    const typename VV::reg dh =
        VV::add(VV::load(dy + j), incoming_grad<VV, KIND, CM, T>(dh_n, dh_gemm, dh_carry, rc, j));
    gru_bwd_vector<VV, T>(dh, sv, h_prev, H, j, dxg, dhg, dh_carry);
    add_to_sums<VV>(dbi, dxg, 3, H, j);
    add_to_sums<VV>(dbh, dhg, 3, H, j);
  });
}

template <class V, ClipMode CM, bool TRUNC>
void gru_rows(const GruBwdUnits<typename V::value_type>& p, int64_t k0, int64_t k1) {
  const int64_t H = p.H;
  for (int64_t b = 0; b < p.M; ++b) {
    const RowStep rs = row_step<TRUNC>(p.step, b, p.opt.truncate);
    if (!rs.active) {
      for (int g = 0; g < 3; ++g) {
        zero_units(p.dxg + b * 3 * H + g * H, k0, k1);
        zero_units(p.dhg + b * 3 * H + g * H, k0, k1);
      }
      carry_units(p.dh_carry + b * p.Hp, p.dh_gemm + b * p.Hp, k0, k1);
      continue;
    }
    with_incoming(rs.incoming, [&](auto kind) {
      gru_row<V, CM, decltype(kind)::value>(p, b, rs.first, k0, k1);
    });
  }
}

// ---------------------------------------------------------------------------------------
// Option switches and the table.

template <class V>
struct Entry {
  using T = typename V::value_type;
  static void lstm_units(const LstmBwdUnits<T>& p, int64_t k0, int64_t k1) {
    with_grad_options(p.opt, [&](auto cm, auto trunc) {
      with_flag(p.has_cell_clip, [&](auto cclip) {
        lstm_rows<V, decltype(cm)::value, decltype(trunc)::value, decltype(cclip)::value>(p, k0, k1);
      });
    });
  }
  static void proj_units(const ProjBwdUnits<T>& p, int64_t k0, int64_t k1) {
    with_grad_options(p.opt, [&](auto cm, auto trunc) {
      proj_rows<V, decltype(cm)::value, decltype(trunc)::value>(p, k0, k1);
    });
  }
  static void gru_units(const GruBwdUnits<T>& p, int64_t k0, int64_t k1) {
    with_grad_options(p.opt, [&](auto cm, auto trunc) {
      gru_rows<V, decltype(cm)::value, decltype(trunc)::value>(p, k0, k1);
    });
  }

  static void fill(BwdEngineTable<T>* table) {
    table->gemm = &bwd::gemm<V>;
    table->thin_outer = &bwd::thin_outer<V>;
    table->thin_rows = &bwd::thin_rows<V>;
    table->partials = &bwd::partials<V>;
    table->lstm_units = &lstm_units;
    table->proj_units = &proj_units;
    table->gru_units = &gru_units;
  }
};

}  // namespace bwd
}  // namespace FUSEDRNN_CPU_CAPABILITY
}  // namespace cpu
}  // namespace fusedrnn
