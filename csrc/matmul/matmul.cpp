// Packed, register-blocked GEMM in the BLIS style, compiled once per ISA
// variant.
//
//   for jc in N by NC:             B block (KC x NC) packed once, shared
//     for pc in K by KC:
//       pack B[pc, jc] into NR-wide micro-panels, A[:, pc] into MR-high ones
//       (untransposed A is read in place by tiles of few rows, and when a
//       task has one B panel)
//       for each task (MC rows x N_TASK columns; row block by row block),
//       in parallel:
//         for ir:  A micro-panel (MR x KC), near L1
//           for jr:  B micro-panel (KC x NR), from L2  ->  micro_kernel: MR x NR tile of C
//       (or jr outside ir when a B micro-panel fits in L1: it stays there
//       while the A panels stream past)
//
// Transposes are handled by the packing, so all four op(A).op(B) cases run
// the same micro-kernel; narrower, taller ones serve C of few columns.
// The epilogue (bias on the first K block, activation
// on the last) is applied to the tile while it is still in registers.
// Small problems pack without blocking on one thread (small_gemm); a C of a
// few rows streams B once, GEMV-like (few_rows.cpp).
#include <algorithm>
#include <iterator>

#include "core/cpu_info.h"
#include "core/kernel_list.inc"
#include "core/parallel.h"
#include "core/scratch.h"
#include "core/simd.h"
#include "matmul/few_rows.h"
#include "matmul/gemm_epilogue.h"

