/*
** la_index.c -- joining and indexing: cat, stack, index_select, gather, and
** their adjoints index_add_ and scatter_add_ (which are also the backward
** passes of the first two).
**
** Index tensors hold 0-based positions (int32 or int64), as every tokenizer
** and checkpoint writes them; each index is checked before anything is
** written, and a bad one is reported with its position and value.
*/
#include <stdlib.h>
#include <string.h>

#include "la.h"

static int la_check_index_dtype(const char *op, const la_tensor *idx) {
  if (idx->dtype != LA_INT32 && idx->dtype != LA_INT64)
    return la_failn("%s: the index must be an int32 or int64 tensor (got %s)", op,
                    la_dtype_name(idx->dtype));
  return 0;
}

static inline int64_t la_index_at(const la_tensor *idx, int64_t i) {
  return idx->dtype == LA_INT32 ? ((const int32_t *)la_data(idx))[i]
                                : ((const int64_t *)la_data(idx))[i];
}

/* Every value of a contiguous index in [0, size). */
static int la_check_index_range(const char *op, const la_tensor *idx, int64_t size, int dim) {
  for (int64_t i = 0, n = la_numel(idx); i < n; i++) {
    int64_t v = la_index_at(idx, i);
    if (v < 0 || v >= size)
      return la_failn("%s: index %lld (element %lld of the index) is out of range for "
                      "dimension %d of size %lld; indices in tensors are 0-based", op,
                      (long long)v, (long long)i + 1, dim + 1, (long long)size);
  }
  return 0;
}

/* ---------------------------------------------------------------- cat, stack */

static int la_cat_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  int dim = (int)n->iarg[0];
  int64_t off = 0;
  for (int i = 0; i < n->n_in; i++) {
    int64_t size = n->xarg[i];
    if (LA_NEEDS_GRAD(n, i) && !(gin[i] = la_narrow(gout, dim, off, size))) return -1;
    off += size;
  }
  return 0;
}

la_tensor *la_cat(la_tensor **ts, int n, int dim) {
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF];
  if (n < 1) return la_fail("cat: needs at least one tensor");
  la_tensor *t0 = ts[0];
  if ((dim = la_norm_dim("cat", dim, t0->ndim)) < 0) return NULL;
  int64_t shape[LA_MAX_DIM];
  memcpy(shape, t0->shape, sizeof shape);
  shape[dim] = 0;
  for (int i = 0; i < n; i++) {
    la_tensor *t = ts[i];
    bool ok = t->ndim == t0->ndim;
    for (int d = 0; ok && d < t->ndim; d++) ok = d == dim || t->shape[d] == t0->shape[d];
    if (!ok)
      return la_fail("cat: tensor %d has shape %s, which does not match %s outside dimension %d",
                     i + 1, la_shape_str(b1, sizeof b1, t->ndim, t->shape),
                     la_shape_str(b2, sizeof b2, t0->ndim, t0->shape), dim + 1);
    if (t->dtype != t0->dtype)
      return la_fail("cat: tensor %d is %s but tensor 1 is %s", i + 1, la_dtype_name(t->dtype),
                     la_dtype_name(t0->dtype));
    shape[dim] += t->shape[dim];
  }
  la_tensor *out = la_empty(t0->dtype, t0->ndim, shape);
  if (!out) return NULL;
  bool grad_mode = la_set_grad_enabled(false);
  int64_t off = 0;
  for (int i = 0; i < n && out; i++) {
    la_tensor *part = la_narrow(out, dim, off, ts[i]->shape[dim]);
    if (!part || la_copy_(part, ts[i]) < 0) la_release_p(&out);
    la_release(part);
    off += ts[i]->shape[dim];
  }
  la_set_grad_enabled(grad_mode);
  if (!out) return NULL;
  la_node *node;
  out = la_record(out, "cat", la_cat_backward, n, ts, 0, &node);
  if (node) {
    node->iarg[0] = dim;
    if (!(node->xarg = malloc((size_t)n * sizeof(int64_t)))) {
      la_release(out);
      return la_fail("cat: out of memory");
    }
    for (int i = 0; i < n; i++) node->xarg[i] = ts[i]->shape[dim];
  }
  return out;
}

