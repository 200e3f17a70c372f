// Fused attention, flash style: queries in blocks of kTile rows against keys
// in tiles of kTile, an online softmax in the forward (only the output and
// each row's log-sum-exp are written, never a Tq x Tk matrix), and a
// backward that recomputes the probabilities tile by tile from the saved
// log-sum-exp. Every product of a tile is one register-blocked loop
// (`multiply`), vectorized per ISA. Causal tiles that are fully masked are
// skipped and the diagonal ones narrowed to the keys some row attends. A
// forward of up to 4 query rows (a decoding step) takes few_queries.cpp's
// path instead: keys and values read in place, no tiles of padding rows.
//
// Threads: the forward gives each thread whole (batch, head) pairs when there
// are enough of them, else (batch, head, query block) units. The backward
// gives each thread whole (batch, head) pairs when there are enough of them
// (dK and dV of a key tile summed over the query blocks, dQ in a per-thread
// buffer of the head's rows); otherwise it runs a pass over (batch, head, key
// tile) units for dK and dV and one over (batch, head, query block) units for
// dQ. Both schemes add the same tile products in the same order, so the
// gradients do not depend on the thread count. A mask gradient is one more
// pass over the mask's own (batch, head, query block) units, which sums its
// broadcast dims in a fixed order.
//
// Scratch per thread: a few kTile x D and kTile x kTile tiles, plus, in the
// forward, one head's transposed keys (D x round_up(Tk, kTile) floats) and,
// in the per-head backward, the head's dQ rows (round_up(Tq, 4) x D floats).
#include <algorithm>
#include <cmath>
#include <limits>

#include "attention/few_queries.h"
#include "core/kernel_list.inc"
#include "core/parallel.h"
#include "core/philox.h"
#include "core/scratch.h"
#include "core/simd.h"

