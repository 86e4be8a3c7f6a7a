// CPU implementations of the layer ops (csrc/layer_ops.h).
#pragma once

#include "../layer_ops.h"

namespace fusedrnn {
namespace cpu {

LstmForwardImpl lstm_forward;
LstmBackwardImpl lstm_backward;
GruForwardImpl gru_forward;
GruBackwardImpl gru_backward;

}  // namespace cpu
}  // namespace fusedrnn
