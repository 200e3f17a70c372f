// Plain batch norm, accumulated in double.
#include <cmath>

#include "core/kernel_list.inc"

namespace pyengine {
namespace reference {

void batchnorm_forward(float* y, float* save_mean, float* save_rstd, float* running_mean, float* running_var,
                       const float* x, const float* weight, const float* bias, int64_t N, int64_t C, int64_t inner,
                       bool batch_stats, float momentum, float eps) {
  const int64_t count = N * inner;
  for (int64_t c = 0; c < C; ++c) {
    double mean, var;
    if (batch_stats) {
      double sum = 0.0, squares = 0.0;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t i = 0; i < inner; ++i) sum += x[(n * C + c) * inner + i];
      mean = sum / count;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t i = 0; i < inner; ++i) {
          const double d = x[(n * C + c) * inner + i] - mean;
          squares += d * d;
        }
      var = squares / count;
      if (running_mean) running_mean[c] = static_cast<float>((1.0 - momentum) * running_mean[c] + momentum * mean);
      if (running_var)
        running_var[c] = static_cast<float>((1.0 - momentum) * running_var[c] +
                                            momentum * (count > 1 ? squares / (count - 1) : var));
    } else {
      mean = running_mean[c];
      var = running_var[c];
    }
    const double rstd = 1.0 / std::sqrt(var + eps);
    const double w = weight ? weight[c] : 1.0, b = bias ? bias[c] : 0.0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < inner; ++i) {
        const int64_t at = (n * C + c) * inner + i;
        y[at] = static_cast<float>((x[at] - mean) * rstd * w + b);
      }
    save_mean[c] = static_cast<float>(mean);
    save_rstd[c] = static_cast<float>(rstd);
  }
}

void batchnorm_backward(float* dx, float* dweight, float* dbias, const float* dy, const float* x,
                        const float* weight, const float* save_mean, const float* save_rstd, int64_t N, int64_t C,
                        int64_t inner, bool batch_stats) {
  const int64_t count = N * inner;
  for (int64_t c = 0; c < C; ++c) {
    const double mean = save_mean[c], rstd = save_rstd[c], w = weight ? weight[c] : 1.0;
    double sum_dy = 0.0, sum_dy_xhat = 0.0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < inner; ++i) {
        const int64_t at = (n * C + c) * inner + i;
        sum_dy += dy[at];
        sum_dy_xhat += dy[at] * (x[at] - mean) * rstd;
      }
    if (dweight) dweight[c] += static_cast<float>(sum_dy_xhat);
    if (dbias) dbias[c] += static_cast<float>(sum_dy);
    if (!dx) continue;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < inner; ++i) {
        const int64_t at = (n * C + c) * inner + i;
        double g = dy[at];
        if (batch_stats) g -= sum_dy / count + (x[at] - mean) * rstd * sum_dy_xhat / count;
        dx[at] += static_cast<float>(w * rstd * g);
      }
  }
}

}  // namespace reference
}  // namespace pyengine
