// Helpers of the CPU drivers (lstm_cpu.cpp, gru_cpu.cpp): the step GEMMs of the time loops,
// the row-parallel loop of the pointwise kernels, and the weight-gradient GEMMs.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ops/mm_cpu_dispatch.h>

#include "../checks.h"
#include "../rnn_params.h"
#include "buffer_cache.h"
#include "bwd_engine.h"
#include "direct_products.h"

namespace fusedrnn {
namespace cpu {

// out = in W^T for a fixed weight W [N, K] and many inputs in [M, K]: the recurrent GEMMs of
// a time loop (h_{t-1} W_hh^T forward, dgates_t W_hh backward, projections).
//
// Note [oneDNN for the step GEMMs]
// The step GEMMs are small (M = B rows) and the same weight is used T times. Where torch has
// oneDNN (x86 and Arm builds) and the dtype is float32, the weight is packed once with
// mkldnn::_reorder_linear_weight and every step calls mkldnn::_linear_pointwise (through the
// dispatcher, boxed, as these ops have no C++ API). Measured on a 2-core AMD EPYC (AVX-512),
// B=32, H=256: 180 GFLOP/s for the step GEMM against 131 for at::mm (MKL), which is what
// torch.nn.LSTM's own oneDNN path gets too. Each oneDNN call costs ~14 us of overhead, so
// small step GEMMs (below 4M multiply-adds: small batches, small H, the short tail steps of
// a packed batch), float64, torch without oneDNN, and set_step_gemm("blas") use
// at::cpu::mm_out (the CPU kernel of at::mm, no dispatcher, ~1.4 us of overhead).
// Packing costs a pass over the weight into a freshly allocated buffer (about 230 us for
// a 1024 x 128 weight on a 2-core Xeon, page faults included), so oneDNN is also left out
// where the packed weight would serve fewer than kOneDnnMinRows rows in all: a cell (T = 1)
// or a short call, and linear_rows' one GEMM over few rows. There at::addmm / mm_out, which
// torch.nn's cells use too, is faster: LSTMCell B=32 H=256 I=128, no grad, per-step loop,
// 2 threads: 0.47x of torch.nn's speed with the per-call packing, 1.38x without.
constexpr int64_t kOneDnnMinRows = 512;

template <typename T>
class StepLinear {
 public:
  // M: the most rows a call will have (a packing hint for oneDNN); calls: how many calls
  // the weight will serve (the steps of the loop).
  StepLinear(const at::Tensor& weight, int64_t M, int64_t calls);
  // Row-major in [M, K] -> out [M, N], M <= the constructor's; the result stays valid until
  // the next call.
  const T* operator()(const T* in, int64_t M);

 private:
  int64_t N_, K_;
  at::Tensor weight_;   // [N, K], as given: mm_out reads a transposed view (W_hh^T in the
                        // backward) in place, without the copy contiguous() would make
  at::Tensor packed_;   // oneDNN-packed weight, or undefined
  at::Tensor out_;      // the last result
  bool direct_ = false; // Note [Direct products for small calls]
};

// x W^T + bias for x [M, K], W [N, K], bias [N] or none, as a new contiguous [M, N] tensor:
// the input projection of all T steps at once, with StepLinear's backend.
// bias: the sum of the input-side bias terms, see input_bias.
at::Tensor linear_rows(const at::Tensor& x, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias);

// linear_rows for a fixed weight over several row blocks: the backend is chosen (and the
// weight packed, for oneDNN) once, for `rows` rows in all, and every call uses it.
class RowsLinear {
 public:
  RowsLinear(const at::Tensor& weight, const std::optional<at::Tensor>& bias, int64_t rows,
             bool contiguous_input);
  at::Tensor operator()(const at::Tensor& x) const;

