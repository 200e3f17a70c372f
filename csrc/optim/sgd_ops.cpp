// Declaration of the SGD update (see core/registry.h).
#include "core/dispatch.h"
#include "core/kernels.h"
#include "core/registry.h"

namespace pyengine {
namespace {

using registry::Call;

PYENGINE_OP("sgd_update", "optim",
            "One SGD step in place, PyTorch's rule: g = grad + weight_decay * param; buf = first_step ? g : "
            "momentum * buf + (1 - dampening) * g; g = nesterov ? g + momentum * buf : buf (when momentum "
            "!= 0); param -= lr * g.")
    .inout("param", "(*)")
    .optional_inout("momentum_buffer", "(*)")
    .input("grad", "(*)")
    .real("lr", std::nullopt, "learning rate")
    .real("momentum", 0.0, "momentum factor")
    .real("dampening", 0.0, "dampening of the momentum")
    .real("weight_decay", 0.0, "L2 penalty")
    .flag("nesterov", false, "Nesterov momentum")
    .flag("first_step", false, "the momentum buffer starts as the gradient")
    .check([](const Call& c) {
      if (c.real("momentum") != 0.0f && !c.f32("momentum_buffer"))
        c.fail("momentum = " + std::to_string(c.real("momentum")) + " needs a momentum_buffer");
      if (c.flag("nesterov") && (c.real("momentum") <= 0.0f || c.real("dampening") != 0.0f))
        c.fail("nesterov needs momentum > 0 and dampening = 0");
    })
    .kernel([](const Call& c) {
      float* buffer = c.real("momentum") != 0.0f ? c.f32("momentum_buffer") : nullptr;
      PYENGINE_DISPATCH(sgd_update)(c.f32("param"), buffer, c.f32("grad"), c.dim("*"), c.real("lr"),
                                    c.real("momentum"), c.real("dampening"), c.real("weight_decay"),
                                    c.flag("nesterov"), c.flag("first_step"));
    });

}  // namespace
}  // namespace pyengine
