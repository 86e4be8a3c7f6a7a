// LSTM layer on the CPU: the time loops around the fused pointwise kernels.
//
// Forward:  gates = x W_ih^T + (b_ih + b_hh) for all T steps in one GEMM (chunks of steps
//           without a backward, Note [Chunked input projection]); then per step
//           gates_t += h_{t-1} W_hh^T (one GEMM) and ONE pointwise pass (activations, cell
//           update, cell clip, h), plus h_t W_hr^T with projection.
// Backward: per step ONE pointwise pass (clip / truncation of the recurrent gradients, gate
//           gradients, cell recurrence; with projection a small pass for the projected
//           state first) and one GEMM dgates_t W_hh (the gradient into h_{t-1}, see
//           Note [Recurrent gradient buffers] in rnn_params.h). After the loop dx, dW_ih,
//           dW_hh, dW_hr are a few GEMMs over all T*B rows and db one reduction.
//           float32 runs the backward loop on the persistent engine instead where
//           bwd_engine_selected says so (Note [CPU backward engine] in bwd_engine.cpp); the
//           steps after the loop are shared.
#include "cpu_ops.h"

#include <cstring>
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
std::vector<at::Tensor> lstm_forward_impl(const LayerSizes& s, const LstmForwardArgs& a) {
  const at::Tensor x = a.x.contiguous();

  const int64_t T_ = s.T, B = s.B, N = s.N, I = s.I, H = s.H, R = s.R;
  const auto opts = x.options();
  const CpuKernelTable<T> k = kernels<T>();

  // gates: [N, 4H] = x W_ih^T + b_ih + b_hh, all steps at once, or chunk by chunk where
  // nothing saves them (Note [Chunked input projection] in cpu_common.h); the engine reads
  // all of them.
  const std::optional<at::Tensor> bias = input_bias(a.b_ih, a.b_hh, 4 * H, 4 * H);
  bool engine = false, engine_input = false;
  if constexpr (std::is_same_v<T, float>) {
    engine = use_forward_engine(s, 4, a.w_hr ? R : 0, a.save);
    engine_input = engine && engine_input_part(s, 4, a.w_hr ? R : 0);
  }
  // The engine computing the x part itself (Note [Engine input part] in engine_fwd.cpp)
  // needs no projection: then `gates` only receives the activations, when saving.
  // For the engine the projection leaves the bias out and the engine adds it as it reads
  // the x part (Note [Bias of the all-steps product] in cpu_common.h).
  std::optional<InputProjection<T>> projected;
  if (!engine_input) {
    projected.emplace(s, x.view({N, I}), a.w_ih, engine ? std::nullopt : bias,
                      a.reverse, a.save || engine);
  }

  at::Tensor y = empty_buffer(s.step_shape(R), opts);
  at::Tensor h = initial_state(a.h0, B, R, opts);
  at::Tensor c = initial_state(a.c0, B, H, opts);
  // Without save (the no-grad op returns y, h_n, c_n only) the saved tensors a backward
  // would read are left undefined: no allocation for a placeholder nobody sees.
  at::Tensor c_raw = a.save ? empty_buffer({N, H}, opts) : at::Tensor();
  at::Tensor h_pre = a.w_hr ? empty_buffer({N, H}, opts)
                            : (a.save ? empty_buffer({0}, opts) : at::Tensor());
  // float32 calls the engine takes (Note [CPU time-loop engine] in engine_fwd.cpp) run the
  // whole time loop there.
  at::Tensor gates = projected ? projected->whole()
                              : (a.save ? empty_buffer({N, 4 * H}, opts) : at::Tensor());
  if (engine) {
    const EngineInputArgs input{x.view({N, I}), a.w_ih, bias};
    lstm_forward_engine(s, gates, a.w_hh, a.w_hr, y, h, c, c_raw, h_pre, a.reverse, a.cell_clip,
                        a.save, engine_input ? &input : nullptr,
                        bias);
  } else {
    StepLinear<T> recurrent(a.w_hh, B, T_);                               // h_{t-1} W_hh^T
    std::optional<StepLinear<T>> projection;                            // h_t W_hr^T
    if (a.w_hr) projection.emplace(*a.w_hr, B, T_);
    const int64_t* len_p = s.lengths ? s.lengths->data_ptr<int64_t>() : nullptr;

    T* y_p = y.data_ptr<T>();
    T* h_p = h.data_ptr<T>();
    T* craw_p = a.save ? c_raw.data_ptr<T>() : nullptr;
    T* hpre_p = a.w_hr ? h_pre.data_ptr<T>() : nullptr;

    LstmFwdStep<T> p{};
    p.H = H;
    p.step = StepInfo{T_, 0, a.reverse, len_p};
    p.c = c.data_ptr<T>();
    p.h_state = a.w_hr ? nullptr : h_p;
    p.has_cell_clip = a.cell_clip.has_value();
    p.cell_clip = a.cell_clip ? static_cast<T>(*a.cell_clip) : T(0);

    for (int64_t step = 0; step < T_; ++step) {
      const int64_t t = a.reverse ? T_ - 1 - step : step;
      const int64_t M = s.rows[t], off = s.offset[t];
      p.M = M;
      p.hg = recurrent(h_p, M);
      p.step.t = t;
      p.act = projected->step(t);  // x W_ih^T + b_ih + b_hh; the activations overwrite it
      p.xg = p.act;
      p.c_raw = craw_p ? craw_p + off * H : nullptr;
      p.h_out = a.w_hr ? hpre_p + off * H : y_p + off * R;
      parallel_rows(M, 4 * H, [&](int64_t b0, int64_t b1) { k.lstm_fwd(p, b0, b1); });
      if (a.w_hr) {
        // r_t = h_t W_hr^T; rows that do not exist at t have h_t = 0, hence r_t = 0.
        T* y_t = y_p + off * R;
        std::memcpy(y_t, (*projection)(p.h_out, M), sizeof(T) * M * R);
        for (int64_t b = 0; b < M; ++b) {
          if (!len_p || t < len_p[b]) std::memcpy(h_p + b * R, y_t + b * R, sizeof(T) * R);
        }
      }
    }
  }
  return {s.step_major(y), h, c, s.step_major(gates), s.step_major(c_raw), s.step_major(h_pre)};
}

