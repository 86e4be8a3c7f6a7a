// CPU implementations of the layer ops (arguments already checked; see csrc/rnn_ops.h for
// the meaning of inputs and outputs, and LayerSizes in checks.h for the layouts).
#pragma once

#include <optional>
#include <vector>

#include <ATen/ATen.h>

#include "../checks.h"
#include "../rnn_params.h"

namespace fusedrnn {
namespace cpu {

#include "../layer_ops.inc"

}  // namespace cpu
}  // namespace fusedrnn
