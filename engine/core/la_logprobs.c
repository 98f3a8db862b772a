/*
** la_logprobs.c -- per-token log-probabilities and entropies of a softmax
** over the vocabulary, fused: log-softmax, gather at the target, mask and
** sum (or mean) over the sequence in one kernel, forward and backward.
**
** Two sources of logits:
**
**  - la_logprobs / la_entropy take logits (..., V).  The forward pass keeps
**    one log-sum-exp per row; the backward pass writes
**    (onehot - softmax) * scale * upstream straight from the logits, so no
**    (..., V) log-softmax is ever stored.
**  - la_logprobs_hidden / la_entropy_hidden take hidden states (..., C) and
**    the LM-head weight (V, C) and never materialise the logits: rows are
**    processed in chunks of R, each chunk's logits (R, V) computed by one
**    GEMM into a scratch buffer, reduced to its statistics and dropped.  The
**    backward pass recomputes each chunk and turns it into the gradient of the
**    logits in place, then dH = G W and dW += G^T H (two more GEMMs).
**    When the weight is frozen (a LoRA model's tied head), the forward pass
**    itself turns each chunk into the gradient of the row's value with
**    respect to its hidden state, J (one GEMM, while the chunk is still in
**    cache), and keeps J (N, C) instead of the hidden states: a row's value
**    depends on its own hidden state only, so the backward pass is
**    dH = upstream * J, with no second pass over the vocabulary.
**
** Rows whose mask is zero cost nothing: they are skipped in both passes (so
** prompt and padding tokens are free), and their targets are never read,
** which lets callers keep -100 or any filler there.
**
** Reductions (la_lp_reduce) run over the last leading dim (the time axis of
** (B, T, V)): per token (mask * value), per sequence sum, or per sequence
** mean over the mask's sum (0 where the mask sums to 0).
*/
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "la_math.h"
#include "la_nn.h"

/* ---------------------------------------------------------------- helpers */

static inline int64_t la_id_at(const la_tensor *t, int64_t i) {
  return t->dtype == LA_INT32 ? ((const int32_t *)la_data(t))[i] : ((const int64_t *)la_data(t))[i];
}

/* e^d for d <= 0 (a logit minus the row's maximum or log-sum-exp): la_expf
** without the overflow path (d is clamped to 0 from above: rounding may
** push it a few ulps past).  Below -87.3 the result is 0; NaN stays NaN,
** going through the arithmetic as 0 (converting NaN to an integer would be
** undefined behaviour). */
static inline float la_lp_exp(float d) {
  float dc = d < -87.3f ? -87.3f : (d > 0.0f ? 0.0f : (d != d ? 0.0f : d));
  float n, p = la_exp_reduce(dc, &n);
  int32_t bits = ((int32_t)n + 127) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  float y = d < -87.3f ? 0.0f : p * scale;
  return d != d ? d : y;
}

/* Largest element of x, in a loop the compiler vectorises (sixteen lanes).
** NaN is not looked for here: a NaN element makes the sum of exponentials
** that follows NaN, which is what the caller reports. */
static inline float la_lp_max(const float *x, int64_t n) {
  float acc[16];
  for (int k = 0; k < 16; k++) acc[k] = -INFINITY;
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    for (int k = 0; k < 16; k++) acc[k] = x[j + k] > acc[k] ? x[j + k] : acc[k];
  float m = -INFINITY;
  for (; j < n; j++) m = x[j] > m ? x[j] : m;
  for (int k = 0; k < 16; k++) m = acc[k] > m ? acc[k] : m;
  return m;
}

