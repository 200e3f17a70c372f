// Dropout with a counter-based mask (see core/rng_input.h). The Philox
// blocks of 64 consecutive elements are computed together, in
// structure-of-arrays form, 8 counters per AVX2 register (32x32->64-bit
// multiplies on every lane); then one pass applies the mask. Chunks of the
// elements go to the threads; the mask depends on the element only.
#include <algorithm>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#include "core/kernel_list.inc"
#include "core/parallel.h"
#include "dropout/dropout_common.h"

namespace pyengine {
namespace PYENGINE_KERNEL_NS {

namespace {

constexpr int kBlocks = 16;                  // Philox blocks per batch
constexpr int64_t kBatch = 4 * kBlocks;      // elements per batch
constexpr int64_t kChunk = 64 * kBatch;      // elements per thread chunk

struct Mask {
  uint64_t seed, stream;
  float p, scale;
};

#ifdef __AVX2__
// The 32x32 -> 64-bit products of 8 lanes by a constant, split in high and
// low words (AVX2 multiplies the even lanes only: the odd ones are shifted down).
inline void mul_hi_lo(__m256i a, __m256i k, __m256i* hi, __m256i* lo) {
  const __m256i even = _mm256_mul_epu32(a, k);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), k);
  *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

// philox::generate's ten rounds on the kBlocks counters (c0, c1, c2, c3), in place, 8 at a time.
void philox_rounds(uint64_t seed, uint32_t* c0, uint32_t* c1, uint32_t* c2, uint32_t* c3) {
  const __m256i mul0 = _mm256_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m256i mul1 = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
  for (int j = 0; j < kBlocks; j += 8) {
    auto load = [&](const uint32_t* c) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + j)); };
    __m256i x0 = load(c0), x1 = load(c1), x2 = load(c2), x3 = load(c3);
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < 10; ++round) {
      __m256i hi0, lo0, hi1, lo1;
      mul_hi_lo(x0, mul0, &hi0, &lo0);
      mul_hi_lo(x2, mul1, &hi1, &lo1);
      x0 = _mm256_xor_si256(_mm256_xor_si256(hi1, x1), _mm256_set1_epi32(static_cast<int>(k0)));
      x2 = _mm256_xor_si256(_mm256_xor_si256(hi0, x3), _mm256_set1_epi32(static_cast<int>(k1)));
      x1 = lo1;
      x3 = lo0;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    auto store = [&](uint32_t* c, __m256i x) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + j), x); };
    store(c0, x0), store(c1, x1), store(c2, x2), store(c3, x3);
  }
}
#else
// philox::generate's ten rounds on the kBlocks counters (c0, c1, c2, c3), in place.
void philox_rounds(uint64_t seed, uint32_t* c0, uint32_t* c1, uint32_t* c2, uint32_t* c3) {
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    for (int j = 0; j < kBlocks; ++j) {
      const uint64_t p0 = uint64_t{0xD2511F53u} * c0[j], p1 = uint64_t{0xCD9E8D57u} * c2[j];
      const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1[j] ^ k0;
      const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3[j] ^ k1;
      c1[j] = static_cast<uint32_t>(p1);
      c3[j] = static_cast<uint32_t>(p0);
      c0[j] = n0;
      c2[j] = n2;
    }
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}
#endif

// factor[k] of element first + k, k < 64; first is a multiple of 4. The same
// rounds as philox::generate, for 16 counters at once.
void batch_factors(const Mask& m, uint64_t first, float* factor) {
  uint32_t c0[kBlocks], c1[kBlocks], c2[kBlocks], c3[kBlocks];
  const uint64_t block = first >> 2;
  for (int j = 0; j < kBlocks; ++j) {
    c0[j] = static_cast<uint32_t>(block + j);
    c1[j] = static_cast<uint32_t>((block + j) >> 32);
    c2[j] = static_cast<uint32_t>(m.stream);
    c3[j] = static_cast<uint32_t>(m.stream >> 32);
  }
  philox_rounds(m.seed, c0, c1, c2, c3);
  for (int j = 0; j < kBlocks; ++j) {
    factor[4 * j + 0] = dropout_factor(c0[j], m.p, m.scale);
    factor[4 * j + 1] = dropout_factor(c1[j], m.p, m.scale);
    factor[4 * j + 2] = dropout_factor(c2[j], m.p, m.scale);
    factor[4 * j + 3] = dropout_factor(c3[j], m.p, m.scale);
  }
}

// fn(begin, count, factor) over [0, n) in batches of 64 elements.
template <typename Fn>
void for_each_batch(uint64_t seed, uint64_t stream, int64_t n, float p, Fn&& fn) {
  const Mask m{seed, stream, p, dropout_scale(p)};
  const bool parallel = n >= 4 * kChunk && !in_parallel_region();
  parallel_chunks(parallel, n, kChunk, [&](int64_t begin, int64_t end) {
    alignas(64) float factor[kBatch];
    for (int64_t b = begin; b < end; b += kBatch) {
      batch_factors(m, static_cast<uint64_t>(b), factor);
      fn(b, std::min(kBatch, end - b), factor);
    }
  });
}

}  // namespace

void dropout_forward(float* y, const float* x, uint64_t seed, uint64_t stream, int64_t n, float p) {
  for_each_batch(seed, stream, n, p, [&](int64_t b, int64_t count, const float* f) {
    for (int64_t k = 0; k < count; ++k) y[b + k] = x[b + k] * f[k];
  });
}

void dropout_backward(float* dx, const float* dy, uint64_t seed, uint64_t stream, int64_t n, float p) {
  for_each_batch(seed, stream, n, p, [&](int64_t b, int64_t count, const float* f) {
    for (int64_t k = 0; k < count; ++k) dx[b + k] += dy[b + k] * f[k];
  });
}

void dropout_add_forward(float* y, const float* residual, const float* x, uint64_t seed, uint64_t stream,
                         int64_t n, float p) {
  for_each_batch(seed, stream, n, p, [&](int64_t b, int64_t count, const float* f) {
    for (int64_t k = 0; k < count; ++k) y[b + k] = residual[b + k] + x[b + k] * f[k];
  });
}

void dropout_add_backward(float* dresidual, float* dx, const float* dy, uint64_t seed, uint64_t stream,
                          int64_t n, float p) {
  if (dresidual && dx) {
    for_each_batch(seed, stream, n, p, [&](int64_t b, int64_t count, const float* f) {
      for (int64_t k = 0; k < count; ++k) {
        dresidual[b + k] += dy[b + k];
        dx[b + k] += dy[b + k] * f[k];
      }
    });
  } else if (dx) {
    dropout_backward(dx, dy, seed, stream, n, p);
  } else if (dresidual) {
    parallel_chunks(n >= 4 * kChunk && !in_parallel_region(), n, kChunk, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) dresidual[e] += dy[e];
    });
  }
}

}  // namespace PYENGINE_KERNEL_NS
}  // namespace pyengine
