/*
** la_reduce.c -- reductions along a dim or over everything (sum, mean, max,
** min, logsumexp), softmax and log_softmax, and sum_to (the reduction that
** undoes broadcasting in backward passes).
**
** A reduction along dim views its (contiguous) input as (outer, n, inner)
** and produces (outer, inner).  Sums accumulate in double, so a float32 sum
** over a million elements keeps float32's accuracy.  Softmax-like ops walk
** the same lanes: the last dim (inner == 1) is the fast, common case.
*/
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "la_iter.h"
#include "la_math.h"

typedef struct { int64_t outer, n, inner; } la_lanes;

static la_lanes la_lanes_of(const la_tensor *t, int dim) {
  la_lanes l = {1, t->shape[dim], 1};
  for (int i = 0; i < dim; i++) l.outer *= t->shape[i];
  for (int i = dim + 1; i < t->ndim; i++) l.inner *= t->shape[i];
  return l;
}

/* Shape of a reduction's result. */
static int la_reduced_shape(const la_tensor *t, int dim, bool keepdim, int64_t *shape) {
  int nd = 0;
  for (int i = 0; i < t->ndim; i++) {
    if (i != dim) shape[nd++] = t->shape[i];
    else if (keepdim) shape[nd++] = 1;
  }
  return nd;
}

/* Gradient of a reduction broadcast back over the reduced dim. */
static la_tensor *la_expand_back(la_node *n, la_tensor *g) {
  int dim = (int)n->iarg[0];
  bool keep = n->iarg[1] != 0, all = n->iarg[2] != 0;
  la_tensor *u;
  if (all) u = la_reshape(g, n->in[0].ndim, (int64_t[LA_MAX_DIM]){1, 1, 1, 1, 1, 1, 1, 1});
  else u = keep ? la_retain(g) : la_unsqueeze(g, dim);
  if (!u) return NULL;
  la_tensor *e = la_expand(u, n->in[0].ndim, n->in[0].shape);
  la_release(u);
  return e;
}

/* ---------------------------------------------------------------- sum, mean */

typedef struct {
  const la_tensor *x;
  la_lanes l;
  double scale;
  la_tensor *out;
} la_sum_ctx;

/* n contiguous floats added in double, in 16 independent chains: GCC turns
** them into vector adds (it will not reorder a single chain without
** -ffast-math), and the order of additions stays fixed. */
#define LA_SUM_WAYS 16

static double la_sum_f32(const float *f, int64_t n) {
  double acc[LA_SUM_WAYS] = {0};
  int64_t k = 0;
  for (; k + LA_SUM_WAYS <= n; k += LA_SUM_WAYS)
    for (int j = 0; j < LA_SUM_WAYS; j++) acc[j] += f[k + j];
  double s = 0;
  for (int j = 0; j < LA_SUM_WAYS; j++) s += acc[j];
  for (; k < n; k++) s += f[k];
  return s;
}

/* Lanes [lo, hi) of a sum: each lane's elements added in double. */
static void la_sum_lane_range(void *ctx, int64_t lo, int64_t hi) {
  const la_sum_ctx *c = ctx;
  const la_dtype dt = c->x->dtype;
  const char *xp = la_data(c->x);
  size_t es = la_dtype_size(dt);
  la_lanes l = c->l;
  for (int64_t j = lo; j < hi; j++) {
    int64_t o = j / l.inner, i = j % l.inner;
    const char *p = xp + (size_t)(o * l.n * l.inner + i) * es;
    double acc = 0;
    if (dt == LA_FLOAT32 && l.inner == 1) {
      acc = la_sum_f32((const float *)p, l.n);
    } else {
      for (int64_t k = 0; k < l.n; k++) {
        const char *q = p + (size_t)(k * l.inner) * es;
        switch (dt) {
          case LA_FLOAT32: acc += *(const float *)q; break;
          case LA_INT32: acc += *(const int32_t *)q; break;
          case LA_INT64: acc += (double)*(const int64_t *)q; break;
          case LA_BOOL: acc += *(const uint8_t *)q; break;
          default: break;
        }
      }
    }
    acc *= c->scale;
    if (c->out->dtype == LA_FLOAT32) la_fdata(c->out)[j] = (float)acc;
    else ((int64_t *)la_data(c->out))[j] = la_to_i64(acc);
  }
}

