// Every float32 kernel of one CPU capability in one table: the per-step pointwise kernels
// (kernels_impl.h), the forward engine's (engine_fwd_impl.h) and the backward engine's
// (bwd_engine_impl.h). capability_<name>.cpp fills one (fill_capability), dispatch.cpp hands
// out the table of the capability in use (Note [CPU capability dispatch] in kernels_impl.h).
// Included by those translation units under their wider compiler target, so like
// rnn_params.h it includes nothing but the plain parameter headers.
#pragma once

#include "../rnn_params.h"
#include "bwd_engine_params.h"
#include "engine_fwd.h"

namespace fusedrnn {
namespace cpu {

struct CapabilityKernels {
  CpuKernelTable<float> pointwise;
  EngineFwdKernels engine_fwd;
  BwdEngineTable<float> engine_bwd;
};

}  // namespace cpu
}  // namespace fusedrnn
