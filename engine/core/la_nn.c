/*
** la_nn.c -- linear layers, layer and RMS normalisation, dropout and the
** SwiGLU activation: forward and backward side by side, each over rows of
** the last dim.
*/
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "la_math.h"
#include "la_nn.h"

/* Rows of a tensor: (M, C) with C the last dim. */
static int64_t la_rows(const la_tensor *t) {
  int64_t m = 1;
  for (int i = 0; i < t->ndim - 1; i++) m *= t->shape[i];
  return m;
}

static int la_check_f32(const char *op, const la_tensor *t, const char *what) {
  if (t->dtype != LA_FLOAT32)
    return la_failn("%s: %s must be float32 (got %s)", op, what, la_dtype_name(t->dtype));
  return 0;
}

/* A (M, C) contiguous view of t's rows. */
static la_tensor *la_as_rows(la_tensor *t) {
  la_tensor *c = la_contiguous(t);
  if (!c) return NULL;
  int64_t shape[2] = {la_rows(t), t->ndim ? t->shape[t->ndim - 1] : 1};
  la_tensor *v = la_alias(c);
  la_release(c);
  if (!v) return NULL;
  v->ndim = 2;
  v->shape[0] = shape[0];
  v->shape[1] = shape[1];
  v->stride[0] = shape[1];
  v->stride[1] = 1;
  return v;
}

/* Column sums of a contiguous (M, C) matrix into out (C), accumulated in
** double, columns split across threads. */
static void la_colsum(const float *x, int64_t M, int64_t C, float *out) {
  #pragma omp parallel if (M * C >= LA_PARALLEL_GRAIN)
  {
    int t = omp_get_thread_num(), n = omp_get_num_threads();
    int64_t c0 = C * t / n, c1 = C * (t + 1) / n;
    double *acc = calloc((size_t)(c1 - c0 + 1), sizeof(double));
    if (acc) {
      for (int64_t i = 0; i < M; i++) {
        const float *row = x + i * C;
        for (int64_t j = c0; j < c1; j++) acc[j - c0] += row[j];
      }
      for (int64_t j = c0; j < c1; j++) out[j] = (float)acc[j - c0];
      free(acc);
    }
  }
}

/* ---------------------------------------------------------------- linear */

/* The gradients of y = x W^T + b for g (M, O) the rows of the output's
** gradient, shared by linear and lora_linear: dx = g W (shaped as the input
** edge ex), dW = g^T x, db = the column sums of g; each only when asked (its
** pointer not NULL). */
static int la_linear_grads(la_tensor *g, la_tensor *x, la_tensor *w, const la_edge *ex,
                           la_tensor **dx, la_tensor **dw, la_tensor **db) {
  int64_t M = g->shape[0], O = w->shape[0], I = w->shape[1];
  int rc = 0;
  if (dx) {                                        /* dx = g W */
    la_tensor *d = la_empty(LA_FLOAT32, ex->ndim, ex->shape);
    la_tensor *d2 = d ? la_as_rows(d) : NULL;
    rc = d2 ? la_gemm(false, false, 1.0f, g, w, 0.0f, d2) : -1;
    la_release(d2);
    if (rc == 0) *dx = d; else la_release(d);
  }
  if (rc == 0 && dw) {                             /* dW = g^T x */
    la_tensor *x2 = la_as_rows(x);
    la_tensor *d = x2 ? la_empty(LA_FLOAT32, 2, (int64_t[]){O, I}) : NULL;
    rc = d ? la_gemm(true, false, 1.0f, g, x2, 0.0f, d) : -1;
    la_release(x2);
    if (rc == 0) *dw = d; else la_release(d);
  }
  if (rc == 0 && db) {                             /* db = column sums of g */
    la_tensor *d = la_empty(LA_FLOAT32, 1, &O);
    if (d) { la_colsum(la_fdata(g), M, O, la_fdata(d)); *db = d; }
    else rc = -1;
  }
  return rc;
}

static int la_linear_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  la_tensor *g = la_as_rows(gout);
  if (!g) return -1;
  int rc = la_linear_grads(g, n->saved[0], n->saved[1], &n->in[0],
                           LA_NEEDS_GRAD(n, 0) ? &gin[0] : NULL, LA_NEEDS_GRAD(n, 1) ? &gin[1] : NULL,
                           n->n_in > 2 && LA_NEEDS_GRAD(n, 2) ? &gin[2] : NULL);
  la_release(g);
  return rc;
}

