/*
** la_matmul.c -- matrix products through OpenBLAS's cblas_sgemm.
**
** Transposed views go to BLAS as transposed operands, never copied.  A batch
** of matrices multiplied by one matrix (a Linear layer on (B, T, C)) is one
** tall GEMM.  Threads: one large GEMM is split into row (or column) blocks,
** one per thread, each an ordinary single-threaded sgemm; a batch of small
** GEMMs (attention heads) runs one GEMM per thread.  See la_threads.c.
*/
#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "la.h"

/* Below this many multiply-adds (about 40 us of one core's work) a GEMM runs
** on one thread: waking and joining a team costs more than it saves, and much
** more on a loaded machine, where one descheduled thread stalls the join. */
#define LA_GEMM_PARALLEL_MACS (4 * 1024 * 1024)
#define LA_GEMV_PARALLEL_MACS (256 * 1024)

/* A 2-D operand as BLAS sees it. */
typedef struct {
  const float *p;
  int rows, cols;   /* logical shape */
  bool trans;       /* stored column-major: pass as transposed */
  int ld;
} la_mat;

/* Whether a (rows, cols) matrix with these strides can go to BLAS as is. */
static bool la_mat_of(const float *p, int64_t rows, int64_t cols, int64_t s0, int64_t s1,
                      la_mat *m) {
  m->p = p;
  m->rows = (int)rows;
  m->cols = (int)cols;
  if ((s1 == 1 || cols == 1) && s0 >= (cols > 1 ? cols : 1)) {
    m->trans = false;
    m->ld = (int)(s0 > 0 ? s0 : 1);
    if (rows == 1) m->ld = (int)(cols > 1 ? cols : 1);
    return true;
  }
  if ((s0 == 1 || rows == 1) && s1 >= (rows > 1 ? rows : 1)) {
    m->trans = true;
    m->ld = (int)(s1 > 0 ? s1 : 1);
    if (cols == 1) m->ld = (int)(rows > 1 ? rows : 1);
    return true;
  }
  return false;
}

/* Rows r0.. of a logical matrix. */
static const float *la_mat_rows(const la_mat *m, int r0) {
  return m->trans ? m->p + r0 : m->p + (size_t)r0 * m->ld;
}

static const float *la_mat_cols(const la_mat *m, int c0) {
  return m->trans ? m->p + (size_t)c0 * m->ld : m->p + c0;
}

/* Products of at most this many multiply-adds are computed by la_sgemm_small:
** OpenBLAS's entry cost (argument checks, its buffer pool's lock, packing) is
** ~80 ns here, several times the arithmetic of a 4x4 product. */
#define LA_GEMM_SMALL_MACS 512

/* Block [r0, r1) x [c0, c1) of C = alpha * A B + beta * C by dot products. */
static void la_sgemm_small(const la_mat *a, const la_mat *b, float alpha, float beta, float *c,
                           int ldc, int r0, int r1, int c0, int c1) {
  /* element (i, k) of A is at a->p[i * a_row + k * a_col]; likewise for B */
  size_t a_row = a->trans ? 1 : (size_t)a->ld, a_col = a->trans ? (size_t)a->ld : 1;
  size_t b_row = b->trans ? 1 : (size_t)b->ld, b_col = b->trans ? (size_t)b->ld : 1;
  int K = a->cols;
  for (int i = r0; i < r1; i++)
    for (int j = c0; j < c1; j++) {
      float s = 0;
      for (int k = 0; k < K; k++) s += a->p[i * a_row + k * a_col] * b->p[k * b_row + j * b_col];
      float *q = c + (size_t)i * ldc + j;
      *q = beta == 0 ? alpha * s : alpha * s + beta * *q;   /* beta 0: C may be garbage */
    }
}

