// GRU pointwise kernels of one time step, forward and backward ("reset after" form of
// docs/design.md §2). The math is exactly that of the CPU kernels (csrc/cpu/kernels_impl.h),
// computed in A = opmath_t<T>; the layout of a launch is Note [CUDA kernel layout].
//
// Forward step (after hg = h_{t-1} W_hh^T):
//   r = sigmoid(xg_r + hg_r + b), z likewise, hn = hg_n + b_hn, n = tanh(xg_n + b_in + r hn),
//   h = (1 - z) n + z h_prev; r, z, n, hn are saved for the backward.
// Backward step (before dh_gemm = dhg_t W_hh): the incoming recurrent gradient
//   dh_gemm + dh_carry is taken as dh_n, cut, or clipped by the row's kind, then the gate
//   gradients dxg (of x W_ih^T + b_ih) and dhg (of h W_hh^T + b_hh) and the direct part
//   dh * z of the gradient into h_{t-1}.
#include "common.cuh"
#include "kernels.h"

namespace fusedrnn {
namespace cuda {

namespace {

using namespace detail;

template <typename T>
__global__ void gru_fwd_kernel(const GruFwdArgs<T> p) {
  using A = opmath_t<T>;
  const int64_t b = blockIdx.x;
  const int64_t H = p.H;
  const bool active = row_exists(p.step, b);
  T* h_out = p.h_out + b * H;
  T* sv = p.saved ? p.saved + b * 4 * H : nullptr;
  FUSEDRNN_COLUMNS(j, H) {
    if (!active) {  // outputs and saved values of absent rows are zero, never stale memory
      store(h_out + j, A(0));
      if (sv) {
        for (int k = 0; k < 4; ++k) store(sv + k * H + j, A(0));
      }
      continue;
    }
    const A* xg = p.xg + b * 3 * H;
    const A* hg = p.hg + b * 3 * H;
    A xr = xg[j], xz = xg[H + j], xn = xg[2 * H + j];
    if (p.bias_x) {
      xr += p.bias_x[j];
      xz += p.bias_x[H + j];
      xn += p.bias_x[2 * H + j];
    }
    const A r = sigmoid(xr + hg[j]);
    const A z = sigmoid(xz + hg[H + j]);
    A hn = hg[2 * H + j];
    if (p.b_hn) hn += p.b_hn[j];
    const A n = tanh_(r * hn + xn);
    T* h = p.h_state + b * H;
    const A hp = load(h + j);
    const A hnew = z * (hp - n) + n;  // (1 - z) n + z h_prev
    if (sv) {
      store(sv + j, r);
      store(sv + H + j, z);
      store(sv + 2 * H + j, n);
      store(sv + 3 * H + j, hn);
    }
    store(h_out + j, hnew);
    store(h + j, hnew);
  }
}

template <typename T, ClipMode CM>
__global__ void gru_bwd_kernel(const GruBwdArgs<T> p) {
  using A = opmath_t<T>;
  const int64_t b = blockIdx.x;
  const int64_t H = p.H;
  const RowStep rs = row_step<true>(p.step, b, p.opt.truncate);
  const A* dh_gemm = p.dh_gemm + b * H;
  A* dh_carry = p.dh_carry + b * H;
  T* dxg = p.dxg + b * 3 * H;
  T* dhg = p.dhg + b * 3 * H;
  A* rec = p.record ? p.record + b * 3 : nullptr;
  const bool lead = blockIdx.y == 0 && threadIdx.x == 0;

  if (!rs.active) {  // state carried: the recurrent gradient passes through unchanged
    FUSEDRNN_COLUMNS(j, H) {
      for (int k = 0; k < 3; ++k) {
        store(dxg + k * H + j, A(0));
        store(dhg + k * H + j, A(0));
      }
      dh_carry[j] += dh_gemm[j];
    }
    if (rec && lead) write_no_record(rec);
    return;
  }

  const T* sv = p.saved + b * 4 * H;
  const T* h_prev = rs.first ? (p.h0 ? p.h0 + b * H : nullptr)
                             : (p.h_prev ? p.h_prev + b * H : nullptr);
  const T* dy = p.dy + b * H;
  const T* dh_n = p.dh_n + b * H;
  const A clip = p.opt.clip;

  // Row sums before dh_carry is overwritten (one block per row when needed); each thread
  // sums exactly the columns it overwrites below.
  A scale = A(1);
  const bool recurrent = rs.incoming == kRecurrent;
  if (recurrent && (CM == ClipMode::Norm || rec)) {  // uniform in the block
    A v[2] = {A(0), A(0)};
    FUSEDRNN_COLUMNS(j, H) {
      const A g = dh_gemm[j] + dh_carry[j];
      v[0] += g * g;
      if constexpr (CM == ClipMode::Value) v[1] += changed_by_value_clip(g, clip);
    }
    block_sum(v);
    if constexpr (CM == ClipMode::Norm) scale = norm_scale(v[0], clip);
    if (rec && threadIdx.x == 0) write_record<CM>(rec, v[0], v[1], H, clip);
  } else if (rec && lead) {  // no recurrent gradient at this step: records {0, 0, 0}
    write_no_record(rec);
  }

  FUSEDRNN_COLUMNS(j, H) {
    const A r = load(sv + j);
    const A z = load(sv + H + j);
    const A n = load(sv + 2 * H + j);
    const A hn = load(sv + 3 * H + j);
    const A hp = h_prev ? load(h_prev + j) : A(0);
    const A g = dh_gemm[j] + dh_carry[j];
    const A dh = load(dy + j) + incoming<CM>(rs.incoming, load(dh_n + j), g, clip, scale);
    // h = (1 - z) n + z h_prev
    const A dn_pre = dh * (A(1) - z) * (A(1) - n * n);
    const A dz_pre = dh * (hp - n) * (z * (A(1) - z));
    const A dr_pre = dn_pre * hn * (r * (A(1) - r));
    store(dxg + j, dr_pre);
    store(dxg + H + j, dz_pre);
    store(dxg + 2 * H + j, dn_pre);
    store(dhg + j, dr_pre);
    store(dhg + H + j, dz_pre);
    store(dhg + 2 * H + j, dn_pre * r);
    dh_carry[j] = dh * z;  // column j of the carry was read above, by this thread
  }
}

template <typename T, ClipMode CM>
cudaError_t launch_gru_bwd(const GruBwdArgs<T>& p, cudaStream_t stream) {
  const bool whole_row = CM == ClipMode::Norm || p.record != nullptr;
  return launch_rows(gru_bwd_kernel<T, CM>, p.M, p.H, whole_row, stream, p);
}

}  // namespace

template <typename T>
cudaError_t gru_fwd_step(const GruFwdArgs<T>& p, cudaStream_t stream) {
  return launch_rows(gru_fwd_kernel<T>, p.M, p.H, false, stream, p);
}

template <typename T>
cudaError_t gru_bwd_step(const GruBwdArgs<T>& p, cudaStream_t stream) {
  return detail::with_clip_mode(p.opt.clip_mode, [&](auto cm) {
    return launch_gru_bwd<T, decltype(cm)::value>(p, stream);
  });
}

#define FUSEDRNN_INSTANTIATE_GRU(T)                                          \
  template cudaError_t gru_fwd_step<T>(const GruFwdArgs<T>&, cudaStream_t);  \
  template cudaError_t gru_bwd_step<T>(const GruBwdArgs<T>&, cudaStream_t);

FUSEDRNN_INSTANTIATE_GRU(float)
FUSEDRNN_INSTANTIATE_GRU(double)
FUSEDRNN_INSTANTIATE_GRU(__half)
FUSEDRNN_INSTANTIATE_GRU(__nv_bfloat16)

#undef FUSEDRNN_INSTANTIATE_GRU

}  // namespace cuda
}  // namespace fusedrnn
