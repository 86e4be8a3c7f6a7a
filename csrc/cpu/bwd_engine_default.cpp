// Portable build of the CPU backward engine's kernels (baseline compiler flags); see
// Note [CPU capability dispatch] in kernels_impl.h and Note [CPU backward engine] in
// bwd_engine.cpp.
#include "bwd_engine_params.h"

#define FUSEDRNN_CPU_CAPABILITY base
#include "bwd_engine_impl.h"

namespace fusedrnn {
namespace cpu {
namespace base {
void fill_bwd_engine(BwdEngineTable<float>* table) { bwd::Entry<bwd::ScalarVec<float>>::fill(table); }
}  // namespace base
}  // namespace cpu
}  // namespace fusedrnn