/* The same block when it is one row or one column of C: a matrix-vector
** product.  sgemm would pack the whole matrix operand into its own buffers
** first, reading it twice; sgemv streams it once, which is what bounds a
** decoding step (a batch of one token against every weight matrix). */
static void la_sgemv1(const la_mat *a, const la_mat *b, float alpha, float beta, float *c,
                      int ldc, int r0, int r1, int c0, int c1) {
  int M = r1 - r0, N = c1 - c0, K = a->cols;
  float *y = c + (size_t)r0 * ldc + c0;
  if (M == 1) {
    /* c[r0, j] = sum_k a[r0, k] b[k, j]: B^T times a row of A */
    int inca = a->trans ? a->ld : 1;
    const float *x = la_mat_rows(a, r0), *w = la_mat_cols(b, c0);
    if (b->trans)   /* B^T stored row-major as (N, K): Linear's weight */
      cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, alpha, w, b->ld, x, inca, beta, y, 1);
    else
      cblas_sgemv(CblasRowMajor, CblasTrans, K, N, alpha, w, b->ld, x, inca, beta, y, 1);
  } else {
    /* c[i, c0] = sum_k a[i, k] b[k, c0]: A times a column of B */
    int incb = b->trans ? 1 : b->ld;
    const float *x = la_mat_cols(b, c0), *w = la_mat_rows(a, r0);
    if (a->trans)   /* A stored column-major: A^T is (K, M) row-major */
      cblas_sgemv(CblasRowMajor, CblasTrans, K, M, alpha, w, a->ld, x, incb, beta, y, ldc);
    else
      cblas_sgemv(CblasRowMajor, CblasNoTrans, M, K, alpha, w, a->ld, x, incb, beta, y, ldc);
  }
}

/* C[M, N] (row-major, ldc) = alpha * A[M, K] B[K, N] + beta * C, on this thread. */
static void la_sgemm1(const la_mat *a, const la_mat *b, float alpha, float beta, float *c,
                      int ldc, int r0, int r1, int c0, int c1) {
  int M = r1 - r0, N = c1 - c0, K = a->cols;
  if (M <= 0 || N <= 0) return;
  if (K == 0) {
    for (int i = 0; i < M; i++)
      for (int j = 0; j < N; j++) {
        float *q = c + (size_t)(r0 + i) * ldc + c0 + j;
        *q = beta == 0 ? 0.0f : beta * *q;
      }
    return;
  }
  if ((double)M * N * K <= LA_GEMM_SMALL_MACS) {
    la_sgemm_small(a, b, alpha, beta, c, ldc, r0, r1, c0, c1);
    return;
  }
  if (M == 1 || N == 1) {
    la_sgemv1(a, b, alpha, beta, c, ldc, r0, r1, c0, c1);
    return;
  }
  cblas_sgemm(CblasRowMajor, a->trans ? CblasTrans : CblasNoTrans,
              b->trans ? CblasTrans : CblasNoTrans, M, N, K, alpha, la_mat_rows(a, r0), a->ld,
              la_mat_cols(b, c0), b->ld, beta, c + (size_t)r0 * ldc + c0, ldc);
}

/* One GEMM, split across the threads when it is large enough. */
static void la_sgemm(const la_mat *a, const la_mat *b, float alpha, float beta, float *c, int ldc) {
  int M = a->rows, N = b->cols;
  int nt = la_get_num_threads();
  double macs = (double)M * N * a->cols;
  /* A matrix-vector product is bound by reading the matrix, not by arithmetic:
  ** a second thread pays off from a much smaller size. */
  double threshold = M == 1 || N == 1 ? LA_GEMV_PARALLEL_MACS : LA_GEMM_PARALLEL_MACS;
  if (nt <= 1 || macs < threshold) {
    la_sgemm1(a, b, alpha, beta, c, ldc, 0, M, 0, N);
    return;
  }
  bool by_rows = M >= N;
  #pragma omp parallel num_threads(nt)
  {
    int t = omp_get_thread_num(), m = omp_get_num_threads();
    if (by_rows) {
      /* Block edges on multiples of 8 rows keep the BLAS kernel's tiles whole. */
      int lo = (int)((int64_t)M * t / m) & ~7, hi = t == m - 1 ? M : (int)((int64_t)M * (t + 1) / m) & ~7;
      la_sgemm1(a, b, alpha, beta, c, ldc, lo, hi, 0, N);
    } else {
      int lo = (int)((int64_t)N * t / m) & ~15, hi = t == m - 1 ? N : (int)((int64_t)N * (t + 1) / m) & ~15;
      la_sgemm1(a, b, alpha, beta, c, ldc, 0, M, lo, hi);
    }
  }
}

