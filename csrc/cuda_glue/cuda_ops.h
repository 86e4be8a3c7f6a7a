// CUDA implementations of the layer ops: the same functions, arguments, outputs and saved
// tensor layouts as the CPU ones (csrc/cpu/cpu_ops.h), so fusedrnn/ops.py is device-agnostic.
// Arguments are already checked (csrc/rnn_ops.cpp); see csrc/rnn_ops.h for their meaning and
// LayerSizes in checks.h for the layouts. Only compiled with FUSEDRNN_WITH_CUDA.
#pragma once

#include <optional>
#include <vector>

#include <ATen/ATen.h>

#include "../checks.h"
#include "../rnn_params.h"

namespace fusedrnn {
namespace cuda {

#include "../layer_ops.inc"

}  // namespace cuda
}  // namespace fusedrnn
