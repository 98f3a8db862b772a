/*
** la_view.c -- views that share storage (view, transpose, narrow, expand, ...)
** and the copies between layouts and dtypes (contiguous, clone, copy_, fill_).
**
** A view is a new header over the same storage.  Each view op records a node
** whose backward maps the gradient back to the input's geometry: reshape it,
** transpose it back, scatter it into zeros, or sum over expanded dims.
*/
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "la_iter.h"

/* A view of t with new geometry, recorded under op when t tracks grad. */
static la_tensor *la_make_view(la_tensor *t, int ndim, const int64_t *shape,
                               const int64_t *stride, int64_t offset, const char *op,
                               la_backward_fn fn, la_node **node) {
  if (node) *node = NULL;
  la_tensor *v = la_alias(t);
  if (!v) return NULL;
  v->ndim = ndim;
  memcpy(v->shape, shape, (size_t)ndim * sizeof(int64_t));
  memcpy(v->stride, stride, (size_t)ndim * sizeof(int64_t));
  v->offset = offset;
  la_node *n;
  v = la_record(v, op, fn, 1, &t, 0, &n);
  if (node) *node = n;
  return v;
}

/* ---------------------------------------------------------------- reshape */

static int la_reshape_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  gin[0] = la_reshape(gout, n->in[0].ndim, n->in[0].shape);
  return gin[0] ? 0 : -1;
}

/* Resolves one -1 in shape and checks the element count. */
static int la_infer_shape(const char *op, const la_tensor *t, int ndim, const int64_t *shape,
                          int64_t *out) {
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF];
  int infer = -1;
  int64_t known = 1, n = la_numel(t);
  if (ndim < 0 || ndim > LA_MAX_DIM)
    return la_failn("%s: a tensor may have at most %d dimensions (got %d)", op, LA_MAX_DIM, ndim);
  for (int i = 0; i < ndim; i++) {
    if (shape[i] == -1) {
      if (infer >= 0) return la_failn("%s: only one size may be -1", op);
      infer = i;
    } else if (shape[i] < 0) {
      return la_failn("%s: invalid size %lld", op, (long long)shape[i]);
    } else {
      known *= shape[i];
    }
    out[i] = shape[i];
  }
  if (infer >= 0) {
    if (known == 0 || n % known != 0)
      return la_failn("%s: cannot infer the -1 size of %s for a tensor of shape %s", op,
                      la_shape_str(b1, sizeof b1, ndim, shape),
                      la_shape_str(b2, sizeof b2, t->ndim, t->shape));
    out[infer] = n / known;
    known *= out[infer];
  }
  if (known != n)
    return la_failn("%s: shape %s has %lld elements but the tensor of shape %s has %lld", op,
                    la_shape_str(b1, sizeof b1, ndim, shape), (long long)known,
                    la_shape_str(b2, sizeof b2, t->ndim, t->shape), (long long)n);
  return 0;
}

/* Strides for viewing t as shape without copying, if its layout allows
** (dims may be split or merged only within runs that are contiguous). */
static bool la_view_strides(const la_tensor *t, int ndim, const int64_t *shape, int64_t *out) {
  if (la_numel(t) == 0 || t->ndim == 0 || la_is_contiguous(t)) {
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) { out[i] = s; s *= shape[i]; }
    return true;
  }
  int vd = ndim - 1;
  int64_t chunk_stride = t->stride[t->ndim - 1], tnumel = 1, vnumel = 1;
  for (int td = t->ndim - 1; td >= 0; td--) {
    tnumel *= t->shape[td];
    if (td == 0 || (t->shape[td - 1] != 1 && t->stride[td - 1] != tnumel * chunk_stride)) {
      while (vd >= 0 && (vnumel < tnumel || shape[vd] == 1)) {
        out[vd] = vnumel * chunk_stride;
        vnumel *= shape[vd];
        vd--;
      }
      if (vnumel != tnumel) return false;
      if (td > 0) {
        chunk_stride = t->stride[td - 1];
        tnumel = 1;
        vnumel = 1;
      }
    }
  }
  return vd == -1;
}

