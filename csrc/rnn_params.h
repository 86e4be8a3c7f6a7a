// Plain parameter structs shared by the torch-facing glue and the kernels.
//
// Kernel code (csrc/cpu/capability_*.cpp, csrc/cuda/*.cu) includes this header and nothing of
// torch: every struct here is raw pointers, sizes and flags. All matrices are row-major and
// contiguous; the shape of each buffer is written next to it with the shape letters
//   T steps, B batch, I input, H hidden, R recurrent state width (P with projection, else H).
//
// Note [Per-row step bookkeeping]
// A row b exists at times t < len_b (len_b = T without lengths). Forward it processes
// t = 0..len_b-1, reverse t = len_b-1..0; its processed-step index at time t is s = t, or
// s = len_b-1-t in reverse. At times where the row does not exist its state is carried
// unchanged, its output is zero and its gate gradients are zero. In the backward pass the
// recurrent gradient entering processed step s (from step s+1) is
//   - dh_n / dc_n (unclipped)          when s == len_b-1 (the row's last step),
//   - zero                              when truncate > 0 and (s+1) % truncate == 0 (the
//                                       state entering step s+1 is a truncation point),
//   - clip(dh_rec) / clip(dc_rec)       otherwise (dh_rec = dh_gemm + dh_carry, below).
// Rows that do not exist at t carry the recurrent gradient unchanged (the state is carried
// by an identity), so after the last backward step the buffers hold the unclipped gradient
// into h0/c0 for every row; the glue clips it there (h0/c0 count as handed over).
//
// Note [Recurrent gradient buffers]
// The gradient into h_{t-1} is dh_gemm + dh_carry: dh_gemm = dgates_t W_hh is written by a
// plain GEMM (beta = 0), dh_carry by the pointwise kernel (GRU: the direct term dh * z; rows
// that do not exist: the carried gradient; LSTM rows that do: zero). The sum is formed in the
// next step's pointwise pass rather than by a beta = 1 GEMM: accumulating into C inside the
// BLAS call measurably biased the float32 recurrence (errors 2-3x torch.nn's over 64 steps).
// The same holds forward: gates = xg + hg with hg from a beta = 0 GEMM.
//
// Note [Recording recurrent gradient norms]
// With track_grad_norms the backward kernels also write, per step t and batch row b, a record
// of the recurrent gradient dh_rec_t[b] (the gradient flowing into h_t from the next processed
// step, before clipping; with projection the projected h) into record[b] = {sum of squares,
// clipped share, counted}: the clipped share is the fraction of the row's elements that the
// value clip changes, or 1 / 0 for whether the norm clip rescales the row; counted is 1 when
// the row has a recurrent gradient at t (incoming kind "recurrent"; the row's last step, a
// truncation point and a row that does not exist at t record {0, 0, 0}). The glue sums the
// records of each step over rows in a fixed order (deterministic): the norm over batch and
// hidden units is sqrt(sum of squares), the clip fraction sum(clipped share) / sum(counted)
// (0 when no row counts). The gradient into h0 / c0 is not a dh_rec_t and is not recorded.
//
// The structs below describe one time step t; the kernels work out s, first/last and the cut.
#pragma once

#include <cstdint>

