// Plain matmul: the definition the optimized variants are tested against.
#include "core/kernel_list.inc"

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

void matmul_forward(float* c, const float* a, const float* b, const float* bias, int64_t batch,
                    int64_t m, int64_t n, int64_t k, bool trans_a, bool trans_b,
                    int64_t batch_stride_a, int64_t batch_stride_b) {
  for (int64_t t = 0; t < batch; ++t) {
    const float* at = a + t * batch_stride_a;
    const float* bt = b + t * batch_stride_b;
    float* ct = c + t * m * n;
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double acc = bias ? bias[j] : 0.0;
        for (int64_t p = 0; p < k; ++p)
          acc += double(op_a(at, m, k, trans_a, i, p)) * op_b(bt, n, k, trans_b, p, j);
        ct[i * n + j] = static_cast<float>(acc);
      }
  }
}

void matmul_backward(float* da, float* db, float* dbias, const float* dc, const float* a,
                     const float* b, int64_t batch, int64_t m, int64_t n, int64_t k, bool trans_a,
                     bool trans_b, int64_t batch_stride_a, int64_t batch_stride_b) {
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
