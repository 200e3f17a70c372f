// 2-D convolution (NCHW, groups = 1) as im2col + the packed GEMM of
// matmul.cpp. Per image, with P = OH*OW output pixels and CRS = C*R*S taps:
//
//   cols (CRS, P):  cols[(c, r, s), (oh, ow)] = x[c, oh*sh - ph + r*dh, ow*sw - pw + s*dw],
//                   0 where that lies in the padding
//   forward:        Y (K, P) = W (K, CRS) . cols, then bias[k] added along row k
//   backward:       dW += dY . cols^T and dcols = W^T . dY: matmul_backward of
//                   that product (dcols zeroed first); dx += col2im(dcols)
//
// A 1x1 convolution with stride 1 and no padding reads x itself as its cols
// and accumulates straight into dx as its dcols: no copies.
//
// Threading depends on the size of one image's GEMM. A large one is shared
// by the threads, one image after another: im2col split by rows of cols,
// the GEMM threaded inside matmul, col2im split by channels. Small ones go
// one image per thread, each with a single-threaded GEMM (matmul stays on the
// calling thread inside a parallel region) and its own cols in its thread's
// scratch; dW is then summed from per-group partials. The path and the groups
// depend on the shapes only, never on the thread count, so every thread
// count gives the same bits.
#include <algorithm>
#include <cstring>

#include "conv/conv_shape.h"
#include "core/kernel_list.inc"
#include "core/parallel.h"
#include "core/row_ops.h"
#include "core/scratch.h"
#include "core/simd.h"

