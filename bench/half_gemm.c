/*
** half_gemm.c -- products with a 16-bit weight: lualign's la_gemm, which
** widens the weight a panel at a time inside the product, against sgemm on
** the same weight already in float32 (the ceiling: no conversion at all),
** against widening the whole weight first and then one sgemm, and against
** OpenBLAS's bf16 GEMM (cblas_sbgemm, activations rounded to bf16 too) when
** the loaded OpenBLAS exports it.  Shapes: the Linear layers of a
** Qwen2.5-0.5B-shaped model on 2048 rows (2 pairs of 512 tokens), forward
** (x W^T) and backward (g W), and a 16384-row chunk of its 151936-word LM head.
**
**   make bench-half-gemm        (builds with several panel sizes and runs each)
**
** Prints one line per shape: GFLOP/s of each method (best of reps), and the
** panel path's share of the float32 sgemm.
*/
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cblas.h>

#include "la.h"

/* The panel size la_matmul.c was built with (the Makefile passes both the same). */
#ifndef LA_HALF_PANEL_BYTES
#define LA_HALF_PANEL_BYTES ((size_t)4 << 20)
#endif

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef void (*sbgemm_fn)(int, int, int, int, int, int, float, const uint16_t *, int, const uint16_t *, int,
                          float, float *, int);

static la_tensor *randn2(int64_t r, int64_t c) { return la_randn(2, (int64_t[]){r, c}); }

/* Best seconds of reps runs of fn. */
#define BEST(reps, expr)                                  \
  ({                                                      \
    double best_ = 1e30;                                  \
    for (int rep_ = 0; rep_ < (reps); rep_++) {           \
      double t0_ = now();                                 \
      expr;                                               \
      double dt_ = now() - t0_;                           \
      if (dt_ < best_) best_ = dt_;                       \
    }                                                     \
    best_;                                                \
  })

static void shape(const char *name, int64_t M, int64_t N, int64_t K, bool backward, sbgemm_fn sbgemm, int reps) {
  /* forward: C (M, N) = A (M, K) W^T with W (N, K); backward: C (M, K) = A (M, N) W. */
  la_tensor *w = randn2(N, K), *wh = la_to_dtype(w, LA_BFLOAT16);
  la_tensor *a = backward ? randn2(M, N) : randn2(M, K);
  la_tensor *c = backward ? la_empty(LA_FLOAT32, 2, (int64_t[]){M, K}) : la_empty(LA_FLOAT32, 2, (int64_t[]){M, N});
  double flops = 2.0 * M * N * K;
  double t32 = BEST(reps, la_gemm(false, !backward, 1.0f, a, w, 0.0f, c));
  double t16 = BEST(reps, la_gemm(false, !backward, 1.0f, a, wh, 0.0f, c));
  double twhole = BEST(reps, {
    la_tensor *wide = la_to_dtype(wh, LA_FLOAT32);
    la_gemm(false, !backward, 1.0f, a, wide, 0.0f, c);
    la_release(wide);
  });
  char sb[32] = "-";
  if (sbgemm) {
    la_tensor *ah = la_to_dtype(a, LA_BFLOAT16);
    int lda = (int)a->shape[1], ldb = (int)K, ldc = (int)c->shape[1];
    double tsb = BEST(reps, sbgemm(CblasRowMajor, CblasNoTrans, backward ? CblasNoTrans : CblasTrans, (int)M,
                                   (int)c->shape[1], backward ? (int)N : (int)K, 1.0f, la_data(ah), lda,
                                   la_data(wh), ldb, 0.0f, la_fdata(c), ldc));
    snprintf(sb, sizeof sb, "%.1f", flops / tsb * 1e-9);
    la_release(ah);
  }
  printf("%-28s %8.1f %8.1f %8.1f %8s %7.0f%%\n", name, flops / t32 * 1e-9, flops / t16 * 1e-9,
         flops / twhole * 1e-9, sb, 100.0 * t32 / t16);
  la_release(w); la_release(wh); la_release(a); la_release(c);
}

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 2, reps = argc > 2 ? atoi(argv[2]) : 5;
  la_set_num_threads(threads);
  la_manual_seed(1);
  sbgemm_fn sbgemm = (sbgemm_fn)dlsym(RTLD_DEFAULT, "cblas_sbgemm");
  printf("threads %d, panel %zu KiB, cblas_sbgemm %s\n", threads, (size_t)LA_HALF_PANEL_BYTES / 1024,
         sbgemm ? "exported" : "not exported by this OpenBLAS");
  printf("%-28s %8s %8s %8s %8s %8s\n", "GFLOP/s", "sgemm32", "panels", "whole", "sbgemm", "panels");
  int64_t M = 2048;
  shape("q/o_proj fwd (896x896)", M, 896, 896, false, sbgemm, reps);
  shape("k/v_proj fwd (128x896)", M, 128, 896, false, sbgemm, reps);
  shape("gate/up fwd (4864x896)", M, 4864, 896, false, sbgemm, reps);
  shape("down fwd (896x4864)", M, 896, 4864, false, sbgemm, reps);
  shape("q/o_proj bwd dx", M, 896, 896, true, sbgemm, reps);
  shape("gate/up bwd dx", M, 4864, 896, true, sbgemm, reps);
  shape("down bwd dx", M, 896, 4864, true, sbgemm, reps);
  shape("lm head chunk fwd", 512, 16384, 896, false, sbgemm, reps);
  shape("lm head chunk bwd dh", 512, 16384, 896, true, sbgemm, reps);
  return 0;
}