namespace pyengine {
namespace PYENGINE_KERNEL_NS {
namespace {

using simd::kWidth;
using simd::vfloat;

// Micro-tiles: MR rows x NR = VECS vectors of columns, accumulated in
// MR * VECS vector registers. Wide C takes the wide tile: 14 x 2 vectors on
// AVX-512 (28 of its 32 registers: per step of k, 2 loads and 14 broadcasts
// feed 28 FMAs), 6 x 2 on AVX2 and SSE (12 of 16). C of fewer columns takes
// the narrowest tile of kAccumulators registers that covers them (24 x 1,
// 12 x 2 or 8 x 3 vectors on AVX-512), so no lane computes padding; on
// AVX-512, C of 49 to 256 columns takes 6 x 4 vectors with A read in place
// (the convolutions' im2col GEMMs, N = 64 .. 256: 3136 x 576 x 64 took 1.3x
// the time on the wide tile, which packs A for its 2 B panels).
#if defined(__AVX512F__)
constexpr int64_t kAccumulators = 24;
constexpr int64_t kWideRows = 14;
constexpr int64_t N_TASK = 256;  // columns of C per task: 8 wide micro-panels
#else
constexpr int64_t kAccumulators = 12;
constexpr int64_t kWideRows = 6;
constexpr int64_t N_TASK = 8 * kWidth;  // columns of C per task
#endif
constexpr int64_t kWideVecs = 2;
// An untransposed A panel of up to this many rows is read in place, MR
// strided rows at once: as many streams as the prefetchers follow (the
// 14-row wide tile packs A instead, one contiguous stream).
constexpr int64_t kInPlaceRows = 8;
constexpr int64_t MC = 168;  // rows of C per task (a multiple of every MR: 24, 14, 12, 8, 6)
// Below this many multiply-adds a problem is packed whole, on one thread.
constexpr int64_t kSmallWork = 64 * 64 * 64;
// Below this many multiply-adds the packed GEMM stays on one thread.
constexpr int64_t kParallelWork = 96 * 96 * 96;

int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }
int64_t round_down(int64_t x, int64_t to) { return x / to * to; }

struct Blocking {
  int64_t kc;        // depth of a packed block (a problem's blocks are 0.75 to 1.5 kc deep)
  int64_t nc;        // columns of the packed B block, threads sharing it
  int64_t nc_alone;  // the same for a GEMM on one thread
};

// Block sizes from the machine's caches: KC such that MC x KC floats take a
// third of L2 (a task's B panels, KC x N_TASK, are as large), the packed B
// block KC x NC about half of L3 (capped: some machines report a huge L3).
// A GEMM on one thread (each convolution chunk's, or a 1-thread run) packs
// B blocks of about L2's size instead (L2 / (4 KC) columns, 1024 here): the
// block it writes then mostly stays in L2 for its A panels, where 4096
// columns went out to L3 and came back. One
// thread, same process, NC 4096 -> 1024: 512 x 2304 x 1960 (ResNet's
// 14x14 and 7x7 im2col GEMMs) 1.25x the speed, 64 x 576 x 3136 1.24x,
// 4096 x 3072 x 768 1.14x, the LM head 1.12x, 256 x 576 x 784 0.99x. With
// two threads sharing a block, 1024 lost up to 11% on GPT-2's shapes.
const Blocking& blocking() {
  static const Blocking b = [] {
    const CacheSizes& cache = cache_sizes();
    Blocking out;
    out.kc = std::clamp<int64_t>(round_down(cache.l2 / 3 / (MC * 4), 64), 128, 512);
    out.nc = std::clamp<int64_t>(round_down(cache.l3 / 2 / (out.kc * 4), N_TASK), N_TASK, 4096);
    out.nc_alone = std::clamp<int64_t>(round_down(cache.l2 / (out.kc * 4), N_TASK), N_TASK, out.nc);
    return out;
  }();
  return b;
}

// ------------------------------------------------------------------ epilogue
// Epilogue, store_row and the partial loads and stores: gemm_epilogue.h.
using gemm_epilogue::Epilogue;
using gemm_epilogue::load_n;
using gemm_epilogue::store_n;
using gemm_epilogue::store_row;

// acc += broadcast(*a) * b. On AVX-512 the broadcast rides in the FMA's
// memory operand ({1to16}): one fused uop, where a separate broadcast costs
// one more (measured alone: 14 x 32 with B from L2 about 4% faster, 12 x 32
// and 8 x 48 in L1 about 10%). Tiles of 4 vectors broadcast once into a
// register instead: the memory form would load each A value 4 times
// (6 x 64, 3136 x 576 x 64: 1.12x the time).
inline void fma_splat(vfloat& acc, const float* a, vfloat b) {
#if defined(__AVX512F__) && defined(__GNUC__)
  asm("vfmadd231ps %1%{1to16%}, %2, %0" : "+v"(acc) : "m"(*a), "v"(b));
#else
  acc += simd::splat(*a) * b;
#endif
}

// Where a micro-kernel reads its MR rows of op(A): a packed panel
// (ap[p * MR + r]), or, when op(A) = A, the rows of A in place
// (a[r * lda + p]): no packing pass, the same broadcasts per step of k.
struct APanel {
  const float* a;
  int64_t lda;  // 0: packed
};

struct TaskGrid { int64_t rows, cols; };

// ------------------------------------------------------------------ packing

#if defined(__GNUC__) && !defined(__clang__)
// The in-register transpose, rounds S = kWidth/2 .. 1: rows i and i + S
// (i & S == 0) exchange their off-diagonal S-lane blocks. After the last,
// v[q] holds lane q of every input row.
template <int S>
inline void transpose_rounds(vfloat (&v)[kWidth]) {
  simd::vint keep, take;  // lane l of the new rows i and i + S
  for (int l = 0; l < kWidth; ++l) {
    keep[l] = (l & S) ? kWidth + l - S : l;
    take[l] = (l & S) ? kWidth + l : l + S;
  }
  for (int i = 0; i < kWidth; ++i)
    if ((i & S) == 0) {
      const vfloat lo = __builtin_shuffle(v[i], v[i + S], keep);
      v[i + S] = __builtin_shuffle(v[i], v[i + S], take);
      v[i] = lo;
    }
  if constexpr (S > 1) transpose_rounds<S / 2>(v);
}
#endif

// The transposing copy behind packing: dst[p * ld + r] = src[r * stride + p]
// for p < depth and r < count, and 0 for count <= r < width (<= kWidth).
// Blocks of kWidth values of each row go through registers (one load a row,
// a kWidth x kWidth transpose, one store a p), the rest element by element.
void transpose_into(float* dst, int64_t ld, const float* src, int64_t stride, int64_t count,
                    int64_t width, int64_t depth) {
  int64_t p = 0;
#if defined(__GNUC__) && !defined(__clang__)
  for (; p + kWidth <= depth; p += kWidth) {
    vfloat v[kWidth];
    for (int64_t r = 0; r < kWidth; ++r)
      v[r] = r < count ? simd::load(src + r * stride + p) : vfloat{};
    transpose_rounds<kWidth / 2>(v);
    for (int64_t q = 0; q < kWidth; ++q) store_n(dst + (p + q) * ld, v[q], width);
  }
#endif
  for (; p < depth; ++p)
    for (int64_t r = 0; r < width; ++r) dst[p * ld + r] = r < count ? src[r * stride + p] : 0.0f;
}

// Packing, micro-kernel and drivers for one micro-tile shape.
template <int64_t MR, int64_t VECS>
struct Tiled {
  static constexpr int64_t kRows = MR, NR = VECS * kWidth;
  static constexpr bool kBroadcastInFma = VECS <= 3;