/* Fewer long float32 lanes than threads (the sum of a whole tensor is one
** lane): each lane is cut into one piece per thread, and the pieces' double
** sums are added in a fixed order, so the result depends only on the data
** and the thread count. */
#define LA_SUM_PIECES_MAX 64

typedef struct {
  const float *x;
  int64_t n;         /* lane length */
  int pieces;        /* per lane */
  double *partial;   /* [lane * pieces + piece] */
} la_sum_pieces_ctx;

static void la_sum_piece_range(void *ctx, int64_t lo, int64_t hi) {
  const la_sum_pieces_ctx *c = ctx;
  for (int64_t t = lo; t < hi; t++) {
    int64_t lane = t / c->pieces, piece = t % c->pieces;
    int64_t a = c->n * piece / c->pieces, b = c->n * (piece + 1) / c->pieces;
    c->partial[t] = la_sum_f32(c->x + lane * c->n + a, b - a);
  }
}

static void la_sum_lanes(const la_tensor *x, la_lanes l, double scale, la_tensor *out) {
  int64_t lanes = l.outer * l.inner;
  bool par = lanes * l.n >= LA_PARALLEL_GRAIN;
  int nt = la_get_num_threads();
  if (par && lanes < nt && x->dtype == LA_FLOAT32 && l.inner == 1 &&
      lanes * nt <= LA_SUM_PIECES_MAX && out->dtype == LA_FLOAT32) {
    double partial[LA_SUM_PIECES_MAX];
    la_sum_pieces_ctx c = {la_fdata(x), l.n, nt, partial};
    la_parallel_range(lanes * nt, true, la_sum_piece_range, &c);
    for (int64_t j = 0; j < lanes; j++) {
      double acc = 0;
      for (int t = 0; t < nt; t++) acc += partial[j * nt + t];
      la_fdata(out)[j] = (float)(acc * scale);
    }
    return;
  }
  la_sum_ctx c = {x, l, scale, out};
  la_parallel_range(lanes, par, la_sum_lane_range, &c);
}

/* Along a dim whose lanes are strided (inner > 1), summing row by row is
** friendlier to the cache than lane by lane. */
static void la_sum_row_range(void *ctx, int64_t lo, int64_t hi) {
  const la_sum_ctx *c = ctx;
  const float *xp = la_fdata(c->x);
  float *op = la_fdata(c->out);
  la_lanes l = c->l;
  double *acc = malloc((size_t)l.inner * sizeof(double));
  if (!acc) return;
  for (int64_t o = lo; o < hi; o++) {
    memset(acc, 0, (size_t)l.inner * sizeof(double));
    for (int64_t k = 0; k < l.n; k++) {
      const float *row = xp + (o * l.n + k) * l.inner;
      for (int64_t i = 0; i < l.inner; i++) acc[i] += row[i];
    }
    for (int64_t i = 0; i < l.inner; i++) op[o * l.inner + i] = (float)(acc[i] * c->scale);
  }
  free(acc);
}

static void la_sum_rows_f32(const la_tensor *x, la_lanes l, double scale, la_tensor *out) {
  la_sum_ctx c = {x, l, scale, out};
  la_parallel_range(l.outer, l.outer * l.n * l.inner >= LA_PARALLEL_GRAIN, la_sum_row_range, &c);
}

static int la_sum_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  double scale = n->farg[0];
  la_tensor *g = scale == 1.0 ? la_retain(gout) : la_binary_scalar(LA_MUL, gout, scale, false);
  if (!g) return -1;
  gin[0] = la_expand_back(n, g);
  la_release(g);
  return gin[0] ? 0 : -1;
}

