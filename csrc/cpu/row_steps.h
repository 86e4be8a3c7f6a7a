// Row bookkeeping and option switches of the per-step kernels (kernels_impl.h) and the
// backward engine's kernels (bwd_engine_impl.h): csrc/kernel_common.h (shared with the CUDA
// kernels), plus the switch of the CPU backward kernels' compile-time options.
//
// Like vec.h, it is included inside each capability's namespace by the impl headers (Note
// [CPU capability dispatch] in kernels_impl.h), so every capability gets its own copy, and
// it includes nothing but kernel_common.h (itself include-free).
#pragma once

#define FUSEDRNN_ROW_FN inline
#include "../kernel_common.h"
#undef FUSEDRNN_ROW_FN

// Calls f(clip mode tag, truncation-on tag) with the backward kernels' compile-time options
// from `opt` (the LSTM kernels add their cell clip with with_flag).
template <typename T, class F>
inline void with_grad_options(const GradOptions<T>& opt, F&& f) {
  with_clip_mode(opt.clip_mode, [&](auto cm) {
    with_flag(opt.truncate > 0, [&](auto trunc) { f(cm, trunc); });
  });
}