  // ------------------------------------------------------------------ packing

  // Rows [i0, i0+MR) x depth [p0, p0+kc) of op(A) as ap[p][r], zero-padded.
  static void pack_a_panel(float* ap, const float* a, int64_t m, int64_t k, bool trans_a,
                           int64_t i0, int64_t p0, int64_t kc) {
    const int64_t rows = std::min(MR, m - i0);
    if (trans_a) {  // op(A) rows are columns of A: each p reads `rows` contiguous floats
      for (int64_t p = 0; p < kc; ++p) copy_padded(ap + p * MR, a + (p0 + p) * m + i0, rows, MR);
      return;
    }
    // Rows of A become columns of the panel, kWidth rows at a time.
    for (int64_t r = 0; r < MR; r += kWidth)
      transpose_into(ap + r, MR, a + (i0 + r) * k + p0, k, std::clamp<int64_t>(rows - r, 0, kWidth),
                     std::min<int64_t>(kWidth, MR - r), kc);
  }

  // Depth [p0, p0+kc) x columns [j0, j0+NR) of op(B) as bp[p][c], zero-padded.
  static void pack_b_panel(float* bp, const float* b, int64_t n, int64_t k, bool trans_b,
                           int64_t j0, int64_t p0, int64_t kc) {
    const int64_t cols = std::min(NR, n - j0);
    if (trans_b) {  // op(B) columns are rows of B, transposed kWidth at a time
      for (int64_t c = 0; c < NR; c += kWidth)
        transpose_into(bp + c, NR, b + (j0 + c) * k + p0, k,
                       std::clamp<int64_t>(cols - c, 0, kWidth), kWidth, kc);
      return;
    }
    for (int64_t p = 0; p < kc; ++p) copy_padded(bp + p * NR, b + (p0 + p) * n + j0, cols, NR);
  }

  // dst[0, width) = src[0, count), then zeros.
  static void copy_padded(float* dst, const float* src, int64_t count, int64_t width) {
    for (int64_t c = 0; c < width; c += kWidth) {
      const int64_t valid = std::clamp<int64_t>(count - c, 0, kWidth);
      const vfloat v = valid == kWidth ? simd::load(src + c)
                                       : simd::load_partial(src + c, valid, 0.0f);
      store_n(dst + c, v, std::min<int64_t>(kWidth, width - c));
    }
  }

  // ------------------------------------------------------------------ micro-kernel

