// attention_forward for few query rows: a decoding step (one new token, or a
// few, against a cache of L positions) or a cross-attention of few queries.
//
// The tiled kernel (attention.cpp) transposes each key tile and computes
// blocks of 4 query rows, so one decoded token pays for packing the whole
// head's keys and for 3 padding rows: at 1 thread, one token of 4 heads
// (D = 64) over 512 cached positions took 93 us a call. Here, per (batch,
// head):
//   1. scores: each key row is read in place once, its dot product with every
//      query row summed across the lanes (s = R x L);
//   2. one softmax per row over all its scores (exp, max, sum; the log-sum-exp
//      kept for the backward, which is the tiled one);
//   3. each value row is read in place once and added, scaled by each row's
//      probability, into the R output rows held in registers, chunk by chunk
//      of D.
// The scores are R x L floats of scratch, never a tile product, so L can be
// anything. Rows that attend nothing give 0 and lse = +inf, as the tiled path.
#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "attention/few_queries.h"
#include "core/parallel.h"
#include "core/row_ops.h"
#include "core/scratch.h"
#include "core/simd.h"

namespace pyengine {
namespace PYENGINE_KERNEL_NS {
namespace {

using simd::kWidth;
using simd::vfloat;

constexpr float kInf = std::numeric_limits<float>::infinity();
// Vectors of D per output chunk: R x kChunkVecs accumulators (16 of 32
// registers on AVX-512, 8 of 16 below).
constexpr int64_t kChunkVecs = kWidth == 16 ? 4 : 2;

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// s[r * ld + j] = q_r . k_j for R query rows q (R x d, contiguous, already
// scaled) and keys j < keys (rows k_stride apart).
template <int R>
void score_rows(float* s,        // (R, ld)
                int64_t ld,
                const float* q,  // (R, d)
                const float* k,  // (keys, d) rows k_stride apart
                int64_t k_stride, int64_t keys, int64_t d) {
  for (int64_t j = 0; j < keys; ++j) {
    const float* kj = k + j * k_stride;
    vfloat acc[R] = {};
    for (int64_t c = 0; c < d; c += kWidth) {
      const vfloat kv = simd::load(kj + c);
      for (int r = 0; r < R; ++r) acc[r] += simd::load(q + r * d + c) * kv;
    }
    for (int r = 0; r < R; ++r) s[r * ld + j] = simd::hsum(acc[r]);
  }
}

// o_r[c0 .. c0 + NV vectors) = sum over j < keys of p[r * ld + j] * v_j, for
// R rows, each scaled by inv[r] as it is written.
template <int R, int NV>
void weighted_values(float* o,          // (R rows, o_stride apart), columns [c0, c0 + NV * kWidth)
                     int64_t o_stride,
                     const float* p,    // (R, ld) unnormalized probabilities
                     int64_t ld,
                     const float* v,    // (keys, d) rows v_stride apart, from column c0
                     int64_t v_stride, int64_t keys, const float* inv) {
  vfloat acc[R][NV] = {};
  for (int64_t j = 0; j < keys; ++j) {
    const float* vj = v + j * v_stride;
    vfloat vv[NV];
    for (int u = 0; u < NV; ++u) vv[u] = simd::load(vj + u * kWidth);
    for (int r = 0; r < R; ++r) {
      const vfloat pr = simd::splat(p[r * ld + j]);
      for (int u = 0; u < NV; ++u) acc[r][u] += pr * vv[u];
    }
  }
  for (int r = 0; r < R; ++r) {
    const vfloat scale = simd::splat(inv[r]);
    for (int u = 0; u < NV; ++u) simd::store(o + r * o_stride + u * kWidth, acc[r][u] * scale);
  }
}

template <int R>
void weighted_chunk(int64_t vecs, float* o, int64_t o_stride, const float* p, int64_t ld, const float* v,
                    int64_t v_stride, int64_t keys, const float* inv) {
  switch (vecs) {
    case 1: return weighted_values<R, 1>(o, o_stride, p, ld, v, v_stride, keys, inv);
    case 2: return weighted_values<R, 2>(o, o_stride, p, ld, v, v_stride, keys, inv);
#if defined(__AVX512F__)
    case 3: return weighted_values<R, 3>(o, o_stride, p, ld, v, v_stride, keys, inv);
    case 4: return weighted_values<R, 4>(o, o_stride, p, ld, v, v_stride, keys, inv);
#endif
  }
}

// A row's softmax numerators over its `valid` scores s[0, valid) (the mask
// added already), in place: s = exp(s - max), zero from valid to padded.
// Returns the row's (max, sum); sum 0 when it attends nothing.
std::pair<float, float> exp_row(float* s, int64_t valid, int64_t padded) {
  std::fill(s + valid, s + padded, 0.0f);
  const float top = valid > 0 ? row::max(s, valid) : -kInf;
  if (top == -kInf) {
    std::fill(s, s + valid, 0.0f);
    return {top, 0.0f};
  }
  return {top, row::exp_shifted(s, s, valid, top)};
}

template <int R>
void head_rows(float* out, float* lse, const float* q, const float* k, const float* v, const float* mask,
               const AttentionProblem& p, int64_t b, int64_t h, float* q_rows, float* s, int64_t ld) {
  const int64_t d = p.head_dim, L = p.kv_len;
  for (int r = 0; r < R; ++r) {  // the scaled query rows, contiguous
    const float* src = q + b * p.q_stride[0] + h * p.q_stride[1] + r * p.q_stride[2];
    for (int64_t c = 0; c < d; ++c) q_rows[r * d + c] = src[c] * p.scale;
  }
  const float* kh = k + b * p.k_stride[0] + h * p.k_stride[1];
  const float* vh = v + b * p.v_stride[0] + h * p.v_stride[1];
  score_rows<R>(s, ld, q_rows, kh, p.k_stride[2], L, d);
  float inv[R];
  int64_t keys = 0;  // the most keys any row attends
  for (int r = 0; r < R; ++r) {
    const int64_t valid = p.causal ? std::clamp<int64_t>(r + p.causal_offset() + 1, 0, L) : L;
    float* row = s + r * ld;
    if (mask) {
      const int64_t* ms = p.mask_stride;
      const float* m = mask + b * ms[0] + h * ms[1] + r * ms[2];
      for (int64_t j = 0; j < valid; ++j) row[j] += m[j * ms[3]];
    }
    const auto [top, sum] = exp_row(row, valid, ld);
    float& row_lse = lse[(b * p.heads + h) * p.q_len + r];
    row_lse = sum == 0.0f ? kInf : top + std::log(sum);
    inv[r] = sum == 0.0f ? 0.0f : 1.0f / sum;  // attends nothing: output 0, as PyTorch
    keys = std::max(keys, valid);
  }
  float* oh = out + b * p.o_stride[0] + h * p.o_stride[1];
  for (int64_t c0 = 0; c0 < d; c0 += kChunkVecs * kWidth) {
    const int64_t vecs = std::min<int64_t>(kChunkVecs, (d - c0) / kWidth);
    weighted_chunk<R>(vecs, oh + c0, p.o_stride[2], s, ld, vh + c0, p.v_stride[2], keys, inv);
  }
}

}  // namespace

bool few_queries_serve(const AttentionProblem& p) {
  return p.q_len >= 1 && p.q_len <= kFewQueries && p.head_dim % kWidth == 0 && p.dropout_p == 0.0f &&
         p.kv_len >= 1;
}

void few_queries_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                         const float* mask, const AttentionProblem& p) {
  const int64_t heads = p.batch * p.heads, ld = round_up(p.kv_len, kWidth);
  const double work = 4.0 * heads * p.q_len * p.kv_len * p.head_dim;
  const bool parallel = work >= PYENGINE_PARALLEL_MIN_WORK && !in_parallel_region();
  parallel_for(parallel, heads, [&](int64_t bh) {
    ScratchFrame frame;
    float* q_rows = frame.floats(static_cast<size_t>(p.q_len * p.head_dim));
    float* s = frame.floats(static_cast<size_t>(p.q_len * ld));
    const int64_t b = bh / p.heads, h = bh % p.heads;
    switch (p.q_len) {
      case 1: return head_rows<1>(out, lse, q, k, v, mask, p, b, h, q_rows, s, ld);
      case 2: return head_rows<2>(out, lse, q, k, v, mask, p, b, h, q_rows, s, ld);
      case 3: return head_rows<3>(out, lse, q, k, v, mask, p, b, h, q_rows, s, ld);
      default: return head_rows<4>(out, lse, q, k, v, mask, p, b, h, q_rows, s, ld);
    }
  });
}

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
