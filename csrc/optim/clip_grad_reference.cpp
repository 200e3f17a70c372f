// Plain norms: one double accumulator, elements in order.
#include <cmath>

#include "core/kernel_list.inc"
#include "optim/clip_grad_common.h"

namespace pyengine {
namespace reference {

void vector_norm(float* norm, const float* x, int64_t n, float norm_type) {
  if (std::isinf(norm_type)) {
    *norm = static_cast<float>(max_abs(x, n));
    return;
  }
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += norm_term(x[i], norm_type);
  *norm = static_cast<float>(norm_root(sum, norm_type));
}

void clip_coefficient(float* total, float* coef, const float* norms, int64_t count, float norm_type,
                      float max_norm) {
  combine_norms(total, coef, norms, count, norm_type, max_norm);
}

}  // namespace reference
}  // namespace pyengine
