// The random-number input of an op whose kernel draws random numbers
// (dropout, attention dropout). Convention, shared by every such op:
//   - the op takes an index-dtype input `rng` of shape (2,) = (seed, stream),
//     filled by pyengine.random (a fresh stream per eager call; under graph
//     capture a live buffer the graph refills before each replay);
//   - element e of the op's random draw is philox::uniform(seed, stream, e)
//     (core/philox.h): a pure function of the seed, the stream and e, so the
//     result does not depend on the thread count and a backward regenerates
//     the forward's mask instead of storing it;
//   - dropout keeps element e iff that value >= p, and scales it by 1 / (1 - p).
// Declare the input with `.apply(rng_input::declare)`, check its shape in the
// op's shape rule with `rng_input::check_shape(r)` and read it in the kernel
// lambda with `rng_input::read(c)`.
#pragma once
#include <cstdint>

#include "core/registry.h"

namespace pyengine {
namespace rng_input {

struct Key {
  uint64_t seed, stream;
};

inline registry::OpBuilder& declare(registry::OpBuilder& op) {
  return op.input("rng", "(2)", registry::DType::index);
}

// rng must hold exactly (seed, stream).
inline void check_shape(registry::Resolution& r) {
  if (r.given("rng") && r.shape("rng") != registry::Shape{2})
    r.fail("'rng' must have shape (2,) = (seed, stream), got shape " + registry::shape_str(r.shape("rng")));
}

// The seed and stream, as the unsigned words philox takes (int64 values are
// reinterpreted, so any 64-bit seed round-trips).
inline Key read(const registry::Call& c) {
  if (c.is_int32("rng")) {
    const int32_t* v = static_cast<const int32_t*>(c.data("rng"));
    return Key{static_cast<uint64_t>(static_cast<int64_t>(v[0])), static_cast<uint64_t>(static_cast<int64_t>(v[1]))};
  }
  const int64_t* v = static_cast<const int64_t*>(c.data("rng"));
  return Key{static_cast<uint64_t>(v[0]), static_cast<uint64_t>(v[1])};
}

}  // namespace rng_input
}  // namespace pyengine