  // The rows x cols (<= MR x NR) tile of C at c from the A panel (kc x MR
  // values) and kc rows of NR values of B at bp, ldb apart (NR when packed).
  // The MR x VECS vector accumulators stay in registers. Never inlined: in
  // the drivers' loop nests the compiler ran short of general registers and
  // kept the row offsets of an in-place A and the B pointer on the stack,
  // a load per broadcast and a store per step of k.
  template <bool kPackedA>
  [[gnu::noinline]] static void micro_kernel(float* c, float* preact, int64_t ldc, APanel ap,
                                             const float* bp, int64_t ldb, int64_t kc,
                                             int64_t rows, int64_t cols, const float* bias,
                                             bool first, bool last, Activation activation) {
    const int64_t row_stride = kPackedA ? 1 : ap.lda, k_stride = kPackedA ? MR : 1;
    const float* a = ap.a;
    // Ask for the C tile now, every cache line of it: it arrives while the
    // k loop runs.
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t col = 0; col < cols; col += 16) __builtin_prefetch(c + r * ldc + col, 1);
    // Every loop over rows unrolled whole (MR <= 24): the accumulators stay
    // in registers.
    vfloat acc[MR][VECS];
#pragma GCC unroll 32
    for (int64_t r = 0; r < MR; ++r)
#pragma GCC unroll 16
      for (int64_t v = 0; v < VECS; ++v) acc[r][v] = vfloat{};
    for (int64_t p = 0; p < kc; ++p) {
      vfloat bv[VECS];
#pragma GCC unroll 16
      for (int64_t v = 0; v < VECS; ++v) bv[v] = simd::load(bp + v * kWidth);
#pragma GCC unroll 32
      for (int64_t r = 0; r < MR; ++r) {
        if constexpr (kBroadcastInFma) {
#pragma GCC unroll 16
          for (int64_t v = 0; v < VECS; ++v) fma_splat(acc[r][v], a + r * row_stride, bv[v]);
        } else {
          const vfloat ar = simd::splat(a[r * row_stride]);
#pragma GCC unroll 16
          for (int64_t v = 0; v < VECS; ++v) acc[r][v] += ar * bv[v];
        }
      }
      a += k_stride;
      bp += ldb;
    }
    // The epilogue indexes rows at run time: a copy, so acc stays in registers.
    vfloat out[MR][VECS];
#pragma GCC unroll 32
    for (int64_t r = 0; r < MR; ++r)
#pragma GCC unroll 16
      for (int64_t v = 0; v < VECS; ++v) out[r][v] = acc[r][v];
    if (rows == MR && cols == NR && !preact && (!last || activation == Activation::none)) {
      // A whole tile with no activation, stored straight from the registers.
#pragma GCC unroll 32
      for (int64_t r = 0; r < MR; ++r)
#pragma GCC unroll 16
        for (int64_t v = 0; v < VECS; ++v) {
          float* cv = c + r * ldc + v * kWidth;
          const vfloat base = first ? (bias ? simd::load(bias + v * kWidth) : vfloat{})
                                    : simd::load(cv);
          simd::store(cv, out[r][v] + base);
        }
      return;
    }
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t v = 0; v < VECS && v * kWidth < cols; ++v) {
        const int64_t offset = v * kWidth, count = std::min<int64_t>(kWidth, cols - offset);
        store_row(c + r * ldc + offset, preact ? preact + r * ldc + offset : nullptr, out[r][v],
                  count, bias ? bias + offset : nullptr, first, last, activation);
      }
  }

  static void micro_kernel(float* c, float* preact, int64_t ldc, APanel ap, const float* bp,
                           int64_t ldb, int64_t kc, int64_t rows, int64_t cols,
                           const float* bias, bool first, bool last, Activation activation) {
    if (ap.lda == 0)
      micro_kernel<true>(c, preact, ldc, ap, bp, ldb, kc, rows, cols, bias, first, last,
                         activation);
    else
      micro_kernel<false>(c, preact, ldc, ap, bp, ldb, kc, rows, cols, bias, first, last,
                          activation);
  }

  // ---------------------------------------------------------------- drivers

  // The task grid of one (m x n x kc) block of the packed GEMM: blocks of MC
  // rows x N_TASK columns, halved (rows first, down to one micro-tile) until
  // there are two tasks a thread, and with several threads up to 16 a thread
  // while a task keeps 2^22 multiply-adds: the dynamic schedule then ends
  // each block with at most one short task running alone (GPT-2's LM-head dA,
  // 1024 x 768 per K block: 39 tasks instead of 21).
  static TaskGrid task_grid(int64_t m, int64_t n, int64_t kc, int threads) {
    TaskGrid grid{MC, round_up(N_TASK, NR)};
    auto tasks = [&] {
      return ((m + grid.rows - 1) / grid.rows) * ((n + grid.cols - 1) / grid.cols);
    };
    const int64_t fine = threads > 1 ? std::min<int64_t>(16 * threads, m * n * kc >> 22) : 0;
    const int64_t wanted = std::max<int64_t>(2 * threads, fine);
    while (tasks() < wanted && (grid.rows > MR || grid.cols > NR)) {
      if (grid.rows > MR) grid.rows = round_up(grid.rows / 2, MR);
      else grid.cols = round_up(grid.cols / 2, NR);
    }
    return grid;
  }

  // B micro-panels [jp0, jp1) of the block at columns j0, depth [p0, p0+kc):
  // an untransposed B row by row across the panels (one contiguous read a row
  // of B, not kc strided ones a panel), a transposed one panel by panel.
  static void pack_b_panels(float* b_pack, const float* b, int64_t n, int64_t k, bool trans_b,
                            int64_t j0, int64_t p0, int64_t kc, int64_t jp0, int64_t jp1) {
    if (trans_b) {
      for (int64_t jp = jp0; jp < jp1; ++jp)
        pack_b_panel(b_pack + jp * NR * kc, b, n, k, trans_b, j0 + jp * NR, p0, kc);
      return;
    }
    for (int64_t p = 0; p < kc; ++p) {
      const float* src = b + (p0 + p) * n + j0;
      for (int64_t jp = jp0; jp < jp1; ++jp)
        copy_padded(b_pack + (jp * kc + p) * NR, src + jp * NR,
                    std::min(NR, n - j0 - jp * NR), NR);
    }
  }