static bool la_fits_int(int64_t v) { return v >= 0 && v <= 0x7fffffff; }

/* ---------------------------------------------------------------- 16-bit weights */
/* A product whose B is a 16-bit weight (bf16 or f16, row-major, contiguous)
** widens B a panel at a time into a float32 scratch block that stays in the
** core's L2 cache and multiplies by it with sgemm, so the arithmetic is
** float32 throughout and the weight is never held in float32 whole.  Debian's
** OpenBLAS 0.3.21 exports no bf16 GEMM (sbgemm), and one would also round the
** activations to bf16; bench/half_gemm.c measures this path against sgemm on
** float32 weights.  Threads take contiguous ranges of C's columns, each with
** its own scratch. */

/* Each panel's sgemm packs the other operand (the activations) again, so
** panels are wide: at least LA_HALF_MIN_PANEL rows of the weight (or of its
** reduction dim), up to LA_HALF_PANEL_BYTES of float32 per thread -- a whole
** projection's share of a thread in one panel for the usual sizes, and a
** bounded scratch for an LM head's 150k rows.  bench/half_gemm.c builds this
** file with other sizes to measure the choice (bench/README.md). */
#ifndef LA_HALF_PANEL_BYTES
#define LA_HALF_PANEL_BYTES ((size_t)4 << 20)
#endif
#define LA_HALF_MIN_PANEL 256

typedef struct {
  const la_mat *a;
  const uint16_t *b;     /* the 16-bit weight, row-major */
  int64_t brows, bcols;  /* its stored shape */
  bool tb, bf16;
  float alpha, beta;
  float *c;
  int ldc;
  int M, N, K;
  int failed;            /* a scratch allocation failed */
} la_half_ctx;

/* Columns [c0, c1) of C. */
static void la_half_cols(la_half_ctx *h, int c0, int c1) {
  int w = c1 - c0;
  if (w <= 0) return;
  size_t panel_floats = LA_HALF_PANEL_BYTES / sizeof(float);
  if (h->tb) {
    /* C[:, n] = A B[n, :]^T: panels of whole rows of B (= columns of C). */
    int K = h->K;
    int p = (int)(panel_floats / (size_t)(K > 0 ? K : 1));
    p = p < LA_HALF_MIN_PANEL ? LA_HALF_MIN_PANEL : p & ~15;
    if (p > w) p = w;
    float *scratch = malloc((size_t)p * (size_t)K * sizeof(float));
    if (!scratch) {
      #pragma omp atomic write
      h->failed = 1;
      return;
    }
    for (int n0 = c0; n0 < c1; n0 += p) {
      int pn = c1 - n0 < p ? c1 - n0 : p;
      la_half_block_to_f32(h->b, h->bcols, n0, n0 + pn, 0, K, scratch, h->bf16);
      la_mat pm;
      la_mat_of(scratch, K, pn, 1, K, &pm);   /* B^T's columns n0.., stored as rows */
      la_sgemm1(h->a, &pm, h->alpha, h->beta, h->c + n0, h->ldc, 0, h->M, 0, pn);
    }
    free(scratch);
  } else {
    /* C[:, c0:c1] = sum over row panels k of A[:, k] B[k, c0:c1]. */
    int K = h->K;
    int q = (int)(panel_floats / (size_t)w);
    q = q < LA_HALF_MIN_PANEL ? LA_HALF_MIN_PANEL : q & ~15;
    if (q > K) q = K;
    float *scratch = malloc((size_t)(q > 0 ? q : 1) * (size_t)w * sizeof(float));
    if (!scratch) {
      #pragma omp atomic write
      h->failed = 1;
      return;
    }
    if (K == 0) la_sgemm1(h->a, &(la_mat){scratch, 0, w, false, w}, h->alpha, h->beta, h->c + c0,
                          h->ldc, 0, h->M, 0, w);
    for (int k0 = 0; k0 < K; k0 += q) {
      int qk = K - k0 < q ? K - k0 : q;
      la_half_block_to_f32(h->b, h->bcols, k0, k0 + qk, c0, c1, scratch, h->bf16);
      la_mat am = *h->a, pm;
      am.p = la_mat_cols(h->a, k0);
      am.cols = qk;
      la_mat_of(scratch, qk, w, w, 1, &pm);
      la_sgemm1(&am, &pm, h->alpha, k0 == 0 ? h->beta : 1.0f, h->c + c0, h->ldc, 0, h->M, 0, w);
    }
    free(scratch);
  }
}

