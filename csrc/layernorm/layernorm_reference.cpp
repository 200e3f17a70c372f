// Plain layer norm, accumulated in double, alone and after a residual add.
#include <cmath>
#include <vector>

#include "core/kernel_list.inc"

namespace pyengine {
namespace reference {

void layernorm_forward(float* y, float* mean, float* rstd, const float* x, const float* weight,
                       const float* bias, int64_t rows, int64_t cols, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    double mu = 0.0;
    for (int64_t i = 0; i < cols; ++i) mu += xr[i];
    mu /= cols;
    double var = 0.0;
    for (int64_t i = 0; i < cols; ++i) var += (xr[i] - mu) * (xr[i] - mu);
    var /= cols;
    const double rs = 1.0 / std::sqrt(var + eps);
    for (int64_t i = 0; i < cols; ++i)
      y[r * cols + i] = static_cast<float>((xr[i] - mu) * rs * weight[i] + bias[i]);
    mean[r] = static_cast<float>(mu);
    rstd[r] = static_cast<float>(rs);
  }
}

void layernorm_backward(float* dx, float* dweight, float* dbias, const float* dy, const float* x,
                        const float* weight, const float* mean, const float* rstd, int64_t rows,
                        int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    const float* dyr = dy + r * cols;
    double sum_g = 0.0, sum_g_xhat = 0.0;
    for (int64_t i = 0; i < cols; ++i) {
      const double xhat = (xr[i] - mean[r]) * double(rstd[r]);
      sum_g += double(dyr[i]) * weight[i];
      sum_g_xhat += double(dyr[i]) * weight[i] * xhat;
      if (dweight) dweight[i] += static_cast<float>(dyr[i] * xhat);
      if (dbias) dbias[i] += dyr[i];
    }
    if (!dx) continue;
    for (int64_t i = 0; i < cols; ++i) {
      const double xhat = (xr[i] - mean[r]) * double(rstd[r]);
      dx[r * cols + i] += static_cast<float>(
          rstd[r] * (double(dyr[i]) * weight[i] - sum_g / cols - xhat * sum_g_xhat / cols));
    }
  }
}

// The sum in float, as the optimized kernel, then the plain layer norm.
void add_layernorm_forward(float* y, float* mean, float* rstd, const float* a, const float* b,
                           const float* weight, const float* bias, int64_t rows, int64_t cols, float eps) {
  std::vector<float> x(static_cast<size_t>(rows * cols));
  for (size_t i = 0; i < x.size(); ++i) x[i] = a[i] + b[i];
  layernorm_forward(y, mean, rstd, x.data(), weight, bias, rows, cols, eps);
}

void add_layernorm_backward(float* da, float* db, float* dweight, float* dbias, const float* dy,
                            const float* a, const float* b, const float* weight, const float* mean,
                            const float* rstd, int64_t rows, int64_t cols) {
  const size_t n = static_cast<size_t>(rows * cols);
  std::vector<float> x(n), dx(n, 0.0f);
  for (size_t i = 0; i < n; ++i) x[i] = a[i] + b[i];
  layernorm_backward(dx.data(), dweight, dbias, dy, x.data(), weight, mean, rstd, rows, cols);
  for (size_t i = 0; i < n; ++i) {
    if (da) da[i] += dx[i];
    if (db) db[i] += dx[i];
  }
}

}  // namespace reference
}  // namespace pyengine
