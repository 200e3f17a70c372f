// Scalar definitions of the elementwise ops, shared by the reference and the
// optimized variants so both compute the same formula. Included inside each
// variant's namespace.
#pragma once
#include <cmath>
#include <cstdint>

#include "core/ops.h"

namespace pyengine {
namespace PYENGINE_KERNEL_NS {
namespace ew {

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCubic = 0.044715f;

inline float binary_apply(BinaryOp op, float a, float b) {
  switch (op) {
    case BinaryOp::add: return a + b;
    case BinaryOp::sub: return a - b;
    case BinaryOp::mul: return a * b;
    case BinaryOp::div: return a / b;
  }
  return 0.0f;
}
// d(a op b)/da and d(a op b)/db.
inline float binary_grad_a(BinaryOp op, float /*a*/, float b) {
  switch (op) {
    case BinaryOp::add:
    case BinaryOp::sub: return 1.0f;
    case BinaryOp::mul: return b;
    case BinaryOp::div: return 1.0f / b;
  }
  return 0.0f;
}
inline float binary_grad_b(BinaryOp op, float a, float b) {
  switch (op) {
    case BinaryOp::add: return 1.0f;
    case BinaryOp::sub: return -1.0f;
    case BinaryOp::mul: return a;
    case BinaryOp::div: return -a / (b * b);
  }
  return 0.0f;
}

inline float scalar_apply(ScalarOp op, float a, float s) {
  switch (op) {
    case ScalarOp::add: return a + s;
    case ScalarOp::sub: return a - s;
    case ScalarOp::rsub: return s - a;
    case ScalarOp::mul: return a * s;
    case ScalarOp::div: return a / s;
    case ScalarOp::rdiv: return s / a;
    case ScalarOp::pow: return std::pow(a, s);
  }
  return 0.0f;
}
inline float scalar_grad(ScalarOp op, float a, float s) {
  switch (op) {
    case ScalarOp::add:
    case ScalarOp::sub: return 1.0f;
    case ScalarOp::rsub: return -1.0f;
    case ScalarOp::mul: return s;
    case ScalarOp::div: return 1.0f / s;
    case ScalarOp::rdiv: return -s / (a * a);
    case ScalarOp::pow: return s == 0.0f ? 0.0f : s * std::pow(a, s - 1.0f);
  }
  return 0.0f;
}

inline float gelu(float x) {
  const float inner = kSqrt2OverPi * (x + kGeluCubic * x * x * x);
  return 0.5f * x * (1.0f + std::tanh(inner));
}
inline float gelu_grad(float x) {
  const float inner = kSqrt2OverPi * (x + kGeluCubic * x * x * x);
  const float t = std::tanh(inner);
  const float dinner = kSqrt2OverPi * (1.0f + 3.0f * kGeluCubic * x * x);
  return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * dinner;
}

// Exact GELU, x Phi(x), with the C library's erfc (no cancellation in the tail).
inline float gelu_erf(float x) { return 0.5f * x * std::erfc(-x * 0.7071067811865476f); }
inline float gelu_erf_grad(float x) {
  return 0.5f * std::erfc(-x * 0.7071067811865476f) + x * 0.3989422804014327f * std::exp(-0.5f * x * x);
}

// The activation of a fused epilogue (matmul, conv2d), element by element.
inline float activate(Activation activation, float v) {
  switch (activation) {
    case Activation::relu: return v < 0.0f ? 0.0f : v;  // NaN stays NaN
    case Activation::gelu: return gelu(v);
    case Activation::gelu_erf: return gelu_erf(v);
    case Activation::none:
    case Activation::count: break;
  }
  return v;
}

// Element offsets of a and b for the flat outer index `o` over shape[0..ndim-1).
inline void outer_offsets(int64_t o, int64_t ndim, const int64_t* shape, const int64_t* sa,
                          const int64_t* sb, int64_t* off_a, int64_t* off_b) {
  int64_t oa = 0, ob = 0;
  for (int64_t d = ndim - 2; d >= 0; --d) {
    const int64_t idx = o % shape[d];
    o /= shape[d];
    oa += idx * sa[d];
    ob += idx * sb[d];
  }
  *off_a = oa;
  *off_b = ob;
}

}  // namespace ew
}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
