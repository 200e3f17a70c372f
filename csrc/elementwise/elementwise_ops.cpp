// Declarations of the elementwise family (see core/registry.h): broadcasting
// binary ops, ops with a scalar, and the one-input activations.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/dispatch.h"
#include "core/kernels.h"
#include "core/registry.h"

namespace pyengine {
namespace {

using registry::Call;
using registry::Resolution;
using registry::Shape;

const registry::EnumDecl& binary_enum() {
  static const registry::EnumDecl& values = registry::declare_enum(
      "BinaryOp", std::vector<std::string>(std::begin(kBinaryOpNames), std::end(kBinaryOpNames)));
  return values;
}

const registry::EnumDecl& scalar_enum() {
  static const registry::EnumDecl& values = registry::declare_enum(
      "ScalarOp", std::vector<std::string>(std::begin(kScalarOpNames), std::end(kScalarOpNames)));
  return values;
}

// ---------------------------------------------------------------- broadcasting

Shape broadcast_shape(const Resolution& r, const Shape& sa, const Shape& sb) {
  const size_t nd = std::max(sa.size(), sb.size());
  Shape out;
  for (size_t i = 0; i < nd; ++i) {
    const int64_t da = i < nd - sa.size() ? 1 : sa[i - (nd - sa.size())];
    const int64_t db = i < nd - sb.size() ? 1 : sb[i - (nd - sb.size())];
    if (da != db && da != 1 && db != 1)
      r.fail("shapes " + registry::shape_str(sa) + " and " + registry::shape_str(sb) + " do not broadcast");
    out.push_back(da == 1 ? db : da);
  }
  return out;
}

// The broadcast iteration space of a and b, with adjacent dims merged where
// both operands allow it (fewer, longer inner loops).
struct Broadcast {
  Shape shape, strides_a, strides_b;
};

Shape broadcast_strides(const Shape& s, const Shape& out) {
  Shape strides;
  strides.resize(out.size(), 0);
  int64_t stride = 1;
  for (size_t i = 0; i < s.size(); ++i) {
    const size_t src = s.size() - 1 - i, dst = out.size() - 1 - i;
    strides[dst] = s[src] == 1 ? 0 : stride;
    stride *= s[src];
  }
  return strides;
}

Broadcast plan_broadcast(const Shape& sa, const Shape& sb, const Shape& out) {
  const Shape fa = broadcast_strides(sa, out), fb = broadcast_strides(sb, out);
  Broadcast p;
  for (size_t d = 0; d < out.size(); ++d) {
    if (out[d] == 1) continue;  // size-1 dims do not move either operand
    const bool mergeable = !p.shape.empty() && p.strides_a.back() == fa[d] * out[d] &&
                           p.strides_b.back() == fb[d] * out[d];
    if (mergeable) {
      p.shape.back() *= out[d];
      p.strides_a.back() = fa[d];
      p.strides_b.back() = fb[d];
    } else {
      p.shape.push_back(out[d]);
      p.strides_a.push_back(fa[d]);
      p.strides_b.push_back(fb[d]);
    }
  }
  return p;
}

void broadcast_rule(Resolution& r, const char* result) {
  const Shape out = broadcast_shape(r, r.shape("a"), r.shape("b"));
  r.expect(result, out);
  if (r.op().arg_index("da") >= 0) {
    r.expect("da", r.shape("a"));
    r.expect("db", r.shape("b"));
  }
}

PYENGINE_OP("binary_forward", "elementwise", "out = a <op> b, elementwise with numpy broadcasting.")
    .output("out")  // broadcast(a, b)
    .input("a")
    .input("b")
    .code("op", binary_enum(), std::nullopt, "add, sub, mul or div")
    .may_alias("out", "a")
    .may_alias("out", "b")
    .shape_rule([](Resolution& r) { broadcast_rule(r, "out"); })
    .kernel([](const Call& c) {
      const Broadcast p = plan_broadcast(c.shape("a"), c.shape("b"), c.shape("out"));
      PYENGINE_DISPATCH(binary_forward)(c.f32("out"), c.f32("a"), c.f32("b"), static_cast<BinaryOp>(c.code("op")),
                                        static_cast<int64_t>(p.shape.size()), p.shape.data(),
                                        p.strides_a.data(), p.strides_b.data());
    });

PYENGINE_OP("binary_backward", "elementwise",
            "Gradients of binary_forward, summed over the broadcast dims: da += dL/da, db += dL/db.")
    .optional_grad("da")  // like a
    .optional_grad("db")  // like b
    .grad_input("dout")   // broadcast(a, b)
    .input("a")
    .input("b")
    .code("op", binary_enum(), std::nullopt, "add, sub, mul or div")
    .may_alias("da", "db")  // x * x: both gradients accumulate into x's, one after the other
    .shape_rule([](Resolution& r) { broadcast_rule(r, "dout"); })
    .kernel([](const Call& c) {
      const Broadcast p = plan_broadcast(c.shape("a"), c.shape("b"), c.shape("dout"));
      PYENGINE_DISPATCH(binary_backward)(c.f32("da"), c.f32("db"), c.f32("dout"), c.f32("a"), c.f32("b"),
                                         static_cast<BinaryOp>(c.code("op")),
                                         static_cast<int64_t>(p.shape.size()), p.shape.data(),
                                         p.strides_a.data(), p.strides_b.data());
    });

// ---------------------------------------------------------------- scalar operand

PYENGINE_OP("scalar_forward", "elementwise", "out = a <op> s with a Python scalar s, elementwise.")
    .output("out", "(*)")
    .input("a", "(*)")
    .code("op", scalar_enum(), std::nullopt, "add, sub, rsub, mul, div, rdiv or pow")
    .real("s", std::nullopt, "the scalar operand")
    .may_alias("out", "a")
    .kernel([](const Call& c) {
      PYENGINE_DISPATCH(scalar_forward)(c.f32("out"), c.f32("a"), static_cast<ScalarOp>(c.code("op")),
                                        c.real("s"), c.dim("*"));
    });

PYENGINE_OP("scalar_backward", "elementwise", "Gradient of scalar_forward: da += dL/da.")
    .grad("da", "(*)")
    .grad_input("dout", "(*)")
    .input("a", "(*)")
    .code("op", scalar_enum(), std::nullopt, "add, sub, rsub, mul, div, rdiv or pow")
    .real("s", std::nullopt, "the scalar operand")
    .kernel([](const Call& c) {
      PYENGINE_DISPATCH(scalar_backward)(c.f32("da"), c.f32("dout"), c.f32("a"),
                                         static_cast<ScalarOp>(c.code("op")), c.real("s"), c.dim("*"));
    });

}  // namespace
}  // namespace pyengine

