// Plain matmul: the definition the optimized variants are tested against.
#include <algorithm>
#include <cmath>

#include "core/kernel_list.inc"
#include "elementwise/elementwise_common.h"

namespace pyengine {
namespace reference {
namespace {

float op_a(const float* a, int64_t m, int64_t k, bool trans, int64_t i, int64_t p) {
  return trans ? a[p * m + i] : a[i * k + p];
}
float op_b(const float* b, int64_t n, int64_t k, bool trans, int64_t p, int64_t j) {
  return trans ? b[j * k + p] : b[p * n + j];
}

}  // namespace

void matmul_forward(float* c, float* preact, const float* a, const float* b, const float* bias,
                    Activation activation, int64_t batch, int64_t m, int64_t n, int64_t k,
                    bool trans_a, bool trans_b, int64_t batch_stride_a, int64_t batch_stride_b) {
  for (int64_t t = 0; t < batch; ++t) {
    const float* at = a + t * batch_stride_a;
    const float* bt = b + t * batch_stride_b;
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double acc = bias ? bias[j] : 0.0;
        for (int64_t p = 0; p < k; ++p)
          acc += double(op_a(at, m, k, trans_a, i, p)) * op_b(bt, n, k, trans_b, p, j);
        const float v = static_cast<float>(acc);
        const int64_t index = t * m * n + i * n + j;
        if (preact) preact[index] = v;
        c[index] = ew::activate(activation, v);
      }
  }
}

int64_t fma_probe(float* sink, int64_t iterations, int threads) {
  (void)threads;  // the reference probe is one scalar thread
  float acc[8];
  for (int r = 0; r < 8; ++r) acc[r] = 1.0f + 1e-3f * r;
  for (int64_t it = 0; it < iterations; ++it)
    for (int r = 0; r < 8; ++r) acc[r] = std::fma(acc[r], 0.999999f, 1e-7f);
  sink[0] = acc[0] + acc[1] + acc[2] + acc[3] + acc[4] + acc[5] + acc[6] + acc[7];
  return iterations * 8 * 2;
}

void matmul_backward(float* da, float* db, float* dbias, const float* dc, const float* a,
                     const float* b, int64_t batch, int64_t m, int64_t n, int64_t k, bool trans_a,
                     bool trans_b, int64_t batch_stride_a, int64_t batch_stride_b, bool accumulate) {
  if (!accumulate) {  // overwrite: zero, then add as below (da == db is then zeroed once)
    if (da) std::fill(da, da + (batch_stride_a ? batch : 1) * m * k, 0.0f);
    if (db) std::fill(db, db + (batch_stride_b ? batch : 1) * k * n, 0.0f);
    if (dbias) std::fill(dbias, dbias + n, 0.0f);
  }
  for (int64_t t = 0; t < batch; ++t) {
    const float* at = a + t * batch_stride_a;
    const float* bt = b + t * batch_stride_b;
    const float* dct = dc + t * m * n;
    if (da) {
      float* dat = da + t * batch_stride_a;
      for (int64_t i = 0; i < m; ++i)
        for (int64_t p = 0; p < k; ++p) {
          double acc = 0.0;  // d op(A)[i][p] = sum_j dC[i][j] op(B)[p][j]
          for (int64_t j = 0; j < n; ++j) acc += double(dct[i * n + j]) * op_b(bt, n, k, trans_b, p, j);
          dat[trans_a ? p * m + i : i * k + p] += static_cast<float>(acc);
        }
    }
    if (db) {
      float* dbt = db + t * batch_stride_b;
      for (int64_t p = 0; p < k; ++p)
        for (int64_t j = 0; j < n; ++j) {
          double acc = 0.0;  // d op(B)[p][j] = sum_i op(A)[i][p] dC[i][j]
          for (int64_t i = 0; i < m; ++i) acc += double(op_a(at, m, k, trans_a, i, p)) * dct[i * n + j];
          dbt[trans_b ? j * k + p : p * n + j] += static_cast<float>(acc);
        }
    }
  }
  if (dbias)
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0.0;
      for (int64_t i = 0; i < batch * m; ++i) acc += dc[i * n + j];
      dbias[j] += static_cast<float>(acc);
    }
}

}  // namespace reference
}  // namespace pyengine
