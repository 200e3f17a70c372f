// The padding's products of a convolution's direct loops. conv2d is
// defined with zero padding (conv2d_ops.cpp): every output sums all its
// Cg * R * S taps, a tap outside the image reading 0. The im2col path
// multiplies those zeros like any input; the direct (depthwise) loops skip
// them, since w * 0 adds nothing while w is finite. These functions add what
// the skipped products add where they are not zero: w * 0 = NaN for an inf or
// NaN weight (forward), dy * 0 = NaN for an inf or NaN output gradient (the
// weight gradient). So every path puts its NaN where the definition does, as
// PyTorch's im2col does too.
#pragma once
#include <cstdint>

#include "conv/conv_shape.h"

namespace pyengine {
namespace PYENGINE_KERNEL_NS {

// y[n, k, oh, ow] += w[k, c, r, s] * 0 for every tap (c, r, s) of a non-finite
// weight whose input (oh, ow) reads the padding (finite weights add zeros: skipped).
void conv_padding_forward(float* y,         // (N, K, OH, OW)
                          const float* w,   // (K, Cg, R, S)
                          const ConvShape& g);

// dw[k, c, r, s] += the sum of dy[n, k, oh, ow] * 0 over the outputs whose
// tap (r, s) reads the padding, where that sum is NaN (a non-finite dy there).
void conv_padding_weight_grad(float* dw,         // (K, Cg, R, S)
                              const float* dy,   // (N, K, OH, OW)
                              const ConvShape& g);

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
