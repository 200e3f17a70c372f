// Declarations of the gradient-norm kernels for clipping (see core/registry.h).
#include <cmath>
#include <string>

#include "core/dispatch.h"
#include "core/kernels.h"
#include "core/registry.h"

namespace pyengine {
namespace {

using registry::Call;

void check_norm_type(const Call& c) {
  const float p = c.real("norm_type");
  if (!(p > 0.0f)) c.fail("norm_type must be > 0 or inf, got " + std::to_string(p));
}

PYENGINE_OP("vector_norm", "optim",
            "The p-norm of a buffer, accumulated in double (torch.linalg.vector_norm): one gradient's "
            "share of the total that clip_coefficient combines.")
    .output("norm", "()")
    .input("x", "(n)")
    .real("norm_type", 2.0, "p > 0, or inf for the largest magnitude")
    .check(check_norm_type)
    .kernel([](const Call& c) {
      PYENGINE_DISPATCH(vector_norm)(c.f32("norm"), c.f32("x"), c.dim("n"), c.real("norm_type"));
    });

PYENGINE_OP("clip_coefficient", "optim",
            "torch.nn.utils.clip_grad_norm_'s arithmetic: total = ||norms||_p (in double), coef = min(1, "
            "max_norm / (total + 1e-6)) in float32 (NaN stays NaN).")
    .output("total", "()")
    .output("coef", "()")
    .input("norms", "(count)")
    .real("norm_type", 2.0, "p > 0, or inf for the largest magnitude")
    .real("max_norm", std::nullopt, "the largest total norm the gradients keep")
    .check(check_norm_type)
    .kernel([](const Call& c) {
      PYENGINE_DISPATCH(clip_coefficient)(c.f32("total"), c.f32("coef"), c.f32("norms"), c.dim("count"),
                                          c.real("norm_type"), c.real("max_norm"));
    });

}  // namespace
}  // namespace pyengine
