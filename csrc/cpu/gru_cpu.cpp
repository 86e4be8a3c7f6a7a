// GRU layer on the CPU: the time loops around the fused pointwise kernels.
//
// Forward:  xg = x W_ih^T + b_ih (+ b_hh for the r and z gates) for all T steps in one GEMM
//           (chunks of steps without a backward, Note [Chunked input projection]);
//           per step hg = h_{t-1} W_hh^T (one GEMM) and ONE pointwise pass. b_hn stays
//           separate because it sits inside r * (h W_hn^T + b_hn).
// Backward: per step ONE pointwise pass and one GEMM dh += dhg_t W_hh; then dx, dW_ih,
//           dW_hh as GEMMs over all T*B rows and the bias gradients as reductions.
//           float32 runs the backward loop on the persistent engine instead where
//           bwd_engine_selected says so (Note [CPU backward engine] in bwd_engine.cpp).
#include "cpu_ops.h"

#include <type_traits>

#include "../grad_record.h"
#include "buffer_cache.h"
#include "bwd_engine.h"
#include "cpu_common.h"
#include "dispatch.h"
#include "engine_fwd_run.h"

namespace fusedrnn {
namespace cpu {

namespace {

template <typename T>
std::vector<at::Tensor> gru_forward_impl(const LayerSizes& s, const GruForwardArgs& a) {
  const at::Tensor x = a.x.contiguous();

  const int64_t T_ = s.T, B = s.B, N = s.N, I = s.I, H = s.H;
  const auto opts = x.options();
  const CpuKernelTable<T> k = kernels<T>();

  // xg: [N, 3H] = x W_ih^T + b_ih + (b_hr, b_hz, 0), all steps at once, or chunk by chunk
  // in the per-step loop without a backward (Note [Chunked input projection] in
  // cpu_common.h; the saved values are r, z, n, hn, not xg).
  const std::optional<at::Tensor> bias = input_bias(a.b_ih, a.b_hh, 3 * H, 2 * H);
  bool engine = false, engine_input = false;
  if constexpr (std::is_same_v<T, float>) {
    engine = use_forward_engine(s, 3, 0, a.save);
    engine_input = engine && engine_input_part(s, 3, 0);
  }
  // The engine computing the x part itself (Note [Engine input part] in engine_fwd.cpp)
  // needs no projection.
  // For the engine the projection leaves the bias out and the engine adds it as it reads
  // the x part (Note [Bias of the all-steps product] in cpu_common.h).
  std::optional<InputProjection<T>> projected;
  if (!engine_input) {
    projected.emplace(s, x.view({N, I}), a.w_ih, engine ? std::nullopt : bias,
                      a.reverse, a.save || engine);
  }
  const at::Tensor b_hn = a.b_hh ? a.b_hh->narrow(0, 2 * H, H).contiguous() : at::Tensor();

  at::Tensor y = empty_buffer(s.step_shape(H), opts);
  at::Tensor h = initial_state(a.h0, B, H, opts);
  // r, z, n, hn of every step, for the backward (nothing without it).
  // Without save (the no-grad op returns y, h_n only) nothing is allocated for `saved`.
  at::Tensor saved = a.save ? empty_buffer({N, 4 * H}, opts) : at::Tensor();
  if (engine) {
    // The engine writes r, z, n, hn only where they are saved (Note [CPU time-loop engine]).
    at::Tensor saved_out = a.save ? saved : at::Tensor();
    const EngineInputArgs input{x.view({N, I}), a.w_ih, bias};
    gru_forward_engine(s, projected ? projected->whole() : at::Tensor(), a.w_hh, b_hn, y, h,
                       saved_out, a.reverse, engine_input ? &input : nullptr,
                       bias);
  } else {
    StepLinear<T> recurrent(a.w_hh, B, T_);  // h_{t-1} W_hh^T

    GruFwdStep<T> p{};
    p.H = H;
    p.step = StepInfo{T_, 0, a.reverse, s.lengths ? s.lengths->data_ptr<int64_t>() : nullptr};
    p.b_hn = a.b_hh ? b_hn.data_ptr<T>() : nullptr;
    p.h_state = h.data_ptr<T>();

    for (int64_t step = 0; step < T_; ++step) {
      const int64_t t = a.reverse ? T_ - 1 - step : step;
      const int64_t M = s.rows[t], off = s.offset[t];
      p.M = M;
      p.hg = recurrent(p.h_state, M);
      p.step.t = t;
      p.xg = projected->step(t);
      p.saved = a.save ? saved.data_ptr<T>() + off * 4 * H : nullptr;
      p.h_out = y.data_ptr<T>() + off * H;
      parallel_rows(M, 3 * H, [&](int64_t b0, int64_t b1) { k.gru_fwd(p, b0, b1); });
    }
  }
  return {s.step_major(y), h, s.step_major(saved)};
}

template <typename T>
std::vector<at::Tensor> gru_backward_impl(const LayerSizes& s, const GruBackwardArgs& a) {
  const bool track = a.need.record;
  const at::Tensor x = a.x.contiguous(), y = a.y.contiguous(), saved = a.saved.contiguous();
  const GradOptions<T> opt = options_as<T>(a.opt);

  const int64_t T_ = s.T, B = s.B, N = s.N, I = s.I, H = s.H;
  const auto opts = x.options();
  const CpuKernelTable<T> k = kernels<T>();

  const at::Tensor dy = a.dy.contiguous(), dhn = a.dh_n.contiguous();
  const at::Tensor h0c = a.h0 ? a.h0->contiguous() : at::Tensor();

  at::Tensor dxg = empty_buffer({N, 3 * H}, opts);
  at::Tensor dhg = empty_buffer({N, 3 * H}, opts);
  // The whole time loop in one parallel region where it is faster (Note [CPU backward
  // engine] in bwd_engine.cpp); float64 and the other shapes run one GEMM per step.
  bool engine = false;
  if constexpr (std::is_same<T, float>::value) engine = bwd_engine_selected(s, 3);
  // Gradient into the state entering step t: dh_gemm + dh_carry, see
  // Note [Recurrent gradient buffers] in rnn_params.h (the engine keeps its own).
  const at::Tensor zero_gemm = engine ? at::Tensor() : zeros_buffer({B, H}, opts);
  at::Tensor dh_carry = engine ? at::Tensor() : zeros_buffer({B, H}, opts);
  at::Tensor dh0 = empty_buffer({B, H}, opts);
  at::Tensor record = new_grad_record(s, opts, track);
  T* rec_p = track ? record.data_ptr<T>() : nullptr;

  GruBwdStep<T> p{};
  p.H = H;
  p.step = StepInfo{T_, 0, a.reverse, s.lengths ? s.lengths->data_ptr<int64_t>() : nullptr};
  p.opt = opt;
  p.h0 = a.h0 ? h0c.data_ptr<T>() : nullptr;
  p.dh_n = dhn.data_ptr<T>();
  p.dh_gemm = engine ? nullptr : zero_gemm.data_ptr<T>();
  p.dh_carry = engine ? nullptr : dh_carry.data_ptr<T>();
  const T* y_p = y.data_ptr<T>();

  at::Tensor loop_db_ih, loop_db_hh;  // the bias gradients, where the engine sums them
  if constexpr (std::is_same<T, float>::value) {
    if (engine) {
      const bool bias = a.need.weight && a.need.bias;
      gru_bwd_engine(s, a.reverse, opt, a.w_hh, saved, y, a.h0, dy, dhn, dxg, dhg, dh0, record,
                     bias ? &loop_db_ih : nullptr, bias ? &loop_db_hh : nullptr);
    }
  }
  if (!engine) {
    StepLinear<T> recurrent_t(a.w_hh.t(), B, T_);  // dhg_t W_hh
    for (int64_t step = 0; step < T_; ++step) {
      const int64_t t = a.reverse ? step : T_ - 1 - step;
      const int64_t tp = previous_time(t, a.reverse);
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
      const int64_t next = step + 1 < T_ ? s.rows[a.reverse ? t + 1 : t - 1] : 0;
      retire_rows(dh0, dh_carry, p.dh_gemm, std::min(next, M), M);
    }
  }

  // The initial state is handed over to step 0 like any other state: clip its gradient.
  if (opt.clip_mode != ClipMode::None) {
    parallel_rows(B, H, [&](int64_t b0, int64_t b1) {
      k.clip_rows(dh0.data_ptr<T>(), H, opt, b0, b1);
    });
  }

  // Gradients not asked for are empty tensors, each its own (outputs of a custom op must not
  // alias one another).
  auto empty = [&] { return empty_buffer({0}, opts); };
  at::Tensor dx = a.need.input ? rows_times(dxg, a.w_ih).view(x.sizes()) : empty();
  at::Tensor dw_ih = empty(), dw_hh = empty(), db_ih = empty(), db_hh = empty();
  if (a.need.weight) {
    dw_ih = outer_sum(dxg, x.reshape({N, I}));
    dw_hh = s.packed ? outer_sum(dhg, previous_states(s, y, a.h0, a.reverse))
                     : recurrent_weight_grad(dhg.view({T_, B, 3 * H}), y, a.h0, s.lengths,
                                             a.reverse);
    if (a.need.bias) {  // summed in the engine's loop, or here
      db_ih = loop_db_ih.defined() ? loop_db_ih : column_sum(dxg);
      db_hh = loop_db_hh.defined() ? loop_db_hh : column_sum(dhg);
    }
  }
  return {dx, dh0, dw_ih, dw_hh, db_ih, db_hh, track ? finish_grad_record(record, s) : empty()};
}

}  // namespace

std::vector<at::Tensor> gru_forward(const LayerSizes& s, const GruForwardArgs& a) {
  return AT_DISPATCH_FLOATING_TYPES(a.x.scalar_type(), "fusedrnn.gru_forward_cpu",
                                    [&] { return gru_forward_impl<scalar_t>(s, a); });
}

std::vector<at::Tensor> gru_backward(const LayerSizes& s, const GruBackwardArgs& a) {
  return AT_DISPATCH_FLOATING_TYPES(a.x.scalar_type(), "fusedrnn.gru_backward_cpu",
                                    [&] { return gru_backward_impl<scalar_t>(s, a); });
}

}  // namespace cpu
}  // namespace fusedrnn
