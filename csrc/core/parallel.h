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

// The number of threads every kernel's parallel region asks for (each region
// names it in a num_threads clause). pyengine keeps its own count rather than
// OpenMP's process-wide default, which other libraries sharing the OpenMP
// runtime (numba, BLAS) may change. Defined in core/threads.cpp.
int thread_count();
void set_thread_count(int n);  // n >= 1

// True inside an OpenMP parallel region (a kernel called from a caller's
// threads, or from a batch loop): kernels then stay on the calling thread.
static inline bool in_parallel_region() {
#ifdef _OPENMP
  return omp_in_parallel() != 0;
#else
  return false;
#endif
}
// Row-wise kernels (softmax, layer norm, cross-entropy) split rows over
// threads when there are several and enough work in all.
static inline bool rows_worth_threads(int64_t rows, int64_t cols) {
  return rows > 1 && rows * cols >= PYENGINE_PARALLEL_MIN_WORK;
}
static inline int team_size() {
#ifdef _OPENMP
  return omp_get_num_threads();
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
