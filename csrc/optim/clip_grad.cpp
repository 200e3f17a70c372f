// Norms of gradient buffers for clipping. The buffer is cut into a fixed
// number of equal parts (independent of the thread count), each summed in
// double with eight accumulators (so the loop vectorizes without
// reassociating anything the source does not), the parts then added in
// order: the same result for any thread count.
#include <algorithm>
#include <cmath>

#include "core/kernel_list.inc"
#include "core/parallel.h"
#include "optim/clip_grad_common.h"

namespace pyengine {
namespace PYENGINE_KERNEL_NS {

namespace {

constexpr int64_t kParts = 64;
constexpr int kLanes = 8;

double sum_of_squares(const float* x, int64_t n) {
  double acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += double(x[i + l]) * double(x[i + l]);
  for (; i < n; ++i) acc[0] += double(x[i]) * double(x[i]);
  double sum = 0.0;
  for (double a : acc) sum += a;
  return sum;
}

// One part's contribution: sum of |x|^p, or max |x| for p = inf.
double part_value(const float* x, int64_t n, float p) {
  if (std::isinf(p)) return max_abs(x, n);
  if (p == 2.0f) return sum_of_squares(x, n);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += norm_term(x[i], p);
  return sum;
}

}  // namespace

void vector_norm(float* norm, const float* x, int64_t n, float norm_type) {
  double parts[kParts] = {};
  const int64_t part = std::max<int64_t>(1, (n + kParts - 1) / kParts);
  parallel_chunks(n >= 16 * PYENGINE_PARALLEL_MIN_WORK && !in_parallel_region(), n, part,
                  [&](int64_t begin, int64_t end) { parts[begin / part] = part_value(x + begin, end - begin, norm_type); });
  if (std::isinf(norm_type)) {
    *norm = static_cast<float>(max_abs(parts, kParts));
    return;
  }
  double sum = 0.0;
  for (double v : parts) sum += v;
  *norm = static_cast<float>(norm_root(sum, norm_type));
}

void clip_coefficient(float* total, float* coef, const float* norms, int64_t count, float norm_type,
                      float max_norm) {
  combine_norms(total, coef, norms, count, norm_type, max_norm);
}

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
