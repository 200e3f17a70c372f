// Plain 2-D pooling: one loop per output over its window, sums in double.
#include <cmath>
#include <limits>

#include "core/kernel_list.inc"
#include "pool/pool_window.h"

namespace pyengine {
namespace reference {

void max_pool2d_forward(float* y, float* indices, const float* x, int64_t planes, int64_t H, int64_t W,
                        int64_t OH, int64_t OW, int64_t kernel_h, int64_t kernel_w, int64_t stride_h,
                        int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w) {
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t oh = 0; oh < OH; ++oh) {
      const Range rows = max_taps(oh, H, kernel_h, stride_h, pad_h, dilation_h);
      for (int64_t ow = 0; ow < OW; ++ow) {
        const Range cols = max_taps(ow, W, kernel_w, stride_w, pad_w, dilation_w);
        int64_t best = rows.lo * W + cols.lo;
        float value = -std::numeric_limits<float>::infinity();
        for (int64_t ih = rows.lo; ih < rows.hi; ih += dilation_h)
          for (int64_t iw = cols.lo; iw < cols.hi; iw += dilation_w) {
            const float v = x[(p * H + ih) * W + iw];
            if (v > value || std::isnan(v)) {
              value = v;
              best = ih * W + iw;
            }
          }
        y[(p * OH + oh) * OW + ow] = value;
        indices[(p * OH + oh) * OW + ow] = static_cast<float>(best);
      }
    }
}

void max_pool2d_backward(float* dx, const float* dy, const float* indices, int64_t planes, int64_t H, int64_t W,
                         int64_t OH, int64_t OW) {
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t o = 0; o < OH * OW; ++o)
      dx[p * H * W + static_cast<int64_t>(indices[p * OH * OW + o])] += dy[p * OH * OW + o];
}

namespace {

// fn(output index, input index, 1 / divisor) for every (output, input) pair
// of average pooling.
template <typename Fn>
void for_each_avg_tap(int64_t planes, int64_t H, int64_t W, int64_t OH, int64_t OW, int64_t kernel_h,
                      int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                      bool count_include_pad, int64_t divisor_override, Fn fn) {
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t oh = 0; oh < OH; ++oh) {
      const AvgWindow h = avg_window(oh, H, kernel_h, stride_h, pad_h);
      for (int64_t ow = 0; ow < OW; ++ow) {
        const AvgWindow w = avg_window(ow, W, kernel_w, stride_w, pad_w);
        const double scale = 1.0 / double(avg_divisor(h, w, count_include_pad, divisor_override));
        for (int64_t ih = h.inside.lo; ih < h.inside.hi; ++ih)
          for (int64_t iw = w.inside.lo; iw < w.inside.hi; ++iw)
            fn((p * OH + oh) * OW + ow, (p * H + ih) * W + iw, scale);
      }
    }
}

template <typename Fn>
void for_each_adaptive_tap(int64_t planes, int64_t H, int64_t W, int64_t OH, int64_t OW, Fn fn) {
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t oh = 0; oh < OH; ++oh) {
      const Range rows = adaptive_window(oh, H, OH);
      for (int64_t ow = 0; ow < OW; ++ow) {
        const Range cols = adaptive_window(ow, W, OW);
        const double scale = 1.0 / double(rows.size() * cols.size());
        for (int64_t ih = rows.lo; ih < rows.hi; ++ih)
          for (int64_t iw = cols.lo; iw < cols.hi; ++iw) fn((p * OH + oh) * OW + ow, (p * H + ih) * W + iw, scale);
      }
    }
}

// y = the rounded sums of fn's taps: sums[o] += x[i] * scale.
template <typename Taps>
void pooled_sums(float* y, const float* x, int64_t count, Taps taps) {
  double* sums = new double[count]();
  taps([&](int64_t o, int64_t i, double scale) { sums[o] += x[i] * scale; });
  for (int64_t o = 0; o < count; ++o) y[o] = static_cast<float>(sums[o]);
  delete[] sums;
}

// dx += the rounded sums of dy spread back: sums[i] += dy[o] * scale.
template <typename Taps>
void spread_sums(float* dx, const float* dy, int64_t count, Taps taps) {
  double* sums = new double[count]();
  taps([&](int64_t o, int64_t i, double scale) { sums[i] += dy[o] * scale; });
  for (int64_t i = 0; i < count; ++i) dx[i] += static_cast<float>(sums[i]);
  delete[] sums;
}

}  // namespace

void avg_pool2d_forward(float* y, const float* x, int64_t planes, int64_t H, int64_t W, int64_t OH, int64_t OW,
                        int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h,
                        int64_t pad_w, bool count_include_pad, int64_t divisor_override) {
  pooled_sums(y, x, planes * OH * OW, [&](auto fn) {
    for_each_avg_tap(planes, H, W, OH, OW, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                     count_include_pad, divisor_override, fn);
  });
}

void avg_pool2d_backward(float* dx, const float* dy, int64_t planes, int64_t H, int64_t W, int64_t OH, int64_t OW,
                         int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h,
                         int64_t pad_w, bool count_include_pad, int64_t divisor_override) {
  spread_sums(dx, dy, planes * H * W, [&](auto fn) {
    for_each_avg_tap(planes, H, W, OH, OW, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                     count_include_pad, divisor_override, fn);
  });
}

void adaptive_avg_pool2d_forward(float* y, const float* x, int64_t planes, int64_t H, int64_t W, int64_t OH,
                                 int64_t OW) {
  pooled_sums(y, x, planes * OH * OW, [&](auto fn) { for_each_adaptive_tap(planes, H, W, OH, OW, fn); });
}

void adaptive_avg_pool2d_backward(float* dx, const float* dy, int64_t planes, int64_t H, int64_t W, int64_t OH,
                                  int64_t OW) {
  spread_sums(dx, dy, planes * H * W, [&](auto fn) { for_each_adaptive_tap(planes, H, W, OH, OW, fn); });
}

}  // namespace reference
}  // namespace pyengine
