// Layer norm over the last axis, alone and after a residual add (add_layernorm:
// the sum kept in the output's row). The forward saves mean and rstd per row;
// the backward reduces dweight/dbias in per-thread partial rows, then sums
// them, so threads never write the same element.
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

constexpr int64_t kChunk = 16384;  // elements per task of the backward's elementwise passes

namespace {

// One row: y = (x - mean) * rstd * weight + bias, mean and rstd stored; y may be x.
inline void normalize_row(float* yr, const float* xr, const float* weight, const float* bias, int64_t cols,
                          float eps, float* mean, float* rstd) {
  const float mu = row::sum(xr, cols) / static_cast<float>(cols);
  // Second pass over the (cached) row: variance without cancellation.
  const vfloat vmu = simd::splat(mu);
  vfloat acc{};
  int64_t i = 0;
  for (; i + kWidth <= cols; i += kWidth) {
    const vfloat d = simd::load(xr + i) - vmu;
    acc += d * d;
  }
  float ss = simd::hsum(acc);
  for (; i < cols; ++i) ss += (xr[i] - mu) * (xr[i] - mu);
  const float rs = 1.0f / std::sqrt(ss / static_cast<float>(cols) + eps);
  for (i = 0; i < cols; ++i) yr[i] = (xr[i] - mu) * rs * weight[i] + bias[i];
  *mean = mu;
  *rstd = rs;
}

}  // namespace

void layernorm_forward(float* y, float* mean, float* rstd, const float* x, const float* weight,
                       const float* bias, int64_t rows, int64_t cols, float eps) {
  parallel_for(rows_worth_threads(rows, cols), rows, [&](int64_t r) {
    normalize_row(y + r * cols, x + r * cols, weight, bias, cols, eps, mean + r, rstd + r);
  });
}

// The sum goes into y's row, which stays in cache for the norm's passes: the
// same values, in the same order, as the add kernel and then layernorm_forward.
void add_layernorm_forward(float* y, float* mean, float* rstd, const float* a, const float* b,
                           const float* weight, const float* bias, int64_t rows, int64_t cols, float eps) {
  parallel_for(rows_worth_threads(rows, cols), rows, [&](int64_t r) {
    const float* ar = a + r * cols;
    const float* br = b + r * cols;
    float* yr = y + r * cols;
    int64_t i = 0;
    for (; i + kWidth <= cols; i += kWidth) simd::store(yr + i, simd::load(ar + i) + simd::load(br + i));
    for (; i < cols; ++i) yr[i] = ar[i] + br[i];
    normalize_row(yr, yr, weight, bias, cols, eps, mean + r, rstd + r);
  });
}

void layernorm_backward(float* dx, float* dweight, float* dbias, const float* dy, const float* x,
                        const float* weight, const float* mean, const float* rstd, int64_t rows,
                        int64_t cols) {
  const bool parallel = rows_worth_threads(rows, cols);
  const int threads = parallel ? thread_count() : 1;
  // Per-thread partial sums: [thread][0..cols) for dweight, [cols..2 cols) for dbias.
  ScratchFrame scratch;
  float* partial = scratch.floats(static_cast<size_t>(threads) * 2 * cols);
  std::fill(partial, partial + static_cast<size_t>(threads) * 2 * cols, 0.0f);

  parallel_region(parallel, threads, [&] {
    float* pw = partial + static_cast<size_t>(thread_index()) * 2 * cols;
    float* pb = pw + cols;
    PYENGINE_OMP(omp for schedule(static))
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * cols;
      const float* dyr = dy + r * cols;
      const float mu = mean[r], rs = rstd[r];
      // g = dy * weight; the row needs sum(g) and sum(g * xhat).
      const vfloat vmu = simd::splat(mu), vrs = simd::splat(rs);
      vfloat acc_g{}, acc_gx{};
      int64_t i = 0;
      for (; i + kWidth <= cols; i += kWidth) {
        const vfloat xhat = (simd::load(xr + i) - vmu) * vrs;
        const vfloat d = simd::load(dyr + i);
        const vfloat g = d * simd::load(weight + i);
        acc_g += g;
        acc_gx += g * xhat;
        simd::store(pw + i, simd::load(pw + i) + d * xhat);
        simd::store(pb + i, simd::load(pb + i) + d);
      }
      float sum_g = simd::hsum(acc_g), sum_g_xhat = simd::hsum(acc_gx);
      for (; i < cols; ++i) {
        const float xhat = (xr[i] - mu) * rs;
        const float g = dyr[i] * weight[i];
        sum_g += g;
        sum_g_xhat += g * xhat;
        pw[i] += dyr[i] * xhat;
        pb[i] += dyr[i];
      }
      if (!dx) continue;
      const float mean_g = sum_g / static_cast<float>(cols);
      const float mean_g_xhat = sum_g_xhat / static_cast<float>(cols);
      float* dxr = dx + r * cols;
      for (i = 0; i < cols; ++i) {
        const float xhat = (xr[i] - mu) * rs;
        dxr[i] += rs * (dyr[i] * weight[i] - mean_g - xhat * mean_g_xhat);
      }
    }
    PYENGINE_OMP(omp for schedule(static))
    for (int64_t i = 0; i < cols; ++i) {
      float w = 0.0f, b = 0.0f;
      for (int t = 0; t < threads; ++t) {
        w += partial[static_cast<size_t>(t) * 2 * cols + i];
        b += partial[static_cast<size_t>(t) * 2 * cols + cols + i];
      }
      if (dweight) dweight[i] += w;
      if (dbias) dbias[i] += b;
    }
  });
}

// x = a + b again, then layernorm_backward; its dx goes to da and db (into
// one of them directly when the other is not asked for).
void add_layernorm_backward(float* da, float* db, float* dweight, float* dbias, const float* dy,
                            const float* a, const float* b, const float* weight, const float* mean,
                            const float* rstd, int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  const bool parallel = rows_worth_threads(rows, cols);
  ScratchFrame scratch;
  float* x = scratch.floats(static_cast<size_t>(n));
  float* dx = da && db ? scratch.floats(static_cast<size_t>(n)) : (da ? da : db);
  parallel_chunks(parallel, n, kChunk, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) x[i] = a[i] + b[i];
    if (da && db) std::fill(dx + begin, dx + end, 0.0f);
  });
  layernorm_backward(dx, dweight, dbias, dy, x, weight, mean, rstd, rows, cols);
  if (!(da && db)) return;
  parallel_chunks(parallel, n, kChunk, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      da[i] += dx[i];
      db[i] += dx[i];
    }
  });
}

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