static la_tensor *la_reduce_sum(la_tensor *t, int dim, bool keepdim, bool mean) {
  const char *op = mean ? "mean" : "sum";
  if (la_check_compute(op, t) < 0) return NULL;
  bool all = dim < 0;
  if (!all && (dim = la_norm_dim(op, dim, t->ndim)) < 0) return NULL;
  if (mean && t->dtype != LA_FLOAT32) {
    la_tensor *f = la_to_dtype(t, LA_FLOAT32);
    la_tensor *r = f ? la_reduce_sum(f, all ? -1 : dim, keepdim, true) : NULL;
    la_release(f);
    return r;
  }
  la_tensor *x = la_contiguous(t);
  if (!x) return NULL;
  int64_t shape[LA_MAX_DIM];
  int nd = 0;
  la_lanes l;
  if (all) {
    l = (la_lanes){1, la_numel(x), 1};
    if (keepdim) for (nd = 0; nd < t->ndim; nd++) shape[nd] = 1;
  } else {
    l = la_lanes_of(x, dim);
    nd = la_reduced_shape(x, dim, keepdim, shape);
  }
  la_tensor *out = la_empty(t->dtype == LA_FLOAT32 ? LA_FLOAT32 : LA_INT64, nd, shape);
  if (!out) { la_release(x); return NULL; }
  double scale = mean ? (l.n ? 1.0 / (double)l.n : NAN) : 1.0;
  if (t->dtype == LA_FLOAT32 && l.inner > 1) la_sum_rows_f32(x, l, scale, out);
  else la_sum_lanes(x, l, scale, out);
  la_release(x);
  if (t->dtype != LA_FLOAT32) return out;
  la_node *n;
  out = la_record(out, op, la_sum_backward, 1, &t, 0, &n);
  if (n) {
    n->iarg[0] = dim;
    n->iarg[1] = keepdim;
    n->iarg[2] = all;
    n->farg[0] = scale;
  }
  return out;
}

la_tensor *la_sum(la_tensor *t, int dim, bool keepdim) { return la_reduce_sum(t, dim, keepdim, false); }
la_tensor *la_mean(la_tensor *t, int dim, bool keepdim) { return la_reduce_sum(t, dim, keepdim, true); }

/* ---------------------------------------------------------------- max, min */

static int la_extreme_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  int dim = (int)n->iarg[0];
  bool keep = n->iarg[1] != 0, all = n->iarg[2] != 0;
  la_tensor *idx = n->saved[0];
  la_tensor *z = la_full(LA_FLOAT32, n->in[0].ndim, n->in[0].shape, 0.0);
  if (!z) return -1;
  int rc;
  if (all) {
    /* One position receives the whole gradient. */
    int64_t flat = ((const int64_t *)la_data(idx))[0], pos[LA_MAX_DIM];
    for (int d = z->ndim - 1; d >= 0; d--) { pos[d] = flat % z->shape[d]; flat /= z->shape[d]; }
    la_set(z, pos, la_item(gout));
    rc = 0;
  } else {
    la_tensor *gi = keep ? la_retain(gout) : la_unsqueeze(gout, dim);
    la_tensor *ii = keep ? la_retain(idx) : la_unsqueeze(idx, dim);
    rc = gi && ii ? la_scatter_add_(z, dim, ii, gi) : -1;
    la_release(gi);
    la_release(ii);
  }
  if (rc < 0) { la_release(z); return -1; }
  gin[0] = z;
  return 0;
}

