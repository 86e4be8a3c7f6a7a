// Portable build of the CPU pointwise kernels (baseline compiler flags): the float path for
// CPUs without AVX2 and the float64 path everywhere. See Note [CPU capability dispatch].
#include "../rnn_params.h"

#define FUSEDRNN_CPU_CAPABILITY base
#include "kernels_impl.h"

namespace fusedrnn {
namespace cpu {
namespace base {
void fill_float_kernels(CpuKernelTable<float>* table) { Entry<ScalarVec<float>>::fill(table); }
void fill_double_kernels(CpuKernelTable<double>* table) { Entry<ScalarVec<double>>::fill(table); }
}  // namespace base
}  // namespace cpu
}  // namespace fusedrnn
