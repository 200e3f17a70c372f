// The negative log-likelihood loops, shared by the reference and the
// optimized variants (see kernel_list.inc): one value a row, nothing to vectorize.
#pragma once
#include <cstdint>
#include <limits>

#ifndef PYENGINE_KERNEL_NS
#error "nll_common.h is for kernels; PYENGINE_KERNEL_NS must be defined"
#endif

namespace pyengine {
namespace PYENGINE_KERNEL_NS {

template <typename Index>
void nll_forward_impl(float* loss, const float* logp, const Index* target, int64_t rows,
                      int64_t classes, int64_t ignore_index) {
  double total = 0.0;
  int64_t count = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (target[r] == ignore_index) continue;
    total -= logp[r * classes + target[r]];
    ++count;
  }
  loss[0] = count ? static_cast<float>(total / count) : std::numeric_limits<float>::quiet_NaN();
}

template <typename Index>
void nll_backward_impl(float* dlogp, const float* dloss, const Index* target, int64_t rows,
                       int64_t classes, int64_t ignore_index) {
  int64_t count = 0;
  for (int64_t r = 0; r < rows; ++r) count += target[r] != ignore_index;
  if (count == 0) return;
  const float g = static_cast<float>(-double(dloss[0]) / count);
  for (int64_t r = 0; r < rows; ++r)
    if (target[r] != ignore_index) dlogp[r * classes + target[r]] += g;
}

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
