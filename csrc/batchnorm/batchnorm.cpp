// Batch norm over (N, inner) per channel, NCHW. Channels are independent:
// the threads split them (each channel's statistics summed by one thread in
// one fixed order, so the results do not depend on the thread count). Each
// channel's rows of inner floats are read with vector loops: the mean, then
// the centred sum of squares (two passes, not E[x^2] - E[x]^2, which loses
// the variance of data far from zero), then one pass y = x * scale + shift.
// Per-row sums are float vectors; the sum over rows is in double.
#include <cmath>

#include "core/kernel_list.inc"
#include "core/parallel.h"
#include "core/row_ops.h"
#include "core/simd.h"

namespace pyengine {
namespace PYENGINE_KERNEL_NS {
namespace {

using simd::kWidth;
using simd::vfloat;

bool channel_threads(int64_t C, int64_t elements) {
  return C > 1 && elements >= PYENGINE_PARALLEL_MIN_WORK && !in_parallel_region();
}

// sum of (x[i] - mean)^2.
float centred_squares(const float* x, int64_t n, float mean) {
  const vfloat m = simd::splat(mean);
  vfloat acc0{}, acc1{};
  int64_t i = 0;
  for (; i + 2 * kWidth <= n; i += 2 * kWidth) {
    const vfloat d0 = simd::load(x + i) - m, d1 = simd::load(x + i + kWidth) - m;
    acc0 += d0 * d0;
    acc1 += d1 * d1;
  }
  float s = simd::hsum(acc0 + acc1);
  for (; i < n; ++i) s += (x[i] - mean) * (x[i] - mean);
  return s;
}

// sum of dy[i] and of dy[i] * (x[i] - mean), in one pass over both rows.
void sums_of_dy(const float* dy, const float* x, int64_t n, float mean, double& sum_dy, double& sum_dy_xc) {
  const vfloat m = simd::splat(mean);
  vfloat s0{}, s1{}, d0{}, d1{};
  int64_t i = 0;
  for (; i + 2 * kWidth <= n; i += 2 * kWidth) {
    const vfloat g0 = simd::load(dy + i), g1 = simd::load(dy + i + kWidth);
    s0 += g0;
    s1 += g1;
    d0 += g0 * (simd::load(x + i) - m);
    d1 += g1 * (simd::load(x + i + kWidth) - m);
  }
  float s = simd::hsum(s0 + s1), d = simd::hsum(d0 + d1);
  for (; i < n; ++i) {
    s += dy[i];
    d += dy[i] * (x[i] - mean);
  }
  sum_dy += s;
  sum_dy_xc += d;
}

// out[i] (+)= a * u[i] + b * (v[i] - mean) + k; v may be null (b unused).
template <bool kAccumulate>
void affine_run(float* out, const float* u, const float* v, int64_t n, float a, float b, float mean, float k) {
  const vfloat va = simd::splat(a), vb = simd::splat(b), vm = simd::splat(mean), vk = simd::splat(k);
  int64_t i = 0;
  for (; i + kWidth <= n; i += kWidth) {
    vfloat r = va * simd::load(u + i) + vk;
    if (v) r += vb * (simd::load(v + i) - vm);
    if (kAccumulate) r += simd::load(out + i);
    simd::store(out + i, r);
  }
  for (; i < n; ++i) {
    float r = a * u[i] + k;
    if (v) r += b * (v[i] - mean);
    out[i] = kAccumulate ? out[i] + r : r;
  }
}

}  // namespace

void batchnorm_forward(float* y, float* save_mean, float* save_rstd, float* running_mean, float* running_var,
                       const float* x, const float* weight, const float* bias, int64_t N, int64_t C, int64_t inner,
                       bool batch_stats, float momentum, float eps) {
  const int64_t count = N * inner;
  parallel_for(channel_threads(C, N * C * inner), C, [&](int64_t c) {
    float mean, var;
    if (batch_stats) {
      double sum = 0.0;
      for (int64_t n = 0; n < N; ++n) sum += row::sum(x + (n * C + c) * inner, inner);
      mean = static_cast<float>(sum / count);
      double squares = 0.0;
      for (int64_t n = 0; n < N; ++n) squares += centred_squares(x + (n * C + c) * inner, inner, mean);
      var = static_cast<float>(squares / count);
      if (running_mean) running_mean[c] = (1.0f - momentum) * running_mean[c] + momentum * mean;
      if (running_var) {
        const float unbiased = count > 1 ? static_cast<float>(squares / (count - 1)) : var;
        running_var[c] = (1.0f - momentum) * running_var[c] + momentum * unbiased;
      }
    } else {
      mean = running_mean[c];
      var = running_var[c];
    }
    const float rstd = 1.0f / std::sqrt(var + eps);
    const float scale = rstd * (weight ? weight[c] : 1.0f);
    const float shift = (bias ? bias[c] : 0.0f) - mean * scale;
    for (int64_t n = 0; n < N; ++n) {
      const int64_t at = (n * C + c) * inner;
      affine_run<false>(y + at, x + at, nullptr, inner, scale, 0.0f, 0.0f, shift);
    }
    save_mean[c] = mean;
    save_rstd[c] = rstd;
  });
}

void batchnorm_backward(float* dx, float* dweight, float* dbias, const float* dy, const float* x,
                        const float* weight, const float* save_mean, const float* save_rstd, int64_t N, int64_t C,
                        int64_t inner, bool batch_stats) {
  const int64_t count = N * inner;
  parallel_for(channel_threads(C, N * C * inner), C, [&](int64_t c) {
    const float mean = save_mean[c], rstd = save_rstd[c], w = weight ? weight[c] : 1.0f;
    double sum_dy = 0.0, sum_dy_xc = 0.0;  // sum of dy, of dy * (x - mean)
    if (dweight || dbias || (dx && batch_stats))
      for (int64_t n = 0; n < N; ++n) {
        const int64_t at = (n * C + c) * inner;
        sums_of_dy(dy + at, x + at, inner, mean, sum_dy, sum_dy_xc);
      }
    if (dweight) dweight[c] += static_cast<float>(sum_dy_xc * rstd);
    if (dbias) dbias[c] += static_cast<float>(sum_dy);
    if (!dx) return;
    // dx += g dy - g mean(dy) - g rstd^2 mean(dy (x - mean)) (x - mean), g = w rstd.
    const float g = w * rstd;
    const float k = batch_stats ? static_cast<float>(-g * sum_dy / count) : 0.0f;
    const float b = batch_stats ? static_cast<float>(-g * rstd * rstd * sum_dy_xc / count) : 0.0f;
    for (int64_t n = 0; n < N; ++n) {
      const int64_t at = (n * C + c) * inner;
      affine_run<true>(dx + at, dy + at, batch_stats ? x + at : nullptr, inner, g, b, mean, k);
    }
  });
}

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
