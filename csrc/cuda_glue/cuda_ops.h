// CUDA implementations of the layer ops (csrc/layer_ops.h): the same functions, arguments,
// outputs and saved-tensor layouts as the CPU ones, so fusedrnn/ops.py is device-agnostic.
// Only compiled with FUSEDRNN_WITH_CUDA.
#pragma once

#include "../layer_ops.h"

namespace fusedrnn {
namespace cuda {

LstmForwardImpl lstm_forward;
LstmBackwardImpl lstm_backward;
GruForwardImpl gru_forward;
GruBackwardImpl gru_backward;

}  // namespace cuda
}  // namespace fusedrnn
