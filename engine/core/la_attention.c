/*
** la_attention.c -- scaled dot-product attention, forward and backward.
**
** For each (batch, head) pair, on one thread each (the products are small,
** e.g. 256x256x64, and a second thread per product does not help):
**   forward   P = softmax(scale * Q K^T + masks)      (T x S, in a per-thread buffer)
**             Y = P V;  keep lse = log sum exp of each row of scores (B, H, T)
**   backward  P = exp(scale * Q K^T + masks - lse)    (recomputed, one more product)
**             dV = P^T dY
**             dP = dY V^T
**             dS = P * (dP - rowsum(dP * P))
**             dQ = scale * dS K,   dK = scale * dS^T Q
** Q, K, V, Y and their gradients are read and written through strides, so the
** fused projection (B, T, 3C) and the (B, T, C) output need no transposes or
** copies: a head is a column block of width D with row stride 3C (or C).
** Keeping (B, H, T) log-sum-exps instead of the (B, H, T, S) probabilities
** saves T x S floats per head per layer (a 30-layer model at T = S = 256 with
** 9 heads and batch 4: 280 MB) for one extra T x S x D product per head in the
** backward pass; the masks are kept (small) and applied again.
**
** Grouped-query attention: K and V may have fewer heads than Q (H = G * Hkv);
** query head h reads key/value head h / G straight from its buffer, so the
** repeated heads are never materialised.  The backward pass runs one thread
** per (batch, key/value head) and adds the group's G contributions to dK and
** dV in turn (BLAS beta = 1 after the first), so no two threads write the
** same rows.
*/
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "la_math.h"
#include "la_nn.h"

/* One operand seen as (B, H, rows, D): element strides for b, h and rows;
** D is contiguous. */
typedef struct {
  float *p;
  int64_t sb, sh, st;
} la_heads;

static inline float *la_head(const la_heads *x, int64_t b, int64_t h) {
  return x->p + b * x->sb + h * x->sh;
}

typedef struct {
  int64_t B, H, T, S, D;
  int64_t G;                 /* query heads per key/value head */
  double scale;
  bool causal;
  int64_t offset;
  int64_t window;            /* > 0: query i sees keys j > i + offset - window */
  const float *key_mask;     /* (B, S) as float 0/1, or NULL */
  const int64_t *segments;   /* (B, S), or NULL */
} la_attn_shape;

/* ---------------------------------------------------------------- forward */

/* Sets the masked scores of row i to -inf (keys after the query, padded keys,
** other segments, keys before the sliding window); returns the row's causal
** limit (keys at and past it are not attended either). */
static int64_t la_attn_mask_row(float *row, const la_attn_shape *a, int64_t b, int64_t i) {
  int64_t S = a->S, limit = a->causal ? i + a->offset + 1 : S;
  if (limit > S) limit = S;
  int64_t first = a->window > 0 ? i + a->offset - a->window + 1 : 0;
  for (int64_t j = 0; j < first && j < limit; j++) row[j] = -INFINITY;
  const float *km = a->key_mask ? a->key_mask + b * S : NULL;
  const int64_t *seg = a->segments ? a->segments + b * S : NULL;
  int64_t qseg = seg ? seg[i + a->offset < S ? i + a->offset : S - 1] : 0;
  if (km || seg)
    for (int64_t j = 0; j < limit; j++)
      if ((km && km[j] == 0) || (seg && seg[j] != qseg)) row[j] = -INFINITY;
  return limit;
}

/* Masks, exponentiates and normalises one row of scores in place; returns
** its log-sum-exp (-inf when nothing is attended: a padding query, whose
** row becomes zeros and whose output is zero). */
static float la_attn_softmax_row(float *row, const la_attn_shape *a, int64_t b, int64_t i) {
  int64_t S = a->S, limit = la_attn_mask_row(row, a, b, i);
  float m = la_max_of(row, limit);
  if (m == -INFINITY) {
    memset(row, 0, (size_t)S * sizeof(float));
    return -INFINITY;
  }
  double sum = la_sum_exp(row, limit, m);
  float inv = (float)(1.0 / sum);
  for (int64_t j = 0; j < limit; j++) row[j] = la_expf(row[j] - m) * inv;   /* exp(-inf) = 0 */
  for (int64_t j = limit; j < S; j++) row[j] = 0.0f;
  return m + (float)log(sum);
}

