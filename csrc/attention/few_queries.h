// attention_forward's path for few query rows (decoding with a key/value
// cache); few_queries.cpp says how it works and why.
#pragma once
#include <cstdint>

#include "attention/attention_problem.h"

namespace pyengine {
namespace PYENGINE_KERNEL_NS {

// Query rows up to this many take the few-query path (a decoding step of up
// to 4 new tokens); more take the tiled one.
constexpr int64_t kFewQueries = 4;

// Whether the few-query path serves p: q_len in [1, kFewQueries], a head dim
// of whole vectors, no dropout (decoding has none) and some keys.
bool few_queries_serve(const AttentionProblem& p);

// attention_forward's contract (out and lse as it writes them), for a p that
// few_queries_serve accepts.
void few_queries_forward(float* out,        // (B, H, Tq, D) through o_stride
                         float* lse,        // (B, H, Tq)
                         const float* q,    // (B, H, Tq, D) through q_stride
                         const float* k,    // (B, H, Tk, D) through k_stride
                         const float* v,    // (B, H, Tk, D) through v_stride
                         const float* mask, // additive, through mask_stride, or nullptr
                         const AttentionProblem& p);

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
