// 2-D convolution (NCHW, in groups) as im2col + the packed GEMM of
// matmul.cpp, one chunk of the output at a time: a block of output rows of
// one image, or a few whole small images. With Q columns in the chunk (its
// output pixels) and CRS = Cg*R*S taps an output value (Cg = C / groups
// input channels a group), each group g of a chunk is one GEMM on the group's
// channels, the rows [g Kg, (g + 1) Kg) of Y and of W:
//
//   cols (CRS, Q):  column q = (image, oh, ow) of the chunk, row (c, r, s):
//                   x[image, c, oh*sh - ph + r*dh, ow*sw - pw + s*dw], 0 in the padding
//   forward:        Y (K, Q) = W (K, CRS) . cols, moved to y with bias[k] added on row k and
//                   the activation applied in that same pass (without a bias, by the GEMM's
//                   epilogue where Y is y itself)
//   backward:       dW += dY . cols^T (matmul_backward of that product) and
//                   dcols = W^T . dY (a GEMM that writes it); dx += col2im(dcols)
//
// A layer with one input channel a group (depthwise, or a one-channel
// image) has no depth for a GEMM (CRS = R*S: 9 for 3x3, each packed panel
// used for a handful of multiply-adds): it is computed directly instead, by
// the register-blocked loops of depthwise.cpp, every stride and dilation.
//
// A 3x3 stride-1 layer with enough channels and tiles goes to Winograd
// F(4x4, 3x3) instead (winograd.cpp, where the measurements are): the forward,
// dx (the same correlation on dy with the flipped weight) and dw, about 4x
// fewer multiply-adds than im2col for a larger float32 error.
//
// A whole image as a chunk writes its Y straight into y; a whole 1x1 image
// with stride 1 and no padding also reads x as its cols and accumulates into
// dx as its dcols: no copies at all.
//
// Threads. The chunks write disjoint parts of y, so a forward of two or more
// chunks a thread spreads whole chunks over the threads, each with its own
// scratch and a single-threaded GEMM: no barrier inside a chunk. The
// backward does the same in a fixed number of runs of chunks, each run
// summing dW into its own partial. With too few chunks for that, they go in
// order and use the threads inside: the GEMM in matmul, im2col split by (image, row),
// col2im by (image, channel), so no two threads write the same element. The
// chunks and runs depend on the shapes only and every element is summed in
// one fixed order: any thread count gives the same bits.
#include <algorithm>
#include <cstring>

#include "conv/conv_shape.h"
#include "conv/depthwise.h"
#include "conv/winograd.h"
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

// Chunk sizes (measured on ResNet-50 layers). An image of more than
// kBlockColumns output pixels is cut into blocks of whole output rows, about
// kBlockColumns GEMM columns each: the GEMM's packed block of cols then stays
// in L2 (3x3 64->64 at 56x56: 30% faster than whole images). Smaller images
// are batched up to about kTargetColumns columns, within kColsBudget floats of
// cols (16 MiB): an image of 14x14 alone would leave most of the micro-tiles'
// width empty.
constexpr int64_t kBlockColumns = 512;
constexpr int64_t kTargetColumns = 2048;
constexpr int64_t kColsBudget = int64_t(1) << 22;
// The backward spreads the chunks over the threads (single-threaded GEMMs) in
// kRanges runs at most (a fixed number: the sums do not depend on the thread
// count), each summing its dW into its own partial, within kPartialBudget
// floats (8 MiB). Sharing each chunk's GEMM by the threads instead measured
// up to 14% faster on an idle machine (3x3 128->128 at 28x28, 2 threads), but
// it costs barriers in every chunk, and with another process on the cores
// each one can wait a scheduler tick: a 45 ms backward then took 3.4 s.
constexpr int64_t kRanges = 8;
constexpr int64_t kPartialBudget = int64_t(1) << 21;

// A chunk: `images` whole images from image n, or output rows [oh0, oh0 +
// rows) of image n alone. Its GEMM has images * rows * OW columns.
struct Chunk {
  int64_t n, images, oh0, rows;
};

bool pointwise(const ConvShape& g) {
  return g.R == 1 && g.S == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;
}