/* The probabilities of row i again, from its scores and the forward pass's
** log-sum-exp. */
static void la_attn_prob_row(float *row, const la_attn_shape *a, int64_t b, int64_t i, float lse) {
  int64_t S = a->S, limit = la_attn_mask_row(row, a, b, i);
  if (lse == -INFINITY) limit = 0;
  for (int64_t j = 0; j < limit; j++) row[j] = la_expf(row[j] - lse);
  for (int64_t j = limit; j < S; j++) row[j] = 0.0f;
}

/* Heads run in parallel only when there is enough work to pay for waking
** the threads (about 1M multiply-adds in all). */
static bool la_attn_parallel(const la_attn_shape *a) {
  return a->B * a->H > 1 && (double)a->B * a->H * a->T * a->S * a->D >= 1024.0 * 1024.0;
}

/* Scores scale * Q K^T of head h into p (T x S). */
static void la_attn_scores(const la_attn_shape *a, const la_heads *q, const la_heads *k, int64_t b,
                           int64_t h, float *p) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)a->T, (int)a->S, (int)a->D, (float)a->scale,
              la_head(q, b, h), (int)q->st, la_head(k, b, h / a->G), (int)k->st, 0.0f, p, (int)a->S);
}

/* Y and the rows' log-sum-exps lse (B, H, T); the probabilities live in a
** per-thread buffer.  Returns -1 when that buffer cannot be allocated. */
static int la_attn_forward(const la_attn_shape *a, const la_heads *q, const la_heads *k,
                           const la_heads *v, float *lse, const la_heads *y) {
  int64_t BH = a->B * a->H, T = a->T, S = a->S, D = a->D;
  int nt = la_get_num_threads();
  float *scratch = malloc((size_t)nt * (size_t)(T * S) * sizeof(float));
  if (!scratch) return la_failn("attention: out of memory for a %lld x %lld block of scores", (long long)T, (long long)S);
  #pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (la_attn_parallel(a))
  for (int64_t bh = 0; bh < BH; bh++) {
    int64_t b = bh / a->H, h = bh % a->H;
    float *p = scratch + (size_t)omp_get_thread_num() * (size_t)(T * S);
    la_attn_scores(a, q, k, b, h, p);
    for (int64_t i = 0; i < T; i++) lse[bh * T + i] = la_attn_softmax_row(p + i * S, a, b, i);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T, (int)D, (int)S, 1.0f, p,
                (int)S, la_head(v, b, h / a->G), (int)v->st, 0.0f, la_head(y, b, h), (int)y->st);
  }
  free(scratch);
  return 0;
}

/* ---------------------------------------------------------------- backward */

static int la_attn_backward_kernel(const la_attn_shape *a, const la_heads *q, const la_heads *k,
                                   const la_heads *v, const float *lse, const la_heads *dy,
                                   const la_heads *dq, const la_heads *dk, const la_heads *dv) {
  int64_t Hkv = a->H / a->G, BHkv = a->B * Hkv, T = a->T, S = a->S, D = a->D;
  int nt = la_get_num_threads();
  float *scratch = malloc((size_t)nt * 2 * (size_t)(T * S) * sizeof(float));
  if (!scratch) return la_failn("attention: out of memory for the backward pass");
  float scale = (float)a->scale;
  bool parallel = BHkv > 1 && la_attn_parallel(a);
  #pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (parallel)
  for (int64_t bk = 0; bk < BHkv; bk++) {
    int64_t b = bk / Hkv, kvh = bk % Hkv;
    float *p = scratch + (size_t)omp_get_thread_num() * 2 * (size_t)(T * S), *ds = p + T * S;
    for (int64_t g = 0; g < a->G; g++) {
      int64_t h = kvh * a->G + g;
      const float *row_lse = lse + (b * a->H + h) * T;
      la_attn_scores(a, q, k, b, h, p);
      for (int64_t i = 0; i < T; i++) la_attn_prob_row(p + i * S, a, b, i, row_lse[i]);
      float acc = g ? 1.0f : 0.0f;   /* the group's heads add into one dK, dV */
      /* dV += P^T dY */
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)S, (int)D, (int)T, 1.0f, p, (int)S,
                  la_head(dy, b, h), (int)dy->st, acc, la_head(dv, b, kvh), (int)dv->st);
      /* dP = dY V^T, then dS = P * (dP - rowsum(dP * P)) in place */
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)S, (int)D, 1.0f,
                  la_head(dy, b, h), (int)dy->st, la_head(v, b, kvh), (int)v->st, 0.0f, ds, (int)S);
      for (int64_t i = 0; i < T; i++) {
        const float *pr = p + i * S;
        float *dr = ds + i * S;
        double dot = 0;
        for (int64_t j = 0; j < S; j++) dot += (double)pr[j] * dr[j];
        float fd = (float)dot;
        for (int64_t j = 0; j < S; j++) dr[j] = pr[j] * (dr[j] - fd);
      }
      /* dQ = scale dS K,  dK += scale dS^T Q */
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T, (int)D, (int)S, scale, ds,
                  (int)S, la_head(k, b, kvh), (int)k->st, 0.0f, la_head(dq, b, h), (int)dq->st);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)S, (int)D, (int)T, scale, ds,
                  (int)S, la_head(q, b, h), (int)q->st, acc, la_head(dk, b, kvh), (int)dk->st);
    }
  }
  free(scratch);
  return 0;
}