 private:
  enum class Backend { Direct, OneDnn, Aten };
  Backend backend_ = Backend::Aten;
  at::Tensor weight_, packed_;
  std::optional<at::Tensor> bias_;
};

// Note [Bias of the all-steps product]
// Where a float32 engine reads the x part of its gates from one product over all steps,
// that product runs without the bias and the engine's epilogue adds it as it reads each
// value (LstmEngineStep::x_bias, GruEngineStep::x_bias). at::addmm with a bias first copies
// the broadcast bias into the whole [N, G] output and then accumulates the product into it:
// a write pass over 50 MiB at T=100, B=64, H=512 (4.5 ms of a 73 ms addmm, in
// torch.profiler on the 2-core Xeon). The value is the same sum, the bias added to the
// finished product once.
//
// Note [Chunked input projection]
// The per-step loop reads the input projection x W_ih^T + bias of step t once, at step t.
// Computed for all steps before the loop (one GEMM), it is a buffer of N * G floats: 50 MiB
// for an LSTM at T=100, B=64, H=512. A fresh buffer of that size is mmap'ed by the allocator
// and returned to the system when freed, so every call pays a page fault per 4 KiB and
// writes, then later reads back, the whole buffer through memory. Where nothing needs the
// buffer after the loop (no backward: it holds the saved activations otherwise) and it is
// large, the projection is computed for a chunk of steps at a time as the loop reaches
// them, each chunk about kProjectionChunkBytes (at least kOneDnnMinRows rows: the chunk's
// GEMM stays on oneDNN) and still in cache when its steps read it. The GEMM of a chunk
// computes each row as the whole GEMM does (one dot product per element over I), so the
// forward gives the same results with and without a backward; the tests compare them.
// Measured (2-core AMD EPYC, Zen 5, 1 MiB L2 per core, 2 threads, LSTM I=512 H=512 B=64, no
// grad, paired against torch.nn, medians of four rounds): T=100 0.82x of torch.nn's speed
// before, 0.96x after; T=200 0.86x, 0.98x. Chunks of 1-8 MiB ran alike; 16 MiB ones come
// from mmap again (benchmarks/results/amd-epyc-2026-12-02-chunked-projection-ab.md).
constexpr int64_t kProjectionChunkBytes = 4 << 20;

// The input projection of a per-step loop: the rows of step t, computed as one GEMM over all
// steps (whole) or chunk by chunk in the loop's order (Note [Chunked input projection]).
template <typename T>
class InputProjection {
 public:
  // x: [N, I] (contiguous, the rows of all steps); weight [G, I]; bias [G] or none, see
  // input_bias; `saved`: the whole buffer is kept (it is returned as saved activations).
  InputProjection(const LayerSizes& s, const at::Tensor& x, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, bool reverse, bool saved);
  // The rows of step t ([s.rows[t], G]); steps must come in the loop's order.
  T* step(int64_t t);
  // The whole [N, G] buffer, or a 1-D placeholder when chunked.
  at::Tensor whole() const;

 private:
  const LayerSizes& s_;
  at::Tensor x_;
  RowsLinear linear_;
  bool reverse_;
  int64_t G_, steps_per_chunk_ = 0;  // 0: not chunked
  int64_t first_ = 0, last_ = -1;    // steps of the current chunk, [first_, last_]
  at::Tensor rows_;                  // their projection (all steps when not chunked)
};

// The bias the input projection adds: b_ih + b_hh[0, hh), [G] (zero past hh: the GRU's b_hn
// stays out, it sits inside r * (h W_hn^T + b_hn)), or none without either bias. One loop
// rather than narrow / add: at T = 1 each ATen call is a visible share of the call.
std::optional<at::Tensor> input_bias(const std::optional<at::Tensor>& b_ih,
                                     const std::optional<at::Tensor>& b_hh, int64_t G,
                                     int64_t hh);

// "onednn" (default where available) or "blas": the backend of StepLinear for float32.
std::string step_gemm();
std::string set_step_gemm(const std::string& name);

// Runs f(b_begin, b_end) over the batch rows, in parallel once there is enough work per
// thread (`row_work` elements per row) to pay for waking the thread pool.
template <class F>
inline void parallel_rows(int64_t B, int64_t row_work, const F& f) {
  constexpr int64_t kGrainElements = 8192;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, row_work));
  at::parallel_for(0, B, grain, f);
}

// dh0[b] = gemm[b] + carry[b] for rows b in [from, to): their gradient into the initial state
// is complete (see Note [Recurrent gradient buffers] in rnn_params.h).
template <typename T>
inline void retire_rows(at::Tensor& dh0, const at::Tensor& carry, const T* gemm, int64_t from,
                        int64_t to) {
  if (to <= from) return;
  const int64_t R = dh0.size(1);
  T* out = dh0.data_ptr<T>();
  const T* c = carry.data_ptr<T>();
  for (int64_t i = from * R; i < to * R; ++i) out[i] = c[i] + gemm[i];
}

// The time processed just before `t`, in processing order (may be out of [0, T)).
inline int64_t previous_time(int64_t t, bool reverse) { return reverse ? t + 1 : t - 1; }

// A fresh [rows, cols] state buffer that starts as s0 (zeros without it; s0 is checked to
// have this shape and the dtype of opts): one allocation and a memcpy (or zeros_buffer's
// memset). clone() and at::zeros each add an ATen copy_ / zero_, a TensorIterator set up
// for a few floats, which in a tiny call costs more than the arithmetic. Measured with
// zeros_buffer's memset and the direct column sums (2-core Xeon VM, 2 threads, 40 rounds in
// alternating order, time before / after, median): ops.lstm_layer T=1 I=H=8 B=1 no grad
// 1.12, forward+backward 1.12; ops.gru_layer 1.08 / 1.06; LSTMCell / GRUCell I=H=64 B=32
// training 1.03 / 1.06 (within this host's noise).
inline at::Tensor initial_state(const std::optional<at::Tensor>& s0, int64_t rows,
                                int64_t cols, const at::TensorOptions& opts) {
  if (!s0) return zeros_buffer({rows, cols}, opts);
  at::Tensor out = empty_buffer({rows, cols}, opts);
  const at::Tensor src = s0->contiguous();
  TORCH_INTERNAL_ASSERT(src.scalar_type() == out.scalar_type() && src.numel() == out.numel());
  if (out.nbytes() > 0) std::memcpy(out.data_ptr(), src.const_data_ptr(), out.nbytes());
  return out;
}