/* A weight may be float32 or, frozen, a 16-bit float (see la_gemm). */
static int la_check_weight(const char *op, const la_tensor *w) {
  if (w->dtype != LA_FLOAT32 && !la_dtype_is_half(w->dtype))
    return la_failn("%s: weight must be float32, bfloat16 or float16 (got %s)", op, la_dtype_name(w->dtype));
  return 0;
}

/* x W^T + b into a new tensor (..., O), checked, with no graph. */
static la_tensor *la_linear_forward(const char *op, la_tensor *x, la_tensor *w, la_tensor *b) {
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF];
  if (la_check_f32(op, x, "input") < 0 || la_check_weight(op, w) < 0) return NULL;
  if (b && la_check_f32(op, b, "bias") < 0) return NULL;
  if (x->ndim < 1 || w->ndim != 2 || x->shape[x->ndim - 1] != w->shape[1])
    return la_fail("%s: input of shape %s does not fit weight of shape %s (out, in)", op,
                   la_shape_str(b1, sizeof b1, x->ndim, x->shape),
                   la_shape_str(b2, sizeof b2, w->ndim, w->shape));
  if (b && (b->ndim != 1 || b->shape[0] != w->shape[0]))
    return la_fail("%s: bias of shape %s does not fit weight of shape %s", op,
                   la_shape_str(b1, sizeof b1, b->ndim, b->shape),
                   la_shape_str(b2, sizeof b2, w->ndim, w->shape));
  int64_t O = w->shape[0], shape[LA_MAX_DIM];
  memcpy(shape, x->shape, sizeof shape);
  shape[x->ndim - 1] = O;
  la_tensor *out = la_empty(LA_FLOAT32, x->ndim, shape);
  la_tensor *x2 = out ? la_as_rows(x) : NULL;
  la_tensor *o2 = x2 ? la_as_rows(out) : NULL;
  int rc = o2 ? 0 : -1;
  if (rc == 0) {
    float beta = 0.0f;
    if (b) {   /* the bias goes in first and the product is added onto it */
      la_tensor *bc = la_contiguous(b);
      if (bc) {
        const float *bp = la_fdata(bc);
        float *op = la_fdata(o2);
        int64_t M = o2->shape[0];
        #pragma omp parallel for if (M * O >= LA_PARALLEL_GRAIN)
        for (int64_t i = 0; i < M; i++) memcpy(op + i * O, bp, (size_t)O * sizeof(float));
        la_release(bc);
        beta = 1.0f;
      } else {
        rc = -1;
      }
    }
    if (rc == 0) rc = la_gemm(false, true, 1.0f, x2, w, beta, o2);
  }
  la_release(x2);
  la_release(o2);
  if (rc < 0) { la_release(out); return NULL; }
  return out;
}

la_tensor *la_linear(la_tensor *x, la_tensor *w, la_tensor *b) {
  la_tensor *out = la_linear_forward("linear", x, w, b);
  la_tensor *in[3] = {x, w, b};
  la_node *n;
  out = la_record(out, "linear", la_linear_backward, b ? 3 : 2, in, 2, &n);
  if (n && (la_node_save(n, 0, x) < 0 || la_node_save(n, 1, w) < 0)) {
    la_release(out);
    return NULL;
  }
  return out;
}

/* ---------------------------------------------------------------- LoRA linear */
/* y = x W^T + b + s (xd A^T) B^T: a linear layer with a low-rank update
** (Hu et al. 2021), A (r, in), B (out, r), s the scaling, xd the input after
** the adapter's dropout (x itself without one).  The rank-r activations
** u = xd A^T are the only thing stored beyond what linear stores; the
** backward pass gives
**   dB = s g^T u,  gu = s g B,  dA = gu^T xd,  dxd = gu A,  dx = g W (+ dxd)
** and dW, db as linear when the base requires them (a frozen base, the
** usual case, costs nothing there).  Inputs: x, W, b, A, B, xd; saved: x, W,
** A, B, u, xd. */

