// Blocked, packed, vectorized GEMM (BLIS-style loop nest), compiled once per
// ISA variant. A and B are packed into contiguous micro-panels so that every
// transpose case runs the same register-blocked micro-kernel.
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

constexpr int64_t MR = 6;             // rows of C per micro-tile
constexpr int64_t NR = 2 * kWidth;    // columns of C per micro-tile (two vectors)
// KC keeps one packed B micro-panel (KC x NR) at about 16 KiB, half the L1.
constexpr int64_t KC = std::min<int64_t>(384, 4096 / NR);
constexpr int64_t MC = 144;           // rows of A per task: MC x KC stays in L2
constexpr int64_t NC = 1024;          // columns of the packed B block (shared, L3)
constexpr int64_t N_CHUNK = 4 * NR;   // columns of C per task

int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

// Packs rows [i0, i0+MR) x depth [p0, p0+kc) of op(A) as Ap[p][r], zero-padded.
void pack_a_panel(float* ap, const float* a, int64_t m, int64_t k, bool trans_a, int64_t i0,
                  int64_t p0, int64_t kc) {
  const int64_t rows = std::min(MR, m - i0);
  for (int64_t p = 0; p < kc; ++p) {
    float* dst = ap + p * MR;
    for (int64_t r = 0; r < rows; ++r)
      dst[r] = trans_a ? a[(p0 + p) * m + (i0 + r)] : a[(i0 + r) * k + (p0 + p)];
    for (int64_t r = rows; r < MR; ++r) dst[r] = 0.0f;
  }
}

// Packs depth [p0, p0+kc) x columns [j0, j0+NR) of op(B) as Bp[p][c], zero-padded.
void pack_b_panel(float* bp, const float* b, int64_t n, int64_t k, bool trans_b, int64_t j0,
                  int64_t p0, int64_t kc) {
  const int64_t cols = std::min(NR, n - j0);
  for (int64_t p = 0; p < kc; ++p) {
    float* dst = bp + p * NR;
    if (!trans_b && cols == NR) {
      const float* src = b + (p0 + p) * n + j0;
      for (int64_t c = 0; c < NR; ++c) dst[c] = src[c];
      continue;
    }
    for (int64_t c = 0; c < cols; ++c)
      dst[c] = trans_b ? b[(j0 + c) * k + (p0 + p)] : b[(p0 + p) * n + (j0 + c)];
    for (int64_t c = cols; c < NR; ++c) dst[c] = 0.0f;
  }
}

// C tile (rows x cols, rows <= MR, cols <= NR) = / += Ap . Bp (+ bias).
void micro_kernel(float* c, int64_t ldc, const float* ap, const float* bp, int64_t kc,
                  int64_t rows, int64_t cols, bool overwrite, const float* bias) {
  vfloat acc0[MR], acc1[MR];
#pragma GCC unroll 6
  for (int64_t r = 0; r < MR; ++r) acc0[r] = acc1[r] = vfloat{};
  for (int64_t p = 0; p < kc; ++p) {
    const vfloat b0 = simd::load(bp);
    const vfloat b1 = simd::load(bp + kWidth);
#pragma GCC unroll 6
    for (int64_t r = 0; r < MR; ++r) {
      const vfloat a = simd::splat(ap[r]);
      acc0[r] += a * b0;
      acc1[r] += a * b1;
    }
    ap += MR;
    bp += NR;
  }
  if (rows == MR && cols == NR) {
    const vfloat bias0 = bias ? simd::load(bias) : vfloat{};
    const vfloat bias1 = bias ? simd::load(bias + kWidth) : vfloat{};
#pragma GCC unroll 6
    for (int64_t r = 0; r < MR; ++r) {
      float* row = c + r * ldc;
      if (overwrite) {
        simd::store(row, acc0[r] + bias0);
        simd::store(row + kWidth, acc1[r] + bias1);
      } else {
        simd::store(row, simd::load(row) + acc0[r]);
        simd::store(row + kWidth, simd::load(row + kWidth) + acc1[r]);
      }
    }
    return;
  }
  alignas(64) float tile[MR * NR];
  for (int64_t r = 0; r < MR; ++r) {
    simd::store(tile + r * NR, acc0[r]);
    simd::store(tile + r * NR + kWidth, acc1[r]);
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) {
      const float v = tile[r * NR + j];
      float& dst = c[r * ldc + j];
      dst = overwrite ? v + (bias ? bias[j] : 0.0f) : dst + v;
    }
}

