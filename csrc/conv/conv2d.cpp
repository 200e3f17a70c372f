// 2-D convolution (NCHW, groups = 1) as im2col + the packed GEMM of
// matmul.cpp. The images go through in chunks of nb; with P = OH*OW output
// pixels an image and CRS = C*R*S taps an output value:
//
//   cols (CRS, nb*P):  column i*P + (oh, ow), row (c, r, s) holds
//                      x[image i, c, oh*sh - ph + r*dh, ow*sw - pw + s*dw], 0 in the padding
//   forward:           Y (K, nb*P) = W (K, CRS) . cols, then y[image i, k] = Y[k, i*P ..] + bias[k]
//   backward:          dW += dY . cols^T and dcols = W^T . dY: matmul_backward of that
//                      product (dcols zeroed first); dx += col2im(dcols)
//
// One image alone has a GEMM of only P columns: below a few hundred, the
// micro-tiles' width is mostly padding and the GEMM's fixed costs dominate,
// so small images are batched into one GEMM of about kTargetColumns columns.
// A large image is a chunk of its own, and Y is then y itself; a 1x1
// convolution with stride 1 and no padding also reads x as its cols and
// accumulates into dx as its dcols: no copies at all.
//
// Threads: the GEMM is threaded inside matmul; im2col splits (image, row)
// pairs, col2im (image, channel) pairs, so no two threads write the same
// element. The chunking depends on the shapes only and every element is
// summed in one fixed order, so any thread count gives the same bits.
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

// Scratch slots, all on the calling thread. matmul's GEMM takes 0 and 1.
constexpr int kChunkSlot = 2;  // a chunk's Y or dY in GEMM layout (K, nb*P)
constexpr int kColsSlot = 3;   // a chunk's cols and dcols

// Images per chunk: enough for about kTargetColumns GEMM columns, as long as
// their cols stay within kColsBudget floats (16 MiB).
constexpr int64_t kTargetColumns = 2048;
constexpr int64_t kColsBudget = int64_t(1) << 22;

// The images of each chunk; chunks are as even as possible (nb images, the
// last one fewer).
int64_t images_per_chunk(const ConvShape& g) {
  const int64_t wanted = (kTargetColumns + g.P() - 1) / g.P();
  const int64_t fitting = std::max<int64_t>(1, kColsBudget / (g.CRS() * g.P()));
  const int64_t most = std::min({g.N, wanted, fitting});  // N >= 1
  const int64_t chunks = (g.N + most - 1) / most;
  return (g.N + chunks - 1) / chunks;
}

// x is its own cols: one image, 1x1, stride 1, no padding.
bool direct(const ConvShape& g, int64_t images) {
  return images == 1 && g.R == 1 && g.S == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;
}

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

// cols (CRS, images*P) of x (images, C, H, W): image i fills columns
// [i*P, (i+1)*P) of every row.
void im2col(float* cols, const float* x, const ConvShape& g, int64_t images) {
  const int64_t P = g.P(), rows = g.CRS(), taps = g.R * g.S;
  PYENGINE_OMP(omp parallel for if (worth_threads(images * rows * P)) schedule(static) num_threads(thread_count()))
  for (int64_t task = 0; task < images * rows; ++task) {
    const int64_t i = task / rows, row = task % rows;
    const float* plane = x + (i * g.C + row / taps) * g.H * g.W;
    float* dst = cols + row * images * P + i * P;
    for_each_run(g, row / g.S % g.R, row % g.S, [&](int64_t oh, int64_t ih, Span span, int64_t iw0) {
      float* d = dst + oh * g.OW;
      if (ih < 0) {
        std::fill(d, d + g.OW, 0.0f);
        return;
      }
      const float* src = plane + ih * g.W + iw0;
      std::fill(d, d + span.lo, 0.0f);
      const int64_t count = span.hi - span.lo;
      if (g.sw == 1)  // a contiguous run: memcpy's vector loop
        std::memcpy(d + span.lo, src, static_cast<size_t>(count) * sizeof(float));
      else if (g.sw == 2)  // a constant stride: the compiler vectorizes it with shuffles
        for (int64_t j = 0; j < count; ++j) d[span.lo + j] = src[2 * j];
      else
        for (int64_t j = 0; j < count; ++j) d[span.lo + j] = src[j * g.sw];
      std::fill(d + span.hi, d + g.OW, 0.0f);
    });
  }
}

// dx (images, C, H, W) += the scatter of dcols (CRS, images*P), each element
// in tap order.
void col2im(float* dx, const float* dcols, const ConvShape& g, int64_t images) {
  const int64_t P = g.P(), taps = g.R * g.S;
  PYENGINE_OMP(omp parallel for if (worth_threads(images * g.CRS() * P)) schedule(static) num_threads(thread_count()))
  for (int64_t task = 0; task < images * g.C; ++task) {
    const int64_t i = task / g.C, c = task % g.C;
    float* plane = dx + task * g.H * g.W;
    for (int64_t t = 0; t < taps; ++t) {
      const float* src = dcols + (c * taps + t) * images * P + i * P;
      for_each_run(g, t / g.S, t % g.S, [&](int64_t oh, int64_t ih, Span span, int64_t iw0) {
        if (ih < 0) return;
        float* d = plane + ih * g.W + iw0;
        const float* v = src + oh * g.OW + span.lo;
        const int64_t count = span.hi - span.lo;
        if (g.sw == 1) add_run(d, v, count);
        else
          for (int64_t j = 0; j < count; ++j) d[j * g.sw] += v[j];
      });
    }
  }
}

