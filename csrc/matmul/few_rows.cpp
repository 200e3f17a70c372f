// The GEMM for few rows of C (token-by-token generation, a short prompt's
// prefill, a few beams): B streamed once, GEMV-like, instead of packed.
// matmul.cpp's gemm() sends a product here when streams_b says so.
#include "matmul/few_rows.h"

#include <algorithm>
#include <type_traits>

#include "core/parallel.h"
#include "core/row_ops.h"
#include "core/scratch.h"
#include "core/simd.h"
#include "matmul/gemm_epilogue.h"

namespace pyengine {
namespace PYENGINE_KERNEL_NS {
namespace {

using gemm_epilogue::Epilogue;
using gemm_epilogue::load_n;
using gemm_epilogue::store_n;
using gemm_epilogue::store_row;
using simd::kWidth;
using simd::vfloat;

int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

// The rows of op(A) (m x k) contiguous: A itself, or a gathered copy.
// A gathered copy lives in the caller's `scratch` frame.
const float* rows_of_op_a(ScratchFrame& scratch, const float* a, int64_t m, int64_t k, bool trans_a) {
  if (!trans_a) return a;
  float* gathered = scratch.floats(static_cast<size_t>(std::max<int64_t>(m * k, 1)));
  for (int64_t p = 0; p < k; ++p)
    for (int64_t i = 0; i < m; ++i) gathered[i * k + p] = a[p * m + i];
  return gathered;
}

// Applies the epilogue to finished values of C (rows x [j0, j1)), in place.
void epilogue_in_place(float* c, int64_t n, int64_t rows, int64_t j0, int64_t j1,
                       const Epilogue& epilogue) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = j0; j < j1; j += kWidth) {
      const int64_t count = std::min<int64_t>(kWidth, j1 - j);
      float* cij = c + i * n + j;
      store_row(cij, epilogue.preact ? epilogue.preact + i * n + j : nullptr, load_n(cij, count),
                count, epilogue.bias ? epilogue.bias + j : nullptr, true, true, epilogue.activation);
    }
}

// C[:, j0:j1) (m rows, n apart) (+)= A (m x k, rows lda apart) . B[:, j0:j1)
// (k rows, n apart), eight rows of B at a time combined into each C vector,
// so C is read and written once per eight; the epilogue on the first and
// last of those passes unless accumulating.
void sweep_rows(float* c, const float* a_rows, int64_t lda, const float* b, int64_t m, int64_t n,
                int64_t k, int64_t j0, int64_t j1, bool accumulate, const Epilogue& epilogue) {
  // Rows of B combined per pass over the chunk. More would thrash one L1
  // set when the rows of B lie a multiple of 4 KiB apart (N = 1024, 3072, ...).
  constexpr int64_t kDepth = 8;
  // Short rows of B (up to kPrefetchColumns floats) end before the hardware
  // prefetchers are far ahead in them, so each pass asks for the next pass's
  // 8 rows into L2, a line each per vector step. 1 x 3072 x 768 from memory,
  // against the column split without it: 1 thread 14.1 -> 15.2 GB/s, 2
  // threads 18.5 -> 29.5 (with the K slabs). Long rows are left to the
  // hardware: one pass ahead is then far ahead, and the LM head's 1 x 768 x
  // 50257 fell from 16.6 to 8.5 GB/s (prefetching into L1).
  constexpr int64_t kLineFloats = 16, kPrefetchColumns = 4096;
  // Each pass adds kDepth rows of B into C; the first one writes C (with
  // the bias), the last applies the activation. K = 0 still makes one.
  for (int64_t p0 = 0; p0 < k || p0 == 0; p0 += kDepth) {
    const int64_t depth = std::min(kDepth, k - p0);
    const bool first = p0 == 0 && !accumulate, last = p0 + kDepth >= k && !accumulate;
    const float* bp = b + p0 * n;
    const bool prefetch_next = n <= kPrefetchColumns && p0 + 2 * kDepth <= k;
    // Middle passes just add into C; the first and last go through the
    // epilogue. Two copies of the sweep keep that test out of its loops.
    auto sweep = [&](auto middle_pass) {
      auto finish = [&](int64_t i, int64_t j, vfloat acc, int64_t count) {
        const int64_t at = i * n + j;
        if constexpr (decltype(middle_pass)::value)
          store_n(c + at, load_n(c + at, count) + acc, count);
        else
          store_row(c + at, epilogue.preact ? epilogue.preact + at : nullptr, acc, count,
                    epilogue.bias ? epilogue.bias + j : nullptr, first, last, epilogue.activation);
      };
      int64_t j = j0;
      if (depth == kDepth)  // the common case, with every loop bound a constant
        for (; j + kWidth <= j1; j += kWidth) {
          vfloat bv[kDepth];
#pragma GCC unroll 16
          for (int64_t q = 0; q < kDepth; ++q) bv[q] = simd::load(bp + q * n + j);
          if (prefetch_next && (j & (kLineFloats - 1)) == 0) {
#pragma GCC unroll 16
            for (int64_t q = 0; q < kDepth; ++q) __builtin_prefetch(bp + (kDepth + q) * n + j, 0, 2);
          }
          for (int64_t i = 0; i < m; ++i) {
            const float* ai = a_rows + i * lda + p0;
            vfloat acc{};
#pragma GCC unroll 16
            for (int64_t q = 0; q < kDepth; ++q) acc += simd::splat(ai[q]) * bv[q];
            finish(i, j, acc, kWidth);
          }
        }
      for (; j < j1; j += kWidth) {  // the last rows of B, or a partial vector
        const int64_t count = std::min<int64_t>(kWidth, j1 - j);
        vfloat bv[kDepth];
        for (int64_t q = 0; q < depth; ++q) bv[q] = load_n(bp + q * n + j, count);
        for (int64_t i = 0; i < m; ++i) {
          const float* ai = a_rows + i * lda + p0;
          vfloat acc{};
          for (int64_t q = 0; q < depth; ++q) acc += simd::splat(ai[q]) * bv[q];
          finish(i, j, acc, count);
        }
      }
    };
    if (first || last) sweep(std::false_type{});
    else sweep(std::true_type{});
  }
}

// A GEMV-like product of up to this many rows of C splits K into slabs (see
// skinny_gemm_rows); more rows split the columns only.
// Rows of B longer than kSlabMaxColumns floats split by columns still give
// each thread long runs (the LM head, 1 x 768 x 50257, 2 threads: 27.0 GB/s
// by columns, 24.9 by slabs).
constexpr int64_t kSlabMaxRows = 4, kSlabMaxColumns = 8192;
constexpr int64_t kSlabRows = 64, kMaxSlabs = 16;

// Few rows of C (token-by-token generation, M = 1..8, or up to 32 with a
// large B: see streams_b) and B not transposed: a GEMV-like sweep that
// streams B once, row by row.
//
// Up to kSlabMaxRows rows of C (batch-1 decoding, a few beams), K is cut into
// slabs of whole rows of B, at most kMaxSlabs of them, their number fixed by
// K alone: each slab's product goes into its own partial C, and the partials
// are summed in slab order, so the result does not depend on the thread
// count. A thread's slabs are one contiguous run of B, a single stream the
// prefetchers follow; split by columns, each thread read a band of every
// row. 2 threads, B from memory, GB/s by columns -> by slabs: 1 x 768 x 768
// 16.1 -> 21.6, x 2304 23.0 -> 25.7, 1 x 3072 x 768 16.8 -> 22.7, 1 x 1024
// x 256 9.7 -> 18.1 (1 thread: the same). Otherwise each task owns a chunk
// of columns (its slice of C stays in cache).
void skinny_gemm_rows(float* c, const float* a, const float* b, int64_t m, int64_t n, int64_t k,
                      bool trans_a, bool accumulate, const Epilogue& epilogue) {
  ScratchFrame scratch;
  const float* a_rows = rows_of_op_a(scratch, a, m, k, trans_a);
  const bool parallel = m * n * k >= PYENGINE_PARALLEL_MIN_WORK && !in_parallel_region();
  const int64_t slab = std::max(kSlabRows, round_up((k + kMaxSlabs - 1) / kMaxSlabs, 8));
  const int64_t slabs = (k + slab - 1) / slab;
  if (m <= kSlabMaxRows && n <= kSlabMaxColumns && slabs > 1) {
    float* partials = scratch.floats(static_cast<size_t>(slabs * m * n));
    parallel_for(parallel, slabs, [&](int64_t s) {
      const int64_t p0 = s * slab;
      sweep_rows(partials + s * m * n, a_rows + p0, k, b + p0 * n, m, n, std::min(slab, k - p0), 0, n,
                 false, Epilogue{nullptr, nullptr, Activation::none});
    });
    const int64_t chunk = round_up((n + 1) / 2, kWidth);  // 2 chunks a row
    parallel_for(parallel && n >= 64 * kWidth, m * 2, [&](int64_t t) {
      const int64_t i = t / 2, j0 = (t % 2) * chunk, j1 = std::min(n, j0 + chunk);
      for (int64_t j = j0; j < j1; j += kWidth) {
        const int64_t count = std::min<int64_t>(kWidth, j1 - j), at = i * n + j;
        vfloat sum = accumulate ? load_n(c + at, count) : vfloat{};
        for (int64_t q = 0; q < slabs; ++q) sum += load_n(partials + q * m * n + at, count);
        if (accumulate) store_n(c + at, sum, count);
        else
          store_row(c + at, epilogue.preact ? epilogue.preact + at : nullptr, sum, count,
                    epilogue.bias ? epilogue.bias + j : nullptr, true, true, epilogue.activation);
      }
    });
    return;
  }
  // Chunks of C columns: two a thread, at most 2048 columns, so C's chunk
  // stays near L1 while 8 rows of B stream past it. A single row of C (a
  // GEMV) is read once per 8 rows of B, so it can live in L2: one chunk a
  // thread, up to 64K columns, and B is read in long runs, which the
  // prefetchers follow better (1 x 768 x 50304: 6.5 -> 11 GFLOP/s).
  const int64_t threads = parallel ? thread_count() : 1;
  const int64_t per_thread = m == 1 ? 1 : 2, max_chunk = m == 1 ? 65536 : 2048;
  const int64_t chunk = std::clamp<int64_t>(
      round_up((n + per_thread * threads - 1) / (per_thread * threads), kWidth), 16 * kWidth,
      max_chunk);
  const int64_t chunks = (n + chunk - 1) / chunk;
  parallel_for(parallel, chunks, [&](int64_t t) {
    const int64_t j0 = t * chunk, j1 = std::min(n, j0 + chunk);
    sweep_rows(c, a_rows, k, b, m, n, k, j0, j1, accumulate, epilogue);
  });
}

// Few rows of C with B transposed (a Linear layer's (out, in) weight): each
// C element is a dot product of a row of op(A) with a row of B, and B is
// streamed once. The epilogue runs over the finished rows.
void skinny_gemm_dot(float* c, const float* a, const float* b, int64_t m, int64_t n, int64_t k,
                     bool trans_a, bool accumulate, const Epilogue& epilogue) {
  ScratchFrame scratch;
  const float* a_rows = rows_of_op_a(scratch, a, m, k, trans_a);
  const bool parallel = m * n * k >= PYENGINE_PARALLEL_MIN_WORK && !in_parallel_region();
  parallel_for(parallel, n, [&](int64_t j) {
    for (int64_t i = 0; i < m; ++i) {
      const float v = row::dot(a_rows + i * k, b + j * k, k);
      c[i * n + j] = accumulate ? c[i * n + j] + v : v;
    }
  });
  if (!accumulate) epilogue_in_place(c, n, m, 0, n, epilogue);
}

}  // namespace

