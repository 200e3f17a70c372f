// OpenMP helpers shared by the kernels. A build without OpenMP runs serially.
#pragma once
#include <cstdint>
#ifdef _OPENMP
#include <omp.h>
#endif

// Work below this many scalar operations runs on one thread: spreading it
// costs more than it saves.
#define PYENGINE_PARALLEL_MIN_WORK 32768

#ifdef _OPENMP
#define PYENGINE_OMP(directive) _Pragma(#directive)
#else
#define PYENGINE_OMP(directive)
#endif

namespace pyengine {
static inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}
static inline int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}
}  // namespace pyengine
