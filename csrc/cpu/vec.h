// SIMD vector types and transcendentals for the CPU pointwise kernels.
//
// Included by csrc/cpu/kernels_impl.h *inside* a per-capability namespace (see
// Note [CPU capability dispatch] in kernels_impl.h): this file includes no header and
// every function in it is compiled once per capability with that capability's target.
//
// A vector type V provides: value_type, reg, mask, width, load/store/set1, arithmetic,
// clamp (NaN-preserving), select, abs, hsum, and sigmoid/tanh. The float transcendentals
// share one algorithm across widths, so the tail loop (ScalarVec) computes the same
// function as the vector body:
//   exp(x):  x = n ln2 + r, |r| <= ln2/2 (Cody-Waite split of ln2), e^r by its Taylor
//            polynomial to degree 7 (truncation error < 1e-8 relative), times 2^n built in
//            the exponent bits. x is clamped to [-87, 88.8]: 2^n stays a normal float below,
//            and reaches +inf above (see exp_f32).
//   sigmoid: 1 / (1 + exp(-x)), exact division.
//   tanh:    |x| < 0.625: x + x^3 q(x^2), q fitted for relative error < 2 ulp;
//            otherwise sign(x) (1 - 2 / (exp(2|x|) + 1)).
// float64 uses the C library functions (there is no float64 SIMD fast path).

// ---------------------------------------------------------------------------------------
// Shared float algorithms, written against the vector interface.
template <class V>
inline typename V::reg exp_f32(typename V::reg x) {
  using R = typename V::reg;
  const R log2e = V::set1(1.44269504088896341f);
  const R ln2_hi = V::set1(0.693359375f);           // exactly representable high part
  const R ln2_lo = V::set1(-2.12194440e-4f);        // ln2 - ln2_hi
  // Above 88.38 the scale 2^n is 2^128 = +inf: exp overflows (to +inf) a little early, which
  // costs sigmoid/tanh nothing and gives sigmoid(-inf) = 0 exactly, as torch computes it.
  x = V::clamp(x, V::set1(-87.0f), V::set1(88.8f));
  const R n = V::round(V::mul(x, log2e));
  R r = V::fnmadd(n, ln2_hi, x);                     // x - n * ln2_hi
  r = V::fnmadd(n, ln2_lo, r);                       // - n * ln2_lo
  // e^r = sum_k r^k / k!, k <= 7, Horner form.
  R p = V::set1(1.0f / 5040.0f);
  p = V::fmadd(p, r, V::set1(1.0f / 720.0f));
  p = V::fmadd(p, r, V::set1(1.0f / 120.0f));
  p = V::fmadd(p, r, V::set1(1.0f / 24.0f));
  p = V::fmadd(p, r, V::set1(1.0f / 6.0f));
  p = V::fmadd(p, r, V::set1(0.5f));
  p = V::fmadd(p, r, V::set1(1.0f));
  p = V::fmadd(p, r, V::set1(1.0f));
  return V::mul(p, V::pow2i(n));
}

template <class V>
inline typename V::reg sigmoid_f32(typename V::reg x) {
  using R = typename V::reg;
  const R one = V::set1(1.0f);
  return V::div(one, V::add(one, exp_f32<V>(V::neg(x))));
}

template <class V>
inline typename V::reg tanh_f32(typename V::reg x) {
  using R = typename V::reg;
  const R ax = V::abs(x);
  // Small arguments: tanh(x) = x + x u q(u), u = x^2 (coefficients fitted on [0, 0.625]).
  const R u = V::mul(x, x);
  R q = V::set1(-0.005660031922161579f);
  q = V::fmadd(q, u, V::set1(0.02059103548526764f));
  q = V::fmadd(q, u, V::set1(-0.05372108519077301f));
  q = V::fmadd(q, u, V::set1(0.13331127166748047f));
  q = V::fmadd(q, u, V::set1(-0.3333325982093811f));
  const R small = V::fmadd(V::mul(x, u), q, x);
  // Large arguments: 1 - 2 / (e^{2|x|} + 1), sign restored.
  const R one = V::set1(1.0f);
  const R e = exp_f32<V>(V::add(ax, ax));
  const R large = V::sub(one, V::div(V::set1(2.0f), V::add(e, one)));
  // The sign of x on both branches (small already has it, except that x = -0 gives +0).
  return V::copysign(V::select(V::lt(ax, V::set1(0.625f)), small, large), x);
}