  // C (m, n) = or += op(A) . op(B), with the epilogue when not accumulating.
  static void packed_gemm(float* c, const float* a, const float* b, int64_t m, int64_t n,
                          int64_t k, bool trans_a, bool trans_b, bool accumulate,
                          const Epilogue& epilogue) {
    const Blocking& blk = blocking();
    const int64_t m_padded = round_up(m, MR);
    // Inside another parallel region (a caller's threads, or the batch loop),
    // run on the calling thread: no oversubscription. Below kParallelWork one
    // task covers most of C and the barriers cost more than a second thread gains.
    const bool parallel = m * n * k >= kParallelWork && !in_parallel_region();
    const int64_t nc_step = parallel && thread_count() > 1 ? blk.nc : blk.nc_alone;
    // K blocks of equal depth, up to 1.5 KC: each block is one more pass over
    // C, and a thin last one (512 + 64) would pay a full pass for little
    // work. K = 768 (GPT-2's width) is one pass, 576 one, 4096 six.
    const int64_t k_blocks = std::max<int64_t>(1, (2 * k + 3 * blk.kc - 1) / (3 * blk.kc));
    const int64_t kc_step = round_up((k + k_blocks - 1) / k_blocks, 8);
    const TaskGrid grid =
        task_grid(m, std::min(n, nc_step), kc_step, parallel ? thread_count() : 1);
    // With several threads and blocks, packed blocks are double-buffered: one
    // barrier a block (packing done) instead of three, so a thread preempted
    // by another process holds the others up once a block.
    const int64_t blocks = ((n + nc_step - 1) / nc_step) * ((k + kc_step - 1) / kc_step);
    const bool two = parallel && thread_count() > 1 && blocks > 1;
    const size_t a_size = static_cast<size_t>(m_padded * kc_step);
    const size_t b_size = static_cast<size_t>(kc_step * round_up(std::min(n, nc_step), NR));
    ScratchFrame scratch;
    float* a_packs[2] = {scratch.floats(a_size), nullptr};
    float* b_packs[2] = {scratch.floats(b_size), nullptr};
    a_packs[1] = two ? scratch.floats(a_size) : a_packs[0];
    b_packs[1] = two ? scratch.floats(b_size) : b_packs[0];

    parallel_region(parallel, thread_count(), [&] {
      int64_t step = 0;
      for (int64_t jc = 0; jc < n; jc += nc_step) {
        const int64_t nc = std::min(nc_step, n - jc);
        for (int64_t pc = 0; pc < k; pc += kc_step, ++step) {
          float* const a_pack = a_packs[step % 2];
          float* const b_pack = b_packs[step % 2];
          const int64_t kc = std::min(kc_step, k - pc);
          const bool first = pc == 0 && !accumulate;
          const bool last = pc + kc >= k && !accumulate;
          const int64_t b_panels = (nc + NR - 1) / NR;
          constexpr int64_t kPackGroup = 8;  // B panels packed together
          PYENGINE_OMP(omp for schedule(static) nowait)
          for (int64_t g = 0; g < b_panels; g += kPackGroup)
            pack_b_panels(b_pack, b, n, k, trans_b, jc, pc, kc, g,
                          std::min(b_panels, g + kPackGroup));
          // A task of one B micro-panel uses each element of A once: an
          // untransposed A is then read in place, but for a last, partial
          // panel; so is a panel of few rows (kInPlaceRows). Wider tasks of
          // the wide tile reuse each A panel across their B panels, and pack
          // it (contiguous broadcasts, one stream instead of MR).
          const bool a_in_place =
              !trans_a && (std::min(grid.cols, nc) <= NR || MR <= kInPlaceRows);
          const int64_t a_first = a_in_place ? m / MR : 0, a_panels = m_padded / MR;
          PYENGINE_OMP(omp for schedule(static) nowait)
          for (int64_t ip = a_first; ip < a_panels; ++ip)
            pack_a_panel(a_pack + ip * MR * kc, a, m, k, trans_a, ip * MR, pc, kc);
          PYENGINE_OMP(omp barrier)
          auto a_panel = [&](int64_t ir) {
            return ir + MR <= m && a_in_place ? APanel{a + ir * k + pc, k}
                                              : APanel{a_pack + (ir / MR) * MR * kc, 0};
          };

          // A task sweeps its B panels (kc x grid.cols, in L2) once per A
          // micro-panel. Tasks go row block by row block: at 2 threads this
          // beat column-major order by 8-12% on the 4096-row GPT-2 GEMMs
          // (0.96-0.98 on the LM head's; same-process A/B, quiet host).
          const int64_t row_tasks = (m + grid.rows - 1) / grid.rows;
          const int64_t col_tasks = (nc + grid.cols - 1) / grid.cols;
          auto tile = [&](int64_t ir, int64_t jr) {
            const int64_t col = jc + jr;
            micro_kernel(c + ir * n + col,
                         epilogue.preact ? epilogue.preact + ir * n + col : nullptr, n,
                         a_panel(ir), b_pack + (jr / NR) * NR * kc, NR, kc,
                         std::min(MR, m - ir), std::min(NR, nc - jr),
                         epilogue.bias ? epilogue.bias + col : nullptr, first, last,
                         epilogue.activation);
          };
          // The operand a task holds near L1 across the inner loop: a B
          // micro-panel when it fits (6 x 16 on AVX2, K = 576: 36 KiB; at
          // 3136 x 576 x 32 holding the A panel instead took 1.6x the time), else
          // the A panel, sweeping B panels from L2.
          const bool hold_b = kc * NR * static_cast<int64_t>(sizeof(float)) <= cache_sizes().l1d;
          auto run_task = [&](int64_t ct, int64_t rt) {
            const int64_t i_begin = rt * grid.rows, i_end = std::min(m, i_begin + grid.rows);
            const int64_t j_begin = ct * grid.cols, j_end = std::min(nc, j_begin + grid.cols);
            if (hold_b) {
              for (int64_t jr = j_begin; jr < j_end; jr += NR)
                for (int64_t ir = i_begin; ir < i_end; ir += MR) tile(ir, jr);
            } else {
              for (int64_t ir = i_begin; ir < i_end; ir += MR)
                for (int64_t jr = j_begin; jr < j_end; jr += NR) tile(ir, jr);
            }
          };
          // No barrier after the tasks: nothing before block s + 1's barrier
          // touches what block s uses (its buffers, its tiles of C).
          PYENGINE_OMP(omp for schedule(dynamic) nowait)
          for (int64_t t = 0; t < col_tasks * row_tasks; ++t) run_task(t % col_tasks, t / col_tasks);
        }
      }
    });
  }