la_tensor *la_view(la_tensor *t, int ndim, const int64_t *shape) {
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF];
  int64_t s[LA_MAX_DIM], st[LA_MAX_DIM];
  if (la_infer_shape("view", t, ndim, shape, s) < 0) return NULL;
  if (!la_view_strides(t, ndim, s, st))
    return la_fail("view: a tensor of shape %s with this layout cannot be viewed as %s "
                   "without copying; use reshape (or contiguous() first)",
                   la_shape_str(b1, sizeof b1, t->ndim, t->shape),
                   la_shape_str(b2, sizeof b2, ndim, s));
  return la_make_view(t, ndim, s, st, t->offset, "view", la_reshape_backward, NULL);
}

la_tensor *la_reshape(la_tensor *t, int ndim, const int64_t *shape) {
  int64_t s[LA_MAX_DIM], st[LA_MAX_DIM];
  if (la_infer_shape("reshape", t, ndim, shape, s) < 0) return NULL;
  if (la_view_strides(t, ndim, s, st))
    return la_make_view(t, ndim, s, st, t->offset, "reshape", la_reshape_backward, NULL);
  la_tensor *c = la_contiguous(t);
  if (!c) return NULL;
  la_tensor *v = la_view(c, ndim, s);
  la_release(c);
  return v;
}

la_tensor *la_flatten(la_tensor *t, int start, int end) {
  if (t->ndim == 0) return la_reshape(t, 1, (int64_t[]){1});
  if ((start = la_norm_dim("flatten", start, t->ndim)) < 0) return NULL;
  if ((end = la_norm_dim("flatten", end, t->ndim)) < 0) return NULL;
  if (start > end) return la_fail("flatten: start dim %d is after end dim %d", start + 1, end + 1);
  int64_t shape[LA_MAX_DIM];
  int nd = 0;
  for (int i = 0; i < start; i++) shape[nd++] = t->shape[i];
  int64_t m = 1;
  for (int i = start; i <= end; i++) m *= t->shape[i];
  shape[nd++] = m;
  for (int i = end + 1; i < t->ndim; i++) shape[nd++] = t->shape[i];
  return la_reshape(t, nd, shape);
}

la_tensor *la_squeeze(la_tensor *t, int dim) {
  int64_t shape[LA_MAX_DIM], stride[LA_MAX_DIM];
  int nd = 0;
  if (dim >= 0 && (dim = la_norm_dim("squeeze", dim, t->ndim)) < 0) return NULL;
  for (int i = 0; i < t->ndim; i++) {
    bool drop = t->shape[i] == 1 && (dim < 0 || dim == i);
    if (!drop) { shape[nd] = t->shape[i]; stride[nd] = t->stride[i]; nd++; }
  }
  return la_make_view(t, nd, shape, stride, t->offset, "squeeze", la_reshape_backward, NULL);
}

la_tensor *la_unsqueeze(la_tensor *t, int dim) {
  if (t->ndim >= LA_MAX_DIM)
    return la_fail("unsqueeze: a tensor may have at most %d dimensions", LA_MAX_DIM);
  if (dim < 0 || dim > t->ndim)
    return la_fail("unsqueeze: dimension %d out of range for a %d-d tensor (use 1..%d)",
                   dim + 1, t->ndim, t->ndim + 1);
  int64_t shape[LA_MAX_DIM], stride[LA_MAX_DIM];
  for (int i = 0, j = 0; i <= t->ndim; i++) {
    if (i == dim) {
      shape[i] = 1;
      stride[i] = dim < t->ndim ? t->shape[dim] * t->stride[dim] : 1;
    } else {
      shape[i] = t->shape[j];
      stride[i] = t->stride[j];
      j++;
    }
  }
  return la_make_view(t, t->ndim + 1, shape, stride, t->offset, "unsqueeze",
                      la_reshape_backward, NULL);
}

/* ---------------------------------------------------------------- permute */

static int la_permute_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  int inv[LA_MAX_DIM];
  for (int i = 0; i < gout->ndim; i++) inv[n->iarg[i]] = i;
  gin[0] = la_permute(gout, inv);
  return gin[0] ? 0 : -1;
}

