// Declarations of softmax and log-softmax over the last axis (see core/registry.h).
#include "core/dispatch.h"
#include "core/kernels.h"
#include "core/registry.h"

namespace pyengine {
namespace {

using registry::Call;

#define PYENGINE_ROW_OP(name, doc)                                                                   \
  PYENGINE_OP(#name "_forward", "softmax", doc)                                                      \
      .output("y", "(*, cols)")                                                                      \
      .input("x", "(*, cols)")                                                                       \
      .nonempty("cols")                                                                              \
      .may_alias("y", "x")                                                                           \
      .kernel([](const Call& c) {                                                                    \
        PYENGINE_DISPATCH(name##_forward)(c.f32("y"), c.f32("x"), c.dim("*"), c.dim("cols"));        \
      });                                                                                            \
  PYENGINE_OP(#name "_backward", "softmax", "Gradient of " #name "_forward from its output y.")     \
      .grad("dx", "(*, cols)")                                                                       \
      .grad_input("dy", "(*, cols)")                                                                 \
      .input("y", "(*, cols)")                                                                       \
      .nonempty("cols")                                                                              \
      .kernel([](const Call& c) {                                                                    \
        PYENGINE_DISPATCH(name##_backward)(c.f32("dx"), c.f32("dy"), c.f32("y"), c.dim("*"), c.dim("cols")); \
      })

PYENGINE_ROW_OP(softmax, "Softmax over the last axis.");
PYENGINE_ROW_OP(log_softmax, "Log-softmax over the last axis.");

}  // namespace
}  // namespace pyengine
