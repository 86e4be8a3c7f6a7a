// Row bookkeeping and option switches shared by the per-step kernels (kernels_impl.h) and
// the backward engine's kernels (bwd_engine_impl.h): which kind of recurrent gradient a row
// receives at a step (Note [Per-row step bookkeeping] in rnn_params.h), and the switches that
// turn run-time options into template arguments.
//
// Like vec.h, it is included inside each capability's namespace by the impl headers (Note
// [CPU capability dispatch] in kernels_impl.h), so every capability gets its own copy, and
// it includes nothing.
#pragma once

enum Incoming : int {
  kFromFinal = 0,    // the row's last processed step: dh_n / dc_n, unclipped
  kCut = 1,          // truncation point: no recurrent gradient
  kRecurrent = 2,    // clip(recurrent gradient from step s+1)
};

struct RowStep {
  bool active;   // the row processes time t
  bool first;    // s == 0: the previous state is h0 / c0
  int incoming;  // an Incoming value
};

template <bool TRUNC>
inline RowStep row_step(const StepInfo& st, int64_t b, int64_t truncate) {
  const int64_t len = st.lengths ? st.lengths[b] : st.T;
  RowStep r;
  r.active = st.t < len;
  const int64_t s = st.reverse ? len - 1 - st.t : st.t;
  r.first = s == 0;
  if (s == len - 1) {
    r.incoming = kFromFinal;
  } else if (TRUNC && (s + 1) % truncate == 0) {
    r.incoming = kCut;
  } else {
    r.incoming = kRecurrent;
  }
  return r;
}

// Calls body(IncomingTag<KIND>()) with the row's incoming kind as a compile-time constant.
template <int K>
struct IncomingTag {
  static constexpr int value = K;
};

template <class Body>
inline void with_incoming(int kind, Body&& body) {
  switch (kind) {
    case kFromFinal: body(IncomingTag<kFromFinal>()); break;
    case kCut: body(IncomingTag<kCut>()); break;
    default: body(IncomingTag<kRecurrent>()); break;
  }
}

// Calls Fn<clip mode, truncation on>::run(p, i0, i1) with the options of p.opt as
// compile-time constants.
template <template <ClipMode, bool> class Fn, class P>
inline void switch_clip_trunc(const P& p, int64_t b0, int64_t b1) {
  const bool trunc = p.opt.truncate > 0;
  switch (p.opt.clip_mode) {
    case ClipMode::Value:
      trunc ? Fn<ClipMode::Value, true>::run(p, b0, b1) : Fn<ClipMode::Value, false>::run(p, b0, b1);
      break;
    case ClipMode::Norm:
      trunc ? Fn<ClipMode::Norm, true>::run(p, b0, b1) : Fn<ClipMode::Norm, false>::run(p, b0, b1);
      break;
    default:
      trunc ? Fn<ClipMode::None, true>::run(p, b0, b1) : Fn<ClipMode::None, false>::run(p, b0, b1);
      break;
  }
}