/* Statistics of one row z = s * x: log-sum-exp, and the entropy
** H = lse - sum p z when ent is not NULL.  One pass over the row, in blocks
** of 1024 that stay in L1: each block's maximum, then its exponentials
** against the running maximum (earlier sums rescaled when it grows).  -inf
** entries (masked vocabulary) are allowed; an all -inf row gives lse = -inf;
** NaN propagates; +inf gives lse = +inf. */
static void la_row_stats(const float *x, int64_t V, float s, float *lse, float *ent) {
  double s1 = 0, s2 = 0;   /* sum e^(z - m) and sum e^(z - m) (z - m) so far */
  float m = -INFINITY;     /* the running maximum */
  bool nan = false;
  for (int64_t b = 0; b < V; b += 1024) {
    int64_t e = b + 1024 < V ? b + 1024 : V;
    float bm = s * la_lp_max(x + b, e - b);
    if (bm == INFINITY) {
      *lse = INFINITY;
      if (ent) *ent = NAN;
      return;
    }
    if (!(bm > -INFINITY)) {   /* nothing but -inf, or NaN */
      for (int64_t j = b; j < e; j++) nan |= x[j] != x[j];
      continue;
    }
    if (bm > m) {
      if (s1 > 0) {
        double f = exp((double)m - bm);
        s2 = f * (s2 + ((double)m - bm) * s1);
        s1 *= f;
      }
      m = bm;
    }
    float a1[16] = {0}, a2[16] = {0};
    int64_t j = b;
    if (ent) {
      for (; j + 16 <= e; j += 16)
        for (int k = 0; k < 16; k++) {
          float d = s * x[j + k] - m;
          float p = la_lp_exp(d);
          a1[k] += p;
          a2[k] += p > 0.0f ? p * d : 0.0f;
        }
      for (; j < e; j++) {
        float d = s * x[j] - m, p = la_lp_exp(d);
        a1[0] += p;
        a2[0] += p > 0.0f ? p * d : 0.0f;
      }
    } else {
      for (; j + 16 <= e; j += 16)
        for (int k = 0; k < 16; k++) a1[k] += la_lp_exp(s * x[j + k] - m);
      for (; j < e; j++) a1[0] += la_lp_exp(s * x[j] - m);
    }
    double t1 = 0, t2 = 0;
    for (int k = 0; k < 16; k++) { t1 += a1[k]; t2 += a2[k]; }
    s1 += t1;
    s2 += t2;
  }
  if (nan) {
    *lse = NAN;
    if (ent) *ent = NAN;
    return;
  }
  if (m == -INFINITY) {
    *lse = -INFINITY;
    if (ent) *ent = 0.0f;
    return;
  }
  *lse = (float)(m + log(s1));
  if (ent) *ent = (float)(log(s1) - s2 / s1);
}

/* d/dx of g * logp[t] for z = s * x: g s (onehot - p).  gs = g * s. */
static void la_row_grad_logprob(const float *x, int64_t V, float s, float lse, int64_t tg,
                                float gs, float *d) {
  for (int64_t j = 0; j < V; j++) d[j] = -gs * la_lp_exp(s * x[j] - lse);
  d[tg] += gs;
}

/* d/dx of g * H: -g s p (log p + H). */
static void la_row_grad_entropy(const float *x, int64_t V, float s, float lse, float h, float gs,
                                float *d) {
  for (int64_t j = 0; j < V; j++) {
    float lp = s * x[j] - lse;
    float p = la_lp_exp(lp);
    d[j] = p > 0.0f ? -gs * p * (lp + h) : 0.0f;
  }
}

/* What the op computes and how it reduces. */
typedef struct la_lp_spec {
  const char *op;
  bool entropy;
  la_lp_reduce reduce;
  float scale;             /* 1 / temperature */
  int64_t rows, seq, V;    /* rows = product of leading dims; seq = the last of them */
} la_lp_spec;

/* Checks targets and mask against the leading shape of x (everything but
** the last dim); fills the spec's sizes.  Returns 0 or -1. */
static int la_lp_check(la_lp_spec *sp, la_tensor *x, const char *xname, la_tensor *targets,
                       la_tensor *mask) {
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF], b3[LA_SHAPE_BUF];
  const char *op = sp->op;
  if (x->dtype != LA_FLOAT32 || x->ndim < 2)
    return la_failn("%s: %s must be float32 with at least 2 dims, (B, T, %s); got %s %s", op, xname,
                    strcmp(xname, "logits") ? "C" : "V", la_dtype_name(x->dtype),
                    la_shape_str(b1, sizeof b1, x->ndim, x->shape));
  int nl = x->ndim - 1;
  if (targets) {
    if (targets->dtype != LA_INT32 && targets->dtype != LA_INT64)
      return la_failn("%s: targets must be int32 or int64 (0-based ids); got %s", op,
                      la_dtype_name(targets->dtype));
    if (targets->ndim != nl || memcmp(targets->shape, x->shape, (size_t)nl * sizeof(int64_t)))
      return la_failn("%s: targets of shape %s do not fit %s of shape %s (expected %s)", op,
                      la_shape_str(b1, sizeof b1, targets->ndim, targets->shape), xname,
                      la_shape_str(b2, sizeof b2, x->ndim, x->shape),
                      la_shape_str(b3, sizeof b3, nl, x->shape));
  }
  if (mask) {
    if (mask->ndim != nl || memcmp(mask->shape, x->shape, (size_t)nl * sizeof(int64_t)))
      return la_failn("%s: mask of shape %s does not fit %s of shape %s (expected %s)", op,
                      la_shape_str(b1, sizeof b1, mask->ndim, mask->shape), xname,
                      la_shape_str(b2, sizeof b2, x->ndim, x->shape),
                      la_shape_str(b3, sizeof b3, nl, x->shape));
  }
  if (!(sp->scale > 0) || !isfinite(sp->scale))
    return la_failn("%s: temperature must be positive and finite (got %g)", op, 1.0 / sp->scale);
  sp->rows = 1;
  for (int i = 0; i < nl; i++) sp->rows *= x->shape[i];
  sp->seq = x->shape[nl - 1];
  return 0;
}