la_tensor *la_permute(la_tensor *t, const int *perm) {
  int64_t shape[LA_MAX_DIM], stride[LA_MAX_DIM];
  bool seen[LA_MAX_DIM] = {false};
  for (int i = 0; i < t->ndim; i++) {
    int p = perm[i];
    if (p < 0 || p >= t->ndim || seen[p])
      return la_fail("permute: the dims must be a permutation of 1..%d", t->ndim);
    seen[p] = true;
    shape[i] = t->shape[p];
    stride[i] = t->stride[p];
  }
  la_node *n = NULL;
  la_tensor *v = la_make_view(t, t->ndim, shape, stride, t->offset, "permute",
                              la_permute_backward, &n);
  if (n) for (int i = 0; i < t->ndim; i++) n->iarg[i] = perm[i];
  return v;
}

la_tensor *la_transpose(la_tensor *t, int d0, int d1) {
  if ((d0 = la_norm_dim("transpose", d0, t->ndim)) < 0) return NULL;
  if ((d1 = la_norm_dim("transpose", d1, t->ndim)) < 0) return NULL;
  int perm[LA_MAX_DIM];
  for (int i = 0; i < t->ndim; i++) perm[i] = i;
  perm[d0] = d1;
  perm[d1] = d0;
  return la_permute(t, perm);
}

/* ---------------------------------------------------------------- narrow */

/* Gradient of a slice: zeros of the input's shape with gout in the slice. */
static int la_slice_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  la_tensor *z = la_full(LA_FLOAT32, n->in[0].ndim, n->in[0].shape, 0.0);
  if (!z) return -1;
  la_tensor *part = n->iarg[3] ? la_select(z, (int)n->iarg[0], n->iarg[1])
                               : la_narrow(z, (int)n->iarg[0], n->iarg[1], n->iarg[2]);
  if (!part || la_copy_(part, gout) < 0) {
    la_release(part);
    la_release(z);
    return -1;
  }
  la_release(part);
  gin[0] = z;
  return 0;
}

la_tensor *la_narrow(la_tensor *t, int dim, int64_t start, int64_t length) {
  char b1[LA_SHAPE_BUF];
  if ((dim = la_norm_dim("narrow", dim, t->ndim)) < 0) return NULL;
  if (start < 0 || length < 0 || start + length > t->shape[dim])
    return la_fail("narrow: positions %lld..%lld are out of range for dimension %d of a "
                   "tensor of shape %s", (long long)start + 1, (long long)(start + length),
                   dim + 1, la_shape_str(b1, sizeof b1, t->ndim, t->shape));
  int64_t shape[LA_MAX_DIM];
  memcpy(shape, t->shape, sizeof shape);
  shape[dim] = length;
  la_node *n = NULL;
  la_tensor *v = la_make_view(t, t->ndim, shape, t->stride, t->offset + start * t->stride[dim],
                              "narrow", la_slice_backward, &n);
  if (n) { n->iarg[0] = dim; n->iarg[1] = start; n->iarg[2] = length; n->iarg[3] = 0; }
  return v;
}

la_tensor *la_select(la_tensor *t, int dim, int64_t index) {
  char b1[LA_SHAPE_BUF];
  if ((dim = la_norm_dim("select", dim, t->ndim)) < 0) return NULL;
  if (index < 0 || index >= t->shape[dim])
    return la_fail("select: index %lld is out of range for dimension %d of size %lld (shape %s)",
                   (long long)index + 1, dim + 1, (long long)t->shape[dim],
                   la_shape_str(b1, sizeof b1, t->ndim, t->shape));
  int64_t shape[LA_MAX_DIM], stride[LA_MAX_DIM];
  for (int i = 0, j = 0; i < t->ndim; i++)
    if (i != dim) { shape[j] = t->shape[i]; stride[j] = t->stride[i]; j++; }
  la_node *n = NULL;
  la_tensor *v = la_make_view(t, t->ndim - 1, shape, stride, t->offset + index * t->stride[dim],
                              "select", la_slice_backward, &n);
  if (n) { n->iarg[0] = dim; n->iarg[1] = index; n->iarg[2] = 1; n->iarg[3] = 1; }
  return v;
}

