// The SGD update rule for one element, shared by the reference and the
// optimized variants (see kernel_list.inc for the formula).
#pragma once
#include <cstdint>

namespace pyengine {
namespace PYENGINE_KERNEL_NS {

inline void sgd_element(float& param, float* buf, float grad, float lr, float momentum,
                        float dampening, float weight_decay, bool nesterov, bool first_step) {
  float g = grad + weight_decay * param;
  if (buf) {
    *buf = first_step ? g : momentum * *buf + (1.0f - dampening) * g;
    g = nesterov ? g + momentum * *buf : *buf;
  }
  param -= lr * g;
}

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