la_tensor *la_stack(la_tensor **ts, int n, int dim) {
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF];
  if (n < 1) return la_fail("stack: needs at least one tensor");
  for (int i = 1; i < n; i++)
    if (!la_same_shape(ts[i], ts[0]))
      return la_fail("stack: tensor %d has shape %s but tensor 1 has %s", i + 1,
                     la_shape_str(b1, sizeof b1, ts[i]->ndim, ts[i]->shape),
                     la_shape_str(b2, sizeof b2, ts[0]->ndim, ts[0]->shape));
  if (dim < 0 || dim > ts[0]->ndim)
    return la_fail("stack: dimension %d out of range (use 1..%d)", dim + 1, ts[0]->ndim + 1);
  la_tensor **us = calloc((size_t)n, sizeof *us);
  if (!us) return la_fail("stack: out of memory");
  la_tensor *out = NULL;
  int i = 0;
  for (; i < n; i++)
    if (!(us[i] = la_unsqueeze(ts[i], dim))) break;
  if (i == n) out = la_cat(us, n, dim);
  for (int j = 0; j < i; j++) la_release(us[j]);
  free(us);
  return out;
}

/* ---------------------------------------------------------------- index_select */

static int la_index_select_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  la_tensor *z = la_full(LA_FLOAT32, n->in[0].ndim, n->in[0].shape, 0.0);
  if (!z) return -1;
  if (la_index_add_(z, (int)n->iarg[0], n->saved[0], gout) < 0) { la_release(z); return -1; }
  gin[0] = z;
  return 0;
}

/* Rows [lo, hi) of index_select's output, seen as (outer, k) rows of
** 'row' bytes each. */
typedef struct {
  char *dst;
  const char *src;
  const la_tensor *idx;
  int64_t k, n;
  size_t row;
} la_select_rows_ctx;

static void la_select_rows(void *ctx, int64_t lo, int64_t hi) {
  const la_select_rows_ctx *c = ctx;
  for (int64_t f = lo; f < hi; f++) {
    int64_t o = f / c->k, j = f % c->k;
    memcpy(c->dst + (size_t)f * c->row, c->src + (size_t)(o * c->n + la_index_at(c->idx, j)) * c->row,
           c->row);
  }
}

la_tensor *la_index_select(la_tensor *t, int dim, la_tensor *index) {
  char b1[LA_SHAPE_BUF];
  if ((dim = la_norm_dim("index_select", dim, t->ndim)) < 0) return NULL;
  if (la_check_index_dtype("index_select", index) < 0) return NULL;
  if (index->ndim != 1)
    return la_fail("index_select: the index must be 1-d (got shape %s)",
                   la_shape_str(b1, sizeof b1, index->ndim, index->shape));
  la_tensor *idx = la_contiguous(index), *x = idx ? la_contiguous(t) : NULL;
  if (!x) { la_release(idx); return NULL; }
  if (la_check_index_range("index_select", idx, t->shape[dim], dim) < 0) {
    la_release(idx); la_release(x);
    return NULL;
  }
  int64_t shape[LA_MAX_DIM], k = idx->shape[0];
  memcpy(shape, t->shape, sizeof shape);
  shape[dim] = k;
  la_tensor *out = la_empty(t->dtype, t->ndim, shape);
  if (out) {
    int64_t outer = 1, inner = 1, n = t->shape[dim];
    for (int d = 0; d < dim; d++) outer *= t->shape[d];
    for (int d = dim + 1; d < t->ndim; d++) inner *= t->shape[d];
    la_select_rows_ctx c = {la_data(out), la_data(x), idx, k, n,
                            (size_t)inner * la_dtype_size(t->dtype)};
    la_parallel_range(outer * k, outer * k * inner >= LA_PARALLEL_GRAIN, la_select_rows, &c);
  }
  la_release(x);
  if (!out || t->dtype != LA_FLOAT32) { la_release(idx); return out; }
  la_node *node;
  out = la_record(out, "index_select", la_index_select_backward, 1, &t, 1, &node);
  if (node) {
    node->iarg[0] = dim;
    if (la_node_save(node, 0, idx) < 0) la_release_p(&out);
  }
  la_release(idx);
  return out;
}

