// 2-D pooling, NCHW. The planes (image, channel) are independent: every
// kernel splits them over the threads (a plane's outputs, or its gradient,
// written by one thread only), so the results do not depend on the thread
// count. Max pooling keeps PyTorch's CPU tie rule exactly (the first largest
// value, a NaN wins); a window's sum is accumulated in float in row-major
// order of its taps. Global average pooling (one output per plane) sums each
// plane with the vectorized row sum.
#include <cmath>
#include <limits>

#include "core/kernel_list.inc"
#include "core/parallel.h"
#include "core/row_ops.h"
#include "pool/pool_window.h"

namespace pyengine {
namespace PYENGINE_KERNEL_NS {
namespace {

// Split planes over the threads when there is enough work in all.
bool plane_threads(int64_t planes, int64_t work) {
  return planes > 1 && work >= PYENGINE_PARALLEL_MIN_WORK && !in_parallel_region();
}

// One output row of max pooling from one plane.
void max_row(float* y, float* indices, const float* plane, int64_t W, int64_t OW, Range rows, int64_t kernel_w,
             int64_t stride_w, int64_t pad_w, int64_t dilation_h, int64_t dilation_w) {
  for (int64_t ow = 0; ow < OW; ++ow) {
    const Range cols = max_taps(ow, W, kernel_w, stride_w, pad_w, dilation_w);
    int64_t best = rows.lo * W + cols.lo;
    float value = -std::numeric_limits<float>::infinity();
    for (int64_t ih = rows.lo; ih < rows.hi; ih += dilation_h) {
      const float* row = plane + ih * W;
      for (int64_t iw = cols.lo; iw < cols.hi; iw += dilation_w) {
        const float v = row[iw];
        if (v > value || std::isnan(v)) {
          value = v;
          best = ih * W + iw;
        }
      }
    }
    y[ow] = value;
    indices[ow] = static_cast<float>(best);
  }
}

// The sum of plane over rows x cols, row by row.
float window_sum(const float* plane, int64_t W, Range rows, Range cols) {
  float sum = 0.0f;
  for (int64_t ih = rows.lo; ih < rows.hi; ++ih)
    for (int64_t iw = cols.lo; iw < cols.hi; ++iw) sum += plane[ih * W + iw];
  return sum;
}

// plane[rows x cols] += value.
void window_add(float* plane, int64_t W, Range rows, Range cols, float value) {
  for (int64_t ih = rows.lo; ih < rows.hi; ++ih)
    for (int64_t iw = cols.lo; iw < cols.hi; ++iw) plane[ih * W + iw] += value;
}

}  // namespace

void max_pool2d_forward(float* y, float* indices, const float* x, int64_t planes, int64_t H, int64_t W,
                        int64_t OH, int64_t OW, int64_t kernel_h, int64_t kernel_w, int64_t stride_h,
                        int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w) {
  const int64_t work = planes * OH * OW * kernel_h * kernel_w;
  parallel_for(plane_threads(planes * OH, work), planes * OH, [&](int64_t task) {
    const int64_t p = task / OH, oh = task % OH;
    const Range rows = max_taps(oh, H, kernel_h, stride_h, pad_h, dilation_h);
    max_row(y + task * OW, indices + task * OW, x + p * H * W, W, OW, rows, kernel_w, stride_w, pad_w,
            dilation_h, dilation_w);
  });
}

void max_pool2d_backward(float* dx, const float* dy, const float* indices, int64_t planes, int64_t H, int64_t W,
                         int64_t OH, int64_t OW) {
  const int64_t P = OH * OW;
  parallel_for(plane_threads(planes, planes * P), planes, [&](int64_t p) {
    float* plane = dx + p * H * W;
    const float* g = dy + p * P;
    const float* at = indices + p * P;
    for (int64_t o = 0; o < P; ++o) plane[static_cast<int64_t>(at[o])] += g[o];
  });
}

void avg_pool2d_forward(float* y, const float* x, int64_t planes, int64_t H, int64_t W, int64_t OH, int64_t OW,
                        int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h,
                        int64_t pad_w, bool count_include_pad, int64_t divisor_override) {
  const int64_t work = planes * OH * OW * kernel_h * kernel_w;
  parallel_for(plane_threads(planes * OH, work), planes * OH, [&](int64_t task) {
    const int64_t p = task / OH, oh = task % OH;
    const AvgWindow h = avg_window(oh, H, kernel_h, stride_h, pad_h);
    const float* plane = x + p * H * W;
    for (int64_t ow = 0; ow < OW; ++ow) {
      const AvgWindow w = avg_window(ow, W, kernel_w, stride_w, pad_w);
      const float divisor = static_cast<float>(avg_divisor(h, w, count_include_pad, divisor_override));
      const bool empty = h.inside.size() <= 0 || w.inside.size() <= 0;
      y[task * OW + ow] = empty ? 0.0f : window_sum(plane, W, h.inside, w.inside) / divisor;
    }
  });
}

void avg_pool2d_backward(float* dx, const float* dy, int64_t planes, int64_t H, int64_t W, int64_t OH, int64_t OW,
                         int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h,
                         int64_t pad_w, bool count_include_pad, int64_t divisor_override) {
  const int64_t work = planes * OH * OW * kernel_h * kernel_w;
  parallel_for(plane_threads(planes, work), planes, [&](int64_t p) {
    float* plane = dx + p * H * W;
    for (int64_t oh = 0; oh < OH; ++oh) {
      const AvgWindow h = avg_window(oh, H, kernel_h, stride_h, pad_h);
      for (int64_t ow = 0; ow < OW; ++ow) {
        const AvgWindow w = avg_window(ow, W, kernel_w, stride_w, pad_w);
        if (h.inside.size() <= 0 || w.inside.size() <= 0) continue;
        const float divisor = static_cast<float>(avg_divisor(h, w, count_include_pad, divisor_override));
        window_add(plane, W, h.inside, w.inside, dy[(p * OH + oh) * OW + ow] / divisor);
      }
    }
  });
}

void adaptive_avg_pool2d_forward(float* y, const float* x, int64_t planes, int64_t H, int64_t W, int64_t OH,
                                 int64_t OW) {
  parallel_for(plane_threads(planes, planes * H * W), planes, [&](int64_t p) {
    const float* plane = x + p * H * W;
    if (OH == 1 && OW == 1) {  // global pooling: one vectorized sum
      y[p] = row::sum(plane, H * W) / static_cast<float>(H * W);
      return;
    }
    for (int64_t oh = 0; oh < OH; ++oh) {
      const Range rows = adaptive_window(oh, H, OH);
      for (int64_t ow = 0; ow < OW; ++ow) {
        const Range cols = adaptive_window(ow, W, OW);
        y[(p * OH + oh) * OW + ow] = window_sum(plane, W, rows, cols) / static_cast<float>(rows.size() * cols.size());
      }
    }
  });
}

void adaptive_avg_pool2d_backward(float* dx, const float* dy, int64_t planes, int64_t H, int64_t W, int64_t OH,
                                  int64_t OW) {
  parallel_for(plane_threads(planes, planes * H * W), planes, [&](int64_t p) {
    float* plane = dx + p * H * W;
    for (int64_t oh = 0; oh < OH; ++oh) {
      const Range rows = adaptive_window(oh, H, OH);
      for (int64_t ow = 0; ow < OW; ++ow) {
        const Range cols = adaptive_window(ow, W, OW);
        window_add(plane, W, rows, cols,
                   dy[(p * OH + oh) * OW + ow] / static_cast<float>(rows.size() * cols.size()));
      }
    }
  });
}

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
