// Convolution with one input channel a group (Cg = 1: depthwise, with or
// without a channel multiplier Kg = K / G, or a one-channel image). Such a
// layer has no depth for a GEMM (R*S multiply-adds an output: 9 for 3x3),
// so it runs as direct loops, register-blocked:
//
// - Each input plane (n, c) is first copied into a zero-padded plane whose
//   columns are split into `sw` phases (the column stride; stride 2 splits a
//   row into its even and odd columns with two shuffles a pair of vectors):
//   phase b, column m holds padded column m*sw + b. Every tap (r, s) of every
//   output row is then a plain vector load at a fixed offset, whatever the
//   padding, stride or dilation, and the edges need no tests: the loads past
//   a row's end read zeros or values whose lanes are never stored. The copy's
//   zeros are written once a thread, then only its interior plane by plane.
// - An output vector (kWidth outputs of a row) is a job. Blocks of kJobs jobs
//   (from one or several rows) keep their accumulators in registers while
//   every tap is applied, then store once: kJobs independent chains of FMAs,
//   one load each, instead of one pass over the output plane a tap. The jobs'
//   offsets are computed once a call (a division a job measured as much as the
//   FMAs on 28x28 planes).
// - dx is the same correlation run backwards: dx[ih, iw] reads dy at
//   oh = (ih + ph - r*dh) / sh for the taps where that divides. dx splits into
//   sh x sw phases (ih mod sh, iw mod sw); in each, the taps that reach it
//   read a zero-padded copy of dy at fixed offsets, contiguous along a row of
//   that phase. With sw = 1 the jobs accumulate into dx directly; otherwise
//   each column phase goes to scratch rows, woven into dx's columns after
//   (stride 2: two shuffles a pair of vectors).
// - dw[k, r, s] is a dot product of dy's plane with the input plane shifted
//   by the tap: blocks of up to kTapBlock taps, one vector accumulator each,
//   over every output vector of every image in order, then summed across
//   lanes. Each channel's sums are one thread's, in one fixed order: any
//   thread count gives the same bits.
//
// Measured, one thread on a loaded 2-core host, 3x3 128 @28 batch 8 against the
// tap-by-tap loops this replaces: forward 3.2 -> 0.6 ms, backward 13 -> 1.7 ms
// (figures against torch in the commit message).
//
// The padding taps multiply zeros (an inf weight next to the padding gives
// NaN, as an im2col GEMM does).
#include "conv/depthwise.h"

#include <algorithm>
#include <vector>

#include "core/parallel.h"
#include "core/scratch.h"
#include "core/simd.h"

