// The four int64 / int32 entry points of the embedding kernels, defined once
// over a variant's `lookup` and `scatter_add` templates (included inside the
// variant's namespace, after them).
#pragma once

#define PYENGINE_EMBEDDING_OVERLOADS                                                                        \
  void embedding_forward(float* out, const float* weight, const int64_t* idx, int64_t rows, int64_t,      \
                         int64_t dim) {                                                                     \
    lookup(out, weight, idx, rows, dim);                                                                    \
  }                                                                                                         \
  void embedding_forward(float* out, const float* weight, const int32_t* idx, int64_t rows, int64_t,      \
                         int64_t dim) {                                                                     \
    lookup(out, weight, idx, rows, dim);                                                                    \
  }                                                                                                         \
  void embedding_backward(float* dweight, const float* dout, const int64_t* idx, int64_t rows, int64_t,   \
                          int64_t dim) {                                                                    \
    scatter_add(dweight, dout, idx, rows, dim);                                                             \
  }                                                                                                         \
  void embedding_backward(float* dweight, const float* dout, const int32_t* idx, int64_t rows, int64_t,   \
                          int64_t dim) {                                                                    \
    scatter_add(dweight, dout, idx, rows, dim);                                                             \
  }
