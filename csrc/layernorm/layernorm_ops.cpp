// Declarations of layer norm over the last axis, alone and after a residual add (see core/registry.h).
#include "core/dispatch.h"
#include "core/kernels.h"
#include "core/registry.h"

namespace pyengine {
namespace {

using registry::Call;

// eps of either forward.
void check_eps(const Call& c) {
  if (!(c.real("eps") >= 0.0f)) c.fail("eps must be >= 0, got " + std::to_string(c.real("eps")));
}

// What both forwards write first: the normalized rows and the statistics the backward reads.
registry::OpBuilder& normalized_outputs(registry::OpBuilder& op) {
  return op.output("y", "(*, cols)").output("mean", "(*)").output("rstd", "(*)");
}

// What both forwards take after their rows: the affine parameters and eps.
registry::OpBuilder& affine_and_eps(registry::OpBuilder& op) {
  return op.input("weight", "(cols)")
      .input("bias", "(cols)")
      .real("eps", 1e-5, "added to the variance")
      .nonempty("cols")
      .check(check_eps);
}

// What both backwards read after their inputs: the weight and the forward's statistics.
registry::OpBuilder& weight_and_statistics(registry::OpBuilder& op) {
  return op.input("weight", "(cols)").input("mean", "(*)").input("rstd", "(*)").nonempty("cols");
}

PYENGINE_OP("layer_norm_forward", "layernorm",
            "Layer norm over the last axis: y = (x - mean) * rstd * weight + bias; mean and rstd are kept "
            "for the backward.")
    .apply(normalized_outputs)
    .input("x", "(*, cols)")
    .apply(affine_and_eps)
    .kernel([](const Call& c) {
      PYENGINE_DISPATCH(layernorm_forward)(c.f32("y"), c.f32("mean"), c.f32("rstd"), c.f32("x"),
                                           c.f32("weight"), c.f32("bias"), c.dim("*"), c.dim("cols"),
                                           c.real("eps"));
    });

PYENGINE_OP("layer_norm_backward", "layernorm", "Gradients of layer_norm_forward.")
    .optional_grad("dx", "(*, cols)")
    .optional_grad("dweight", "(cols)")
    .optional_grad("dbias", "(cols)")
    .grad_input("dy", "(*, cols)")
    .input("x", "(*, cols)")
    .apply(weight_and_statistics)
    .kernel([](const Call& c) {
      PYENGINE_DISPATCH(layernorm_backward)(c.f32("dx"), c.f32("dweight"), c.f32("dbias"), c.f32("dy"),
                                            c.f32("x"), c.f32("weight"), c.f32("mean"), c.f32("rstd"),
                                            c.dim("*"), c.dim("cols"));
    });

PYENGINE_OP("add_layer_norm_forward", "layernorm",
            "Residual add and layer norm over the last axis in one pass: y = (s - mean) * rstd * weight + bias "
            "for s = a + b, which is not written; mean and rstd are kept for the backward.")
    .apply(normalized_outputs)
    .input("a", "(*, cols)")
    .input("b", "(*, cols)")
    .apply(affine_and_eps)
    .kernel([](const Call& c) {
      PYENGINE_DISPATCH(add_layernorm_forward)(c.f32("y"), c.f32("mean"), c.f32("rstd"), c.f32("a"),
                                               c.f32("b"), c.f32("weight"), c.f32("bias"), c.dim("*"),
                                               c.dim("cols"), c.real("eps"));
    });

PYENGINE_OP("add_layer_norm_backward", "layernorm",
            "Gradients of add_layer_norm_forward: layer_norm_backward's at x = a + b, dx added to da and db.")
    .optional_grad("da", "(*, cols)")
    .optional_grad("db", "(*, cols)")
    .optional_grad("dweight", "(cols)")
    .optional_grad("dbias", "(cols)")
    .grad_input("dy", "(*, cols)")
    .input("a", "(*, cols)")
    .input("b", "(*, cols)")
    .apply(weight_and_statistics)
    .kernel([](const Call& c) {
      PYENGINE_DISPATCH(add_layernorm_backward)(c.f32("da"), c.f32("db"), c.f32("dweight"), c.f32("dbias"),
                                                c.f32("dy"), c.f32("a"), c.f32("b"), c.f32("weight"),
                                                c.f32("mean"), c.f32("rstd"), c.dim("*"), c.dim("cols"));
    });

}  // namespace
}  // namespace pyengine
