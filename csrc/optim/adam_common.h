// The Adam update rule for one element, shared by the reference and the
// optimized variants (see kernel_list.inc for the formula). Written as
// PyTorch's single-tensor Adam computes it, in float32.
#pragma once
#include <cmath>
#include <cstdint>

namespace pyengine {
namespace PYENGINE_KERNEL_NS {

inline void adam_element(float& param, float& m, float& v, float* vmax, float grad, const AdamStep& s) {
  float g = grad;
  if (s.decoupled) param *= 1.0f - s.lr * s.weight_decay;
  else g += s.weight_decay * param;
  m += (1.0f - s.beta1) * (g - m);  // torch's lerp
  v = s.beta2 * v + (1.0f - s.beta2) * g * g;
  float second = v;
  if (vmax) second = *vmax = std::fmax(*vmax, v);
  const float denom = std::sqrt(second) / s.bias2_sqrt + s.eps;
  param -= s.step_size * (m / denom);
}

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
