// LSTM layer on CUDA: the time loops around the fused pointwise kernels of
// csrc/cuda/lstm_kernels.cu, mirroring csrc/cpu/lstm_cpu.cpp.
//
// Forward:  xg = x W_ih^T for all T steps in one GEMM (float32 output for the half types);
//           per step hg = h_{t-1} W_hh^T (one GEMM) and ONE pointwise kernel (biases,
//           activations, cell update, cell clip, h, saved values); with projection also
//           y_t = h_t W_hr^T (one GEMM) and a copy of y_t into the running state.
// Backward: per step ONE pointwise kernel (clip / truncation of the recurrent gradients,
//           gate gradients, cell recurrence; with projection a small kernel for the
//           projected state and its GEMM first) and one GEMM dgates_t W_hh. After the loop
//           one kernel each for the (clipped) gradients into h0 and c0, then dx, dW_ih,
//           dW_hh, dW_hr as large GEMMs and db as one reduction.
// Note [CUDA step loop] (cuda_common.h) says what runs where; saved tensors have the CPU
// layouts (csrc/rnn_ops.h).
#include "cuda_ops.h"

#include "../grad_record.h"
#include "cuda_common.h"

namespace fusedrnn {
namespace cuda {

namespace {

template <typename S>
std::vector<at::Tensor> lstm_forward_impl(const LayerSizes& s, const LstmForwardArgs& a) {
  const at::Tensor x = a.x.contiguous();

  using T = typename CudaType<S>::type;
  using A = opmath_t<T>;
  const int64_t T_ = s.T, B = s.B, N = s.N, I = s.I, H = s.H, R = s.R;
  const auto opts = x.options();
  const auto acc = opts.dtype(acc_type(x.scalar_type()));
  const cudaStream_t stream = current_stream();
  const at::Tensor lengths = device_lengths(s, x);

  // xg: [N, 4H] = x W_ih^T, all steps at once; the biases are added in the step kernel.
  const at::Tensor xg = mm_acc(x.reshape({N, I}), a.w_ih.t());
  at::Tensor bias;  // [4H] b_ih + b_hh in the arithmetic type
  if (a.b_ih && a.b_hh) {
    bias = a.b_ih->to(acc) + a.b_hh->to(acc);
  } else if (a.b_ih || a.b_hh) {
    bias = (a.b_ih ? *a.b_ih : *a.b_hh).to(acc).contiguous();
  }
  // The activations overwrite xg in place when the dtypes agree (each element is read before
  // it is written, by the same thread).
  const at::Tensor act = xg.scalar_type() == x.scalar_type() ? xg : at::empty({N, 4 * H}, opts);
  const at::Tensor w_hh_t = a.w_hh.contiguous().t();  // [R, 4H] view: h W_hh^T
  const at::Tensor w_hr_t = a.w_hr ? a.w_hr->contiguous().t() : at::Tensor();  // [H, P]

  at::Tensor y = at::empty({N, R}, opts);
  const at::Tensor h = a.h0 ? a.h0->contiguous().clone() : at::zeros({B, R}, opts);  // [B, R]
  at::Tensor c = at::empty({B, H}, acc);  // [B, H] running cell state
  if (a.c0) {
    c.copy_(*a.c0);
  } else {
    c.zero_();
  }
  at::Tensor c_raw = a.save ? at::empty({N, H}, opts) : at::empty({0}, opts);
  at::Tensor h_pre = a.w_hr ? at::empty({N, H}, opts) : at::empty({0}, opts);
  const at::Tensor hg = at::empty({B, 4 * H}, acc);  // [B, 4H] h_{t-1} W_hh^T of one step

  LstmFwdArgs<T> p{};
  p.H = H;
  p.step = StepInfo{T_, 0, a.reverse, lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr};
  p.hg = ptr<A>(hg);
  p.bias = bias.defined() ? ptr<A>(bias) : nullptr;
  p.c = ptr<A>(c);
  p.h_state = a.w_hr ? nullptr : ptr<T>(h);
  p.has_cell_clip = a.cell_clip.has_value();
  p.cell_clip = a.cell_clip ? static_cast<A>(*a.cell_clip) : A(0);
  CopyRowsArgs<T> cp{};
  cp.R = R;
  cp.step = p.step;
  cp.dst = ptr<T>(h);

  for (int64_t step = 0; step < T_; ++step) {
    const int64_t t = a.reverse ? T_ - 1 - step : step;
    const int64_t M = s.rows[t], off = s.offset[t];
    at::Tensor hg_t = first_rows(hg, M);
    mm_into(hg_t, first_rows(h, M), w_hh_t);
    p.M = M;
    p.step.t = t;
    p.xg = ptr<A>(xg) + off * 4 * H;
    p.act = ptr<T>(act) + off * 4 * H;
    p.c_raw = a.save ? ptr<T>(c_raw) + off * H : nullptr;
    p.h_out = a.w_hr ? ptr<T>(h_pre) + off * H : ptr<T>(y) + off * R;
    C10_CUDA_CHECK(lstm_fwd_step(p, stream));
    if (a.w_hr) {
      // r_t = h_t W_hr^T; rows that do not exist at t have h_t = 0, hence r_t = 0.
      at::Tensor y_t = y.narrow(0, off, M);
      mm_into(y_t, h_pre.narrow(0, off, M), w_hr_t);
      cp.M = M;
      cp.step.t = t;
      cp.src = ptr<T>(y) + off * R;
      C10_CUDA_CHECK(copy_state_rows(cp, stream));
    }
  }
  return {s.step_major(y), h, c.to(x.scalar_type()), s.step_major(act), s.step_major(c_raw),
          s.step_major(h_pre)};
}

template <typename S>
std::vector<at::Tensor> lstm_backward_impl(const LayerSizes& s, const LstmBackwardArgs& a) {
  const bool track = a.need.record;
  const at::Tensor x = a.x.contiguous(), y = a.y.contiguous(), act = a.act.contiguous();
  const at::Tensor c_raw = a.c_raw.contiguous(), h_pre = a.h_pre.contiguous();

  using T = typename CudaType<S>::type;
  using A = opmath_t<T>;
  const int64_t T_ = s.T, B = s.B, N = s.N, I = s.I, H = s.H, R = s.R;
  const auto opts = x.options();
  const auto acc = opts.dtype(acc_type(x.scalar_type()));
  const cudaStream_t stream = current_stream();
  const at::Tensor lengths = device_lengths(s, x);

  const at::Tensor dy = a.dy.contiguous(), dhn = a.dh_n.contiguous(), dcn = a.dc_n.contiguous();
  const at::Tensor w_hh_c = a.w_hh.contiguous();                            // [4H, R]
  const at::Tensor w_hr_c = a.w_hr ? a.w_hr->contiguous() : at::Tensor();  // [P, H]
  const OptTensor c0c = a.c0 ? OptTensor(a.c0->contiguous()) : std::nullopt;

  at::Tensor dgates = at::empty({N, 4 * H}, opts);
  // Gradient into the state entering a step: dh_gemm + dh_carry, see
  // Note [Recurrent gradient buffers] in rnn_params.h. dh_gemm starts at zero (nothing
  // flows in before the first backward step); later steps overwrite its first M rows.
  const at::Tensor dh_gemm = at::zeros({B, R}, acc);
  const at::Tensor dh_carry = at::zeros({B, R}, acc);
  const at::Tensor dc_rec = at::zeros({B, H}, acc);
  const at::Tensor dr = a.w_hr ? at::empty({N, R}, opts) : at::Tensor();
  const at::Tensor dh_direct = a.w_hr ? at::empty({B, H}, acc) : at::Tensor();
  // Records in the arithmetic type: a sum of squares in bfloat16 would keep 8 bits.
  const at::Tensor record = track ? at::empty({N, 3}, acc) : at::Tensor();
  A* rec_p = track ? ptr<A>(record) : nullptr;

  const GradOptions<A> clip = options_as<A>(a.opt);
  const StepInfo rows{T_, 0, a.reverse, lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr};
  const T* craw_p = ptr<T>(c_raw);

  LstmBwdArgs<T> p{};
  p.H = H;
  p.R = R;
  p.step = rows;
  p.opt = clip;
  p.c0 = opt_ptr<T>(c0c);
  p.dh_n = a.w_hr ? nullptr : ptr<T>(dhn);
  p.dh_gemm = a.w_hr ? nullptr : ptr<A>(dh_gemm);
  p.dh_carry = a.w_hr ? nullptr : ptr<A>(dh_carry);
  p.dh_direct = a.w_hr ? ptr<A>(dh_direct) : nullptr;
  p.dc_n = ptr<T>(dcn);
  p.dc_rec = ptr<A>(dc_rec);
  p.has_cell_clip = a.cell_clip.has_value();
  p.cell_clip = a.cell_clip ? static_cast<A>(*a.cell_clip) : A(0);

  ProjBwdArgs<T> pp{};
  if (a.w_hr) {
    pp.R = R;
    pp.step = rows;
    pp.opt = clip;
    pp.dh_n = ptr<T>(dhn);
    pp.dh_gemm = ptr<A>(dh_gemm);
    pp.dh_carry = ptr<A>(dh_carry);
  }

  for (int64_t step = 0; step < T_; ++step) {
    const int64_t t = a.reverse ? step : T_ - 1 - step;
    const int64_t tp = previous_time(t, a.reverse);
    const int64_t M = s.rows[t], off = s.offset[t];
    A* rec_t = rec_p ? rec_p + off * 3 : nullptr;
    if (a.w_hr) {
      pp.M = M;
      pp.step.t = t;
      pp.dy = ptr<T>(dy) + off * R;
      pp.dr = ptr<T>(dr) + off * R;
      pp.record = rec_t;
      C10_CUDA_CHECK(proj_bwd_step(pp, stream));
      // Gradient of h_t = o * tanh(c_t): dr_t W_hr, [M, P] x [P, H].
      at::Tensor direct = first_rows(dh_direct, M);
      mm_into(direct, dr.narrow(0, off, M), w_hr_c);
    } else {
      p.dy = ptr<T>(dy) + off * R;
      p.record = rec_t;
    }
    p.M = M;
    p.step.t = t;
    p.act = ptr<T>(act) + off * 4 * H;
    p.c_raw = craw_p + off * H;
    p.c_raw_prev = (tp >= 0 && tp < T_) ? craw_p + s.offset[tp] * H : nullptr;
    p.dgates = ptr<T>(dgates) + off * 4 * H;
    C10_CUDA_CHECK(lstm_bwd_step(p, stream));
    at::Tensor gemm = first_rows(dh_gemm, M);
    mm_into(gemm, dgates.narrow(0, off, M), w_hh_c);
  }

  // Every row's gradient into h0 is now dh_gemm + dh_carry (rows a packed reverse batch
  // stopped visiting were not written again), into c0 dc_rec: clip, cast.
  at::Tensor dh0 = at::empty({B, R}, opts);
  at::Tensor dc0 = at::empty({B, H}, opts);
  C10_CUDA_CHECK(state_grad(
      StateGradArgs<T>{B, R, clip, ptr<A>(dh_gemm), ptr<A>(dh_carry), ptr<T>(dh0)}, stream));
  C10_CUDA_CHECK(
      state_grad(StateGradArgs<T>{B, H, clip, ptr<A>(dc_rec), nullptr, ptr<T>(dc0)}, stream));

  // Gradients not asked for are empty tensors, each its own (outputs of a custom op must not
  // alias one another).
  auto empty = [&] { return at::empty({0}, opts); };
  const auto dtype = x.scalar_type();
  at::Tensor dx = a.need.input ? at::mm(dgates, a.w_ih).view(x.sizes()) : empty();
  at::Tensor dw_ih = empty(), dw_hh = empty(), db = empty(), dw_hr = empty();
  if (a.need.weight) {
    dw_ih = weight_grad(dgates, x.reshape({N, I})).to(dtype);
    dw_hh = recurrent_weight_grad(s, dgates, y.reshape({N, R}), a.h0, a.reverse).to(dtype);
    if (a.need.bias) db = bias_grad(dgates).to(dtype);
    if (a.w_hr) dw_hr = weight_grad(dr, h_pre.reshape({N, H})).to(dtype);
  }
  return {dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr, track ? finish_grad_record(record, s) : empty()};
}

}  // namespace

std::vector<at::Tensor> lstm_forward(const LayerSizes& s, const LstmForwardArgs& a) {
  const CudaScope scope(a.x);
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.x.scalar_type(),
                                         "fusedrnn.lstm_forward_cuda",
                                         [&] { return lstm_forward_impl<scalar_t>(s, a); });
}

std::vector<at::Tensor> lstm_backward(const LayerSizes& s, const LstmBackwardArgs& a) {
  const CudaScope scope(a.x);
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.x.scalar_type(),
                                         "fusedrnn.lstm_backward_cuda",
                                         [&] { return lstm_backward_impl<scalar_t>(s, a); });
}

}  // namespace cuda
}  // namespace fusedrnn
