// The dropout rule shared by the reference and the optimized variants: the
// scale of a kept element, and the keep test (see kernel_list.inc).
#pragma once
#include <cstdint>

#include "core/philox.h"

namespace pyengine {
namespace PYENGINE_KERNEL_NS {

// 1 / (1 - p) for a kept element; 0 when p = 1 (nothing is kept).
inline float dropout_scale(float p) { return p < 1.0f ? static_cast<float>(1.0 / (1.0 - double(p))) : 0.0f; }

// The factor element `bits` gets: scale if its uniform value is >= p, else 0.
inline float dropout_factor(uint32_t bits, float p, float scale) {
  return philox::to_unit_float(bits) >= p ? scale : 0.0f;
}

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