namespace pyengine {
namespace PYENGINE_KERNEL_NS {
namespace {

using simd::kWidth;
using simd::vfloat;

constexpr int64_t kTile = 64;  // queries per block, keys per tile
constexpr int kBlockRows = 4;  // rows of a register block
constexpr int kWideRows = 8;   // rows of a register block two vectors wide (AVX-512: 16 accumulators)
constexpr int kBlockVecs = kWidth == 16 ? 4 : 2;  // vectors of a register block (16 registers below AVX-512)
constexpr float kInf = std::numeric_limits<float>::infinity();

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// ---------------------------------------------------------------- tile products

// C (R rows x NV vectors) (+)= sum over t < depth of A(r, t) * B(t, :), with
// A(r, t) at a[r * a_row + t * a_col]: a row of A (a_col = 1) or a column
// (a_row = 1, for the transposed products of the backward).
template <int R, int NV>
inline void multiply_block(float* c, int64_t ldc, const float* a, int64_t a_row, int64_t a_col,
                           const float* b, int64_t ldb, int64_t depth, bool accumulate) {
  vfloat acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = accumulate ? simd::load(c + r * ldc + v * kWidth) : vfloat{};
  for (int64_t t = 0; t < depth; ++t) {
    vfloat bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = simd::load(b + t * ldb + v * kWidth);
    for (int r = 0; r < R; ++r) {
      const vfloat av = simd::splat(a[r * a_row + t * a_col]);
      for (int v = 0; v < NV; ++v) acc[r][v] += av * bv[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) simd::store(c + r * ldc + v * kWidth, acc[r][v]);
}

template <int R>
inline void multiply_rows(float* c, int64_t ldc, const float* a, int64_t a_row, int64_t a_col,
                          const float* b, int64_t ldb, int64_t vecs, int64_t depth, bool accumulate) {
  for (int64_t v0 = 0; v0 < vecs; v0 += kBlockVecs) {
    float* cv = c + v0 * kWidth;
    const float* bv = b + v0 * kWidth;
    switch (std::min<int64_t>(kBlockVecs, vecs - v0)) {
      case 1: multiply_block<R, 1>(cv, ldc, a, a_row, a_col, bv, ldb, depth, accumulate); break;
      case 2: multiply_block<R, 2>(cv, ldc, a, a_row, a_col, bv, ldb, depth, accumulate); break;
      case 3: multiply_block<R, 3>(cv, ldc, a, a_row, a_col, bv, ldb, depth, accumulate); break;
      default: multiply_block<R, kBlockVecs>(cv, ldc, a, a_row, a_col, bv, ldb, depth, accumulate);
    }
  }
}

// C (rows x vecs vectors) (+)= A (rows x depth) . B (depth x vecs vectors).
// A narrow C (two vectors: P.V at head dim 32 under AVX-512) goes 8 rows at a
// time, 16 accumulators instead of 8 per pair of B loads; each element still
// sums its depth in order, so the result is the same.
void multiply(float* c, int64_t ldc, const float* a, int64_t a_row, int64_t a_col, const float* b,
              int64_t ldb, int64_t rows, int64_t vecs, int64_t depth, bool accumulate) {
  int64_t first = 0;
  if (kWidth == 16 && vecs <= 2)
    for (; first + kWideRows <= rows; first += kWideRows)
      multiply_rows<kWideRows>(c + first * ldc, ldc, a + first * a_row, a_row, a_col, b, ldb, vecs, depth,
                               accumulate);
  for (int64_t r0 = first; r0 < rows; r0 += kBlockRows) {
    float* cr = c + r0 * ldc;
    const float* ar = a + r0 * a_row;
    switch (std::min<int64_t>(kBlockRows, rows - r0)) {
      case 1: multiply_rows<1>(cr, ldc, ar, a_row, a_col, b, ldb, vecs, depth, accumulate); break;
      case 2: multiply_rows<2>(cr, ldc, ar, a_row, a_col, b, ldb, vecs, depth, accumulate); break;
      case 3: multiply_rows<3>(cr, ldc, ar, a_row, a_col, b, ldb, vecs, depth, accumulate); break;
      default: multiply_rows<kBlockRows>(cr, ldc, ar, a_row, a_col, b, ldb, vecs, depth, accumulate);
    }
  }
}

// ---------------------------------------------------------------- packing

// rows x d values (row stride `stride`) times `factor` into dst (ld columns,
// zero past d), and zero rows up to `padded`.
void pack_rows(float* dst, int64_t ld, const float* src, int64_t stride, int64_t rows,
               int64_t padded, int64_t d, float factor) {
  for (int64_t r = 0; r < padded; ++r) {
    float* out = dst + r * ld;
    int64_t c = 0;
    if (r < rows)
      for (; c < d; ++c) out[c] = factor * src[r * stride + c];
    for (; c < ld; ++c) out[c] = 0.0f;
  }
}

// cols rows of d values (row stride `stride`) transposed into dst (d x kTile),
// zero in the columns past cols.
void pack_transposed(float* dst, const float* src, int64_t stride, int64_t cols, int64_t d) {
  for (int64_t c = 0; c < d; ++c) {
    float* out = dst + c * kTile;
    for (int64_t j = 0; j < cols; ++j) out[j] = src[j * stride + c];
    for (int64_t j = cols; j < kTile; ++j) out[j] = 0.0f;
  }
}

// Asks for rows x d values (row stride `stride`) to be brought into the cache:
// the next head's part of rows just read. Rows thousands of bytes apart (the
// heads of a (B, T, 3, H, D) projection) defeat the hardware prefetchers, so
// each row's lines would else come one miss at a time when that head starts.
void prefetch_rows(const float* src, int64_t stride, int64_t rows, int64_t d, bool write = false) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < d; c += 64 / static_cast<int64_t>(sizeof(float))) {
      if (write)
        __builtin_prefetch(src + r * stride + c, 1, 2);
      else
        __builtin_prefetch(src + r * stride + c, 0, 2);
    }
}

// ---------------------------------------------------------------- geometry

struct Geometry {
  const AttentionProblem& p;
  int64_t d_padded, d_vecs, q_blocks, k_tiles;
  explicit Geometry(const AttentionProblem& problem)
      : p(problem),
        d_padded(round_up(problem.head_dim, kWidth)),
        d_vecs(d_padded / kWidth),
        q_blocks((problem.q_len + kTile - 1) / kTile),
        k_tiles((problem.kv_len + kTile - 1) / kTile) {}