static la_tensor *la_extreme(la_tensor *t, int dim, bool keepdim, la_tensor **indices, bool want_max) {
  const char *op = want_max ? "max" : "min";
  if (la_check_compute(op, t) < 0) return NULL;
  char b1[LA_SHAPE_BUF];
  bool all = dim < 0;
  if (!all && (dim = la_norm_dim(op, dim, t->ndim)) < 0) return NULL;
  if (la_numel(t) == 0 || (!all && t->shape[dim] == 0))
    return la_fail("%s: cannot reduce an empty tensor (shape %s)", op,
                   la_shape_str(b1, sizeof b1, t->ndim, t->shape));
  la_tensor *x = la_contiguous(t);
  if (!x) return NULL;
  int64_t shape[LA_MAX_DIM];
  int nd = 0;
  la_lanes l;
  if (all) {
    l = (la_lanes){1, la_numel(x), 1};
    if (keepdim) for (nd = 0; nd < t->ndim; nd++) shape[nd] = 1;
  } else {
    l = la_lanes_of(x, dim);
    nd = la_reduced_shape(x, dim, keepdim, shape);
  }
  la_tensor *out = la_empty(t->dtype, nd, shape), *idx = la_empty(LA_INT64, nd, shape);
  if (!out || !idx) { la_release(out); la_release(idx); la_release(x); return NULL; }
  const char *xp = la_data(x);
  size_t es = la_dtype_size(t->dtype);
  int64_t lanes = l.outer * l.inner;
  int64_t *ip = la_data(idx);
  for (int64_t j = 0; j < lanes; j++) {
    int64_t o = j / l.inner, i = j % l.inner, best = 0;
    double bv = 0;
    for (int64_t k = 0; k < l.n; k++) {
      const char *q = xp + (size_t)((o * l.n + k) * l.inner + i) * es;
      double v;
      switch (t->dtype) {
        case LA_FLOAT32: v = *(const float *)q; break;
        case LA_INT32: v = *(const int32_t *)q; break;
        case LA_INT64: v = (double)*(const int64_t *)q; break;
        default: v = *(const uint8_t *)q; break;
      }
      if (k == 0 || v != v || (want_max ? v > bv : v < bv)) {
        bv = v;
        best = k;
        if (v != v) break;   /* NaN wins, as in PyTorch */
      }
    }
    ip[j] = best;
    int64_t src = (o * l.n + best) * l.inner + i;
    memcpy((char *)la_data(out) + (size_t)j * es, xp + (size_t)src * es, es);
  }
  la_release(x);
  if (t->dtype == LA_FLOAT32) {
    la_node *n;
    out = la_record(out, op, la_extreme_backward, 1, &t, 1, &n);
    if (n) {
      n->iarg[0] = dim;
      n->iarg[1] = keepdim;
      n->iarg[2] = all;
      if (la_node_save(n, 0, idx) < 0) { la_release(out); out = NULL; }
    }
  }
  if (!out) { la_release(idx); return NULL; }
  if (indices) *indices = idx;
  else la_release(idx);
  return out;
}

la_tensor *la_max(la_tensor *t, int dim, bool keepdim, la_tensor **indices) {
  return la_extreme(t, dim, keepdim, indices, true);
}

la_tensor *la_min(la_tensor *t, int dim, bool keepdim, la_tensor **indices) {
  return la_extreme(t, dim, keepdim, indices, false);
}

/* ---------------------------------------------------------------- softmax family */

typedef enum { LA_SOFTMAX, LA_LOG_SOFTMAX, LA_LOGSUMEXP } la_smx_kind;

/* Sum of e^(x[k] - m) over n contiguous floats, in double.  The exps are
** made a block at a time into buf (n <= LA_SMX_BLOCK floats, or the lane's
** own output when there is one) so that their loop vectorises; the sum
** runs four chains, as la_sum_f32. */
#define LA_SMX_BLOCK 256

static double la_sum_exp_chunk(const float *x, float *buf, int64_t n, float m) {
  for (int64_t k = 0; k < n; k++) buf[k] = la_expf(x[k] - m);
  return la_sum_f32(buf, n);
}

static double la_sum_exp_blocks(const float *x, int64_t n, float m) {
  float buf[LA_SMX_BLOCK];
  double s = 0;
  for (int64_t k = 0; k < n; k += LA_SMX_BLOCK)
    s += la_sum_exp_chunk(x + k, buf, n - k < LA_SMX_BLOCK ? n - k : LA_SMX_BLOCK, m);
  return s;
}

/* A contiguous lane of log_softmax or logsumexp (softmax has
** la_softmax_rows). */
static void la_smx_lane_contiguous(la_smx_kind kind, const float *x, float *y, int64_t n, float m) {
  float logs = (float)log(la_sum_exp_blocks(x, n, m));
  if (kind == LA_LOGSUMEXP) { y[0] = m + logs; return; }
  /* (x - m) - log s, not x - lse: keeps precision when |m| is large */
  for (int64_t k = 0; k < n; k++) y[k] = (x[k] - m) - logs;
}

/* The largest of x[k * st], ignoring NaNs (-inf if all are).  Written with
** "a > b ? a : b", one max instruction, rather than fmaxf, a libm call per
** element; and, for a contiguous lane, as 16 independent running maxima, so
** the max instructions overlap instead of each waiting for the previous one
** (GCC will not reorder a single running maximum without -ffast-math). */
#define LA_MAX_WAYS 16

