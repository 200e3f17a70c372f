// Winograd F(4x4, 3x3): each 4x4 block of output pixels (a tile) of a 3x3
// stride-1 correlation comes from the 6x6 block of input it reads as
//
//   Y = AT [ (G g GT) * (BT d B) ] A      (* elementwise, over 36 positions e)
//
// with g a 3x3 filter and d the 6x6 input block. Summed over the input
// channels, position e of all tiles is one matrix product:
//
//   U[e] (Ko, Ci):  G g GT of every (output, input) channel pair: the weight transform
//   V[e] (Ci, T):   BT d B of every input channel and tile:       the input transform
//   M[e] (Ko, T) =  U[e] . V[e]: 36 GEMMs on the packed GEMM of matmul.cpp
//   y tile         = act(AT M A + bias):                            the output transform
//
// 36 products of Ko*Ci*T multiply-adds replace the 144 of the direct
// method (16 pixels * 9 taps a tile): 4x fewer, for the price of the
// transforms, which read and write each V and M element once and so cost a
// few passes over memory. They are vectorized over the tiles of a tile row:
// an input row split into its four phases (columns 4l + q) makes the column
// taps of all tiles contiguous loads.
//
// The tiles go in chunks of whole tile rows (about kChunkTiles tiles), so a
// chunk's V and M stay in cache; chunks write disjoint tiles of the output.
// As in conv2d.cpp, with two chunks or more a thread each thread takes whole
// chunks with a single-threaded GEMM; otherwise they go in order, each using
// the threads. The weight gradient sums runs of chunks into partials fixed by
// the shapes (winograd_weight_grad). Every sum has one fixed order: any thread
// count gives the same bits.
//
// The error against float64 is larger than im2col's (the transforms add and
// subtract terms up to 8x and 1/24x the inputs): on a ResNet layer with unit
// normal data, 5.6e-6 of the largest output (im2col: 8.1e-7);
// tests/test_conv.py states the bound it checks.
#include "conv/winograd.h"

#include <algorithm>

#include "core/kernel_list.inc"
#include "core/parallel.h"
#include "core/scratch.h"
#include "core/simd.h"

namespace pyengine {
namespace PYENGINE_KERNEL_NS {
namespace {

using simd::kWidth;
using simd::vfloat;

constexpr int64_t kTile = 4;   // output pixels a tile side
constexpr int64_t kInput = 6;  // input pixels a tile side
constexpr int64_t kPoints = kInput * kInput;
// Tiles a chunk: its V and M stay in L2 (3x3 64->64 at 56x56, batch 8, one
// thread, a loaded host: 64 tiles 11.8 ms, 128 13.3, 256 18.9, 512 18.5).
constexpr int64_t kChunkTiles = 64;
// The weight gradient sums its chunks in up to kRanges runs, each into its
// own dU partial, within kPartialBudget floats (16 MiB) of partials; as in
// conv2d.cpp's backward, a fixed number so that the sums do not depend on the
// thread count.
constexpr int64_t kRanges = 4;
constexpr int64_t kPartialBudget = int64_t(1) << 22;

// z (6 values, a stride apart) -> BT z, the input transform of one line.
template <typename T>
inline void input_line(T out[6], const T z[6]) {
  const T four = T{} + 4.0f, five = T{} + 5.0f, two = T{} + 2.0f;
  out[0] = four * z[0] - five * z[2] + z[4];
  out[1] = z[3] + z[4] - four * (z[1] + z[2]);
  out[2] = four * (z[1] - z[2]) + z[4] - z[3];
  out[3] = two * (z[3] - z[1]) + z[4] - z[2];
  out[4] = two * (z[1] - z[3]) + z[4] - z[2];
  out[5] = four * z[1] - five * z[3] + z[5];
}

// m (6 values) -> AT m, the output transform of one line.
template <typename T>
inline void output_line(T out[4], const T m[6]) {
  const T two = T{} + 2.0f, four = T{} + 4.0f, eight = T{} + 8.0f;
  const T sum12 = m[1] + m[2], diff12 = m[1] - m[2], sum34 = m[3] + m[4], diff34 = m[3] - m[4];
  out[0] = m[0] + sum12 + sum34;
  out[1] = diff12 + two * diff34;
  out[2] = sum12 + four * sum34;
  out[3] = diff12 + eight * diff34 + m[5];
}

// g (3 values) -> G g, the weight transform of one line.
template <typename T>
inline void weight_line(T out[6], const T g[3]) {
  const T quarter = T{} + 0.25f, sixth = T{} + (1.0f / 6.0f), twelfth = T{} + (1.0f / 12.0f),
          twenty_fourth = T{} + (1.0f / 24.0f);
  const T outer = g[0] + g[2];
  out[0] = quarter * g[0];
  out[1] = -sixth * (outer + g[1]);
  out[2] = -sixth * (outer - g[1]);
  out[3] = twenty_fourth * g[0] + twelfth * g[1] + sixth * g[2];
  out[4] = twenty_fourth * g[0] - twelfth * g[1] + sixth * g[2];
  out[5] = g[2];
}

// The tiling of a problem: TH x TW tiles an image, chunks of whole tile rows.
struct Tiling {
  int64_t TH, TW, rows, chunks;  // rows: N * TH tile rows in all

