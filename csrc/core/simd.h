// Portable SIMD helpers on GCC/Clang vector extensions. Included only by the
// ISA-variant translation units: the vector width follows the flags each copy
// is compiled with (SSE2: 4 floats, AVX2: 8, AVX-512: 16). Everything lives
// in the variant's namespace so no inline copy crosses variants at link time.
#pragma once
#include <cstdint>
#include <cstring>
#include <limits>

#include "core/ops.h"
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#ifndef PYENGINE_KERNEL_NS
#error "simd.h is for kernel variants; PYENGINE_KERNEL_NS must be defined"
#endif

namespace pyengine {
namespace PYENGINE_KERNEL_NS {
namespace simd {

#if defined(__AVX512F__)
constexpr int kWidth = 16;
#elif defined(__AVX2__)
constexpr int kWidth = 8;
#else
constexpr int kWidth = 4;
#endif

typedef float vfloat __attribute__((vector_size(kWidth * sizeof(float))));
typedef int32_t vint __attribute__((vector_size(kWidth * sizeof(int32_t))));

inline vfloat load(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof v);  // unaligned load
  return v;
}
inline void store(float* p, vfloat v) { std::memcpy(p, &v, sizeof v); }
// x - 0 is x for every x (also -0 and NaN), so this compiles to a bare
// broadcast; `vfloat{} + x` would keep an add (0 + -0 is +0).
inline vfloat splat(float x) { return x - vfloat{}; }

// The first `count` (0 <= count <= kWidth) lanes from p, the rest `fill`;
// memory past p + count is not touched. AVX-512 and AVX2 use masked moves:
// lane-by-lane inserts go through the stack and stall on the reload
// (about 0.4 us for the tails of an 8 x 8 GEMM, measured).
#if defined(__AVX512F__)
inline __mmask16 first_lanes(int64_t count) {
  return static_cast<__mmask16>((1u << count) - 1u);
}
inline vfloat load_partial(const float* p, int64_t count, float fill) {
  return (vfloat)_mm512_mask_loadu_ps(_mm512_set1_ps(fill), first_lanes(count), p);
}
inline void store_partial(float* p, vfloat v, int64_t count) {
  _mm512_mask_storeu_ps(p, first_lanes(count), (__m512)v);
}
#elif defined(__AVX2__)
inline __m256i first_lanes(int64_t count) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline vfloat load_partial(const float* p, int64_t count, float fill) {
  const __m256i mask = first_lanes(count);
  return (vfloat)_mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p, mask),
                                  _mm256_castsi256_ps(mask));
}
inline void store_partial(float* p, vfloat v, int64_t count) {
  _mm256_maskstore_ps(p, first_lanes(count), (__m256)v);
}
#else
inline vfloat load_partial(const float* p, int64_t count, float fill) {
  vfloat v = splat(fill);
  for (int64_t i = 0; i < count; ++i) v[i] = p[i];
  return v;
}
inline void store_partial(float* p, vfloat v, int64_t count) {
  for (int64_t i = 0; i < count; ++i) p[i] = v[i];
}
#endif

inline vfloat vmax(vfloat a, vfloat b) { return a > b ? a : b; }

inline float hmax_scalar(vfloat v) {
  float m = v[0];
  for (int i = 1; i < kWidth; ++i) m = v[i] > m ? v[i] : m;
  return m;
}

#if defined(__AVX512F__)
// Pairwise (a shuffle tree, 4 steps) rather than 15 dependent scalar steps:
// a row-wise kernel pays these once per row.
inline float hsum(vfloat v) { return _mm512_reduce_add_ps((__m512)v); }
inline float hmax(vfloat v) {
  // As the scalar loop: a NaN lane never wins (v[i] > m is false for NaN).
  if (_mm512_cmp_ps_mask((__m512)v, (__m512)v, _CMP_UNORD_Q)) return hmax_scalar(v);
  return _mm512_reduce_max_ps((__m512)v);
}
#else
inline float hsum(vfloat v) {
  float s = 0.0f;
  for (int i = 0; i < kWidth; ++i) s += v[i];
  return s;
}
inline float hmax(vfloat v) { return hmax_scalar(v); }
#endif