  // Small problems: one thread, no blocking and no parallel region. The whole
  // op(B) is packed once (zero-padded to whole micro-panels, which also takes
  // care of trans_b and the column edge), each MR-row strip of op(A) once, and
  // every tile goes through the same micro-kernel.
  static void small_gemm(float* c, const float* a, const float* b, int64_t m, int64_t n,
                         int64_t k, bool trans_a, bool trans_b, bool accumulate,
                         const Epilogue& epilogue) {
    const int64_t b_panels = (n + NR - 1) / NR;
    ScratchFrame scratch;
    float* a_pack = scratch.floats(static_cast<size_t>(std::max<int64_t>(k, 1) * MR));
    // B whose rows split into whole micro-panels is read in place (it fits
    // in cache whole); otherwise packed, zero-padded to whole panels.
    const bool b_in_place = !trans_b && n % NR == 0;
    float* b_pack = b_in_place ? nullptr
                               : scratch.floats(static_cast<size_t>(std::max<int64_t>(k, 1) *
                                                                    b_panels * NR));
    for (int64_t jp = 0; jp < b_panels && !b_in_place; ++jp)
      pack_b_panel(b_pack + jp * NR * k, b, n, k, trans_b, jp * NR, 0, k);
    for (int64_t ir = 0; ir < m; ir += MR) {
      const bool in_place = !trans_a && ir + MR <= m;
      if (!in_place) pack_a_panel(a_pack, a, m, k, trans_a, ir, 0, k);
      const APanel panel = in_place ? APanel{a + ir * k, k} : APanel{a_pack, 0};
      for (int64_t jr = 0; jr < n; jr += NR) {
        const float* bp = b_in_place ? b + jr : b_pack + (jr / NR) * NR * k;
        float* preact = epilogue.preact ? epilogue.preact + ir * n + jr : nullptr;
        micro_kernel(c + ir * n + jr, preact, n, panel, bp, b_in_place ? n : NR, k,
                     std::min(MR, m - ir), std::min(NR, n - jr),
                     epilogue.bias ? epilogue.bias + jr : nullptr, !accumulate, !accumulate,
                     epilogue.activation);
      }
    }
  }
};