/* The mask as contiguous float32 (NULL: all ones), and the ids of the rows
** that count (mask != 0) into *active (malloc'd) with their number. */
static int la_lp_rows(const la_lp_spec *sp, la_tensor *mask, la_tensor *targets, la_tensor **mf,
                      int64_t **active, int64_t *n_active) {
  *mf = NULL;
  *active = NULL;
  if (mask) {
    la_tensor *f = la_to_dtype(mask, LA_FLOAT32);
    if (!f) return -1;
    *mf = la_contiguous(f);
    la_release(f);
    if (!*mf) return -1;
  }
  int64_t *ids = malloc((size_t)(sp->rows ? sp->rows : 1) * sizeof *ids);
  if (!ids) { la_release_p(mf); return la_failn("%s: out of memory", sp->op); }
  const float *m = *mf ? la_fdata(*mf) : NULL;
  int64_t n = 0;
  for (int64_t i = 0; i < sp->rows; i++) {
    if (m && m[i] == 0.0f) continue;
    if (m && !isfinite(m[i])) {
      free(ids); la_release_p(mf);
      return la_failn("%s: mask value %g at position %lld is not finite", sp->op, (double)m[i],
                      (long long)i + 1);
    }
    if (targets) {
      int64_t tg = la_id_at(targets, i);
      if (tg < 0 || tg >= sp->V) {
        free(ids); la_release_p(mf);
        return la_failn("%s: target %lld at position %lld is out of range for a vocabulary of %lld "
                        "(targets are 0-based; positions where the mask is 0 are not read)",
                        sp->op, (long long)tg, (long long)i + 1, (long long)sp->V);
      }
    }
    ids[n++] = i;
  }
  *active = ids;
  *n_active = n;
  return 0;
}

/* Output tensor from per-row values v (0 for rows that do not count). */
static la_tensor *la_lp_output(const la_lp_spec *sp, int nl, const int64_t *lead, const float *v,
                               const float *m) {
  if (sp->reduce == LA_LP_TOKEN) {
    la_tensor *out = la_empty(LA_FLOAT32, nl, lead);
    if (!out) return NULL;
    float *o = la_fdata(out);
    for (int64_t i = 0; i < sp->rows; i++) o[i] = m ? (m[i] != 0.0f ? m[i] * v[i] : 0.0f) : v[i];
    return out;
  }
  la_tensor *out = la_empty(LA_FLOAT32, nl - 1, lead);
  if (!out) return NULL;
  float *o = la_fdata(out);
  int64_t S = sp->seq, nseq = S ? sp->rows / S : 0;
  if (S == 0) nseq = la_numel(out);
  for (int64_t b = 0; b < nseq; b++) {
    double total = 0, weight = 0;
    for (int64_t t = 0; t < S; t++) {
      int64_t i = b * S + t;
      double w = m ? m[i] : 1.0;
      if (w != 0.0) { total += w * v[i]; weight += w; }
    }
    o[b] = (float)(sp->reduce == LA_LP_MEAN ? (weight != 0.0 ? total / weight : 0.0) : total);
  }
  return out;
}

/* The upstream gradient of each row: g[i] = d out / d value_i * gout. */
static int la_lp_row_grads(const la_lp_spec *sp, la_tensor *gout, const float *m, float *g) {
  la_tensor *gc = la_contiguous(gout);
  if (!gc) return -1;
  const float *gp = la_fdata(gc);
  int64_t S = sp->seq;
  if (sp->reduce == LA_LP_TOKEN) {
    for (int64_t i = 0; i < sp->rows; i++) g[i] = m ? gp[i] * m[i] : gp[i];
  } else {
    int64_t nseq = S ? sp->rows / S : 0;
    for (int64_t b = 0; b < nseq; b++) {
      double weight = 0;
      if (sp->reduce == LA_LP_MEAN)
        for (int64_t t = 0; t < S; t++) weight += m ? m[b * S + t] : 1.0;
      for (int64_t t = 0; t < S; t++) {
        int64_t i = b * S + t;
        double w = m ? m[i] : 1.0;
        if (sp->reduce == LA_LP_MEAN) w = weight != 0.0 ? w / weight : 0.0;
        g[i] = (float)(gp[b] * w);
      }
    }
  }
  la_release(gc);
  return 0;
}

