// Vectorized reductions over one contiguous row, shared by the row-wise
// kernels (softmax, cross-entropy, layer norm). Variant code only.
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>

#include "core/simd.h"

namespace pyengine {
namespace PYENGINE_KERNEL_NS {
namespace row {

using simd::kWidth;
using simd::vfloat;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline float max(const float* x, int64_t n) {
  vfloat m0 = simd::splat(kNegInf), m1 = m0;
  int64_t i = 0;
  for (; i + 2 * kWidth <= n; i += 2 * kWidth) {
    m0 = simd::vmax(m0, simd::load(x + i));
    m1 = simd::vmax(m1, simd::load(x + i + kWidth));
  }
  float m = simd::hmax(simd::vmax(m0, m1));
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

inline float sum(const float* a, int64_t n) {
  vfloat acc0{}, acc1{};
  int64_t i = 0;
  for (; i + 2 * kWidth <= n; i += 2 * kWidth) {
    acc0 += simd::load(a + i);
    acc1 += simd::load(a + i + kWidth);
  }
  float s = simd::hsum(acc0 + acc1);
  for (; i < n; ++i) s += a[i];
  return s;
}

inline float dot(const float* a, const float* b, int64_t n) {
  vfloat acc0{}, acc1{};
  int64_t i = 0;
  for (; i + 2 * kWidth <= n; i += 2 * kWidth) {
    acc0 += simd::load(a + i) * simd::load(b + i);
    acc1 += simd::load(a + i + kWidth) * simd::load(b + i + kWidth);
  }
  float s = simd::hsum(acc0 + acc1);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Returns sum(exp(x - shift)); also stores y = exp(x - shift) unless y is null.
// shift is the row's max, so x - shift <= 0 (or NaN).
inline float exp_shifted(float* y, const float* x, int64_t n, float shift) {
  const vfloat vs = simd::splat(shift);
  vfloat acc0{}, acc1{};
  int64_t i = 0;
  for (; i + 2 * kWidth <= n; i += 2 * kWidth) {
    const vfloat e0 = simd::exp_nonpositive(simd::load(x + i) - vs);
    const vfloat e1 = simd::exp_nonpositive(simd::load(x + i + kWidth) - vs);
    if (y) {
      simd::store(y + i, e0);
      simd::store(y + i + kWidth, e1);
    }
    acc0 += e0;
    acc1 += e1;
  }
  for (; i < n; i += kWidth) {  // tail: padded lanes are -inf, exp gives 0
    const int64_t count = std::min<int64_t>(kWidth, n - i);
    const vfloat e = simd::exp_nonpositive(simd::load_partial(x + i, count, kNegInf) - vs);
    if (y) simd::store_partial(y + i, e, count);
    acc0 += e;
  }
  return simd::hsum(acc0 + acc1);
}

}  // namespace row
}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
