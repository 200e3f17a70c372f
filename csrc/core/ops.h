// Operation codes shared by every ISA variant and the bindings. Each enum's
// member names are declared beside it, once: the registry exports them to
// Python (`_C.enums`), and the static_asserts keep the two in step.
#pragma once
#include <iterator>

namespace pyengine {

enum class BinaryOp : int { add = 0, sub = 1, mul = 2, div = 3, count };
inline constexpr const char* kBinaryOpNames[] = {"add", "sub", "mul", "div"};
static_assert(std::size(kBinaryOpNames) == static_cast<size_t>(BinaryOp::count));

enum class ScalarOp : int { add = 0, sub = 1, rsub = 2, mul = 3, div = 4, rdiv = 5, pow = 6, count };
inline constexpr const char* kScalarOpNames[] = {"add", "sub", "rsub", "mul", "div", "rdiv", "pow"};
static_assert(std::size(kScalarOpNames) == static_cast<size_t>(ScalarOp::count));

// The activation a GEMM epilogue applies to its output tile. Every member
// but `none` is an activation the executor may fuse into a preceding matmul.
// gelu is the tanh form, gelu_erf the exact one (PyTorch's approximate='none').
enum class Activation : int { none = 0, relu = 1, gelu = 2, gelu_erf = 3, count };
inline constexpr const char* kActivationNames[] = {"none", "relu", "gelu", "gelu_erf"};
static_assert(std::size(kActivationNames) == static_cast<size_t>(Activation::count));

// The scalars of one Adam step, shared by every variant of adam_update.
struct AdamStep {
  float lr, beta1, beta2, eps, weight_decay;
  float step_size;   // lr / (1 - beta1^step)
  float bias2_sqrt;  // sqrt(1 - beta2^step)
  bool decoupled;    // AdamW
  float grad_scale = 1.0f;  // the gradient is read as grad * grad_scale (gradient clipping)
};

}  // namespace pyengine
