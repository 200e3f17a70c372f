// Row-wise softmax / log-softmax with the SIMD exp; one row stays in L1/L2
// across its three passes (max, exp-and-sum, scale).
#include <algorithm>
#include <cmath>
#include <limits>

#include "core/kernel_list.inc"
#include "core/parallel.h"
#include "core/simd.h"

namespace pyengine {
namespace PYENGINE_KERNEL_NS {
namespace {

using simd::kWidth;
using simd::vfloat;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

float row_max(const float* x, int64_t n) {
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

// y = exp(x - shift); returns the sum of y. y may be nullptr (sum only).
float exp_shifted(float* y, const float* x, int64_t n, float shift) {
  const vfloat vs = simd::splat(shift);
  vfloat acc0{}, acc1{};
  int64_t i = 0;
  for (; i + 2 * kWidth <= n; i += 2 * kWidth) {
    const vfloat e0 = simd::exp(simd::load(x + i) - vs);
    const vfloat e1 = simd::exp(simd::load(x + i + kWidth) - vs);
    if (y) {
      simd::store(y + i, e0);
      simd::store(y + i + kWidth, e1);
    }
    acc0 += e0;
    acc1 += e1;
  }
  for (; i < n; i += kWidth) {
    const int64_t count = std::min<int64_t>(kWidth, n - i);
    const vfloat e = simd::exp(simd::load_partial(x + i, count, kNegInf) - vs);
    if (y) simd::store_partial(y + i, e, count);
    acc0 += e;
  }
  return simd::hsum(acc0 + acc1);
}

float dot(const float* a, const float* b, int64_t n) {
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

float sum(const float* a, int64_t n) {
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

bool worth_threads(int64_t rows, int64_t cols) {
  return rows > 1 && rows * cols >= PYENGINE_PARALLEL_MIN_WORK;
}

}  // namespace

void softmax_forward(float* y, const float* x, int64_t rows, int64_t cols) {
  PYENGINE_OMP(omp parallel for if (worth_threads(rows, cols)) schedule(static))
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    const float total = exp_shifted(yr, xr, cols, row_max(xr, cols));
    const float inv = 1.0f / total;
    for (int64_t i = 0; i < cols; ++i) yr[i] *= inv;
  }
}

void softmax_backward(float* dx, const float* dy, const float* y, int64_t rows, int64_t cols) {
  PYENGINE_OMP(omp parallel for if (worth_threads(rows, cols)) schedule(static))
  for (int64_t r = 0; r < rows; ++r) {
    const float* dyr = dy + r * cols;
    const float* yr = y + r * cols;
    float* dxr = dx + r * cols;
    const float inner = dot(dyr, yr, cols);
    for (int64_t i = 0; i < cols; ++i) dxr[i] += yr[i] * (dyr[i] - inner);
  }
}

void log_softmax_forward(float* y, const float* x, int64_t rows, int64_t cols) {
  PYENGINE_OMP(omp parallel for if (worth_threads(rows, cols)) schedule(static))
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    const float m = row_max(xr, cols);
    const float shift = m + std::log(exp_shifted(nullptr, xr, cols, m));
    for (int64_t i = 0; i < cols; ++i) yr[i] = xr[i] - shift;
  }
}

void log_softmax_backward(float* dx, const float* dy, const float* y, int64_t rows,
                          int64_t cols) {
  PYENGINE_OMP(omp parallel for if (worth_threads(rows, cols)) schedule(static))
  for (int64_t r = 0; r < rows; ++r) {
    const float* dyr = dy + r * cols;
    const float* yr = y + r * cols;
    float* dxr = dx + r * cols;
    const vfloat total = simd::splat(sum(dyr, cols));
    int64_t i = 0;
    for (; i + kWidth <= cols; i += kWidth)
      simd::store(dxr + i, simd::load(dxr + i) + simd::load(dyr + i) -
                               simd::exp(simd::load(yr + i)) * total);
    for (; i < cols; ++i) dxr[i] += dyr[i] - std::exp(yr[i]) * total[0];
  }
}

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