/* A 2-D header over rows r0 .. r0 + n of a contiguous (rows, cols) tensor. */
static la_tensor *la_rows_of(la_tensor *t, int64_t r0, int64_t n, int64_t cols) {
  la_tensor *v = la_alias(t);
  if (!v) return NULL;
  v->ndim = 2;
  v->shape[0] = n;
  v->shape[1] = cols;
  v->stride[0] = cols;
  v->stride[1] = 1;
  v->offset += r0 * cols;
  return v;
}

/* ---------------------------------------------------------------- from logits */

/* saved: logits (contiguous), targets or NULL, mask (float) or NULL, lse,
** entropy or NULL.  iarg: entropy flag, reduce.  farg: scale. */
static int la_logprobs_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  la_tensor *x = n->saved[0], *tg = n->saved[1], *mk = n->saved[2], *lse = n->saved[3];
  la_tensor *ent = n->saved[4];
  la_lp_spec sp = {n->op, n->iarg[0] != 0, (la_lp_reduce)n->iarg[1], (float)n->farg[0], 0, 0, 0};
  sp.V = x->shape[x->ndim - 1];
  sp.rows = la_numel(x) / (sp.V ? sp.V : 1);
  sp.seq = x->shape[x->ndim - 2];
  if (sp.V == 0) sp.rows = la_numel(lse);
  la_tensor *dx = la_empty(LA_FLOAT32, x->ndim, x->shape);
  float *g = malloc((size_t)(sp.rows ? sp.rows : 1) * sizeof *g);
  if (!dx || !g) { la_release(dx); free(g); return dx ? la_failn("out of memory") : -1; }
  const float *m = mk ? la_fdata(mk) : NULL;
  if (la_lp_row_grads(&sp, gout, m, g) < 0) { la_release(dx); free(g); return -1; }
  const float *xp = la_fdata(x), *lp = la_fdata(lse), *hp = ent ? la_fdata(ent) : NULL;
  float *dp = la_fdata(dx);
  int64_t V = sp.V, N = sp.rows;
  float s = sp.scale;
  #pragma omp parallel for if (N * V >= LA_PARALLEL_GRAIN) schedule(static)
  for (int64_t i = 0; i < N; i++) {
    float *dr = dp + i * V;
    if (g[i] == 0.0f || (m && m[i] == 0.0f)) { memset(dr, 0, (size_t)V * sizeof(float)); continue; }
    if (sp.entropy) la_row_grad_entropy(xp + i * V, V, s, lp[i], hp[i], g[i] * s, dr);
    else la_row_grad_logprob(xp + i * V, V, s, lp[i], la_id_at(tg, i), g[i] * s, dr);
  }
  free(g);
  gin[0] = dx;
  return 0;
}

static la_tensor *la_lp_logits(la_lp_spec *sp, la_tensor *logits, la_tensor *targets,
                               la_tensor *mask) {
  if (la_lp_check(sp, logits, "logits", targets, mask) < 0) return NULL;
  sp->V = logits->shape[logits->ndim - 1];
  if (sp->V == 0) return la_fail("%s: the vocabulary (last dim of logits) is empty", sp->op);
  la_tensor *x = la_contiguous(logits), *tg = NULL, *mf = NULL, *lse = NULL, *ent = NULL;
  int64_t *active = NULL, n_act = 0;
  float *vals = NULL;
  la_tensor *out = NULL;
  if (!x) return NULL;
  if (targets && !(tg = la_contiguous(targets))) goto done;
  if (la_lp_rows(sp, mask, tg, &mf, &active, &n_act) < 0) goto done;
  int64_t N = sp->rows, V = sp->V;
  lse = la_empty(LA_FLOAT32, 1, &N);
  if (!lse) goto done;
  if (sp->entropy && !(ent = la_empty(LA_FLOAT32, 1, &N))) goto done;
  vals = calloc((size_t)(N ? N : 1), sizeof *vals);
  if (!vals) { la_fail("%s: out of memory", sp->op); goto done; }
  {
    const float *xp = la_fdata(x);
    float *lp = la_fdata(lse), *hp = ent ? la_fdata(ent) : NULL;
    memset(lp, 0, (size_t)N * sizeof(float));
    if (hp) memset(hp, 0, (size_t)N * sizeof(float));
    float s = sp->scale;
    bool entropy = sp->entropy;
    #pragma omp parallel for if (n_act * V >= LA_PARALLEL_GRAIN) schedule(static)
    for (int64_t k = 0; k < n_act; k++) {
      int64_t i = active[k];
      const float *xr = xp + i * V;
      if (entropy) {
        la_row_stats(xr, V, s, &lp[i], &hp[i]);
        vals[i] = hp[i];
      } else {
        la_row_stats(xr, V, s, &lp[i], NULL);
        vals[i] = s * xr[la_id_at(tg, i)] - lp[i];
      }
    }
  }
  out = la_lp_output(sp, logits->ndim - 1, logits->shape, vals, mf ? la_fdata(mf) : NULL);
  {
    la_node *n;
    out = la_record(out, sp->op, la_logprobs_backward, 1, &logits, 5, &n);
    if (n) {
      n->iarg[0] = sp->entropy;
      n->iarg[1] = sp->reduce;
      n->farg[0] = sp->scale;
      if (la_node_save(n, 0, x) < 0 || (tg && la_node_save(n, 1, tg) < 0) ||
          (mf && la_node_save(n, 2, mf) < 0) || la_node_save(n, 3, lse) < 0 ||
          (ent && la_node_save(n, 4, ent) < 0))
        la_release_p(&out);
    }
  }
done:
  la_release(x);
  if (tg) la_release(tg);
  if (mf) la_release(mf);
  if (lse) la_release(lse);
  if (ent) la_release(ent);
  free(active);
  free(vals);
  return out;
}

