// SGD in place; branch-free inner loops per configuration so they vectorize.
#include <algorithm>

#include "core/kernel_list.inc"
#include "core/parallel.h"
#include "optim/sgd_common.h"

namespace pyengine {
namespace PYENGINE_KERNEL_NS {

void sgd_update(float* param, float* momentum_buf, const float* grad, int64_t n, float lr,
                float momentum, float dampening, float weight_decay, bool nesterov,
                bool first_step) {
  constexpr int64_t kChunk = 1 << 14;
  parallel_chunks(n >= 4 * kChunk, n, kChunk, [&](int64_t i0, int64_t i1) {
    if (!momentum_buf) {
      for (int64_t i = i0; i < i1; ++i) param[i] -= lr * (grad[i] + weight_decay * param[i]);
      return;
    }
    for (int64_t i = i0; i < i1; ++i)
      sgd_element(param[i], momentum_buf + i, grad[i], lr, momentum, dampening, weight_decay,
                  nesterov, first_step);
  });
}

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
