/*
** bench/sgemm_direct.c -- the "direct OpenBLAS" side of the matmul benchmark:
** what a C programmer would write, cblas_sgemm on row-major buffers that are
** allocated once and reused, with OpenBLAS's own threads (2 by default).
**
**   build/bench/sgemm_direct [THREADS]      (built by `make bench`)
**
** Prints, for the same cases as bench/ops_lualign.lua and bench/ops_torch.py,
**
**   result <TAB> matmul <TAB> case <TAB> GFLOP/s <TAB> GFLOP/s
**
** Batched cases are a loop of cblas_sgemm calls, one per matrix: OpenBLAS
** 0.3.21 has no batched sgemm, so that is what a C user has.
*/
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* OpenBLAS's own controls (declared in its cblas.h too, but not in every
** vendor's, so spelt out here). */
void openblas_set_num_threads(int n);
char *openblas_get_corename(void);

typedef struct {
  const char *name;
  int batch, m, n, k;
} gemm_case;

/* The same cases, under the same names, as the Lua and Python sides. */
static const gemm_case CASES[] = {
  {"1024x1024x1024", 1, 1024, 1024, 1024},
  {"2048x768x768", 1, 2048, 768, 768},
  {"2048x3072x768", 1, 2048, 3072, 768},
  {"2048x768x3072", 1, 2048, 768, 3072},
  {"2048x8192x384", 1, 2048, 8192, 384},
  {"48x 256x64x256 (scores @ V)", 48, 256, 64, 256},
  {"48x 256x256x64 (Q @ K^T)", 48, 256, 256, 64},
};

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* 64-byte aligned, filled with values in [-1, 1) from a fixed LCG. */
static float *random_matrix(size_t count, unsigned *state) {
  float *p = NULL;
  if (posix_memalign((void **)&p, 64, count * sizeof(float)) != 0) return NULL;
  for (size_t i = 0; i < count; i++) {
    *state = *state * 1664525u + 1013904223u;
    p[i] = (float)(*state >> 8) / 8388608.0f - 1.0f;
  }
  return p;
}

/* C[b] = A[b] B[b] for every matrix of the batch. */
static void run_case(const gemm_case *c, const float *a, const float *b, float *out) {
  size_t sa = (size_t)c->m * c->k, sb = (size_t)c->k * c->n, so = (size_t)c->m * c->n;
  for (int i = 0; i < c->batch; i++)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, c->m, c->n, c->k, 1.0f, a + i * sa,
                c->k, b + i * sb, c->n, 0.0f, out + i * so, c->n);
}

static int cmp_double(const void *x, const void *y) {
  double a = *(const double *)x, b = *(const double *)y;
  return (a > b) - (a < b);
}

/* Median seconds per call: at least 3 timed calls, and more until 0.5 s of
** timing have been spent, after one warm-up call (as the other sides). */
static double time_case(const gemm_case *c, const float *a, const float *b, float *out) {
  double runs[4096], spent = 0;
  int n = 0;
  run_case(c, a, b, out);
  while ((n < 3 || spent < 0.5) && n < 4096) {
    double t0 = now();
    run_case(c, a, b, out);
    runs[n] = now() - t0;
    spent += runs[n++];
  }
  qsort(runs, (size_t)n, sizeof runs[0], cmp_double);
  return n % 2 ? runs[n / 2] : (runs[n / 2 - 1] + runs[n / 2]) / 2;
}

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 2;
  openblas_set_num_threads(threads);
  printf("info\topenblas\tcore %s, %d threads\n", openblas_get_corename(), threads);
  unsigned state = 12345;
  for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
    const gemm_case *c = &CASES[i];
    float *a = random_matrix((size_t)c->batch * c->m * c->k, &state);
    float *b = random_matrix((size_t)c->batch * c->k * c->n, &state);
    float *out = random_matrix((size_t)c->batch * c->m * c->n, &state);
    if (!a || !b || !out) {
      fprintf(stderr, "sgemm_direct: out of memory for %s\n", c->name);
      return 1;
    }
    double s = time_case(c, a, b, out);
    printf("result\tmatmul\t%s\t%.6g\tGFLOP/s\n", c->name, 2.0 * c->batch * c->m * c->n * c->k / s / 1e9);
    fflush(stdout);
    free(a);
    free(b);
    free(out);
  }
  return 0;
}