// Moves the rows of P floats of a chunk between the image layout
// (images, K, P) of y and dy and the GEMM layout (K, images*P):
// to_images: image[i, k] = gemm[k, i] + bias[k] (bias may be null; in place
// when both are one buffer, for a single image); else gemm[k, i] = image[i, k].
void move_rows(float* dst, const float* src, const float* bias, const ConvShape& g,
               int64_t images, bool to_images) {
  const int64_t P = g.P();
  PYENGINE_OMP(omp parallel for if (worth_threads(images * g.K * P)) schedule(static) num_threads(thread_count()))
  for (int64_t row = 0; row < images * g.K; ++row) {
    const int64_t i = row / g.K, k = row % g.K;
    const int64_t image_at = row * P, gemm_at = (k * images + i) * P;
    float* d = dst + (to_images ? image_at : gemm_at);
    const float* s = src + (to_images ? gemm_at : image_at);
    if (!bias) {
      std::memmove(d, s, static_cast<size_t>(P) * sizeof(float));
      continue;
    }
    const float b = bias[k];
    for (int64_t p = 0; p < P; ++p) d[p] = s[p] + b;
  }
}

void zero(float* p, int64_t n) {
  constexpr int64_t kChunk = 16384;
  PYENGINE_OMP(omp parallel for if (worth_threads(n)) schedule(static) num_threads(thread_count()))
  for (int64_t i = 0; i < n; i += kChunk) std::fill(p + i, p + std::min(n, i + kChunk), 0.0f);
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

}  // namespace

void conv2d_forward(float* y, const float* x, const float* w, const float* bias, int64_t N,
                    int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                    int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                    int64_t dilation_h, int64_t dilation_w) {
  const ConvShape g(N, C, H, W, K, R, S, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w);
  if (N == 0) return;
  const int64_t nb = images_per_chunk(g), image_x = C * H * W, image_y = K * g.P();
  for (int64_t n = 0; n < N; n += nb) {
    const int64_t images = std::min(nb, N - n), columns = images * g.P();
    const float* cols = x + n * image_x;
    if (!direct(g, images)) {
      float* buffer = scratch_floats(kColsSlot, static_cast<size_t>(g.CRS() * columns));
      im2col(buffer, cols, g, images);
      cols = buffer;
    }
    float* out = images == 1 ? y + n * image_y : scratch_floats(kChunkSlot, static_cast<size_t>(K * columns));
    matmul_forward(out, nullptr, w, cols, nullptr, Activation::none, 1, K, columns, g.CRS(), false,
                   false, 0, 0);
    if (images > 1 || bias) move_rows(y + n * image_y, out, bias, g, images, /*to_images=*/true);
  }
}

void conv2d_backward(float* dx, float* dw, float* dbias, const float* dy, const float* x,
                     const float* w, int64_t N, int64_t C, int64_t H, int64_t W, int64_t K,
                     int64_t R, int64_t S, int64_t stride_h, int64_t stride_w, int64_t pad_h,
                     int64_t pad_w, int64_t dilation_h, int64_t dilation_w) {
  const ConvShape g(N, C, H, W, K, R, S, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w);
  if (dbias) bias_grad(dbias, dy, g);
  if ((!dx && !dw) || N == 0) return;
  const int64_t nb = images_per_chunk(g), image_x = C * H * W, image_y = K * g.P();
  for (int64_t n = 0; n < N; n += nb) {
    const int64_t images = std::min(nb, N - n), columns = images * g.P(), size = g.CRS() * columns;
    const float* dy_gemm = dy + n * image_y;
    if (images > 1) {
      float* buffer = scratch_floats(kChunkSlot, static_cast<size_t>(K * columns));
      move_rows(buffer, dy_gemm, nullptr, g, images, /*to_images=*/false);
      dy_gemm = buffer;
    }
    const float* cols = x + n * image_x;  // read only for dw
    float* dcols = dx ? dx + n * image_x : nullptr;
    if (!direct(g, images)) {
      float* buffer = scratch_floats(kColsSlot, static_cast<size_t>(2 * size));
      if (dw) im2col(buffer, cols, g, images);
      cols = buffer;
      if (dx) zero(dcols = buffer + size, size);
    }
    matmul_backward(dw, dcols, nullptr, dy_gemm, w, cols, 1, K, columns, g.CRS(), false, false, 0, 0);
    if (dx && !direct(g, images)) col2im(dx + n * image_x, dcols, g, images);
  }
}

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