// ---------------------------------------------------------------- activations

// A one-input activation, declared once: the kernels' prototypes in every
// variant, and <name>_forward(y, x) and <name>_backward(dx, dy, saved), where
// the backward reads the forward's input x or its output y (`saved`).
#define PYENGINE_UNARY_OP(name, doc, saved)                                                        \
  PYENGINE_IN_EVERY_VARIANT(                                                                       \
      void name##_forward(float* y /*(n,)*/, const float* x /*(n,)*/, int64_t n);                  \
      void name##_backward(float* dx /*(n,) +=*/, const float* dy /*(n,)*/,                        \
                           const float* saved_value /*(n,)*/, int64_t n);)                         \
  namespace pyengine {                                                                             \
  namespace {                                                                                      \
  PYENGINE_OP(#name "_forward", "elementwise", doc)                                                \
      .output("y", "(*)")                                                                          \
      .input("x", "(*)")                                                                           \
      .may_alias("y", "x")                                                                         \
      .kernel([](const registry::Call& c) {                                                        \
        PYENGINE_DISPATCH(name##_forward)(c.f32("y"), c.f32("x"), c.dim("*"));                     \
      });                                                                                          \
  PYENGINE_OP(#name "_backward", "elementwise", "Gradient of " #name "_forward: dx += dy * d" #name "/dx.") \
      .grad("dx", "(*)")                                                                           \
      .grad_input("dy", "(*)")                                                                     \
      .input(saved, "(*)")                                                                         \
      .kernel([](const registry::Call& c) {                                                        \
        PYENGINE_DISPATCH(name##_backward)(c.f32("dx"), c.f32("dy"), c.f32(saved), c.dim("*"));    \
      });                                                                                          \
  }                                                                                                \
  }

// relu's backward reads its output: y > 0 exactly where x > 0 (NaN and -0
// alike), and a matmul or convolution with the ReLU fused in its epilogue
// then keeps no pre-activation for the backward.
PYENGINE_UNARY_OP(relu, "max(x, 0), elementwise.", "y")
PYENGINE_UNARY_OP(gelu, "GELU, tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), elementwise.", "x")
PYENGINE_UNARY_OP(gelu_erf, "GELU, exact form: x Phi(x) = 0.5 x erfc(-x / sqrt(2)), elementwise.", "x")
PYENGINE_UNARY_OP(tanh, "tanh(x), elementwise.", "y")
PYENGINE_UNARY_OP(exp, "exp(x), elementwise.", "y")
PYENGINE_UNARY_OP(sigmoid, "1 / (1 + exp(-x)), elementwise.", "y")
PYENGINE_UNARY_OP(silu, "x * sigmoid(x) (SiLU, or swish), elementwise.", "x")
PYENGINE_UNARY_OP(sqrt, "sqrt(x), elementwise.", "y")
PYENGINE_UNARY_OP(rsqrt, "1 / sqrt(x), elementwise.", "y")
PYENGINE_UNARY_OP(log, "log(x), natural logarithm, elementwise.", "x")
PYENGINE_UNARY_OP(abs, "|x|, elementwise.", "x")
PYENGINE_UNARY_OP(square, "x * x, elementwise.", "x")

// ---------------------------------------------------------------- add + ReLU

namespace pyengine {
namespace {

PYENGINE_OP("add_relu_forward", "elementwise",
            "max(a + b, 0) of two arrays of one shape (a residual add and its ReLU) in one pass: the bits of "
            "add then relu; NaN stays NaN.")
    .output("y", "(*)")
    .input("a", "(*)")
    .input("b", "(*)")
    .may_alias("y", "a")
    .may_alias("y", "b")
    .kernel([](const registry::Call& c) {
      PYENGINE_DISPATCH(add_relu_forward)(c.f32("y"), c.f32("a"), c.f32("b"), c.dim("*"));
    });

PYENGINE_OP("add_relu_backward", "elementwise",
            "Gradients of add_relu_forward from its output: da += dy and db += dy where y > 0 or y is NaN.")
    .optional_grad("da", "(*)")
    .optional_grad("db", "(*)")
    .grad_input("dy", "(*)")
    .input("y", "(*)")
    .may_alias("da", "db")  // x + x: both gradients accumulate into x's, one after the other
    .kernel([](const registry::Call& c) {
      PYENGINE_DISPATCH(add_relu_backward)(c.f32("da"), c.f32("db"), c.f32("dy"), c.f32("y"), c.dim("*"));
    });

}  // namespace
}  // namespace pyengine

// ---------------------------------------------------------------- clamp

PYENGINE_IN_EVERY_VARIANT(
    void clamp_forward(float* y /*(n,)*/, const float* x /*(n,)*/, float lo, float hi, int64_t n);
    void clamp_backward(float* dx /*(n,) +=*/, const float* dy /*(n,)*/, const float* x /*(n,)*/, float lo,
                        float hi, int64_t n);)

namespace pyengine {
namespace {

registry::OpBuilder& clamp_bounds(registry::OpBuilder& op) {
  return op.real("min", -INFINITY, "lower bound (-inf: none)")
      .real("max", INFINITY, "upper bound (inf: none)")
      .check([](const registry::Call& c) {
        if (c.real("min") > c.real("max"))
          c.fail("min = " + std::to_string(c.real("min")) + " is above max = " + std::to_string(c.real("max")));
      });
}

PYENGINE_OP("fill", "elementwise",
            "out = value everywhere, in place, across the threads (a graph zeroes its gradient buffers with "
            "it, each as a flat view).")
    .inout("out", "(n)")
    .real("value", 0.0, "the value written")
    .kernel([](const registry::Call& c) { PYENGINE_DISPATCH(fill)(c.f32("out"), c.real("value"), c.dim("n")); });

PYENGINE_OP("clamp_forward", "elementwise", "min(max(x, min), max), elementwise; NaN stays NaN.")
    .output("y", "(*)")
    .input("x", "(*)")
    .apply(clamp_bounds)
    .may_alias("y", "x")
    .kernel([](const registry::Call& c) {
      PYENGINE_DISPATCH(clamp_forward)(c.f32("y"), c.f32("x"), c.real("min"), c.real("max"), c.dim("*"));
    });

PYENGINE_OP("clamp_backward", "elementwise", "Gradient of clamp_forward: dx += dy where min <= x <= max.")
    .grad("dx", "(*)")
    .grad_input("dy", "(*)")
    .input("x", "(*)")
    .apply(clamp_bounds)
    .kernel([](const registry::Call& c) {
      PYENGINE_DISPATCH(clamp_backward)(c.f32("dx"), c.f32("dy"), c.f32("x"), c.real("min"), c.real("max"),
                                        c.dim("*"));
    });

}  // namespace
}  // namespace pyengine
