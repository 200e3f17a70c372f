// Declarations of the cross-entropy loss (see core/registry.h).
#include "core/dispatch.h"
#include "core/kernels.h"
#include "core/registry.h"

#include <type_traits>

namespace pyengine {
namespace {

using registry::Call;
using registry::DType;

// Every target is a class index or ignore_index (read before the kernel runs).
template <typename Index>
void check_targets_of(const Call& c, const Index* t) {
  const int64_t rows = c.dim("rows"), classes = c.dim("classes"), ignore = c.integer("ignore_index");
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t v = t[r];
    if (v != ignore && (v < 0 || v >= classes))
      c.fail("target[" + std::to_string(r) + "] = " + std::to_string(v) + " is out of range for " +
             std::to_string(classes) + " classes (ignore_index = " + std::to_string(ignore) + ")");
  }
}

void check_targets(const Call& c) {
  if (c.is_int32("target")) check_targets_of(c, static_cast<const int32_t*>(c.data("target")));
  else check_targets_of(c, static_cast<const int64_t*>(c.data("target")));
}

// Calls fn(targets) with the target array at its own index type.
template <typename Fn>
void with_targets(const Call& c, Fn fn) {
  if (c.is_int32("target")) fn(static_cast<const int32_t*>(c.data("target")));
  else fn(static_cast<const int64_t*>(c.data("target")));
}

// The arguments both kernels share: scores (rows, classes), target (rows,).
registry::OpBuilder& class_targets(registry::OpBuilder& op) {
  return op.input("target", "(rows)", DType::index)
      .integer("ignore_index", -100, "rows with this target do not count")
      .nonempty("classes")
      .check(check_targets);
}

registry::OpBuilder& loss_inputs(registry::OpBuilder& op) {
  return op.input("logits", "(rows, classes)").apply(class_targets);
}

using Fwd32 = void (*)(float*, const float*, const int32_t*, int64_t, int64_t, int64_t);
using Fwd64 = void (*)(float*, const float*, const int64_t*, int64_t, int64_t, int64_t);
using Bwd32 = void (*)(float*, const float*, const float*, const int32_t*, int64_t, int64_t, int64_t, bool);
using Bwd64 = void (*)(float*, const float*, const float*, const int64_t*, int64_t, int64_t, int64_t, bool);

// The backward may write its gradient over the logits only when it overwrites: accumulating into
// them would add the gradient to the logits it reads.
void check_backward(const Call& c) {
  check_targets(c);
  if (c.flag("accumulate") && c.data("dlogits") == c.data("logits"))
    c.fail("dlogits is logits itself: that needs accumulate=False (the gradient then overwrites them)");
}

PYENGINE_OP("cross_entropy_forward", "loss",
            "Mean cross-entropy of logits against integer targets over the rows whose target is not "
            "ignore_index (NaN when every row is ignored, as in PyTorch).")
    .output("loss", "()")
    .apply(loss_inputs)
    .kernel([](const Call& c) {
      with_targets(c, [&](auto target) {
        using Kernel = std::conditional_t<std::is_same_v<decltype(target), const int32_t*>, Fwd32, Fwd64>;
        PYENGINE_DISPATCH_AS(Kernel, cross_entropy_forward)(c.f32("loss"), c.f32("logits"), target, c.dim("rows"),
                                                            c.dim("classes"), c.integer("ignore_index"));
      });
    });

PYENGINE_OP("cross_entropy_backward", "loss",
            "Fused softmax + loss gradient: dlogits += dloss * (softmax(logits) - onehot) / count; with "
            "accumulate=False, dlogits = that (0 in ignored rows), and dlogits may be logits itself.")
    .grad("dlogits", "(rows, classes)")
    .grad_input("dloss", "()")
    .apply(loss_inputs)
    .flag("accumulate", true, "add into dlogits (False: overwrite them; they may then be logits)")
    .may_alias("dlogits", "logits")
    .check(check_backward)
    .kernel([](const Call& c) {
      with_targets(c, [&](auto target) {
        using Kernel = std::conditional_t<std::is_same_v<decltype(target), const int32_t*>, Bwd32, Bwd64>;
        PYENGINE_DISPATCH_AS(Kernel, cross_entropy_backward)(c.f32("dlogits"), c.f32("dloss"), c.f32("logits"),
                                                             target, c.dim("rows"), c.dim("classes"),
                                                             c.integer("ignore_index"), c.flag("accumulate"));
      });
    });

using Nll32 = void (*)(float*, const float*, const int32_t*, int64_t, int64_t, int64_t);
using Nll64 = void (*)(float*, const float*, const int64_t*, int64_t, int64_t, int64_t);

PYENGINE_OP("nll_loss_forward", "loss",
            "Mean negative log-likelihood of log-probabilities at the integer targets, over the rows whose "
            "target is not ignore_index (NaN when every row is ignored, as in PyTorch).")
    .output("loss", "()")
    .input("logp", "(rows, classes)")
    .apply(class_targets)
    .kernel([](const Call& c) {
      with_targets(c, [&](auto target) {
        using Kernel = std::conditional_t<std::is_same_v<decltype(target), const int32_t*>, Nll32, Nll64>;
        PYENGINE_DISPATCH_AS(Kernel, nll_loss_forward)(c.f32("loss"), c.f32("logp"), target, c.dim("rows"),
                                                       c.dim("classes"), c.integer("ignore_index"));
      });
    });

PYENGINE_OP("nll_loss_backward", "loss", "Gradient of nll_loss_forward: dlogp[r, target[r]] += -dloss / count.")
    .grad("dlogp", "(rows, classes)")
    .grad_input("dloss", "()")
    .input("logp", "(rows, classes)")  // only its shape is read (PyTorch's backward takes it too)
    .apply(class_targets)
    .kernel([](const Call& c) {
      with_targets(c, [&](auto target) {
        using Kernel = std::conditional_t<std::is_same_v<decltype(target), const int32_t*>, Nll32, Nll64>;
        PYENGINE_DISPATCH_AS(Kernel, nll_loss_backward)(c.f32("dlogp"), c.f32("dloss"), target, c.dim("rows"),
                                                        c.dim("classes"), c.integer("ignore_index"));
      });
    });

}  // namespace
}  // namespace pyengine
