// Plain RMS norm, accumulated in double.
#include <cmath>

#include "core/kernel_list.inc"

namespace pyengine {
namespace reference {

void rmsnorm_forward(float* y, float* rstd, const float* x, const float* weight, int64_t rows, int64_t cols,
                     float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    double ss = 0.0;
    for (int64_t i = 0; i < cols; ++i) ss += double(xr[i]) * xr[i];
    const double rs = 1.0 / std::sqrt(ss / cols + eps);
    for (int64_t i = 0; i < cols; ++i) y[r * cols + i] = static_cast<float>(xr[i] * rs * weight[i]);
    rstd[r] = static_cast<float>(rs);
  }
}

void rmsnorm_backward(float* dx, float* dweight, const float* dy, const float* x, const float* weight,
                      const float* rstd, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    const float* dyr = dy + r * cols;
    const double rs = rstd[r];
    double sum_g_xhat = 0.0;
    for (int64_t i = 0; i < cols; ++i) {
      const double xhat = xr[i] * rs;
      sum_g_xhat += double(dyr[i]) * weight[i] * xhat;
      if (dweight) dweight[i] += static_cast<float>(dyr[i] * xhat);
    }
    if (!dx) continue;
    for (int64_t i = 0; i < cols; ++i) {
      const double xhat = xr[i] * rs;
      dx[r * cols + i] += static_cast<float>(rs * (double(dyr[i]) * weight[i] - xhat * sum_g_xhat / cols));
    }
  }
}

}  // namespace reference
}  // namespace pyengine
