// Declarations of dropout and the fused residual + dropout (see
// core/registry.h; the rng input's convention is core/rng_input.h).
#include <string>

#include "core/dispatch.h"
#include "core/kernels.h"
#include "core/registry.h"
#include "core/rng_input.h"

namespace pyengine {
namespace {

using registry::Call;

registry::OpBuilder& dropout_options(registry::OpBuilder& op) {
  return op.apply(rng_input::declare)
      .real("p", 0.5, "probability of an element to be zeroed (rounded to float32)")
      .shape_rule(rng_input::check_shape)
      .check([](const Call& c) {
        if (!(c.real("p") >= 0.0f && c.real("p") <= 1.0f))
          c.fail("dropout probability has to be between 0 and 1, but got " + std::to_string(c.real("p")));
      });
}

PYENGINE_OP("dropout_forward", "dropout",
            "Dropout: y = x * keep / (1 - p), where element e is kept iff philox::uniform(seed, stream, e) >= p "
            "(rng = (seed, stream); see core/rng_input.h).")
    .output("y", "(*)")
    .input("x", "(*)")
    .apply(dropout_options)
    .kernel([](const Call& c) {
      const rng_input::Key key = rng_input::read(c);
      PYENGINE_DISPATCH(dropout_forward)(c.f32("y"), c.f32("x"), key.seed, key.stream, c.dim("*"), c.real("p"));
    });

PYENGINE_OP("dropout_backward", "dropout",
            "Gradient of dropout_forward, the mask regenerated from rng: dx += dy * keep / (1 - p).")
    .grad("dx", "(*)")
    .grad_input("dy", "(*)")
    .apply(dropout_options)
    .kernel([](const Call& c) {
      const rng_input::Key key = rng_input::read(c);
      PYENGINE_DISPATCH(dropout_backward)(c.f32("dx"), c.f32("dy"), key.seed, key.stream, c.dim("*"),
                                          c.real("p"));
    });

PYENGINE_OP("dropout_add_forward", "dropout",
            "y = residual + dropout(x) in one pass (a transformer block's x + dropout(proj)); the mask is "
            "dropout_forward's for the same rng.")
    .output("y", "(*)")
    .input("residual", "(*)")
    .input("x", "(*)")
    .apply(dropout_options)
    .kernel([](const Call& c) {
      const rng_input::Key key = rng_input::read(c);
      PYENGINE_DISPATCH(dropout_add_forward)(c.f32("y"), c.f32("residual"), c.f32("x"), key.seed, key.stream,
                                             c.dim("*"), c.real("p"));
    });

PYENGINE_OP("dropout_add_backward", "dropout",
            "Gradients of dropout_add_forward: dresidual += dy, dx += dy * keep / (1 - p).")
    .optional_grad("dresidual", "(*)")
    .optional_grad("dx", "(*)")
    .grad_input("dy", "(*)")
    .apply(dropout_options)
    .kernel([](const Call& c) {
      const rng_input::Key key = rng_input::read(c);
      PYENGINE_DISPATCH(dropout_add_backward)(c.f32("dresidual"), c.f32("dx"), c.f32("dy"), key.seed,
                                              key.stream, c.dim("*"), c.real("p"));
    });

}  // namespace
}  // namespace pyengine
