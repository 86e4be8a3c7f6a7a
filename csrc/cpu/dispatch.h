// Run-time choice of the CPU pointwise kernels; see Note [CPU capability dispatch] in
// kernels_impl.h.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernel_tables.h"

namespace fusedrnn {
namespace cpu {

// The float32 kernels of the capability in use (the widest this CPU supports unless narrowed,
// see capability()); float64 has a single portable implementation.
const CapabilityKernels& capability_kernels();
inline const CpuKernelTable<float>& float_kernels() { return capability_kernels().pointwise; }
const CpuKernelTable<double>& double_kernels();

template <typename T>
const CpuKernelTable<T>& kernels();
template <>
inline const CpuKernelTable<float>& kernels<float>() { return float_kernels(); }
template <>
inline const CpuKernelTable<double>& kernels<double>() { return double_kernels(); }

// "avx512", "avx2" or "default": the capability in use.
std::string capability();
// Use `name` if this CPU supports it ("default" always works). Returns the one in use.
std::string set_capability(const std::string& name);

// Whether this is an Intel CPU: some all-steps products pick their library by vendor, where
// MKL's own Intel path or oneDNN's per-call costs were measured to differ (Note [Weight
// gradients on the engine kernel], Note [Input gradients on the engine kernel], Note
// [oneDNN for the step GEMMs]).
bool intel_cpu();

// Which CPU time loop runs a layer (Note [CPU time-loop engine]): Auto picks by shape, Engine
// forces the persistent engine wherever it supports the call, Steps forces the per-step GEMM
// loop. FUSEDRNN_CPU_ENGINE=auto|engine|steps in the environment sets the start value.
enum class EngineMode : int { Auto = 0, Engine = 1, Steps = 2 };
EngineMode engine_mode();
std::string cpu_engine();
// Use "auto", "engine" or "steps"; returns the one in use. Not for use while ops run.
std::string set_cpu_engine(const std::string& name);

// How many layer calls each engine loop has run in this process (for tests that must know
// the engine, not the per-step loop, produced a result): engine code calls
// count_engine_run(kind) once per layer call it handles.
// The *Rows kinds count the calls whose threads split the rows (Note [Engine row split] in
// engine_fwd.cpp), also counted under the plain kind.
enum class EngineRun : int {
  LstmForward = 0, LstmBackward = 1, GruForward = 2, GruBackward = 3, LstmForwardRows = 4,
  GruForwardRows = 5, LstmBackwardRows = 6, GruBackwardRows = 7,
  ChunkedProjection = 8,  // a per-step loop's input projection computed in chunks (not an
                          // engine run: Note [Chunked input projection] in cpu_common.h)
  LstmForwardInput = 9,   // forward engine runs that computed the x part themselves
  GruForwardInput = 10,   // (Note [Engine input part] in engine_fwd.cpp)
  WeightGrad = 11,        // weight gradients computed on the engine's kernels (micro-kernel
                          // or ThinOuter; one per product: Note [Weight gradients on the
                          // engine kernel])
  InputGrad = 12,         // input gradients dgates W_ih computed on the engine's micro-kernel
                          // (Note [Input gradients on the engine kernel])
  LstmForwardChunkedInput = 13,  // forward engine runs that computed the x part in chunks
  GruForwardChunkedInput = 14    // of steps (Note [Chunked input part], engine_fwd.cpp)
};
void count_engine_run(EngineRun kind);
// {lstm_forward, lstm_backward, gru_forward, gru_backward, lstm_forward_rows,
//  gru_forward_rows, lstm_backward_rows, gru_backward_rows, chunked_projection,
//  lstm_forward_input, gru_forward_input, weight_grad, input_grad,
//  lstm_forward_chunked_input, gru_forward_chunked_input}
std::vector<int64_t> engine_runs();

// How the engines' threads share a call, forward and backward (Note [Engine row split] in
// engine_fwd.cpp): Auto by the rule there, measured where it is in doubt (Note [Measured row
// split] in row_split.cpp), Rule by the rule alone, Units always by hidden units, Rows by
// batch rows wherever there are two threads (for tests: also where the rule would not, e.g.
// packed input). Not for use while ops run.
enum class EngineSplit : int { Auto = 0, Units = 1, Rows = 2, Rule = 3 };
EngineSplit engine_split();
std::string engine_split_name();
std::string set_engine_split(const std::string& name);

}  // namespace cpu
}  // namespace fusedrnn