  template <typename T>
  T* row(T* base, const int64_t* stride, int64_t b, int64_t h, int64_t t) const {
    return base + b * stride[0] + h * stride[1] + t * stride[2];
  }
  // Keys [j0, j0 + width) of the tile at j0 that some row of the block at i0
  // (rows rows) attends: the causal diagonal narrows it, 0 skips the tile.
  int64_t tile_width(int64_t i0, int64_t rows, int64_t j0) const {
    const int64_t cols = std::min(kTile, p.kv_len - j0);
    if (!p.causal) return cols;
    return std::clamp<int64_t>(i0 + rows - 1 + p.causal_offset() - j0 + 1, 0, cols);
  }
  // The keys row i attends in the tile at j0 (of width `width`).
  int64_t row_width(int64_t i, int64_t j0, int64_t width) const {
    if (!p.causal) return width;
    return std::clamp<int64_t>(i + p.causal_offset() - j0 + 1, 0, width);
  }
  // The first query block a key tile at j0 can matter to.
  int64_t first_block(int64_t j0) const {
    if (!p.causal) return 0;
    return std::max<int64_t>(0, j0 - p.causal_offset()) / kTile;
  }
  const float* mask_row(const float* mask, int64_t b, int64_t h, int64_t i, int64_t j0) const {
    const int64_t* s = p.mask_stride;
    return mask + b * s[0] + h * s[1] + i * s[2] + j0 * s[3];
  }
};

// Scores of one row: the mask added to the first `valid` (the rest -inf up
// to `padded`).
void finish_scores(float* s, const float* mask_row, int64_t mask_step, int64_t valid, int64_t padded) {
  if (mask_row) {
    if (mask_step == 1) {
      for (int64_t j = 0; j < valid; ++j) s[j] += mask_row[j];
    } else {
      for (int64_t j = 0; j < valid; ++j) s[j] += mask_row[j * mask_step];
    }
  }
  for (int64_t j = valid; j < padded; ++j) s[j] = -kInf;
}

// z[j] *= the dropout factor of element (b, h, i, j0 + j): 0, or 1 / (1 - p).
void apply_dropout(float* z, int64_t n, const AttentionProblem& p, int64_t b, int64_t h, int64_t i,
                   int64_t j0) {
  const float keep = 1.0f / (1.0f - p.dropout_p);
  const uint64_t first = p.dropout_index(b, h, i, j0);
  philox::Block block = philox::generate(p.seed, p.stream, first >> 2);
  for (int64_t j = 0; j < n; ++j) {
    const uint64_t e = first + static_cast<uint64_t>(j);
    if (j > 0 && (e & 3) == 0) block = philox::generate(p.seed, p.stream, e >> 2);
    z[j] *= philox::to_unit_float(block.v[e & 3]) >= p.dropout_p ? keep : 0.0f;
  }
}

// Runs fn(scratch, unit) for every unit, spread over the threads when there
// is enough work; each thread makes its scratch once (make(frame)) in a frame
// of its own. Units may finish in any order: each writes memory no other
// unit touches.
template <typename Make, typename Fn>
void for_each_unit(int64_t units, double work, Make&& make, Fn&& fn) {
  const bool parallel = units > 1 && thread_count() > 1 && work >= PYENGINE_PARALLEL_MIN_WORK &&
                        !in_parallel_region();
  if (!parallel) {
    ScratchFrame frame;
    auto scratch = make(frame);
    for (int64_t u = 0; u < units; ++u) fn(scratch, u);
    return;
  }
  PYENGINE_OMP(omp parallel num_threads(thread_count())) {
    ScratchFrame frame;
    auto scratch = make(frame);
    PYENGINE_OMP(omp for schedule(dynamic, 1))
    for (int64_t u = 0; u < units; ++u) fn(scratch, u);
  }
}

// ---------------------------------------------------------------- forward

struct ForwardScratch {
  float *q, *kt, *vp, *s, *o, *m, *l;
  // kt holds the transposed key tiles of one head, tile t at kt + t * D * kTile,
  // and vp its value rows, contiguous (kTile x d_padded per tile), where they
  // are strided in memory: packed once per head and thread, as the query
  // blocks reach them.
  int64_t kt_head = -1, kt_tiles = 0, v_head = -1, v_tiles = 0;
  ForwardScratch(ScratchFrame& f, const Geometry& g)
      : q(f.floats(kTile * g.d_padded)), kt(f.floats(g.p.head_dim * kTile * g.k_tiles)),
        vp(f.floats(kTile * g.d_padded * g.k_tiles)), s(f.floats(kTile * kTile)),
        o(f.floats(kTile * g.d_padded)), m(f.floats(kTile)), l(f.floats(kTile)) {}

