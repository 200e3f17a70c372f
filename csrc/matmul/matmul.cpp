// Packed, register-blocked GEMM in the BLIS style, compiled once per ISA
// variant.
//
//   for jc in N by NC:             B block (KC x NC) packed once, shared
//     for pc in K by KC:
//       pack B[pc, jc] into NR-wide micro-panels, A[:, pc] into MR-high ones
//       for each task (MC rows x N_TASK columns), in parallel:
//         for jr:  B micro-panel (KC x NR)
//           for ir:  A micro-panel (MR x KC)  ->  micro_kernel: MR x NR tile of C
//
// Transposes are handled by the packing, so all four op(A).op(B) cases run
// the same micro-kernel. The epilogue (bias on the first K block, activation
// on the last) is applied to the tile while it is still in registers.
// Small problems pack without blocking on one thread (small_gemm); a C of a
// few rows reads B in place (skinny_gemm).
#include <algorithm>

#include "core/cpu_info.h"
#include "core/kernel_list.inc"
#include "core/parallel.h"
#include "core/row_ops.h"
#include "core/scratch.h"
#include "core/simd.h"

namespace pyengine {
namespace PYENGINE_KERNEL_NS {
namespace {

using simd::kWidth;
using simd::vfloat;

// Micro-tile: MR rows x NR = two vectors of columns, held in 2 * MR vector
// registers: 24 of AVX-512's 32, 12 of AVX2's or SSE's 16.
#if defined(__AVX512F__)
constexpr int64_t MR = 12;
#else
constexpr int64_t MR = 6;
#endif
constexpr int64_t NR = 2 * kWidth;
constexpr int64_t MC = 12 * MR;       // rows of C per task
constexpr int64_t N_TASK = 4 * NR;    // columns of C per task
// Below this many multiply-adds a problem is packed whole, on one thread.
constexpr int64_t kSmallWork = 64 * 64 * 64;
// Below this many multiply-adds the packed GEMM stays on one thread.
constexpr int64_t kParallelWork = 160 * 160 * 160;

int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }
int64_t round_down(int64_t x, int64_t to) { return x / to * to; }

struct Blocking {
  int64_t kc;  // depth of a packed block
  int64_t nc;  // columns of the packed B block
};

// Block sizes from the machine's caches: an MC x KC block of A takes about a
// quarter of L2 (it is reused by every column task), and the packed B block
// KC x NC about half of L3 (capped: some machines report a huge L3).
const Blocking& blocking() {
  static const Blocking b = [] {
    const CacheSizes& cache = cache_sizes();
    Blocking out;
    out.kc = std::clamp<int64_t>(round_down(cache.l2 / 3 / (MC * 4), 64), 128, 512);
    out.nc = std::clamp<int64_t>(round_down(cache.l3 / 2 / (out.kc * 4), N_TASK), N_TASK, 4096);
    return out;
  }();
  return b;
}

// ------------------------------------------------------------------ epilogue

struct Epilogue {
  const float* bias;     // (n,) or nullptr, added on the first K block
  float* preact;         // like C or nullptr, written on the last K block
  Activation activation;
};

inline vfloat activate(vfloat v, Activation activation) {
  switch (activation) {
    case Activation::relu: return v < vfloat{} ? vfloat{} : v;  // NaN stays NaN
    case Activation::gelu: return simd::gelu(v);
    case Activation::none: break;
  }
  return v;
}

inline vfloat load_n(const float* p, int64_t count) {
  return count == kWidth ? simd::load(p) : simd::load_partial(p, count, 0.0f);
}
inline void store_n(float* p, vfloat v, int64_t count) {
  if (count == kWidth) simd::store(p, v);
  else simd::store_partial(p, v, count);
}

// Writes `count` columns of one row of a C tile from its accumulator:
// first K block: C = acc + bias, later ones: C += acc; the last applies the
// activation (keeping the value before it in preact).
inline void store_row(float* c, float* preact, vfloat acc, int64_t count, const float* bias,
                      bool first, bool last, Activation activation) {
  vfloat v = acc + (first ? (bias ? load_n(bias, count) : vfloat{}) : load_n(c, count));
  if (last) {
    if (preact) store_n(preact, v, count);
    v = activate(v, activation);
  }
  store_n(c, v, count);
}

// ------------------------------------------------------------------ packing

// Rows [i0, i0+panel) x depth [p0, p0+kc) of op(A) as ap[p][r], zero-padded.
void pack_a_panel(float* ap, const float* a, int64_t m, int64_t k, bool trans_a, int64_t i0,
                  int64_t p0, int64_t kc, int64_t panel = MR) {
  const int64_t rows = std::min(panel, m - i0);
  if (trans_a) {  // op(A) rows are columns of A: each p reads `rows` contiguous floats
    for (int64_t p = 0; p < kc; ++p) {
      const float* src = a + (p0 + p) * m + i0;
      float* dst = ap + p * panel;
      for (int64_t r = 0; r < rows; ++r) dst[r] = src[r];
      for (int64_t r = rows; r < panel; ++r) dst[r] = 0.0f;
    }
    return;
  }
  for (int64_t r = 0; r < panel; ++r) {  // walk each row of A contiguously
    const float* src = a + (i0 + r) * k + p0;
    for (int64_t p = 0; p < kc; ++p) ap[p * panel + r] = r < rows ? src[p] : 0.0f;
  }
}

// Depth [p0, p0+kc) x columns [j0, j0+width) of op(B) as bp[p][c], zero-padded.
void pack_b_panel(float* bp, const float* b, int64_t n, int64_t k, bool trans_b, int64_t j0,
                  int64_t p0, int64_t kc, int64_t width = NR) {
  const int64_t cols = std::min(width, n - j0);
  if (trans_b) {  // op(B) columns are rows of B: `cols` read streams, one contiguous write
    const float* src = b + j0 * k + p0;
    for (int64_t p = 0; p < kc; ++p) {
      float* dst = bp + p * width;
      for (int64_t c = 0; c < cols; ++c) dst[c] = src[c * k + p];
      for (int64_t c = cols; c < width; ++c) dst[c] = 0.0f;
    }
    return;
  }
  for (int64_t p = 0; p < kc; ++p) {
    const float* src = b + (p0 + p) * n + j0;
    float* dst = bp + p * width;
    for (int64_t c = 0; c < cols; ++c) dst[c] = src[c];
    for (int64_t c = cols; c < width; ++c) dst[c] = 0.0f;
  }
}

// ------------------------------------------------------------------ micro-kernel

// The rows x cols (<= ROWS x VECS * kWidth) tile of C at c from packed ap
// (kc x ROWS) and bp (kc rows of VECS vectors, ldb floats apart: the panel
// width when packed, n when the kernel reads B in place). The ROWS x VECS
// accumulators stay in registers.
template <int64_t ROWS = MR, int64_t VECS = 2>
void micro_kernel(float* c, float* preact, int64_t ldc, const float* ap, const float* bp,
                  int64_t ldb, int64_t kc, int64_t rows, int64_t cols, const float* bias,
                  bool first, bool last, Activation activation) {
  // Ask for the C tile now: its rows arrive while the k loop runs.
  for (int64_t r = 0; r < rows; ++r) __builtin_prefetch(c + r * ldc, 1);
  vfloat acc[ROWS][VECS];
#pragma GCC unroll 16
  for (int64_t r = 0; r < ROWS; ++r)
#pragma GCC unroll 16
    for (int64_t v = 0; v < VECS; ++v) acc[r][v] = vfloat{};
  for (int64_t p = 0; p < kc; ++p) {
    vfloat bv[VECS];
#pragma GCC unroll 16
    for (int64_t v = 0; v < VECS; ++v) bv[v] = simd::load(bp + v * kWidth);
#pragma GCC unroll 16
    for (int64_t r = 0; r < ROWS; ++r) {
      const vfloat a = simd::splat(ap[r]);
#pragma GCC unroll 16
      for (int64_t v = 0; v < VECS; ++v) acc[r][v] += a * bv[v];
    }
    ap += ROWS;
    bp += ldb;
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t v = 0; v < VECS && v * kWidth < cols; ++v) {
      const int64_t offset = v * kWidth, count = std::min<int64_t>(kWidth, cols - offset);
      store_row(c + r * ldc + offset, preact ? preact + r * ldc + offset : nullptr, acc[r][v],
                count, bias ? bias + offset : nullptr, first, last, activation);
    }
}

// ------------------------------------------------------------------ drivers

// C (m, n) = or += op(A) . op(B), with the epilogue when not accumulating.
void packed_gemm(float* c, const float* a, const float* b, int64_t m, int64_t n, int64_t k,
                 bool trans_a, bool trans_b, bool accumulate, const Epilogue& epilogue) {
  const Blocking& blk = blocking();
  const int64_t m_padded = round_up(m, MR);
  float* a_pack = scratch_floats(0, static_cast<size_t>(m_padded * blk.kc));
  float* b_pack = scratch_floats(1, static_cast<size_t>(blk.kc * round_up(std::min(n, blk.nc), NR)));
  // Inside another parallel region (a caller's threads, or the batch loop),
  // run on the calling thread: no oversubscription. Below kParallelWork one
  // task covers most of C and the barriers cost more than a second thread gains.
  const bool parallel = m * n * k >= kParallelWork && !in_parallel_region();
  (void)parallel;

  PYENGINE_OMP(omp parallel if (parallel) num_threads(thread_count()))
  for (int64_t jc = 0; jc < n; jc += blk.nc) {
    const int64_t nc = std::min(blk.nc, n - jc);
    for (int64_t pc = 0; pc < k; pc += blk.kc) {
      const int64_t kc = std::min(blk.kc, k - pc);
      const bool first = pc == 0 && !accumulate;
      const bool last = pc + kc >= k && !accumulate;
      const int64_t b_panels = (nc + NR - 1) / NR, a_panels = m_padded / MR;
      PYENGINE_OMP(omp for schedule(static))
      for (int64_t jp = 0; jp < b_panels; ++jp)
        pack_b_panel(b_pack + jp * NR * kc, b, n, k, trans_b, jc + jp * NR, pc, kc);
      PYENGINE_OMP(omp for schedule(static))
      for (int64_t ip = 0; ip < a_panels; ++ip)
        pack_a_panel(a_pack + ip * MR * kc, a, m, k, trans_a, ip * MR, pc, kc);

      const int64_t row_tasks = (m + MC - 1) / MC, col_tasks = (nc + N_TASK - 1) / N_TASK;
      PYENGINE_OMP(omp for collapse(2) schedule(dynamic))
      for (int64_t rt = 0; rt < row_tasks; ++rt)
        for (int64_t ct = 0; ct < col_tasks; ++ct) {
          const int64_t i_end = std::min(m, (rt + 1) * MC);
          const int64_t j_begin = ct * N_TASK, j_end = std::min(nc, j_begin + N_TASK);
          for (int64_t jr = j_begin; jr < j_end; jr += NR) {
            const float* bp = b_pack + (jr / NR) * NR * kc;
            const int64_t col = jc + jr;
            for (int64_t ir = rt * MC; ir < i_end; ir += MR) {
              float* tile = c + ir * n + col;
              micro_kernel(tile, epilogue.preact ? epilogue.preact + ir * n + col : nullptr, n,
                           a_pack + (ir / MR) * MR * kc, bp, NR, kc, std::min(MR, m - ir),
                           std::min(NR, nc - jr), epilogue.bias ? epilogue.bias + col : nullptr,
                           first, last, epilogue.activation);
            }
          }
        }
    }
  }
}

// Small problems: one thread, no blocking and no parallel region. The whole
// op(B) is packed once (zero-padded to whole micro-panels, which also takes
// care of trans_b and the column edge), each MR-row strip of op(A) once, and
// every tile goes through the same micro-kernel.
void small_gemm(float* c, const float* a, const float* b, int64_t m, int64_t n, int64_t k,
                bool trans_a, bool trans_b, bool accumulate, const Epilogue& epilogue) {
  const int64_t b_panels = (n + NR - 1) / NR;
  float* b_pack = scratch_floats(1, static_cast<size_t>(std::max<int64_t>(k, 1) * b_panels * NR));
  float* a_pack = scratch_floats(0, static_cast<size_t>(std::max<int64_t>(k, 1) * MR));
  for (int64_t jp = 0; jp < b_panels; ++jp) pack_b_panel(b_pack + jp * NR * k, b, n, k, trans_b, jp * NR, 0, k);
  for (int64_t ir = 0; ir < m; ir += MR) {
    pack_a_panel(a_pack, a, m, k, trans_a, ir, 0, k);
    for (int64_t jr = 0; jr < n; jr += NR)
      micro_kernel(c + ir * n + jr, epilogue.preact ? epilogue.preact + ir * n + jr : nullptr, n,
                   a_pack, b_pack + (jr / NR) * NR * k, NR, k, std::min(MR, m - ir),
                   std::min(NR, n - jr), epilogue.bias ? epilogue.bias + jr : nullptr,
                   !accumulate, !accumulate, epilogue.activation);
  }
}

// Few rows of C (token-by-token generation, M = 1..8) and B not transposed:
// B is read in place, once, by micro-kernels of ROWS >= m accumulator rows and
// as many vectors per row as the registers allow, so each row of B is read
// in long contiguous runs. Only op(A) (one small panel) and the last partial
// column panel are packed.
template <int64_t ROWS>
void skinny_gemm_in_place(float* c, const float* a, const float* b, int64_t m, int64_t n,
                          int64_t k, bool trans_a, bool accumulate, const Epilogue& epilogue) {
  constexpr int64_t kVecs = std::max<int64_t>(2, std::min<int64_t>(16, 2 * MR / ROWS));
  constexpr int64_t kPanel = kVecs * kWidth;
  float* a_pack = scratch_floats(0, static_cast<size_t>(std::max<int64_t>(k, 1) * ROWS));
  pack_a_panel(a_pack, a, m, k, trans_a, 0, 0, k, ROWS);
  auto panel = [&](int64_t j, const float* bp, int64_t ldb, int64_t cols) {
    micro_kernel<ROWS, kVecs>(c + j, epilogue.preact ? epilogue.preact + j : nullptr, n, a_pack,
                              bp, ldb, k, m, cols, epilogue.bias ? epilogue.bias + j : nullptr,
                              !accumulate, !accumulate, epilogue.activation);
  };
  const int64_t full_panels = n / kPanel;
  const bool parallel = m * n * k >= PYENGINE_PARALLEL_MIN_WORK && !in_parallel_region();
  (void)parallel;
  PYENGINE_OMP(omp parallel for if (parallel) schedule(static) num_threads(thread_count()))
  for (int64_t jp = 0; jp < full_panels; ++jp) panel(jp * kPanel, b + jp * kPanel, n, kPanel);
  if (n % kPanel) {
    float* b_pack = scratch_floats(1, static_cast<size_t>(std::max<int64_t>(k, 1) * kPanel));
    pack_b_panel(b_pack, b, n, k, false, full_panels * kPanel, 0, k, kPanel);
    panel(full_panels * kPanel, b_pack, kPanel, n % kPanel);
  }
}

// Few rows of C with B transposed (a Linear layer's (out, in) weight): each
// C element is a dot product of a row of op(A) with a row of B, and B is
// streamed once. The epilogue runs over the finished rows.
void skinny_gemm_dot(float* c, const float* a, const float* b, int64_t m, int64_t n, int64_t k,
                     bool trans_a, bool accumulate, const Epilogue& epilogue) {
  const float* a_rows = a;
  if (trans_a) {  // gather the rows of op(A)
    float* gathered = scratch_floats(0, static_cast<size_t>(std::max<int64_t>(m * k, 1)));
    for (int64_t p = 0; p < k; ++p)
      for (int64_t i = 0; i < m; ++i) gathered[i * k + p] = a[p * m + i];
    a_rows = gathered;
  }
  const bool parallel = m * n * k >= PYENGINE_PARALLEL_MIN_WORK && !in_parallel_region();
  (void)parallel;
  PYENGINE_OMP(omp parallel for if (parallel) schedule(static) num_threads(thread_count()))
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = 0; i < m; ++i) {
      const float v = row::dot(a_rows + i * k, b + j * k, k);
      c[i * n + j] = accumulate ? c[i * n + j] + v : v;
    }
  if (accumulate) return;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; j += kWidth) {
      const int64_t count = std::min<int64_t>(kWidth, n - j);
      float* cij = c + i * n + j;
      store_row(cij, epilogue.preact ? epilogue.preact + i * n + j : nullptr, load_n(cij, count),
                count, epilogue.bias ? epilogue.bias + j : nullptr, true, true, epilogue.activation);
    }
}