/* ---------------------------------------------------------------- checks */

/* Reads the optional masks as contiguous float / int64 copies. */
static int la_attn_masks(const char *op, const la_attn_opts *o, int64_t B, int64_t S,
                         la_tensor **km, la_tensor **seg) {
  char b1[LA_SHAPE_BUF];
  *km = *seg = NULL;
  la_tensor *m[2] = {o->key_mask, o->segments};
  for (int i = 0; i < 2; i++) {
    if (!m[i]) continue;
    if (m[i]->ndim != 2 || m[i]->shape[0] != B || m[i]->shape[1] != S)
      return la_failn("%s: %s has shape %s; expected (%lld, %lld) (batch, keys)", op,
                      i ? "segment ids" : "key mask", la_shape_str(b1, sizeof b1, m[i]->ndim, m[i]->shape),
                      (long long)B, (long long)S);
    if (i == 1 && m[i]->dtype == LA_FLOAT32)
      return la_failn("%s: segment ids must be an integer tensor", op);
    la_tensor *c = la_to_dtype(m[i], i ? LA_INT64 : LA_FLOAT32);
    la_tensor *cc = c ? la_contiguous(c) : NULL;
    la_release(c);
    if (!cc) return -1;
    if (i) *seg = cc; else *km = cc;
  }
  return 0;
}

static la_attn_shape la_attn_shape_of(int64_t B, int64_t H, int64_t Hkv, int64_t T, int64_t S,
                                      int64_t D, const la_attn_opts *o, la_tensor *km, la_tensor *seg) {
  la_attn_shape a = {B, H, T, S, D, H / Hkv, o->scale > 0 ? o->scale : 1.0 / sqrt((double)D),
                     o->causal, o->causal_offset, o->window, km ? la_fdata(km) : NULL,
                     seg ? (const int64_t *)la_data(seg) : NULL};
  return a;
}

/* ---------------------------------------------------------------- fused qkv */

static int la_attn_qkv_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  la_tensor *qkv = n->saved[0], *lse = n->saved[1], *km = n->saved[2], *seg = n->saved[3];
  int64_t B = qkv->shape[0], T = qkv->shape[1], C3 = qkv->shape[2], H = n->iarg[0];
  int64_t C = C3 / 3, D = C / H;
  la_tensor *g = la_contiguous(gout);
  la_tensor *dqkv = g ? la_empty(LA_FLOAT32, 3, qkv->shape) : NULL;
  if (!dqkv) { la_release(g); return -1; }
  la_attn_opts o = {.causal = n->iarg[1] != 0, .causal_offset = 0, .scale = n->farg[0], .window = n->iarg[2]};
  la_attn_shape a = la_attn_shape_of(B, H, H, T, T, D, &o, km, seg);
  float *base = la_fdata(qkv), *dbase = la_fdata(dqkv);
  la_heads q = {base, T * C3, D, C3}, k = {base + C, T * C3, D, C3}, v = {base + 2 * C, T * C3, D, C3};
  la_heads dq = {dbase, T * C3, D, C3}, dk = {dbase + C, T * C3, D, C3}, dv = {dbase + 2 * C, T * C3, D, C3};
  la_heads dy = {la_fdata(g), T * C, D, C};
  int rc = la_attn_backward_kernel(&a, &q, &k, &v, la_fdata(lse), &dy, &dq, &dk, &dv);
  la_release(g);
  if (rc < 0) { la_release(dqkv); return -1; }
  gin[0] = dqkv;
  return 0;
}

