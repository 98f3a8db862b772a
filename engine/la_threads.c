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