static int la_gemm_half(const la_mat *a, la_tensor *b, bool tb, float alpha, float beta, float *c,
                        int ldc, int M, int N, int K) {
  la_half_ctx h = {a, la_data(b), b->shape[0], b->shape[1], tb, b->dtype == LA_BFLOAT16, alpha, beta,
                   c, ldc, M, N, K, 0};
  int nt = la_get_num_threads();
  double macs = (double)M * N * K;
  if (nt <= 1 || macs < LA_GEMV_PARALLEL_MACS || N < 32) {
    la_half_cols(&h, 0, N);
  } else {
    #pragma omp parallel num_threads(nt)
    {
      int t = omp_get_thread_num(), m = omp_get_num_threads();
      int lo = (int)((int64_t)N * t / m) & ~15, hi = t == m - 1 ? N : (int)((int64_t)N * (t + 1) / m) & ~15;
      la_half_cols(&h, lo, hi);
    }
  }
  if (h.failed) return la_failn("gemm: out of memory for a float32 panel of a %s weight", la_dtype_name(b->dtype));
  return 0;
}

int la_gemm(bool ta, bool tb, float alpha, la_tensor *a, la_tensor *b, float beta, la_tensor *c) {
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF], b3[LA_SHAPE_BUF];
  bool half_b = la_dtype_is_half(b->dtype);
  if (a->ndim != 2 || b->ndim != 2 || c->ndim != 2 || a->dtype != LA_FLOAT32 ||
      (b->dtype != LA_FLOAT32 && !half_b) || c->dtype != LA_FLOAT32)
    return la_failn("gemm: needs 2-d float32 tensors (b may be bfloat16 or float16; got %s, %s and %s)",
                    la_dtype_name(a->dtype), la_dtype_name(b->dtype), la_dtype_name(c->dtype));
  int64_t M = ta ? a->shape[1] : a->shape[0], K = ta ? a->shape[0] : a->shape[1];
  int64_t K2 = tb ? b->shape[1] : b->shape[0], N = tb ? b->shape[0] : b->shape[1];
  if (K != K2 || c->shape[0] != M || c->shape[1] != N)
    return la_failn("gemm: shapes %s, %s and %s do not fit", la_shape_str(b1, sizeof b1, 2, a->shape),
                    la_shape_str(b2, sizeof b2, 2, b->shape), la_shape_str(b3, sizeof b3, 2, c->shape));
  if (!la_fits_int(M) || !la_fits_int(N) || !la_fits_int(K))
    return la_failn("gemm: dimensions above 2^31 are not supported");
  la_tensor *ac = NULL, *bc = NULL;
  la_mat am, bm;
  int64_t as0 = ta ? a->stride[1] : a->stride[0], as1 = ta ? a->stride[0] : a->stride[1];
  int64_t bs0 = tb ? b->stride[1] : b->stride[0], bs1 = tb ? b->stride[0] : b->stride[1];
  if (!la_mat_of(la_fdata(a), M, K, as0, as1, &am)) {
    if (!(ac = la_contiguous(a))) return -1;
    la_mat_of(la_fdata(ac), M, K, ta ? 1 : K, ta ? M : 1, &am);
  }
  if (half_b) {
    /* A 16-bit weight: panels widened inside the product (see above). */
    int rc = 0;
    la_tensor *bh = la_contiguous(b), *cc = NULL;
    if (!bh) rc = -1;
    else if (c->stride[1] == 1 && c->stride[0] >= N) cc = la_retain(c);
    else if (!(cc = la_contiguous(c))) rc = -1;
    if (rc == 0) rc = la_gemm_half(&am, bh, tb, alpha, beta, la_fdata(cc),
                                   (int)(cc->stride[0] > 0 ? cc->stride[0] : 1), (int)M, (int)N, (int)K);
    if (rc == 0 && cc != c) rc = la_copy_(c, cc);
    if (rc == 0) c->storage->version++;
    la_release(bh);
    la_release(cc);
    la_release(ac);
    return rc;
  }
  if (!la_mat_of(la_fdata(b), K, N, bs0, bs1, &bm)) {
    if (!(bc = la_contiguous(b))) { la_release(ac); return -1; }
    la_mat_of(la_fdata(bc), K, N, tb ? 1 : N, tb ? K : 1, &bm);
  }
  int rc = 0;
  if (c->stride[1] == 1 && c->stride[0] >= N) {
    la_sgemm(&am, &bm, alpha, beta, la_fdata(c), (int)(c->stride[0] > 0 ? c->stride[0] : 1));
  } else {
    la_tensor *tmp = la_contiguous(c);
    rc = tmp ? 0 : -1;
    if (tmp) {
      la_sgemm(&am, &bm, alpha, beta, la_fdata(tmp), (int)(N > 0 ? N : 1));
      if (tmp != c) rc = la_copy_(c, tmp);
      la_release(tmp);
    }
  }
  if (rc == 0) c->storage->version++;
  la_release(ac);
  la_release(bc);
  return rc;
}

