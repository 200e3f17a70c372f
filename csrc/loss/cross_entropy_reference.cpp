// Plain cross-entropy from logits, in double.
#include <cmath>
#include <limits>

#include "core/kernel_list.inc"
#include "loss/nll_common.h"

namespace pyengine {
namespace reference {
namespace {

template <typename Index>
void forward_impl(float* loss, const float* logits, const Index* target, int64_t rows,
                  int64_t classes, int64_t ignore_index) {
  double total = 0.0;
  int64_t count = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = target[r];
    if (t == ignore_index) continue;
    const float* xr = logits + r * classes;
    double m = xr[0];
    for (int64_t i = 1; i < classes; ++i) m = xr[i] > m ? xr[i] : m;
    double s = 0.0;
    for (int64_t i = 0; i < classes; ++i) s += std::exp(xr[i] - m);
    total += std::log(s) - (xr[t] - m);
    ++count;
  }
  loss[0] = count ? static_cast<float>(total / count) : std::numeric_limits<float>::quiet_NaN();
}

template <typename Index>
void backward_impl(float* dlogits, const float* dloss, const float* logits, const Index* target,
                   int64_t rows, int64_t classes, int64_t ignore_index, bool accumulate) {
  int64_t count = 0;
  for (int64_t r = 0; r < rows; ++r) count += target[r] != ignore_index;
  const double scale = count ? double(dloss[0]) / count : 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = target[r];
    const float* xr = logits + r * classes;
    float* dr = dlogits + r * classes;  // may be xr (accumulate false): element i read, then written
    if (t == ignore_index || count == 0) {
      for (int64_t i = 0; i < classes && !accumulate; ++i) dr[i] = 0.0f;
      continue;
    }
    double m = xr[0];
    for (int64_t i = 1; i < classes; ++i) m = xr[i] > m ? xr[i] : m;
    double s = 0.0;
    for (int64_t i = 0; i < classes; ++i) s += std::exp(xr[i] - m);
    for (int64_t i = 0; i < classes; ++i) {
      const float g = static_cast<float>(scale * (std::exp(xr[i] - m) / s - (i == t ? 1.0 : 0.0)));
      dr[i] = accumulate ? dr[i] + g : g;
    }
  }
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

}  // namespace reference
}  // namespace pyengine