namespace pyengine {
namespace PYENGINE_KERNEL_NS {
namespace {

using simd::kWidth;
using simd::vfloat;

constexpr int kJobs = 8;       // output vectors a block: 8 chains cover the FMA latency
constexpr int kTapBlock = 9;   // weight-gradient accumulators a pass: a 3x3 kernel in one

// Shuffles for stride 2: kEven picks the even lanes of a pair of vectors
// (kEven + 1 the odd ones); kWeaveLow and kWeaveHigh interleave two vectors.
#if defined(__AVX512F__)
constexpr simd::vint kEven = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
constexpr simd::vint kWeaveLow = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23};
#elif defined(__AVX2__)
constexpr simd::vint kEven = {0, 2, 4, 6, 8, 10, 12, 14};
constexpr simd::vint kWeaveLow = {0, 8, 1, 9, 2, 10, 3, 11};
#else
constexpr simd::vint kEven = {0, 2, 4, 6};
constexpr simd::vint kWeaveLow = {0, 4, 1, 5};
#endif
constexpr simd::vint kWeaveHigh = kWeaveLow + kWidth / 2;

int64_t round_up(int64_t n) { return (n + kWidth - 1) / kWidth * kWidth; }
int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }

bool worth_threads(int64_t work) { return work >= PYENGINE_PARALLEL_MIN_WORK && !in_parallel_region(); }

vfloat load_lanes(const float* p, int64_t count) {
  return count == kWidth ? simd::load(p) : simd::load_partial(p, count, 0.0f);
}
void store_lanes(float* p, vfloat v, int64_t count) {
  if (count == kWidth) simd::store(p, v);
  else simd::store_partial(p, v, count);
}

// Short rows (tens of floats) in vector moves, without a library call each.
void zero_row(float* d, int64_t n) {
  for (int64_t i = 0; i < n; i += kWidth) store_lanes(d + i, vfloat{}, std::min<int64_t>(kWidth, n - i));
}
void copy_row(float* d, const float* s, int64_t n) {
  for (int64_t i = 0; i < n; i += kWidth) {
    const int64_t lanes = std::min<int64_t>(kWidth, n - i);
    store_lanes(d + i, load_lanes(s + i, lanes), lanes);
  }
}

// even[m] = s[2m] for m < n_even, odd[m] = s[2m + 1] for m < n_odd, reading
// s[0, avail) only: pairs of vectors de-interleaved by two shuffles.
void split_row(float* even, float* odd, const float* s, int64_t n_even, int64_t n_odd, int64_t avail) {
  for (int64_t m = 0; m < std::max(n_even, n_odd); m += kWidth) {
    const int64_t first = std::clamp<int64_t>(avail - 2 * m, 0, kWidth);
    const int64_t second = std::clamp<int64_t>(avail - 2 * m - kWidth, 0, kWidth);
    const vfloat a = load_lanes(s + 2 * m, first), b = load_lanes(s + 2 * m + kWidth, second);
    if (m < n_even) store_lanes(even + m, __builtin_shuffle(a, b, kEven), std::min<int64_t>(kWidth, n_even - m));
    if (m < n_odd) store_lanes(odd + m, __builtin_shuffle(a, b, kEven + 1), std::min<int64_t>(kWidth, n_odd - m));
  }
}

// The forward's copy of an input plane (H, W): `phases` = sw planes of rows x
// cols; phase b, row u, column m is x[u - ph, m*sw + b - pw], zero outside x
// and past the last column an output reads. Tap (r, s) of output (oh, ow) is
// at row oh*sh + r*dh, column ow + s*dw / sw of phase s*dw % sw. A buffer is
// zeroed once (zero) and then takes plane after plane (fill): the zeros are
// the same for every plane.
struct InputCopy {
  int64_t rows, cols, used;

  explicit InputCopy(const ConvShape& g)
      : rows((g.OH - 1) * g.sh + (g.R - 1) * g.dh + 1),
        cols(round_up(g.OW) + (g.S - 1) * g.dw / g.sw + 1),
        used((g.OW - 1) * g.sw + (g.S - 1) * g.dw + 1) {}

  int64_t size(const ConvShape& g) const { return g.sw * rows * cols; }
  int64_t offset(const ConvShape& g, int64_t r, int64_t s) const {
    return (s * g.dw % g.sw * rows + r * g.dh) * cols + s * g.dw / g.sw;
  }

  void zero(float* p, const ConvShape& g) const { zero_row(p, size(g)); }
  void fill(float* p, const float* in, const ConvShape& g) const {
    const int64_t last = std::min(g.W, used - g.pw);  // input columns [0, last) are read
    const int64_t u0 = std::min(rows, g.ph), u1 = std::clamp<int64_t>(g.H + g.ph, u0, rows);
    int64_t lo[2], hi[2];  // phase b takes its columns [lo, hi): input columns lo*sw + b - pw, ...
    auto span = [&](int64_t b, int64_t& l, int64_t& h) {
      l = std::clamp<int64_t>(ceil_div(g.pw - b, g.sw), 0, cols);
      h = std::clamp<int64_t>(ceil_div(last + g.pw - b, g.sw), l, cols);
    };
    if (g.sw == 2) {  // MobileNet's downsampling: the even and the odd input columns from one read
      span(0, lo[0], hi[0]);
      span(1, lo[1], hi[1]);
      const int64_t even = (lo[0] * 2 - g.pw) % 2 == 0 ? 0 : 1;  // the phase whose first column is even
      const int64_t first = lo[even] * 2 + even - g.pw;          // 0 (or 1 when that phase is empty)
      if (first != 0) return fill_any(p, in, g, u0, u1);
      for (int64_t u = u0; u < u1; ++u)
        split_row(p + (even * rows + u) * cols + lo[even], p + ((1 - even) * rows + u) * cols + lo[1 - even],
                  in + (u - g.ph) * g.W, hi[even] - lo[even], hi[1 - even] - lo[1 - even], g.W);
      return;
    }
    fill_any(p, in, g, u0, u1);
  }

