// Declarations of the matmul family (see core/registry.h), and the FMA probe.
#include <pybind11/pybind11.h>

#include <vector>

#include "core/dispatch.h"
#include "core/kernels.h"
#include "core/registry.h"

namespace pyengine {

const registry::EnumDecl& registry::activation_enum() {
  static const registry::EnumDecl& values = registry::declare_enum(
      "Activation", std::vector<std::string>(std::begin(kActivationNames), std::end(kActivationNames)));
  return values;
}

namespace {

using registry::Call;
using registry::Resolution;
using registry::Shape;

// C[i] = op(A[i]) . op(B[i]): a (..., m, k) or (..., k, m) if trans_a, b
// (..., k, n) or (..., n, k) if trans_b; either may be 2-D to be shared
// across the other's batch dims. `c` names the product (or its gradient).
void matmul_rule(Resolution& r, const char* c, const char* bias) {
  const Shape& sa = r.shape("a");
  const Shape& sb = r.shape("b");
  for (const auto& [name, s] : {std::pair<const char*, const Shape&>{"a", sa}, {"b", sb}})
    if (s.size() < 2)
      r.fail(std::string("'") + name + "' must have at least 2 dims, got shape " + registry::shape_str(s));
  const bool trans_a = r.attr("trans_a").flag, trans_b = r.attr("trans_b").flag;
  const Shape batch_a(sa.begin(), sa.end() - 2), batch_b(sb.begin(), sb.end() - 2);
  if (!batch_a.empty() && !batch_b.empty() && batch_a != batch_b)
    r.fail("batch dims of a " + registry::shape_str(sa) + " and b " + registry::shape_str(sb) +
           " differ (one operand may be 2-D to share it across the batch)");
  const size_t ra = sa.size(), rb = sb.size();
  const int64_t m = trans_a ? sa[ra - 1] : sa[ra - 2], ka = trans_a ? sa[ra - 2] : sa[ra - 1];
  const int64_t kb = trans_b ? sb[rb - 1] : sb[rb - 2], n = trans_b ? sb[rb - 2] : sb[rb - 1];
  if (ka != kb)
    r.fail("inner dims differ: a " + registry::shape_str(sa) + (trans_a ? " (transposed)" : "") + " and b " +
           registry::shape_str(sb) + (trans_b ? " (transposed)" : "") + " give k = " + std::to_string(ka) +
           " vs " + std::to_string(kb));
  const Shape& batch = batch_a.empty() ? batch_b : batch_a;
  int64_t count = 1;
  for (int64_t d : batch) count *= d;
  Shape c_shape = batch;
  c_shape.push_back(m);
  c_shape.push_back(n);
  r.bind("batch", count);
  r.bind("m", m);
  r.bind("n", n);
  r.bind("k", ka);
  r.expect(c, c_shape);
  if (r.op().arg_index("preact") >= 0) r.expect("preact", c_shape);
  r.expect(bias, Shape{n});
}

// Operand strides across the batch: 0 shares a 2-D operand.
int64_t batch_stride(const Call& call, const char* arg, int64_t rows, int64_t cols) {
  return call.shape(arg).size() == 2 ? 0 : rows * cols;
}

PYENGINE_OP("matmul_forward", "matmul",
            "c = activation(op(a) . op(b) + bias), op(x) = x^T when flagged; the bias and the activation "
            "are applied in the GEMM's epilogue, and `preact` (when given) receives the value before the "
            "activation, which the activation's backward needs.")
    .output("c")                // (..., m, n)
    .optional_output("preact")  // (..., m, n)
    .input("a")                 // (..., m, k), or (..., k, m) if trans_a
    .input("b")                 // (..., k, n), or (..., n, k) if trans_b
    .optional_input("bias")     // (n,)
    .flag("trans_a", false, "use a^T")
    .flag("trans_b", false, "use b^T")
    .code("activation", registry::activation_enum(), 0, "applied in the epilogue")
    .dims({"batch", "m", "n", "k"})
    .work({"batch", "m", "n", "k"})
    .shape_rule([](Resolution& r) { matmul_rule(r, "c", "bias"); })
    .kernel([](const Call& c) {
      const int64_t m = c.dim("m"), n = c.dim("n"), k = c.dim("k");
      PYENGINE_DISPATCH(matmul_forward)(c.f32("c"), c.f32("preact"), c.f32("a"), c.f32("b"), c.f32("bias"),
                                        static_cast<Activation>(c.code("activation")), c.dim("batch"), m, n,
                                        k, c.flag("trans_a"), c.flag("trans_b"), batch_stride(c, "a", m, k),
                                        batch_stride(c, "b", k, n));
    });

PYENGINE_OP("matmul_backward", "matmul",
            "Gradients of matmul_forward (without activation): da += dc . op(b)^T, db += op(a)^T . dc, "
            "dbias += column sums of dc; with accumulate=False each is overwritten instead (with da = db, "
            "x @ x, db adds into what da wrote).")
    .optional_grad("da")     // like a
    .optional_grad("db")     // like b
    .optional_grad("dbias")  // (n,)
    .grad_input("dc")        // (..., m, n)
    .input("a")
    .input("b")
    .flag("trans_a", false, "use a^T")
    .flag("trans_b", false, "use b^T")
    .flag("accumulate", true, "add into the gradients (False: overwrite them)")
    .may_alias("da", "db")  // x @ x: both gradients accumulate into x's, one after the other
    .dims({"batch", "m", "n", "k"})
    .work({"batch", "m", "n", "k"})
    .shape_rule([](Resolution& r) {
      matmul_rule(r, "dc", "dbias");
      r.expect("da", r.shape("a"));
      r.expect("db", r.shape("b"));
    })
    .kernel([](const Call& c) {
      const int64_t m = c.dim("m"), n = c.dim("n"), k = c.dim("k");
      PYENGINE_DISPATCH(matmul_backward)(c.f32("da"), c.f32("db"), c.f32("dbias"), c.f32("dc"), c.f32("a"),
                                         c.f32("b"), c.dim("batch"), m, n, k, c.flag("trans_a"),
                                         c.flag("trans_b"), batch_stride(c, "a", m, k),
                                         batch_stride(c, "b", k, n), c.flag("accumulate"));
    });

}  // namespace
}  // namespace pyengine