  // The transposed key tile kb of head (b, h).
  const float* key_tile(const Geometry& g, const float* k, int64_t b, int64_t h, int64_t kb) {
    const AttentionProblem& p = g.p;
    const int64_t head = b * p.heads + h, tile_size = p.head_dim * kTile;
    if (kt_head != head) kt_head = head, kt_tiles = 0;
    for (; kt_tiles <= kb; ++kt_tiles) {
      const int64_t j0 = kt_tiles * kTile;
      const int64_t cols = std::min(kTile, p.kv_len - j0);
      pack_transposed(kt + kt_tiles * tile_size, g.row(k, p.k_stride, b, h, j0), p.k_stride[2], cols,
                      p.head_dim);
      if (h + 1 < p.heads) prefetch_rows(g.row(k, p.k_stride, b, h + 1, j0), p.k_stride[2], cols, p.head_dim);
    }
    return kt + kb * tile_size;
  }
  // The value rows of tile kb of head (b, h), d_padded apart, zero past d.
  const float* value_tile(const Geometry& g, const float* v, int64_t b, int64_t h, int64_t kb) {
    const AttentionProblem& p = g.p;
    const int64_t head = b * p.heads + h, tile_size = kTile * g.d_padded;
    if (v_head != head) v_head = head, v_tiles = 0;
    for (; v_tiles <= kb; ++v_tiles) {
      const int64_t j0 = v_tiles * kTile, rows = std::min(kTile, p.kv_len - j0);
      pack_rows(vp + v_tiles * tile_size, g.d_padded, g.row(v, p.v_stride, b, h, j0), p.v_stride[2], rows,
                rows, p.head_dim, 1.0f);
      if (h + 1 < p.heads) prefetch_rows(g.row(v, p.v_stride, b, h + 1, j0), p.v_stride[2], rows, p.head_dim);
    }
    return vp + kb * tile_size;
  }
};

// One query block of (b, h): its rows' outputs and log-sum-exps.
void forward_block(ForwardScratch& t, const Geometry& g, float* out, float* lse, const float* q,
                   const float* k, const float* v, const float* mask, int64_t b, int64_t h, int64_t qb) {
  const AttentionProblem& p = g.p;
  const int64_t d = p.head_dim, dp = g.d_padded, i0 = qb * kTile;
  const int64_t rows = std::min(kTile, p.q_len - i0), rows4 = round_up(rows, kBlockRows);
  pack_rows(t.q, dp, g.row(q, p.q_stride, b, h, i0), p.q_stride[2], rows, rows4, d, p.scale);
  if (h + 1 < p.heads) {  // the next head's query rows and output rows, as the key and value tiles
    prefetch_rows(g.row(q, p.q_stride, b, h + 1, i0), p.q_stride[2], rows, d);
    prefetch_rows(g.row(out, p.o_stride, b, h + 1, i0), p.o_stride[2], rows, d, true);
  }
  std::fill(t.o, t.o + rows4 * dp, 0.0f);
  std::fill(t.m, t.m + kTile, -kInf);
  std::fill(t.l, t.l + kTile, 0.0f);
  // Values in place when their rows are contiguous already; else packed (rows
  // thousands of bytes apart, one page each, cost the P.V product 2x).
  const bool v_in_place = d == dp && p.v_stride[2] == dp;
  for (int64_t j0 = 0; j0 < p.kv_len; j0 += kTile) {
    const int64_t width = g.tile_width(i0, rows, j0);
    if (width == 0) break;  // causal: no later tile is attended either
    const int64_t vecs = (width + kWidth - 1) / kWidth, padded = vecs * kWidth;
    const float* vj = g.row(v, p.v_stride, b, h, j0);
    const float* kt = t.key_tile(g, k, b, h, j0 / kTile);
    const float* vb = v_in_place ? vj : t.value_tile(g, v, b, h, j0 / kTile);
    multiply(t.s, kTile, t.q, dp, 1, kt, kTile, rows4, vecs, d, false);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = i0 + r;
      float* s = t.s + r * kTile;
      const int64_t valid = g.row_width(i, j0, width);
      finish_scores(s, mask ? g.mask_row(mask, b, h, i, j0) : nullptr, p.mask_stride[3], valid, padded);
      vfloat top = simd::splat(-kInf);
      for (int64_t c = 0; c < padded; c += kWidth) top = simd::vmax(top, simd::load(s + c));
      const float m_new = std::max(t.m[r], simd::hmax(top));
      if (m_new == -kInf) {  // nothing attended yet
        std::fill(s, s + padded, 0.0f);
        continue;
      }
      const vfloat shift = simd::splat(m_new);
      vfloat sum = vfloat{};
      for (int64_t c = 0; c < padded; c += kWidth) {
        const vfloat e = simd::exp_nonpositive(simd::load(s + c) - shift);
        simd::store(s + c, e);
        sum += e;
      }
      const float alpha = std::exp(t.m[r] - m_new);  // 0 on the first attended tile
      t.l[r] = t.l[r] * alpha + simd::hsum(sum);
      t.m[r] = m_new;
      if (alpha != 1.0f) {
        float* o = t.o + r * dp;
        const vfloat a = simd::splat(alpha);
        for (int64_t c = 0; c < dp; c += kWidth) simd::store(o + c, simd::load(o + c) * a);
      }
      if (p.dropout_p > 0.0f) apply_dropout(s, valid, p, b, h, i, j0);
    }
    multiply(t.o, dp, t.s, kTile, 1, vb, dp, rows4, g.d_vecs, width, true);
  }
  for (int64_t r = 0; r < rows; ++r) {
    float* dst = out + b * p.o_stride[0] + h * p.o_stride[1] + (i0 + r) * p.o_stride[2];
    float& row_lse = lse[(b * p.heads + h) * p.q_len + i0 + r];
    if (t.l[r] == 0.0f) {  // attends nothing: output 0, as PyTorch
      std::fill(dst, dst + d, 0.0f);
      row_lse = kInf;
      continue;
    }
    const float inv = 1.0f / t.l[r];
    const float* o = t.o + r * dp;
    for (int64_t c = 0; c < d; ++c) dst[c] = o[c] * inv;
    row_lse = t.m[r] + std::log(t.l[r]);
  }
}


// ---------------------------------------------------------------- backward

struct BackwardArgs {
  float *dq, *dk, *dv, *dmask;
  const float *dout, *q, *k, *v, *mask, *out, *lse;
};

struct BackwardScratch {
  float *q, *go, *delta, *kt, *vt, *k, *s, *ds, *z, *dk, *dv, *dq;
  BackwardScratch(ScratchFrame& f, const Geometry& g, int64_t dq_rows)
      : q(f.floats(kTile * g.d_padded)), go(f.floats(kTile * g.d_padded)), delta(f.floats(kTile)),
        kt(f.floats(g.p.head_dim * kTile)), vt(f.floats(g.p.head_dim * kTile)),
        k(f.floats(kTile * g.d_padded)), s(f.floats(kTile * kTile)), ds(f.floats(kTile * kTile)),
        z(f.floats(kTile)), dk(f.floats(kTile * g.d_padded)), dv(f.floats(kTile * g.d_padded)),
        dq(f.floats(dq_rows * g.d_padded)) {}
};

// Query block qb of (b, h): scale * q and dout rows, delta = rowsum(dout * out).
void pack_queries(BackwardScratch& t, const Geometry& g, const BackwardArgs& a, int64_t b, int64_t h,
                  int64_t qb) {
  const AttentionProblem& p = g.p;
  const int64_t d = p.head_dim, i0 = qb * kTile, rows = std::min(kTile, p.q_len - i0);
  const int64_t rows4 = round_up(rows, kBlockRows);
  pack_rows(t.q, g.d_padded, g.row(a.q, p.q_stride, b, h, i0), p.q_stride[2], rows, rows4, d, p.scale);
  const float* go = g.row(a.dout, p.o_stride, b, h, i0);
  const float* o = g.row(a.out, p.o_stride, b, h, i0);
  pack_rows(t.go, g.d_padded, go, p.o_stride[2], rows, rows4, d, 1.0f);
  for (int64_t r = 0; r < rows; ++r) {
    float sum = 0.0f;
    for (int64_t c = 0; c < d; ++c) sum += go[r * p.o_stride[2] + c] * o[r * p.o_stride[2] + c];
    t.delta[r] = sum;
  }
}

// Key tile at j0 of (b, h): k and v transposed, and k's rows where they
// cannot be read in place. Returns k's rows and their stride.
const float* pack_keys(BackwardScratch& t, const Geometry& g, const BackwardArgs& a, int64_t b,
                       int64_t h, int64_t j0, int64_t* k_ld) {
  const AttentionProblem& p = g.p;
  const int64_t d = p.head_dim, cols = std::min(kTile, p.kv_len - j0);
  const float* kj = g.row(a.k, p.k_stride, b, h, j0);
  pack_transposed(t.kt, kj, p.k_stride[2], cols, d);
  pack_transposed(t.vt, g.row(a.v, p.v_stride, b, h, j0), p.v_stride[2], cols, d);
  if (d == g.d_padded) {
    *k_ld = p.k_stride[2];
    return kj;
  }
  pack_rows(t.k, g.d_padded, kj, p.k_stride[2], cols, cols, d, 1.0f);
  *k_ld = g.d_padded;
  return t.k;
}

// The probabilities after dropout into t.s and dS = P * (dP - delta) into
// t.ds, for the packed query block at i0 (rows rows) against the packed key
// tile at j0 (width keys); zero past each row's attended keys and in the
// padding rows.
void softmax_grad_tile(BackwardScratch& t, const Geometry& g, const BackwardArgs& a, int64_t b,
                       int64_t h, int64_t i0, int64_t rows, int64_t j0, int64_t width) {
  const AttentionProblem& p = g.p;
  const int64_t dp = g.d_padded, rows4 = round_up(rows, kBlockRows);
  const int64_t vecs = (width + kWidth - 1) / kWidth, padded = vecs * kWidth;
  multiply(t.s, kTile, t.q, dp, 1, t.kt, kTile, rows4, vecs, p.head_dim, false);
  multiply(t.ds, kTile, t.go, dp, 1, t.vt, kTile, rows4, vecs, p.head_dim, false);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = i0 + r;
    float* s = t.s + r * kTile;
    float* ds = t.ds + r * kTile;
    const int64_t valid = g.row_width(i, j0, width);
    finish_scores(s, a.mask ? g.mask_row(a.mask, b, h, i, j0) : nullptr, p.mask_stride[3], valid, padded);
    const vfloat lse = simd::splat(a.lse[(b * p.heads + h) * p.q_len + i]);
    const vfloat delta = simd::splat(t.delta[r]);
    if (p.dropout_p > 0.0f) {
      std::fill(t.z, t.z + padded, 1.0f);
      apply_dropout(t.z, valid, p, b, h, i, j0);
    }
    for (int64_t c = 0; c < padded; c += kWidth) {
      const vfloat prob = simd::exp(simd::load(s + c) - lse);
      vfloat dprob = simd::load(ds + c);
      if (p.dropout_p > 0.0f) {
        const vfloat z = simd::load(t.z + c);
        simd::store(s + c, prob * z);
        dprob *= z;
      } else {
        simd::store(s + c, prob);
      }
      simd::store(ds + c, prob * (dprob - delta));
    }
  }
  for (int64_t r = rows; r < rows4; ++r) {
    std::fill(t.s + r * kTile, t.s + r * kTile + padded, 0.0f);
    std::fill(t.ds + r * kTile, t.ds + r * kTile + padded, 0.0f);
  }
}

void add_rows(float* dst, int64_t stride, const float* src, int64_t ld, int64_t rows, int64_t d, float factor) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < d; ++c) dst[r * stride + c] += factor * src[r * ld + c];
}

