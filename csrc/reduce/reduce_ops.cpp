// Declarations of the reductions (see core/registry.h).
#include "core/dispatch.h"
#include "core/kernels.h"
#include "core/registry.h"

namespace pyengine {
namespace {

using registry::Call;
using registry::Resolution;
using registry::Shape;

// A sum over the contiguous axes [axis_begin, axis_end) of `full` (the
// input's shape, or its gradient's): (outer, reduce, inner). The reduced
// argument has those axes removed, or kept with size 1.
void reduce_rule(Resolution& r, const char* full, const char* reduced) {
  const Shape& s = r.shape(full);
  const int64_t nd = static_cast<int64_t>(s.size());
  const int64_t begin = r.attr("axis_begin").integer, end = r.attr("axis_end").integer;
  if (begin < 0 || end > nd || begin > end)
    r.fail("axes [" + std::to_string(begin) + ", " + std::to_string(end) + ") out of range for shape " +
           registry::shape_str(s));
  int64_t outer = 1, reduce = 1, inner = 1;
  Shape dropped, kept;
  for (int64_t i = 0; i < nd; ++i) {
    if (i < begin) outer *= s[i];
    else if (i < end) reduce *= s[i];
    else inner *= s[i];
    if (i < begin || i >= end) dropped.push_back(s[i]);
    kept.push_back(i < begin || i >= end ? s[i] : 1);
  }
  r.bind("outer", outer);
  r.bind("reduce", reduce);
  r.bind("inner", inner);
  if (!r.given(reduced)) {
    r.expect(reduced, dropped);
    return;
  }
  const Shape& got = r.shape(reduced);
  if (got != dropped && got != kept)
    r.fail("'" + std::string(reduced) + "' has shape " + registry::shape_str(got) + ", expected " +
           registry::shape_str(dropped) + " or " + registry::shape_str(kept) + " for axes [" +
           std::to_string(begin) + ", " + std::to_string(end) + ") of " + registry::shape_str(s));
  r.expect(reduced, got);
}

// The options both kernels share.
registry::OpBuilder& reduce_options(registry::OpBuilder& op) {
  return op.integer("axis_begin", std::nullopt, "first reduced axis")
      .integer("axis_end", std::nullopt, "one past the last reduced axis")
      .real("scale", 1.0, "multiplies the sums (the mean: 1 / count)")
      .dims({"outer", "reduce", "inner"});
}

PYENGINE_OP("sum_forward", "reduce",
            "out = scale * sum of x over the contiguous axes [axis_begin, axis_end) (scale = 1/count gives "
            "the mean); out has those axes removed or kept with size 1.")
    .output("out")
    .input("x")
    .apply(reduce_options)
    .shape_rule([](Resolution& r) { reduce_rule(r, "x", "out"); })
    .kernel([](const Call& c) {
      PYENGINE_DISPATCH(sum_forward)(c.f32("out"), c.f32("x"), c.dim("outer"), c.dim("reduce"), c.dim("inner"),
                                     c.real("scale"));
    });

PYENGINE_OP("sum_backward", "reduce",
            "Gradient of sum_forward: dx += scale * dout, broadcast over the reduced axes.")
    .grad("dx")
    .grad_input("dout")
    .apply(reduce_options)
    .shape_rule([](Resolution& r) { reduce_rule(r, "dx", "dout"); })
    .kernel([](const Call& c) {
      PYENGINE_DISPATCH(sum_backward)(c.f32("dx"), c.f32("dout"), c.dim("outer"), c.dim("reduce"),
                                      c.dim("inner"), c.real("scale"));
    });

}  // namespace
}  // namespace pyengine
