// Declarations of fused attention (see core/registry.h and
// attention/attention_problem.h): the (B, H, T, D) layout of PyTorch's
// scaled_dot_product_attention with an optional broadcast mask, and the fused
// QKV projection layout (B, T, 3, H, D) -> (B, T, H, D). Both run the same
// kernels through strides.
#include <string>
#include <vector>

#include "core/dispatch.h"
#include "core/kernels.h"
#include "core/registry.h"

namespace pyengine {
namespace {

using registry::Call;
using registry::DType;
using registry::Resolution;
using registry::Shape;

constexpr int64_t kMaxHeadDim = 256;

// The mask broadcasts to (B, H, Tq, Tk) (Tq and Tk named by the op): at
// most 4 dims, each 1 or the size.
void mask_rule(Resolution& r, const char* q_dim = "Tq", const char* k_dim = "Tk") {
  if (!r.given("mask")) {
    if (r.op().arg_index("dmask") >= 0 && r.given("dmask")) r.fail("'dmask' is given without a 'mask'");
    return;
  }
  const Shape& m = r.shape("mask");
  const Shape full{r.dim("B"), r.dim("H"), r.dim(q_dim), r.dim(k_dim)};
  bool ok = m.size() <= 4;
  for (size_t i = 0; ok && i < m.size(); ++i) {
    const int64_t want = full[4 - m.size() + i];
    ok = m[i] == want || m[i] == 1;
  }
  if (!ok)
    r.fail("'mask' has shape " + registry::shape_str(m) + ", which does not broadcast to (B, H, Tq, Tk) = " +
           registry::shape_str(full));
  r.expect("mask", m);
  if (r.op().arg_index("dmask") >= 0) r.expect("dmask", m);
}

void check_options(const Call& c) {
  const int64_t d = c.dim("D");
  if (d > kMaxHeadDim)
    c.fail("head dim D = " + std::to_string(d) + " is above the largest supported, " +
           std::to_string(kMaxHeadDim));
  const float p = c.real("dropout_p");
  if (!(p >= 0.0f && p < 1.0f)) c.fail("dropout_p must be in [0, 1), got " + std::to_string(p));
  if (p > 0.0f && !c.data("rng")) c.fail("dropout_p > 0 needs 'rng', the (seed, stream) pair");
}

// The problem, all but the layout strides.
AttentionProblem problem(const Call& c, int64_t batch, int64_t heads, int64_t q_len, int64_t kv_len) {
  AttentionProblem p{};
  p.batch = batch, p.heads = heads, p.q_len = q_len, p.kv_len = kv_len, p.head_dim = c.dim("D");
  p.scale = c.real("scale");
  p.causal = c.flag("is_causal");
  p.dropout_p = c.real("dropout_p");
  if (const void* rng = c.data("rng")) {
    const bool narrow = c.is_int32("rng");
    const int64_t seed = narrow ? static_cast<const int32_t*>(rng)[0] : static_cast<const int64_t*>(rng)[0];
    const int64_t stream = narrow ? static_cast<const int32_t*>(rng)[1] : static_cast<const int64_t*>(rng)[1];
    p.seed = static_cast<uint64_t>(seed), p.stream = static_cast<uint64_t>(stream);
  }
  return p;
}

void set_strides(int64_t* s, int64_t b, int64_t h, int64_t t) { s[0] = b, s[1] = h, s[2] = t; }

// The mask's element strides over (B, H, Tq, Tk), 0 along a broadcast dim.
void set_mask_strides(const Call& c, AttentionProblem& p) {
  if (!c.data("mask")) return;
  const Shape& m = c.shape("mask");
  int64_t stride = 1;
  for (size_t i = 0; i < m.size(); ++i) {
    const size_t src = m.size() - 1 - i;
    p.mask_stride[3 - i] = m[src] == 1 ? 0 : stride;
    stride *= m[src];
  }
}

// (B, H, T, D) contiguous strides for q, k, v, out; the mask's, 0 where broadcast.
AttentionProblem bhtd_problem(const Call& c) {
  const int64_t B = c.dim("B"), H = c.dim("H"), Tq = c.dim("Tq"), Tk = c.dim("Tk"), D = c.dim("D");
  AttentionProblem p = problem(c, B, H, Tq, Tk);
  set_strides(p.q_stride, H * Tq * D, Tq * D, D);
  set_strides(p.k_stride, H * Tk * D, Tk * D, D);
  set_strides(p.v_stride, H * Tk * D, Tk * D, D);
  set_strides(p.o_stride, H * Tq * D, Tq * D, D);
  set_mask_strides(c, p);
  return p;
}

// qkv (B, T, 3, H, D) read in place, out (B, T, H, D).
AttentionProblem qkv_problem(const Call& c) {
  const int64_t B = c.dim("B"), T = c.dim("T"), H = c.dim("H"), D = c.dim("D");
  AttentionProblem p = problem(c, B, H, T, T);
  for (int64_t* s : {p.q_stride, p.k_stride, p.v_stride}) set_strides(s, T * 3 * H * D, D, 3 * H * D);
  set_strides(p.o_stride, T * H * D, D, H * D);
  set_mask_strides(c, p);
  return p;
}

registry::OpBuilder& attention_options(registry::OpBuilder& op, bool causal_default) {
  return op.optional_input("rng", "(two)", DType::index)
      .flag("is_causal", causal_default, "query i attends key j iff j <= i + (Tk - Tq), aligned to the end")
      .real("scale", std::nullopt, "scores = scale * q . k (PyTorch's default is 1 / sqrt(D))")
      .real("dropout_p", 0.0, "probability of zeroing an attention probability; needs rng")
      .nonempty("D");
}

void bhtd_rule(Resolution& r);
void qkv_rule(Resolution& r);

// The options and checks a pair shares, declared once for both kernels.
registry::OpBuilder& bhtd_options(registry::OpBuilder& op) {
  return attention_options(op, false).work({"B", "H", "Tq", "Tk", "D"}).shape_rule(bhtd_rule).check(check_options);
}

registry::OpBuilder& qkv_options(registry::OpBuilder& op) {
  return attention_options(op, true).work({"B", "T", "H", "D"}).shape_rule(qkv_rule).check(check_options);
}

void check_rng_and_three(Resolution& r) {
  if (r.given("rng") && r.shape("rng") != Shape{2})
    r.fail("'rng' has shape " + registry::shape_str(r.shape("rng")) + ", expected (2,): (seed, stream)");
  if (r.op().find_dim("three") >= 0 && r.dim("three") != 3)
    r.fail("'qkv' has shape " + registry::shape_str(r.shape("qkv")) + ": its third dim must be 3 (q, k, v)");
}

void bhtd_rule(Resolution& r) {
  mask_rule(r);
  check_rng_and_three(r);
}

void qkv_rule(Resolution& r) {
  mask_rule(r, "T", "T");  // the fused layout: Tq = Tk = T
  check_rng_and_three(r);
}

PYENGINE_OP("attention_forward", "attention",
            "Fused attention: out = softmax(scale q k^T + mask) v per (batch, head), with causal masking "
            "aligned to the end and dropout on the probabilities; lse is each row's log-sum-exp (+inf for a "
            "row that attends nothing, whose output is 0).")
    .output("out", "(B, H, Tq, D)")
    .output("lse", "(B, H, Tq)")
    .input("q", "(B, H, Tq, D)")
    .input("k", "(B, H, Tk, D)")
    .input("v", "(B, H, Tk, D)")
    .optional_input("mask")  // additive, broadcast to (B, H, Tq, Tk)
    .apply(bhtd_options)
    .kernel([](const Call& c) {
      const AttentionProblem p = bhtd_problem(c);
      PYENGINE_DISPATCH(attention_forward)(c.f32("out"), c.f32("lse"), c.f32("q"), c.f32("k"), c.f32("v"),
                                           c.f32("mask"), p);
    });

PYENGINE_OP("attention_backward", "attention",
            "Gradients of attention_forward (the probabilities recomputed from lse): dq, dk, dv and the "
            "additive mask's dmask (summed over its broadcast dims) accumulate.")
    .optional_grad("dq", "(B, H, Tq, D)")
    .optional_grad("dk", "(B, H, Tk, D)")
    .optional_grad("dv", "(B, H, Tk, D)")
    .optional_grad("dmask")  // like mask
    .grad_input("dout", "(B, H, Tq, D)")
    .input("q", "(B, H, Tq, D)")
    .input("k", "(B, H, Tk, D)")
    .input("v", "(B, H, Tk, D)")
    .optional_input("mask")
    .apply(bhtd_options)
    .input("out", "(B, H, Tq, D)")
    .input("lse", "(B, H, Tq)")
    .kernel([](const Call& c) {
      const AttentionProblem p = bhtd_problem(c);
      PYENGINE_DISPATCH(attention_backward)(c.f32("dq"), c.f32("dk"), c.f32("dv"), c.f32("dmask"),
                                            c.f32("dout"), c.f32("q"), c.f32("k"), c.f32("v"), c.f32("mask"),
                                            c.f32("out"), c.f32("lse"), p);
    });

PYENGINE_OP("qkv_attention_forward", "attention",
            "Fused attention reading q, k, v from a fused QKV projection qkv (B, T, 3, H, D) in place and "
            "writing out (B, T, H, D): no transposes around it. Causal by default; lse as attention_forward.")
    .output("out", "(B, T, H, D)")
    .output("lse", "(B, H, T)")
    .input("qkv", "(B, T, three, H, D)")
    .optional_input("mask")  // additive, broadcast to (B, H, T, T)
    .apply(qkv_options)
    .kernel([](const Call& c) {
      const AttentionProblem p = qkv_problem(c);
      const int64_t hd = c.dim("H") * c.dim("D");
      const float* qkv = c.f32("qkv");
      PYENGINE_DISPATCH(attention_forward)(c.f32("out"), c.f32("lse"), qkv, qkv + hd, qkv + 2 * hd,
                                           c.f32("mask"), p);
    });

PYENGINE_OP("qkv_attention_backward", "attention",
            "Gradient of qkv_attention_forward: dqkv (B, T, 3, H, D) accumulates dq, dk and dv in place.")
    .optional_grad("dqkv", "(B, T, three, H, D)")
    .optional_grad("dmask")  // like mask
    .grad_input("dout", "(B, T, H, D)")
    .input("qkv", "(B, T, three, H, D)")
    .optional_input("mask")
    .apply(qkv_options)
    .input("out", "(B, T, H, D)")
    .input("lse", "(B, H, T)")
    .kernel([](const Call& c) {
      const AttentionProblem p = qkv_problem(c);
      const int64_t hd = c.dim("H") * c.dim("D");
      float* dqkv = c.f32("dqkv");
      float* dmask = c.f32("dmask");
      if (!dqkv && !dmask) return;
      const float* qkv = c.f32("qkv");
      float* dq = dqkv;
      float* dk = dqkv ? dqkv + hd : nullptr;
      float* dv = dqkv ? dqkv + 2 * hd : nullptr;
      PYENGINE_DISPATCH(attention_backward)(dq, dk, dv, dmask, c.f32("dout"), qkv, qkv + hd, qkv + 2 * hd,
                                            c.f32("mask"), c.f32("out"), c.f32("lse"), p);
    });

// ---------------------------------------------------------------- decoding with a key/value cache

// The caches (B, H, C, D) hold `start` positions; the T new ones make L.
void cached_rule(Resolution& r) {
  if (r.dim("three") != 3)
    r.fail("'qkv' has shape " + registry::shape_str(r.shape("qkv")) + ": its third dim must be 3 (q, k, v)");
  const int64_t start = r.attr("start").integer, steps = r.dim("T");
  const int64_t capacity = r.given("k_cache") ? r.shape("k_cache")[2] : 0;
  if (start < 0) r.fail("start must be >= 0, got " + std::to_string(start));
  if (r.given("k_cache") && start + steps > capacity)
    r.fail("start " + std::to_string(start) + " + " + std::to_string(steps) + " new positions exceed the cache's " +
           std::to_string(capacity));
  r.bind("L", start + steps);
  mask_rule(r, "T", "L");
}

// Appends the new keys and values of qkv (B, T, 3, H, D) at positions
// [start, start + T) of the caches (B, H, C, D).
void append_to_cache(const Call& c, float* cache, int64_t which) {
  const int64_t B = c.dim("B"), T = c.dim("T"), H = c.dim("H"), D = c.dim("D"), C = c.dim("C");
  const int64_t start = c.integer("start");
  const float* qkv = c.f32("qkv");
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) {
        const float* src = qkv + (((b * T + t) * 3 + which) * H + h) * D;
        float* dst = cache + ((b * H + h) * C + start + t) * D;
        for (int64_t d = 0; d < D; ++d) dst[d] = src[d];
      }
}

PYENGINE_OP("cached_attention", "attention",
            "One decoding step of attention with a key/value cache: the keys and values of the T new "
            "positions of qkv (B, T, 3, H, D) are written into k_cache and v_cache (B, H, C, D) at positions "
            "[start, start + T), then their queries attend over the first L = start + T cached positions, "
            "read in place (no copy of the prefix); causal masking aligned to the end, the optional additive "
            "mask broadcast to (B, H, T, L). out (B, T, H, D), as qkv_attention's.")
    .output("out", "(B, T, H, D)")
    .inout("k_cache", "(B, H, C, D)")
    .inout("v_cache", "(B, H, C, D)")
    .input("qkv", "(B, T, three, H, D)")
    .optional_input("mask")  // additive, broadcast to (B, H, T, L)
    .integer("start", std::nullopt, "positions already held by the caches")
    .flag("is_causal", true, "query i attends key j iff j <= i + start")
    .real("scale", std::nullopt, "scores = scale * q . k")
    .dims({"L"})
    .nonempty("D")
    .nonempty("T")
    .work({"B", "H", "T", "L", "D"})
    .shape_rule(cached_rule)
    .check([](const Call& c) {
      if (c.dim("D") > kMaxHeadDim)
        c.fail("head dim D = " + std::to_string(c.dim("D")) + " is above the largest supported, " +
               std::to_string(kMaxHeadDim));
    })
    .kernel([](const Call& c) {
      const int64_t B = c.dim("B"), T = c.dim("T"), H = c.dim("H"), D = c.dim("D"), C = c.dim("C");
      float* k_cache = c.f32("k_cache");
      float* v_cache = c.f32("v_cache");
      append_to_cache(c, k_cache, 1);
      append_to_cache(c, v_cache, 2);
      AttentionProblem p{};
      p.batch = B, p.heads = H, p.q_len = T, p.kv_len = c.dim("L"), p.head_dim = D;
      p.scale = c.real("scale");
      p.causal = c.flag("is_causal");
      set_strides(p.q_stride, T * 3 * H * D, D, 3 * H * D);
      set_strides(p.k_stride, H * C * D, C * D, D);
      set_strides(p.v_stride, H * C * D, C * D, D);
      set_strides(p.o_stride, T * H * D, D, H * D);
      set_mask_strides(c, p);
      std::vector<float> lse(static_cast<size_t>(B * H * T));
      PYENGINE_DISPATCH(attention_forward)(c.f32("out"), lse.data(), c.f32("qkv"), k_cache, v_cache,
                                           c.f32("mask"), p);
    });

}  // namespace
}  // namespace pyengine
