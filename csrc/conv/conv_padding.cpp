// The padding's products that conv2d's direct loops skip (conv_padding.h).
// Both passes cost next to nothing when the values are finite: the forward
// scans the weight (K * Cg * R * S values), the weight gradient sums the
// outputs whose taps reach the padding (a ring of each dy plane, vectorized)
// and does the per-tap sums only for a plane whose ring holds an inf or NaN.
#include "conv/conv_padding.h"

#include <cmath>
#include <vector>

#include "core/kernel_list.inc"
#include "core/parallel.h"
#include "core/row_ops.h"

namespace pyengine {
namespace PYENGINE_KERNEL_NS {
namespace {

// Whether output row oh (column ow) reads the padding through tap r (s).
bool row_pads(const ConvShape& g, int64_t oh, int64_t r) {
  const int64_t ih = g.in_row(oh, r);
  return ih < 0 || ih >= g.H;
}
bool col_pads(const ConvShape& g, int64_t ow, int64_t s) {
  const int64_t iw = g.in_col(ow, s);
  return iw < 0 || iw >= g.W;
}

// fn(oh, ow) for every output of a plane that reads the padding through tap (r, s).
template <typename Fn>
void for_each_padded(const ConvShape& g, int64_t r, int64_t s, Fn fn) {
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    const bool row = row_pads(g, oh, r);
    for (int64_t ow = 0; ow < g.OW; ++ow)
      if (row || col_pads(g, ow, s)) fn(oh * g.OW + ow);
  }
}

// The sum of the outputs of a plane that read the padding through some tap:
// the rows of the first and last taps' padding, and the columns at both ends
// of the other rows (the taps' inputs grow with r and s).
float ring_sum(const ConvShape& g, const float* plane) {
  int64_t left = 0, right = g.OW;
  while (left < g.OW && col_pads(g, left, 0)) ++left;
  while (right > left && col_pads(g, right - 1, g.S - 1)) --right;
  float sum = 0.0f;
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    const float* row = plane + oh * g.OW;
    if (row_pads(g, oh, 0) || row_pads(g, oh, g.R - 1)) {
      sum += row::sum(row, g.OW);
    } else {
      sum += row::sum(row, left);
      sum += row::sum(row + right, g.OW - right);
    }
  }
  return sum;
}

bool worth_threads(int64_t work) { return work >= PYENGINE_PARALLEL_MIN_WORK && !in_parallel_region(); }

}  // namespace

void conv_padding_forward(float* y, const float* w, const ConvShape& g) {
  const int64_t taps = g.R * g.S;
  for (int64_t k = 0; k < g.K; ++k)
    for (int64_t i = 0; i < g.Cg() * taps; ++i) {
      const float product = w[k * g.Cg() * taps + i] * 0.0f;
      if (product == 0.0f) continue;  // a finite weight: its padding products are zeros
      for (int64_t n = 0; n < g.N; ++n) {
        float* plane = y + (n * g.K + k) * g.P();
        for_each_padded(g, i % taps / g.S, i % g.S, [&](int64_t o) { plane[o] += product; });
      }
    }
}

void conv_padding_weight_grad(float* dw, const float* dy, const ConvShape& g) {
  if (g.ph == 0 && g.pw == 0) return;
  const int64_t taps = g.R * g.S;
  parallel_for(g.K > 1 && worth_threads(g.N * g.K * g.P()), g.K, [&](int64_t k) {
    std::vector<float> sums(static_cast<size_t>(taps), 0.0f);
    bool any = false;
    for (int64_t n = 0; n < g.N; ++n) {
      const float* plane = dy + (n * g.K + k) * g.P();
      if (std::isfinite(ring_sum(g, plane))) continue;  // then every product there is a zero
      any = true;
      for (int64_t t = 0; t < taps; ++t)
        for_each_padded(g, t / g.S, t % g.S, [&](int64_t o) { sums[t] += plane[o] * 0.0f; });
    }
    if (!any) return;
    for (int64_t c = 0; c < g.Cg(); ++c)
      for (int64_t t = 0; t < taps; ++t)
        if (std::isnan(sums[t])) dw[(k * g.Cg() + c) * taps + t] += sums[t];
  });
}

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
