// The geometry of 2-D pooling windows, shared by the reference and the
// variant kernels (in the including file's kernel namespace, so no inline
// copy crosses variants at link time). Output sizes (ceil_mode included) are
// worked out by the declarations; the kernels get OH and OW.
#pragma once
#include <algorithm>
#include <cstdint>

#ifndef PYENGINE_KERNEL_NS
#error "pool_window.h is for kernels; PYENGINE_KERNEL_NS must be defined"
#endif

namespace pyengine {
namespace PYENGINE_KERNEL_NS {

// A half-open range [lo, hi) of input rows or columns.
struct Range {
  int64_t lo, hi;
  int64_t size() const { return hi - lo; }
};

// Max pooling's taps along one axis for output o: o*stride - pad + t*dilation
// for t in [0, kernel), those inside [0, in). Returns the first tap inside
// and one past the last (taps past the first are `dilation` apart).
inline Range max_taps(int64_t o, int64_t in, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
  int64_t start = o * stride - pad;
  const int64_t end = std::min(start + (kernel - 1) * dilation + 1, in);
  while (start < 0) start += dilation;
  return {start, std::max(start, end)};
}

// Average pooling's window along one axis, as PyTorch: [o*stride - pad, +
// kernel) cut at in + pad gives the padded size; cut at [0, in) the inputs.
struct AvgWindow {
  Range inside;
  int64_t padded;
};
inline AvgWindow avg_window(int64_t o, int64_t in, int64_t kernel, int64_t stride, int64_t pad) {
  const int64_t start = o * stride - pad, end = std::min(start + kernel, in + pad);
  return {{std::max<int64_t>(start, 0), std::min(end, in)}, end - start};
}

// Adaptive average pooling's window along one axis: [floor(o*in/out),
// ceil((o+1)*in/out)).
inline Range adaptive_window(int64_t o, int64_t in, int64_t out) {
  return {o * in / out, ((o + 1) * in + out - 1) / out};
}

// The divisor of an average-pooling window: divisor_override when > 0, else
// the padded window (count_include_pad) or the inputs it covers.
inline int64_t avg_divisor(const AvgWindow& h, const AvgWindow& w, bool count_include_pad,
                           int64_t divisor_override) {
  if (divisor_override > 0) return divisor_override;
  return count_include_pad ? h.padded * w.padded : h.inside.size() * w.inside.size();
}

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
