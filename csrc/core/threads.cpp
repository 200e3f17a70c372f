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

// ---------------------------------------------------------------- denormals (core/denormals.h)
#include "core/denormals.h"
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define PYENGINE_HAVE_MXCSR 1
#endif

namespace pyengine {
namespace {

#ifdef PYENGINE_HAVE_MXCSR
constexpr unsigned kFlushToZero = 0x8000, kDenormalsAreZero = 0x0040;

// OpenMP workers keep their MXCSR from one region to the next, so each
// calling thread's team gets the bits once per team size (a team of the
// same size reuses its threads; workers created later inherit the creating
// thread's MXCSR, which has the bits while a kernel runs).
thread_local int t_primed_team = 0;

void prime_workers() {
  const int team = thread_count();
  if (team == t_primed_team || team < 2 || in_any_region()) return;
  PYENGINE_OMP(omp parallel num_threads(team))
  { _mm_setcsr(_mm_getcsr() | kFlushToZero | kDenormalsAreZero); }
  t_primed_team = team;
}
#endif

}  // namespace

FlushDenormals::FlushDenormals() : saved_(0) {
#ifdef PYENGINE_HAVE_MXCSR
  saved_ = _mm_getcsr();
  _mm_setcsr(saved_ | kFlushToZero | kDenormalsAreZero);
  prime_workers();
#endif
}

FlushDenormals::~FlushDenormals() {
#ifdef PYENGINE_HAVE_MXCSR
  _mm_setcsr(saved_);
#endif
}

bool flushes_denormals() {
#ifdef PYENGINE_HAVE_MXCSR
  return true;
#else
  return false;
#endif
}

}  // namespace pyengine