constexpr int64_t kSkinnyRows = 8;

void skinny_gemm(float* c, const float* a, const float* b, int64_t m, int64_t n, int64_t k,
                 bool trans_a, bool trans_b, bool accumulate, const Epilogue& epilogue) {
  if (trans_b) return skinny_gemm_dot(c, a, b, m, n, k, trans_a, accumulate, epilogue);
  if (m == 1) return skinny_gemm_in_place<1>(c, a, b, m, n, k, trans_a, accumulate, epilogue);
  if (m == 2) return skinny_gemm_in_place<2>(c, a, b, m, n, k, trans_a, accumulate, epilogue);
  if (m <= 4) return skinny_gemm_in_place<4>(c, a, b, m, n, k, trans_a, accumulate, epilogue);
  skinny_gemm_in_place<kSkinnyRows>(c, a, b, m, n, k, trans_a, accumulate, epilogue);
}

void gemm(float* c, const float* a, const float* b, int64_t m, int64_t n, int64_t k, bool trans_a,
          bool trans_b, bool accumulate, const Epilogue& epilogue) {
  if (m == 0 || n == 0) return;
  if (m <= kSkinnyRows)
    skinny_gemm(c, a, b, m, n, k, trans_a, trans_b, accumulate, epilogue);
  else if (m * n * k <= kSmallWork)
    small_gemm(c, a, b, m, n, k, trans_a, trans_b, accumulate, epilogue);
  else
    packed_gemm(c, a, b, m, n, k, trans_a, trans_b, accumulate, epilogue);
}