la_tensor *la_logprobs(la_tensor *logits, la_tensor *targets, la_tensor *mask, la_lp_reduce reduce,
                       double temperature) {
  const char *names[] = {"token_logprobs", "sequence_logprobs", "sequence_logprobs"};
  if (!targets) return la_fail("%s: targets are required", names[reduce]);
  la_lp_spec sp = {names[reduce], false, reduce, (float)(1.0 / temperature), 0, 0, 0};
  return la_lp_logits(&sp, logits, targets, mask);
}

la_tensor *la_entropy(la_tensor *logits, la_tensor *mask, la_lp_reduce reduce, double temperature) {
  la_lp_spec sp = {"entropy", true, reduce, (float)(1.0 / temperature), 0, 0, 0};
  return la_lp_logits(&sp, logits, NULL, mask);
}

/* ---------------------------------------------------------------- from hidden states */

/* Rows per chunk: the scratch logits stay near 16M floats (64 MiB), with at
** least 16 rows for the GEMMs' sake and a multiple of 16. */
static int64_t la_lp_chunk(int64_t V, int64_t want) {
  if (want > 0) return want;
  int64_t r = (16 << 20) / (V ? V : 1);
  r = r < 16 ? 16 : (r > 1024 ? 1024 : r);
  return r & ~(int64_t)15;
}

/* Copies the hidden rows active[k0 .. k0 + r) into hc (r, C). */
static void la_gather_rows(const float *h, const int64_t *active, int64_t k0, int64_t r, int64_t C,
                           float *hc) {
  for (int64_t k = 0; k < r; k++)
    memcpy(hc + k * C, h + active[k0 + k] * C, (size_t)C * sizeof(float));
}

/* dst[active[k]] = (G W)[k] for the r rows of a chunk's logit gradients G
** (r, V), through the scratch rows (at least r, C).  Returns 0 or -1. */
static int la_scatter_gw(la_tensor *g, la_tensor *w, la_tensor *scratch, const int64_t *active, int64_t r,
                         int64_t C, la_tensor *dst) {
  la_tensor *sv = la_rows_of(scratch, 0, r, C);
  int rc = sv ? la_gemm(false, false, 1.0f, g, w, 0.0f, sv) : -1;
  if (rc == 0) {
    float *d = la_fdata(dst);
    const float *src = la_fdata(sv);
    for (int64_t k = 0; k < r; k++) memcpy(d + active[k] * C, src + k * C, (size_t)C * sizeof(float));
  }
  la_release(sv);
  return rc;
}