// Key tile kb of (b, h): its dK and dV over every query block that attends
// it, and, when dq_head is given (the head's dQ rows), those blocks' dQ.
void key_tile_grads(BackwardScratch& t, const Geometry& g, const BackwardArgs& a, int64_t b, int64_t h,
                    int64_t kb, float* dq_head) {
  const AttentionProblem& p = g.p;
  const int64_t d = p.head_dim, dp = g.d_padded, j0 = kb * kTile, cols = std::min(kTile, p.kv_len - j0);
  const bool want_kv = a.dk || a.dv;
  int64_t k_ld = 0;
  const float* kr = pack_keys(t, g, a, b, h, j0, &k_ld);
  std::fill(t.dk, t.dk + kTile * dp, 0.0f);
  std::fill(t.dv, t.dv + kTile * dp, 0.0f);
  for (int64_t qb = g.first_block(j0); qb < g.q_blocks; ++qb) {
    const int64_t i0 = qb * kTile, rows = std::min(kTile, p.q_len - i0);
    const int64_t width = g.tile_width(i0, rows, j0);
    if (width == 0) continue;
    pack_queries(t, g, a, b, h, qb);
    softmax_grad_tile(t, g, a, b, h, i0, rows, j0, width);
    if (want_kv) {
      const int64_t keys4 = round_up(width, kBlockRows);
      multiply(t.dv, dp, t.s, 1, kTile, t.go, dp, keys4, g.d_vecs, rows, true);
      multiply(t.dk, dp, t.ds, 1, kTile, t.q, dp, keys4, g.d_vecs, rows, true);
    }
    if (dq_head)
      multiply(dq_head + i0 * dp, dp, t.ds, kTile, 1, kr, k_ld, round_up(rows, kBlockRows), g.d_vecs,
               width, true);
  }
  if (a.dk) add_rows(g.row(a.dk, p.k_stride, b, h, j0), p.k_stride[2], t.dk, dp, cols, d, 1.0f);
  if (a.dv) add_rows(g.row(a.dv, p.v_stride, b, h, j0), p.v_stride[2], t.dv, dp, cols, d, 1.0f);
}