/* ---------------------------------------------------------------- expand */

static int la_expand_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  gin[0] = la_sum_to(gout, n->in[0].ndim, n->in[0].shape);
  return gin[0] ? 0 : -1;
}

la_tensor *la_expand(la_tensor *t, int ndim, const int64_t *shape) {
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF];
  if (ndim < t->ndim || ndim > LA_MAX_DIM)
    return la_fail("expand: cannot expand a %d-d tensor to %d dims", t->ndim, ndim);
  int64_t s[LA_MAX_DIM], st[LA_MAX_DIM];
  int shift = ndim - t->ndim;
  for (int d = 0; d < ndim; d++) {
    int td = d - shift;
    int64_t want = shape[d];
    if (td < 0) {
      if (want < 0) return la_fail("expand: size -1 is not allowed for a new leading dim");
      s[d] = want;
      st[d] = 0;
    } else if (want == -1 || want == t->shape[td]) {
      s[d] = t->shape[td];
      st[d] = t->stride[td];
    } else if (t->shape[td] == 1 && want >= 0) {
      s[d] = want;
      st[d] = 0;
    } else {
      return la_fail("expand: cannot expand shape %s to %s (only size-1 dims can grow)",
                     la_shape_str(b1, sizeof b1, t->ndim, t->shape),
                     la_shape_str(b2, sizeof b2, ndim, shape));
    }
  }
  return la_make_view(t, ndim, s, st, t->offset, "expand", la_expand_backward, NULL);
}

/* ---------------------------------------------------------------- copies */

typedef struct { la_dtype dst, src; } la_copy_ctx;

#define LA_COPY_LOOP(TD, TS, CONV)                                              \
  for (int64_t i = 0; i < n; i++) {                                             \
    TS v = *(const TS *)(p[1] + i * s[1]);                                      \
    *(TD *)(p[0] + i * s[0]) = CONV;                                            \
  }

#define LA_COPY_FROM(TD, CONV_F, CONV_I)                                          \
  switch (c->src) {                                                               \
    case LA_FLOAT32: LA_COPY_LOOP(TD, float, CONV_F) break;                       \
    case LA_INT32: LA_COPY_LOOP(TD, int32_t, CONV_I) break;                       \
    case LA_INT64: LA_COPY_LOOP(TD, int64_t, CONV_I) break;                       \
    case LA_BOOL: LA_COPY_LOOP(TD, uint8_t, CONV_I) break;                        \
    default: break;                                                               \
  }

/* A row to or from a 16-bit float type, through float32. */
static void la_copy_row_half(const la_copy_ctx *c, int64_t n, char *const *p, const int64_t *s) {
  bool unit = s[0] == (int64_t)la_dtype_size(c->dst) && s[1] == (int64_t)la_dtype_size(c->src);
  if (unit && c->src == LA_FLOAT32 && la_dtype_is_half(c->dst)) {
    la_f32_to_half_n((const float *)p[1], (uint16_t *)p[0], (size_t)n, c->dst == LA_BFLOAT16);
  } else if (unit && c->dst == LA_FLOAT32 && la_dtype_is_half(c->src)) {
    la_half_to_f32_n((const uint16_t *)p[1], (float *)p[0], (size_t)n, c->src == LA_BFLOAT16);
  } else {
    for (int64_t i = 0; i < n; i++) la_store_elem(c->dst, p[0] + i * s[0], la_load_elem(c->src, p[1] + i * s[1]));
  }
}

static void la_copy_row(void *ctx, int64_t n, char *const *p, const int64_t *s) {
  const la_copy_ctx *c = ctx;
  size_t es = la_dtype_size(c->dst);
  if (c->dst == c->src && s[0] == (int64_t)es && s[1] == (int64_t)es) {
    memcpy(p[0], p[1], (size_t)n * es);
    return;
  }
  if (la_dtype_is_half(c->dst) || la_dtype_is_half(c->src)) {
    la_copy_row_half(c, n, p, s);
    return;
  }
  switch (c->dst) {
    case LA_FLOAT32: LA_COPY_FROM(float, v, (float)v) break;
    case LA_INT32: LA_COPY_FROM(int32_t, la_to_i32(v), (int32_t)v) break;
    case LA_INT64: LA_COPY_FROM(int64_t, la_to_i64(v), (int64_t)v) break;
    case LA_BOOL: LA_COPY_FROM(uint8_t, v != 0, v != 0) break;
    default: break;
  }
}