  void fill_any(float* p, const float* in, const ConvShape& g, int64_t u0, int64_t u1) const {
    const int64_t last = std::min(g.W, used - g.pw);
    for (int64_t b = 0; b < g.sw; ++b) {
      const int64_t lo = std::clamp<int64_t>(ceil_div(g.pw - b, g.sw), 0, cols);
      const int64_t hi = std::clamp<int64_t>(ceil_div(last + g.pw - b, g.sw), lo, cols);
      if (hi == lo) continue;
      for (int64_t u = u0; u < u1; ++u) {
        float* d = p + (b * rows + u) * cols + lo;
        const float* src = in + (u - g.ph) * g.W + lo * g.sw + b - g.pw;
        if (g.sw == 1)
          copy_row(d, src, hi - lo);
        else
          for (int64_t m = 0; m < hi - lo; ++m) d[m] = src[m * g.sw];
      }
    }
  }
};

// The input gradient's copy of the Kg planes of dy (OH, OW) that reach one
// input channel: plane kk, row u, column v is dy[kk, u - top, v - left], zero
// elsewhere; top and left make room for the taps that reach above and left.
// Zeroed once, then filled plane after plane, as InputCopy.
struct GradCopy {
  int64_t top, left, rows, cols;

  explicit GradCopy(const ConvShape& g)
      : top(std::max<int64_t>(0, ceil_div((g.R - 1) * g.dh - g.ph, g.sh))),
        left(std::max<int64_t>(0, ceil_div((g.S - 1) * g.dw - g.pw, g.sw))),
        rows(top + std::max(g.OH, (g.H - 1 + g.ph) / g.sh + 1)),
        cols(left + std::max(g.OW, round_up(ceil_div(g.W, g.sw)) + (g.sw - 1 + g.pw) / g.sw)) {}

  int64_t size(const ConvShape& g) const { return g.Kg() * rows * cols; }

  void zero(float* p, const ConvShape& g) const { zero_row(p, size(g)); }
  void fill(float* p, const float* dy, const ConvShape& g) const {  // dy: the first of the Kg planes
    for (int64_t kk = 0; kk < g.Kg(); ++kk)
      for (int64_t oh = 0; oh < g.OH; ++oh)
        copy_row(p + (kk * rows + top + oh) * cols + left, dy + (kk * g.OH + oh) * g.OW, g.OW);
  }
};

// The output vectors of a plane, `rows` rows of `columns` values, each row
// `dst_row` floats after the last in the output and `src_row` in the copy it
// reads: job j writes lanes[j] values at dst + dst_at[j], its taps read
// src + src_at[j] + offset[t]. Padded to whole blocks of kJobs by repeating
// the last job (the same values land in the same place). The same for every
// plane: computed once, no divisions in the loops.
struct Jobs {
  std::vector<int64_t> dst_at, src_at, lanes;

  Jobs(int64_t rows, int64_t columns, int64_t dst_row, int64_t src_row, bool whole_vectors) {
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t m = 0; m < columns; m += kWidth) {
        dst_at.push_back(i * dst_row + m);
        src_at.push_back(i * src_row + m);
        lanes.push_back(whole_vectors ? kWidth : std::min<int64_t>(kWidth, columns - m));
      }
    while (!dst_at.empty() && dst_at.size() % kJobs) {
      dst_at.push_back(dst_at.back());
      src_at.push_back(src_at.back());
      lanes.push_back(lanes.back());
    }
  }
};

// Every job of `jobs`, kJobs at a time: each output is init (a constant, or
// what dst holds when kAccumulate) plus weight[t] * its tap t in order, then
// the activation, stored once.
template <bool kAccumulate>
void run_jobs(float* dst, const float* src, const Jobs& jobs, const int64_t* offset, const float* weight,
              int64_t taps, float init, Activation act) {
  for (size_t j0 = 0; j0 < jobs.dst_at.size(); j0 += kJobs) {
    const int64_t* lanes = jobs.lanes.data() + j0;
    float* d[kJobs];
    const float* s[kJobs];
    vfloat acc[kJobs];
#pragma GCC unroll 8
    for (int i = 0; i < kJobs; ++i) {
      d[i] = dst + jobs.dst_at[j0 + i];
      s[i] = src + jobs.src_at[j0 + i];
      acc[i] = kAccumulate ? load_lanes(d[i], lanes[i]) : simd::splat(init);
    }
    for (int64_t t = 0; t < taps; ++t) {
      const vfloat wt = simd::splat(weight[t]);
      const int64_t at = offset[t];
#pragma GCC unroll 8
      for (int i = 0; i < kJobs; ++i) acc[i] += wt * simd::load(s[i] + at);
    }
    if (act != Activation::none)
      for (int i = 0; i < kJobs; ++i) acc[i] = simd::activate(acc[i], act);
#pragma GCC unroll 8
    for (int i = 0; i < kJobs; ++i) store_lanes(d[i], acc[i], lanes[i]);
  }
}

