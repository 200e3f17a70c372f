#include "core/cpu_info.h"

#include <unistd.h>

namespace pyengine {
namespace {

int64_t query(int name, int64_t fallback) {
#if defined(_SC_LEVEL1_DCACHE_SIZE)
  const long value = sysconf(name);
  return value > 0 ? value : fallback;
#else
  (void)name;
  return fallback;
#endif
}

CacheSizes detect() {
#if defined(_SC_LEVEL1_DCACHE_SIZE)
  return {query(_SC_LEVEL1_DCACHE_SIZE, 32 << 10), query(_SC_LEVEL2_CACHE_SIZE, 512 << 10),
          query(_SC_LEVEL3_CACHE_SIZE, 8 << 20)};
#else
  return {32 << 10, 512 << 10, 8 << 20};
#endif
}

}  // namespace

const CacheSizes& cache_sizes() {
  static const CacheSizes sizes = detect();
  return sizes;
}

}  // namespace pyengine
