/*
** la_iter.c -- see la_iter.h.
*/
#include <omp.h>
#include <string.h>

#include "la_iter.h"

void la_broadcast_strides(const la_tensor *t, int ndim, const int64_t *shape, int64_t *out) {
  int shift = ndim - t->ndim;
  for (int d = 0; d < ndim; d++) {
    int td = d - shift;
    out[d] = (td < 0 || t->shape[td] == 1 || shape[d] == 1) ? 0 : t->stride[td];
  }
}

void la_iter_init(la_iter *it, int ndim, const int64_t *shape, int nops,
                  char *const *base, const int64_t *const *elem_strides,
                  const size_t *elem_sizes) {
  it->nops = nops;
  it->numel = 1;
  for (int d = 0; d < ndim; d++) it->numel *= shape[d];
  for (int k = 0; k < nops; k++) it->base[k] = base[k];
  /* Keep dims of size > 1, merging a dim into the previous kept one when
  ** every operand steps over it exactly as one longer dim would. */
  int m = 0;
  for (int d = 0; d < ndim; d++) {
    if (shape[d] == 1) continue;
    bool merge = m > 0;
    for (int k = 0; k < nops && merge; k++)
      merge = it->stride[k][m - 1] == (int64_t)elem_sizes[k] * elem_strides[k][d] * shape[d];
    if (merge) {
      it->shape[m - 1] *= shape[d];
      for (int k = 0; k < nops; k++) it->stride[k][m - 1] = (int64_t)elem_sizes[k] * elem_strides[k][d];
    } else {
      it->shape[m] = shape[d];
      for (int k = 0; k < nops; k++) it->stride[k][m] = (int64_t)elem_sizes[k] * elem_strides[k][d];
      m++;
    }
  }
  if (m == 0) {   /* a single element */
    it->shape[0] = 1;
    for (int k = 0; k < nops; k++) it->stride[k][0] = 0;
    m = 1;
  }
  it->ndim = m;
}

/* Walks elements [lo, hi) of the space, a row (or part of one) at a time. */
static void la_iter_range(const la_iter *it, int64_t lo, int64_t hi, la_row_fn fn, void *ctx) {
  int nd = it->ndim, last = nd - 1;
  int64_t idx[LA_MAX_DIM], rem = lo;
  char *p[LA_ITER_MAX_OPS];
  int64_t s[LA_ITER_MAX_OPS];
  for (int d = last; d >= 0; d--) {
    idx[d] = rem % it->shape[d];
    rem /= it->shape[d];
  }
  for (int k = 0; k < it->nops; k++) {
    p[k] = it->base[k];
    for (int d = 0; d < nd; d++) p[k] += idx[d] * it->stride[k][d];
    s[k] = it->stride[k][last];
  }
  int64_t pos = lo;
  while (pos < hi) {
    int64_t take = it->shape[last] - idx[last];
    if (take > hi - pos) take = hi - pos;
    fn(ctx, take, p, s);
    pos += take;
    if (pos >= hi) break;
    /* Next row: carry into the outer dims. */
    for (int k = 0; k < it->nops; k++) p[k] -= (idx[last]) * it->stride[k][last];
    idx[last] = 0;
    int d = last - 1;
    for (; d >= 0; d--) {
      idx[d]++;
      for (int k = 0; k < it->nops; k++) p[k] += it->stride[k][d];
      if (idx[d] < it->shape[d]) break;
      for (int k = 0; k < it->nops; k++) p[k] -= idx[d] * it->stride[k][d];
      idx[d] = 0;
    }
  }
}

void la_iter_run_serial(const la_iter *it, la_row_fn fn, void *ctx) {
  if (it->numel > 0) la_iter_range(it, 0, it->numel, fn, ctx);
}

void la_iter_run(const la_iter *it, la_row_fn fn, void *ctx) {
  int64_t n = it->numel;
  int nt = la_get_num_threads();
  if (n < LA_PARALLEL_GRAIN || nt <= 1) {
    la_iter_run_serial(it, fn, ctx);
    return;
  }
  #pragma omp parallel num_threads(nt)
  {
    int t = omp_get_thread_num(), m = omp_get_num_threads();
    int64_t lo = n * t / m, hi = n * (t + 1) / m;
    if (lo < hi) la_iter_range(it, lo, hi, fn, ctx);
  }
}