// acc[t] += dy's vectors times the input copy's at offset[t], t < kTaps, over
// output rows [0, OH) of one image (masked at a row's tail: both operands,
// so nothing past the row enters the sums).
template <int kTaps>
void weight_sums(vfloat* acc, const float* grad, const float* copy, const int64_t* offset, const ConvShape& g,
                 int64_t row_step) {
  vfloat a[kTaps];
  for (int t = 0; t < kTaps; ++t) a[t] = acc[t];
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    const float* d = grad + oh * g.OW;
    const float* c = copy + oh * row_step;
    int64_t m = 0;
    for (; m + kWidth <= g.OW; m += kWidth) {
      const vfloat v = simd::load(d + m);
#pragma GCC unroll 9
      for (int t = 0; t < kTaps; ++t) a[t] += v * simd::load(c + m + offset[t]);
    }
    if (m < g.OW) {
      const int64_t n = g.OW - m;
      const vfloat v = simd::load_partial(d + m, n, 0.0f);
#pragma GCC unroll 9
      for (int t = 0; t < kTaps; ++t) a[t] += v * simd::load_partial(c + m + offset[t], n, 0.0f);
    }
  }
  for (int t = 0; t < kTaps; ++t) acc[t] = a[t];
}

// dx's row d (W) += its sw column phases: phase b at s + b * H * row_step
// holds d[b], d[b + sw], ... Two phases interleave in vectors (MobileNet's
// stride 2); more go one by one.

void add_phases(float* d, const float* s, const ConvShape& g, int64_t row_step) {
  const int64_t phase = g.H * row_step;
  if (g.sw == 2) {
    for (int64_t m = 0; m < g.W; m += 2 * kWidth) {  // d[m, m + 2 kWidth) from s[m / 2, m / 2 + kWidth)
      const vfloat even = simd::load(s + m / 2), odd = simd::load(s + phase + m / 2);
      const int64_t first = std::min<int64_t>(kWidth, g.W - m);
      const int64_t second = std::clamp<int64_t>(g.W - m - kWidth, 0, kWidth);
      store_lanes(d + m, load_lanes(d + m, first) + __builtin_shuffle(even, odd, kWeaveLow), first);
      if (second)
        store_lanes(d + m + kWidth, load_lanes(d + m + kWidth, second) + __builtin_shuffle(even, odd, kWeaveHigh),
                    second);
    }
    return;
  }
  for (int64_t b = 0; b < g.sw; ++b)
    for (int64_t m = 0; b + m * g.sw < g.W; ++m) d[b + m * g.sw] += s[b * phase + m];
}

// fn(begin, end) over [0, count) planes, one run of planes a thread (each
// plane's result is its own: the split changes no bits).
template <typename Fn>
void plane_runs(bool parallel, int64_t count, Fn fn) {
  const int64_t threads = parallel ? thread_count() : 1;
  parallel_chunks(parallel, count, (count + threads - 1) / threads, fn);
}

// The taps of dx's phase (a, b) (input rows a + i*sh, columns b + m*sw): tap
// (kk, r, s) reaches it where sh divides a + ph - r*dh and sw divides b + pw -
// s*dw, reading dy row i + (a + ph - r*dh) / sh, column m + (b + pw - s*dw) / sw
// of the copy's plane kk; its weight is w[c*Kg + kk, r, s] for channel c.
struct Phase {
  int64_t a, b;
  std::vector<int64_t> offset, tap;  // tap: kk*R*S + r*S + s
  Jobs jobs;

  Phase(const ConvShape& g, const GradCopy& copy, int64_t a_, int64_t b_, int64_t scratch_row)
      : a(a_), b(b_),
        jobs((g.H - a_ + g.sh - 1) / g.sh, (g.W - b_ + g.sw - 1) / g.sw, g.sh * (g.sw > 1 ? scratch_row : g.W),
             copy.cols, g.sw > 1) {
    for (int64_t kk = 0; kk < g.Kg(); ++kk)
      for (int64_t r = 0; r < g.R; ++r) {
        if ((a + g.ph - r * g.dh) % g.sh) continue;
        const int64_t row = (a + g.ph - r * g.dh) / g.sh + copy.top;
        for (int64_t s = 0; s < g.S; ++s) {
          if ((b + g.pw - s * g.dw) % g.sw) continue;
          offset.push_back((kk * copy.rows + row) * copy.cols + (b + g.pw - s * g.dw) / g.sw + copy.left);
          tap.push_back((kk * g.R + r) * g.S + s);
        }
      }
  }
};