/* dst <- src (src broadcast to dst's shape), no checks, no autograd. */
static void la_copy_raw(la_tensor *dst, const la_tensor *src) {
  int64_t ss[LA_MAX_DIM];
  la_broadcast_strides(src, dst->ndim, dst->shape, ss);
  const int64_t *strides[2] = {dst->stride, ss};
  char *base[2] = {la_data(dst), la_data(src)};
  size_t sizes[2] = {la_dtype_size(dst->dtype), la_dtype_size(src->dtype)};
  la_iter it;
  la_iter_init(&it, dst->ndim, dst->shape, 2, base, strides, sizes);
  la_copy_ctx c = {dst->dtype, src->dtype};
  la_iter_run(&it, la_copy_row, &c);
}

static int la_identity_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  (void)n;
  gin[0] = la_retain(gout);
  return 0;
}

la_tensor *la_clone(la_tensor *t) {
  la_tensor *c = la_empty(t->dtype, t->ndim, t->shape);
  if (!c) return NULL;
  la_copy_raw(c, t);
  la_node *n;
  return la_record(c, "clone", la_identity_backward, 1, &t, 0, &n);
}

la_tensor *la_contiguous(la_tensor *t) {
  if (la_is_contiguous(t)) return la_retain(t);
  return la_clone(t);
}

la_tensor *la_to_dtype(la_tensor *t, la_dtype dt) {
  if (t->dtype == dt) return la_retain(t);
  la_tensor *c = la_empty(dt, t->ndim, t->shape);
  if (c) la_copy_raw(c, t);
  return c;   /* a conversion away from float32 carries no gradient */
}

la_tensor *la_detach(la_tensor *t) { return la_alias(t); }

int la_check_inplace(const char *op, la_tensor *t) {
  if (la_is_grad_enabled() && la_tracks_grad(t))
    return la_failn("%s: cannot modify in place a tensor that %s while gradients are "
                    "recorded; use an out-of-place op, or wrap the update in la.no_grad",
                    op, t->grad_fn ? "is part of the autograd graph" : "requires grad");
  return 0;
}

/* True when writing to dst could change src before it is read. */
static bool la_overlaps(const la_tensor *a, const la_tensor *b) {
  return a->storage == b->storage;
}

int la_copy_(la_tensor *dst, la_tensor *src) {
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF];
  if (la_check_inplace("copy", dst) < 0) return -1;
  int nd;
  int64_t shape[LA_MAX_DIM];
  if (la_broadcast_shape("copy", dst, src, &nd, shape) < 0 || nd != dst->ndim || memcmp(shape, dst->shape, (size_t)nd * sizeof(int64_t)))
    return la_failn("copy: source of shape %s does not broadcast to the destination's shape %s",
                    la_shape_str(b1, sizeof b1, src->ndim, src->shape),
                    la_shape_str(b2, sizeof b2, dst->ndim, dst->shape));
  for (int d = 0; d < dst->ndim; d++)
    if (dst->stride[d] == 0 && dst->shape[d] > 1)
      return la_failn("copy: the destination is an expanded view (its elements share memory); "
                      "clone it first");
  if (la_overlaps(dst, src)) {
    /* Copy through a temporary so overlapping views read the old values. */
    la_tensor *tmp = la_empty(src->dtype, src->ndim, src->shape);
    if (!tmp) return -1;
    la_copy_raw(tmp, src);
    la_copy_raw(dst, tmp);
    la_release(tmp);
  } else {
    la_copy_raw(dst, src);
  }
  dst->storage->version++;
  return 0;
}

int la_fill_(la_tensor *t, double v) {
  if (la_check_inplace("fill", t) < 0) return -1;
  la_tensor *s = la_scalar(t->dtype, v);
  if (!s) return -1;
  la_copy_raw(t, s);
  la_release(s);
  t->storage->version++;
  return 0;
}