/* saved: hidden (rows, C), weight (V, C), targets or NULL, mask or NULL,
** lse, entropy or NULL.  iarg: entropy, reduce, chunk.  farg: scale. */
static int la_logprobs_hidden_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  la_tensor *h = n->saved[0], *w = n->saved[1], *tg = n->saved[2], *mk = n->saved[3];
  la_tensor *lse = n->saved[4], *ent = n->saved[5];
  la_lp_spec sp = {n->op, n->iarg[0] != 0, (la_lp_reduce)n->iarg[1], (float)n->farg[0], 0, 0, 0};
  int64_t V = w->shape[0], C = w->shape[1], N = la_numel(lse), R = n->iarg[2];
  sp.V = V;
  sp.rows = N;
  sp.seq = n->iarg[3];
  bool need_h = LA_NEEDS_GRAD(n, 0), need_w = LA_NEEDS_GRAD(n, 1);
  const float *m = mk ? la_fdata(mk) : NULL;
  float *g = malloc((size_t)(N ? N : 1) * sizeof *g);
  int64_t *active = malloc((size_t)(N ? N : 1) * sizeof *active);
  la_tensor *dh = NULL, *dw = NULL, *hc = NULL, *sc = NULL, *dhc = NULL;
  int rc = -1;
  if (!g || !active) { la_failn("out of memory"); goto done; }
  if (la_lp_row_grads(&sp, gout, m, g) < 0) goto done;
  int64_t n_act = 0;
  for (int64_t i = 0; i < N; i++)
    if (g[i] != 0.0f && !(m && m[i] == 0.0f)) active[n_act++] = i;
  if (need_h) {
    if (!(dh = la_empty(LA_FLOAT32, n->in[0].ndim, n->in[0].shape))) goto done;
    memset(la_fdata(dh), 0, (size_t)N * (size_t)C * sizeof(float));
  }
  if (need_w) {
    if (!(dw = la_empty(LA_FLOAT32, 2, w->shape))) goto done;
    memset(la_fdata(dw), 0, (size_t)V * (size_t)C * sizeof(float));
  }
  if (R > n_act) R = n_act;
  if (R > 0) {
    hc = la_empty(LA_FLOAT32, 2, (int64_t[]){R, C});
    sc = hc ? la_empty(LA_FLOAT32, 2, (int64_t[]){R, V}) : NULL;
    dhc = sc && need_h ? la_empty(LA_FLOAT32, 2, (int64_t[]){R, C}) : NULL;
    if (!sc || (need_h && !dhc)) goto done;
  }
  {
    const float *hp = la_fdata(h), *lp = la_fdata(lse), *ep = ent ? la_fdata(ent) : NULL;
    float s = sp.scale;
    bool first = true;
    for (int64_t k0 = 0; k0 < n_act; k0 += R) {
      int64_t r = n_act - k0 < R ? n_act - k0 : R;
      la_tensor *hv = la_rows_of(hc, 0, r, C), *sv = hv ? la_rows_of(sc, 0, r, V) : NULL;
      int step = sv ? 0 : -1;
      if (step == 0) {
        la_gather_rows(hp, active, k0, r, C, la_fdata(hv));
        step = la_gemm(false, true, s, hv, w, 0.0f, sv);   /* z = s h W^T */
      }
      if (step == 0) {
        float *sp2 = la_fdata(sv);
        bool entropy = sp.entropy;
        #pragma omp parallel for if (r * V >= LA_PARALLEL_GRAIN) schedule(static)
        for (int64_t k = 0; k < r; k++) {
          int64_t i = active[k0 + k];
          float *row = sp2 + k * V;
          /* the gradient with respect to z, times s (z = s h W^T), in place */
          if (entropy) la_row_grad_entropy(row, V, 1.0f, lp[i], ep[i], g[i] * s, row);
          else la_row_grad_logprob(row, V, 1.0f, lp[i], la_id_at(tg, i), g[i] * s, row);
        }
      }
      if (step == 0 && need_h) step = la_scatter_gw(sv, w, dhc, active + k0, r, C, dh);   /* dH = G W */
      if (step == 0 && need_w) {   /* dW += G^T H */
        step = la_gemm(true, false, 1.0f, sv, hv, first ? 0.0f : 1.0f, dw);
        first = false;
      }
      la_release(hv);
      la_release(sv);
      if (step < 0) goto done;
    }
  }
  gin[0] = dh;
  gin[1] = dw;
  dh = dw = NULL;
  rc = 0;
done:
  free(g);
  free(active);
  if (dh) la_release(dh);
  if (dw) la_release(dw);
  if (hc) la_release(hc);
  if (sc) la_release(sc);
  if (dhc) la_release(dhc);
  return rc;
}