// dx of one input plane: the phases' jobs on a copy of the Kg dy planes that
// reach it (scratch: grad, then rows when sw > 1, then weights; see plane()).
struct InputGrad {
  const ConvShape& g;
  GradCopy copy;
  int64_t scratch_row;  // a column phase's row, sw > 1
  std::vector<Phase> phases;

  explicit InputGrad(const ConvShape& shape)
      : g(shape), copy(shape), scratch_row(round_up(ceil_div(shape.W, shape.sw))) {
    for (int64_t a = 0; a < std::min(g.sh, g.H); ++a)
      for (int64_t b = 0; b < std::min(g.sw, g.W); ++b) {
        phases.emplace_back(g, copy, a, b, scratch_row);
        // No tap reaches it: dx unchanged (sw > 1: its scratch rows become zeros).
        if (g.sw == 1 && phases.back().tap.empty()) phases.pop_back();
      }
  }

  struct Scratch {
    float *grad, *rows, *weight;
  };
  Scratch take(ScratchFrame& frame) const {
    Scratch s;
    s.grad = frame.floats(static_cast<size_t>(copy.size(g)));
    // sw > 1: column phase b of input row ih at rows + (b*H + ih) * scratch_row.
    s.rows = g.sw > 1 ? frame.floats(static_cast<size_t>(g.sw * g.H * scratch_row)) : nullptr;
    s.weight = frame.floats(static_cast<size_t>(g.Kg() * g.R * g.S));
    copy.zero(s.grad, g);
    return s;
  }

  // out (H, W) += the gradient from dy's Kg planes (OH, OW) of channel c.
  void plane(float* out, const float* dy, const float* w, int64_t c, const Scratch& s) const {
    const int64_t taps = g.R * g.S;
    copy.fill(s.grad, dy, g);
    for (const Phase& p : phases) {
      const int64_t count = static_cast<int64_t>(p.tap.size());
      for (int64_t i = 0; i < count; ++i) s.weight[i] = w[c * g.Kg() * taps + p.tap[i]];
      if (s.rows)
        run_jobs<false>(s.rows + (p.b * g.H + p.a) * scratch_row, s.grad, p.jobs, p.offset.data(), s.weight,
                        count, 0.0f, Activation::none);
      else  // sw = 1: straight into dx's rows a, a + sh, ...
        run_jobs<true>(out + p.a * g.W, s.grad, p.jobs, p.offset.data(), s.weight, count, 0.0f,
                       Activation::none);
    }
    if (s.rows)
      for (int64_t ih = 0; ih < g.H; ++ih) add_phases(out + ih * g.W, s.rows + ih * scratch_row, g, scratch_row);
  }
};

// dw of one input channel: Kg * R * S vector sums over the images in order,
// each image's input plane copied as the forward copies it.
struct WeightGrad {
  const ConvShape& g;
  InputCopy copy;
  std::vector<int64_t> offset;

  explicit WeightGrad(const ConvShape& shape) : g(shape), copy(shape), offset(static_cast<size_t>(shape.R * shape.S)) {
    for (int64_t t = 0; t < g.R * g.S; ++t) offset[t] = copy.offset(g, t / g.S, t % g.S);
  }

  struct Scratch {
    float* in;
    vfloat* sums;  // Kg * R * S a channel
  };
  Scratch take(ScratchFrame& frame, int64_t channels) const {
    const int64_t count = channels * g.Kg() * g.R * g.S;
    Scratch s{frame.floats(static_cast<size_t>(copy.size(g))),
              reinterpret_cast<vfloat*>(frame.floats(static_cast<size_t>(count * kWidth)))};  // 64-byte aligned
    copy.zero(s.in, g);
    std::fill(s.sums, s.sums + count, vfloat{});
    return s;
  }