/* Outer slices [lo, hi) of index_add: each slice adds its rows in order,
** since repeated indices within a slice would race. */
typedef struct {
  float *dp;
  const float *sp;
  const la_tensor *idx;
  int64_t k, n, inner;
} la_index_add_ctx;

static void la_index_add_slices(void *ctx, int64_t lo, int64_t hi) {
  const la_index_add_ctx *c = ctx;
  for (int64_t o = lo; o < hi; o++)
    for (int64_t j = 0; j < c->k; j++) {
      float *drow = c->dp + (o * c->n + la_index_at(c->idx, j)) * c->inner;
      const float *srow = c->sp + (o * c->k + j) * c->inner;
      for (int64_t i = 0; i < c->inner; i++) drow[i] += srow[i];
    }
}

int la_index_add_(la_tensor *dst, int dim, la_tensor *index, la_tensor *src) {
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF];
  if ((dim = la_norm_dim("index_add", dim, dst->ndim)) < 0) return -1;
  if (la_check_compute("index_add", dst) < 0 || la_check_compute("index_add", src) < 0) return -1;
  if (la_check_inplace("index_add", dst) < 0 || la_check_index_dtype("index_add", index) < 0)
    return -1;
  if (dst->dtype != LA_FLOAT32 || src->dtype != LA_FLOAT32)
    return la_failn("index_add: needs float32 tensors");
  if (index->ndim != 1 || src->ndim != dst->ndim || src->shape[dim] != index->shape[0])
    goto bad;
  for (int d = 0; d < dst->ndim; d++)
    if (d != dim && src->shape[d] != dst->shape[d]) goto bad;
  if (!la_is_contiguous(dst)) return la_failn("index_add: the destination must be contiguous");
  la_tensor *idx = la_contiguous(index), *s = idx ? la_contiguous(src) : NULL;
  if (!s) { la_release(idx); return -1; }
  int rc = la_check_index_range("index_add", idx, dst->shape[dim], dim);
  if (rc == 0) {
    int64_t outer = 1, inner = 1, n = dst->shape[dim], k = idx->shape[0];
    for (int d = 0; d < dim; d++) outer *= dst->shape[d];
    for (int d = dim + 1; d < dst->ndim; d++) inner *= dst->shape[d];
    /* Parallel over outer slices only (see la_index_add_slices). */
    la_index_add_ctx c = {la_fdata(dst), la_fdata(s), idx, k, n, inner};
    la_parallel_range(outer, outer * k * inner >= LA_PARALLEL_GRAIN, la_index_add_slices, &c);
    dst->storage->version++;
  }
  la_release(idx);
  la_release(s);
  return rc;
bad:
  return la_failn("index_add: source of shape %s does not fit destination %s with an index of %lld "
                  "entries along dimension %d", la_shape_str(b1, sizeof b1, src->ndim, src->shape),
                  la_shape_str(b2, sizeof b2, dst->ndim, dst->shape),
                  (long long)la_numel(index), dim + 1);
}

/* ---------------------------------------------------------------- gather */

/* Walks every element of an index of shape ishape, calling back with the
** flat position in the index and the offset of the addressed element of a
** contiguous tensor of shape tshape. */
typedef struct {
  int ndim, dim;
  const int64_t *ishape, *tshape;
} la_gather_walk;

static int64_t la_gather_offset(const la_gather_walk *w, const int64_t *pos, int64_t v) {
  int64_t off = 0;
  for (int d = 0; d < w->ndim; d++) off = off * w->tshape[d] + (d == w->dim ? v : pos[d]);
  return off;
}

static int la_gather_check(const char *op, const la_tensor *t, int dim, const la_tensor *index) {
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF];
  if (la_check_index_dtype(op, index) < 0) return -1;
  bool ok = index->ndim == t->ndim;
  for (int d = 0; ok && d < t->ndim; d++) ok = d == dim || index->shape[d] <= t->shape[d];
  if (!ok)
    return la_failn("%s: index of shape %s does not fit a tensor of shape %s (same number of "
                    "dims, no larger outside dimension %d)", op,
                    la_shape_str(b1, sizeof b1, index->ndim, index->shape),
                    la_shape_str(b2, sizeof b2, t->ndim, t->shape), dim + 1);
  return 0;
}

