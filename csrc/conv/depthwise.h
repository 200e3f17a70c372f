// Convolution with one input channel a group (depthwise, MobileNet's 3x3
// stride 1 and 2, or a one-channel image): register-blocked direct loops
// (depthwise.cpp says how); conv2d.cpp routes every Cg = 1 layer here.
#pragma once
#include <cstdint>

#include "conv/conv_shape.h"
#include "core/ops.h"

namespace pyengine {
namespace PYENGINE_KERNEL_NS {

// y = act(bias[k] + the correlation), over every (n, k) plane.
void depthwise_forward(float* y,           // (N, K, OH, OW)
                       const float* x,     // (N, C, H, W), C = G
                       const float* w,     // (K, 1, R, S)
                       const float* bias,  // (K,) or nullptr
                       Activation act, const ConvShape& g);

// dx += the input gradient, dw += the weight gradient (either may be null).
void depthwise_backward(float* dx,         // (N, C, H, W) or nullptr
                        float* dw,         // (K, 1, R, S) or nullptr
                        const float* dy,   // (N, K, OH, OW)
                        const float* x,    // (N, C, H, W)
                        const float* w,    // (K, 1, R, S)
                        const ConvShape& g);

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