template <int64_t VECS>
using TileOf = Tiled<kAccumulators / VECS, VECS>;
using WideTile = Tiled<kWideRows, kWideVecs>;
#if defined(__AVX512F__)
using MediumTile = Tiled<6, 4>;
#endif

using GemmDriver = void (*)(float* c, const float* a, const float* b, int64_t m, int64_t n,
                            int64_t k, bool trans_a, bool trans_b, bool accumulate,
                            const Epilogue& epilogue);
struct TileDrivers {
  int64_t mr, nr;
  int64_t max_n;  // the widest C this tile serves
  GemmDriver small, packed;
};

template <typename Tile>
constexpr TileDrivers drivers_of(int64_t max_n = Tile::NR) {
  return {Tile::kRows, Tile::NR, max_n, Tile::small_gemm, Tile::packed_gemm};
}

#if defined(__AVX512F__)
constexpr TileDrivers kTiles[] = {drivers_of<TileOf<1>>(), drivers_of<TileOf<2>>(),
                                  drivers_of<TileOf<3>>(), drivers_of<MediumTile>(256),
                                  drivers_of<WideTile>()};
#else
constexpr TileDrivers kTiles[] = {drivers_of<TileOf<1>>(), drivers_of<WideTile>()};
#endif
constexpr const TileDrivers& kWide = kTiles[std::size(kTiles) - 1];

// C of fewer rows than this picks its tile by the padding too. (Up to 128
// rows helped at 1 thread too, 32 x 288 x 3136 0.86x the time, but at 2
// threads the 8 x 48 tile's tasks split such C worse: 32 x 1152 x 784 1.12x.)
constexpr int64_t kFewRows = 32;

// Multiply-adds a tile computes for C (m x n) a step of k, padding included,
// weighted by how fast its micro-kernel runs: the wide tile ~8% faster per
// multiply-add (at 64 x 576 x 3136 it computes 8% more than the 8 x 48 tile,
// padding included, in about the same time).
int64_t padded_cost(const TileDrivers& tile, int64_t m, int64_t n) {
  const int64_t area = round_up(m, tile.mr) * round_up(n, tile.nr);
  return &tile == &kWide ? area * 100 : area * 108;
}

// The first tile that serves n columns (a narrow one covers them exactly),
// or the wide one. C of few rows takes the tile that pads it least (LeNet's
// 16-channel convolution, 16 x 150 x 1600: the wide tile's 2 panels of 14
// rows compute 28, the 8 x 48 tile's 16; 63.5 against 47.5 GFLOP/s).
const TileDrivers& tile_for(int64_t m, int64_t n) {
  const TileDrivers* chosen = &kWide;
  for (const TileDrivers& tile : kTiles)
    if (n <= tile.max_n) {
      chosen = &tile;
      break;
    }
  if (m >= kFewRows || n <= chosen->nr) return *chosen;  // narrow C: covered exactly already
  for (const TileDrivers& tile : kTiles)
    if (padded_cost(tile, m, n) < padded_cost(*chosen, m, n)) chosen = &tile;
  return *chosen;
}

void gemm(float* c, const float* a, const float* b, int64_t m, int64_t n, int64_t k, bool trans_a,
          bool trans_b, bool accumulate, const Epilogue& epilogue) {
  if (m == 0 || n == 0) return;
  if (streams_b(m, n, k, trans_b))
    skinny_gemm(c, a, b, m, n, k, trans_a, trans_b, accumulate, epilogue);
  else if (m * n * k <= kSmallWork)
    tile_for(m, n).small(c, a, b, m, n, k, trans_a, trans_b, accumulate, epilogue);
  else
    tile_for(m, n).packed(c, a, b, m, n, k, trans_a, trans_b, accumulate, epilogue);
}

