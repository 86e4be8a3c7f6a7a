// Portable build of the CPU kernels (baseline compiler flags): the float path for CPUs
// without AVX2 and the float64 path everywhere. The per-step pointwise kernels
// (kernels_impl.h), the forward engine's micro-kernels (engine_fwd_impl.h) and the backward
// engine's kernels (bwd_engine_impl.h) in one translation unit; see
// Note [CPU capability dispatch] in kernels_impl.h.
#include "kernel_tables.h"

#define FUSEDRNN_CPU_CAPABILITY base
#define FUSEDRNN_ENGINE_VEC ScalarVec<float>
#define FUSEDRNN_ENGINE_REGS 16
#include "capability_impl.h"

namespace fusedrnn {
namespace cpu {
namespace base {
void fill_double_kernels(CpuKernelTable<double>* table) { Entry<ScalarVec<double>>::fill(table); }
}  // namespace base
}  // namespace cpu
}  // namespace fusedrnn
