// Declarations of the embedding lookup (see core/registry.h).
#include <string>
#include <type_traits>

#include "core/dispatch.h"
#include "core/kernels.h"
#include "core/registry.h"

namespace pyengine {
namespace {

using registry::Call;
using registry::DType;

// Every index is in [0, vocab): read before the kernel touches a row.
template <typename Index>
void check_indices_of(const Call& c, const Index* idx) {
  const int64_t rows = c.dim("*"), vocab = c.dim("vocab");
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t v = idx[r];
    if (v < 0 || v >= vocab)
      c.fail("idx[" + std::to_string(r) + "] = " + std::to_string(v) + " is out of range for " +
             std::to_string(vocab) + " embeddings (valid: 0 .. " + std::to_string(vocab - 1) + ")");
  }
}

void check_indices(const Call& c) {
  if (c.is_int32("idx")) check_indices_of(c, static_cast<const int32_t*>(c.data("idx")));
  else check_indices_of(c, static_cast<const int64_t*>(c.data("idx")));
}

// Calls fn(idx) with the index array at its own type.
template <typename Fn>
void with_indices(const Call& c, Fn fn) {
  if (c.is_int32("idx")) fn(static_cast<const int32_t*>(c.data("idx")));
  else fn(static_cast<const int64_t*>(c.data("idx")));
}

// `rows` (out, or dout) must be idx's shape plus dim: checked here so that a
// mismatch names idx's shape, whichever of the two is wrong.
void rows_follow_idx(registry::Resolution& r, const char* rows) {
  if (!r.given(rows) || !r.given("idx") || !r.given("weight")) return;
  registry::Shape want = r.shape("idx");
  want.push_back(r.dim("dim"));
  if (r.shape(rows) != want)
    r.fail(registry::cat("'", rows, "' has shape ", registry::shape_str(r.shape(rows)), ", expected ",
                         registry::shape_str(want), " for 'idx' with shape ", registry::shape_str(r.shape("idx")),
                         " and 'weight' with shape ", registry::shape_str(r.shape("weight"))));
}

template <typename Index>
using Lookup = void (*)(float*, const float*, const Index*, int64_t, int64_t, int64_t);
template <typename Ptr>
using IndexOf = std::remove_cv_t<std::remove_pointer_t<Ptr>>;

PYENGINE_OP("embedding_forward", "embedding",
            "Embedding lookup, torch.nn.functional.embedding: out[..., :] = weight[idx[...], :]; every index "
            "must be in [0, vocab).")
    .output("out", "(*, dim)")
    .input("weight", "(vocab, dim)")
    .input("idx", "(*)", DType::index)
    .nonempty("vocab")
    .shape_rule([](registry::Resolution& r) { rows_follow_idx(r, "out"); })
    .check(check_indices)
    .kernel([](const Call& c) {
      with_indices(c, [&](auto idx) {
        PYENGINE_DISPATCH_AS(Lookup<IndexOf<decltype(idx)>>, embedding_forward)(
            c.f32("out"), c.f32("weight"), idx, c.dim("*"), c.dim("vocab"), c.dim("dim"));
      });
    });

PYENGINE_OP("embedding_backward", "embedding",
            "Gradient of embedding_forward: dweight[idx[r], :] += dout[r, :], repeated indices summed in row "
            "order (the same result for any thread count).")
    .grad("dweight", "(vocab, dim)")
    .grad_input("dout", "(*, dim)")
    .input("weight", "(vocab, dim)")  // only its shape is read (the size of dweight to allocate)
    .input("idx", "(*)", DType::index)
    .nonempty("vocab")
    .shape_rule([](registry::Resolution& r) { rows_follow_idx(r, "dout"); })
    .check(check_indices)
    .kernel([](const Call& c) {
      with_indices(c, [&](auto idx) {
        PYENGINE_DISPATCH_AS(Lookup<IndexOf<decltype(idx)>>, embedding_backward)(
            c.f32("dweight"), c.f32("dout"), idx, c.dim("*"), c.dim("vocab"), c.dim("dim"));
      });
    });

}  // namespace
}  // namespace pyengine
