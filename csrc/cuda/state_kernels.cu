// The gradient into the initial state h0 / c0, after the backward time loop.
//
// After the last backward step the recurrent gradient buffers hold, for every batch row, the
// unclipped gradient into the row's initial state: dh_gemm + dh_carry for h (a packed
// reverse row that finished early is never written again, so its rows keep it), dc_rec for
// c. The initial state is handed over to processed step 0 like any other state, so it gets
// the same clip (docs/design.md §3; never truncated); this kernel adds, clips and casts to T.
#include "common.cuh"
#include "kernels.h"

namespace fusedrnn {
namespace cuda {

namespace {

using namespace detail;

template <typename T, ClipMode CM>
__global__ void state_grad_kernel(const StateGradArgs<T> p) {
  using A = opmath_t<T>;
  const int64_t b = blockIdx.x;
  const int64_t N = p.N;
  const A* a = p.a + b * N;
  const A* add = p.add ? p.add + b * N : nullptr;
  T* out = p.out + b * N;
  const A clip = p.opt.clip;
  A scale = A(1);
  if constexpr (CM == ClipMode::Norm) {  // one block per row
    A v[1] = {A(0)};
    FUSEDRNN_COLUMNS(j, N) {
      const A g = add ? a[j] + add[j] : a[j];
      v[0] += g * g;
    }
    block_sum(v);
    scale = norm_scale(v[0], clip);
  }
  FUSEDRNN_COLUMNS(j, N) {
    const A g = add ? a[j] + add[j] : a[j];
    store(out + j, apply_clip<CM>(g, clip, scale));
  }
}

template <typename T, ClipMode CM>
cudaError_t launch_state_grad(const StateGradArgs<T>& p, cudaStream_t stream) {
  return launch_rows(state_grad_kernel<T, CM>, p.B, p.N, CM == ClipMode::Norm, stream, p);
}

}  // namespace

template <typename T>
cudaError_t state_grad(const StateGradArgs<T>& p, cudaStream_t stream) {
  return detail::with_clip_mode(p.opt.clip_mode, [&](auto cm) {
    return launch_state_grad<T, decltype(cm)::value>(p, stream);
  });
}

template cudaError_t state_grad<float>(const StateGradArgs<float>&, cudaStream_t);
template cudaError_t state_grad<double>(const StateGradArgs<double>&, cudaStream_t);
template cudaError_t state_grad<__half>(const StateGradArgs<__half>&, cudaStream_t);
template cudaError_t state_grad<__nv_bfloat16>(const StateGradArgs<__nv_bfloat16>&, cudaStream_t);

}  // namespace cuda
}  // namespace fusedrnn
