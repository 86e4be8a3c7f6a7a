// LSTM pointwise kernels of one time step, forward and backward, and the projection's
// helpers. The math is exactly that of the CPU kernels (csrc/cpu/kernels_impl.h), computed
// in A = opmath_t<T>; the layout of a launch is Note [CUDA kernel layout] in common.cuh.
//
// Forward step (after hg = h_{t-1} W_hh^T):
//   gates = xg + bias + hg; i, f, o = sigmoid, g = tanh; c = f c_prev + i g; optional cell
//   clip; h = o tanh(c). Absent rows (t >= length) output zeros and keep their state.
// Backward step (before dh_gemm = dgates_t W_hh, Note [Recurrent gradient buffers]):
//   the incoming recurrent gradients dh_gemm + dh_carry (h) and dc_rec (c) are taken as
//   dh_n / dc_n, cut, or clipped by the row's kind (Note [Per-row step bookkeeping]), then
//   the gate gradients and the gradient into c_{t-1}. Norm clip and the gradient record
//   need row sums: those launches use one block per row and a fixed-order block reduction.
#include "common.cuh"
#include "kernels.h"

namespace fusedrnn {
namespace cuda {

namespace {

using namespace detail;

// ---------------------------------------------------------------------------------------
// Forward.

template <typename T, bool CCLIP>
__global__ void lstm_fwd_kernel(const LstmFwdArgs<T> p) {
  using A = opmath_t<T>;
  const int64_t b = blockIdx.x;
  const int64_t H = p.H;
  const bool active = row_exists(p.step, b);
  const A* xg = p.xg + b * 4 * H;
  const A* hg = p.hg + b * 4 * H;
  T* act = p.act + b * 4 * H;
  T* h_out = p.h_out + b * H;
  T* c_raw = p.c_raw ? p.c_raw + b * H : nullptr;
  A* c = p.c + b * H;
  T* h_state = p.h_state ? p.h_state + b * H : nullptr;
  const A cc = p.cell_clip;
  FUSEDRNN_COLUMNS(j, H) {
    if (!active) {  // outputs and saved values of absent rows are zero, never stale memory
      for (int k = 0; k < 4; ++k) store(act + k * H + j, A(0));
      store(h_out + j, A(0));
      if (c_raw) store(c_raw + j, A(0));
      continue;
    }
    A pre[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      A x = xg[k * H + j];
      if (p.bias) x += p.bias[k * H + j];
      pre[k] = x + hg[k * H + j];
    }
    // act may alias xg (T == A): every read of this column happened above.
    const A i = sigmoid(pre[0]);
    const A f = sigmoid(pre[1]);
    const A g = tanh_(pre[2]);
    const A o = sigmoid(pre[3]);
    store(act + j, i);
    store(act + H + j, f);
    store(act + 2 * H + j, g);
    store(act + 3 * H + j, o);
    const A cr = f * c[j] + i * g;
    if (c_raw) store(c_raw + j, cr);
    A cn = cr;
    if constexpr (CCLIP) cn = clamp(cr, -cc, cc);
    c[j] = cn;
    const A h = o * tanh_(cn);
    store(h_out + j, h);
    if (h_state) store(h_state + j, h);
  }
}

template <typename T>
__global__ void copy_state_rows_kernel(const CopyRowsArgs<T> p) {
  const int64_t b = blockIdx.x;
  if (!row_exists(p.step, b)) return;  // the state of an absent row is carried
  const T* src = p.src + b * p.R;
  T* dst = p.dst + b * p.R;
  FUSEDRNN_COLUMNS(j, p.R) { dst[j] = src[j]; }
}

// ---------------------------------------------------------------------------------------
// Backward.

template <typename T, ClipMode CM>
__global__ void lstm_bwd_kernel(const LstmBwdArgs<T> p) {
  using A = opmath_t<T>;
  const int64_t b = blockIdx.x;
  const int64_t H = p.H, R = p.R;
  const RowStep rs = row_step<true>(p.step, b, p.opt.truncate);
  T* dg = p.dgates + b * 4 * H;
  // No projection only (R == H): the parts of the gradient into h_{t-1}.
  const A* dh_gemm = p.dh_gemm ? p.dh_gemm + b * R : nullptr;
  A* dh_carry = p.dh_carry ? p.dh_carry + b * R : nullptr;
  A* rec = p.record ? p.record + b * 3 : nullptr;
  const bool lead = blockIdx.y == 0 && threadIdx.x == 0;

  if (!rs.active) {  // state carried: recurrent gradients pass through unchanged
    FUSEDRNN_COLUMNS(j, H) {
      for (int k = 0; k < 4; ++k) store(dg + k * H + j, A(0));
    }
    if (dh_carry) {
      FUSEDRNN_COLUMNS(j, R) { dh_carry[j] += dh_gemm[j]; }
    }
    if (rec && lead) write_no_record(rec);
    return;
  }

  const T* a = p.act + b * 4 * H;
  const T* c_raw = p.c_raw + b * H;
  const T* c_prev = rs.first ? (p.c0 ? p.c0 + b * H : nullptr)
                             : (p.c_raw_prev ? p.c_raw_prev + b * H : nullptr);
  const bool clamp_prev = p.has_cell_clip && !rs.first;  // c_raw_prev is pre-clip, c0 is not clipped
  const A* dh_direct = p.dh_direct ? p.dh_direct + b * H : nullptr;
  const T* dy = p.dy ? p.dy + b * R : nullptr;
  const T* dh_n = p.dh_n ? p.dh_n + b * R : nullptr;
  const T* dc_n = p.dc_n + b * H;
  A* dc_rec = p.dc_rec + b * H;
  const A clip = p.opt.clip;
  const A cc = p.cell_clip;

  // Row sums before any element is changed (the launcher made this row one block when
  // they are needed). Every thread sums the columns it updates below, so the in-place
  // updates of dc_rec and dh_carry never race with the sums.
  A scale_h = A(1), scale_c = A(1);
  const bool recurrent = rs.incoming == kRecurrent;
  const bool sum_h = recurrent && !dh_direct && (CM == ClipMode::Norm || rec);
  const bool sum_c = recurrent && CM == ClipMode::Norm;
  if (sum_h || sum_c) {  // uniform in the block
    A v[3] = {A(0), A(0), A(0)};  // sum (dh_gemm + dh_carry)^2, value-clipped count, sum dc_rec^2
    if (sum_h) {
      FUSEDRNN_COLUMNS(j, R) {
        const A g = dh_gemm[j] + dh_carry[j];
        v[0] += g * g;
        if constexpr (CM == ClipMode::Value) v[1] += changed_by_value_clip(g, clip);
      }
    }
    if (sum_c) {
      FUSEDRNN_COLUMNS(j, H) { v[2] += dc_rec[j] * dc_rec[j]; }
    }
    block_sum(v);
    if constexpr (CM == ClipMode::Norm) {
      scale_h = norm_scale(v[0], clip);
      scale_c = norm_scale(v[2], clip);
    }
    if (rec && threadIdx.x == 0) {
      if (sum_h) {
        write_record<CM>(rec, v[0], v[1], R, clip);
      } else {
        write_no_record(rec);
      }
    }
  } else if (rec && lead) {  // no recurrent gradient at this step: records {0, 0, 0}
    write_no_record(rec);
  }

  FUSEDRNN_COLUMNS(j, H) {
    A dh;
    if (dh_direct) {
      dh = dh_direct[j];
    } else {
      const A rec_h = dh_gemm[j] + dh_carry[j];
      dh = load(dy + j) + incoming<CM>(rs.incoming, load(dh_n + j), rec_h, clip, scale_h);
    }
    const A dc_in = incoming<CM>(rs.incoming, load(dc_n + j), dc_rec[j], clip, scale_c);
    const A i = load(a + j);
    const A f = load(a + H + j);
    const A g = load(a + 2 * H + j);
    const A o = load(a + 3 * H + j);
    const A cr = load(c_raw + j);
    A c = cr;
    A cp = c_prev ? load(c_prev + j) : A(0);
    if (p.has_cell_clip) {
      c = clamp(cr, -cc, cc);
      if (clamp_prev) cp = clamp(cp, -cc, cc);
    }
    const A tc = tanh_(c);
    // dc_t = dc_in + dh o (1 - tanh(c)^2), zero where the cell clip was active (torch.clamp
    // passes the gradient where -cc <= c_raw <= cc; NaN passes nothing, as on the CPU).
    A dct = dh * o * (A(1) - tc * tc) + dc_in;
    if (p.has_cell_clip && !(abs_(cr) <= cc)) dct = A(0);
    store(dg + j, dct * g * (i * (A(1) - i)));
    store(dg + H + j, dct * cp * (f * (A(1) - f)));
    store(dg + 2 * H + j, dct * i * (A(1) - g * g));
    store(dg + 3 * H + j, dh * tc * (o * (A(1) - o)));
    dc_rec[j] = dct * f;
    // This row's incoming gradient is consumed; the next one is dgates W_hh alone.
    if (dh_carry) dh_carry[j] = A(0);
  }
}

template <typename T, ClipMode CM>
__global__ void proj_bwd_kernel(const ProjBwdArgs<T> p) {
  using A = opmath_t<T>;
  const int64_t b = blockIdx.x;
  const int64_t R = p.R;
  const RowStep rs = row_step<true>(p.step, b, p.opt.truncate);
  const A* dh_gemm = p.dh_gemm + b * R;
  A* dh_carry = p.dh_carry + b * R;
  T* dr = p.dr + b * R;
  A* rec = p.record ? p.record + b * 3 : nullptr;
  const bool lead = blockIdx.y == 0 && threadIdx.x == 0;

  if (!rs.active) {
    FUSEDRNN_COLUMNS(j, R) {
      store(dr + j, A(0));
      dh_carry[j] += dh_gemm[j];
    }
    if (rec && lead) write_no_record(rec);
    return;
  }

  const T* dy = p.dy + b * R;
  const T* dh_n = p.dh_n + b * R;
  const A clip = p.opt.clip;
  A scale = A(1);
  const bool recurrent = rs.incoming == kRecurrent;
  if (recurrent && (CM == ClipMode::Norm || rec)) {  // uniform in the block; one block per row
    A v[2] = {A(0), A(0)};
    FUSEDRNN_COLUMNS(j, R) {
      const A g = dh_gemm[j] + dh_carry[j];
      v[0] += g * g;
      if constexpr (CM == ClipMode::Value) v[1] += changed_by_value_clip(g, clip);
    }
    block_sum(v);
    if constexpr (CM == ClipMode::Norm) scale = norm_scale(v[0], clip);
    if (rec && threadIdx.x == 0) write_record<CM>(rec, v[0], v[1], R, clip);
  } else if (rec && lead) {
    write_no_record(rec);
  }

  FUSEDRNN_COLUMNS(j, R) {
    const A g = dh_gemm[j] + dh_carry[j];
    store(dr + j, load(dy + j) + incoming<CM>(rs.incoming, load(dh_n + j), g, clip, scale));
    dh_carry[j] = A(0);
  }
}

template <typename T, ClipMode CM>
cudaError_t launch_lstm_bwd(const LstmBwdArgs<T>& p, cudaStream_t stream) {
  // Row sums are needed for the norm clip and for the record (no projection).
  const bool whole_row = CM == ClipMode::Norm || p.record != nullptr;
  return launch_rows(lstm_bwd_kernel<T, CM>, p.M, p.H, whole_row, stream, p);
}

template <typename T, ClipMode CM>
cudaError_t launch_proj_bwd(const ProjBwdArgs<T>& p, cudaStream_t stream) {
  const bool whole_row = CM == ClipMode::Norm || p.record != nullptr;
  return launch_rows(proj_bwd_kernel<T, CM>, p.M, p.R, whole_row, stream, p);
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Launchers.

template <typename T>
cudaError_t lstm_fwd_step(const LstmFwdArgs<T>& p, cudaStream_t stream) {
  return p.has_cell_clip ? launch_rows(lstm_fwd_kernel<T, true>, p.M, p.H, false, stream, p)
                         : launch_rows(lstm_fwd_kernel<T, false>, p.M, p.H, false, stream, p);
}

template <typename T>
cudaError_t copy_state_rows(const CopyRowsArgs<T>& p, cudaStream_t stream) {
  return launch_rows(copy_state_rows_kernel<T>, p.M, p.R, false, stream, p);
}

template <typename T>
cudaError_t lstm_bwd_step(const LstmBwdArgs<T>& p, cudaStream_t stream) {
  return detail::with_clip_mode(p.opt.clip_mode, [&](auto cm) {
    return launch_lstm_bwd<T, decltype(cm)::value>(p, stream);
  });
}

template <typename T>
cudaError_t proj_bwd_step(const ProjBwdArgs<T>& p, cudaStream_t stream) {
  return detail::with_clip_mode(p.opt.clip_mode, [&](auto cm) {
    return launch_proj_bwd<T, decltype(cm)::value>(p, stream);
  });
}

#define FUSEDRNN_INSTANTIATE_LSTM(T)                                                   \
  template cudaError_t lstm_fwd_step<T>(const LstmFwdArgs<T>&, cudaStream_t);          \
  template cudaError_t copy_state_rows<T>(const CopyRowsArgs<T>&, cudaStream_t);       \
  template cudaError_t lstm_bwd_step<T>(const LstmBwdArgs<T>&, cudaStream_t);          \
  template cudaError_t proj_bwd_step<T>(const ProjBwdArgs<T>&, cudaStream_t);

FUSEDRNN_INSTANTIATE_LSTM(float)
FUSEDRNN_INSTANTIATE_LSTM(double)
FUSEDRNN_INSTANTIATE_LSTM(__half)
FUSEDRNN_INSTANTIATE_LSTM(__nv_bfloat16)

#undef FUSEDRNN_INSTANTIATE_LSTM

}  // namespace cuda
}  // namespace fusedrnn
