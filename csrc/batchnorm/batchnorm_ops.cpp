// Declarations of batch norm over N and the spatial dims (see core/registry.h).
#include "core/dispatch.h"
#include "core/kernels.h"
#include "core/registry.h"

namespace pyengine {
namespace {

using registry::Call;

void check_forward(const Call& c) {
  if (!(c.real("eps") >= 0.0f)) c.fail("eps must be >= 0, got " + std::to_string(c.real("eps")));
  const bool mean = c.f32("running_mean") != nullptr, var = c.f32("running_var") != nullptr;
  if (mean != var) c.fail("running_mean and running_var go together: give both or neither");
  if (!c.flag("training") && !mean) c.fail("training=False uses the running statistics: give running_mean and running_var");
  if (c.flag("training") && c.dim("N") * c.dim("*") <= 1)
    c.fail("expected more than 1 value per channel when training, got input size " + registry::shape_str(c.shape("x")));
}

PYENGINE_OP("batch_norm_forward", "batchnorm",
            "Batch norm per channel over N and the spatial dims: y = (x - mean) * rstd * weight + bias. training: "
            "the batch's mean and biased variance, and the running buffers (when given) updated in place with "
            "momentum (the variance unbiased), as PyTorch; else the running buffers' statistics. save_mean and "
            "save_rstd keep what was used, for the backward.")
    .output("y", "(N, C, *)")
    .output("save_mean", "(C)")
    .output("save_rstd", "(C)")
    .optional_inout("running_mean", "(C)")
    .optional_inout("running_var", "(C)")
    .input("x", "(N, C, *)")
    .optional_input("weight", "(C)")
    .optional_input("bias", "(C)")
    .flag("training", true, "normalise with the batch's statistics (and update the running ones)")
    .real("momentum", 0.1, "weight of the batch in the running statistics")
    .real("eps", 1e-5, "added to the variance")
    .nonempty("C")
    .check(check_forward)
    .kernel([](const Call& c) {
      PYENGINE_DISPATCH(batchnorm_forward)(c.f32("y"), c.f32("save_mean"), c.f32("save_rstd"), c.f32("running_mean"),
                                           c.f32("running_var"), c.f32("x"), c.f32("weight"), c.f32("bias"),
                                           c.dim("N"), c.dim("C"), c.dim("*"), c.flag("training"),
                                           c.real("momentum"), c.real("eps"));
    });

PYENGINE_OP("batch_norm_backward", "batchnorm", "Gradients of batch_norm_forward.")
    .optional_grad("dx", "(N, C, *)")
    .optional_grad("dweight", "(C)")
    .optional_grad("dbias", "(C)")
    .grad_input("dy", "(N, C, *)")
    .input("x", "(N, C, *)")
    .optional_input("weight", "(C)")
    .input("save_mean", "(C)")
    .input("save_rstd", "(C)")
    .flag("training", true, "the forward used the batch's statistics (they depend on x)")
    .nonempty("C")
    .kernel([](const Call& c) {
      PYENGINE_DISPATCH(batchnorm_backward)(c.f32("dx"), c.f32("dweight"), c.f32("dbias"), c.f32("dy"), c.f32("x"),
                                            c.f32("weight"), c.f32("save_mean"), c.f32("save_rstd"), c.dim("N"),
                                            c.dim("C"), c.dim("*"), c.flag("training"));
    });

}  // namespace
}  // namespace pyengine