namespace pyengine {
namespace PYENGINE_KERNEL_NS {
namespace {

using simd::kWidth;

// Scratch slots. matmul's GEMM takes 0 and 1 on the thread that calls it.
constexpr int kPartialSlot = 2;  // dW partials, on the thread calling the backward
constexpr int kColsSlot = 3;     // cols and dcols, on each thread that runs an image

// An image's GEMM of at least this many multiply-adds is shared by the
// threads (the rule matmul applies to a batch of matrices).
constexpr int64_t kSharedGemmWork = 128 * 128 * 128;
// The images-over-threads backward sums dW in at most kGroups partials, one
// per group of consecutive images (a fixed grouping: the sums do not depend
// on the thread count). A dW of more than kMaxPartial floats takes the shared
// GEMM instead, which writes it in place.
constexpr int64_t kGroups = 16;
constexpr int64_t kMaxPartial = int64_t(1) << 16;

int64_t gemm_work(const ConvShape& g) { return g.K * g.P() * g.CRS(); }
bool pointwise(const ConvShape& g) {
  return g.R == 1 && g.S == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;
}
bool images_over_threads(const ConvShape& g) { return g.N > 1 && gemm_work(g) < kSharedGemmWork; }
// Enough work in all to start threads for a pass over `elements` floats.
bool worth_threads(int64_t elements) {
  return elements >= PYENGINE_PARALLEL_MIN_WORK && !in_parallel_region();
}

// dst[i] += src[i] for i < n.
inline void add_run(float* dst, const float* src, int64_t n) {
  int64_t i = 0;
  for (; i + kWidth <= n; i += kWidth) simd::store(dst + i, simd::load(dst + i) + simd::load(src + i));
  for (; i < n; ++i) dst[i] += src[i];
}

// The output positions o in [0, out) whose input o*stride + offset lies in [0, in).
struct Span {
  int64_t lo, hi;
};

Span inside(int64_t offset, int64_t stride, int64_t in, int64_t out) {
  auto ceil_div = [stride](int64_t a) { return a <= 0 ? 0 : (a + stride - 1) / stride; };
  const int64_t lo = std::min(out, ceil_div(-offset));
  return {lo, std::max(lo, std::min(out, ceil_div(in - offset)))};
}

// Row (c, r, s) of cols, one output row oh at a time: fn(oh, ih, span, iw0),
// where the outputs [span.lo, span.hi) of that row read input row ih at
// columns iw0, iw0 + sw, ...; ih is -1 when the whole output row is padding.
template <typename Fn>
void for_each_run(const ConvShape& g, int64_t r, int64_t s, Fn fn) {
  const Span rows = inside(g.in_row(0, r), g.sh, g.H, g.OH);
  const Span span = inside(g.in_col(0, s), g.sw, g.W, g.OW);
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    const bool valid = oh >= rows.lo && oh < rows.hi && span.lo < span.hi;
    fn(oh, valid ? g.in_row(oh, r) : -1, span, g.in_col(span.lo, s));
  }
}

// cols (CRS, P) of one image x (C, H, W); threads split the rows.
void im2col(float* cols, const float* x, const ConvShape& g) {
  const int64_t P = g.P();
  PYENGINE_OMP(omp parallel for if (worth_threads(g.CRS() * P)) schedule(static) num_threads(thread_count()))
  for (int64_t row = 0; row < g.CRS(); ++row) {
    const float* plane = x + row / (g.R * g.S) * g.H * g.W;
    float* dst = cols + row * P;
    for_each_run(g, row / g.S % g.R, row % g.S, [&](int64_t oh, int64_t ih, Span span, int64_t iw0) {
      float* d = dst + oh * g.OW;
      if (ih < 0) {
        std::fill(d, d + g.OW, 0.0f);
        return;
      }
      const float* src = plane + ih * g.W + iw0;
      std::fill(d, d + span.lo, 0.0f);
      if (g.sw == 1)  // a contiguous run: memcpy's vector loop
        std::memcpy(d + span.lo, src, static_cast<size_t>(span.hi - span.lo) * sizeof(float));
      else
        for (int64_t o = span.lo; o < span.hi; ++o) d[o] = src[(o - span.lo) * g.sw];
      std::fill(d + span.hi, d + g.OW, 0.0f);
    });
  }
}

// dx (C, H, W) += the scatter of dcols (CRS, P); threads split the channels,
// so no two of them write the same element.
void col2im(float* dx, const float* dcols, const ConvShape& g) {
  const int64_t P = g.P(), taps = g.R * g.S;
  PYENGINE_OMP(omp parallel for if (g.C > 1 && worth_threads(g.CRS() * P)) schedule(static) num_threads(thread_count()))
  for (int64_t c = 0; c < g.C; ++c)
    for (int64_t t = 0; t < taps; ++t) {
      const float* src = dcols + (c * taps + t) * P;
      float* plane = dx + c * g.H * g.W;
      for_each_run(g, t / g.S, t % g.S, [&](int64_t oh, int64_t ih, Span span, int64_t iw0) {
        if (ih < 0) return;
        float* d = plane + ih * g.W + iw0;
        const float* v = src + oh * g.OW + span.lo;
        const int64_t count = span.hi - span.lo;
        if (g.sw == 1) add_run(d, v, count);
        else
          for (int64_t i = 0; i < count; ++i) d[i * g.sw] += v[i];
      });
    }
}

void zero(float* p, int64_t n) {
  constexpr int64_t kChunk = 16384;
  PYENGINE_OMP(omp parallel for if (worth_threads(n)) schedule(static) num_threads(thread_count()))
  for (int64_t i = 0; i < n; i += kChunk) std::fill(p + i, p + std::min(n, i + kChunk), 0.0f);
}

// Y (K, P) = W . cols of one image, without the bias.
void forward_image(const ConvShape& g, float* y, const float* x, const float* w) {
  const float* cols = x;
  if (!pointwise(g)) {
    float* buffer = scratch_floats(kColsSlot, static_cast<size_t>(g.CRS() * g.P()));
    im2col(buffer, x, g);
    cols = buffer;
  }
  matmul_forward(y, nullptr, w, cols, nullptr, Activation::none, 1, g.K, g.P(), g.CRS(), false,
                 false, 0, 0);
}

// One image: dw += dY . cols^T and dx += col2im(W^T . dY); either may be null.
void backward_image(const ConvShape& g, float* dx, float* dw, const float* dy, const float* x,
                    const float* w) {
  const int64_t size = g.CRS() * g.P();
  const float* cols = x;  // read only for dw
  float* dcols = dx;
  if (!pointwise(g)) {
    float* buffer = scratch_floats(kColsSlot, static_cast<size_t>(2 * size));
    if (dw) im2col(buffer, x, g);
    cols = buffer;
    if (dx) zero(dcols = buffer + size, size);
  }
  matmul_backward(dw, dcols, nullptr, dy, w, cols, 1, g.K, g.P(), g.CRS(), false, false, 0, 0);
  if (dx && !pointwise(g)) col2im(dx, dcols, g);
}

// Runs fn(i) for i < count: across the threads when `across`, else in order
// on this thread (whose kernels may then use the threads themselves).
template <typename Fn>
void for_each_image(int64_t count, bool across, Fn fn) {
  if (!across) {
    for (int64_t i = 0; i < count; ++i) fn(i);
    return;
  }
  PYENGINE_OMP(omp parallel for schedule(static) num_threads(thread_count()))
  for (int64_t i = 0; i < count; ++i) fn(i);
}

// y (N, K, P): row k of every image += bias[k].
void add_bias(float* y, const float* bias, const ConvShape& g) {
  const int64_t P = g.P();
  PYENGINE_OMP(omp parallel for if (worth_threads(g.N * g.K * P)) schedule(static) num_threads(thread_count()))
  for (int64_t row = 0; row < g.N * g.K; ++row) {
    const float b = bias[row % g.K];
    float* yr = y + row * P;
    for (int64_t i = 0; i < P; ++i) yr[i] += b;
  }
}

// dbias[k] += the sum of dy[n, k, :] over the images, in image order.
void bias_grad(float* dbias, const float* dy, const ConvShape& g) {
  const int64_t P = g.P();
  PYENGINE_OMP(omp parallel for if (g.K > 1 && worth_threads(g.N * g.K * P)) schedule(static) num_threads(thread_count()))
  for (int64_t k = 0; k < g.K; ++k) {
    float acc = 0.0f;
    for (int64_t n = 0; n < g.N; ++n) acc += row::sum(dy + (n * g.K + k) * P, P);
    dbias[k] += acc;
  }
}

// dw (size,) += partial[0] + partial[1] + ... + partial[groups - 1], summed
// in that order into partial[0]; threads split the elements.
void reduce_partials(float* dw, float* partial, int64_t groups, int64_t size) {
  constexpr int64_t kChunk = 4096;
  PYENGINE_OMP(omp parallel for if (worth_threads(groups * size)) schedule(static) num_threads(thread_count()))
  for (int64_t i = 0; i < size; i += kChunk) {
    const int64_t count = std::min(kChunk, size - i);
    for (int64_t group = 1; group < groups; ++group) add_run(partial + i, partial + group * size + i, count);
    add_run(dw + i, partial + i, count);
  }
}

}  // namespace

void conv2d_forward(float* y, const float* x, const float* w, const float* bias, int64_t N,
                    int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                    int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                    int64_t dilation_h, int64_t dilation_w) {
  const ConvShape g(N, C, H, W, K, R, S, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w);
  const bool across = images_over_threads(g) && worth_threads(N * gemm_work(g));
  for_each_image(N, across, [&](int64_t n) {
    forward_image(g, y + n * K * g.P(), x + n * C * H * W, w);
  });
  if (bias) add_bias(y, bias, g);
}

void conv2d_backward(float* dx, float* dw, float* dbias, const float* dy, const float* x,
                     const float* w, int64_t N, int64_t C, int64_t H, int64_t W, int64_t K,
                     int64_t R, int64_t S, int64_t stride_h, int64_t stride_w, int64_t pad_h,
                     int64_t pad_w, int64_t dilation_h, int64_t dilation_w) {
  const ConvShape g(N, C, H, W, K, R, S, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w);
  if (dbias) bias_grad(dbias, dy, g);
  if ((!dx && !dw) || N == 0) return;
  const int64_t image_x = C * H * W, image_y = K * g.P(), size_w = K * g.CRS();
  auto image = [&](int64_t n, float* dw_into) {
    backward_image(g, dx ? dx + n * image_x : nullptr, dw_into, dy + n * image_y, x + n * image_x, w);
  };
  if (!images_over_threads(g) || (dw && size_w > kMaxPartial)) {
    for (int64_t n = 0; n < N; ++n) image(n, dw);  // each image's GEMMs use the threads
    return;
  }
  const int64_t groups = std::min(N, kGroups);
  float* partial = dw ? scratch_floats(kPartialSlot, static_cast<size_t>(groups * size_w)) : nullptr;
  if (dw) std::fill(partial, partial + groups * size_w, 0.0f);
  for_each_image(groups, worth_threads(N * gemm_work(g)), [&](int64_t group) {
    for (int64_t n = group * N / groups; n < (group + 1) * N / groups; ++n)
      image(n, dw ? partial + group * size_w : nullptr);
  });
  if (dw) reduce_partials(dw, partial, groups, size_w);
}

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