static int la_lora_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  la_tensor *x = n->saved[0], *w = n->saved[1], *a = n->saved[2], *bm = n->saved[3], *u = n->saved[4];
  la_tensor *xd = n->saved[5] ? n->saved[5] : x;
  float s = (float)n->farg[0];
  bool need_a = LA_NEEDS_GRAD(n, 3), need_b = LA_NEEDS_GRAD(n, 4), need_xd = LA_NEEDS_GRAD(n, 5);
  bool need_x = LA_NEEDS_GRAD(n, 0);
  la_tensor *g = la_as_rows(gout), *gu = NULL, *xd2 = NULL;
  if (!g) return -1;
  int64_t M = g->shape[0], R = a->shape[0];
  /* The base product: dx = g W, dW, db. */
  int rc = la_linear_grads(g, x, w, &n->in[0], need_x ? &gin[0] : NULL,
                           LA_NEEDS_GRAD(n, 1) ? &gin[1] : NULL, LA_NEEDS_GRAD(n, 2) ? &gin[2] : NULL);
  if (rc == 0 && need_b) {                          /* dB = s g^T u */
    la_tensor *d = la_empty(LA_FLOAT32, 2, bm->shape);
    rc = d ? la_gemm(true, false, s, g, u, 0.0f, d) : -1;
    if (rc == 0) gin[4] = d; else la_release(d);
  }
  bool dropout = n->saved[5] != NULL;
  if (rc == 0 && (need_a || need_xd || (need_x && !dropout))) {   /* gu = s g B */
    gu = la_empty(LA_FLOAT32, 2, (int64_t[]){M, R});
    rc = gu ? la_gemm(false, false, s, g, bm, 0.0f, gu) : -1;
  }
  if (rc == 0 && need_a) {                          /* dA = gu^T xd */
    xd2 = la_as_rows(xd);
    la_tensor *d = xd2 ? la_empty(LA_FLOAT32, 2, a->shape) : NULL;
    rc = d ? la_gemm(true, false, 1.0f, gu, xd2, 0.0f, d) : -1;
    if (rc == 0) gin[3] = d; else la_release(d);
  }
  if (rc == 0 && dropout && need_xd) {              /* dxd = gu A */
    la_tensor *d = la_empty(LA_FLOAT32, n->in[5].ndim, n->in[5].shape);
    la_tensor *d2 = d ? la_as_rows(d) : NULL;
    rc = d2 ? la_gemm(false, false, 1.0f, gu, a, 0.0f, d2) : -1;
    la_release(d2);
    if (rc == 0) gin[5] = d; else la_release(d);
  }
  if (rc == 0 && !dropout && need_x) {              /* dx += gu A */
    la_tensor *d2 = la_as_rows(gin[0]);
    rc = d2 ? la_gemm(false, false, 1.0f, gu, a, 1.0f, d2) : -1;
    la_release(d2);
  }
  la_release(g);
  la_release(gu);
  la_release(xd2);
  return rc;
}

