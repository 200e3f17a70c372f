// Combining per-buffer norms into the total and the clip coefficient, shared
// by the reference and the optimized variants (see kernel_list.inc).
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>

namespace pyengine {
namespace PYENGINE_KERNEL_NS {

// sum |v|^p (p = 2: squares) of one value, for the p-norms with p finite.
inline double norm_term(double v, double p) {
  const double a = std::fabs(v);
  return p == 2.0 ? a * a : p == 1.0 ? a : std::pow(a, p);
}

inline double norm_root(double sum, double p) {
  return p == 2.0 ? std::sqrt(sum) : p == 1.0 ? sum : std::pow(sum, 1.0 / p);
}

// The largest |v| of values[0, n); NaN if any is NaN.
template <typename T>
double max_abs(const T* values, int64_t n) {
  double m = 0.0;
  bool nan = false;
  for (int64_t i = 0; i < n; ++i) {
    const double a = std::fabs(static_cast<double>(values[i]));
    nan |= a != a;
    m = a > m ? a : m;
  }
  return nan ? std::numeric_limits<double>::quiet_NaN() : m;
}

inline void combine_norms(float* total, float* coef, const float* norms, int64_t count, float norm_type,
                          float max_norm) {
  double result;
  if (std::isinf(norm_type)) {
    result = max_abs(norms, count);
  } else {
    double sum = 0.0;
    for (int64_t i = 0; i < count; ++i) sum += norm_term(norms[i], norm_type);
    result = norm_root(sum, norm_type);
  }
  *total = static_cast<float>(result);
  const float c = max_norm / (*total + 1e-6f);
  *coef = c > 1.0f ? 1.0f : c;  // torch's clamp(max=1): NaN stays NaN
}

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