template <typename T>
std::vector<at::Tensor> lstm_backward_impl(const LayerSizes& s, const LstmBackwardArgs& a) {
  const bool track = a.need.record;
  const at::Tensor x = a.x.contiguous(), y = a.y.contiguous(), act = a.act.contiguous();
  const at::Tensor c_raw = a.c_raw.contiguous(), h_pre = a.h_pre.contiguous();
  const GradOptions<T> opt = options_as<T>(a.opt);

  const int64_t T_ = s.T, B = s.B, N = s.N, I = s.I, H = s.H, R = s.R;
  const auto opts = x.options();
  const CpuKernelTable<T> k = kernels<T>();

  const at::Tensor dy = a.dy.contiguous(), dhn = a.dh_n.contiguous(), dcn = a.dc_n.contiguous();
  const at::Tensor c0c = a.c0 ? a.c0->contiguous() : at::Tensor();
  const int64_t* len_p = s.lengths ? s.lengths->data_ptr<int64_t>() : nullptr;

  // The whole time loop in one parallel region where it is faster (Note [CPU backward
  // engine] in bwd_engine.cpp); float64 and the other shapes run one GEMM per step.
  bool engine = false;
  if constexpr (std::is_same<T, float>::value) engine = bwd_engine_selected(s, 4);

  at::Tensor dgates = empty_buffer({N, 4 * H}, opts);
  // Gradient into the state entering step t: dh_gemm + dh_carry, see
  // Note [Recurrent gradient buffers] in rnn_params.h. The engine keeps its own buffers and
  // writes dc_rec at the end; the per-step loop needs them zeroed.
  const at::Tensor zero_gemm = engine ? at::Tensor() : zeros_buffer({B, R}, opts);
  at::Tensor dh_carry = engine ? at::Tensor() : zeros_buffer({B, R}, opts);
  at::Tensor dc_rec = engine ? empty_buffer({B, H}, opts) : zeros_buffer({B, H}, opts);
  at::Tensor dh0 = empty_buffer({B, R}, opts);
  at::Tensor dr = a.w_hr ? empty_buffer({N, R}, opts) : at::Tensor();
  at::Tensor record = new_grad_record(s, opts, track);
  T* rec_p = track ? record.data_ptr<T>() : nullptr;

  T* dg_p = dgates.data_ptr<T>();
  const T* craw_p = c_raw.data_ptr<T>();
  const T* act_p = act.data_ptr<T>();
  // h_t = o * tanh(c_t) of every row, [N, H]: the output without projection, h_pre with
  // (Note [tanh(c_t) from the saved h_t], kernels_impl.h).
  const at::Tensor& h_saved = a.w_hr ? h_pre : y;
  const T* hsaved_p = h_saved.data_ptr<T>();
  const T* dy_p = dy.data_ptr<T>();

  LstmBwdStep<T> p{};
  p.H = H;
  p.R = R;
  p.step = StepInfo{T_, 0, a.reverse, len_p};
  p.opt = opt;
  p.c0 = a.c0 ? c0c.data_ptr<T>() : nullptr;
  p.dh_n = a.w_hr ? nullptr : dhn.data_ptr<T>();
  p.dh_gemm = a.w_hr || engine ? nullptr : zero_gemm.data_ptr<T>();
  p.dh_carry = a.w_hr || engine ? nullptr : dh_carry.data_ptr<T>();
  p.dc_n = dcn.data_ptr<T>();
  p.dc_rec = dc_rec.data_ptr<T>();
  p.has_cell_clip = a.cell_clip.has_value();
  p.cell_clip = a.cell_clip ? static_cast<T>(*a.cell_clip) : T(0);

  ProjBwdStep<T> pp{};
  if (a.w_hr && !engine) {
    pp.R = R;
    pp.step = p.step;
    pp.opt = opt;
    pp.dh_n = dhn.data_ptr<T>();
    pp.dh_gemm = zero_gemm.data_ptr<T>();
    pp.dh_carry = dh_carry.data_ptr<T>();
  }

  at::Tensor loop_db;  // the bias gradient, where the engine sums it
  if constexpr (std::is_same<T, float>::value) {
    if (engine) {
      lstm_bwd_engine(s, a.reverse, opt, a.cell_clip, a.w_hh, a.w_hr, act, c_raw, h_saved, a.c0,
                      dy, dhn, dcn, dgates, dh0, dc_rec, dr, record,
                      a.need.weight && a.need.bias ? &loop_db : nullptr);
    }
  }
  if (!engine) {
    StepLinear<T> recurrent_t(a.w_hh.t(), B, T_);                      // dgates_t W_hh
    std::optional<StepLinear<T>> projection_t;                         // dr_t W_hr
    if (a.w_hr) projection_t.emplace(a.w_hr->t(), B, T_);
    for (int64_t step = 0; step < T_; ++step) {
      const int64_t t = a.reverse ? step : T_ - 1 - step;
      const int64_t tp = previous_time(t, a.reverse);
      const int64_t M = s.rows[t], off = s.offset[t];
      p.M = M;
      p.step.t = t;
      p.act = act_p + off * 4 * H;
      p.c_raw = craw_p + off * H;
      p.h = hsaved_p + off * H;
      p.c_raw_prev = (tp >= 0 && tp < T_) ? craw_p + s.offset[tp] * H : nullptr;
      p.dgates = dg_p + off * 4 * H;
      (a.w_hr ? pp.record : p.record) = rec_p ? rec_p + off * 3 : nullptr;
      if (a.w_hr) {
        pp.M = M;
        pp.step.t = t;
        pp.dy = dy_p + off * R;
        pp.dr = dr.data_ptr<T>() + off * R;
        parallel_rows(M, R, [&](int64_t b0, int64_t b1) { k.proj_bwd(pp, b0, b1); });
        // Gradient of h_t = o * tanh(c_t): dr_t W_hr, [B, P] x [P, H].
        p.dh_direct = (*projection_t)(pp.dr, M);
      } else {
        p.dy = dy_p + off * R;
      }
      parallel_rows(M, 4 * H, [&](int64_t b0, int64_t b1) { k.lstm_bwd(p, b0, b1); });
      const T* gemm = recurrent_t(p.dgates, M);
      (a.w_hr ? pp.dh_gemm : p.dh_gemm) = gemm;
      // Rows the next backward step no longer visits (packed, reverse) have their whole
      // gradient into h0 now.
      const int64_t next = step + 1 < T_ ? s.rows[a.reverse ? t + 1 : t - 1] : 0;
      retire_rows(dh0, dh_carry, gemm, std::min(next, M), M);
    }
  }

  // The initial state is handed over to step 0 like any other state: clip its gradient.
  if (opt.clip_mode != ClipMode::None) {
    parallel_rows(B, R, [&](int64_t b0, int64_t b1) {
      k.clip_rows(dh0.data_ptr<T>(), R, opt, b0, b1);
      k.clip_rows(dc_rec.data_ptr<T>(), H, opt, b0, b1);
    });
  }

  // Gradients not asked for are empty tensors, each its own (outputs of a custom op must not
  // alias one another).
  auto empty = [&] { return empty_buffer({0}, opts); };
  const at::Tensor x2d = x.reshape({N, I});
  at::Tensor dx = a.need.input ? rows_times(dgates, a.w_ih).view(x.sizes()) : empty();
  at::Tensor dw_ih = empty(), dw_hh = empty(), db = empty(), dw_hr = empty();
  if (a.need.weight) {
    std::optional<std::pair<at::Tensor, at::Tensor>> both;
    if constexpr (std::is_same<T, float>::value) {
      both = engine_lstm_weight_grads(s, dgates, x2d, y, a.h0, a.reverse);
    }
    if (both) {  // one product (Note [One product for the LSTM weight gradients])
      dw_ih = both->first;
      dw_hh = both->second;
    } else {
      dw_ih = outer_sum(dgates, x2d);
      dw_hh = s.packed ? outer_sum(dgates, previous_states(s, y, a.h0, a.reverse))
                       : recurrent_weight_grad(dgates.view({T_, B, 4 * H}), y, a.h0,
                                               s.lengths, a.reverse);
    }
    if (a.need.bias) db = loop_db.defined() ? loop_db : column_sum(dgates);
    if (a.w_hr) dw_hr = outer_sum(dr, h_pre.reshape({N, H}));
  }
  return {dx, dh0, dc_rec, dw_ih, dw_hh, db, dw_hr,
          track ? finish_grad_record(record, s) : empty()};
}

}  // namespace

std::vector<at::Tensor> lstm_forward(const LayerSizes& s, const LstmForwardArgs& a) {
  return AT_DISPATCH_FLOATING_TYPES(a.x.scalar_type(), "fusedrnn.lstm_forward_cpu",
                                    [&] { return lstm_forward_impl<scalar_t>(s, a); });
}

std::vector<at::Tensor> lstm_backward(const LayerSizes& s, const LstmBackwardArgs& a) {
  return AT_DISPATCH_FLOATING_TYPES(a.x.scalar_type(), "fusedrnn.lstm_backward_cpu",
                                    [&] { return lstm_backward_impl<scalar_t>(s, a); });
}

}  // namespace cpu
}  // namespace fusedrnn