static float la_lane_max(const float *x, int64_t n, int64_t st) {
  float m = -INFINITY;
  int64_t k = 0;
  if (st == 1 && n >= LA_MAX_WAYS) {
    float w[LA_MAX_WAYS];
    for (int j = 0; j < LA_MAX_WAYS; j++) w[j] = -INFINITY;
    for (; k + LA_MAX_WAYS <= n; k += LA_MAX_WAYS)
      for (int j = 0; j < LA_MAX_WAYS; j++) w[j] = x[k + j] > w[j] ? x[k + j] : w[j];
    for (int j = 0; j < LA_MAX_WAYS; j++) m = w[j] > m ? w[j] : m;
  }
  for (; k < n; k++) m = x[k * st] > m ? x[k * st] : m;
  return m;
}

/* One lane: x[k * st] for k < n. */
static void la_smx_lane(la_smx_kind kind, const float *x, float *y, int64_t n, int64_t st) {
  float m = la_lane_max(x, n, st);
  if (m == -INFINITY) m = 0;   /* all -inf: keep exp() finite; the sum is 0 */
  if (st == 1) {
    la_smx_lane_contiguous(kind, x, y, n, m);
    return;
  }
  double s = 0;
  for (int64_t k = 0; k < n; k++) s += la_expf(x[k * st] - m);
  float logs = (float)log(s);
  if (kind == LA_LOGSUMEXP) { y[0] = m + logs; return; }
  if (kind == LA_LOG_SOFTMAX) {
    /* (x - m) - log s, not x - lse: keeps precision when |m| is large */
    for (int64_t k = 0; k < n; k++) y[k * st] = (x[k * st] - m) - logs;
  } else {
    float inv = (float)(1.0 / s);
    for (int64_t k = 0; k < n; k++) y[k * st] = la_expf(x[k * st] - m) * inv;
  }
}

/* Softmax over the contiguous lanes lo..hi-1 of length n (the last dim, the
** common case), a block of lanes at a time: each lane's values less its
** maximum are written into y, the whole block goes through one exp loop
** (so lanes shorter than a vector, a softmax over a few classes, still get
** vector exps), then each lane is summed and scaled.  Blocks stay within
** LA_SMX_BLOCK floats when lanes are short, so y is still in cache. */
static void la_softmax_rows(const float *x, float *y, int64_t n, int64_t lo, int64_t hi) {
  if (n == 0) return;
  int64_t per_block = n >= LA_SMX_BLOCK ? 1 : LA_SMX_BLOCK / n;
  for (int64_t j0 = lo; j0 < hi; j0 += per_block) {
    int64_t j1 = hi - j0 < per_block ? hi : j0 + per_block;
    for (int64_t j = j0; j < j1; j++) {
      const float *xl = x + j * n;
      float *yl = y + j * n;
      float m = la_lane_max(xl, n, 1);
      if (m == -INFINITY) m = 0;   /* all -inf: keep exp() finite; the sum is 0 */
      for (int64_t k = 0; k < n; k++) yl[k] = xl[k] - m;
    }
    float *yb = y + j0 * n;
    for (int64_t k = 0, len = (j1 - j0) * n; k < len; k++) yb[k] = la_expf(yb[k]);
    for (int64_t j = j0; j < j1; j++) {
      float *yl = y + j * n;
      float inv = (float)(1.0 / la_sum_f32(yl, n));
      for (int64_t k = 0; k < n; k++) yl[k] *= inv;
    }
  }
}

static int la_softmax_backward(la_node *n, la_tensor *gout, la_tensor **gin);

typedef struct {
  la_smx_kind kind;
  la_lanes l;
  const float *x;   /* forward: the input; backward: the saved output y */
  const float *g;   /* backward only: the incoming gradient */
  float *y;         /* forward: the output; backward: the input's gradient */
} la_smx_ctx;

