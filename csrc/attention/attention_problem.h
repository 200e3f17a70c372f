// One attention call's geometry, shared by every ISA variant of the
// attention kernels and by their declarations (attention_ops.cpp).
//
// q (batch, heads, q_len, head_dim), k and v (batch, heads, kv_len, head_dim)
// and the output (batch, heads, q_len, head_dim) are read and written through
// element strides over (batch, head, token), the head_dim axis contiguous: the
// (B, H, T, D) layout of PyTorch's scaled_dot_product_attention and the fused
// QKV projection (B, T, 3, H, D) -> (B, T, H, D) are the same kernel. A
// gradient has the layout of the value it belongs to (dq like q, dout like
// out). The optional additive mask is read through strides over (batch,
// head, query, key), 0 along a broadcast dim; its gradient shares them.
#pragma once
#include <cstdint>

namespace pyengine {

struct AttentionProblem {
  int64_t batch, heads, q_len, kv_len, head_dim;
  int64_t q_stride[3], k_stride[3], v_stride[3], o_stride[3];  // (batch, head, token)
  int64_t mask_stride[4];                                      // (batch, head, query, key)
  float scale;      // scores = scale * q . k (+ mask)
  bool causal;      // query i attends key j iff j <= i + (kv_len - q_len)
  float dropout_p;  // 0: no dropout
  uint64_t seed, stream;  // philox key and stream of the dropout mask

  int64_t causal_offset() const { return kv_len - q_len; }
  // Element (b, h, i, j) of the probabilities is kept iff
  // philox::uniform(seed, stream, dropout_index(b, h, i, j)) >= dropout_p.
  uint64_t dropout_index(int64_t b, int64_t h, int64_t i, int64_t j) const {
    return static_cast<uint64_t>(((b * heads + h) * q_len + i) * kv_len + j);
  }
};

}  // namespace pyengine
