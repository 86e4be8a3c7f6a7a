// Helpers of the CUDA drivers (lstm_cuda.cpp, gru_cuda.cpp): the torch-facing side of the
// kernels in csrc/cuda/. Tensors become raw pointers of the kernels' types, every launch
// goes to the caller's current stream and is checked, and the GEMMs go through ATen (cuBLAS
// on the current stream).
//
// Note [CUDA step loop]
// Per time step the drivers issue one GEMM (at::mm_out into a preallocated buffer, beta = 0,
// Note [Recurrent gradient buffers]) and ONE pointwise kernel (with projection: one more
// GEMM and a small kernel). Nothing in the loop synchronises with the host: sizes, offsets
// and lengths are known on the host (lengths and batch_sizes are CPU tensors), the lengths
// are copied to the device once per call, stream-ordered on the current stream.
#pragma once

#include <optional>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#ifdef FUSEDRNN_CUDA_EMU
// tools/cuda_emu's host build: CPU tensors, no device, no stream (the launches are synchronous).
#define C10_CUDA_CHECK(x) TORCH_CHECK((x) == cudaSuccess, "emulated launch failed")
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "../checks.h"
#include "../cuda/kernels.h"

namespace fusedrnn {
namespace cuda {

// ATen scalar type -> the kernels' storage type.
template <typename S>
struct CudaType {
  using type = S;
};
template <>
struct CudaType<at::Half> {
  using type = __half;
};
template <>
struct CudaType<at::BFloat16> {
  using type = __nv_bfloat16;
};

// The dtype the kernels compute and accumulate in: float32 for the half types, else the
// dtype itself (Note [Storage and arithmetic types] in csrc/cuda/cuda_params.h).
inline at::ScalarType acc_type(at::ScalarType s) {
  return (s == at::kHalf || s == at::kBFloat16) ? at::kFloat : s;
}

// Data pointer of a tensor of storage type T (the glue allocated it or made it contiguous).
template <typename T>
inline T* ptr(const at::Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

template <typename T>
inline const T* opt_ptr(const OptTensor& t) {
  return t ? static_cast<const T*>(t->data_ptr()) : nullptr;
}

// The guards every CUDA entry point holds: the input's device is current; autocast is off
// for the ATen calls inside (the ops compute in the dtype of their inputs; the Python
// wrappers do the autocast casts, see fusedrnn/ops.py); and those calls skip the autograd
// layers of the dispatcher (nothing inside is differentiated; the ops' autograd formula is
// registered in Python), which saves host time on the per-step GEMMs.
struct CudaScope {
#ifdef FUSEDRNN_CUDA_EMU
  explicit CudaScope(const at::Tensor&) : no_autocast(c10::autocast_dispatch_keyset) {}
#else
  explicit CudaScope(const at::Tensor& input)
      : device(input.device()), no_autocast(c10::autocast_dispatch_keyset) {}
  c10::cuda::CUDAGuard device;
#endif
  c10::impl::ExcludeDispatchKeyGuard no_autocast;
  at::AutoDispatchBelowADInplaceOrView below_autograd;
};

#ifdef FUSEDRNN_CUDA_EMU
inline cudaStream_t current_stream() { return nullptr; }
#else
inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
#endif

// out = a b into a preallocated out of a's dtype or, for the half types, float32: cuBLAS
// accumulates in float32 (float64 for double) and rounds once into out.
inline void mm_into(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  if (out.scalar_type() == a.scalar_type()) {
    at::mm_out(out, a, b);
  } else {
#ifdef FUSEDRNN_CUDA_EMU  // CPU ATen has no mm with an output dtype: float32, one rounding
    out.copy_(at::mm(a.to(at::kFloat), b.to(at::kFloat)));
#else
    at::mm_out(out, a, b, out.scalar_type());
#endif
  }
}

// The first M rows of a [B, ...] running buffer: the buffer itself when M == B (every padded
// step), which saves a view per step on the host.
inline at::Tensor first_rows(const at::Tensor& t, int64_t M) {
  return M == t.size(0) ? t : t.narrow(0, 0, M);
}

// a b as a new tensor in acc_type(a).
inline at::Tensor mm_acc(const at::Tensor& a, const at::Tensor& b) {
  const at::ScalarType acc = acc_type(a.scalar_type());
  if (acc == a.scalar_type()) return at::mm(a, b);
#ifdef FUSEDRNN_CUDA_EMU
  return at::mm(a.to(acc), b.to(acc));
#else
  return at::mm(a, b, acc);
#endif
}

// The per-row lengths on x's device ([B] int64), or an undefined tensor when every row has
// length T. One stream-ordered copy per call (no host synchronisation: a pageable source is
// staged by cudaMemcpyAsync before it returns).
inline at::Tensor device_lengths(const LayerSizes& s, const at::Tensor& x) {
  if (!s.lengths) return at::Tensor();
  return s.lengths->to(x.options().dtype(at::kLong), /*non_blocking=*/true);
}

// A host index vector as an int64 tensor on `like`'s device (one stream-ordered copy).
at::Tensor device_index(const std::vector<int64_t>& index, const at::Tensor& like);

// a^T b for a [K, G], b [K, X]: a weight gradient summed over all K = N rows, in acc_type
// (the caller casts to the dtype at the end). See Note [Weight gradients on CUDA].
at::Tensor weight_grad(const at::Tensor& a, const at::Tensor& b);

// dW_hh = sum over steps of dg_t^T h_{t-1} for gate gradients dg [N, G] and outputs
// y [N, R], in acc_type; the previous state of a row at its first processed step is h0
// (zeros without it). Padded: one shifted GEMM plus a [B]-row GEMM for the h0 term; packed:
// the previous states are gathered into [N, R] first.
at::Tensor recurrent_weight_grad(const LayerSizes& s, const at::Tensor& dg, const at::Tensor& y,
                                 const OptTensor& h0, bool reverse);

// sum over rows of g [N, G] in acc_type: the bias gradients (a deterministic ATen reduction).
inline at::Tensor bias_grad(const at::Tensor& g) {
  return at::sum(g, {0}, /*keepdim=*/false, acc_type(g.scalar_type()));
}

// The time processed just before t in processing order (may be outside [0, T)).
inline int64_t previous_time(int64_t t, bool reverse) { return reverse ? t + 1 : t - 1; }

}  // namespace cuda
}  // namespace fusedrnn