la_tensor *la_lora_linear(la_tensor *x, la_tensor *w, la_tensor *b, la_tensor *a, la_tensor *bm,
                          double scale, la_tensor *xd) {
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF], b3[LA_SHAPE_BUF];
  const char *op = "lora_linear";
  if (la_check_f32(op, a, "lora_A") < 0 || la_check_f32(op, bm, "lora_B") < 0) return NULL;
  if (xd && la_check_f32(op, xd, "dropped input") < 0) return NULL;
  if (w->ndim != 2 || a->ndim != 2 || bm->ndim != 2 || a->shape[1] != w->shape[1] ||
      bm->shape[0] != w->shape[0] || bm->shape[1] != a->shape[0])
    return la_fail("%s: lora_A %s (r, in) and lora_B %s (out, r) do not fit weight %s (out, in)", op,
                   la_shape_str(b1, sizeof b1, a->ndim, a->shape), la_shape_str(b2, sizeof b2, bm->ndim, bm->shape),
                   la_shape_str(b3, sizeof b3, w->ndim, w->shape));
  if (xd && !la_same_shape(xd, x))
    return la_fail("%s: the dropped input has shape %s, the input %s", op,
                   la_shape_str(b1, sizeof b1, xd->ndim, xd->shape), la_shape_str(b2, sizeof b2, x->ndim, x->shape));
  if (!isfinite(scale)) return la_fail("%s: scaling must be finite (got %g)", op, scale);
  la_tensor *out = la_linear_forward(op, x, w, b);
  if (!out) return NULL;
  int64_t M = la_rows(x), R = a->shape[0];
  la_tensor *xd2 = la_as_rows(xd ? xd : x), *o2 = xd2 ? la_as_rows(out) : NULL;
  la_tensor *u = o2 ? la_empty(LA_FLOAT32, 2, (int64_t[]){M, R}) : NULL;
  int rc = u ? 0 : -1;
  if (rc == 0) rc = la_gemm(false, true, 1.0f, xd2, a, 0.0f, u);                 /* u = xd A^T */
  if (rc == 0) rc = la_gemm(false, true, (float)scale, u, bm, 1.0f, o2);       /* y += s u B^T */
  la_release(xd2);
  la_release(o2);
  if (rc < 0) { la_release(u); la_release(out); return NULL; }
  la_tensor *in[6] = {x, w, b, a, bm, xd};
  la_node *n;
  out = la_record(out, op, la_lora_backward, 6, in, 6, &n);
  if (n) {
    n->farg[0] = scale;
    if (la_node_save(n, 0, x) < 0 || la_node_save(n, 1, w) < 0 || la_node_save(n, 2, a) < 0 ||
        la_node_save(n, 3, bm) < 0 || la_node_save(n, 4, u) < 0 || (xd && la_node_save(n, 5, xd) < 0))
      la_release_p(&out);
  }
  la_release(u);
  return out;
}

/* ---------------------------------------------------------------- layer norm */

/* Per-thread partial sums for the weight and bias gradients, added in thread
** order so results do not depend on scheduling. */
static int la_norm_param_grads(const float *g, const float *xhat_src, const float *mean,
                               const float *rstd, int64_t M, int64_t C, float *dw, float *db,
                               bool rms) {
  int nt = la_get_num_threads();
  if (M * C < LA_PARALLEL_GRAIN) nt = 1;
  double *part = calloc((size_t)nt * 2 * (size_t)C, sizeof(double));
  if (!part) return la_failn("layer_norm: out of memory");
  #pragma omp parallel num_threads(nt)
  {
    int t = omp_get_thread_num(), m = omp_get_num_threads();
    double *pw = part + (size_t)t * 2 * C, *pb = pw + C;
    for (int64_t i = M * t / m; i < M * (t + 1) / m; i++) {
      const float *gr = g + i * C, *xr = xhat_src + i * C;
      float mu = rms ? 0.0f : mean[i], rs = rstd[i];
      for (int64_t j = 0; j < C; j++) {
        float xh = (xr[j] - mu) * rs;
        pw[j] += gr[j] * xh;
        pb[j] += gr[j];
      }
    }
  }
  for (int64_t j = 0; j < C; j++) {
    double sw = 0, sb = 0;
    for (int t = 0; t < nt; t++) {
      sw += part[(size_t)t * 2 * C + j];
      sb += part[(size_t)t * 2 * C + C + j];
    }
    if (dw) dw[j] = (float)sw;
    if (db) db[j] = (float)sb;
  }
  free(part);
  return 0;
}

