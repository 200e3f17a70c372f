// Cache sizes of this machine, read once (compiled outside the ISA variants).
#pragma once
#include <cstdint>

namespace pyengine {

struct CacheSizes {
  int64_t l1d;  // bytes, per core
  int64_t l2;   // bytes, per core
  int64_t l3;   // bytes, shared
};

// From the C library (cpuid on x86), with common sizes where it reports none.
const CacheSizes& cache_sizes();

}  // namespace pyengine
