// Winograd F(4x4, 3x3) convolution, for the 3x3 stride-1 layers that
// dominate a ResNet (conv2d.cpp chooses it; winograd.cpp says how it works).
#pragma once
#include <cstdint>

#include "conv/conv_shape.h"
#include "core/ops.h"

namespace pyengine {
namespace PYENGINE_KERNEL_NS {

// A 3x3 stride-1 correlation of `in` (N, Ci, IH, IW), zero padded by (ph, pw),
// into `out` (N, Ko, OH, OW). The weight is w (Ko, Ci, 3, 3) for a forward;
// `input_grad` reads it as the input gradient needs it: w (Ci, Ko, 3, 3),
// transposed and flipped, w'[ko, ci, r, s] = w[ci, ko, 2 - r, 2 - s].
struct WinogradProblem {
  int64_t N, Ci, IH, IW;
  int64_t Ko, OH, OW;
  int64_t ph, pw;
  bool input_grad;
};

// Whether conv2d takes the Winograd path for this geometry, forward and
// input gradient alike (see the measurements in winograd.cpp).
bool winograd_fits(const ConvShape& g);

// out = (accumulate ? out : 0) + act(the correlation + bias[ko]) (bias may
// be null; act is none when accumulating).
void winograd_conv(float* out,          // (N, Ko, OH, OW)
                   const float* in,     // (N, Ci, IH, IW)
                   const float* w,      // (Ko, Ci, 3, 3), or (Ci, Ko, 3, 3) for input_grad
                   const float* bias,   // (Ko,) or nullptr
                   Activation act, const WinogradProblem& p, bool accumulate);

// dw (Ko, Ci, 3, 3) += the weight gradient of the forward problem p (not
// input_grad), from its input x and output gradient dy.
void winograd_weight_grad(float* dw,         // (Ko, Ci, 3, 3)
                          const float* x,    // (N, Ci, IH, IW)
                          const float* dy,   // (N, Ko, OH, OW)
                          const WinogradProblem& p);

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