static int la_norm_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  bool rms = n->iarg[0] != 0;
  la_tensor *x = n->saved[0], *w = n->saved[1], *stats = n->saved[2];
  la_tensor *g = la_as_rows(gout);
  if (!g) return -1;
  int64_t M = g->shape[0], C = g->shape[1];
  const float *gp = la_fdata(g), *xp = la_fdata(x), *wp = w ? la_fdata(w) : NULL;
  const float *mean = la_fdata(stats), *rstd = mean + M;
  int rc = 0;
  if (LA_NEEDS_GRAD(n, 0)) {
    la_tensor *dx = la_empty(LA_FLOAT32, n->in[0].ndim, n->in[0].shape);
    if (!dx) rc = -1;
    else {
      float *dp = la_fdata(dx);
      #pragma omp parallel for if (M * C >= LA_PARALLEL_GRAIN) schedule(static)
      for (int64_t i = 0; i < M; i++) {
        const float *gr = gp + i * C, *xr = xp + i * C;
        float *dr = dp + i * C;
        float mu = rms ? 0.0f : mean[i], rs = rstd[i];
        double s1 = 0, s2 = 0;   /* mean of dxhat and of dxhat * xhat */
        for (int64_t j = 0; j < C; j++) {
          float dxh = gr[j] * (wp ? wp[j] : 1.0f), xh = (xr[j] - mu) * rs;
          s1 += dxh;
          s2 += dxh * xh;
        }
        float m1 = rms ? 0.0f : (float)(s1 / C), m2 = (float)(s2 / C);
        for (int64_t j = 0; j < C; j++) {
          float dxh = gr[j] * (wp ? wp[j] : 1.0f), xh = (xr[j] - mu) * rs;
          dr[j] = rs * (dxh - m1 - xh * m2);
        }
      }
      gin[0] = dx;
    }
  }
  bool need_w = n->n_in > 1 && LA_NEEDS_GRAD(n, 1), need_b = n->n_in > 2 && LA_NEEDS_GRAD(n, 2);
  if (rc == 0 && (need_w || need_b)) {
    la_tensor *dw = need_w ? la_empty(LA_FLOAT32, 1, &C) : NULL;
    la_tensor *db = need_b ? la_empty(LA_FLOAT32, 1, &C) : NULL;
    if ((need_w && !dw) || (need_b && !db)) rc = -1;
    else rc = la_norm_param_grads(gp, xp, mean, rstd, M, C, dw ? la_fdata(dw) : NULL,
                                  db ? la_fdata(db) : NULL, rms);
    if (rc == 0) { if (need_w) gin[1] = dw; if (need_b) gin[2] = db; }
    else { la_release(dw); la_release(db); }
  }
  la_release(g);
  return rc;
}

static la_tensor *la_norm(const char *op, la_tensor *x, la_tensor *w, la_tensor *b, double eps,
                          bool rms) {
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF];
  if (la_check_f32(op, x, "input") < 0) return NULL;
  if (x->ndim < 1) return la_fail("%s: needs at least one dimension", op);
  int64_t C = x->shape[x->ndim - 1];
  la_tensor *params[2] = {w, b};
  for (int i = 0; i < 2; i++) {
    la_tensor *p = params[i];
    if (!p) continue;
    if (la_check_f32(op, p, i ? "bias" : "weight") < 0) return NULL;
    if (p->ndim != 1 || p->shape[0] != C)
      return la_fail("%s: %s of shape %s does not fit input of shape %s (last dim %lld)", op,
                     i ? "bias" : "weight", la_shape_str(b1, sizeof b1, p->ndim, p->shape),
                     la_shape_str(b2, sizeof b2, x->ndim, x->shape), (long long)C);
  }
  if (!(eps > 0)) return la_fail("%s: eps must be positive (got %g)", op, eps);
  la_tensor *x2 = la_as_rows(x);
  if (!x2) return NULL;
  int64_t M = x2->shape[0];
  la_tensor *out = la_empty(LA_FLOAT32, x->ndim, x->shape);
  la_tensor *stats = out ? la_empty(LA_FLOAT32, 1, (int64_t[]){2 * M}) : NULL;
  la_tensor *wc = w ? la_contiguous(w) : NULL, *bc = b ? la_contiguous(b) : NULL;
  if (!stats || (w && !wc) || (b && !bc)) {
    la_release(x2); la_release(out); la_release(stats); la_release(wc); la_release(bc);
    return NULL;
  }
  const float *xp = la_fdata(x2), *wp = wc ? la_fdata(wc) : NULL, *bp = bc ? la_fdata(bc) : NULL;
  float *yp = la_fdata(out), *mean = la_fdata(stats), *rstd = mean + M;
  #pragma omp parallel for if (M * C >= LA_PARALLEL_GRAIN) schedule(static)
  for (int64_t i = 0; i < M; i++) {
    const float *xr = xp + i * C;
    float *yr = yp + i * C;
    double s = 0, ss = 0;
    if (!rms) {
      for (int64_t j = 0; j < C; j++) s += xr[j];
      s /= (double)C;
    }
    for (int64_t j = 0; j < C; j++) { double d = xr[j] - s; ss += d * d; }
    float mu = (float)s, rs = (float)(1.0 / sqrt(ss / (double)C + eps));
    mean[i] = mu;
    rstd[i] = rs;
    for (int64_t j = 0; j < C; j++) {
      float v = (xr[j] - mu) * rs;
      if (wp) v *= wp[j];
      if (bp) v += bp[j];
      yr[j] = v;
    }
  }
  la_release(wc);
  la_release(bc);
  la_tensor *in[3] = {x, w, b};
  la_node *n;
  out = la_record(out, op, la_norm_backward, rms ? 2 : 3, in, 3, &n);
  if (n) {
    n->iarg[0] = rms;
    if (la_node_save(n, 0, x2) < 0 || (w && la_node_save(n, 1, w) < 0) ||
        la_node_save(n, 2, stats) < 0) {
      la_release(out);
      out = NULL;
    }
  }
  la_release(x2);
  la_release(stats);
  return out;
}