// The chunks of the output, in order, `count` of them: `per_image` blocks of
// output rows of each image in turn, or (per_image == 0) runs of whole
// images. Sizes differ by one row or image at most and depend on the shapes only.
struct Chunking {
  int64_t per_image, count;

  explicit Chunking(const ConvShape& g) {
    auto parts = [](int64_t total, int64_t most) { return (total + most - 1) / most; };
    // A 1x1 image is kept whole: stride 1 unpadded, it is its own cols;
    // otherwise its cols are the C strided pixels gathered once (C rows, not
    // C*R*S), and a whole image's Y is y itself, with no move after the GEMM.
    if (g.P() > kBlockColumns && !(g.R == 1 && g.S == 1)) {
      per_image = parts(g.OH, std::max<int64_t>(1, kBlockColumns / g.OW));
      count = g.N * per_image;
    } else {
      const int64_t wanted = (kTargetColumns + g.P() - 1) / g.P();
      const int64_t fitting = std::max<int64_t>(1, kColsBudget / (g.CRS() * g.P()));
      per_image = 0;
      count = g.N ? parts(g.N, std::min({g.N, wanted, fitting})) : 0;
    }
  }

  // Chunks that write disjoint parts of dx: an image's blocks (their input
  // rows overlap), or a run of whole images.
  int64_t units() const { return per_image ? count / per_image : count; }

  Chunk at(const ConvShape& g, int64_t index) const {
    if (!per_image) {
      const int64_t n0 = index * g.N / count, n1 = (index + 1) * g.N / count;
      return {n0, n1 - n0, 0, g.OH};
    }
    const int64_t block = index % per_image;
    const int64_t oh0 = block * g.OH / per_image, oh1 = (block + 1) * g.OH / per_image;
    return {index / per_image, 1, oh0, oh1 - oh0};
  }
};

// The chunk's Y is y itself: one whole image.
bool whole_image(const ConvShape& g, const Chunk& c) { return c.images == 1 && c.rows == g.OH; }
// x is the chunk's cols: one whole 1x1, stride 1, unpadded image.
bool direct(const ConvShape& g, const Chunk& c) { return whole_image(g, c) && pointwise(g); }

// Enough work in all to start threads for a pass over `elements` floats.
bool worth_threads(int64_t elements) {
  return elements >= PYENGINE_PARALLEL_MIN_WORK && !in_parallel_region();
}

