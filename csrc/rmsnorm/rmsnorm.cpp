// RMS norm over the last axis (T5LayerNorm, torch.nn.RMSNorm): no mean, no
// bias. The forward saves rstd per row; the backward reduces dweight in
// per-thread partial rows, then sums them, so threads never write the same
// element.
#include <algorithm>
#include <cmath>

#include "core/kernel_list.inc"
#include "core/parallel.h"
#include "core/row_ops.h"
#include "core/scratch.h"
#include "core/simd.h"

namespace pyengine {
namespace PYENGINE_KERNEL_NS {

using simd::kWidth;
using simd::vfloat;

void rmsnorm_forward(float* y, float* rstd, const float* x, const float* weight, int64_t rows, int64_t cols,
                     float eps) {
  parallel_for(rows_worth_threads(rows, cols), rows, [&](int64_t r) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    const float rs = 1.0f / std::sqrt(row::dot(xr, xr, cols) / static_cast<float>(cols) + eps);
    const vfloat vrs = simd::splat(rs);
    int64_t i = 0;
    for (; i + kWidth <= cols; i += kWidth)
      simd::store(yr + i, simd::load(xr + i) * vrs * simd::load(weight + i));
    for (; i < cols; ++i) yr[i] = xr[i] * rs * weight[i];
    rstd[r] = rs;
  });
}

// dx = rstd * (g - xhat * mean(g * xhat)) with g = dy * weight, xhat = x * rstd;
// dweight = sum over rows of dy * xhat.
void rmsnorm_backward(float* dx, float* dweight, const float* dy, const float* x, const float* weight,
                      const float* rstd, int64_t rows, int64_t cols) {
  const bool parallel = rows_worth_threads(rows, cols);
  const int threads = parallel ? thread_count() : 1;
  ScratchFrame scratch;
  float* partial = dweight ? scratch.floats(static_cast<size_t>(threads) * cols) : nullptr;
  if (partial) std::fill(partial, partial + static_cast<size_t>(threads) * cols, 0.0f);

  parallel_region(parallel, threads, [&] {
    float* pw = partial ? partial + static_cast<size_t>(thread_index()) * cols : nullptr;
    PYENGINE_OMP(omp for schedule(static))
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * cols;
      const float* dyr = dy + r * cols;
      const float rs = rstd[r];
      const vfloat vrs = simd::splat(rs);
      if (pw) {
        int64_t i = 0;
        for (; i + kWidth <= cols; i += kWidth)
          simd::store(pw + i, simd::load(pw + i) + simd::load(dyr + i) * simd::load(xr + i) * vrs);
        for (; i < cols; ++i) pw[i] += dyr[i] * xr[i] * rs;
      }
      if (!dx) continue;
      vfloat acc{};
      int64_t i = 0;
      for (; i + kWidth <= cols; i += kWidth)
        acc += simd::load(dyr + i) * simd::load(weight + i) * simd::load(xr + i);
      float sum_gx = simd::hsum(acc);
      for (; i < cols; ++i) sum_gx += dyr[i] * weight[i] * xr[i];
      // mean(g * xhat) * rstd = sum(g * x) * rstd^2 / cols.
      const float coef = sum_gx * rs * rs / static_cast<float>(cols);
      const vfloat vcoef = simd::splat(coef);
      float* dxr = dx + r * cols;
      for (i = 0; i + kWidth <= cols; i += kWidth) {
        const vfloat g = simd::load(dyr + i) * simd::load(weight + i);
        simd::store(dxr + i, simd::load(dxr + i) + vrs * (g - simd::load(xr + i) * vcoef));
      }
      for (; i < cols; ++i) dxr[i] += rs * (dyr[i] * weight[i] - xr[i] * coef);
    }
    if (!pw) return;
    PYENGINE_OMP(omp for schedule(static))
    for (int64_t i = 0; i < cols; ++i) {
      float w = 0.0f;
      for (int t = 0; t < threads; ++t) w += partial[static_cast<size_t>(t) * cols + i];
      dweight[i] += w;
    }
  });
}

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