/* ---------------------------------------------------------------- matmul */

/* Makes a float32 operand BLAS-friendly in its last two dims. */
static la_tensor *la_blas_ready(la_tensor *t) {
  int nd = t->ndim;
  la_mat m;
  bool ok = la_mat_of(la_fdata(t), t->shape[nd - 2], t->shape[nd - 1], t->stride[nd - 2],
                      t->stride[nd - 1], &m);
  return ok ? la_retain(t) : la_clone(t);
}

/* Batch offsets (in elements) of every matrix of t seen in batch shape bs. */
static int64_t la_batch_offset(const la_tensor *t, int nb, const int64_t *bs, int64_t flat) {
  int64_t off = t->offset;
  int shift = nb - (t->ndim - 2);
  for (int d = nb - 1; d >= 0; d--) {
    int64_t i = flat % bs[d];
    flat /= bs[d];
    int td = d - shift;
    if (td >= 0 && t->shape[td] != 1) off += i * t->stride[td];
  }
  return off;
}

static la_tensor *la_matmul_nd(la_tensor *a, la_tensor *b);

/* A batch of products out[i] = a[i] b[i] over broadcast batch dims. */
typedef struct {
  const la_tensor *a, *b;       /* BLAS-ready operands */
  int nbatch;
  const int64_t *bs;            /* broadcast batch shape */
  int64_t M, N, K;
  float *out;
  bool one_thread_each;         /* each product on one thread (else split each) */
} la_batch_ctx;

static void la_batch_range(void *ctx, int64_t lo, int64_t hi) {
  const la_batch_ctx *c = ctx;
  const la_tensor *a = c->a, *b = c->b;
  int na = a->ndim, nb = b->ndim;
  const float *ap = a->storage->data, *bp = b->storage->data;
  int ldc = (int)(c->N > 0 ? c->N : 1);
  for (int64_t i = lo; i < hi; i++) {
    la_mat am, bm;
    la_mat_of(ap + la_batch_offset(a, c->nbatch, c->bs, i), c->M, c->K, a->stride[na - 2],
              a->stride[na - 1], &am);
    la_mat_of(bp + la_batch_offset(b, c->nbatch, c->bs, i), c->K, c->N, b->stride[nb - 2],
              b->stride[nb - 1], &bm);
    float *o = c->out + i * c->M * c->N;
    if (c->one_thread_each) la_sgemm1(&am, &bm, 1.0f, 0.0f, o, ldc, 0, (int)c->M, 0, (int)c->N);
    else la_sgemm(&am, &bm, 1.0f, 0.0f, o, ldc);
  }
}