// a^T b for a [K, G], b [K, R]: the weight gradients, summed over all T*B rows.
//
// Note [Blocked weight gradients]
// One GEMM over K = T*B rows is the fastest way to form a weight gradient, but for K of a
// few hundred BLAS accumulated it in long float32 chains: at T=20, B=7 dW_hh came out with
// twice torch.nn's error (torch.nn sums per-step products). Summing GEMMs over blocks of at
// least 64 rows (at most 16 blocks) keeps the error at torch.nn's level for small K and
// costs nothing measurable for large K. Small products take the full blocks in one batched
// GEMM and add the block results in block order (kBatchedOuterMacs): the same sums.
// Up to this many multiply-adds the full blocks of outer_sum go to one batched GEMM.
// Measured (2 threads, training, paired against the per-block loop): LSTM T=24 B=16 I=8
// H=32 1.03x, T=64 B=8 I=16 H=32 1.04x, GRU T=24 B=16 I=8 H=32 1.08x; above it a batched
// GEMM was slower in the whole call (LSTM T=64 B=32 I=1 H=64 with dW_hh's 33M: 0.95x; T=128
// B=8 H=256 with dW_ih's 67M: 0.87x), although alone it was faster up to 67M.
// float32 products past the direct loops skip the rest of this: they run on the backward
// engine's kernels, with k-blocked sums of their own (Note [Weight gradients on the engine
// kernel] in bwd_engine.cpp); what is left below is float64.
constexpr int64_t kBatchedOuterMacs = int64_t(8) << 20;

inline at::Tensor outer_sum(const at::Tensor& a, const at::Tensor& b) {
  const int64_t K = a.size(0);
  if (a.stride(1) == 1 && b.stride(1) == 1 &&
      direct_row_sum(K, K * a.size(1) * b.size(1))) {  // Note [Direct products for small calls]
    at::Tensor out = empty_buffer({a.size(1), b.size(1)}, a.options());
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "fusedrnn.outer_sum", [&] {
      direct_outer_sum(a.const_data_ptr<scalar_t>(), a.stride(0), b.const_data_ptr<scalar_t>(),
                       b.stride(0), K, a.size(1), b.size(1), out.data_ptr<scalar_t>(), false);
    });
    return out;
  }
  if (engine_outer_sum_applies(a, b)) return engine_outer_sum(a, b);
  const int64_t block = std::max<int64_t>(64, (K + 15) / 16);
  // The result in a cached buffer (Note [CPU buffer cache]): a weight gradient is as large
  // as its weight, and a fresh one is page-faulted on every call.
  auto mm = [&](const at::Tensor& x, const at::Tensor& y) {
    at::Tensor out = empty_buffer({x.size(1), y.size(1)}, x.options());
    return at::mm_out(out, x.t(), y);
  };
  if (K <= block) return mm(a, b);
  const int64_t full = K / block;
  at::Tensor out;
  int64_t done = 0;
  if (full > 1 && a.is_contiguous() && b.is_contiguous() &&
      K * a.size(1) * b.size(1) <= kBatchedOuterMacs) {
    // The full blocks in one batched GEMM, summed in block order: the loop's sums in one
    // call instead of one per block (each ~7 us of call and thread-pool overhead, which
    // the small weight gradients of short, narrow layers notice).
    const int64_t G = a.size(1), R = b.size(1);
    out = at::bmm(a.narrow(0, 0, full * block).view({full, block, G}).transpose(1, 2),
                  b.narrow(0, 0, full * block).view({full, block, R}))
              .sum(0);
    done = full * block;
  } else {
    out = mm(a.narrow(0, 0, std::min(block, K)), b.narrow(0, 0, std::min(block, K)));
    done = block;
  }
  for (int64_t k = done; k < K; k += block) {
    const int64_t n = std::min(block, K - k);
    out.addmm_(a.narrow(0, k, n).t(), b.narrow(0, k, n));
  }
  return out;
}

