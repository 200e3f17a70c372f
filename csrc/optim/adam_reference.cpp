// Plain Adam, one element at a time.
#include "core/kernel_list.inc"
#include "optim/adam_common.h"

namespace pyengine {
namespace reference {

void adam_update(float* param, float* exp_avg, float* exp_avg_sq, float* max_exp_avg_sq,
                 const float* grad, int64_t n, const AdamStep& s) {
  for (int64_t i = 0; i < n; ++i)
    adam_element(param[i], exp_avg[i], exp_avg_sq[i], max_exp_avg_sq ? max_exp_avg_sq + i : nullptr,
                 grad[i] * s.grad_scale, s);
}

}  // namespace reference
}  // namespace pyengine