// Query block qb of (b, h): its dQ over every key tile it attends, into
// dq_rows (then added to dq). The same products, in the same order, as
// key_tile_grads makes for it.
void query_block_grads(BackwardScratch& t, const Geometry& g, const BackwardArgs& a, int64_t b,
                       int64_t h, int64_t qb) {
  const AttentionProblem& p = g.p;
  const int64_t dp = g.d_padded, i0 = qb * kTile, rows = std::min(kTile, p.q_len - i0);
  const int64_t rows4 = round_up(rows, kBlockRows);
  pack_queries(t, g, a, b, h, qb);
  std::fill(t.dq, t.dq + rows4 * dp, 0.0f);
  for (int64_t j0 = 0; j0 < p.kv_len; j0 += kTile) {
    const int64_t width = g.tile_width(i0, rows, j0);
    if (width == 0) break;
    int64_t k_ld = 0;
    const float* kr = pack_keys(t, g, a, b, h, j0, &k_ld);
    softmax_grad_tile(t, g, a, b, h, i0, rows, j0, width);
    multiply(t.dq, dp, t.ds, kTile, 1, kr, k_ld, rows4, g.d_vecs, width, true);
  }
  add_rows(g.row(a.dq, p.q_stride, b, h, i0), p.q_stride[2], t.dq, dp, rows, p.head_dim, p.scale);
}