// ---------------------------------------------------------------------------------------
// Width-1 vectors: the portable path and the tail of every SIMD loop.
template <typename T>
struct ScalarOps {
  using value_type = T;
  using reg = T;
  using mask = bool;
  static constexpr int width = 1;
  static reg load(const T* p) { return *p; }
  static void store(T* p, reg v) { *p = v; }
  static reg set1(T v) { return v; }
  static reg zero() { return T(0); }
  static reg add(reg a, reg b) { return a + b; }
  static reg sub(reg a, reg b) { return a - b; }
  static reg mul(reg a, reg b) { return a * b; }
  static reg div(reg a, reg b) { return a / b; }
  static reg neg(reg a) { return -a; }
  static reg fmadd(reg a, reg b, reg c) { return a * b + c; }
  static reg fnmadd(reg a, reg b, reg c) { return c - a * b; }
  // NaN stays NaN: both comparisons are false for NaN.
  static reg clamp(reg x, reg lo, reg hi) { return x < lo ? lo : (x > hi ? hi : x); }
  static mask lt(reg a, reg b) { return a < b; }
  static mask le(reg a, reg b) { return a <= b; }
  static reg select(mask m, reg a, reg b) { return m ? a : b; }
  static T hsum(reg a) { return a; }
};

template <typename T>
struct ScalarVec;

template <>
struct ScalarVec<float> : ScalarOps<float> {
  static reg abs(reg a) { return __builtin_fabsf(a); }
  static reg copysign(reg mag, reg sgn) { return __builtin_copysignf(mag, sgn); }
  // Round to nearest even with the 1.5 * 2^23 trick (|x| < 2^22 here).
  static reg round(reg x) {
    const float big = 12582912.0f;  // IEEE arithmetic (no -ffast-math): not folded away
    return (x + big) - big;
  }
  static reg pow2i(reg n) {
    const int bits = (static_cast<int>(n) + 127) << 23;
    float out;
    __builtin_memcpy(&out, &bits, sizeof(out));
    return out;
  }
  static void transpose(reg*) {}  // a 1 x 1 tile
  static reg sigmoid(reg x) { return sigmoid_f32<ScalarVec>(x); }
  static reg tanh(reg x) { return tanh_f32<ScalarVec>(x); }
};

template <>
struct ScalarVec<double> : ScalarOps<double> {
  static reg abs(reg a) { return __builtin_fabs(a); }
  static reg sigmoid(reg x) { return 1.0 / (1.0 + __builtin_exp(-x)); }
  static reg tanh(reg x) { return __builtin_tanh(x); }
};

