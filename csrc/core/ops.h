// Operation codes shared by every ISA variant and the bindings.
#pragma once

namespace pyengine {
enum class BinaryOp : int { add = 0, sub = 1, mul = 2, div = 3 };
enum class ScalarOp : int { add = 0, sub = 1, rsub = 2, mul = 3, div = 4, rdiv = 5, pow = 6 };
// The activation a GEMM epilogue applies to its output tile.
enum class Activation : int { none = 0, relu = 1, gelu = 2 };
}  // namespace pyengine
