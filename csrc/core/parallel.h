// OpenMP helpers shared by the kernels. A build without OpenMP runs serially.
#pragma once
#include <algorithm>
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

// The kernels enter OpenMP through these helpers, which test `parallel`
// first. `omp parallel ... if (false)` would still start a team of one in
// the OpenMP runtime, about 0.4 us (measured here), more than a small
// kernel's whole work.

// fn(i) for i in [0, count): split statically over thread_count() threads
// when `parallel`, else in order on the calling thread.
template <typename Fn>
inline void parallel_for(bool parallel, int64_t count, Fn&& fn) {
  if (!parallel || count < 2 || thread_count() < 2) {
    for (int64_t i = 0; i < count; ++i) fn(i);
    return;
  }
  PYENGINE_OMP(omp parallel for schedule(static) num_threads(thread_count()))
  for (int64_t i = 0; i < count; ++i) fn(i);
}

// fn(begin, end) over [0, n) in chunks of `chunk` (the last may be shorter).
// Nothing to do (n <= 0) makes no call; a chunk below one counts as one, so a
// width computed from an empty dimension (embedding rows of width 0) cannot
// divide by zero.
template <typename Fn>
inline void parallel_chunks(bool parallel, int64_t n, int64_t chunk, Fn&& fn) {
  if (n <= 0) return;
  chunk = std::max<int64_t>(chunk, 1);
  parallel_for(parallel, (n + chunk - 1) / chunk, [&](int64_t c) {
    const int64_t begin = c * chunk;
    fn(begin, std::min(n, begin + chunk));
  });
}

// True inside any OpenMP parallel region, even a team of one.
static inline bool in_any_region() {
#ifdef _OPENMP
  return omp_get_level() > 0;
#else
  return false;
#endif
}

// fn() on every thread of a team of `threads` when `parallel`, else once on
// the calling thread. Inside fn, team_size() and thread_index() place each
// call, and worksharing (`omp for`, barriers) spans the team. Run serially
// inside another parallel region (even a team of one), fn still gets a team
// of its own: its worksharing would otherwise bind to the enclosing team.
template <typename Fn>
inline void parallel_region(bool parallel, int threads, Fn&& fn) {
  if (parallel && threads > 1) {
    PYENGINE_OMP(omp parallel num_threads(threads))
    fn();
  } else if (in_any_region()) {
    PYENGINE_OMP(omp parallel num_threads(1))
    fn();
  } else {
    fn();
  }
}
}  // namespace pyengine