// dst[i] += src[i] for i < n: whole vectors, then one masked one.
inline void add_run(float* dst, const float* src, int64_t n) {
  int64_t i = 0;
  for (; i + kWidth <= n; i += kWidth) simd::store(dst + i, simd::load(dst + i) + simd::load(src + i));
  if (i < n)
    simd::store_partial(dst + i, simd::load_partial(dst + i, n - i, 0.0f) + simd::load_partial(src + i, n - i, 0.0f),
                        n - i);
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

// dst[0, n) = src[0, n): whole vectors, then one masked one. The runs of a
// small image are short (10 floats a run for LeNet's 5x5 at 14x14): a
// memcpy call each cost more than the copy (its im2col took 2x the
// instructions of the GEMM after it).
inline void copy_run(float* dst, const float* src, int64_t n) {
  int64_t i = 0;
  for (; i + kWidth <= n; i += kWidth) simd::store(dst + i, simd::load(src + i));
  if (i < n) simd::store_partial(dst + i, simd::load_partial(src + i, n - i, 0.0f), n - i);
}

// dst[j] = src[2 j] for j < n: the even lanes of two vector loads, where a
// scalar loop moved one float at a time (the stride-2 layers' im2col). The
// second load stops at src[2 (n - 1)], the run's last input.
inline void copy_run_stride2(float* dst, const float* src, int64_t n) {
  simd::vint evens;
  for (int64_t l = 0; l < kWidth; ++l) evens[l] = static_cast<int32_t>(2 * l);
  int64_t j = 0;
  for (; j + kWidth <= n; j += kWidth) {
    const simd::vfloat lo = simd::load(src + 2 * j);
    const simd::vfloat hi = simd::load_partial(src + 2 * j + kWidth, kWidth - 1, 0.0f);
    simd::store(dst + j, __builtin_shuffle(lo, hi, evens));
  }
  if (j < n) {
    const int64_t inputs = 2 * (n - j) - 1;
    const simd::vfloat lo = simd::load_partial(src + 2 * j, std::min<int64_t>(inputs, kWidth), 0.0f);
    const simd::vfloat hi =
        simd::load_partial(src + 2 * j + kWidth, std::max<int64_t>(inputs - kWidth, 0), 0.0f);
    simd::store_partial(dst + j, __builtin_shuffle(lo, hi, evens), n - j);
  }
}

// dst[0, n) = 0; most runs have no padding to fill (n = 0).
inline void zero_run(float* dst, int64_t n) {
  if (n <= 0) return;
  if (n < kWidth) simd::store_partial(dst, simd::vfloat{}, n);
  else std::fill(dst, dst + n, 0.0f);
}

// Where tap (r, s) reads an input plane: the output rows [rows.lo, rows.hi)
// and columns [cols.lo, cols.hi) whose input lies inside the image (the
// others read padding); output (oh, cols.lo) reads the plane's element
// start + oh * row_step, and the next columns every sw elements. Worked out
// once a tap, not once a run: the runs of a small image are a few floats.
struct TapRuns {
  Span rows, cols;
  int64_t start, row_step;
};

TapRuns tap_runs(const ConvShape& g, int64_t r, int64_t s) {
  const Span cols = inside(g.in_col(0, s), g.sw, g.W, g.OW);
  return {inside(g.in_row(0, r), g.sh, g.H, g.OH), cols,
          g.in_row(0, r) * g.W + g.in_col(cols.lo, s), g.sh * g.W};
}

// The output rows of [lo, hi) that a tap reads inside the image; empty when
// none of its columns does.
Span inside_rows(const TapRuns& t, int64_t lo, int64_t hi) {
  if (t.cols.lo >= t.cols.hi) return {lo, lo};
  const int64_t first = std::clamp(t.rows.lo, lo, hi);
  return {first, std::clamp(t.rows.hi, first, hi)};
}

// cols (CRS, columns) of chunk c and group `group` from x (images, C, H, W)
// at its first image: image i fills columns [i*block, (i+1)*block) of every
// row, block = c.rows * OW.
void im2col(float* cols, const float* x, const ConvShape& g, const Chunk& c, int64_t group) {
  const int64_t block = c.rows * g.OW, columns = c.images * block, rows = g.CRS(), taps = g.R * g.S;
  parallel_for(worth_threads(rows * columns), c.images * rows, [&](int64_t task) {
    // Locals, not captures: the vector stores may alias anything, so a
    // captured value would be reloaded after each of them.
    const int64_t OW = g.OW, sw = g.sw, oh0 = c.oh0, oh_end = c.oh0 + c.rows;
    // Row by row of cols, the images of a chunk in turn: its writes run
    // along one row (image by image, the rows 8 KiB apart at 2048 columns
    // took a TLB miss each: 128->256 @16 stride 2, batch 32, im2col 2x the time).
    const int64_t row = task / c.images, i = task % c.images;
    const float* plane = x + (i * g.C + group * g.Cg() + row / taps) * g.H * g.W;
    float* dst = cols + row * columns + i * block;  // output row oh at dst + (oh - oh0) * OW
    const TapRuns t = tap_runs(g, row / g.S % g.R, row % g.S);
    const Span valid = inside_rows(t, oh0, oh_end);
    const int64_t lo = t.cols.lo, hi = t.cols.hi, count = hi - lo, start = t.start, step = t.row_step;
    zero_run(dst, (valid.lo - oh0) * OW);
    for (int64_t oh = valid.lo; oh < valid.hi; ++oh) {
      float* d = dst + (oh - oh0) * OW;
      const float* src = plane + (start + oh * step);
      zero_run(d, lo);
      if (sw == 1) copy_run(d + lo, src, count);
      else if (sw == 2) copy_run_stride2(d + lo, src, count);
      else
        for (int64_t j = 0; j < count; ++j) d[lo + j] = src[j * sw];
      zero_run(d + hi, OW - hi);
    }
    zero_run(dst + (valid.hi - oh0) * OW, (oh_end - valid.hi) * OW);
  });
}

// dx (images, C, H, W) at the chunk's first image += the scatter of its
// dcols (CRS, columns) of group `group`, each element in tap order.
void col2im(float* dx, const float* dcols, const ConvShape& g, const Chunk& c, int64_t group) {
  const int64_t block = c.rows * g.OW, columns = c.images * block, taps = g.R * g.S;
  parallel_for(worth_threads(g.CRS() * columns), c.images * g.Cg(), [&](int64_t task) {
    const int64_t OW = g.OW, sw = g.sw, oh0 = c.oh0;  // locals, as in im2col
    const int64_t i = task / g.Cg(), channel = task % g.Cg();
    float* plane = dx + (i * g.C + group * g.Cg() + channel) * g.H * g.W;
    for (int64_t tap = 0; tap < taps; ++tap) {
      const TapRuns t = tap_runs(g, tap / g.S, tap % g.S);
      const Span valid = inside_rows(t, oh0, oh0 + c.rows);
      const int64_t count = t.cols.hi - t.cols.lo, start = t.start, step = t.row_step;
      // this tap's row of dcols, the chunk's output row oh at src + (oh - oh0) * OW
      const float* src = dcols + (channel * taps + tap) * columns + i * block + t.cols.lo;
      for (int64_t oh = valid.lo; oh < valid.hi; ++oh) {
        float* d = plane + (start + oh * step);
        const float* v = src + (oh - oh0) * OW;
        if (sw == 1) add_run(d, v, count);
        else
          for (int64_t j = 0; j < count; ++j) d[j * sw] += v[j];
      }
    }
  });
}

// d[p] = act(s[p] + *bias) for p < n (no addition without a bias); in place
// when d == s. The activation's own kernel's SIMD function, tail included.
template <Activation act>
void bias_activate(float* d, const float* s, const float* bias, int64_t n) {
  const simd::vfloat b = simd::splat(bias ? *bias : 0.0f);
  int64_t p = 0;
  for (; p + kWidth <= n; p += kWidth) {
    const simd::vfloat v = simd::load(s + p);
    simd::store(d + p, simd::activate(bias ? v + b : v, act));
  }
  if (p < n) {
    const simd::vfloat v = simd::load_partial(s + p, n - p, 0.0f);
    simd::store_partial(d + p, simd::activate(bias ? v + b : v, act), n - p);
  }
}

void bias_activate_run(float* d, const float* s, const float* bias, Activation act, int64_t n) {
  switch (act) {
    case Activation::relu: return bias_activate<Activation::relu>(d, s, bias, n);
    case Activation::gelu: return bias_activate<Activation::gelu>(d, s, bias, n);
    case Activation::gelu_erf: return bias_activate<Activation::gelu_erf>(d, s, bias, n);
    default: return bias_activate<Activation::none>(d, s, bias, n);
  }
}

// Moves a chunk's runs of block = c.rows * OW floats between the image
// layout (images, K, P) of y and dy, at the chunk's first image, and the GEMM
// layout (K, images * block):
// to_images: image[i, k] = act(gemm[k, i] + bias[k]) (bias may be null; in
// place when both are one buffer, for a whole image); else gemm[k, i] = image[i, k].
void move_rows(float* dst, const float* src, const float* bias, Activation act, const ConvShape& g,
               const Chunk& c, bool to_images) {
  const int64_t block = c.rows * g.OW;
  parallel_for(worth_threads(c.images * g.K * block), c.images * g.K, [&](int64_t row) {
    const int64_t i = row / g.K, k = row % g.K;
    const int64_t image_at = row * g.P() + c.oh0 * g.OW, gemm_at = (k * c.images + i) * block;
    float* d = dst + (to_images ? image_at : gemm_at);
    const float* s = src + (to_images ? gemm_at : image_at);
    if (!bias && act == Activation::none) {
      std::memmove(d, s, static_cast<size_t>(block) * sizeof(float));
      return;
    }
    bias_activate_run(d, s, bias ? bias + k : nullptr, act, block);
  });
}

// dw (size,) += partial[0] + partial[1] + ... + partial[ranges - 1], summed
// in that order into partial[0]; threads split the elements.
void reduce_partials(float* dw, float* partial, int64_t ranges, int64_t size) {
  constexpr int64_t kRun = 4096;
  parallel_chunks(worth_threads(ranges * size), size, kRun, [&](int64_t i, int64_t end) {
    const int64_t count = end - i;
    for (int64_t r = 1; r < ranges; ++r) add_run(partial + i, partial + r * size + i, count);
    add_run(dw + i, partial + i, count);
  });
}

// dbias[k] += the sum of dy[n, k, :] over the images, in image order.
void bias_grad(float* dbias, const float* dy, const ConvShape& g) {
  const int64_t P = g.P();
  parallel_for(g.K > 1 && worth_threads(g.N * g.K * P), g.K, [&](int64_t k) {
    float acc = 0.0f;
    for (int64_t n = 0; n < g.N; ++n) acc += row::sum(dy + (n * g.K + k) * P, P);
    dbias[k] += acc;
  });
}

}  // namespace

