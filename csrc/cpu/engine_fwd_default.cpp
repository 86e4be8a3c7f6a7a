// Portable build of the forward engine's micro-kernels (baseline compiler flags, one float
// per lane); see Note [CPU capability dispatch] (kernels_impl.h) and
// Note [CPU time-loop engine] (engine_fwd.cpp).
#include "engine_fwd.h"

#define FUSEDRNN_CPU_CAPABILITY base
#define FUSEDRNN_ENGINE_VEC ScalarVec<float>
#define FUSEDRNN_ENGINE_REGS 16
#include "engine_fwd_impl.h"

namespace fusedrnn {
namespace cpu {
namespace base {
void fill_engine_fwd(EngineFwdKernels* table) { fwd_engine::fill(table); }
}  // namespace base
}  // namespace cpu
}  // namespace fusedrnn
