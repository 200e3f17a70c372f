// The geometry of a 2-D convolution, shared by the reference and the variant
// kernels. It lives in the including file's kernel namespace, so no inline
// copy crosses variants at link time.
#pragma once
#include <cstdint>

#ifndef PYENGINE_KERNEL_NS
#error "conv_shape.h is for kernels; PYENGINE_KERNEL_NS must be defined"
#endif

namespace pyengine {
namespace PYENGINE_KERNEL_NS {

struct ConvShape {
  int64_t N, C, H, W, K, R, S;  // x (N, C, H, W), weight (K, C / G, R, S)
  int64_t sh, sw, ph, pw, dh, dw;  // stride, padding, dilation
  int64_t G;                       // groups
  int64_t OH, OW;                  // y (N, K, OH, OW)

  ConvShape(int64_t n, int64_t c, int64_t h, int64_t w, int64_t k, int64_t r, int64_t s,
            int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h,
            int64_t dilation_w, int64_t groups)
      : N(n), C(c), H(h), W(w), K(k), R(r), S(s), sh(stride_h), sw(stride_w), ph(pad_h),
        pw(pad_w), dh(dilation_h), dw(dilation_w), G(groups),
        OH((h + 2 * pad_h - dilation_h * (r - 1) - 1) / stride_h + 1),
        OW((w + 2 * pad_w - dilation_w * (s - 1) - 1) / stride_w + 1) {}

  int64_t P() const { return OH * OW; }       // output pixels of one image
  int64_t Cg() const { return C / G; }        // input channels of a group
  int64_t Kg() const { return K / G; }        // output channels of a group
  int64_t CRS() const { return Cg() * R * S; }  // taps of one output value

  // The input row (column) that output row oh (column ow) reads through tap
  // r (s); outside [0, H) (or [0, W)) it is padding.
  int64_t in_row(int64_t oh, int64_t r) const { return oh * sh - ph + r * dh; }
  int64_t in_col(int64_t ow, int64_t s) const { return ow * sw - pw + s * dw; }
};

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