// exp(x) within about 2 ulp: range reduction x = n ln2 + r with
// |r| <= ln2/2, a degree-6 polynomial for e^r, and 2^n built in the exponent
// bits as 2^(n/2) * 2^(n - n/2), so that n from -150 to 128 stays exact
// (denormal results near the bottom, the largest floats near the top).
// Above ln(FLT_MAX) it gives +inf, below about -104 it gives 0, NaN stays
// NaN. Uses only IEEE arithmetic.
// e^(x - n ln2) for n = round(x / ln2): ln2 split in two for an exact
// reduction, then the polynomial.
inline vfloat exp_reduced(vfloat xc, vfloat n) {
  vfloat r = xc - n * splat(0.693359375f);
  r = r - n * splat(-2.12194440e-4f);
  vfloat p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  return p * (r * r) + r + splat(1.0f);
}
#if defined(__AVX512F__)
// AVX-512: the same reduction and polynomial, n rounded by vrndscaleps and
// 2^n applied by vscalefps, which scales without overflowing on the way
// (finite up to FLT_MAX, denormals at the bottom) in one instruction, where
// the portable form needs two exponent-bit products and their integer
// arithmetic: 17 vector instructions instead of 28 (the exp kernel ran 1.3x
// faster). `xc` is x already clamped to the range.
inline vfloat exp_core(vfloat xc) {
  const __m512 n = _mm512_roundscale_ps((__m512)(xc * splat(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const vfloat vn = (vfloat)n;
  return (vfloat)_mm512_scalef_ps((__m512)exp_reduced(xc, vn), n);
}
inline vfloat exp(vfloat x) {
  const vfloat hi = splat(88.72283935546875f);
  const vfloat lo = splat(-103.97207708f);
  vfloat xc = lo > x ? lo : x;  // NaN compares false and passes through
  xc = hi < xc ? hi : xc;
  vfloat y = exp_core(xc);
  y = x > hi ? splat(std::numeric_limits<float>::infinity()) : y;
  y = x < lo ? splat(0.0f) : y;
  return y;
}
// exp(x) for x <= 0 (softmax's x - max, a log-probability): no overflow
// checks (a finite x above 88.7 still gives inf, through vscalefps; only
// +inf gives NaN), and x clamped to -104.5, whose exp scales to exactly 0
// (so -inf gives 0, as a masked score must): 13 instructions. NaN stays NaN.
inline vfloat exp_nonpositive(vfloat x) {
  const vfloat lo = splat(-104.5f);
  return exp_core(lo > x ? lo : x);
}
#else
inline vfloat exp(vfloat x) {
  const vfloat hi = splat(88.72283935546875f);  // largest x with finite exp(x)
  const vfloat lo = splat(-103.97207708f);      // exp(x) rounds to 0 below
  const vfloat round_magic = splat(12582912.0f);  // 1.5 * 2^23
  vfloat xc = x > hi ? hi : x;
  xc = xc < lo ? lo : xc;  // NaN compares false and passes through
  vfloat t = xc * splat(1.44269504088896341f) + round_magic;
  vfloat n = t - round_magic;  // round-to-nearest(x / ln2)
  vint ni = reinterpret_cast<vint&>(t) - reinterpret_cast<const vint&>(round_magic);
  const vfloat p = exp_reduced(xc, n);
  const vint half = ni >> 1;  // arithmetic shift: floor(n / 2)
  vint bits_a = (half + 127) << 23;
  vint bits_b = (ni - half + 127) << 23;
  vfloat y = (p * reinterpret_cast<vfloat&>(bits_a)) * reinterpret_cast<vfloat&>(bits_b);
  y = x > hi ? splat(std::numeric_limits<float>::infinity()) : y;
  y = x < lo ? splat(0.0f) : y;
  return y;
}
inline vfloat exp_nonpositive(vfloat x) { return exp(x); }
#endif

// The logistic function 1 / (1 + exp(-x)): exp overflowing to inf for very
// negative x gives 0, the right limit.
inline vfloat sigmoid(vfloat x) { return splat(1.0f) / (splat(1.0f) + exp(-x)); }

// GELU, tanh form: 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3).
// With s = 1 / (1 + exp(-2u)), 1 + tanh(u) = 2s and 1 - tanh(u)^2 =
// 4 s (1 - s): no cancellation near tanh = -1, and exp overflowing to inf
// gives s = 0, the right limit.
inline vfloat gelu_sigmoid(vfloat x) {
  const vfloat u = splat(0.7978845608028654f) * (x + splat(0.044715f) * x * x * x);
  return splat(1.0f) / (splat(1.0f) + exp(splat(-2.0f) * u));
}

inline vfloat gelu(vfloat x) { return x * gelu_sigmoid(x); }

// d gelu(x) / dx = s + 2 x s (1 - s) du/dx.
inline vfloat gelu_grad(vfloat x) {
  const vfloat s = gelu_sigmoid(x);
  const vfloat du = splat(0.7978845608028654f) * (splat(1.0f) + splat(3.0f * 0.044715f) * x * x);
  return s + splat(2.0f) * x * s * (splat(1.0f) - s) * du;
}

// GELU, exact form: x Phi(x), Phi the normal CDF, 0.5 erfc(-x / sqrt 2).
// erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z / 2), z = |x| / sqrt 2 >= 0,
// with P of degree 9 fitted (minimax in log erfc) over z in [0, 10]: the
// relative error of erfc is below 5e-8 there, so the negative tail, where
// Phi is tiny, keeps its relative accuracy (no 1 + erf(x) cancellation).
// -z^2 is -x^2 / 2, exact but for x * x's rounding. NaN stays NaN.
inline vfloat gelu_erf_half_erfc(vfloat x) {
  const vfloat z = (x < vfloat{} ? -x : x) * splat(0.7071067811865476f);
  const vfloat t = splat(1.0f) / (splat(1.0f) + splat(0.5f) * z);
  vfloat p = splat(0.1422198f);
  for (float c : {-0.66618635f, 1.12265291f, -0.65153205f, -0.11659651f, 0.02011798f, 0.02837558f, 0.38789755f,
                  0.99849258f, -1.26544143f})
    p = p * t + splat(c);
  return splat(0.5f) * t * exp(p - splat(0.5f) * x * x);
}

// Phi(x): 1 - 0.5 erfc(z) above 0, 0.5 erfc(z) below.
inline vfloat gelu_erf_cdf(vfloat x) {
  const vfloat c = gelu_erf_half_erfc(x);
  return x > vfloat{} ? splat(1.0f) - c : c;
}

inline vfloat gelu_erf(vfloat x) { return x * gelu_erf_cdf(x); }

// d (x Phi(x)) / dx = Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
inline vfloat gelu_erf_grad(vfloat x) {
  const vfloat density = splat(0.3989422804014327f) * exp(splat(-0.5f) * x * x);
  return gelu_erf_cdf(x) + x * density;
}

// The activation an epilogue applies (the GEMM's, the convolution's bias
// pass): the functions of the activations' own kernels, so a fused op gives
// the bits of the two ops apart.
inline vfloat activate(vfloat v, Activation activation) {
  switch (activation) {
    case Activation::relu: return v < vfloat{} ? vfloat{} : v;  // NaN stays NaN
    case Activation::gelu: return gelu(v);
    case Activation::gelu_erf: return gelu_erf(v);
    case Activation::none:
    case Activation::count: break;
  }
  return v;
}

}  // namespace simd
}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