la_tensor *la_layer_norm(la_tensor *x, la_tensor *w, la_tensor *b, double eps) {
  return la_norm("layer_norm", x, w, b, eps, false);
}

la_tensor *la_rms_norm(la_tensor *x, la_tensor *w, double eps) {
  return la_norm("rms_norm", x, w, NULL, eps, true);
}

/* ---------------------------------------------------------------- dropout */

static int la_dropout_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  la_tensor *mask = n->saved[0];
  la_tensor *g = la_contiguous(gout);
  if (!g) return -1;
  la_tensor *dx = la_empty(LA_FLOAT32, g->ndim, g->shape);
  if (!dx) { la_release(g); return -1; }
  const uint8_t *mp = la_data(mask);
  const float *gp = la_fdata(g);
  float *dp = la_fdata(dx), scale = (float)n->farg[0];
  int64_t total = la_numel(g);
  for (int64_t i = 0; i < total; i++) dp[i] = mp[i] ? gp[i] * scale : 0.0f;
  la_release(g);
  gin[0] = dx;
  return 0;
}

la_tensor *la_dropout(la_tensor *x, double p) {
  if (la_check_f32("dropout", x, "input") < 0) return NULL;
  if (!(p >= 0 && p < 1)) return la_fail("dropout: p must be in [0, 1) (got %g)", p);
  if (p == 0) return la_retain(x);
  la_tensor *xc = la_contiguous(x);
  if (!xc) return NULL;
  la_tensor *out = la_empty(LA_FLOAT32, x->ndim, x->shape);
  la_tensor *mask = out ? la_empty(LA_BOOL, x->ndim, x->shape) : NULL;
  if (!mask) { la_release(xc); la_release(out); return NULL; }
  const float *xp = la_fdata(xc);
  float *yp = la_fdata(out), scale = (float)(1.0 / (1.0 - p));
  uint8_t *mp = la_data(mask);
  /* One draw of 64 bits gives four 16-bit uniforms; serial, so the same
  ** seed gives the same mask on any number of threads. */
  uint32_t keep_below = (uint32_t)((1.0 - p) * 65536.0);
  int64_t total = la_numel(xc);
  for (int64_t i = 0; i < total; i += 4) {
    uint64_t r = la_rng_next();
    for (int k = 0; k < 4 && i + k < total; k++, r >>= 16) {
      uint8_t keep = (uint32_t)(r & 0xffff) < keep_below;
      mp[i + k] = keep;
      yp[i + k] = keep ? xp[i + k] * scale : 0.0f;
    }
  }
  la_release(xc);
  la_node *n;
  out = la_record(out, "dropout", la_dropout_backward, 1, &x, 1, &n);
  if (n) {
    n->farg[0] = scale;
    if (la_node_save(n, 0, mask) < 0) { la_release(out); out = NULL; }
  }
  la_release(mask);
  return out;
}

/* ---------------------------------------------------------------- SwiGLU */

/* y = silu(gate) * up, with silu(g) = g * sigmoid(g) (s below):
**   dgate = dy * up * s * (1 + g (1 - s)),   dup = dy * g * s
** One pass each way over the two inputs; the (.., hidden) products of the
** two projections are read once and nothing but y is written. */
typedef struct {
  const float *g, *u, *dy;
  float *y, *dg, *du;
} la_swiglu_job;

