// Declarations of RMS norm over the last axis (see core/registry.h).
#include "core/dispatch.h"
#include "core/kernels.h"
#include "core/registry.h"

namespace pyengine {
namespace {

using registry::Call;

PYENGINE_OP("rms_norm_forward", "rmsnorm",
            "RMS norm over the last axis: y = x * rstd * weight with rstd = 1 / sqrt(mean(x^2) + eps) "
            "(no mean subtracted, no bias: T5LayerNorm, torch.nn.RMSNorm); rstd is kept for the backward.")
    .output("y", "(*, cols)")
    .output("rstd", "(*)")
    .input("x", "(*, cols)")
    .input("weight", "(cols)")
    .real("eps", 1e-6, "added to the mean square")
    .nonempty("cols")
    .check([](const Call& c) {
      if (!(c.real("eps") >= 0.0f)) c.fail("eps must be >= 0, got " + std::to_string(c.real("eps")));
    })
    .kernel([](const Call& c) {
      PYENGINE_DISPATCH(rmsnorm_forward)(c.f32("y"), c.f32("rstd"), c.f32("x"), c.f32("weight"), c.dim("*"),
                                         c.dim("cols"), c.real("eps"));
    });

PYENGINE_OP("rms_norm_backward", "rmsnorm", "Gradients of rms_norm_forward.")
    .optional_grad("dx", "(*, cols)")
    .optional_grad("dweight", "(cols)")
    .grad_input("dy", "(*, cols)")
    .input("x", "(*, cols)")
    .input("weight", "(cols)")
    .input("rstd", "(*)")
    .nonempty("cols")
    .kernel([](const Call& c) {
      PYENGINE_DISPATCH(rmsnorm_backward)(c.f32("dx"), c.f32("dweight"), c.f32("dy"), c.f32("x"),
                                          c.f32("weight"), c.f32("rstd"), c.dim("*"), c.dim("cols"));
    });

}  // namespace
}  // namespace pyengine
