// Row-wise softmax / log-softmax with the SIMD exp; one row stays in L1/L2
// across its three passes (max, exp-and-sum, scale).
#include <algorithm>
#include <cmath>

#include "core/kernel_list.inc"
#include "core/parallel.h"
#include "core/row_ops.h"
#include "core/simd.h"

namespace pyengine {
namespace PYENGINE_KERNEL_NS {

using simd::kWidth;
using simd::vfloat;

void softmax_forward(float* y, const float* x, int64_t rows, int64_t cols) {
  parallel_for(rows_worth_threads(rows, cols), rows, [&](int64_t r) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    const float total = row::exp_shifted(yr, xr, cols, row::max(xr, cols));
    const float inv = 1.0f / total;
    for (int64_t i = 0; i < cols; ++i) yr[i] *= inv;
  });
}

void softmax_backward(float* dx, const float* dy, const float* y, int64_t rows, int64_t cols) {
  parallel_for(rows_worth_threads(rows, cols), rows, [&](int64_t r) {
    const float* dyr = dy + r * cols;
    const float* yr = y + r * cols;
    float* dxr = dx + r * cols;
    const vfloat inner = simd::splat(row::dot(dyr, yr, cols));
    int64_t i = 0;
    for (; i + kWidth <= cols; i += kWidth)
      simd::store(dxr + i, simd::load(dxr + i) +
                               simd::load(yr + i) * (simd::load(dyr + i) - inner));
    for (; i < cols; ++i) dxr[i] += yr[i] * (dyr[i] - inner[0]);
  });
}

void log_softmax_forward(float* y, const float* x, int64_t rows, int64_t cols) {
  parallel_for(rows_worth_threads(rows, cols), rows, [&](int64_t r) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    const float m = row::max(xr, cols);
    const float log_total = std::log(row::exp_shifted(nullptr, xr, cols, m));
    // (x - m) first: exact for nearby values, so large logits keep their precision.
    for (int64_t i = 0; i < cols; ++i) yr[i] = (xr[i] - m) - log_total;
  });
}

void log_softmax_backward(float* dx, const float* dy, const float* y, int64_t rows,
                          int64_t cols) {
  parallel_for(rows_worth_threads(rows, cols), rows, [&](int64_t r) {
    const float* dyr = dy + r * cols;
    const float* yr = y + r * cols;
    float* dxr = dx + r * cols;
    const vfloat total = simd::splat(row::sum(dyr, cols));
    int64_t i = 0;
    for (; i + kWidth <= cols; i += kWidth)
      simd::store(dxr + i, simd::load(dxr + i) + simd::load(dyr + i) -
                               simd::exp_nonpositive(simd::load(yr + i)) * total);
    for (; i < cols; ++i) dxr[i] += dyr[i] - std::exp(yr[i]) * total[0];
  });
}

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
