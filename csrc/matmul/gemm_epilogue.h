// The GEMM's epilogue (bias on the first K block, activation on the last,
// applied while a tile is in registers) and the partial vector loads and
// stores, shared by the packed GEMM (matmul.cpp) and the few-row paths
// (few_rows.cpp). Variant code only.
#pragma once
#include <cstdint>

#include "core/ops.h"
#include "core/simd.h"

namespace pyengine {
namespace PYENGINE_KERNEL_NS {
namespace gemm_epilogue {

using simd::kWidth;
using simd::vfloat;

struct Epilogue {
  const float* bias;     // (n,) or nullptr, added on the first K block
  float* preact;         // like C or nullptr, written on the last K block
  Activation activation;
};

inline vfloat load_n(const float* p, int64_t count) {
  return count == kWidth ? simd::load(p) : simd::load_partial(p, count, 0.0f);
}
inline void store_n(float* p, vfloat v, int64_t count) {
  if (count == kWidth) simd::store(p, v);
  else simd::store_partial(p, v, count);
}

// Writes `count` columns of one row of a C tile from its accumulator:
// first K block: C = acc + bias, later ones: C += acc; the last applies the
// activation (keeping the value before it in preact).
inline void store_row(float* c, float* preact, vfloat acc, int64_t count, const float* bias,
                      bool first, bool last, Activation activation) {
  vfloat v = acc + (first ? (bias ? load_n(bias, count) : vfloat{}) : load_n(c, count));
  if (last) {
    if (preact) store_n(preact, v, count);
    v = simd::activate(v, activation);
  }
  store_n(c, v, count);
}

}  // namespace gemm_epilogue
}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