static void la_swiglu_fwd_range(void *ctx, int64_t lo, int64_t hi) {
  const la_swiglu_job *j = ctx;
  for (int64_t i = lo; i < hi; i++) j->y[i] = j->g[i] * la_sigmoidf_fast(j->g[i]) * j->u[i];
}

static void la_swiglu_bwd_range(void *ctx, int64_t lo, int64_t hi) {
  const la_swiglu_job *j = ctx;
  for (int64_t i = lo; i < hi; i++) {
    float g = j->g[i], s = la_sigmoidf_fast(g), d = j->dy[i];
    if (j->dg) j->dg[i] = d * j->u[i] * s * (1.0f + g * (1.0f - s));
    if (j->du) j->du[i] = d * g * s;
  }
}

static int la_swiglu_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  la_tensor *g = n->saved[0], *u = n->saved[1];
  la_tensor *dy = la_contiguous(gout);
  if (!dy) return -1;
  bool need_g = LA_NEEDS_GRAD(n, 0), need_u = LA_NEEDS_GRAD(n, 1);
  la_tensor *dg = need_g ? la_empty(LA_FLOAT32, g->ndim, g->shape) : NULL;
  la_tensor *du = need_u ? la_empty(LA_FLOAT32, u->ndim, u->shape) : NULL;
  if ((need_g && !dg) || (need_u && !du)) {
    la_release(dy); la_release(dg); la_release(du);
    return -1;
  }
  la_swiglu_job j = {la_fdata(g), la_fdata(u), la_fdata(dy), NULL, dg ? la_fdata(dg) : NULL,
                     du ? la_fdata(du) : NULL};
  int64_t total = la_numel(g);
  la_parallel_range(total, total >= LA_PARALLEL_GRAIN, la_swiglu_bwd_range, &j);
  la_release(dy);
  gin[0] = dg;
  gin[1] = du;
  return 0;
}

la_tensor *la_swiglu(la_tensor *gate, la_tensor *up) {
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF];
  if (la_check_f32("swiglu", gate, "gate") < 0 || la_check_f32("swiglu", up, "up") < 0) return NULL;
  if (!la_same_shape(gate, up))
    return la_fail("swiglu: gate of shape %s and up of shape %s must have the same shape",
                   la_shape_str(b1, sizeof b1, gate->ndim, gate->shape),
                   la_shape_str(b2, sizeof b2, up->ndim, up->shape));
  la_tensor *g = la_contiguous(gate), *u = g ? la_contiguous(up) : NULL;
  la_tensor *out = u ? la_empty(LA_FLOAT32, gate->ndim, gate->shape) : NULL;
  if (!out) { la_release(g); la_release(u); return NULL; }
  la_swiglu_job j = {la_fdata(g), la_fdata(u), NULL, la_fdata(out), NULL, NULL};
  int64_t total = la_numel(g);
  la_parallel_range(total, total >= LA_PARALLEL_GRAIN, la_swiglu_fwd_range, &j);
  la_tensor *in[2] = {gate, up};
  la_node *n;
  out = la_record(out, "swiglu", la_swiglu_backward, 2, in, 2, &n);
  if (n && (la_node_save(n, 0, g) < 0 || la_node_save(n, 1, u) < 0)) {
    la_release(out);
    out = NULL;
  }
  la_release(g);
  la_release(u);
  return out;
}

/* ---------------------------------------------------------------- SwiGLU into a projection */

/* y = swiglu(gate, up) W^T + b: the end of the Llama-family MLP as one op.
** swiglu(gate, up) (hidden wide) is made in a temporary, projected, and
** dropped; the backward pass makes it again from the saved gate and up.  Kept
** for the backward pass: gate, up and W -- not the product, which a separate
** linear layer would keep (a third hidden-wide tensor per layer).
**   dW = dy^T h,  db = column sums of dy,  dh = dy W,  then dgate, dup as SwiGLU's. */
static la_tensor *la_swiglu_product(la_tensor *g, la_tensor *u) {
  la_tensor *h = la_empty(LA_FLOAT32, g->ndim, g->shape);
  if (!h) return NULL;
  la_swiglu_job j = {la_fdata(g), la_fdata(u), NULL, la_fdata(h), NULL, NULL};
  int64_t total = la_numel(g);
  la_parallel_range(total, total >= LA_PARALLEL_GRAIN, la_swiglu_fwd_range, &j);
  return h;
}