/* The frozen-weight form.  saved: mask or NULL, J (rows, C): d value / d
** hidden per row, zero where the mask is.  iarg: reduce. */
static int la_logprobs_hidden_backward_frozen(la_node *n, la_tensor *gout, la_tensor **gin) {
  la_tensor *mk = n->saved[0], *J = n->saved[1];
  int64_t N = J->shape[0], C = J->shape[1];
  la_lp_spec sp = {.op = n->op, .reduce = (la_lp_reduce)n->iarg[0], .scale = 1.0f, .rows = N, .seq = n->iarg[1]};
  float *g = malloc((size_t)(N ? N : 1) * sizeof *g);
  la_tensor *dh = g ? la_empty(LA_FLOAT32, n->in[0].ndim, n->in[0].shape) : NULL;
  if (!dh || la_lp_row_grads(&sp, gout, mk ? la_fdata(mk) : NULL, g) < 0) {
    if (!g) la_failn("out of memory");
    free(g);
    if (dh) la_release(dh);
    return -1;
  }
  const float *jp = la_fdata(J);
  float *dp = la_fdata(dh);
  #pragma omp parallel for if (N * C >= LA_PARALLEL_GRAIN) schedule(static)
  for (int64_t i = 0; i < N; i++)
    for (int64_t c = 0; c < C; c++) dp[i * C + c] = g[i] * jp[i * C + c];
  free(g);
  gin[0] = dh;
  return 0;
}

static la_tensor *la_lp_hidden(la_lp_spec *sp, la_tensor *hidden, la_tensor *weight,
                               la_tensor *targets, la_tensor *mask, int64_t chunk) {
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF];
  if (la_lp_check(sp, hidden, "hidden", targets, mask) < 0) return NULL;
  if ((weight->dtype != LA_FLOAT32 && !la_dtype_is_half(weight->dtype)) || weight->ndim != 2 ||
      weight->shape[1] != hidden->shape[hidden->ndim - 1])
    return la_fail("%s: weight must be float32, bfloat16 or float16 (V, C) with C = %lld, the last dim of hidden %s; "
                   "got %s %s", sp->op, (long long)hidden->shape[hidden->ndim - 1],
                   la_shape_str(b1, sizeof b1, hidden->ndim, hidden->shape),
                   la_dtype_name(weight->dtype), la_shape_str(b2, sizeof b2, weight->ndim, weight->shape));
  if (weight->shape[0] == 0) return la_fail("%s: the vocabulary (rows of weight) is empty", sp->op);
  if (chunk < 0) return la_fail("%s: chunk_rows must be positive (got %lld)", sp->op, (long long)chunk);
  sp->V = weight->shape[0];
  int64_t V = sp->V, C = weight->shape[1], N = sp->rows;
  int64_t R = la_lp_chunk(V, chunk);
  /* a frozen weight: the gradient of each row goes into J during this pass */
  bool frozen = la_needs_record(1, &hidden) && !la_needs_record(1, &weight);
  la_tensor *h = NULL, *w = NULL, *tg = NULL, *mf = NULL, *lse = NULL, *ent = NULL;
  la_tensor *hc = NULL, *sc = NULL, *out = NULL, *J = NULL, *jc = NULL;
  int64_t *active = NULL, n_act = 0;
  float *vals = NULL;
  /* hidden as contiguous rows (N, C) */
  {
    la_tensor *c = la_contiguous(hidden);
    if (!c) return NULL;
    h = la_rows_of(c, 0, N, C);
    la_release(c);
    if (!h) return NULL;
  }
  if (!(w = la_contiguous(weight))) goto done;
  if (targets && !(tg = la_contiguous(targets))) goto done;
  if (la_lp_rows(sp, mask, tg, &mf, &active, &n_act) < 0) goto done;
  if (!(lse = la_empty(LA_FLOAT32, 1, &N))) goto done;
  if (sp->entropy && !(ent = la_empty(LA_FLOAT32, 1, &N))) goto done;
  vals = calloc((size_t)(N ? N : 1), sizeof *vals);
  if (!vals) { la_fail("%s: out of memory", sp->op); goto done; }
  if (R > n_act) R = n_act;
  if (R > 0) {
    if (!(hc = la_empty(LA_FLOAT32, 2, (int64_t[]){R, C}))) goto done;
    if (!(sc = la_empty(LA_FLOAT32, 2, (int64_t[]){R, V}))) goto done;
    if (frozen && !(jc = la_empty(LA_FLOAT32, 2, (int64_t[]){R, C}))) goto done;
  }
  if (frozen) {
    if (!(J = la_empty(LA_FLOAT32, 2, (int64_t[]){N, C}))) goto done;
    memset(la_fdata(J), 0, (size_t)N * (size_t)C * sizeof(float));
  }
  {
    const float *hp = la_fdata(h);
    float *lp = la_fdata(lse), *ep = ent ? la_fdata(ent) : NULL;
    memset(lp, 0, (size_t)N * sizeof(float));
    if (ep) memset(ep, 0, (size_t)N * sizeof(float));
    bool entropy = sp->entropy;
    for (int64_t k0 = 0; k0 < n_act; k0 += R) {
      int64_t r = n_act - k0 < R ? n_act - k0 : R;
      la_tensor *hv = la_rows_of(hc, 0, r, C), *sv = hv ? la_rows_of(sc, 0, r, V) : NULL;
      int step = sv ? 0 : -1;
      if (step == 0) {
        la_gather_rows(hp, active, k0, r, C, la_fdata(hv));
        step = la_gemm(false, true, sp->scale, hv, w, 0.0f, sv);
      }
      if (step == 0) {
        float *z = la_fdata(sv), s = sp->scale;
        #pragma omp parallel for if (r * V >= LA_PARALLEL_GRAIN) schedule(static)
        for (int64_t k = 0; k < r; k++) {
          int64_t i = active[k0 + k];
          float *row = z + k * V;
          if (entropy) {
            la_row_stats(row, V, 1.0f, &lp[i], &ep[i]);
            vals[i] = ep[i];
            if (frozen) la_row_grad_entropy(row, V, 1.0f, lp[i], ep[i], s, row);
          } else {
            la_row_stats(row, V, 1.0f, &lp[i], NULL);
            vals[i] = row[la_id_at(tg, i)] - lp[i];
            if (frozen) la_row_grad_logprob(row, V, 1.0f, lp[i], la_id_at(tg, i), s, row);
          }
        }
      }
      /* J = (d value / d z) s W for the chunk's rows */
      if (step == 0 && frozen) step = la_scatter_gw(sv, w, jc, active + k0, r, C, J);
      la_release(hv);
      la_release(sv);
      if (step < 0) goto done;
    }
  }
  /* the scratch buffers go before the output is made, so they never add to the peak */
  la_release_p(&hc);
  la_release_p(&sc);
  la_release_p(&jc);
  out = la_lp_output(sp, hidden->ndim - 1, hidden->shape, vals, mf ? la_fdata(mf) : NULL);
  if (frozen) {
    la_node *n;
    out = la_record(out, sp->op, la_logprobs_hidden_backward_frozen, 1, &hidden, 2, &n);
    if (n) {
      n->iarg[0] = sp->reduce;
      n->iarg[1] = sp->seq;
      if ((mf && la_node_save(n, 0, mf) < 0) || la_node_save(n, 1, J) < 0) la_release_p(&out);
    }
  } else {
    la_tensor *in[2] = {hidden, weight};
    la_node *n;
    out = la_record(out, sp->op, la_logprobs_hidden_backward, 2, in, 6, &n);
    if (n) {
      n->iarg[0] = sp->entropy;
      n->iarg[1] = sp->reduce;
      n->iarg[2] = la_lp_chunk(V, chunk);
      n->iarg[3] = sp->seq;
      n->farg[0] = sp->scale;
      if (la_node_save(n, 0, h) < 0 || la_node_save(n, 1, w) < 0 ||
          (tg && la_node_save(n, 2, tg) < 0) || (mf && la_node_save(n, 3, mf) < 0) ||
          la_node_save(n, 4, lse) < 0 || (ent && la_node_save(n, 5, ent) < 0))
        la_release_p(&out);
    }
  }