// Runs fn(i) for every matrix of a batch: across threads when each matrix is
// small (each then runs on one thread), else one after another with each
// matrix using the threads.
template <typename Fn>
void for_each_matrix(int64_t batch, int64_t work_per_matrix, Fn fn) {
  const bool across = batch > 1 && work_per_matrix < 128 * 128 * 128 && !in_parallel_region() &&
                      batch * work_per_matrix >= PYENGINE_PARALLEL_MIN_WORK;
  if (!across) {
    for (int64_t i = 0; i < batch; ++i) fn(i);
    return;
  }
  PYENGINE_OMP(omp parallel for schedule(dynamic) num_threads(thread_count()))
  for (int64_t i = 0; i < batch; ++i) fn(i);
}

// dbias (n,) += sum over rows of dc (rows, n).
void column_sums_accumulate(float* dbias, const float* dc, int64_t rows, int64_t n) {
  const bool parallel = rows * n >= PYENGINE_PARALLEL_MIN_WORK && n >= 64;
  (void)parallel;
  PYENGINE_OMP(omp parallel for if (parallel) schedule(static) num_threads(thread_count()))
  for (int64_t j0 = 0; j0 < n; j0 += 64) {
    const int64_t j1 = std::min(n, j0 + 64);
    float acc[64] = {};
    for (int64_t i = 0; i < rows; ++i) {
      const float* row = dc + i * n;
      for (int64_t j = j0; j < j1; ++j) acc[j - j0] += row[j];
    }
    for (int64_t j = j0; j < j1; ++j) dbias[j] += acc[j - j0];
  }
}

}  // namespace

