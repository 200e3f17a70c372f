// Plain 2-D convolution (grouped), zero padding: one loop over every (output,
// tap) pair, a tap in the padding reading 0 (so an inf or NaN weight or output
// gradient meets 0 * inf = NaN there, as the definition and PyTorch have it),
// products summed in double and rounded once per element.
#include <memory>

#include "conv/conv_shape.h"
#include "core/kernel_list.inc"
#include "elementwise/elementwise_common.h"

namespace pyengine {
namespace reference {
namespace {

// fn(yi, xi, wi) for every output element y[yi] and every tap of it, which
// reads x[xi] with weight w[wi] (flat indices; xi = -1 in the padding).
template <typename Fn>
void for_each_tap(const ConvShape& g, Fn fn) {
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t k = 0; k < g.K; ++k)
      for (int64_t oh = 0; oh < g.OH; ++oh)
        for (int64_t ow = 0; ow < g.OW; ++ow)
          for (int64_t c = 0; c < g.Cg(); ++c)
            for (int64_t r = 0; r < g.R; ++r)
              for (int64_t s = 0; s < g.S; ++s) {
                const int64_t ih = g.in_row(oh, r), iw = g.in_col(ow, s);
                const bool padding = ih < 0 || ih >= g.H || iw < 0 || iw >= g.W;
                const int64_t channel = k / g.Kg() * g.Cg() + c;  // of the input, in k's group
                fn(((n * g.K + k) * g.OH + oh) * g.OW + ow,
                   padding ? -1 : ((n * g.C + channel) * g.H + ih) * g.W + iw, ((k * g.Cg() + c) * g.R + r) * g.S + s);
              }
}

std::unique_ptr<double[]> zeros(int64_t count) { return std::unique_ptr<double[]>(new double[count]()); }

// out[i] += sums[i], rounded to float.
void add_rounded(float* out, const double* sums, int64_t count) {
  for (int64_t i = 0; i < count; ++i) out[i] += static_cast<float>(sums[i]);
}

}  // namespace

void conv2d_forward(float* y, const float* x, const float* w, const float* bias, Activation activation, int64_t N,
                    int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                    int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                    int64_t dilation_h, int64_t dilation_w, int64_t groups) {
  const ConvShape g(N, C, H, W, K, R, S, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups);
  const int64_t count = N * K * g.P();
  auto sums = zeros(count);
  for_each_tap(g, [&](int64_t yi, int64_t xi, int64_t wi) { sums[yi] += (xi < 0 ? 0.0 : double(x[xi])) * w[wi]; });
  for (int64_t i = 0; i < count; ++i)
    y[i] = ew::activate(activation, static_cast<float>(sums[i] + (bias ? bias[i / g.P() % K] : 0.0)));
}

void conv2d_backward(float* dx, float* dw, float* dbias, const float* dy, const float* x,
                     const float* w, int64_t N, int64_t C, int64_t H, int64_t W, int64_t K,
                     int64_t R, int64_t S, int64_t stride_h, int64_t stride_w, int64_t pad_h,
                     int64_t pad_w, int64_t dilation_h, int64_t dilation_w, int64_t groups) {
  const ConvShape g(N, C, H, W, K, R, S, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups);
  auto sum_x = zeros(N * C * H * W), sum_w = zeros(K * g.CRS()), sum_b = zeros(K);
  for_each_tap(g, [&](int64_t yi, int64_t xi, int64_t wi) {
    if (xi >= 0) sum_x[xi] += double(dy[yi]) * w[wi];
    sum_w[wi] += double(dy[yi]) * (xi < 0 ? 0.0 : double(x[xi]));
  });
  for (int64_t i = 0; i < N * K * g.P(); ++i) sum_b[i / g.P() % K] += dy[i];
  if (dx) add_rounded(dx, sum_x.get(), N * C * H * W);
  if (dw) add_rounded(dw, sum_w.get(), K * g.CRS());
  if (dbias) add_rounded(dbias, sum_b.get(), K);
}

}  // namespace reference
}  // namespace pyengine