done:
  if (J) la_release(J);
  if (jc) la_release(jc);
  if (h) la_release(h);
  if (w) la_release(w);
  if (tg) la_release(tg);
  if (mf) la_release(mf);
  if (lse) la_release(lse);
  if (ent) la_release(ent);
  if (hc) la_release(hc);
  if (sc) la_release(sc);
  free(active);
  free(vals);
  return out;
}

la_tensor *la_logprobs_hidden(la_tensor *hidden, la_tensor *weight, la_tensor *targets,
                              la_tensor *mask, la_lp_reduce reduce, double temperature,
                              int64_t chunk_rows) {
  const char *names[] = {"token_logprobs_hidden", "sequence_logprobs_hidden",
                         "sequence_logprobs_hidden"};
  if (!targets) return la_fail("%s: targets are required", names[reduce]);
  la_lp_spec sp = {names[reduce], false, reduce, (float)(1.0 / temperature), 0, 0, 0};
  return la_lp_hidden(&sp, hidden, weight, targets, mask, chunk_rows);
}

la_tensor *la_entropy_hidden(la_tensor *hidden, la_tensor *weight, la_tensor *mask,
                             la_lp_reduce reduce, double temperature, int64_t chunk_rows) {
  la_lp_spec sp = {"entropy_hidden", true, reduce, (float)(1.0 / temperature), 0, 0, 0};
  return la_lp_hidden(&sp, hidden, weight, NULL, mask, chunk_rows);
}