static int la_matmul_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  la_tensor *a = n->saved[0], *b = n->saved[1];
  if (LA_NEEDS_GRAD(n, 0)) {
    la_tensor *bt = la_transpose(b, b->ndim - 2, b->ndim - 1);
    la_tensor *g = bt ? la_matmul_nd(gout, bt) : NULL;
    la_release(bt);
    gin[0] = g ? la_sum_to(g, a->ndim, a->shape) : NULL;
    la_release(g);
    if (!gin[0]) return -1;
  }
  if (LA_NEEDS_GRAD(n, 1)) {
    la_tensor *g;
    if (b->ndim == 2 && a->ndim > 2) {
      /* One GEMM over the folded batch: A^T (K, B*M) x G (B*M, N). */
      int64_t K = a->shape[a->ndim - 1], N = b->shape[1];
      la_tensor *af = la_reshape(a, 2, (int64_t[]){-1, K});
      la_tensor *gf = af ? la_reshape(gout, 2, (int64_t[]){-1, N}) : NULL;
      la_tensor *at = gf ? la_transpose(af, 0, 1) : NULL;
      g = at ? la_matmul_nd(at, gf) : NULL;
      la_release(af); la_release(gf); la_release(at);
    } else {
      la_tensor *at = la_transpose(a, a->ndim - 2, a->ndim - 1);
      la_tensor *full = at ? la_matmul_nd(at, gout) : NULL;
      la_release(at);
      g = full ? la_sum_to(full, b->ndim, b->shape) : NULL;
      la_release(full);
    }
    if (!(gin[1] = g)) return -1;
  }
  return 0;
}

/* Both operands at least 2-d. */
static la_tensor *la_matmul_nd(la_tensor *a, la_tensor *b) {
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF];
  int na = a->ndim, nb = b->ndim;
  int64_t M = a->shape[na - 2], K = a->shape[na - 1], N = b->shape[nb - 1];
  if (b->shape[nb - 2] != K)
    return la_fail("matmul: shapes %s and %s do not match (inner sizes %lld and %lld)",
                   la_shape_str(b1, sizeof b1, na, a->shape), la_shape_str(b2, sizeof b2, nb, b->shape),
                   (long long)K, (long long)b->shape[nb - 2]);
  /* Broadcast the batch dims. */
  la_tensor ba = {.ndim = na - 2}, bb = {.ndim = nb - 2};
  memcpy(ba.shape, a->shape, sizeof(int64_t) * (size_t)(na - 2));
  memcpy(bb.shape, b->shape, sizeof(int64_t) * (size_t)(nb - 2));
  int nbatch;
  int64_t bs[LA_MAX_DIM], shape[LA_MAX_DIM];
  if (la_broadcast_shape("matmul", &ba, &bb, &nbatch, bs) < 0) {
    la_error_prefix("");
    return la_fail("matmul: batch dims of %s and %s cannot be broadcast together",
                   la_shape_str(b1, sizeof b1, na, a->shape), la_shape_str(b2, sizeof b2, nb, b->shape));
  }
  if (nbatch + 2 > LA_MAX_DIM) return la_fail("matmul: too many dimensions");
  int64_t batch = 1;
  for (int d = 0; d < nbatch; d++) { shape[d] = bs[d]; batch *= bs[d]; }
  shape[nbatch] = M;
  shape[nbatch + 1] = N;
  if (!la_fits_int(M) || !la_fits_int(N) || !la_fits_int(K))
    return la_fail("matmul: dimensions above 2^31 are not supported");
  la_tensor *out = la_empty(LA_FLOAT32, nbatch + 2, shape);
  if (!out) return NULL;
  /* The reshapes and copies below are plumbing, not part of the graph. */
  bool grad_mode = la_set_grad_enabled(false);
  la_tensor *ac = NULL, *bc = la_blas_ready(b);
  if (!bc) { la_set_grad_enabled(grad_mode); la_release(out); return NULL; }
  la_mat bm0;
  if (nb == 2 && na > 2) {
    /* (..., M, K) x (K, N): one tall GEMM when a's batch folds into rows. */
    ac = la_reshape(a, 2, (int64_t[]){-1, K});
    la_tensor *af = ac ? la_blas_ready(ac) : NULL;
    la_release(ac);
    ac = af;
    if (!ac) { la_set_grad_enabled(grad_mode); la_release(bc); la_release(out); return NULL; }
    la_mat am;
    la_mat_of(la_fdata(ac), ac->shape[0], K, ac->stride[0], ac->stride[1], &am);
    la_mat_of(la_fdata(bc), K, N, bc->stride[0], bc->stride[1], &bm0);
    la_sgemm(&am, &bm0, 1.0f, 0.0f, la_fdata(out), (int)(N > 0 ? N : 1));
  } else {
    ac = la_blas_ready(a);
    if (!ac) { la_set_grad_enabled(grad_mode); la_release(bc); la_release(out); return NULL; }
    int nt = la_get_num_threads();
    double macs = (double)M * N * K;
    /* Many small products: one per thread.  Few large ones: split each. */
    bool per_thread = nt > 1 && batch >= nt && macs < 64.0 * LA_GEMM_PARALLEL_MACS &&
                      macs * (double)batch >= LA_GEMM_PARALLEL_MACS;
    la_batch_ctx c = {ac, bc, nbatch, bs, M, N, K, la_fdata(out), per_thread};
    la_parallel_range(batch, per_thread, la_batch_range, &c);
  }
  la_release(ac);
  la_release(bc);
  la_set_grad_enabled(grad_mode);
  la_tensor *in[2] = {a, b};
  la_node *n;
  out = la_record(out, "matmul", la_matmul_backward, 2, in, 2, &n);
  if (n && (la_node_save(n, 0, a) < 0 || la_node_save(n, 1, b) < 0)) {
    la_release(out);
    return NULL;
  }
  return out;
}