void conv2d_forward(float* y, const float* x, const float* w, const float* bias, Activation activation,
                    int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                    int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                    int64_t dilation_h, int64_t dilation_w, int64_t groups) {
  const ConvShape g(N, C, H, W, K, R, S, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups);
  if (g.Cg() == 1) return depthwise_forward(y, x, w, bias, activation, g);  // padding multiplied too
  if (winograd_fits(g))
    return winograd_conv(y, x, w, bias, activation, {N, C, H, W, K, g.OH, g.OW, g.ph, g.pw, false}, false);
  const int64_t image_x = C * H * W, image_y = K * g.P(), Kg = g.Kg();
  auto forward = [&](const Chunk& c) {
    const int64_t columns = c.images * c.rows * g.OW, size = direct(g, c) ? 0 : g.CRS() * columns;
    ScratchFrame scratch;  // a chunk's cols (one group's) and Y, on the thread running it
    float* work = scratch.floats(static_cast<size_t>(size + K * columns));
    float* out = whole_image(g, c) ? y + c.n * image_y : work + size;
    // Y is y and there is no bias to add: the GEMM's epilogue applies the
    // activation; otherwise the pass that moves Y to y (and adds the bias) does.
    const bool in_gemm = whole_image(g, c) && !bias;
    for (int64_t group = 0; group < g.G; ++group) {
      if (size) im2col(work, x + c.n * image_x, g, c, group);
      const float* cols = size ? work : x + c.n * image_x + group * g.Cg() * H * W;
      matmul_forward(out + group * Kg * columns, nullptr, w + group * Kg * g.CRS(), cols, nullptr,
                     in_gemm ? activation : Activation::none, 1, Kg, columns, g.CRS(), false, false, 0, 0);
    }
    if (!in_gemm) move_rows(y + c.n * image_y, out, bias, activation, g, c, /*to_images=*/true);
  };
  // The chunks write disjoint parts of y. With two or more a thread, each
  // thread takes whole chunks (its own scratch, a single-threaded GEMM: no
  // barrier inside a chunk); otherwise they go in order, each using the
  // threads. A GEMM gives the same bits on any number of threads either way.
  const Chunking chunks(g);
  if (thread_count() > 1 && chunks.count >= 2 * thread_count() &&
      worth_threads(N * K * g.P() * g.CRS())) {
    PYENGINE_OMP(omp parallel for schedule(dynamic) num_threads(thread_count()))
    for (int64_t i = 0; i < chunks.count; ++i) forward(chunks.at(g, i));
  } else {
    for (int64_t i = 0; i < chunks.count; ++i) forward(chunks.at(g, i));
  }
}