static int la_swiglu_linear_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  la_tensor *g = n->saved[0], *u = n->saved[1], *w = n->saved[2];
  int64_t O = w->shape[0];
  la_tensor *dy = la_as_rows(gout), *h = dy ? la_swiglu_product(g, u) : NULL;
  la_tensor *h2 = h ? la_as_rows(h) : NULL;
  int rc = h2 ? 0 : -1;
  if (rc == 0 && LA_NEEDS_GRAD(n, 2)) {            /* dW = dy^T h */
    la_tensor *dw = la_empty(LA_FLOAT32, 2, w->shape);
    rc = dw ? la_gemm(true, false, 1.0f, dy, h2, 0.0f, dw) : -1;
    if (rc == 0) gin[2] = dw; else la_release(dw);
  }
  if (rc == 0 && n->n_in > 3 && LA_NEEDS_GRAD(n, 3)) {   /* db */
    la_tensor *db = la_empty(LA_FLOAT32, 1, &O);
    if (db) { la_colsum(la_fdata(dy), dy->shape[0], O, la_fdata(db)); gin[3] = db; }
    else rc = -1;
  }
  la_release(h2);
  if (rc == 0 && (LA_NEEDS_GRAD(n, 0) || LA_NEEDS_GRAD(n, 1))) {   /* dh = dy W, into h's memory */
    la_tensor *dh2 = la_as_rows(h);
    rc = dh2 ? la_gemm(false, false, 1.0f, dy, w, 0.0f, dh2) : -1;
    la_release(dh2);
    bool need_g = LA_NEEDS_GRAD(n, 0), need_u = LA_NEEDS_GRAD(n, 1);
    la_tensor *dg = rc == 0 && need_g ? la_empty(LA_FLOAT32, g->ndim, g->shape) : NULL;
    la_tensor *du = rc == 0 && need_u ? la_empty(LA_FLOAT32, u->ndim, u->shape) : NULL;
    if (rc == 0 && ((need_g && !dg) || (need_u && !du))) rc = -1;
    if (rc == 0) {
      la_swiglu_job j = {la_fdata(g), la_fdata(u), la_fdata(h), NULL, dg ? la_fdata(dg) : NULL,
                         du ? la_fdata(du) : NULL};
      int64_t total = la_numel(g);
      la_parallel_range(total, total >= LA_PARALLEL_GRAIN, la_swiglu_bwd_range, &j);
      gin[0] = dg;
      gin[1] = du;
    } else {
      la_release(dg);
      la_release(du);
    }
  }
  la_release(h);
  la_release(dy);
  return rc;
}

la_tensor *la_swiglu_linear(la_tensor *gate, la_tensor *up, la_tensor *w, la_tensor *b) {
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF];
  if (la_check_f32("swiglu_linear", gate, "gate") < 0 || la_check_f32("swiglu_linear", up, "up") < 0)
    return NULL;
  if (!la_same_shape(gate, up))
    return la_fail("swiglu_linear: gate of shape %s and up of shape %s must have the same shape",
                   la_shape_str(b1, sizeof b1, gate->ndim, gate->shape),
                   la_shape_str(b2, sizeof b2, up->ndim, up->shape));
  la_tensor *g = la_contiguous(gate), *u = g ? la_contiguous(up) : NULL;
  la_tensor *h = u ? la_swiglu_product(g, u) : NULL;
  if (!h) { la_release(g); la_release(u); return NULL; }
  /* the projection itself, unrecorded: this op records one node for all of it */
  bool previous = la_set_grad_enabled(false);
  la_tensor *out = la_linear(h, w, b);
  la_set_grad_enabled(previous);
  la_release(h);
  if (!out) {
    la_release(g); la_release(u);
    la_error_prefix("swiglu_linear: ");
    return NULL;
  }
  la_tensor *in[4] = {gate, up, w, b};
  la_node *n;
  out = la_record(out, "swiglu_linear", la_swiglu_linear_backward, b ? 4 : 3, in, 3, &n);
  if (n && (la_node_save(n, 0, g) < 0 || la_node_save(n, 1, u) < 0 || la_node_save(n, 2, w) < 0)) {
    la_release(out);
    out = NULL;
  }
  la_release(g);
  la_release(u);
  return out;
}
