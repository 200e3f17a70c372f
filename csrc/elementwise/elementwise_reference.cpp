// Plain elementwise kernels: one scalar loop each.
#include <cmath>

#include "core/kernel_list.inc"
#include "elementwise/elementwise_common.h"

namespace pyengine {
namespace reference {

void binary_forward(float* out, const float* a, const float* b, BinaryOp op, int64_t ndim,
                    const int64_t* shape, const int64_t* sa, const int64_t* sb) {
  const int64_t inner = ndim ? shape[ndim - 1] : 1;
  const int64_t ia = ndim ? sa[ndim - 1] : 0, ib = ndim ? sb[ndim - 1] : 0;
  int64_t outer = 1;
  for (int64_t d = 0; d + 1 < ndim; ++d) outer *= shape[d];
  for (int64_t o = 0; o < outer; ++o) {
    int64_t oa, ob;
    ew::outer_offsets(o, ndim, shape, sa, sb, &oa, &ob);
    for (int64_t i = 0; i < inner; ++i)
      out[o * inner + i] = ew::binary_apply(op, a[oa + i * ia], b[ob + i * ib]);
  }
}

void binary_backward(float* da, float* db, const float* dout, const float* a, const float* b,
                     BinaryOp op, int64_t ndim, const int64_t* shape, const int64_t* sa,
                     const int64_t* sb) {
  const int64_t inner = ndim ? shape[ndim - 1] : 1;
  const int64_t ia = ndim ? sa[ndim - 1] : 0, ib = ndim ? sb[ndim - 1] : 0;
  int64_t outer = 1;
  for (int64_t d = 0; d + 1 < ndim; ++d) outer *= shape[d];
  for (int64_t o = 0; o < outer; ++o) {
    int64_t oa, ob;
    ew::outer_offsets(o, ndim, shape, sa, sb, &oa, &ob);
    for (int64_t i = 0; i < inner; ++i) {
      const float g = dout[o * inner + i], av = a[oa + i * ia], bv = b[ob + i * ib];
      if (da) da[oa + i * ia] += g * ew::binary_grad_a(op, av, bv);
      if (db) db[ob + i * ib] += g * ew::binary_grad_b(op, av, bv);
    }
  }
}

void scalar_forward(float* out, const float* a, ScalarOp op, float s, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = ew::scalar_apply(op, a[i], s);
}
void scalar_backward(float* da, const float* dout, const float* a, ScalarOp op, float s,
                     int64_t n) {
  for (int64_t i = 0; i < n; ++i) da[i] += dout[i] * ew::scalar_grad(op, a[i], s);
}

void relu_forward(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] < 0.0f ? 0.0f : x[i];  // NaN stays NaN
}
void relu_backward(float* dx, const float* dy, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dx[i] += y[i] <= 0.0f ? 0.0f : dy[i];  // NaN passes dy (PyTorch)
}
void add_relu_forward(float* y, const float* a, const float* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = a[i] + b[i];
    y[i] = v < 0.0f ? 0.0f : v;
  }
}
void add_relu_backward(float* da, float* db, const float* dy, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = y[i] <= 0.0f ? 0.0f : dy[i];
    if (da) da[i] += g;
    if (db) db[i] += g;
  }
}
void gelu_forward(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = ew::gelu(x[i]);
}
void gelu_backward(float* dx, const float* dy, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dx[i] += dy[i] * ew::gelu_grad(x[i]);
}
void gelu_erf_forward(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = ew::gelu_erf(x[i]);
}
void gelu_erf_backward(float* dx, const float* dy, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dx[i] += dy[i] * ew::gelu_erf_grad(x[i]);
}
void tanh_forward(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::tanh(x[i]);
}
void tanh_backward(float* dx, const float* dy, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dx[i] += dy[i] * (1.0f - y[i] * y[i]);
}
void sigmoid_forward(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = 1.0f / (1.0f + std::exp(-x[i]));
}
void sigmoid_backward(float* dx, const float* dy, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dx[i] += dy[i] * y[i] * (1.0f - y[i]);
}
void silu_forward(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] / (1.0f + std::exp(-x[i]));
}
void silu_backward(float* dx, const float* dy, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float s = 1.0f / (1.0f + std::exp(-x[i]));
    dx[i] += dy[i] * s * (1.0f + x[i] * (1.0f - s));
  }
}
void sqrt_forward(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::sqrt(x[i]);
}
void sqrt_backward(float* dx, const float* dy, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dx[i] += dy[i] * (0.5f / y[i]);
}
void rsqrt_forward(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = 1.0f / std::sqrt(x[i]);
}
void rsqrt_backward(float* dx, const float* dy, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dx[i] += dy[i] * (-0.5f * y[i] * y[i] * y[i]);
}
void log_forward(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::log(x[i]);
}
void log_backward(float* dx, const float* dy, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dx[i] += dy[i] * (1.0f / x[i]);
}
void abs_forward(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::fabs(x[i]);
}
void abs_backward(float* dx, const float* dy, const float* x, int64_t n) {
  // dy * sign(x): a NaN dy gives NaN even at x = 0 (PyTorch); a NaN x has sign 0.
  for (int64_t i = 0; i < n; ++i) dx[i] += dy[i] * (x[i] > 0.0f ? 1.0f : x[i] < 0.0f ? -1.0f : 0.0f);
}
void square_forward(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * x[i];
}
void square_backward(float* dx, const float* dy, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dx[i] += dy[i] * (2.0f * x[i]);
}
void clamp_forward(float* y, const float* x, float lo, float hi, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] < lo ? lo : x[i] > hi ? hi : x[i];
}
void clamp_backward(float* dx, const float* dy, const float* x, float lo, float hi, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dx[i] += x[i] >= lo && x[i] <= hi ? dy[i] : 0.0f;
}
void fill(float* out, float value, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = value;
}
void exp_forward(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::exp(x[i]);
}
void exp_backward(float* dx, const float* dy, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dx[i] += dy[i] * y[i];
}

}  // namespace reference
}  // namespace pyengine
