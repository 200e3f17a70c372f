// Adam / AdamW in place: one pass over parameter, gradient and moments,
// in chunks over the threads, branch-free inner loops per configuration.
#include "core/kernel_list.inc"
#include "core/parallel.h"
#include "optim/adam_common.h"

namespace pyengine {
namespace PYENGINE_KERNEL_NS {

namespace {

// One chunk; `s` is copied so that the stores cannot alias its scalars.
// kScaled: the gradient is read times s.grad_scale (gradient clipping).
template <bool kScaled>
void adam_range(float* param, float* m, float* v, float* vmax, const float* grad, int64_t begin,
                int64_t end, const AdamStep s) {
  const float scale = s.grad_scale;
  if (vmax) {
    for (int64_t i = begin; i < end; ++i)
      adam_element(param[i], m[i], v[i], vmax + i, kScaled ? grad[i] * scale : grad[i], s);
  } else {
    for (int64_t i = begin; i < end; ++i)
      adam_element(param[i], m[i], v[i], nullptr, kScaled ? grad[i] * scale : grad[i], s);
  }
}

}  // namespace

void adam_update(float* param, float* exp_avg, float* exp_avg_sq, float* max_exp_avg_sq,
                 const float* grad, int64_t n, const AdamStep& s) {
  constexpr int64_t kChunk = 1 << 14;
  parallel_chunks(n >= 4 * kChunk, n, kChunk, [&](int64_t begin, int64_t end) {
    if (s.grad_scale == 1.0f) adam_range<false>(param, exp_avg, exp_avg_sq, max_exp_avg_sq, grad, begin, end, s);
    else adam_range<true>(param, exp_avg, exp_avg_sq, max_exp_avg_sq, grad, begin, end, s);
  });
}

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