// dmask += dS over the units of the mask's own (batch, head, query block)
// extent; each sums the problem's elements that map onto it in a fixed order.
void mask_grads(const Geometry& g, const BackwardArgs& a, double work) {
  const AttentionProblem& p = g.p;
  const int64_t* ms = p.mask_stride;
  const int64_t nb = ms[0] ? p.batch : 1, nh = ms[1] ? p.heads : 1, nq = ms[2] ? g.q_blocks : 1;
  auto make = [&](ScratchFrame& f) { return BackwardScratch(f, g, 0); };
  for_each_unit(nb * nh * nq, work, make, [&](BackwardScratch& t, int64_t u) {
    const int64_t bm = u / (nh * nq), hm = u / nq % nh, qm = u % nq;
    for (int64_t b = ms[0] ? bm : 0; b < (ms[0] ? bm + 1 : p.batch); ++b)
      for (int64_t h = ms[1] ? hm : 0; h < (ms[1] ? hm + 1 : p.heads); ++h)
        for (int64_t qb = ms[2] ? qm : 0; qb < (ms[2] ? qm + 1 : g.q_blocks); ++qb) {
          const int64_t i0 = qb * kTile, rows = std::min(kTile, p.q_len - i0);
          pack_queries(t, g, a, b, h, qb);
          for (int64_t j0 = 0; j0 < p.kv_len; j0 += kTile) {
            const int64_t width = g.tile_width(i0, rows, j0);
            if (width == 0) break;
            int64_t k_ld = 0;
            pack_keys(t, g, a, b, h, j0, &k_ld);
            softmax_grad_tile(t, g, a, b, h, i0, rows, j0, width);
            for (int64_t r = 0; r < rows; ++r) {
              float* dst = a.dmask + b * ms[0] + h * ms[1] + (i0 + r) * ms[2] + j0 * ms[3];
              const float* ds = t.ds + r * kTile;
              for (int64_t j = 0; j < width; ++j) dst[j * ms[3]] += ds[j];
            }
          }
        }
  });
}

}  // namespace