  explicit Tiling(const WinogradProblem& p)
      : TH((p.OH + kTile - 1) / kTile), TW((p.OW + kTile - 1) / kTile), rows(p.N * TH) {
    const int64_t per_chunk = std::max<int64_t>(1, kChunkTiles / TW);
    chunks = (rows + per_chunk - 1) / per_chunk;
  }
  int64_t first_row(int64_t chunk) const { return chunk * rows / chunks; }
  // A phase of a row holds its columns 4l + q, l <= TW, and a vector's slack
  // so that loads past the last tile stay inside.
  int64_t phase_length() const { return (TW + 1 + kWidth - 1) / kWidth * kWidth + kWidth; }
  // A padded input row: the 4 (TW + 1) columns the tiles read, and a vector's slack.
  int64_t row_length() const { return 4 * phase_length(); }
};

// Columns [at, at + kWidth) of a row of `width` floats, 0 outside it. The
// edges are masked loads, not a vector assembled in memory: a vector load
// of floats just stored one by one waits for the stores (store forwarding fails).
inline vfloat padded_load(const float* row, int64_t at, int64_t width) {
  if (at >= 0) {
    if (at + kWidth <= width) return simd::load(row + at);
    return at < width ? simd::load_partial(row + at, width - at, 0.0f) : vfloat{};
  }
  const int64_t shift = std::min<int64_t>(-at, kWidth);  // lanes [shift, kWidth) hold row[0 ...]
  const vfloat v = simd::load_partial(row, std::min<int64_t>(kWidth - shift, width), 0.0f);
  simd::vint lanes;
  for (int l = 0; l < kWidth; ++l) lanes[l] = l < shift ? 0 : kWidth + l - shift;  // from v, past the zeros
  return __builtin_shuffle(vfloat{}, v, lanes);
}

// Row i of a tile's 6x6 transform, `lanes` tiles, into points (i, 0..5) of
// a (36, rows, columns) array at dst (row and column of the first tile).
inline void store_points(float* dst, int64_t plane_stride, int i, const vfloat out[6], int64_t lanes) {
  for (int j = 0; j < 6; ++j) {
    float* d = dst + (i * 6 + j) * plane_stride;
    if (lanes == kWidth) simd::store(d, out[j]);
    else simd::store_partial(d, out[j], lanes);
  }
}

// phase[q * L + l] = row[4 l + q] for l < count: column j of tile l is
// phase j % 4 at l + j / 4.
inline void split_phases(float* phase, const float* row, int64_t L, int64_t count) {
  for (int64_t l = 0; l < count; ++l)
    for (int q = 0; q < 4; ++q) phase[q * L + l] = row[4 * l + q];
}

// U (36, Ko, Ci) rows ko, columns [c0, c0 + lanes) from the filters of
// those pairs gathered as taps[t][lane]: position e = (i, j) of G g GT.
void transform_filters(float* u, const float (&taps)[9][kWidth], const WinogradProblem& p, int64_t ko,
                       int64_t c0, int64_t lanes) {
  vfloat columns[6][3];  // G g: each column of g transformed
  for (int s = 0; s < 3; ++s) {
    const vfloat line[3] = {simd::load(taps[s]), simd::load(taps[3 + s]), simd::load(taps[6 + s])};
    vfloat out[6];
    weight_line(out, line);
    for (int i = 0; i < 6; ++i) columns[i][s] = out[i];
  }
  for (int i = 0; i < 6; ++i) {  // (G g) GT: each row transformed
    vfloat out[6];
    weight_line(out, columns[i]);
    for (int j = 0; j < 6; ++j) {
      float* d = u + ((i * 6 + j) * p.Ko + ko) * p.Ci + c0;
      if (lanes == kWidth) simd::store(d, out[j]);
      else simd::store_partial(d, out[j], lanes);
    }
  }
}

// U (36, Ko, Ci) from the weight (Ko, Ci, 3, 3), kWidth input channels at
// a time (their filters gathered first). The input gradient's weight is
// (Ci, Ko, 3, 3), to be flipped: it is first copied as (Ko, Ci, 3, 3),
// kWidth rows ko at a time (each ci's filters of those rows one contiguous
// read). Gathering from it directly, every filter of a row lay Ko * 9 floats
// from the last: 512 -> 512 at 4x4, 11 ms against the forward's 5.
void transform_weight(float* u, const float* w, const WinogradProblem& p) {
  const bool threads = p.Ko * p.Ci * kPoints >= PYENGINE_PARALLEL_MIN_WORK && !in_parallel_region();
  ScratchFrame frame;
  if (p.input_grad) {
    float* flipped = frame.floats(static_cast<size_t>(p.Ko * p.Ci * 9));
    parallel_for(threads, (p.Ko + kWidth - 1) / kWidth, [&](int64_t block) {
      const int64_t ko0 = block * kWidth, rows = std::min<int64_t>(kWidth, p.Ko - ko0);
      for (int64_t ci = 0; ci < p.Ci; ++ci) {
        const float* filters = w + (ci * p.Ko + ko0) * 9;  // rows ko0 .. of input channel ci
        for (int64_t r = 0; r < rows; ++r)
          for (int t = 0; t < 9; ++t) flipped[((ko0 + r) * p.Ci + ci) * 9 + t] = filters[r * 9 + 8 - t];
      }
    });
    w = flipped;
  }
  parallel_for(threads, p.Ko, [&](int64_t ko) {
    for (int64_t c0 = 0; c0 < p.Ci; c0 += kWidth) {
      const int64_t lanes = std::min<int64_t>(kWidth, p.Ci - c0);
      alignas(64) float taps[9][kWidth] = {};
      for (int64_t l = 0; l < lanes; ++l)
        for (int t = 0; t < 9; ++t) taps[t][l] = w[(ko * p.Ci + c0 + l) * 9 + t];
      transform_filters(u, taps, p, ko, c0, lanes);
    }
  });
}

// The input transform of one channel plane and one tile row (tiles of
// image row block th), into V (36, Ci, columns) at column `at` and row ci.
// `rows` (6, row_length) and `phases` (6, 4, phase_length) are the
// caller's scratch: the six input rows transformed down the columns (BT d),
// then each split into columns 4l + q for the transform along the rows.
void transform_input_row(float* v, float* rows, float* phases, const float* plane, const WinogradProblem& p,
                         const Tiling& t, int64_t th, int64_t ci, int64_t columns, int64_t at) {
  const int64_t L = t.phase_length(), width = t.row_length();
  const int64_t used = (4 * (t.TW + 1) + kWidth - 1) / kWidth * kWidth;  // the columns the tiles read, in vectors
  const float* src[kInput];  // the six input rows, null in the padding
  for (int64_t k = 0; k < kInput; ++k) {
    const int64_t ih = th * kTile - p.ph + k;
    src[k] = ih >= 0 && ih < p.IH ? plane + ih * p.IW : nullptr;
  }
  for (int64_t x = 0; x < used; x += kWidth) {  // BT d down the columns
    vfloat z[6], out[6];
    for (int k = 0; k < 6; ++k) z[k] = src[k] ? padded_load(src[k], x - p.pw, p.IW) : vfloat{};
    input_line(out, z);
    for (int k = 0; k < 6; ++k) simd::store(rows + k * width + x, out[k]);
  }
  const int64_t plane_stride = p.Ci * columns;
  float* dst = v + ci * columns + at;
  // All six rows split into phases before any is read back: a load of
  // phase l + 1 spans two vectors just stored, and stalls until they are written.
  for (int i = 0; i < 6; ++i) {
    split_phases(phases + i * 4 * L, rows + i * width, L, t.TW + 1);
  }
  for (int i = 0; i < 6; ++i) {
    const float* phase = phases + i * 4 * L;
    for (int64_t l0 = 0; l0 < t.TW; l0 += kWidth) {  // (BT d) B along the rows, kWidth tiles at a time
      const int64_t lanes = std::min<int64_t>(kWidth, t.TW - l0);
      vfloat z[6], out[6];
      for (int j = 0; j < 6; ++j) z[j] = simd::load(phase + (j % 4) * L + l0 + j / 4);
      input_line(out, z);
      store_points(dst + l0, plane_stride, i, out, lanes);
    }
  }
}

// The lane orders that weave the four column vectors c = 0..3 of kWidth
// tiles (lane l: tile l) into four vectors of output pixels, pixel 4l + c:
// output vector k lane e is tile (k kWidth + e) / 4, column e % 4. `low`
// takes columns 0 and 1 into the lanes they end in, `high` 2 and 3, `merge`
// picks from the two.
struct Weave {
  simd::vint low[4], high[4], merge;
  Weave() {
    for (int k = 0; k < 4; ++k)
      for (int e = 0; e < kWidth; ++e) {
        const int tile = (k * kWidth + e) / 4, column = e % 4;
        low[k][e] = (column == 1 ? kWidth : 0) + tile;
        high[k][e] = (column == 3 ? kWidth : 0) + tile;
      }
    for (int e = 0; e < kWidth; ++e) merge[e] = e % 4 < 2 ? e : kWidth + e;
  }
};

// The output transform of output channel ko and one tile row from M (36,
// Ko, columns) at column `at`, into the plane of y (OH, OW).
void transform_output_row(float* plane, const Weave& weave, const float* m, float bias, Activation act,
                          const WinogradProblem& p, const Tiling& t, int64_t th, int64_t ko, int64_t columns,
                          int64_t at, bool accumulate) {
  static constexpr float kAT[4][6] = {
      {1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};
  const int64_t plane_stride = p.Ko * columns;
  const float* src = m + ko * columns + at;
  for (int64_t l0 = 0; l0 < t.TW; l0 += kWidth) {
    const int64_t lanes = std::min<int64_t>(kWidth, t.TW - l0);
    vfloat out[4][4] = {};
    for (int i = 0; i < 6; ++i) {  // AT m A: row i of M A, then summed into AT's rows
      vfloat row[6], q[4];
      for (int j = 0; j < 6; ++j) {
        const float* s = src + (i * 6 + j) * plane_stride + l0;
        row[j] = lanes == kWidth ? simd::load(s) : simd::load_partial(s, lanes, 0.0f);
      }
      output_line(q, row);
      for (int r = 0; r < 4; ++r)
        if (kAT[r][i] != 0.0f)
          for (int c = 0; c < 4; ++c) out[r][c] += simd::splat(kAT[r][i]) * q[c];
    }
    // Interleaved in registers into output rows (tile l's column c is pixel
    // 4l + c), not through memory: see padded_load.
    const int64_t first = l0 * kTile, count = std::min(p.OW - first, 4 * lanes);
    const vfloat b = simd::splat(bias);
    for (int r = 0; r < 4 && th * kTile + r < p.OH; ++r) {
      float* d = plane + (th * kTile + r) * p.OW + first;
      for (int k = 0; k < 4 && k * kWidth < count; ++k) {
        const vfloat low = __builtin_shuffle(out[r][0], out[r][1], weave.low[k]);
        const vfloat high = __builtin_shuffle(out[r][2], out[r][3], weave.high[k]);
        const vfloat pixels = simd::activate(__builtin_shuffle(low, high, weave.merge) + b, act);
        const int64_t n = std::min<int64_t>(kWidth, count - k * kWidth);
        float* at = d + k * kWidth;
        if (n == kWidth)
          simd::store(at, (accumulate ? simd::load(at) : vfloat{}) + pixels);
        else
          simd::store_partial(at, (accumulate ? simd::load_partial(at, n, 0.0f) : vfloat{}) + pixels, n);
      }
    }
  }
}

// V (36, Ci, columns) of the tile rows [row0, row1): their input transform,
// the channels split over the threads when `threads`.
void transform_input_chunk(float* v, const float* in, const WinogradProblem& p, const Tiling& t, int64_t row0,
                           int64_t row1, bool threads) {
  const int64_t columns = (row1 - row0) * t.TW;
  parallel_for(threads, p.Ci, [&](int64_t ci) {
    ScratchFrame own;  // the rows and phases, on the thread taking this channel
    float* rows = own.floats(static_cast<size_t>(kInput * t.row_length()));
    float* phases = own.floats(static_cast<size_t>(kInput * 4 * t.phase_length()));
    std::fill(phases, phases + kInput * 4 * t.phase_length(), 0.0f);  // the slack past the last tile, read by full vectors
    for (int64_t row = row0; row < row1; ++row) {
      const int64_t n = row / t.TH, th = row % t.TH;
      transform_input_row(v, rows, phases, in + (n * p.Ci + ci) * p.IH * p.IW, p, t, th, ci, columns,
                          (row - row0) * t.TW);
    }
  });
}

// ---- the weight gradient: dU[e] = sum over tiles of (A dY AT)[e] V[e]^T,
// then dw += GT dU G.

// y (4 values) -> A y, the transform of one line of an output gradient.
template <typename T>
inline void grad_line(T out[6], const T y[4]) {
  const T two = T{} + 2.0f, four = T{} + 4.0f, eight = T{} + 8.0f;
  const T even = y[0] + four * y[2], odd = two * y[1] + eight * y[3];
  out[0] = y[0];
  out[1] = y[0] + y[1] + y[2] + y[3];
  out[2] = y[0] - y[1] + y[2] - y[3];
  out[3] = even + odd;
  out[4] = even - odd;
  out[5] = y[3];
}

// u (6 values) -> GT u, the weight transform's transpose on one line.
template <typename T>
inline void weight_grad_line(T out[3], const T u[6]) {
  const T quarter = T{} + 0.25f, sixth = T{} + (1.0f / 6.0f), twelfth = T{} + (1.0f / 12.0f),
          twenty_fourth = T{} + (1.0f / 24.0f);
  const T sum12 = u[1] + u[2], diff12 = u[2] - u[1], sum34 = u[3] + u[4], diff34 = u[3] - u[4];
  out[0] = quarter * u[0] - sixth * sum12 + twenty_fourth * sum34;
  out[1] = sixth * diff12 + twelfth * diff34;
  out[2] = sixth * (sum34 - sum12) + u[5];
}

// The A dY AT of output channel ko and one tile row of dy (image plane
// (OH, OW)), into G (36, Ko, columns) at column `at`. `rows` (6,
// row_length) and `phases` (4, phase_length) are the caller's scratch.
void transform_grad_row(float* g, float* rows, float* phases, const float* plane, const WinogradProblem& p,
                        const Tiling& t, int64_t th, int64_t ko, int64_t columns, int64_t at) {
  const int64_t L = t.phase_length(), width = t.row_length();
  const int64_t used = (4 * t.TW + kWidth - 1) / kWidth * kWidth;
  const float* src[kTile];  // the tile row's four rows of dy, null past the last
  for (int64_t k = 0; k < kTile; ++k) src[k] = th * kTile + k < p.OH ? plane + (th * kTile + k) * p.OW : nullptr;
  for (int64_t x = 0; x < used; x += kWidth) {  // A dY down the columns: 4 rows into 6
    vfloat y[4], out[6];
    for (int k = 0; k < 4; ++k) y[k] = src[k] ? padded_load(src[k], x, p.OW) : vfloat{};
    grad_line(out, y);
    for (int k = 0; k < 6; ++k) simd::store(rows + k * width + x, out[k]);
  }
  const int64_t plane_stride = p.Ko * columns;
  float* dst = g + ko * columns + at;
  for (int i = 0; i < 6; ++i) {
    split_phases(phases, rows + i * width, L, t.TW);
    for (int64_t l0 = 0; l0 < t.TW; l0 += kWidth) {  // (A dY) AT along the rows
      const int64_t lanes = std::min<int64_t>(kWidth, t.TW - l0);
      vfloat y[4], out[6];
      for (int c = 0; c < 4; ++c) y[c] = simd::load(phases + c * L + l0);
      grad_line(out, y);
      store_points(dst + l0, plane_stride, i, out, lanes);
    }
  }
}

// dw (Ko, Ci, 3, 3) += GT dU G of every channel pair, kWidth input channels at a time.
void weight_from_points(float* dw, const float* du, const WinogradProblem& p) {
  parallel_for(p.Ko * p.Ci * kPoints >= PYENGINE_PARALLEL_MIN_WORK && !in_parallel_region(), p.Ko,
               [&](int64_t ko) {
    for (int64_t c0 = 0; c0 < p.Ci; c0 += kWidth) {
      const int64_t lanes = std::min<int64_t>(kWidth, p.Ci - c0);
      vfloat rows[6][3];  // dU G: each row of the 6x6 transformed
      for (int i = 0; i < 6; ++i) {
        vfloat line[6];
        for (int j = 0; j < 6; ++j) {
          const float* s = du + ((i * 6 + j) * p.Ko + ko) * p.Ci + c0;
          line[j] = lanes == kWidth ? simd::load(s) : simd::load_partial(s, lanes, 0.0f);
        }
        weight_grad_line(rows[i], line);
      }
      alignas(64) float taps[9][kWidth];
      for (int s = 0; s < 3; ++s) {  // GT (dU G): each column
        const vfloat line[6] = {rows[0][s], rows[1][s], rows[2][s], rows[3][s], rows[4][s], rows[5][s]};
        vfloat out[3];
        weight_grad_line(out, line);
        for (int r = 0; r < 3; ++r) simd::store(taps[r * 3 + s], out[r]);
      }
      for (int64_t l = 0; l < lanes; ++l)
        for (int tap = 0; tap < 9; ++tap) dw[(ko * p.Ci + c0 + l) * 9 + tap] += taps[tap][l];
    }
  });
}

}  // namespace

// The layers where it wins, measured at batch 8 on one thread against
// im2col (forward, backward): 16->16 at 56x56 1.6x, 1.4x; 64->64 at 56x56
// 2.2x, 2.3x; 128->128 at 28x28 2.6x, 3.0x; 256->256 at 14x14 2.6x, 2.2x;
// 512->512 at 7x7 (32 tiles) 1.36x, 0.96x; 512->512 at 4x4 (8 tiles) 0.40x,
// 0.46x: with few tiles the weight transform (36 values a channel pair)
// costs more than the GEMMs save. Fewer than 16 channels were not measured.
bool winograd_fits(const ConvShape& g) {
  return g.R == 3 && g.S == 3 && g.sh == 1 && g.sw == 1 && g.dh == 1 && g.dw == 1 && g.G == 1 &&
         g.ph >= 0 && g.ph <= 2 && g.pw >= 0 && g.pw <= 2 && g.C >= 16 && g.K >= 16 && g.OH >= 4 &&
         g.OW >= 4 && g.N * ((g.OH + kTile - 1) / kTile) * ((g.OW + kTile - 1) / kTile) >= 32;
}

void winograd_conv(float* out, const float* in, const float* w, const float* bias, Activation act,
                   const WinogradProblem& p, bool accumulate) {
  const Tiling t(p);
  const Weave weave;
  ScratchFrame frame;  // U, shared read-only by the chunks' threads
  float* u = frame.floats(static_cast<size_t>(kPoints * p.Ko * p.Ci));
  transform_weight(u, w, p);
  auto chunk = [&](int64_t index) {
    const int64_t row0 = t.first_row(index), row1 = t.first_row(index + 1), columns = (row1 - row0) * t.TW;
    ScratchFrame scratch;  // the chunk's V and M, on the thread running it
    float* v = scratch.floats(static_cast<size_t>(kPoints * p.Ci * columns));
    float* m = scratch.floats(static_cast<size_t>(kPoints * p.Ko * columns));
    const bool threads = !in_parallel_region() && p.Ci * columns * kPoints >= PYENGINE_PARALLEL_MIN_WORK;
    transform_input_chunk(v, in, p, t, row0, row1, threads);
    // The 36 GEMMs split over the threads, each on one: measured against
    // GEMMs sharing the threads, no barrier inside a GEMM, which on a loaded
    // host can each wait out a scheduler tick.
    parallel_for(threads, kPoints, [&](int64_t e) {
      matmul_forward(m + e * p.Ko * columns, nullptr, u + e * p.Ko * p.Ci, v + e * p.Ci * columns, nullptr,
                     Activation::none, 1, p.Ko, columns, p.Ci, false, false, 0, 0);
    });
    parallel_for(threads, p.Ko, [&](int64_t ko) {
      for (int64_t row = row0; row < row1; ++row) {
        const int64_t n = row / t.TH, th = row % t.TH;
        transform_output_row(out + (n * p.Ko + ko) * p.OH * p.OW, weave, m, bias ? bias[ko] : 0.0f, act, p, t,
                             th, ko, columns, (row - row0) * t.TW, accumulate);
      }
    });
  };
  if (thread_count() > 1 && t.chunks >= 2 * thread_count() && !in_parallel_region()) {
    PYENGINE_OMP(omp parallel for schedule(dynamic) num_threads(thread_count()))
    for (int64_t i = 0; i < t.chunks; ++i) chunk(i);
  } else {
    for (int64_t i = 0; i < t.chunks; ++i) chunk(i);
  }
}

void winograd_weight_grad(float* dw, const float* x, const float* dy, const WinogradProblem& p) {
  const Tiling t(p);
  const int64_t size = kPoints * p.Ko * p.Ci;  // dU
  const bool threads = !in_parallel_region();
  // dU_into += the chunk's sums; `split`: the threads share each pass.
  auto chunk = [&](int64_t index, float* du_into, bool split) {
    const int64_t row0 = t.first_row(index), row1 = t.first_row(index + 1), columns = (row1 - row0) * t.TW;
    ScratchFrame scratch;  // the chunk's V and A dY AT
    float* v = scratch.floats(static_cast<size_t>(kPoints * p.Ci * columns));
    float* g = scratch.floats(static_cast<size_t>(kPoints * p.Ko * columns));
    split = split && p.Ci * columns * kPoints >= PYENGINE_PARALLEL_MIN_WORK;
    transform_input_chunk(v, x, p, t, row0, row1, split);
    parallel_for(split, p.Ko, [&](int64_t ko) {
      ScratchFrame own;  // the rows and phases, on the thread taking this channel
      float* rows = own.floats(static_cast<size_t>(kInput * t.row_length()));
      float* phases = own.floats(static_cast<size_t>(4 * t.phase_length()));
      std::fill(phases, phases + 4 * t.phase_length(), 0.0f);
      for (int64_t row = row0; row < row1; ++row) {
        const int64_t n = row / t.TH, th = row % t.TH;
        transform_grad_row(g, rows, phases, dy + (n * p.Ko + ko) * p.OH * p.OW, p, t, th, ko, columns,
                           (row - row0) * t.TW);
      }
    });
    parallel_for(split, kPoints, [&](int64_t e) {  // dU[e] (Ko, Ci) += G[e] (Ko, columns) . V[e]^T
      const float* ve = v + e * p.Ci * columns;  // also as the product's A, which dA does not read
      matmul_backward(du_into + e * p.Ko * p.Ci, nullptr, nullptr, g + e * p.Ko * columns, ve, ve, 1, p.Ko,
                      columns, p.Ci, false, false, 0, 0, /*accumulate=*/true);
    });
  };
  // In `ranges` runs of consecutive chunks, each summing into its own dU
  // partial, the runs spread over the threads (no barrier inside a chunk),
  // then the partials summed in order; with too little room for partials
  // the chunks go in order, the threads splitting each pass (dU[e] each
  // one thread's). `ranges` depends on the shapes only: any thread count
  // gives the same bits.
  const int64_t ranges = std::min({t.chunks, kRanges, std::max<int64_t>(1, kPartialBudget / size)});
  ScratchFrame frame;  // dU, or its partials
  float* du = frame.floats(static_cast<size_t>(ranges * size));
  parallel_chunks(threads && ranges * size >= PYENGINE_PARALLEL_MIN_WORK, ranges * size, 16384,
                  [&](int64_t begin, int64_t end) { std::fill(du + begin, du + end, 0.0f); });
  if (ranges < 2) {
    for (int64_t index = 0; index < t.chunks; ++index) chunk(index, du, threads);
  } else {
    parallel_for(threads && thread_count() > 1, ranges, [&](int64_t r) {
      for (int64_t index = r * t.chunks / ranges; index < (r + 1) * t.chunks / ranges; ++index)
        chunk(index, du + r * size, false);
    });
    parallel_chunks(threads && size >= PYENGINE_PARALLEL_MIN_WORK, size, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t r = 1; r < ranges; ++r)
        for (int64_t i = begin; i < end; ++i) du[i] += du[r * size + i];
    });
  }
  weight_from_points(dw, du, p);
}

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
