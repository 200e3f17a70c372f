// Sum (and, by scale, mean) over the middle axis of (outer, reduce, inner).
#include <algorithm>

#include "core/kernel_list.inc"
#include "core/parallel.h"
#include "core/scratch.h"
#include "core/simd.h"

namespace pyengine {
namespace PYENGINE_KERNEL_NS {
namespace {

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

// dst (inner,) = the sum of `rows` contiguous rows of src (rows, inner).
void sum_rows(float* dst, const float* src, int64_t rows, int64_t inner) {
  using simd::kWidth;
  std::fill(dst, dst + inner, 0.0f);
  for (int64_t r = 0; r < rows; ++r, src += inner) {
    int64_t i = 0;
    for (; i + kWidth <= inner; i += kWidth) simd::store(dst + i, simd::load(dst + i) + simd::load(src + i));
    for (; i < inner; ++i) dst[i] += src[i];
  }
}

}  // namespace

void sum_forward(float* out, const float* in, int64_t outer, int64_t reduce, int64_t inner,
                 float scale) {
  const bool parallel = outer * reduce * inner >= PYENGINE_PARALLEL_MIN_WORK;
  if (inner == 1) {
    parallel_for(parallel, outer, [&](int64_t o) {
      out[o] = contiguous_sum(in + o * reduce, reduce) * scale;
    });
    return;
  }
  // Sums over a middle axis stream whole rows (contiguous, prefetch-friendly)
  // into a row of partial sums. Threads split the outer rows when there are
  // enough of them, otherwise the reduced rows, each into its own partial
  // row, added up at the end.
  const int threads = parallel ? thread_count() : 1;
  if (outer >= 2 * threads) {
    parallel_for(parallel, outer, [&](int64_t o) {
      const float s = scale;  // a local: the stores below cannot alias it, so the loop vectorizes
      float* dst = out + o * inner;
      sum_rows(dst, in + o * reduce * inner, reduce, inner);
      for (int64_t i = 0; i < inner; ++i) dst[i] *= s;
    });
    return;
  }
  const size_t per_thread = static_cast<size_t>(outer * inner);
  ScratchFrame scratch;
  float* partial = scratch.floats(threads * per_thread);
  parallel_region(parallel, threads, [&] {
    const int t = thread_index(), team = team_size();
    const int64_t r0 = reduce * t / team, r1 = reduce * (t + 1) / team;
    for (int64_t o = 0; o < outer; ++o)
      sum_rows(partial + t * per_thread + o * inner, in + (o * reduce + r0) * inner, r1 - r0, inner);
    PYENGINE_OMP(omp barrier)
    const float s = scale;
    PYENGINE_OMP(omp for schedule(static))
    for (int64_t i = 0; i < outer * inner; ++i) {
      float total = 0.0f;
      for (int u = 0; u < team; ++u) total += partial[u * per_thread + i];
      out[i] = total * s;
    }
  });
}

void sum_backward(float* din, const float* dout, int64_t outer, int64_t reduce, int64_t inner,
                  float scale) {
  const bool parallel = outer * reduce * inner >= PYENGINE_PARALLEL_MIN_WORK;
  // din's rows [r0, r1) of block o += dout's row o times scale.
  auto add_rows = [&](int64_t o, int64_t r0, int64_t r1) {
    const float s = scale;  // a local: the stores below cannot alias it, so the loops vectorize
    const float* g = dout + o * inner;
    float* dst = din + (o * reduce + r0) * inner;
    if (inner == 1) {  // a sum over the last axis: one contiguous run gets one value
      const float v = g[0] * s;
      for (int64_t i = 0; i < r1 - r0; ++i) dst[i] += v;
      return;
    }
    for (int64_t r = r0; r < r1; ++r, dst += inner)
      for (int64_t i = 0; i < inner; ++i) dst[i] += g[i] * s;
  };
  // Threads take whole blocks when there are enough, else pieces of each block's rows.
  const int64_t threads = parallel ? thread_count() : 1;
  const int64_t pieces = outer >= 2 * threads ? 1 : std::min<int64_t>(2 * threads, reduce);
  parallel_for(parallel, outer * pieces, [&](int64_t task) {
    const int64_t o = task / pieces, q = task % pieces;
    add_rows(o, reduce * q / pieces, reduce * (q + 1) / pieces);
  });
}

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
