// What the CPU and the CUDA kernels share beyond the parameter structs of rnn_params.h: the
// per-row step bookkeeping (which kind of recurrent gradient a row receives at a step, Note
// [Per-row step bookkeeping] in rnn_params.h) and the one idiom that turns run-time options
// into template arguments (tag dispatch: with_clip_mode / with_flag / with_incoming call a
// generic lambda with Tag<value>, the lambda names decltype(tag)::value).
//
// Included INSIDE the includer's namespace, after rnn_params.h: by csrc/cpu/row_steps.h in
// each CPU capability's namespace (so every capability compiles its own copy under its own
// target, Note [CPU capability dispatch] in csrc/cpu/kernels_impl.h) and by
// csrc/cuda/common.cuh in fusedrnn::cuda::detail. The includer defines FUSEDRNN_ROW_FN, the
// qualifiers of row_step (`inline` on the CPU, `__device__ __forceinline__` for CUDA); the
// switches run on the host. It includes nothing.

#ifndef FUSEDRNN_ROW_FN
#error "kernel_common.h is included by csrc/cpu/row_steps.h and csrc/cuda/common.cuh only"
#endif

enum Incoming : int {
  kFromFinal = 0,  // the row's last processed step: dh_n / dc_n, unclipped
  kCut = 1,        // truncation point: no recurrent gradient
  kRecurrent = 2,  // clip(recurrent gradient from step s+1)
};

struct RowStep {
  bool active;   // the row exists at time t
  bool first;    // processed step s == 0: the previous state is h0 / c0
  int incoming;  // an Incoming value
};

// Row b at the step of `st`. TRUNC false: truncation is off (a compile-time fact on the CPU,
// where it is a template argument); true: `truncate` decides (0 = off).
template <bool TRUNC>
FUSEDRNN_ROW_FN RowStep row_step(const StepInfo& st, int64_t b, int64_t truncate) {
  const int64_t len = st.lengths ? st.lengths[b] : st.T;
  RowStep r;
  r.active = st.t < len;
  const int64_t s = st.reverse ? len - 1 - st.t : st.t;
  r.first = s == 0;
  if (s == len - 1) {
    r.incoming = kFromFinal;
  } else if (TRUNC && truncate > 0 && (s + 1) % truncate == 0) {
    r.incoming = kCut;
  } else {
    r.incoming = kRecurrent;
  }
  return r;
}

// A run-time value as a compile-time one.
template <auto V>
struct Tag {
  static constexpr auto value = V;
};

template <class F>
inline auto with_clip_mode(ClipMode mode, F&& f) {
  switch (mode) {
    case ClipMode::Value: return f(Tag<ClipMode::Value>());
    case ClipMode::Norm: return f(Tag<ClipMode::Norm>());
    default: return f(Tag<ClipMode::None>());
  }
}

template <class F>
inline auto with_flag(bool flag, F&& f) {
  return flag ? f(Tag<true>()) : f(Tag<false>());
}

template <class F>
inline auto with_incoming(int kind, F&& f) {
  switch (kind) {
    case kFromFinal: return f(Tag<kFromFinal>());
    case kCut: return f(Tag<kCut>());
    default: return f(Tag<kRecurrent>());
  }
}
