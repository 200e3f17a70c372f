// Plain embedding lookup and scatter-add, one element at a time.
#include "core/kernel_list.inc"
#include "embedding/embedding_overloads.h"

namespace pyengine {
namespace reference {

namespace {

template <typename Index>
void lookup(float* out, const float* weight, const Index* idx, int64_t rows, int64_t dim) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < dim; ++c) out[r * dim + c] = weight[static_cast<int64_t>(idx[r]) * dim + c];
}

template <typename Index>
void scatter_add(float* dweight, const float* dout, const Index* idx, int64_t rows, int64_t dim) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < dim; ++c) dweight[static_cast<int64_t>(idx[r]) * dim + c] += dout[r * dim + c];
}

}  // namespace

PYENGINE_EMBEDDING_OVERLOADS

}  // namespace reference
}  // namespace pyengine
