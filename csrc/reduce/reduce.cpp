// Sum (and, by scale, mean) over the middle axis of (outer, reduce, inner).
#include <algorithm>

#include "core/kernel_list.inc"
#include "core/parallel.h"
#include "core/simd.h"

namespace pyengine {
namespace PYENGINE_KERNEL_NS {
namespace {

constexpr int64_t kInnerChunk = 1024;

// Sum of a contiguous run, with kWidth * 4 independent partial sums.
float contiguous_sum(const float* x, int64_t n) {
  using simd::kWidth;
  simd::vfloat acc[4] = {};
  int64_t i = 0;
  for (; i + 4 * kWidth <= n; i += 4 * kWidth)
    for (int u = 0; u < 4; ++u) acc[u] += simd::load(x + i + u * kWidth);
  for (; i + kWidth <= n; i += kWidth) acc[0] += simd::load(x + i);
  float s = simd::hsum((acc[0] + acc[1]) + (acc[2] + acc[3]));
  for (; i < n; ++i) s += x[i];
  return s;
}

}  // namespace

void sum_forward(float* out, const float* in, int64_t outer, int64_t reduce, int64_t inner,
                 float scale) {
  const bool parallel = outer * reduce * inner >= PYENGINE_PARALLEL_MIN_WORK;
  (void)parallel;
  if (inner == 1) {
    PYENGINE_OMP(omp parallel for if (parallel) schedule(static) num_threads(thread_count()))
    for (int64_t o = 0; o < outer; ++o) out[o] = contiguous_sum(in + o * reduce, reduce) * scale;
    return;
  }
  const int64_t chunks = (inner + kInnerChunk - 1) / kInnerChunk;
  PYENGINE_OMP(omp parallel for collapse(2) if (parallel) schedule(static) num_threads(thread_count()))
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t i0 = c * kInnerChunk, i1 = std::min(inner, i0 + kInnerChunk);
      float* dst = out + o * inner;
      for (int64_t i = i0; i < i1; ++i) dst[i] = 0.0f;
      for (int64_t r = 0; r < reduce; ++r) {
        const float* src = in + (o * reduce + r) * inner;
        for (int64_t i = i0; i < i1; ++i) dst[i] += src[i];
      }
      for (int64_t i = i0; i < i1; ++i) dst[i] *= scale;
    }
}

void sum_backward(float* din, const float* dout, int64_t outer, int64_t reduce, int64_t inner,
                  float scale) {
  const bool parallel = outer * reduce * inner >= PYENGINE_PARALLEL_MIN_WORK;
  (void)parallel;
  PYENGINE_OMP(omp parallel for collapse(2) if (parallel) schedule(static) num_threads(thread_count()))
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t r = 0; r < reduce; ++r) {
      float* dst = din + (o * reduce + r) * inner;
      const float* g = dout + o * inner;
      for (int64_t i = 0; i < inner; ++i) dst[i] += g[i] * scale;
    }
}

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