// Up to kSkinnyRows rows of C always stream B (the sweep beats packing).
// A few more rows do too when B is large, beyond L2 (prefill of a short
// prompt, a few beams): packing would read B from memory and write and read
// it again, where the sweep reads it once. With B in cache, packing wins.
// Measured at 1 thread, 768 x 3072 weight from memory, 16 rows: sweep 2.45
// ms against packed 4.67 (B untransposed), 3.35 against 4.78 (transposed);
// the transposed sweep (a dot product per element) falls behind from 24 rows.
constexpr int64_t kSkinnyRows = 8;
constexpr int64_t kSkinnyRowsLargeB = 32, kSkinnyRowsLargeBTransposed = 16;
constexpr int64_t kLargeB = int64_t{1} << 20;  // floats of B (4 MiB)

bool streams_b(int64_t m, int64_t n, int64_t k, bool trans_b) {
  if (m <= kSkinnyRows) return true;
  return n * k >= kLargeB && m <= (trans_b ? kSkinnyRowsLargeBTransposed : kSkinnyRowsLargeB);
}

void skinny_gemm(float* c, const float* a, const float* b, int64_t m, int64_t n, int64_t k,
                 bool trans_a, bool trans_b, bool accumulate, const Epilogue& epilogue) {
  if (trans_b) skinny_gemm_dot(c, a, b, m, n, k, trans_a, accumulate, epilogue);
  else skinny_gemm_rows(c, a, b, m, n, k, trans_a, accumulate, epilogue);
}

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