la_tensor *la_attention_qkv(la_tensor *qkv, int n_head, const la_attn_opts *o) {
  char b1[LA_SHAPE_BUF];
  const char *op = "attention";
  if (qkv->dtype != LA_FLOAT32 || qkv->ndim != 3 || n_head < 1 || qkv->shape[2] % (3 * n_head))
    return la_fail("%s: qkv must be float32 (batch, time, 3 * heads * head_dim); got %s %s with "
                   "%d heads", op, la_dtype_name(qkv->dtype),
                   la_shape_str(b1, sizeof b1, qkv->ndim, qkv->shape), n_head);
  if (o->causal_offset != 0) return la_fail("%s: the fused form has no cache offset", op);
  if (o->window < 0) return la_fail("%s: the sliding window must be positive (got %lld)", op, (long long)o->window);
  int64_t B = qkv->shape[0], T = qkv->shape[1], C = qkv->shape[2] / 3, H = n_head, D = C / H;
  la_tensor *km, *seg;
  if (la_attn_masks(op, o, B, T, &km, &seg) < 0) return NULL;
  la_tensor *x = la_contiguous(qkv);
  la_tensor *out = x ? la_empty(LA_FLOAT32, 3, (int64_t[]){B, T, C}) : NULL;
  la_tensor *lse = out ? la_empty(LA_FLOAT32, 3, (int64_t[]){B, H, T}) : NULL;
  if (!lse) { la_release(x); la_release(out); la_release(km); la_release(seg); return NULL; }
  la_attn_shape a = la_attn_shape_of(B, H, H, T, T, D, o, km, seg);
  float *base = la_fdata(x);
  int64_t C3 = 3 * C;
  la_heads q = {base, T * C3, D, C3}, k = {base + C, T * C3, D, C3}, v = {base + 2 * C, T * C3, D, C3};
  la_heads y = {la_fdata(out), T * C, D, C};
  if (la_attn_forward(&a, &q, &k, &v, la_fdata(lse), &y) < 0) la_release_p(&out);
  la_node *n = NULL;
  if (out) out = la_record(out, op, la_attn_qkv_backward, 1, &qkv, 4, &n);
  if (n) {
    n->iarg[0] = H;
    n->iarg[1] = o->causal;
    n->iarg[2] = o->window;
    n->farg[0] = a.scale;
    if (la_node_save(n, 0, x) < 0 || la_node_save(n, 1, lse) < 0 || (km && la_node_save(n, 2, km) < 0) ||
        (seg && la_node_save(n, 3, seg) < 0)) {
      la_release(out);
      out = NULL;
    }
  }
  la_release(km);
  la_release(seg);
  la_release(x);
  la_release(lse);
  return out;
}

/* ---------------------------------------------------------------- q, k, v */

/* A (B, H, rows, D) operand with unit stride along D; copies if needed. */
static la_tensor *la_heads_ready(la_tensor *t, la_heads *h) {
  la_tensor *c = t->stride[3] == 1 || t->shape[3] == 1 ? la_retain(t) : la_contiguous(t);
  if (!c) return NULL;
  *h = (la_heads){la_fdata(c), c->stride[0], c->stride[1], c->stride[2]};
  if (c->shape[2] == 1) h->st = c->shape[3];   /* any row stride >= D is valid for BLAS */
  return c;
}

static int la_attn_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  la_tensor *qt = n->saved[0], *kt = n->saved[1], *vt = n->saved[2], *lse = n->saved[3];
  la_tensor *km = n->saved[4], *seg = n->saved[5];
  int64_t B = qt->shape[0], H = qt->shape[1], T = qt->shape[2], D = qt->shape[3], S = kt->shape[2];
  la_attn_opts o = {.causal = n->iarg[0] != 0, .causal_offset = n->iarg[1], .scale = n->farg[0],
                    .window = n->iarg[2]};
  la_attn_shape a = la_attn_shape_of(B, H, kt->shape[1], T, S, D, &o, km, seg);
  la_heads q, k, v, dy;
  la_tensor *g = la_heads_ready(gout, &dy), *qc = NULL, *kc = NULL, *vc = NULL;
  la_tensor *dq = la_empty(LA_FLOAT32, 4, qt->shape), *dk = la_empty(LA_FLOAT32, 4, kt->shape),
            *dv = la_empty(LA_FLOAT32, 4, vt->shape);
  int rc = -1;
  if (g && dq && dk && dv && (qc = la_heads_ready(qt, &q)) && (kc = la_heads_ready(kt, &k)) &&
      (vc = la_heads_ready(vt, &v))) {
    int64_t Hkv = kt->shape[1];
    la_heads hq = {la_fdata(dq), H * T * D, T * D, D}, hk = {la_fdata(dk), Hkv * S * D, S * D, D},
             hv = {la_fdata(dv), Hkv * S * D, S * D, D};
    rc = la_attn_backward_kernel(&a, &q, &k, &v, la_fdata(lse), &dy, &hq, &hk, &hv);
  }
  la_release(g); la_release(qc); la_release(kc); la_release(vc);
  if (rc < 0) { la_release(dq); la_release(dk); la_release(dv); return -1; }
  gin[0] = dq; gin[1] = dk; gin[2] = dv;
  return 0;
}

