// 2-D pooling, NCHW. The planes (image, channel) are independent: every
// kernel splits them over the threads (a plane's outputs, or its gradient,
// written by one thread only), so the results do not depend on the thread
// count. Max pooling keeps PyTorch's CPU tie rule exactly (the first largest
// value, a NaN wins); a window's sum is accumulated in float in row-major
// order of its taps. Global average pooling (one output per plane) sums each
// plane with the vectorized row sum.
#include <cmath>
#include <cstring>
#include <limits>

#include "core/kernel_list.inc"
#include "core/parallel.h"
#include "core/row_ops.h"
#include "core/scratch.h"
#include "core/simd.h"
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

// Max pooling of one plane without dilation, kWidth output columns at a
// time. The plane is first copied into rows padded with -inf and split into
// the stride's column phases: output column ow's tap kw then reads phase
// kw % stride at ow + kw / stride, so every tap of a block of columns is one
// vector load. The taps run in the scalar loop's order (rows, then columns)
// with its rule (a larger value or any NaN takes the place), and a padded
// -inf never does, so the values and indices are the scalar loop's.
struct MaxPoolPlane {
  int64_t H, W, OH, OW, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;

  void run(float* y /*(OH, OW)*/, float* indices /*(OH, OW)*/, const float* x /*(H, W)*/) const {
    using simd::kWidth;
    using simd::vfloat;
    const int64_t blocks = (OW + kWidth - 1) / kWidth;
    // A phase row holds every column a block of outputs reads, the last block's spare lanes included.
    const int64_t phase_row = blocks * kWidth + (kernel_w - 1) / stride_w;
    const int64_t padded_row = phase_row * stride_w;
    ScratchFrame frame;
    float* phases = frame.floats(static_cast<size_t>(H * padded_row));  // (H, stride_w, phase_row)
    const float minus_inf = -std::numeric_limits<float>::infinity();
    for (int64_t ih = 0; ih < H; ++ih) {
      const float* src = x + ih * W;
      float* row = phases + ih * padded_row;
      for (int64_t phase = 0; phase < stride_w; ++phase) {  // padded column j * stride_w + phase
        // Input column iw = j * stride_w + phase - pad_w: -inf left of 0, a strided copy, -inf from W.
        float* out = row + phase * phase_row;
        const int64_t first = phase - pad_w;
        const int64_t lo = std::min(phase_row, first >= 0 ? 0 : (-first + stride_w - 1) / stride_w);
        const int64_t inside = W - first > 0 ? (W - first + stride_w - 1) / stride_w : 0;  // j with iw < W
        const int64_t hi = std::max(lo, std::min(phase_row, inside));
        for (int64_t j = 0; j < lo; ++j) out[j] = minus_inf;
        const int64_t count = hi - lo;
        if (count > 0) {
          const float* in = src + (first + lo * stride_w);  // the input column of j = lo
          float* at_lo = out + lo;
          if (stride_w == 1)
            std::memcpy(at_lo, in, static_cast<size_t>(count) * sizeof(float));
          else if (stride_w == 2)  // a constant stride the compiler vectorizes (shuffles)
            for (int64_t j = 0; j < count; ++j) at_lo[j] = in[2 * j];
          else
            for (int64_t j = 0; j < count; ++j) at_lo[j] = in[j * stride_w];
        }
        for (int64_t j = hi; j < phase_row; ++j) out[j] = minus_inf;
      }
    }
    vfloat lane{};
    for (int l = 0; l < kWidth; ++l) lane[l] = static_cast<float>(l);
    for (int64_t oh = 0; oh < OH; ++oh) {
      const Range rows = max_taps(oh, H, kernel_h, stride_h, pad_h, 1);
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t ow0 = b * kWidth;
        // The scalar loop starts from the first tap inside the input, with -inf.
        const float stride = static_cast<float>(stride_w), pad = static_cast<float>(pad_w);
        const vfloat first_col = (simd::splat(static_cast<float>(ow0)) + lane) * stride - pad;
        const vfloat first_inside = first_col < 0.0f ? simd::splat(0.0f) : first_col;
        vfloat best = simd::splat(minus_inf);
        vfloat at = simd::splat(static_cast<float>(rows.lo * W)) + first_inside;
        for (int64_t ih = rows.lo; ih < rows.hi; ++ih) {
          const float* row = phases + ih * padded_row;
          const vfloat row_at = simd::splat(static_cast<float>(ih * W)) + first_col;
          // Tap kw reads phase kw % stride_w at ow0 + kw / stride_w (no division per tap).
          for (int64_t kw = 0, phase = 0, shift = 0; kw < kernel_w; ++kw) {
            const vfloat v = simd::load(row + phase * phase_row + ow0 + shift);
            const auto take = (v > best) | (v != v);
            best = take ? v : best;
            at = take ? row_at + static_cast<float>(kw) : at;
            if (++phase == stride_w) phase = 0, ++shift;
          }
        }
        const int64_t count = std::min<int64_t>(kWidth, OW - ow0);
        if (count == kWidth) {
          simd::store(y + oh * OW + ow0, best);
          simd::store(indices + oh * OW + ow0, at);
        } else {
          simd::store_partial(y + oh * OW + ow0, best, count);
          simd::store_partial(indices + oh * OW + ow0, at, count);
        }
      }
    }
  }
};

}  // namespace

void max_pool2d_forward(float* y, float* indices, const float* x, int64_t planes, int64_t H, int64_t W,
                        int64_t OH, int64_t OW, int64_t kernel_h, int64_t kernel_w, int64_t stride_h,
                        int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w) {
  const int64_t work = planes * OH * OW * kernel_h * kernel_w;
  if (dilation_h == 1 && dilation_w == 1) {
    const MaxPoolPlane pool{H, W, OH, OW, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w};
    parallel_for(plane_threads(planes, work), planes, [&](int64_t p) {
      pool.run(y + p * OH * OW, indices + p * OH * OW, x + p * H * W);
    });
    return;
  }
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
    if (OH == 1 && OW == 1) {  // global pooling: one vectorized add over the plane
      const float share = dy[p] / static_cast<float>(H * W);
      const simd::vfloat v = simd::splat(share);
      int64_t i = 0;
      for (; i + simd::kWidth <= H * W; i += simd::kWidth) simd::store(plane + i, simd::load(plane + i) + v);
      for (; i < H * W; ++i) plane[i] += share;
      return;
    }
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
