// GRU layer on the CPU: the time loops around the fused pointwise kernels.
//
// Forward:  xg = x W_ih^T + b_ih (+ b_hh for the r and z gates) for all T steps in one GEMM;
//           per step hg = h_{t-1} W_hh^T (one GEMM) and ONE pointwise pass. b_hn stays
//           separate because it sits inside r * (h W_hn^T + b_hn).
// Backward: per step ONE pointwise pass and one GEMM dh += dhg_t W_hh; then dx, dW_ih,
//           dW_hh as GEMMs over all T*B rows and the bias gradients as reductions.
//           float32 runs the backward loop on the persistent engine instead where
//           bwd_engine_selected says so (Note [CPU backward engine] in bwd_engine.cpp).
#include "cpu_ops.h"

#include <type_traits>

#include "../grad_record.h"
#include "bwd_engine.h"
#include "cpu_common.h"
#include "dispatch.h"
#include "engine_fwd_run.h"

namespace fusedrnn {
namespace cpu {

namespace {

template <typename T>
void gru_forward_impl(const LayerSizes& s, const at::Tensor& x, const at::Tensor& w_ih,
                      const at::Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                      const OptTensor& h0, bool reverse, bool save,
                      std::vector<at::Tensor>& out) {
  const int64_t T_ = s.T, B = s.B, N = s.N, I = s.I, H = s.H;
  const auto opts = x.options();
  const CpuKernelTable<T> k = kernels<T>();

  // xg: [N, 3H] = x W_ih^T + b_ih + (b_hr, b_hz, 0), all steps at once
  // (one loop rather than clone / narrow / add_: at T = 1 each ATen call is a visible share
  // of the call; the sums are the same additions)
  std::optional<at::Tensor> bias;
  if (b_ih || b_hh) {
    bias = at::empty({3 * H}, opts);
    const at::Tensor bi = b_ih ? b_ih->contiguous() : at::Tensor();
    const at::Tensor bh = b_hh ? b_hh->contiguous() : at::Tensor();
    const T* ip = b_ih ? bi.data_ptr<T>() : nullptr;
    const T* hp = b_hh ? bh.data_ptr<T>() : nullptr;
    T* bp = bias->data_ptr<T>();
    for (int64_t j = 0; j < 3 * H; ++j) {
      const T in = ip ? ip[j] : T(0);
      bp[j] = hp && j < 2 * H ? in + hp[j] : in;
    }
  }
  const at::Tensor xg = linear_rows(x.reshape({N, I}), w_ih, bias);
  const at::Tensor b_hn = b_hh ? b_hh->narrow(0, 2 * H, H).contiguous() : at::Tensor();

  at::Tensor y = at::empty({N, H}, opts);
  at::Tensor h = h0 ? h0->contiguous().clone() : at::zeros({B, H}, opts);
  // r, z, n, hn of every step, for the backward (nothing without it).
  at::Tensor saved = save ? at::empty({N, 4 * H}, opts) : at::empty({0}, opts);
  bool engine = false;
  if constexpr (std::is_same_v<T, float>) engine = use_forward_engine(s, 3, 0);
  if (engine) {
    // The engine writes r, z, n, hn only where they are saved (Note [CPU time-loop engine]).
    at::Tensor saved_out = save ? saved : at::Tensor();
    gru_forward_engine(s, xg, w_hh, b_hn, y, h, saved_out, reverse);
  } else {
    StepLinear<T> recurrent(w_hh, B, T_);  // h_{t-1} W_hh^T

    GruFwdStep<T> p{};
    p.H = H;
    p.step = StepInfo{T_, 0, reverse, s.lengths ? s.lengths->data_ptr<int64_t>() : nullptr};
    p.b_hn = b_hh ? b_hn.data_ptr<T>() : nullptr;
    p.h_state = h.data_ptr<T>();

    for (int64_t step = 0; step < T_; ++step) {
      const int64_t t = reverse ? T_ - 1 - step : step;
      const int64_t M = s.rows[t], off = s.offset[t];
      p.M = M;
      p.hg = recurrent(p.h_state, M);
      p.step.t = t;
      p.xg = xg.data_ptr<T>() + off * 3 * H;
      p.saved = save ? saved.data_ptr<T>() + off * 4 * H : nullptr;
      p.h_out = y.data_ptr<T>() + off * H;
      parallel_rows(M, 3 * H, [&](int64_t b0, int64_t b1) { k.gru_fwd(p, b0, b1); });
    }
  }
  out = {s.step_major(y), h, s.step_major(saved)};
}

template <typename T>
void gru_backward_impl(const LayerSizes& s, const at::Tensor& dy_in, const at::Tensor& dhn_in,
                       const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
                       const OptTensor& h0, const at::Tensor& y, const at::Tensor& saved,
                       bool reverse, const GradOptions<T>& opt, bool has_bias,
                       bool need_input_grad, bool need_weight_grad, bool track,
                       std::vector<at::Tensor>& out) {
  const int64_t T_ = s.T, B = s.B, N = s.N, I = s.I, H = s.H;
  const auto opts = x.options();
  const CpuKernelTable<T> k = kernels<T>();

  const at::Tensor dy = dy_in.contiguous(), dhn = dhn_in.contiguous();
  const at::Tensor h0c = h0 ? h0->contiguous() : at::Tensor();

  at::Tensor dxg = at::empty({N, 3 * H}, opts);
  at::Tensor dhg = at::empty({N, 3 * H}, opts);
  // The whole time loop in one parallel region where it is faster (Note [CPU backward
  // engine] in bwd_engine.cpp); float64 and the other shapes run one GEMM per step.
  bool engine = false;
  if constexpr (std::is_same<T, float>::value) engine = bwd_engine_selected(s, 3);
  // Gradient into the state entering step t: dh_gemm + dh_carry, see
  // Note [Recurrent gradient buffers] in rnn_params.h (the engine keeps its own).
  const at::Tensor zero_gemm = engine ? at::Tensor() : at::zeros({B, H}, opts);
  at::Tensor dh_carry = engine ? at::Tensor() : at::zeros({B, H}, opts);
  at::Tensor dh0 = at::empty({B, H}, opts);
  at::Tensor record = new_grad_record(s, opts, track);
  T* rec_p = track ? record.data_ptr<T>() : nullptr;

  GruBwdStep<T> p{};
  p.H = H;
  p.step = StepInfo{T_, 0, reverse, s.lengths ? s.lengths->data_ptr<int64_t>() : nullptr};
  p.opt = opt;
  p.h0 = h0 ? h0c.data_ptr<T>() : nullptr;
  p.dh_n = dhn.data_ptr<T>();
  p.dh_gemm = engine ? nullptr : zero_gemm.data_ptr<T>();
  p.dh_carry = engine ? nullptr : dh_carry.data_ptr<T>();
  const T* y_p = y.data_ptr<T>();

  if constexpr (std::is_same<T, float>::value) {
    if (engine) gru_bwd_engine(s, reverse, opt, w_hh, saved, y, h0, dy, dhn, dxg, dhg, dh0, record);
  }
  if (!engine) {
    StepLinear<T> recurrent_t(w_hh.t(), B, T_);  // dhg_t W_hh
    for (int64_t step = 0; step < T_; ++step) {
      const int64_t t = reverse ? step : T_ - 1 - step;
      const int64_t tp = previous_time(t, reverse);
      const int64_t M = s.rows[t], off = s.offset[t];
      p.M = M;
      p.step.t = t;
      p.saved = saved.data_ptr<T>() + off * 4 * H;
      p.h_prev = (tp >= 0 && tp < T_) ? y_p + s.offset[tp] * H : nullptr;
      p.dy = dy.data_ptr<T>() + off * H;
      p.dxg = dxg.data_ptr<T>() + off * 3 * H;
      p.dhg = dhg.data_ptr<T>() + off * 3 * H;
      p.record = rec_p ? rec_p + off * 3 : nullptr;
      parallel_rows(M, 3 * H, [&](int64_t b0, int64_t b1) { k.gru_bwd(p, b0, b1); });
      p.dh_gemm = recurrent_t(p.dhg, M);
      // Rows the next backward step no longer visits (packed, reverse) have their whole
      // gradient into h0 now.
      const int64_t next = step + 1 < T_ ? s.rows[reverse ? t + 1 : t - 1] : 0;
      retire_rows(dh0, dh_carry, p.dh_gemm, std::min(next, M), M);
    }
  }

  // The initial state is handed over to step 0 like any other state: clip its gradient.
  if (opt.clip_mode != ClipMode::None) {
    parallel_rows(B, H, [&](int64_t b0, int64_t b1) { k.clip_rows(dh0.data_ptr<T>(), H, opt, b0, b1); });
  }

  // Gradients not asked for are empty tensors, each its own (outputs of a custom op must not
  // alias one another).
  auto empty = [&] { return at::empty({0}, opts); };
  at::Tensor dx = need_input_grad ? at::mm(dxg, w_ih).view(x.sizes()) : empty();
  at::Tensor dw_ih = empty(), dw_hh = empty(), db_ih = empty(), db_hh = empty();
  if (need_weight_grad) {
    dw_ih = outer_sum(dxg, x.reshape({N, I}));
    dw_hh = s.packed ? outer_sum(dhg, previous_states(s, y, h0, reverse))
                     : recurrent_weight_grad(dhg.view({T_, B, 3 * H}), y, h0, s.lengths, reverse);
    if (has_bias) {
      db_ih = dxg.sum(0);
      db_hh = dhg.sum(0);
    }
  }
  out = {dx, dh0, dw_ih, dw_hh, db_ih, db_hh, track ? finish_grad_record(record, s) : empty()};
}

}  // namespace

std::vector<at::Tensor> gru_forward(const LayerSizes& s, const at::Tensor& x,
                                    const at::Tensor& w_ih, const at::Tensor& w_hh,
                                    const OptTensor& b_ih, const OptTensor& b_hh,
                                    const OptTensor& h0, bool reverse, bool save) {
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fusedrnn.gru_forward_cpu", [&] {
    gru_forward_impl<scalar_t>(s, x.contiguous(), w_ih, w_hh, b_ih, b_hh, h0, reverse, save,
                               out);
  });
  return out;
}

std::vector<at::Tensor> gru_backward(const LayerSizes& s, const at::Tensor& dy,
                                     const at::Tensor& dh_n, const at::Tensor& x,
                                     const at::Tensor& w_ih, const at::Tensor& w_hh,
                                     const OptTensor& h0, const at::Tensor& y,
                                     const at::Tensor& saved, bool reverse,
                                     const GradOptions<double>& opt, bool has_bias,
                                     bool need_input_grad, bool need_weight_grad,
                                     bool track_grad_norms) {
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fusedrnn.gru_backward_cpu", [&] {
    const GradOptions<scalar_t> o = options_as<scalar_t>(opt);
    gru_backward_impl<scalar_t>(s, dy, dh_n, x.contiguous(), w_ih, w_hh, h0,
                                y.contiguous(), saved.contiguous(), reverse, o, has_bias,
                                need_input_grad, need_weight_grad, track_grad_norms, out);
  });
  return out;
}

}  // namespace cpu
}  // namespace fusedrnn
