// Declaration of the Adam / AdamW update (see core/registry.h).
#include <cmath>
#include <string>

#include "core/dispatch.h"
#include "core/kernels.h"
#include "core/registry.h"

namespace pyengine {
namespace {

using registry::Call;

PYENGINE_OP("adam_update", "optim",
            "One Adam (or, with decoupled weight decay, AdamW) step in place, PyTorch's rule: see "
            "torch.optim.Adam / AdamW. `step` counts from 1 and sets the bias corrections. With grad_scale "
            "(a 0-d array, read when the kernel runs), the gradient is read as grad * grad_scale: gradient "
            "clipping fused into the update (one pass over the gradients saved).")
    .inout("param", "(*)")
    .inout("exp_avg", "(*)")
    .inout("exp_avg_sq", "(*)")
    .optional_inout("max_exp_avg_sq", "(*)")
    .input("grad", "(*)")
    .optional_input("grad_scale", "()")
    .real("lr", std::nullopt, "learning rate")
    .integer("step", std::nullopt, "the step number, from 1")
    .real("beta1", 0.9, "decay of the first moment")
    .real("beta2", 0.999, "decay of the second moment")
    .real("eps", 1e-8, "added to the denominator")
    .real("weight_decay", 0.0, "L2 penalty (Adam) or decoupled decay (AdamW)")
    .flag("decoupled", false, "AdamW: decay the weights directly, not through the gradient")
    .flag("amsgrad", false, "use the running maximum of exp_avg_sq (needs max_exp_avg_sq)")
    .check([](const Call& c) {
      if (c.integer("step") < 1) c.fail("step must be >= 1, got " + std::to_string(c.integer("step")));
      if (!(c.real("beta1") >= 0.0f && c.real("beta1") < 1.0f && c.real("beta2") >= 0.0f &&
            c.real("beta2") < 1.0f))
        c.fail("betas must be in [0, 1), got " + std::to_string(c.real("beta1")) + " and " +
               std::to_string(c.real("beta2")));
      if (c.flag("amsgrad") != (c.f32("max_exp_avg_sq") != nullptr))
        c.fail("amsgrad needs max_exp_avg_sq, and max_exp_avg_sq needs amsgrad");
    })
    .kernel([](const Call& c) {
      const double step = static_cast<double>(c.integer("step"));
      AdamStep s{};
      s.lr = c.real("lr");
      s.beta1 = c.real("beta1");
      s.beta2 = c.real("beta2");
      s.eps = c.real("eps");
      s.weight_decay = c.real("weight_decay");
      s.decoupled = c.flag("decoupled");
      if (const float* scale = c.f32("grad_scale")) s.grad_scale = *scale;
      s.step_size = static_cast<float>(s.lr / (1.0 - std::pow(double(s.beta1), step)));
      s.bias2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(double(s.beta2), step)));
      PYENGINE_DISPATCH(adam_update)(c.f32("param"), c.f32("exp_avg"), c.f32("exp_avg_sq"),
                                     c.f32("max_exp_avg_sq"), c.f32("grad"), c.dim("*"), s);
    });

}  // namespace
}  // namespace pyengine
