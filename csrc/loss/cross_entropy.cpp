// Cross-entropy from logits with a fused softmax backward.
#include <algorithm>
#include <cmath>
#include <limits>

#include "core/kernel_list.inc"
#include "loss/nll_common.h"
#include "core/parallel.h"
#include "core/row_ops.h"
#include "core/simd.h"

namespace pyengine {
namespace PYENGINE_KERNEL_NS {
namespace {

using simd::kWidth;
using simd::vfloat;

template <typename Index>
int64_t count_valid(const Index* target, int64_t rows, int64_t ignore_index) {
  int64_t count = 0;
  for (int64_t r = 0; r < rows; ++r) count += static_cast<int64_t>(target[r]) != ignore_index;
  return count;
}

template <typename Index>
void forward_impl(float* loss, const float* logits, const Index* target, int64_t rows,
                  int64_t classes, int64_t ignore_index) {
  auto row_loss = [&](int64_t r) -> double {
    const int64_t t = static_cast<int64_t>(target[r]);
    if (t == ignore_index) return 0.0;
    const float* xr = logits + r * classes;
    const float m = row::max(xr, classes);
    // log(sum exp(x - m)) - (x[t] - m): no large m is added and taken away again.
    return static_cast<double>(std::log(row::exp_shifted(nullptr, xr, classes, m)) - (xr[t] - m));
  };
  double total = 0.0;
  if (rows_worth_threads(rows, classes)) {
    PYENGINE_OMP(omp parallel for reduction(+ : total) schedule(static) num_threads(thread_count()))
    for (int64_t r = 0; r < rows; ++r) total += row_loss(r);
  } else {
    for (int64_t r = 0; r < rows; ++r) total += row_loss(r);
  }
  const int64_t count = count_valid(target, rows, ignore_index);
  loss[0] = count ? static_cast<float>(total / static_cast<double>(count))
                  : std::numeric_limits<float>::quiet_NaN();
}

template <typename Index>
void backward_impl(float* dlogits, const float* dloss, const float* logits, const Index* target,
                   int64_t rows, int64_t classes, int64_t ignore_index, bool accumulate) {
  const int64_t count = count_valid(target, rows, ignore_index);
  const float scale = count ? dloss[0] / static_cast<float>(count) : 0.0f;
  parallel_for(rows_worth_threads(rows, classes), rows, [&](int64_t r) {
    const int64_t t = static_cast<int64_t>(target[r]);
    float* dr = dlogits + r * classes;
    if (t == ignore_index || count == 0) {
      if (!accumulate) std::fill(dr, dr + classes, 0.0f);
      return;
    }
    const float* xr = logits + r * classes;
    const float m = row::max(xr, classes);
    const float s = scale / row::exp_shifted(nullptr, xr, classes, m);  // scale * softmax = e * s
    const vfloat vm = simd::splat(m), vs = simd::splat(s);
    // Element i of the row is read before it is written, at the same index: dr may be xr.
    int64_t i = 0;
    if (accumulate) {
      for (; i + kWidth <= classes; i += kWidth)
        simd::store(dr + i, simd::load(dr + i) + simd::exp_nonpositive(simd::load(xr + i) - vm) * vs);
      for (; i < classes; ++i) dr[i] += std::exp(xr[i] - m) * s;
    } else {
      for (; i + kWidth <= classes; i += kWidth)
        simd::store(dr + i, simd::exp_nonpositive(simd::load(xr + i) - vm) * vs);
      for (; i < classes; ++i) dr[i] = std::exp(xr[i] - m) * s;
    }
    dr[t] -= scale;
  });
}

}  // namespace

void cross_entropy_forward(float* loss, const float* logits, const int64_t* target, int64_t rows,
                           int64_t classes, int64_t ignore_index) {
  forward_impl(loss, logits, target, rows, classes, ignore_index);
}
void cross_entropy_forward(float* loss, const float* logits, const int32_t* target, int64_t rows,
                           int64_t classes, int64_t ignore_index) {
  forward_impl(loss, logits, target, rows, classes, ignore_index);
}
void cross_entropy_backward(float* dlogits, const float* dloss, const float* logits,
                            const int64_t* target, int64_t rows, int64_t classes,
                            int64_t ignore_index, bool accumulate) {
  backward_impl(dlogits, dloss, logits, target, rows, classes, ignore_index, accumulate);
}
void cross_entropy_backward(float* dlogits, const float* dloss, const float* logits,
                            const int32_t* target, int64_t rows, int64_t classes,
                            int64_t ignore_index, bool accumulate) {
  backward_impl(dlogits, dloss, logits, target, rows, classes, ignore_index, accumulate);
}

// ---------------------------------------------------------------- nll loss
// Memory-trivial (one value a row): both variants run the loops of loss/nll_common.h.

void nll_loss_forward(float* loss, const float* logp, const int64_t* target, int64_t rows,
                      int64_t classes, int64_t ignore_index) {
  nll_forward_impl(loss, logp, target, rows, classes, ignore_index);
}
void nll_loss_forward(float* loss, const float* logp, const int32_t* target, int64_t rows,
                      int64_t classes, int64_t ignore_index) {
  nll_forward_impl(loss, logp, target, rows, classes, ignore_index);
}
void nll_loss_backward(float* dlogp, const float* dloss, const int64_t* target, int64_t rows,
                       int64_t classes, int64_t ignore_index) {
  nll_backward_impl(dlogp, dloss, target, rows, classes, ignore_index);
}
void nll_loss_backward(float* dlogp, const float* dloss, const int32_t* target, int64_t rows,
                       int64_t classes, int64_t ignore_index) {
  nll_backward_impl(dlogp, dloss, target, rows, classes, ignore_index);
}

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
