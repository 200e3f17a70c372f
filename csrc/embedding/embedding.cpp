// Embedding lookup and its scatter-add backward. The forward copies whole
// rows, split over the threads by rows. The backward splits by columns: each
// thread owns a range of columns of dweight and walks every row in order, so
// repeated indices accumulate in row order, with no atomics and no partial
// sums, and the result is the same for any thread count.
#include <algorithm>
#include <cstring>

#include "core/kernel_list.inc"
#include "embedding/embedding_overloads.h"
#include "core/parallel.h"

namespace pyengine {
namespace PYENGINE_KERNEL_NS {

namespace {

constexpr int64_t kColumnAlign = 16;  // floats: one cache line, so no two threads share one

template <typename Index>
void lookup(float* out, const float* weight, const Index* idx, int64_t rows, int64_t dim) {
  const bool parallel = rows_worth_threads(rows, dim) && !in_parallel_region();
  parallel_chunks(parallel, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      std::memcpy(out + r * dim, weight + static_cast<int64_t>(idx[r]) * dim, sizeof(float) * dim);
  });
}

// dweight[idx[r], c0:c1] += dout[r, c0:c1] for every row r, in order.
template <typename Index>
void scatter_columns(float* dweight, const float* dout, const Index* idx, int64_t rows, int64_t dim,
                     int64_t c0, int64_t c1) {
  for (int64_t r = 0; r < rows; ++r) {
    float* __restrict dst = dweight + static_cast<int64_t>(idx[r]) * dim;
    const float* __restrict src = dout + r * dim;
    for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
  }
}

template <typename Index>
void scatter_add(float* dweight, const float* dout, const Index* idx, int64_t rows, int64_t dim) {
  const bool parallel = rows_worth_threads(rows, dim) && !in_parallel_region() && dim >= 2 * kColumnAlign;
  const int64_t threads = parallel ? thread_count() : 1;
  const int64_t per_thread = (dim + threads - 1) / threads;
  const int64_t width = (per_thread + kColumnAlign - 1) / kColumnAlign * kColumnAlign;
  parallel_chunks(parallel, dim, width, [&](int64_t c0, int64_t c1) {
    scatter_columns(dweight, dout, idx, rows, dim, c0, c1);
  });
}

}  // namespace

PYENGINE_EMBEDDING_OVERLOADS

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