void conv2d_backward(float* dx, float* dw, float* dbias, const float* dy, const float* x,
                     const float* w, int64_t N, int64_t C, int64_t H, int64_t W, int64_t K,
                     int64_t R, int64_t S, int64_t stride_h, int64_t stride_w, int64_t pad_h,
                     int64_t pad_w, int64_t dilation_h, int64_t dilation_w, int64_t groups) {
  const ConvShape g(N, C, H, W, K, R, S, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups);
  if (dbias) bias_grad(dbias, dy, g);
  if ((!dx && !dw) || N == 0) return;
  if (g.Cg() == 1) return depthwise_backward(dx, dw, dy, x, w, g);
  if (winograd_fits(g)) {
    if (dx)  // dx += the full correlation of dy with the flipped weight
      winograd_conv(dx, dy, w, nullptr, Activation::none, {N, K, g.OH, g.OW, C, H, W, 2 - g.ph, 2 - g.pw, true},
                    true);
    if (dw) winograd_weight_grad(dw, x, dy, {N, C, H, W, K, g.OH, g.OW, g.ph, g.pw, false});
    return;
  }
  const int64_t image_x = C * H * W, image_y = K * g.P(), size_w = K * g.CRS(), Kg = g.Kg();
  // One chunk, group by group: dw_into += dY . cols^T, dx += col2im(W^T . dY).
  auto backward = [&](const Chunk& c, float* dw_into) {
    const int64_t columns = c.images * c.rows * g.OW, size = direct(g, c) ? 0 : g.CRS() * columns;
    ScratchFrame scratch;  // a chunk's cols, dcols and dY, on the thread running it
    float* work = scratch.floats(static_cast<size_t>(2 * size + K * columns));
    const float* dy_gemm = dy + c.n * image_y;
    if (!whole_image(g, c)) {
      move_rows(work + 2 * size, dy_gemm, nullptr, Activation::none, g, c, /*to_images=*/false);
      dy_gemm = work + 2 * size;
    }
    for (int64_t group = 0; group < g.G; ++group) {
      const int64_t channels = group * g.Cg() * H * W;  // the group's first input channel
      const float* cols = size ? work : x + c.n * image_x + channels;  // read only for dw
      float* dcols = !dx ? nullptr : size ? work + size : dx + c.n * image_x + channels;
      if (size && dw_into) im2col(work, x + c.n * image_x, g, c, group);
      const float* w_group = w + group * Kg * g.CRS();
      const float* dy_group = dy_gemm + group * Kg * columns;
      // dcols of scratch is written by the GEMM (W^T . dY), not zeroed and
      // accumulated into; a direct chunk's dcols is dx itself, which accumulates.
      const bool dcols_written = size && dx;
      if (dcols_written)
        matmul_forward(dcols, nullptr, w_group, dy_group, nullptr, Activation::none, 1, g.CRS(), columns, Kg,
                       true, false, 0, 0);
      if (dw_into || (dcols && !dcols_written))
        matmul_backward(dw_into ? dw_into + group * Kg * g.CRS() : nullptr, dcols_written ? nullptr : dcols,
                        nullptr, dy_group, w_group, cols, 1, Kg, columns, g.CRS(), false, false, 0, 0,
                        /*accumulate=*/true);
      if (dcols_written) col2im(dx + c.n * image_x, dcols, g, c, group);
    }
  };
  // Units of chunks that write disjoint parts of dx: the blocks of one image
  // (their input rows overlap), or one chunk of whole images. They go in
  // `ranges` runs of consecutive units, run r summing its dW in partial r,
  // the runs spread over the threads. With fewer than two runs the chunks go
  // in order, each using the threads, and sum into dw directly.
  const Chunking chunks(g);
  const int64_t units = chunks.units(), per_unit = std::max<int64_t>(chunks.per_image, 1);
  const int64_t ranges = std::min({units, kRanges, std::max<int64_t>(1, kPartialBudget / size_w)});
  if (ranges < 2) {
    for (int64_t i = 0; i < chunks.count; ++i) backward(chunks.at(g, i), dw);
    return;
  }
  ScratchFrame scratch;  // dW partials, on the thread calling the backward
  float* partial = dw ? scratch.floats(static_cast<size_t>(ranges * size_w)) : nullptr;
  if (dw) std::fill(partial, partial + ranges * size_w, 0.0f);
  parallel_for(worth_threads(N * K * g.P() * g.CRS()), ranges, [&](int64_t r) {
    for (int64_t i = r * units / ranges * per_unit; i < (r + 1) * units / ranges * per_unit; ++i)
      backward(chunks.at(g, i), dw ? partial + r * size_w : nullptr);
  });
  if (dw) reduce_partials(dw, partial, ranges, size_w);
}

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