void matmul_forward(float* c, float* preact, const float* a, const float* b, const float* bias,
                    Activation activation, int64_t batch, int64_t m, int64_t n, int64_t k,
                    bool trans_a, bool trans_b, int64_t batch_stride_a, int64_t batch_stride_b) {
  for_each_matrix(batch, m * n * k, [&](int64_t i) {
    const Epilogue epilogue{bias, preact ? preact + i * m * n : nullptr, activation};
    gemm(c + i * m * n, a + i * batch_stride_a, b + i * batch_stride_b, m, n, k, trans_a, trans_b,
         /*accumulate=*/false, epilogue);
  });
}

void matmul_backward(float* da, float* db, float* dbias, const float* dc, const float* a,
                     const float* b, int64_t batch, int64_t m, int64_t n, int64_t k, bool trans_a,
                     bool trans_b, int64_t batch_stride_a, int64_t batch_stride_b) {
  const Epilogue plain{nullptr, nullptr, Activation::none};
  // A shared operand's gradient sums over the batch: one matrix at a time.
  const int64_t parallel_batch = (batch_stride_a == 0 && da) || (batch_stride_b == 0 && db) ? 1 : batch;
  auto one = [&](int64_t i) {
    const float* dci = dc + i * m * n;
    const float* ai = a + i * batch_stride_a;
    const float* bi = b + i * batch_stride_b;
    if (da) {
      float* dai = da + i * batch_stride_a;
      if (!trans_a)  // dA (m, k) += dC . op(B)^T
        gemm(dai, dci, bi, m, k, n, false, !trans_b, true, plain);
      else  // dA (k, m) += op(B) . dC^T
        gemm(dai, bi, dci, k, m, n, trans_b, true, true, plain);
    }
    if (db) {
      float* dbi = db + i * batch_stride_b;
      if (!trans_b)  // dB (k, n) += op(A)^T . dC
        gemm(dbi, ai, dci, k, n, m, !trans_a, false, true, plain);
      else  // dB (n, k) += dC^T . op(A)
        gemm(dbi, dci, ai, n, k, m, true, trans_a, true, plain);
    }
  };
  if (parallel_batch == batch) for_each_matrix(batch, m * n * k, one);
  else for (int64_t i = 0; i < batch; ++i) one(i);
  if (dbias) column_sums_accumulate(dbias, dc, batch * m, n);
}

int64_t fma_probe(float* sink, int64_t iterations, int threads) {
  // 2 * MR independent accumulators: enough to cover the FMA latency on every
  // port; the loop touches no memory.
  int team = 1;
  PYENGINE_OMP(omp parallel num_threads(threads))
  {
    if (thread_index() == 0) team = team_size();
    vfloat acc[2 * MR];
    for (int64_t r = 0; r < 2 * MR; ++r) acc[r] = simd::splat(1.0f + 1e-3f * r);
    const vfloat x = simd::splat(0.999999f), y = simd::splat(1e-7f);
    for (int64_t it = 0; it < iterations; ++it) {
#pragma GCC unroll 32
      for (int64_t r = 0; r < 2 * MR; ++r) acc[r] = acc[r] * x + y;
    }
    vfloat total{};
    for (int64_t r = 0; r < 2 * MR; ++r) total += acc[r];
    sink[thread_index()] = simd::hsum(total);
  }
  return iterations * 2 * MR * kWidth * 2 * team;
}

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
