// Plain attention, one query row at a time in double: the scores, their
// softmax and the dropout mask are materialized per row from their
// definitions (no tiling, no online softmax), which is what the optimized
// kernels are checked against.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/kernel_list.inc"
#include "core/philox.h"

namespace pyengine {
namespace reference {
namespace {

const float* row_of(const float* base, const int64_t* stride, int64_t b, int64_t h, int64_t t) {
  return base + b * stride[0] + h * stride[1] + t * stride[2];
}

// The probabilities of row (b, h, i) before dropout, and the dropout factor
// of each (0 or 1 / (1 - p)), and the scores' log-sum-exp; false when the
// row attends nothing.
bool probabilities(std::vector<double>& prob, std::vector<double>& keep, double* log_sum_exp,
                   const float* q, const float* k, const float* mask, const AttentionProblem& p,
                   int64_t b, int64_t h, int64_t i) {
  const int64_t tk = p.kv_len, d = p.head_dim;
  const double minus_inf = -std::numeric_limits<double>::infinity();
  const float* qi = row_of(q, p.q_stride, b, h, i);
  double top = minus_inf;
  for (int64_t j = 0; j < tk; ++j) {
    double s = minus_inf;
    if (!p.causal || j <= i + p.causal_offset()) {
      const float* kj = row_of(k, p.k_stride, b, h, j);
      double dot = 0.0;
      for (int64_t c = 0; c < d; ++c) dot += double(qi[c]) * kj[c];
      s = p.scale * dot;
      if (mask)
        s += mask[b * p.mask_stride[0] + h * p.mask_stride[1] + i * p.mask_stride[2] +
                  j * p.mask_stride[3]];
    }
    prob[j] = s;
    top = s > top ? s : top;
  }
  if (top == minus_inf) return false;
  double total = 0.0;
  for (int64_t j = 0; j < tk; ++j) total += prob[j] = std::exp(prob[j] - top);
  *log_sum_exp = top + std::log(total);
  for (int64_t j = 0; j < tk; ++j) {
    prob[j] /= total;
    keep[j] = 1.0;
    if (p.dropout_p > 0.0f) {
      const float u = philox::uniform(p.seed, p.stream, p.dropout_index(b, h, i, j));
      keep[j] = u >= p.dropout_p ? 1.0 / (1.0 - double(p.dropout_p)) : 0.0;
    }
  }
  return true;
}

}  // namespace

void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                       const float* mask, const AttentionProblem& p) {
  const int64_t tk = p.kv_len, d = p.head_dim;
  std::vector<double> prob(tk), keep(tk), acc(d);
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t h = 0; h < p.heads; ++h)
      for (int64_t i = 0; i < p.q_len; ++i) {
        float* oi = out + b * p.o_stride[0] + h * p.o_stride[1] + i * p.o_stride[2];
        float& row_lse = lse[(b * p.heads + h) * p.q_len + i];
        double log_sum_exp = 0.0;
        if (!probabilities(prob, keep, &log_sum_exp, q, k, mask, p, b, h, i)) {
          for (int64_t c = 0; c < d; ++c) oi[c] = 0.0f;
          row_lse = std::numeric_limits<float>::infinity();
          continue;
        }
        for (int64_t c = 0; c < d; ++c) acc[c] = 0.0;
        for (int64_t j = 0; j < tk; ++j) {
          const float* vj = row_of(v, p.v_stride, b, h, j);
          for (int64_t c = 0; c < d; ++c) acc[c] += prob[j] * keep[j] * vj[c];
        }
        for (int64_t c = 0; c < d; ++c) oi[c] = static_cast<float>(acc[c]);
        row_lse = static_cast<float>(log_sum_exp);
      }
}

// dS = P * (dP - delta) with dP = keep * (dout . v) and delta = dout . out;
// dq = scale dS k, dk = scale dS^T q, dv = (P keep)^T dout, dmask = dS. The
// forward's out and lse are not read: the probabilities are recomputed.
void attention_backward(float* dq, float* dk, float* dv, float* dmask, const float* dout,
                        const float* q, const float* k, const float* v, const float* mask,
                        const float* /*out*/, const float* /*lse*/, const AttentionProblem& p) {
  const int64_t tq = p.q_len, tk = p.kv_len, d = p.head_dim;
  std::vector<double> prob(tk), keep(tk), ds(tk), dqi(d);
  std::vector<double> dk_acc(tk * d), dv_acc(tk * d);
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t h = 0; h < p.heads; ++h) {
      std::fill(dk_acc.begin(), dk_acc.end(), 0.0);
      std::fill(dv_acc.begin(), dv_acc.end(), 0.0);
      for (int64_t i = 0; i < tq; ++i) {
        double log_sum_exp = 0.0;
        if (!probabilities(prob, keep, &log_sum_exp, q, k, mask, p, b, h, i)) continue;
        const float* qi = row_of(q, p.q_stride, b, h, i);
        const float* gi = dout + b * p.o_stride[0] + h * p.o_stride[1] + i * p.o_stride[2];
        double delta = 0.0;
        for (int64_t j = 0; j < tk; ++j) {
          const float* vj = row_of(v, p.v_stride, b, h, j);
          double dot = 0.0;
          for (int64_t c = 0; c < d; ++c) dot += double(gi[c]) * vj[c];
          ds[j] = keep[j] * dot;  // dP
          delta += prob[j] * ds[j];
        }
        for (int64_t c = 0; c < d; ++c) dqi[c] = 0.0;
        for (int64_t j = 0; j < tk; ++j) {
          ds[j] = prob[j] * (ds[j] - delta);
          const float* kj = row_of(k, p.k_stride, b, h, j);
          for (int64_t c = 0; c < d; ++c) {
            dqi[c] += ds[j] * kj[c];
            dk_acc[j * d + c] += ds[j] * qi[c];
            dv_acc[j * d + c] += prob[j] * keep[j] * gi[c];
          }
          if (dmask)
            dmask[b * p.mask_stride[0] + h * p.mask_stride[1] + i * p.mask_stride[2] +
                  j * p.mask_stride[3]] += static_cast<float>(ds[j]);
        }
        if (dq) {
          float* dst = dq + b * p.q_stride[0] + h * p.q_stride[1] + i * p.q_stride[2];
          for (int64_t c = 0; c < d; ++c) dst[c] += static_cast<float>(p.scale * dqi[c]);
        }
      }
      for (int64_t j = 0; j < tk; ++j)
        for (int64_t c = 0; c < d; ++c) {
          if (dk) dk[b * p.k_stride[0] + h * p.k_stride[1] + j * p.k_stride[2] + c] +=
              static_cast<float>(p.scale * dk_acc[j * d + c]);
          if (dv) dv[b * p.v_stride[0] + h * p.v_stride[1] + j * p.v_stride[2] + c] +=
              static_cast<float>(dv_acc[j * d + c]);
        }
    }
}

}  // namespace reference
}  // namespace pyengine