// C (m, n) = op(A) . op(B) (+ bias), or C += op(A) . op(B) when accumulate.
void gemm(float* c, const float* a, const float* b, const float* bias, int64_t m, int64_t n,
          int64_t k, bool trans_a, bool trans_b, bool accumulate) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    if (!accumulate)
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) c[i * n + j] = bias ? bias[j] : 0.0f;
    return;
  }
  const int64_t m_padded = round_up(m, MR);
  float* a_pack = scratch_floats(0, static_cast<size_t>(m_padded * KC));
  float* b_pack = scratch_floats(1, static_cast<size_t>(KC * round_up(std::min(n, NC), NR)));
  const bool parallel = m * n * k >= PYENGINE_PARALLEL_MIN_WORK;
  (void)parallel;

  PYENGINE_OMP(omp parallel if (parallel) num_threads(thread_count()))
  for (int64_t jc = 0; jc < n; jc += NC) {
    const int64_t nc = std::min(NC, n - jc);
    for (int64_t pc = 0; pc < k; pc += KC) {
      const int64_t kc = std::min(KC, k - pc);
      const bool overwrite = pc == 0 && !accumulate;
      const float* tile_bias = (pc == 0 && !accumulate) ? bias : nullptr;
      const int64_t b_panels = (nc + NR - 1) / NR;
      const int64_t a_panels = m_padded / MR;
      PYENGINE_OMP(omp for schedule(static))
      for (int64_t jp = 0; jp < b_panels; ++jp)
        pack_b_panel(b_pack + jp * NR * kc, b, n, k, trans_b, jc + jp * NR, pc, kc);
      PYENGINE_OMP(omp for schedule(static))
      for (int64_t ip = 0; ip < a_panels; ++ip)
        pack_a_panel(a_pack + ip * MR * kc, a, m, k, trans_a, ip * MR, pc, kc);

      const int64_t row_tasks = (m + MC - 1) / MC;
      const int64_t col_tasks = (nc + N_CHUNK - 1) / N_CHUNK;
      PYENGINE_OMP(omp for collapse(2) schedule(dynamic))
      for (int64_t rt = 0; rt < row_tasks; ++rt)
        for (int64_t ct = 0; ct < col_tasks; ++ct) {
          const int64_t i_end = std::min(m, (rt + 1) * MC);
          const int64_t j_begin = ct * N_CHUNK, j_end = std::min(nc, j_begin + N_CHUNK);
          for (int64_t jr = j_begin; jr < j_end; jr += NR) {
            const float* bp = b_pack + (jr / NR) * NR * kc;
            const int64_t cols = std::min(NR, nc - jr);
            for (int64_t ir = rt * MC; ir < i_end; ir += MR) {
              const float* ap = a_pack + (ir / MR) * MR * kc;
              micro_kernel(c + ir * n + jc + jr, n, ap, bp, kc, std::min(MR, m - ir), cols,
                           overwrite, tile_bias ? tile_bias + jc + jr : nullptr);
            }
          }
        }
    }
  }
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

void matmul_forward(float* c, const float* a, const float* b, const float* bias, int64_t batch,
                    int64_t m, int64_t n, int64_t k, bool trans_a, bool trans_b,
                    int64_t batch_stride_a, int64_t batch_stride_b) {
  for (int64_t i = 0; i < batch; ++i)
    gemm(c + i * m * n, a + i * batch_stride_a, b + i * batch_stride_b, bias, m, n, k, trans_a,
         trans_b, /*accumulate=*/false);
}

void matmul_backward(float* da, float* db, float* dbias, const float* dc, const float* a,
                     const float* b, int64_t batch, int64_t m, int64_t n, int64_t k, bool trans_a,
                     bool trans_b, int64_t batch_stride_a, int64_t batch_stride_b) {
  for (int64_t i = 0; i < batch; ++i) {
    const float* dci = dc + i * m * n;
    const float* ai = a + i * batch_stride_a;
    const float* bi = b + i * batch_stride_b;
    if (da) {
      float* dai = da + i * batch_stride_a;
      if (!trans_a)  // dA (m, k) += dC . op(B)^T
        gemm(dai, dci, bi, nullptr, m, k, n, false, !trans_b, true);
      else  // dA (k, m) += op(B) . dC^T
        gemm(dai, bi, dci, nullptr, k, m, n, trans_b, true, true);
    }
    if (db) {
      float* dbi = db + i * batch_stride_b;
      if (!trans_b)  // dB (k, n) += op(A)^T . dC
        gemm(dbi, ai, dci, nullptr, k, n, m, !trans_a, false, true);
      else  // dB (n, k) += dC^T . op(A)
        gemm(dbi, dci, ai, nullptr, n, k, m, true, trans_a, true);
    }
  }
  if (dbias) column_sums_accumulate(dbias, dc, batch * m, n);
}

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