// Runs fn(i) for every matrix of a batch: across threads when each matrix is
// small (each then runs on one thread), else one after another with each
// matrix using the threads.
template <typename Fn>
void for_each_matrix(int64_t batch, int64_t work_per_matrix, Fn fn) {
  const bool across = batch > 1 && work_per_matrix < 128 * 128 * 128 && thread_count() > 1 &&
                      !in_parallel_region() &&
                      batch * work_per_matrix >= PYENGINE_PARALLEL_MIN_WORK;
  if (!across) {
    for (int64_t i = 0; i < batch; ++i) fn(i);
    return;
  }
  PYENGINE_OMP(omp parallel for schedule(dynamic) num_threads(thread_count()))
  for (int64_t i = 0; i < batch; ++i) fn(i);
}

// dbias (n,) += (or, accumulate false, =) the sum over rows of dc (rows, n).
void column_sums(float* dbias, const float* dc, int64_t rows, int64_t n, bool accumulate) {
  const bool parallel = rows * n >= PYENGINE_PARALLEL_MIN_WORK && n >= 64;
  parallel_chunks(parallel, n, 64, [&](int64_t j0, int64_t j1) {
    float acc[64] = {};
    for (int64_t i = 0; i < rows; ++i) {
      const float* row = dc + i * n;
      for (int64_t j = j0; j < j1; ++j) acc[j - j0] += row[j];
    }
    for (int64_t j = j0; j < j1; ++j) dbias[j] = (accumulate ? dbias[j] : 0.0f) + acc[j - j0];
  });
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
                     bool trans_b, int64_t batch_stride_a, int64_t batch_stride_b, bool accumulate) {
  const Epilogue plain{nullptr, nullptr, Activation::none};
  // A shared operand's gradient sums over the batch: one matrix at a time.
  const int64_t parallel_batch = (batch_stride_a == 0 && da) || (batch_stride_b == 0 && db) ? 1 : batch;
  auto one = [&](int64_t i) {
    const float* dci = dc + i * m * n;
    const float* ai = a + i * batch_stride_a;
    const float* bi = b + i * batch_stride_b;
    // Overwritten when asked, but a shared operand's after the batch's first matrix, and db
    // when it is da (x @ x: da is written first).
    if (da) {
      float* dai = da + i * batch_stride_a;
      const bool add = accumulate || (batch_stride_a == 0 && i > 0);
      if (!trans_a)  // dA (m, k) += dC . op(B)^T
        gemm(dai, dci, bi, m, k, n, false, !trans_b, add, plain);
      else  // dA (k, m) += op(B) . dC^T
        gemm(dai, bi, dci, k, m, n, trans_b, true, add, plain);
    }
    if (db) {
      float* dbi = db + i * batch_stride_b;
      const bool add = accumulate || (batch_stride_b == 0 && i > 0) || db == da;
      if (!trans_b)  // dB (k, n) += op(A)^T . dC
        gemm(dbi, ai, dci, k, n, m, !trans_a, false, add, plain);
      else  // dB (n, k) += dC^T . op(A)
        gemm(dbi, dci, ai, n, k, m, true, trans_a, add, plain);
    }
  };
  if (parallel_batch == batch) for_each_matrix(batch, m * n * k, one);
  else for (int64_t i = 0; i < batch; ++i) one(i);
  if (dbias) column_sums(dbias, dc, batch * m, n, accumulate);
}

int64_t fma_probe(float* sink, int64_t iterations, int threads) {
  // kChains independent accumulators, more than FMA latency x throughput on
  // any current core; the loop touches no memory.
  constexpr int64_t kChains = 24;
  int team = 1;
  PYENGINE_OMP(omp parallel num_threads(threads))
  {
    if (thread_index() == 0) team = team_size();
    vfloat acc[kChains];
    for (int64_t r = 0; r < kChains; ++r) acc[r] = simd::splat(1.0f + 1e-3f * r);
    const vfloat x = simd::splat(0.999999f), y = simd::splat(1e-7f);
    for (int64_t it = 0; it < iterations; ++it) {
#pragma GCC unroll 32
      for (int64_t r = 0; r < kChains; ++r) acc[r] = acc[r] * x + y;
    }
    vfloat total{};
    for (int64_t r = 0; r < kChains; ++r) total += acc[r];
    sink[thread_index()] = simd::hsum(total);
  }
  return iterations * kChains * kWidth * 2 * team;
}

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