/* Lanes [lo, hi) of a softmax, log_softmax or logsumexp. */
static void la_smx_range(void *ctx, int64_t lo, int64_t hi) {
  const la_smx_ctx *c = ctx;
  la_lanes l = c->l;
  if (c->kind == LA_SOFTMAX && l.inner == 1) {
    la_softmax_rows(c->x, c->y, l.n, lo, hi);
    return;
  }
  bool reduce = c->kind == LA_LOGSUMEXP;
  for (int64_t j = lo; j < hi; j++) {
    int64_t o = j / l.inner, i = j % l.inner, base = o * l.n * l.inner + i;
    la_smx_lane(c->kind, c->x + base, reduce ? c->y + j : c->y + base, l.n, l.inner);
  }
}

static la_tensor *la_smx(la_smx_kind kind, la_tensor *t, int dim, bool keepdim, bool all) {
  static const char *const names[] = {"softmax", "log_softmax", "logsumexp"};
  const char *op = names[kind];
  if (la_check_compute(op, t) < 0) return NULL;
  if (t->dtype != LA_FLOAT32) {
    la_tensor *f = la_to_dtype(t, LA_FLOAT32);
    la_tensor *r = f ? la_smx(kind, f, dim, keepdim, all) : NULL;
    la_release(f);
    return r;
  }
  if (!all && (dim = la_norm_dim(op, dim, t->ndim)) < 0) return NULL;
  la_tensor *x = la_contiguous(t);
  if (!x) return NULL;
  la_lanes l = all ? (la_lanes){1, la_numel(x), 1} : la_lanes_of(x, dim);
  int64_t shape[LA_MAX_DIM];
  int nd;
  if (kind != LA_LOGSUMEXP) {
    nd = x->ndim;
    memcpy(shape, x->shape, sizeof shape);
  } else if (all) {
    nd = keepdim ? t->ndim : 0;
    for (int i = 0; i < nd; i++) shape[i] = 1;
  } else {
    nd = la_reduced_shape(x, dim, keepdim, shape);
  }
  la_tensor *out = la_empty(LA_FLOAT32, nd, shape);
  if (!out) { la_release(x); return NULL; }
  int64_t lanes = l.outer * l.inner;
  bool reduce = kind == LA_LOGSUMEXP;
  la_smx_ctx c = {kind, l, la_fdata(x), NULL, la_fdata(out)};
  la_parallel_range(lanes, lanes * l.n >= LA_PARALLEL_GRAIN, la_smx_range, &c);
  la_node *n;
  out = la_record(out, op, la_softmax_backward, 1, &t, reduce ? 2 : 1, &n);
  if (n) {
    n->iarg[0] = dim;
    n->iarg[1] = keepdim;
    n->iarg[2] = all;
    n->iarg[3] = kind;
    int rc = la_node_save(n, 0, out);
    if (rc == 0 && reduce) rc = la_node_save(n, 1, x);
    if (rc < 0) { la_release(out); out = NULL; }
  }
  la_release(x);
  return out;
}

/* Lanes [lo, hi) of the softmax or log_softmax gradient. */
static void la_smx_backward_range(void *ctx, int64_t lo, int64_t hi) {
  const la_smx_ctx *c = ctx;
  la_lanes l = c->l;
  int64_t st = l.inner;
  for (int64_t j = lo; j < hi; j++) {
    int64_t base = (j / l.inner) * l.n * l.inner + j % l.inner;
    const float *yl = c->x + base, *gl = c->g + base;
    float *ol = c->y + base;
    double s = 0;
    if (c->kind == LA_SOFTMAX) {
      /* dx = y * (g - sum(g * y)) */
      for (int64_t k = 0; k < l.n; k++) s += (double)gl[k * st] * yl[k * st];
      for (int64_t k = 0; k < l.n; k++) ol[k * st] = yl[k * st] * (gl[k * st] - (float)s);
    } else {
      /* dx = g - exp(y) * sum(g) */
      for (int64_t k = 0; k < l.n; k++) s += gl[k * st];
      for (int64_t k = 0; k < l.n; k++) ol[k * st] = gl[k * st] - la_expf(yl[k * st]) * (float)s;
    }
  }
}