#if defined(FUSEDRNN_VEC_AVX2)
// ---------------------------------------------------------------------------------------
// AVX2 + FMA, 8 floats.
struct Avx2Vec {
  using value_type = float;
  using reg = __m256;
  using mask = __m256;
  static constexpr int width = 8;
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  static reg set1(float v) { return _mm256_set1_ps(v); }
  static reg zero() { return _mm256_setzero_ps(); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static reg div(reg a, reg b) { return _mm256_div_ps(a, b); }
  static reg neg(reg a) { return _mm256_xor_ps(a, _mm256_set1_ps(-0.0f)); }
  static reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static reg fnmadd(reg a, reg b, reg c) { return _mm256_fnmadd_ps(a, b, c); }
  static reg abs(reg a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  static reg copysign(reg mag, reg sgn) {
    const reg sign = _mm256_set1_ps(-0.0f);
    return _mm256_or_ps(_mm256_andnot_ps(sign, mag), _mm256_and_ps(sign, sgn));
  }
  // max/min return their second operand when either is NaN: x goes second, NaN survives.
  static reg clamp(reg x, reg lo, reg hi) { return _mm256_min_ps(hi, _mm256_max_ps(lo, x)); }
  static mask lt(reg a, reg b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static mask le(reg a, reg b) { return _mm256_cmp_ps(a, b, _CMP_LE_OQ); }
  static reg select(mask m, reg a, reg b) { return _mm256_blendv_ps(b, a, m); }
  static float hsum(reg a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static reg round(reg x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static reg pow2i(reg n) {
    const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
  }
  // r[0..7] (rows of an 8 x 8 tile) become its columns: r[i][l] <- old r[l][i].
  static void transpose(reg* r) {
    reg t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
      t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
      u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
      u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
      u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
      u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; ++i) {
      r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
      r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
  }
  static reg sigmoid(reg x) { return sigmoid_f32<Avx2Vec>(x); }
  static reg tanh(reg x) { return tanh_f32<Avx2Vec>(x); }
};
#endif

#if defined(FUSEDRNN_VEC_AVX512)
// ---------------------------------------------------------------------------------------
// AVX-512 (F), 16 floats.
struct Avx512Vec {
  using value_type = float;
  using reg = __m512;
  using mask = __mmask16;
  static constexpr int width = 16;
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  static reg set1(float v) { return _mm512_set1_ps(v); }
  static reg zero() { return _mm512_setzero_ps(); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  static reg div(reg a, reg b) { return _mm512_div_ps(a, b); }
  static reg neg(reg a) { return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a), _mm512_set1_epi32(0x80000000))); }
  static reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static reg fnmadd(reg a, reg b, reg c) { return _mm512_fnmadd_ps(a, b, c); }
  static reg abs(reg a) { return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a), _mm512_set1_epi32(0x7fffffff))); }
  static reg copysign(reg mag, reg sgn) {
    const __m512i m = _mm512_and_si512(_mm512_castps_si512(mag), _mm512_set1_epi32(0x7fffffff));
    const __m512i s = _mm512_and_si512(_mm512_castps_si512(sgn), _mm512_set1_epi32(0x80000000));
    return _mm512_castsi512_ps(_mm512_or_si512(m, s));
  }
  // max/min return their second operand when either is NaN: x goes second, NaN survives.
  static reg clamp(reg x, reg lo, reg hi) { return _mm512_min_ps(hi, _mm512_max_ps(lo, x)); }
  static mask lt(reg a, reg b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static mask le(reg a, reg b) { return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ); }
  static reg select(mask m, reg a, reg b) { return _mm512_mask_blend_ps(m, b, a); }
  static float hsum(reg a) {
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static reg round(reg x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static reg pow2i(reg n) {
    const __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
    return _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
  }
  // r[0..15] (rows of a 16 x 16 tile) become its columns: r[i][l] <- old r[l][i].
  static void transpose(reg* r) {
    reg t[16];
    for (int i = 0; i < 16; i += 2) {
      t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
      r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
      r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
      r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
      r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 16; i += 8) {
      for (int q = 0; q < 4; ++q) {
        t[i + q] = _mm512_shuffle_f32x4(r[i + q], r[i + 4 + q], 0x88);
        t[i + 4 + q] = _mm512_shuffle_f32x4(r[i + q], r[i + 4 + q], 0xDD);
      }
    }
    for (int q = 0; q < 8; ++q) {
      r[q] = _mm512_shuffle_f32x4(t[q], t[8 + q], 0x88);
      r[8 + q] = _mm512_shuffle_f32x4(t[q], t[8 + q], 0xDD);
    }
  }
  static reg sigmoid(reg x) { return sigmoid_f32<Avx512Vec>(x); }
  static reg tanh(reg x) { return tanh_f32<Avx512Vec>(x); }
};
#endif
