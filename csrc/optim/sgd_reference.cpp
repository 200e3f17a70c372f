// Plain SGD, one element at a time.
#include "core/kernel_list.inc"
#include "optim/sgd_common.h"

namespace pyengine {
namespace reference {

void sgd_update(float* param, float* momentum_buf, const float* grad, int64_t n, float lr,
                float momentum, float dampening, float weight_decay, bool nesterov,
                bool first_step) {
  for (int64_t i = 0; i < n; ++i)
    sgd_element(param[i], momentum_buf ? momentum_buf + i : nullptr, grad[i], lr, momentum,
                dampening, weight_decay, nesterov, first_step);
}

}  // namespace reference
}  // namespace pyengine