la_tensor *la_matmul(la_tensor *a, la_tensor *b) {
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF];
  if (a->dtype != LA_FLOAT32 || b->dtype != LA_FLOAT32)
    return la_fail("matmul: needs float32 tensors (got %s and %s)", la_dtype_name(a->dtype),
                   la_dtype_name(b->dtype));
  if (a->ndim == 0 || b->ndim == 0)
    return la_fail("matmul: both arguments need at least one dimension (got shapes %s and %s)",
                   la_shape_str(b1, sizeof b1, a->ndim, a->shape),
                   la_shape_str(b2, sizeof b2, b->ndim, b->shape));
  int64_t ka = a->shape[a->ndim - 1], kb = b->shape[b->ndim == 1 ? 0 : b->ndim - 2];
  if (ka != kb)
    return la_fail("matmul: shapes %s and %s do not match (inner sizes %lld and %lld)",
                   la_shape_str(b1, sizeof b1, a->ndim, a->shape),
                   la_shape_str(b2, sizeof b2, b->ndim, b->shape), (long long)ka, (long long)kb);
  /* Vectors become 1-row / 1-column matrices, as in NumPy, through views
  ** (so their gradients come back through the view's backward). */
  la_tensor *a2 = a->ndim == 1 ? la_unsqueeze(a, 0) : la_retain(a);
  la_tensor *b2_ = a2 ? (b->ndim == 1 ? la_unsqueeze(b, 1) : la_retain(b)) : NULL;
  la_tensor *r = b2_ ? la_matmul_nd(a2, b2_) : NULL;
  if (r && b->ndim == 1) {
    la_tensor *s = la_squeeze(r, r->ndim - 1);
    la_release(r);
    r = s;
  }
  if (r && a->ndim == 1) {
    la_tensor *s = la_squeeze(r, r->ndim - (b->ndim == 1 ? 1 : 2));
    la_release(r);
    r = s;
  }
  la_release(a2);
  la_release(b2_);
  return r;
}
