// The body every capability_<name>.cpp compiles under its own compiler target (Note [CPU
// capability dispatch] in kernels_impl.h): the three kernel headers and fill_capability,
// which hands their functions to dispatch.cpp. The including file defines
// FUSEDRNN_CPU_CAPABILITY, FUSEDRNN_ENGINE_VEC (the capability's vector type) and
// FUSEDRNN_ENGINE_REGS, and includes kernel_tables.h first; this file includes nothing else.
#ifndef FUSEDRNN_CPU_CAPABILITY
#error "capability_impl.h is included by the capability_<name>.cpp files only"
#endif

#include "kernels_impl.h"
#include "engine_fwd_impl.h"
#include "bwd_engine_impl.h"

namespace fusedrnn {
namespace cpu {
namespace FUSEDRNN_CPU_CAPABILITY {
void fill_capability(CapabilityKernels* table) {
  Entry<FUSEDRNN_ENGINE_VEC>::fill(&table->pointwise);
  fwd_engine::fill(&table->engine_fwd);
  bwd::Entry<FUSEDRNN_ENGINE_VEC>::fill(&table->engine_bwd);
}
}  // namespace FUSEDRNN_CPU_CAPABILITY
}  // namespace cpu
}  // namespace fusedrnn
