#include <atomic>

#include "core/parallel.h"

namespace pyengine {
namespace {

int default_thread_count() {
#ifdef _OPENMP
  return omp_get_max_threads();  // OMP_NUM_THREADS, or the number of cores
#else
  return 1;
#endif
}

std::atomic<int> g_thread_count{0};

}  // namespace

int thread_count() {
  int n = g_thread_count.load(std::memory_order_relaxed);
  if (n == 0) {
    n = default_thread_count();
    g_thread_count.store(n, std::memory_order_relaxed);
  }
  return n;
}

void set_thread_count(int n) { g_thread_count.store(n < 1 ? 1 : n, std::memory_order_relaxed); }

}  // namespace pyengine