static int la_softmax_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  la_smx_kind kind = (la_smx_kind)n->iarg[3];
  int dim = (int)n->iarg[0];
  la_tensor *y = n->saved[0];
  if (kind == LA_LOGSUMEXP) {
    /* d lse / dx = softmax(x) = exp(x - lse) */
    la_tensor *x = n->saved[1];
    la_tensor *lse = la_expand_back(n, y), *g = lse ? la_expand_back(n, gout) : NULL;
    la_tensor *d = g ? la_binary(LA_SUB, x, lse) : NULL;
    la_tensor *e = d ? la_unary(LA_EXP, d) : NULL;
    gin[0] = e ? la_binary(LA_MUL, e, g) : NULL;
    la_release(lse); la_release(g); la_release(d); la_release(e);
    return gin[0] ? 0 : -1;
  }
  la_tensor *g = la_contiguous(gout);
  if (!g) return -1;
  la_tensor *out = la_empty(LA_FLOAT32, g->ndim, g->shape);
  if (!out) { la_release(g); return -1; }
  bool all = n->iarg[2] != 0;
  la_lanes l = all ? (la_lanes){1, la_numel(g), 1} : la_lanes_of(g, dim);
  int64_t lanes = l.outer * l.inner;
  la_smx_ctx c = {kind, l, la_fdata(y), la_fdata(g), la_fdata(out)};
  la_parallel_range(lanes, lanes * l.n >= LA_PARALLEL_GRAIN, la_smx_backward_range, &c);
  la_release(g);
  gin[0] = out;
  return 0;
}

la_tensor *la_softmax(la_tensor *t, int dim) { return la_smx(LA_SOFTMAX, t, dim, false, false); }
la_tensor *la_log_softmax(la_tensor *t, int dim) { return la_smx(LA_LOG_SOFTMAX, t, dim, false, false); }
la_tensor *la_logsumexp(la_tensor *t, int dim, bool keepdim) {
  if (dim >= 0 && la_numel(t) == 0) return la_fail("logsumexp: cannot reduce an empty tensor");
  return la_smx(LA_LOGSUMEXP, t, dim, keepdim, dim < 0);
}

/* ---------------------------------------------------------------- sum_to */

typedef struct { double *acc; } la_sumto_ctx;

static void la_sumto_row(void *ctx, int64_t n, char *const *p, const int64_t *s) {
  (void)ctx;
  for (int64_t i = 0; i < n; i++)
    *(double *)(p[0] + i * s[0]) += *(const float *)(p[1] + i * s[1]);
}

la_tensor *la_sum_to(la_tensor *t, int ndim, const int64_t *shape) {
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF];
  if (t->ndim == ndim && memcmp(t->shape, shape, (size_t)ndim * sizeof(int64_t)) == 0)
    return la_retain(t);
  /* Check that shape broadcasts to t's shape. */
  if (ndim > t->ndim) goto bad;
  for (int d = 0; d < ndim; d++) {
    int64_t want = shape[d], have = t->shape[d + t->ndim - ndim];
    if (want != have && want != 1) goto bad;
  }
  int64_t n = 1;
  for (int d = 0; d < ndim; d++) n *= shape[d];
  /* Accumulate in a double buffer laid out as the target, seen through
  ** zero strides along the reduced dims: one serial pass, deterministic. */
  double *acc = calloc((size_t)(n ? n : 1), sizeof(double));
  if (!acc) return la_fail("sum_to: out of memory");
  int64_t as[LA_MAX_DIM], run = 1;
  for (int d = t->ndim - 1; d >= 0; d--) {
    int td = d - (t->ndim - ndim);
    if (td < 0 || shape[td] == 1) { as[d] = 0; }
    else { as[d] = run; run *= shape[td]; }
  }
  const int64_t *strides[2] = {as, t->stride};
  char *base[2] = {(char *)acc, la_data(t)};
  size_t sizes[2] = {sizeof(double), 4};
  la_iter it;
  la_iter_init(&it, t->ndim, t->shape, 2, base, strides, sizes);
  la_iter_run_serial(&it, la_sumto_row, NULL);
  la_tensor *out = la_empty(LA_FLOAT32, ndim, shape);
  if (out) {
    float *o = la_fdata(out);
    for (int64_t i = 0; i < n; i++) o[i] = (float)acc[i];
  }
  free(acc);
  return out;
bad:
  return la_fail("sum_to: shape %s does not broadcast to %s",
                 la_shape_str(b1, sizeof b1, ndim, shape),
                 la_shape_str(b2, sizeof b2, t->ndim, t->shape));
}
