// Philox-4x32-10, the counter-based generator of Salmon et al., "Parallel
// random numbers: as easy as 1, 2, 3" (SC'11). A random value is a pure
// function of (key, counter): the key is the user's seed, the counter names
// the element (and a stream, so that two dropouts of one step differ). So a
// dropout mask depends on the seed and the element's index only, never on
// the thread count or the order in which threads reach the elements, and a
// backward can regenerate the forward's mask instead of storing it.
#pragma once
#include <cstdint>

namespace pyengine {
namespace philox {

struct Block {
  uint32_t v[4];
};

inline void mul_hi_lo(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  *lo = static_cast<uint32_t>(p);
}

// The four 32-bit outputs for counter (c0 = low word of `index`, c1 = high
// word, c2, c3 = `stream`) under key `seed`: ten rounds, the constants of
// the paper (Random123's reference values).
inline Block generate(uint64_t seed, uint64_t stream, uint64_t index) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  uint32_t c0 = static_cast<uint32_t>(index), c1 = static_cast<uint32_t>(index >> 32);
  uint32_t c2 = static_cast<uint32_t>(stream), c3 = static_cast<uint32_t>(stream >> 32);
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mul_hi_lo(kMul0, c0, &hi0, &lo0);
    mul_hi_lo(kMul1, c2, &hi1, &lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0, c1 = n1, c2 = n2, c3 = n3;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return Block{{c0, c1, c2, c3}};
}

// A uniform float in [0, 1) from the top 24 bits (every such float exactly
// representable, so `u < p` keeps an element with probability exactly 1 - p
// up to 2^-24).
inline float to_unit_float(uint32_t bits) { return static_cast<float>(bits >> 8) * (1.0f / 16777216.0f); }

// The uniform value of element `element` of stream `stream`: element e uses
// lane e % 4 of block e / 4, so a loop over four consecutive elements needs
// one generate() call.
inline float uniform(uint64_t seed, uint64_t stream, uint64_t element) {
  return to_unit_float(generate(seed, stream, element >> 2).v[element & 3]);
}

}  // namespace philox
}  // namespace pyengine