la_tensor *la_attention(la_tensor *q, la_tensor *k, la_tensor *v, const la_attn_opts *o) {
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF], b3[LA_SHAPE_BUF];
  const char *op = "attention";
  bool ok = q->ndim == 4 && k->ndim == 4 && v->ndim == 4 && q->dtype == LA_FLOAT32 &&
            k->dtype == LA_FLOAT32 && v->dtype == LA_FLOAT32 && la_same_shape(k, v) &&
            q->shape[0] == k->shape[0] && k->shape[1] > 0 && q->shape[1] % k->shape[1] == 0 &&
            q->shape[3] == k->shape[3];
  if (!ok)
    return la_fail("%s: q, k, v must be float32 (batch, heads, time, head_dim) with matching batch "
                   "and head_dim, k and v of one shape, and q's heads a multiple of k's (grouped-query "
                   "attention); got %s, %s, %s", op,
                   la_shape_str(b1, sizeof b1, q->ndim, q->shape), la_shape_str(b2, sizeof b2, k->ndim, k->shape),
                   la_shape_str(b3, sizeof b3, v->ndim, v->shape));
  int64_t B = q->shape[0], H = q->shape[1], T = q->shape[2], D = q->shape[3], S = k->shape[2];
  if (o->causal && (o->causal_offset < 0 || T + o->causal_offset > S))
    return la_fail("%s: a causal offset of %lld does not fit %lld queries and %lld keys", op,
                   (long long)o->causal_offset, (long long)T, (long long)S);
  if (o->window < 0) return la_fail("%s: the sliding window must be positive (got %lld)", op, (long long)o->window);
  la_tensor *km, *seg;
  if (la_attn_masks(op, o, B, S, &km, &seg) < 0) return NULL;
  la_heads hq, hk, hv;
  la_tensor *qc = la_heads_ready(q, &hq), *kc = qc ? la_heads_ready(k, &hk) : NULL;
  la_tensor *vc = kc ? la_heads_ready(v, &hv) : NULL;
  /* The output is laid out (B, T, H, D) and returned as a (B, H, T, D) view. */
  la_tensor *buf = vc ? la_empty(LA_FLOAT32, 4, (int64_t[]){B, T, H, D}) : NULL;
  la_tensor *lse = buf ? la_empty(LA_FLOAT32, 3, (int64_t[]){B, H, T}) : NULL;
  la_tensor *out = NULL;
  if (lse) {
    la_attn_shape a = la_attn_shape_of(B, H, k->shape[1], T, S, D, o, km, seg);
    la_heads y = {la_fdata(buf), T * H * D, D, H * D};
    if (la_attn_forward(&a, &hq, &hk, &hv, la_fdata(lse), &y) == 0) out = la_alias(buf);
    if (out) {
      out->shape[1] = H; out->shape[2] = T;
      out->stride[0] = T * H * D; out->stride[1] = D; out->stride[2] = H * D; out->stride[3] = 1;
    }
    la_tensor *in[3] = {q, k, v};
    la_node *n = NULL;
    if (out) out = la_record(out, op, la_attn_backward, 3, in, 6, &n);
    if (n) {
      n->iarg[0] = o->causal;
      n->iarg[1] = o->causal_offset;
      n->iarg[2] = o->window;
      n->farg[0] = a.scale;
      if (la_node_save(n, 0, qc) < 0 || la_node_save(n, 1, kc) < 0 || la_node_save(n, 2, vc) < 0 ||
          la_node_save(n, 3, lse) < 0 || (km && la_node_save(n, 4, km) < 0) ||
          (seg && la_node_save(n, 5, seg) < 0)) {
        la_release(out);
        out = NULL;
      }
    }
  }
  la_release(qc); la_release(kc); la_release(vc); la_release(buf); la_release(lse);
  la_release(km); la_release(seg);
  return out;
}