namespace fusedrnn {

enum class ClipMode : int { None = 0, Value = 1, Norm = 2 };

// Options of the backward pass that act on the recurrent gradient (docs/design.md §3).
template <typename T>
struct GradOptions {
  ClipMode clip_mode;  // None, Value (clamp to [-clip, clip]) or Norm (per-row L2 norm <= clip)
  T clip;              // > 0 when clip_mode != None
  int64_t truncate;    // 0: off; k > 0: the recurrent gradient into processed step s (from
                       // step s + 1) is zero when (s + 1) % k == 0, i.e. the state entering
                       // step s' = s + 1 is a constant when s' % k == 0 (docs/design.md §3)
};

// The same options in another scalar type (the ops check them in double).
template <typename To, typename From>
inline GradOptions<To> options_as(const GradOptions<From>& o) {
  return GradOptions<To>{o.clip_mode, static_cast<To>(o.clip), o.truncate};
}

// Which rows exist at time t and where each starts; see Note [Per-row step bookkeeping].
struct StepInfo {
  int64_t T;               // number of time steps
  int64_t t;               // the time step this call handles
  bool reverse;            // processing order T-1..0
  const int64_t* lengths;  // [B] or nullptr (every row has length T)
};

// The step structs below are the one family both backends fill: T is the storage type
// of the tensors the caller sees, A the type the kernels compute in and keep their own
// buffers in (the same on the CPU; csrc/cuda/cuda_params.h, Note [Storage and arithmetic
// types], for the half types on CUDA). M is the number of rows of the step: B padded,
// batch_sizes[t] packed; "[B, ...]" buffers are whole-batch running state.

// One LSTM forward step, pointwise part (after hg = h_{t-1} W_hh^T).
template <typename T, typename A = T>
struct LstmFwdStep {
  int64_t M, H;
  StepInfo step;
  const A* xg;    // [M, 4H] x_t W_ih^T, gates i, f, g, o (the CPU folds b_ih + b_hh in here)
  const A* hg;    // [M, 4H] h_{t-1} W_hh^T
  const A* bias;  // [4H]    b_ih + b_hh to add in the kernel (CUDA), or nullptr
  T* act;         // [M, 4H] out: activations i, f, g, o, only when saving (c_raw != nullptr);
                  //         may alias xg when T == A
  A* c;           // [B, H]  running cell state: in c_{t-1}, out c_t (unchanged for absent rows)
  T* c_raw;       // [M, H]  out: cell state before the cell clip (saved for backward), or
                  //         nullptr: nothing is saved (no-grad call)
  T* h_out;       // [M, H]  out: o * tanh(c_t); zero for absent rows
  T* h_state;     // [B, H]  running hidden state (no projection), or nullptr (projection: glue)
  A cell_clip;    // used when has_cell_clip
  bool has_cell_clip;
};

// One LSTM backward step, pointwise part: gate gradients and the cell-state recurrence.
template <typename T, typename A = T>
struct LstmBwdStep {
  int64_t M, H, R;
  StepInfo step;
  GradOptions<A> opt;
  const T* act;         // [M, 4H] saved activations i, f, g, o at t
  const T* c_raw;       // [M, H]  saved pre-clip cell state at t
  const T* h;           // [M, H]  saved h_t = o * tanh(c_t) (before any projection) at t: the
                        //         CPU kernels' tanh(c_t) (Note [tanh(c_t) from the saved h_t],
                        //         kernels_impl.h); the CUDA kernels recompute it
  const T* c_raw_prev;  // [., H]  saved pre-clip cell state at the previous processed time, or nullptr
  const T* c0;          // [B, H]  initial cell state, or nullptr (zeros)
  const T* dy;          // [M, R]  gradient of the output at t (no projection)
  const T* dh_n;        // [B, R]  gradient of h_n (no projection)
  const A* dh_gemm;     // [B, R]  no projection: dgates_{t+1} W_hh (Note [Recurrent gradient buffers])
  A* dh_carry;          // [B, R]  no projection: in: carried part; out: zero for rows that process
                        //         t, dh_gemm + dh_carry for the others
  const A* dh_direct;   // [M, H]  projection: full gradient of o * tanh(c_t) (dy, clip, cut applied); else nullptr
  const T* dc_n;        // [B, H]  gradient of c_n
  A* dc_rec;            // [B, H]  in: recurrent gradient into c_t (unclipped); out: gradient into c_{t-1}
  T* dgates;            // [M, 4H] out: gradients of the gate pre-activations (zero for absent rows)
  A* record;            // [M, 3]  out (no projection): Note [Recording recurrent gradient norms], or nullptr
  A cell_clip;
  bool has_cell_clip;
};

// Projection only: the total gradient of the projected state r_t = h_t W_hr^T at step t
// (dy + clipped / cut recurrent gradient, or dh_n at the row's last step).
template <typename T, typename A = T>
struct ProjBwdStep {
  int64_t M, R;
  StepInfo step;
  GradOptions<A> opt;
  const T* dy;       // [M, R]
  const T* dh_n;     // [B, R]
  const A* dh_gemm;  // [B, R] dgates_{t+1} W_hh
  A* dh_carry;       // [B, R] in: carried part; out: zero for rows that process t, sum for others
  T* dr;             // [M, R] out (zero for absent rows)
  A* record;         // [M, 3] out: Note [Recording recurrent gradient norms], or nullptr
};

// One GRU forward step, pointwise part (after hg = h_{t-1} W_hh^T).
template <typename T, typename A = T>
struct GruFwdStep {
  int64_t M, H;
  StepInfo step;
  const A* xg;      // [M, 3H] x_t W_ih^T, gates r, z, n (the CPU folds b_ih + (b_hr, b_hz, 0) in)
  const A* hg;      // [M, 3H] h_{t-1} W_hh^T (no bias)
  const A* bias_x;  // [3H]    b_ih + (b_hr, b_hz, 0) to add in the kernel (CUDA), or nullptr
  const A* b_hn;    // [H]     the n part of b_hh, or nullptr
  T* saved;         // [M, 4H] out: r, z, n, h W_hn^T + b_hn for backward, or nullptr
  T* h_out;         // [M, H]  out: h_t; zero for absent rows
  T* h_state;       // [B, H]  running hidden state: in h_{t-1}, out h_t
};

// One GRU backward step, pointwise part.
template <typename T, typename A = T>
struct GruBwdStep {
  int64_t M, H;
  StepInfo step;
  GradOptions<A> opt;
  const T* saved;    // [M, 4H] r, z, n, hn at t
  const T* h_prev;   // [., H]  output at the previous processed time, or nullptr
  const T* h0;       // [B, H]  initial state, or nullptr (zeros)
  const T* dy;       // [M, H]
  const T* dh_n;     // [B, H]
  const A* dh_gemm;  // [B, H]  dhg_{t+1} W_hh
  A* dh_carry;       // [B, H]  in: direct part dh_{t+1} * z_{t+1} (or carried); out: dh_t * z_t for
                     //         rows that process t, dh_gemm + dh_carry for the others
  T* dxg;            // [M, 3H] out: gradients of x W_ih^T + b_ih
  T* dhg;            // [M, 3H] out: gradients of h W_hh^T + b_hh
  A* record;         // [M, 3]  out: Note [Recording recurrent gradient norms], or nullptr
};

// Function table of the pointwise kernels for one scalar type and one CPU capability.
template <typename T>
struct CpuKernelTable {
  void (*lstm_fwd)(const LstmFwdStep<T>&, int64_t b_begin, int64_t b_end);
  void (*lstm_bwd)(const LstmBwdStep<T>&, int64_t b_begin, int64_t b_end);
  void (*proj_bwd)(const ProjBwdStep<T>&, int64_t b_begin, int64_t b_end);
  void (*gru_fwd)(const GruFwdStep<T>&, int64_t b_begin, int64_t b_end);
  void (*gru_bwd)(const GruBwdStep<T>&, int64_t b_begin, int64_t b_end);
  // Clip rows b_begin..b_end-1 of x ([B, N], contiguous) in place with the options' clip.
  void (*clip_rows)(T* x, int64_t N, GradOptions<T> opt, int64_t b_begin, int64_t b_end);
};

}  // namespace fusedrnn
