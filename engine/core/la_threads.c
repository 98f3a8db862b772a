/*
** la_threads.c -- one pool of threads for everything.
**
** Kernels parallelise with OpenMP.  OpenBLAS is kept at one thread and is
** only ever called from inside our own OpenMP regions (a large GEMM is split
** into row or column blocks, many small GEMMs run one per thread).  So the
** process never has OpenBLAS's pthreads and OpenMP's workers competing for
** the same cores, which is what costs PyTorch 1.2-3x on small machines, and
** "the thread count" is a single number.
*/
#include <omp.h>

#include "la.h"

void openblas_set_num_threads(int n);

static int la_threads = 0;

void la_set_num_threads(int n) {
  if (n < 1) n = 1;
  la_threads = n;
  omp_set_num_threads(n);
  openblas_set_num_threads(1);
}

int la_get_num_threads(void) {
  if (la_threads == 0) la_set_num_threads(omp_get_max_threads());
  return la_threads;
}

void la_parallel_range(int64_t n, bool parallel, la_range_fn fn, void *ctx) {
  int nt = parallel ? la_get_num_threads() : 1;
  if (nt > n) nt = (int)n;
  if (nt <= 1) {
    if (n > 0) fn(ctx, 0, n);
    return;
  }
  #pragma omp parallel num_threads(nt)
  {
    int t = omp_get_thread_num(), m = omp_get_num_threads();
    int64_t lo = n * t / m, hi = n * (t + 1) / m;
    if (lo < hi) fn(ctx, lo, hi);
  }
}
