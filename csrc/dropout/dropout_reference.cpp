// Plain dropout: one philox::uniform call per element.
#include "core/kernel_list.inc"
#include "dropout/dropout_common.h"

namespace pyengine {
namespace reference {

namespace {

float factor(uint64_t seed, uint64_t stream, int64_t e, float p, float scale) {
  return philox::uniform(seed, stream, static_cast<uint64_t>(e)) >= p ? scale : 0.0f;
}

}  // namespace

void dropout_forward(float* y, const float* x, uint64_t seed, uint64_t stream, int64_t n, float p) {
  const float scale = dropout_scale(p);
  for (int64_t e = 0; e < n; ++e) y[e] = x[e] * factor(seed, stream, e, p, scale);
}

void dropout_backward(float* dx, const float* dy, uint64_t seed, uint64_t stream, int64_t n, float p) {
  const float scale = dropout_scale(p);
  for (int64_t e = 0; e < n; ++e) dx[e] += dy[e] * factor(seed, stream, e, p, scale);
}

void dropout_add_forward(float* y, const float* residual, const float* x, uint64_t seed, uint64_t stream,
                         int64_t n, float p) {
  const float scale = dropout_scale(p);
  for (int64_t e = 0; e < n; ++e) y[e] = residual[e] + x[e] * factor(seed, stream, e, p, scale);
}

void dropout_add_backward(float* dresidual, float* dx, const float* dy, uint64_t seed, uint64_t stream,
                          int64_t n, float p) {
  if (dresidual)
    for (int64_t e = 0; e < n; ++e) dresidual[e] += dy[e];
  if (dx) dropout_backward(dx, dy, seed, stream, n, p);
}

}  // namespace reference
}  // namespace pyengine
