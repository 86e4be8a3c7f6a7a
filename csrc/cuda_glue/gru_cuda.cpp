// GRU layer on CUDA: the time loops around the fused pointwise kernels of
// csrc/cuda/gru_kernels.cu, mirroring csrc/cpu/gru_cpu.cpp.
//
// Forward:  xg = x W_ih^T for all T steps in one GEMM; per step hg = h_{t-1} W_hh^T (one
//           GEMM) and ONE pointwise kernel. The biases are added in the kernel: b_ih and the
//           r, z parts of b_hh outside, b_hn inside r * (h W_hn^T + b_hn).
// Backward: per step ONE pointwise kernel and one GEMM dhg_t W_hh; then one kernel for the
//           (clipped) gradient into h0, dx, dW_ih, dW_hh as large GEMMs and the bias
//           gradients as reductions. See Note [CUDA step loop] in cuda_common.h.
#include "cuda_ops.h"

#include "../grad_record.h"
#include "cuda_common.h"

namespace fusedrnn {
namespace cuda {

namespace {

template <typename S>
std::vector<at::Tensor> gru_forward_impl(const LayerSizes& s, const GruForwardArgs& a) {
  const at::Tensor x = a.x.contiguous();

  using T = typename CudaType<S>::type;
  using A = opmath_t<T>;
  const int64_t T_ = s.T, B = s.B, N = s.N, I = s.I, H = s.H;
  const auto opts = x.options();
  const auto acc = opts.dtype(acc_type(x.scalar_type()));
  const cudaStream_t stream = current_stream();
  const at::Tensor lengths = device_lengths(s, x);

  // xg: [N, 3H] = x W_ih^T, all steps at once.
  const at::Tensor xg = mm_acc(x.reshape({N, I}), a.w_ih.t());
  at::Tensor bias_x, b_hn;  // [3H] b_ih + (b_hr, b_hz, 0) and [H] b_hn, arithmetic type
  if (a.b_ih || a.b_hh) {
    bias_x = a.b_ih ? a.b_ih->to(acc, /*non_blocking=*/false, /*copy=*/true).contiguous()
                  : at::zeros({3 * H}, acc);
    if (a.b_hh) bias_x.narrow(0, 0, 2 * H).add_(a.b_hh->narrow(0, 0, 2 * H));
  }
  if (a.b_hh) b_hn = a.b_hh->narrow(0, 2 * H, H).to(acc).contiguous();
  const at::Tensor w_hh_t = a.w_hh.contiguous().t();  // [H, 3H] view: h W_hh^T

  at::Tensor y = at::empty({N, H}, opts);
  const at::Tensor h = a.h0 ? a.h0->contiguous().clone() : at::zeros({B, H}, opts);  // [B, H]
  at::Tensor saved = a.save ? at::empty({N, 4 * H}, opts) : at::empty({0}, opts);
  const at::Tensor hg = at::empty({B, 3 * H}, acc);  // [B, 3H] h_{t-1} W_hh^T of one step

  GruFwdArgs<T> p{};
  p.H = H;
  p.step = StepInfo{T_, 0, a.reverse, lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr};
  p.hg = ptr<A>(hg);
  p.bias_x = bias_x.defined() ? ptr<A>(bias_x) : nullptr;
  p.b_hn = b_hn.defined() ? ptr<A>(b_hn) : nullptr;
  p.h_state = ptr<T>(h);

  for (int64_t step = 0; step < T_; ++step) {
    const int64_t t = a.reverse ? T_ - 1 - step : step;
    const int64_t M = s.rows[t], off = s.offset[t];
    at::Tensor hg_t = first_rows(hg, M);
    mm_into(hg_t, first_rows(h, M), w_hh_t);
    p.M = M;
    p.step.t = t;
    p.xg = ptr<A>(xg) + off * 3 * H;
    p.saved = a.save ? ptr<T>(saved) + off * 4 * H : nullptr;
    p.h_out = ptr<T>(y) + off * H;
    C10_CUDA_CHECK(gru_fwd_step(p, stream));
  }
  return {s.step_major(y), h, s.step_major(saved)};
}

template <typename S>
std::vector<at::Tensor> gru_backward_impl(const LayerSizes& s, const GruBackwardArgs& a) {
  const bool track = a.need.record;
  const at::Tensor x = a.x.contiguous(), y = a.y.contiguous(), saved = a.saved.contiguous();

  using T = typename CudaType<S>::type;
  using A = opmath_t<T>;
  const int64_t T_ = s.T, B = s.B, N = s.N, I = s.I, H = s.H;
  const auto opts = x.options();
  const auto acc = opts.dtype(acc_type(x.scalar_type()));
  const cudaStream_t stream = current_stream();
  const at::Tensor lengths = device_lengths(s, x);

  const at::Tensor dy = a.dy.contiguous(), dhn = a.dh_n.contiguous();
  const at::Tensor w_hh_c = a.w_hh.contiguous();  // [3H, H]
  const OptTensor h0c = a.h0 ? OptTensor(a.h0->contiguous()) : std::nullopt;

  at::Tensor dxg = at::empty({N, 3 * H}, opts);
  at::Tensor dhg = at::empty({N, 3 * H}, opts);
  // Gradient into the state entering a step: dh_gemm + dh_carry, see
  // Note [Recurrent gradient buffers] in rnn_params.h.
  const at::Tensor dh_gemm = at::zeros({B, H}, acc);
  const at::Tensor dh_carry = at::zeros({B, H}, acc);
  const at::Tensor record = track ? at::empty({N, 3}, acc) : at::Tensor();
  A* rec_p = track ? ptr<A>(record) : nullptr;
  const T* y_p = ptr<T>(y);

  GruBwdArgs<T> p{};
  p.H = H;
  p.step = StepInfo{T_, 0, a.reverse, lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr};
  p.opt = options_as<A>(a.opt);
  p.h0 = opt_ptr<T>(h0c);
  p.dh_n = ptr<T>(dhn);
  p.dh_gemm = ptr<A>(dh_gemm);
  p.dh_carry = ptr<A>(dh_carry);

  for (int64_t step = 0; step < T_; ++step) {
    const int64_t t = a.reverse ? step : T_ - 1 - step;
    const int64_t tp = previous_time(t, a.reverse);
    const int64_t M = s.rows[t], off = s.offset[t];
    p.M = M;
    p.step.t = t;
    p.saved = ptr<T>(saved) + off * 4 * H;
    p.h_prev = (tp >= 0 && tp < T_) ? y_p + s.offset[tp] * H : nullptr;
    p.dy = ptr<T>(dy) + off * H;
    p.dxg = ptr<T>(dxg) + off * 3 * H;
    p.dhg = ptr<T>(dhg) + off * 3 * H;
    p.record = rec_p ? rec_p + off * 3 : nullptr;
    C10_CUDA_CHECK(gru_bwd_step(p, stream));
    at::Tensor gemm = first_rows(dh_gemm, M);
    mm_into(gemm, dhg.narrow(0, off, M), w_hh_c);
  }

  // Every row's gradient into h0 is now dh_gemm + dh_carry: clip, cast.
  at::Tensor dh0 = at::empty({B, H}, opts);
  C10_CUDA_CHECK(state_grad(
      StateGradArgs<T>{B, H, p.opt, ptr<A>(dh_gemm), ptr<A>(dh_carry), ptr<T>(dh0)}, stream));

  // Gradients not asked for are empty tensors, each its own (outputs of a custom op must not
  // alias one another).
  auto empty = [&] { return at::empty({0}, opts); };
  const auto dtype = x.scalar_type();
  at::Tensor dx = a.need.input ? at::mm(dxg, a.w_ih).view(x.sizes()) : empty();
  at::Tensor dw_ih = empty(), dw_hh = empty(), db_ih = empty(), db_hh = empty();
  if (a.need.weight) {
    dw_ih = weight_grad(dxg, x.reshape({N, I})).to(dtype);
    dw_hh = recurrent_weight_grad(s, dhg, y.reshape({N, H}), a.h0, a.reverse).to(dtype);
    if (a.need.bias) {
      db_ih = bias_grad(dxg).to(dtype);
      db_hh = bias_grad(dhg).to(dtype);
    }
  }
  return {dx, dh0, dw_ih, dw_hh, db_ih, db_hh, track ? finish_grad_record(record, s) : empty()};
}

}  // namespace

std::vector<at::Tensor> gru_forward(const LayerSizes& s, const GruForwardArgs& a) {
  const CudaScope scope(a.x);
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.x.scalar_type(),
                                         "fusedrnn.gru_forward_cuda",
                                         [&] { return gru_forward_impl<scalar_t>(s, a); });
}

std::vector<at::Tensor> gru_backward(const LayerSizes& s, const GruBackwardArgs& a) {
  const CudaScope scope(a.x);
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.x.scalar_type(),
                                         "fusedrnn.gru_backward_cuda",
                                         [&] { return gru_backward_impl<scalar_t>(s, a); });
}

}  // namespace cuda
}  // namespace fusedrnn
