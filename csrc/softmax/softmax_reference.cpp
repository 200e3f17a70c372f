// Plain softmax / log-softmax, accumulated in double.
#include <cmath>

#include "core/kernel_list.inc"

namespace pyengine {
namespace reference {

void softmax_forward(float* y, const float* x, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float m = xr[0];
    for (int64_t i = 1; i < cols; ++i) m = xr[i] > m ? xr[i] : m;
    double total = 0.0;
    for (int64_t i = 0; i < cols; ++i) total += std::exp(double(xr[i]) - m);
    for (int64_t i = 0; i < cols; ++i)
      y[r * cols + i] = static_cast<float>(std::exp(double(xr[i]) - m) / total);
  }
}

void softmax_backward(float* dx, const float* dy, const float* y, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    double inner = 0.0;
    for (int64_t i = 0; i < cols; ++i) inner += double(dy[r * cols + i]) * y[r * cols + i];
    for (int64_t i = 0; i < cols; ++i)
      dx[r * cols + i] += static_cast<float>(y[r * cols + i] * (dy[r * cols + i] - inner));
  }
}

void log_softmax_forward(float* y, const float* x, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float m = xr[0];
    for (int64_t i = 1; i < cols; ++i) m = xr[i] > m ? xr[i] : m;
    double total = 0.0;
    for (int64_t i = 0; i < cols; ++i) total += std::exp(double(xr[i]) - m);
    const double log_total = std::log(total);
    for (int64_t i = 0; i < cols; ++i)
      y[r * cols + i] = static_cast<float>((double(xr[i]) - m) - log_total);
  }
}

void log_softmax_backward(float* dx, const float* dy, const float* y, int64_t rows,
                          int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    double total = 0.0;
    for (int64_t i = 0; i < cols; ++i) total += dy[r * cols + i];
    for (int64_t i = 0; i < cols; ++i)
      dx[r * cols + i] +=
          static_cast<float>(dy[r * cols + i] - std::exp(double(y[r * cols + i])) * total);
  }
}

}  // namespace reference
}  // namespace pyengine