  // sums (Kg * R * S) += image n's share: x's plane (H, W) with dy's Kg planes (OH, OW).
  void image(vfloat* sums, const float* x, const float* dy, const Scratch& s) const {
    const int64_t taps = g.R * g.S, row_step = g.sh * copy.cols;
    copy.fill(s.in, x, g);
    for (int64_t kk = 0; kk < g.Kg(); ++kk) {
      const float* grad = dy + kk * g.P();
      vfloat* acc = sums + kk * taps;
      const int64_t* off = offset.data();
      int64_t t = 0;  // blocks of 9 taps, then of 3, then single taps
      for (; t + kTapBlock <= taps; t += kTapBlock) weight_sums<kTapBlock>(acc + t, grad, s.in, off + t, g, row_step);
      for (; t + 3 <= taps; t += 3) weight_sums<3>(acc + t, grad, s.in, off + t, g, row_step);
      for (; t < taps; ++t) weight_sums<1>(acc + t, grad, s.in, off + t, g, row_step);
    }
  }

  // dw's rows of channels [c0, c0 + count) += their sums.
  void finish(float* dw, int64_t c0, int64_t count, const Scratch& s) const {
    const int64_t size = g.Kg() * g.R * g.S;
    for (int64_t i = 0; i < count * size; ++i) dw[c0 * size + i] += simd::hsum(s.sums[i]);
  }
};

}  // namespace

void depthwise_forward(float* y, const float* x, const float* w, const float* bias, Activation act,
                       const ConvShape& g) {
  const int64_t taps = g.R * g.S, Kg = g.Kg();
  const InputCopy copy(g);
  std::vector<int64_t> off(static_cast<size_t>(taps));
  for (int64_t t = 0; t < taps; ++t) off[t] = copy.offset(g, t / g.S, t % g.S);
  const Jobs jobs(g.OH, g.OW, g.OW, g.sh * copy.cols, false);
  // Each plane is an input plane (n, c) and its Kg output planes.
  plane_runs(worth_threads(g.N * g.K * g.P() * taps), g.N * g.C, [&](int64_t begin, int64_t end) {
    ScratchFrame scratch;
    float* in = scratch.floats(static_cast<size_t>(copy.size(g)));
    copy.zero(in, g);
    for (int64_t plane = begin; plane < end; ++plane) {
      copy.fill(in, x + plane * g.H * g.W, g);
      const int64_t n = plane / g.C, c = plane % g.C;
      for (int64_t k = c * Kg; k < (c + 1) * Kg; ++k)
        run_jobs<false>(y + (n * g.K + k) * g.P(), in, jobs, off.data(), w + k * taps, taps,
                        bias ? bias[k] : 0.0f, act);
    }
  });
}

void depthwise_backward(float* dx, float* dw, const float* dy, const float* x, const float* w,
                        const ConvShape& g) {
  const int64_t work = g.N * g.K * g.P() * g.R * g.S, Kg = g.Kg();
  const bool parallel = worth_threads(work);
  const InputGrad input_grad(g);
  const WeightGrad weight_grad(g);
  auto dy_of = [&](int64_t n, int64_t c) { return dy + (n * g.K + c * Kg) * g.P(); };
  auto x_of = [&](int64_t n, int64_t c) { return x + (n * g.C + c) * g.H * g.W; };
  // dx: runs of planes in memory order, one a thread.
  if (dx)
    plane_runs(parallel, g.N * g.C, [&](int64_t begin, int64_t end) {
      ScratchFrame frame;
      const auto s = input_grad.take(frame);
      for (int64_t plane = begin; plane < end; ++plane)
        input_grad.plane(dx + plane * g.H * g.W, dy_of(plane / g.C, plane % g.C), w, plane % g.C, s);
    });
  // dw: each thread takes a run of channels and goes through the images in
  // order, its planes in memory order (a channel's planes one image apart, in
  // turn, measured 1.6x slower on 3x3 128 @28 batch 8); each channel's sums
  // stay in scratch until the last image, summed in image order whatever the
  // split. (One pass for both gradients, dw reading each dy plane after dx's
  // copy of it, measured slower than the two passes.)
  if (dw) {
    const int64_t sums = Kg * g.R * g.S;
    plane_runs(parallel, g.C, [&](int64_t c0, int64_t c1) {
      ScratchFrame frame;
      const auto s = weight_grad.take(frame, c1 - c0);
      for (int64_t n = 0; n < g.N; ++n)
        for (int64_t c = c0; c < c1; ++c) weight_grad.image(s.sums + (c - c0) * sums, x_of(n, c), dy_of(n, c), s);
      weight_grad.finish(dw, c0, c1 - c0, s);
    });
  }
}

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