static bool la_next_pos(int64_t *pos, const int64_t *shape, int ndim) {
  for (int d = ndim - 1; d >= 0; d--) {
    if (++pos[d] < shape[d]) return true;
    pos[d] = 0;
  }
  return false;
}

static int la_gather_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  la_tensor *z = la_full(LA_FLOAT32, n->in[0].ndim, n->in[0].shape, 0.0);
  if (!z) return -1;
  if (la_scatter_add_(z, (int)n->iarg[0], n->saved[0], gout) < 0) { la_release(z); return -1; }
  gin[0] = z;
  return 0;
}

la_tensor *la_gather(la_tensor *t, int dim, la_tensor *index) {
  if ((dim = la_norm_dim("gather", dim, t->ndim)) < 0) return NULL;
  if (la_check_compute("gather", t) < 0) return NULL;
  if (la_gather_check("gather", t, dim, index) < 0) return NULL;
  la_tensor *idx = la_contiguous(index), *x = idx ? la_contiguous(t) : NULL;
  if (!x) { la_release(idx); return NULL; }
  la_tensor *out = NULL;
  if (la_check_index_range("gather", idx, t->shape[dim], dim) == 0 &&
      (out = la_empty(t->dtype, idx->ndim, idx->shape)) != NULL) {
    la_gather_walk w = {t->ndim, dim, idx->shape, x->shape};
    size_t es = la_dtype_size(t->dtype);
    int64_t pos[LA_MAX_DIM] = {0}, n = la_numel(idx);
    for (int64_t i = 0; i < n; i++, la_next_pos(pos, idx->shape, idx->ndim))
      memcpy((char *)la_data(out) + (size_t)i * es,
             (const char *)la_data(x) + (size_t)la_gather_offset(&w, pos, la_index_at(idx, i)) * es, es);
  }
  la_release(x);
  if (!out || t->dtype != LA_FLOAT32) { la_release(idx); return out; }
  la_node *node;
  out = la_record(out, "gather", la_gather_backward, 1, &t, 1, &node);
  if (node) {
    node->iarg[0] = dim;
    if (la_node_save(node, 0, idx) < 0) la_release_p(&out);
  }
  la_release(idx);
  return out;
}

int la_scatter_add_(la_tensor *dst, int dim, la_tensor *index, la_tensor *src) {
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF];
  if ((dim = la_norm_dim("scatter_add", dim, dst->ndim)) < 0) return -1;
  if (la_check_compute("scatter_add", dst) < 0 || la_check_compute("scatter_add", src) < 0) return -1;
  if (la_check_inplace("scatter_add", dst) < 0) return -1;
  if (la_gather_check("scatter_add", dst, dim, index) < 0) return -1;
  if (dst->dtype != LA_FLOAT32 || src->dtype != LA_FLOAT32)
    return la_failn("scatter_add: needs float32 tensors");
  if (!la_same_shape(src, index))
    return la_failn("scatter_add: source shape %s differs from the index shape %s",
                    la_shape_str(b1, sizeof b1, src->ndim, src->shape),
                    la_shape_str(b2, sizeof b2, index->ndim, index->shape));
  if (!la_is_contiguous(dst)) return la_failn("scatter_add: the destination must be contiguous");
  la_tensor *idx = la_contiguous(index), *s = idx ? la_contiguous(src) : NULL;
  if (!s) { la_release(idx); return -1; }
  int rc = la_check_index_range("scatter_add", idx, dst->shape[dim], dim);
  if (rc == 0) {
    la_gather_walk w = {dst->ndim, dim, idx->shape, dst->shape};
    int64_t pos[LA_MAX_DIM] = {0}, n = la_numel(idx);
    float *dp = la_fdata(dst);
    const float *sp = la_fdata(s);
    for (int64_t i = 0; i < n; i++, la_next_pos(pos, idx->shape, idx->ndim))
      dp[la_gather_offset(&w, pos, la_index_at(idx, i))] += sp[i];
    dst->storage->version++;
  }
  la_release(idx);
  la_release(s);
  return rc;
}
