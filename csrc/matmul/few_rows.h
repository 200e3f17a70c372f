// The few-row GEMM paths (few_rows.cpp): B streamed once, GEMV-like.
#pragma once
#include <cstdint>

#include "matmul/gemm_epilogue.h"

namespace pyengine {
namespace PYENGINE_KERNEL_NS {

// Whether C (m x n) = op(A) . op(B) with depth k takes the few-row path.
bool streams_b(int64_t m, int64_t n, int64_t k, bool trans_b);

// C (m, n) (+)= op(A) (m x k) . op(B) (k x n), with the epilogue when not
// accumulating, for a product streams_b accepts.
void skinny_gemm(float* c,        // (m, n)
                 const float* a,  // (m, k), or (k, m) if trans_a
                 const float* b,  // (k, n), or (n, k) if trans_b
                 int64_t m, int64_t n, int64_t k, bool trans_a, bool trans_b, bool accumulate,
                 const gemm_epilogue::Epilogue& epilogue);

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