// out += a^T b (out [G, R], a [K, G], b [K, R], K small: the h0 term of dW_hh).
inline void add_outer_sum(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  const int64_t K = a.size(0);
  if (out.is_contiguous() && a.stride(1) == 1 && b.stride(1) == 1 &&
      direct_row_sum(K, K * a.size(1) * b.size(1))) {
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "fusedrnn.add_outer_sum", [&] {
      direct_outer_sum(a.const_data_ptr<scalar_t>(), a.stride(0), b.const_data_ptr<scalar_t>(),
                       b.stride(0), K, a.size(1), b.size(1), out.data_ptr<scalar_t>(), true);
    });
    return;
  }
  out.addmm_(a.t(), b);
}

// a.sum(0) for a [K, G]: a bias gradient.
inline at::Tensor column_sum(const at::Tensor& a) {
  const int64_t K = a.size(0), G = a.size(1);
  if (a.stride(1) == 1 && direct_column_sum_applies(K, G)) {
    at::Tensor out = empty_buffer({G}, a.options());
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "fusedrnn.column_sum", [&] {
      direct_column_sum(a.const_data_ptr<scalar_t>(), a.stride(0), K, G, out.data_ptr<scalar_t>());
    });
    return out;
  }
  return a.sum(0);
}

// a w for a [M, K] contiguous, w [K, N] contiguous: the input gradient dgates W_ih. Small
// products are plain loops (Note [Direct products for small calls]); on Intel CPUs float32
// takes the backward engine's micro-kernel or at::mm (Note [Input gradients on the engine
// kernel] in bwd_engine.cpp); elsewhere float32 with many rows goes to oneDNN (as
// linear_rows, with the weight w^T packed), which on a 2-core AMD EPYC (Zen 5) ran 1.5x
// (M=1024, K=1024, N=64) to 2.2x (M=6400, K=2048, N=512) faster than at::mm's MKL there;
// the rest at::mm.
at::Tensor rows_times(const at::Tensor& a, const at::Tensor& w);

// Note [Previous state of a row]
// The state that entered row k of a step (k = s.offset[t] + b, rows in the layout of the
// outputs y [N, R]): at the row's first processed step its initial state (row b of h0 [B, R],
// zeros without h0), at a later one the output of the step before in processing order, and
// zeros where the row does not run (padded rows past their length). The first processed step
// is t = 0 forward; reversed, t = T - 1, or with lengths len[b] - 1; in the packed layout the
// rows that continue from the step before are a prefix of it (the longest sequences first).
// Returns one pointer per row: into y, into h0, or nullptr for zeros. The one statement of
// this rule for the weight gradients: previous_states copies by it, and the LSTM's one
// product packs its panels by it (Note [One product for the LSTM weight gradients] in
// bwd_engine.cpp); recurrent_weight_grad below is the same sum for the padded layout as a
// shifted product.
template <typename T>
std::vector<const T*> previous_state_rows(const LayerSizes& s, const T* y, const T* h0,
                                          int64_t R, bool reverse);

// The state entering each step, row by row, in the layout of `y` (Note [Previous state of a
// row]; the packed layout uses it, the padded one the shifted GEMM of recurrent_weight_grad).
// y: [N, R].
at::Tensor previous_states(const LayerSizes& s, const at::Tensor& y,
                           const std::optional<at::Tensor>& h0, bool reverse);

// dW_hh = sum_t dg_t^T h_{t-1} for gate gradients dg [T, B, G] and outputs y [T, B, R].
// The previous state is the previous output, except at a row's first processed step where it
// is h0. Outputs of rows that do not exist at a time are zero, so one shifted GEMM covers all
// later steps and a [B]-row GEMM the h0 term (rows at each row's own first step).
inline at::Tensor recurrent_weight_grad(const at::Tensor& dg, const at::Tensor& y,
                                        const std::optional<at::Tensor>& h0,
                                        const std::optional<at::Tensor>& lengths, bool reverse) {
  const int64_t T = dg.size(0), B = dg.size(1), G = dg.size(2), R = y.size(2);
  at::Tensor dw;  // [G, R]; no zero-filled start: at T = 1 (cells) dW_hh is the h0 term alone
  if (T > 1) {
    const at::Tensor dg_s = reverse ? dg.narrow(0, 0, T - 1) : dg.narrow(0, 1, T - 1);
    const at::Tensor y_s = reverse ? y.narrow(0, 1, T - 1) : y.narrow(0, 0, T - 1);
    dw = outer_sum(dg_s.reshape({(T - 1) * B, G}), y_s.reshape({(T - 1) * B, R}));
  }
  if (h0) {
    at::Tensor first;
    if (!reverse) {
      first = dg[0];
    } else if (!lengths) {
      first = dg[T - 1];
    } else {
      first = dg.index({*lengths - 1, at::arange(B, lengths->options())});
    }
    if (dw.defined()) {
      add_outer_sum(dw, first, *h0);
    } else {
      dw = outer_sum(first, *h0);
    }
  }
  return dw.defined() ? dw : zeros_buffer({G, R}, y.options());
}

}  // namespace cpu
}  // namespace fusedrnn
