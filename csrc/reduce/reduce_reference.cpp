// Plain sum over the middle axis, accumulated in double.
#include "core/kernel_list.inc"

namespace pyengine {
namespace reference {

void sum_forward(float* out, const float* in, int64_t outer, int64_t reduce, int64_t inner,
                 float scale) {
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      double acc = 0.0;
      for (int64_t r = 0; r < reduce; ++r) acc += in[(o * reduce + r) * inner + i];
      out[o * inner + i] = static_cast<float>(acc * scale);
    }
}

void sum_backward(float* din, const float* dout, int64_t outer, int64_t reduce, int64_t inner,
                  float scale) {
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t r = 0; r < reduce; ++r)
      for (int64_t i = 0; i < inner; ++i)
        din[(o * reduce + r) * inner + i] += dout[o * inner + i] * scale;
}

}  // namespace reference
}  // namespace pyengine