void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                       const float* mask, const AttentionProblem& p) {
  if (few_queries_serve(p)) return few_queries_forward(out, lse, q, k, v, mask, p);
  const Geometry g(p);
  const int64_t heads = p.batch * p.heads, threads = thread_count();
  const double work = 4.0 * heads * p.q_len * p.kv_len * p.head_dim;
  auto make = [&](ScratchFrame& f) { return ForwardScratch(f, g); };
  // Whole heads per unit when they share out evenly (as the backward): each
  // head's keys and values are then packed by one thread, not by every thread
  // that gets one of its query blocks. Else one query block per unit.
  const bool per_head = heads % threads == 0 || heads >= 4 * threads;
  const int64_t blocks = per_head ? g.q_blocks : 1;
  for_each_unit(heads * g.q_blocks / blocks, work, make, [&](ForwardScratch& t, int64_t u) {
    for (int64_t i = 0; i < blocks; ++i) {
      const int64_t unit = u * blocks + i;
      const int64_t bh = unit / g.q_blocks, qb = g.q_blocks - 1 - unit % g.q_blocks;  // the longest rows first
      forward_block(t, g, out, lse, q, k, v, mask, bh / p.heads, bh % p.heads, qb);
    }
  });
}

void attention_backward(float* dq, float* dk, float* dv, float* dmask, const float* dout,
                        const float* q, const float* k, const float* v, const float* mask,
                        const float* out, const float* lse, const AttentionProblem& p) {
  const Geometry g(p);
  const BackwardArgs a{dq, dk, dv, dmask, dout, q, k, v, mask, out, lse};
  const int64_t heads = p.batch * p.heads, threads = thread_count();
  const double work = 10.0 * heads * p.q_len * p.kv_len * p.head_dim;
  if (dmask) mask_grads(g, a, work);
  if (!dq && !dk && !dv) return;
  const bool per_head = heads % threads == 0 || heads >= 4 * threads;
  if (per_head) {  // whole heads per thread, dQ in the thread's buffer of the head's rows
    const int64_t dq_rows = dq ? round_up(p.q_len, kBlockRows) : 0;
    auto make = [&](ScratchFrame& f) { return BackwardScratch(f, g, dq_rows); };
    for_each_unit(heads, work, make, [&](BackwardScratch& t, int64_t bh) {
      const int64_t b = bh / p.heads, h = bh % p.heads;
      if (dq) std::fill(t.dq, t.dq + dq_rows * g.d_padded, 0.0f);
      for (int64_t kb = 0; kb < g.k_tiles; ++kb) key_tile_grads(t, g, a, b, h, kb, dq ? t.dq : nullptr);
      if (dq)
        add_rows(g.row(dq, p.q_stride, b, h, 0), p.q_stride[2], t.dq, g.d_padded, p.q_len, p.head_dim,
                 p.scale);
    });
    return;
  }
  // Few heads: dK and dV over (batch, head, key tile), then dQ over (batch, head, query block).
  auto make = [&](ScratchFrame& f) { return BackwardScratch(f, g, kTile); };
  if (dk || dv)
    for_each_unit(heads * g.k_tiles, work, make, [&](BackwardScratch& t, int64_t u) {
      const int64_t bh = u / g.k_tiles;
      key_tile_grads(t, g, a, bh / p.heads, bh % p.heads, u % g.k_tiles, nullptr);
    });
  if (dq)
    for_each_unit(heads * g.q_blocks, work, make, [&](BackwardScratch& t, int64_t u) {
      const int64_t bh = u / g.q_blocks;
      query_block_grads(t, g, a, bh / p.heads, bh % p.heads, g.q_blocks - 1 - u % g.q_blocks);
    });
}

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
