/*
** la_pref.c -- pairwise preference losses over per-sequence log-probs
** (DPO, cDPO, rDPO, IPO, hinge, GDPO, GIPO) and the Bradley-Terry loss of
** reward models.  Forward and backward in one pass: the forward computes
** each pair's loss and its derivative with respect to the pair's margin, and
** saves the derivatives (B floats); the backward pass only scales them.
** Everything runs in double precision; softplus and sigmoid in their stable
** forms, so large margins neither overflow nor lose the gradient.
**
** Notation (docs/losses.md, "Preference losses"): h = [pc - rc] - [pr - rr], the log-ratio
** margin of the first ("chosen") over the second ("rejected") sequence; p the
** soft label, the share preferring the first; s = -1 when p < 0.5 (the
** majority prefers the second: the pair is flipped), else +1.
*/
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "la_nn.h"

static const char *const la_pref_names[LA_PREF_N] = {
  "dpo", "cdpo", "rdpo", "ipo", "hinge", "gdpo", "gipo",
};

const char *la_pref_name(la_pref_kind k) {
  return k >= 0 && k < LA_PREF_N ? la_pref_names[k] : "?";
}

static double la_softplus(double x) { return x > 0 ? x + log1p(exp(-x)) : log1p(exp(x)); }
static double la_sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + exp(-x));
  double e = exp(x);
  return e / (1.0 + e);
}

/* A (B,) float32 operand as contiguous data; checks its shape against B
** (B < 0: take it from this one). */
static la_tensor *la_pair_operand(const char *op, const char *what, la_tensor *t, int64_t *B) {
  char b1[LA_SHAPE_BUF];
  if (t->dtype != LA_FLOAT32 || t->ndim != 1)
    return la_fail("%s: %s must be a float32 vector (B,); got %s %s", op, what,
                   la_dtype_name(t->dtype), la_shape_str(b1, sizeof b1, t->ndim, t->shape));
  if (*B < 0) *B = t->shape[0];
  else if (t->shape[0] != *B)
    return la_fail("%s: %s has %lld entries but the batch has %lld", op, what,
                   (long long)t->shape[0], (long long)*B);
  return la_contiguous(t);
}

/* Soft labels: contiguous float32 in [0, 1]. */
static la_tensor *la_pair_labels(const char *op, la_tensor *p, int64_t B) {
  char b1[LA_SHAPE_BUF];
  if (p->ndim != 1 || p->shape[0] != B)
    return la_fail("%s: soft labels p must have shape (%lld,); got %s", op, (long long)B,
                   la_shape_str(b1, sizeof b1, p->ndim, p->shape));
  la_tensor *f = la_to_dtype(p, LA_FLOAT32);
  la_tensor *c = f ? la_contiguous(f) : NULL;
  if (f) la_release(f);
  if (!c) return NULL;
  const float *v = la_fdata(c);
  for (int64_t i = 0; i < B; i++)
    if (!(v[i] >= 0.0f && v[i] <= 1.0f)) {
      la_release(c);
      return la_fail("%s: soft label p = %g at position %lld is outside [0, 1]", op, (double)v[i],
                     (long long)i + 1);
    }
  return c;
}

/* ---------------------------------------------------------------- preference losses */

/* saved[0]: d loss / d h per pair, already divided by B.  Inputs: policy
** chosen, policy rejected, reference chosen, reference rejected; h is
** linear in them with signs +, -, -, +. */
static int la_pair_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  static const double sign[4] = {1, -1, -1, 1};
  la_tensor *d = n->saved[0];
  int64_t B = d->shape[0];
  double g = la_item(gout);
  for (int k = 0; k < n->n_in; k++) {
    if (!LA_NEEDS_GRAD(n, k)) continue;
    la_tensor *t = la_empty(LA_FLOAT32, 1, &B);
    if (!t) return -1;
    float *o = la_fdata(t);
    const float *dp = la_fdata(d);
    for (int64_t i = 0; i < B; i++) o[i] = (float)(sign[k] * g * dp[i]);
    gin[k] = t;
  }
  return 0;
}

la_tensor *la_pref_loss(la_pref_kind kind, la_tensor *pc, la_tensor *pr, la_tensor *rc,
                        la_tensor *rr, la_tensor *p, const la_pref_opts *o, la_pref_metrics *mt) {
  if (kind < 0 || kind >= LA_PREF_N) return la_fail("preference loss: unknown kind %d", (int)kind);
  const char *op = la_pref_names[kind];
  double beta = o->beta, eps = o->eps, ls = o->label_smoothing;
  if (!(beta > 0) || !isfinite(beta)) return la_fail("%s: beta must be positive and finite (got %g)", op, beta);
  if (kind == LA_PREF_RDPO && !(eps >= 0 && eps < 0.5))
    return la_fail("%s: eps (the label flip rate) must be in [0, 0.5) (got %g)", op, eps);
  if (!(ls >= 0 && ls <= 1)) return la_fail("%s: label_smoothing must be in [0, 1] (got %g)", op, ls);
  int64_t B = -1;
  la_tensor *in[4] = {pc, pr, rc, rr}, *c[4] = {0}, *pl = NULL, *d = NULL, *out = NULL;
  static const char *what[4] = {"policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected"};
  for (int k = 0; k < 4; k++) {
    if (!in[k]) {
      if (k < 2) return la_fail("%s: %s is required", op, what[k]);
      continue;   /* no reference: reference-free (log-ratio = log-prob) */
    }
    if (!(c[k] = la_pair_operand(op, what[k], in[k], &B))) goto done;
  }
  if (p && !(pl = la_pair_labels(op, p, B))) goto done;
  if (B == 0) { la_fail("%s: the batch is empty", op); goto done; }
  if (!(d = la_empty(LA_FLOAT32, 1, &B))) goto done;
  {
    const float *a = la_fdata(c[0]), *b = la_fdata(c[1]);
    const float *ra = c[2] ? la_fdata(c[2]) : NULL, *rb = c[3] ? la_fdata(c[3]) : NULL;
    const float *pv = pl ? la_fdata(pl) : NULL;
    float *dp = la_fdata(d);
    double total = 0, rch = 0, rrj = 0, acc = 0, mar = 0, lch = 0, lrj = 0;
    double half = 0.5 / beta;
    for (int64_t i = 0; i < B; i++) {
      double lc = a[i] - (ra ? ra[i] : 0.0), lr = b[i] - (rb ? rb[i] : 0.0);
      double h = lc - lr;
      double q = pv ? pv[i] : 1.0 - ls;
      double s = q < 0.5 ? -1.0 : 1.0;
      double w = 2 * q - 1, L, dh;
      switch (kind) {
        case LA_PREF_DPO: {
          double z = beta * s * h;
          L = la_softplus(-z);
          dh = -beta * s * la_sigmoid(-z);
          break;
        }
        case LA_PREF_CDPO: {
          double z = beta * h;
          L = q * la_softplus(-z) + (1 - q) * la_softplus(z);
          dh = beta * (la_sigmoid(z) - q);
          break;
        }
        case LA_PREF_RDPO: {
          double z = beta * s * h;
          L = ((1 - eps) * la_softplus(-z) - eps * la_softplus(z)) / (1 - 2 * eps);
          dh = beta * s * (-(1 - eps) * la_sigmoid(-z) - eps * la_sigmoid(z)) / (1 - 2 * eps);
          break;
        }
        case LA_PREF_IPO: {
          double u = s * h - half;
          L = u * u;
          dh = 2 * s * u;
          break;
        }
        case LA_PREF_HINGE: {
          double u = 1 - beta * s * h;
          L = u > 0 ? u : 0;
          dh = u > 0 ? -beta * s : 0;
          break;
        }
        case LA_PREF_GDPO: {
          double z = beta * w * h;
          L = la_softplus(-z);
          dh = -beta * w * la_sigmoid(-z);
          break;
        }
        case LA_PREF_GIPO: default: {
          double u = w * h - half;
          L = u * u;
          dh = 2 * w * u;
          break;
        }
      }
      total += L;
      dp[i] = (float)(dh / (double)B);
      /* metrics in the label's orientation: "chosen" is the side the majority prefers */
      double up = beta * (s > 0 ? lc : lr), down = beta * (s > 0 ? lr : lc);
      rch += up;
      rrj += down;
      acc += up > down ? 1 : 0;
      mar += up - down;
      lch += s > 0 ? a[i] : b[i];
      lrj += s > 0 ? b[i] : a[i];
    }
    if (mt) {
      mt->reward_chosen = rch / B;
      mt->reward_rejected = rrj / B;
      mt->accuracy = acc / B;
      mt->margin = mar / B;
      mt->logp_chosen = lch / B;
      mt->logp_rejected = lrj / B;
    }
    out = la_scalar(LA_FLOAT32, total / (double)B);
  }
  {
    la_node *n;
    out = la_record(out, op, la_pair_backward, 4, in, 1, &n);
    if (n && la_node_save(n, 0, d) < 0) la_release_p(&out);
  }
done:
  for (int k = 0; k < 4; k++)
    if (c[k]) la_release(c[k]);
  if (pl) la_release(pl);
  if (d) la_release(d);
  return out;
}

/* ---------------------------------------------------------------- Bradley-Terry */

/* saved[0], saved[1]: d loss / d r1 and d r2 per example (divided by B). */
static int la_bt_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  double g = la_item(gout);
  for (int k = 0; k < 2; k++) {
    if (!LA_NEEDS_GRAD(n, k)) continue;
    la_tensor *d = n->saved[k];
    int64_t B = d->shape[0];
    la_tensor *t = la_empty(LA_FLOAT32, 1, &B);
    if (!t) return -1;
    float *o = la_fdata(t);
    const float *dp = la_fdata(d);
    for (int64_t i = 0; i < B; i++) o[i] = (float)(g * dp[i]);
    gin[k] = t;
  }
  return 0;
}

la_tensor *la_bradley_terry(la_tensor *r1, la_tensor *r2, la_tensor *p, la_tensor *margin,
                            double margin_value, double center, la_bt_metrics *mt) {
  const char *op = "bradley_terry";
  char b1[LA_SHAPE_BUF];
  if (!isfinite(center) || center < 0)
    return la_fail("%s: the centring coefficient must be finite and >= 0 (got %g)", op, center);
  if (!isfinite(margin_value)) return la_fail("%s: margin must be finite (got %g)", op, margin_value);
  int64_t B = -1;
  la_tensor *a = NULL, *b = NULL, *pl = NULL, *mg = NULL, *d1 = NULL, *d2 = NULL, *out = NULL;
  if (!(a = la_pair_operand(op, "rewards_chosen", r1, &B))) goto done;
  if (!(b = la_pair_operand(op, "rewards_rejected", r2, &B))) goto done;
  if (B == 0) { la_fail("%s: the batch is empty", op); goto done; }
  if (p && !(pl = la_pair_labels(op, p, B))) goto done;
  if (margin) {
    if (margin->ndim != 1 || margin->shape[0] != B) {
      la_fail("%s: margin must be a number or have shape (%lld,); got %s", op, (long long)B,
              la_shape_str(b1, sizeof b1, margin->ndim, margin->shape));
      goto done;
    }
    la_tensor *f = la_to_dtype(margin, LA_FLOAT32);
    mg = f ? la_contiguous(f) : NULL;
    if (f) la_release(f);
    if (!mg) goto done;
  }
  if (!(d1 = la_empty(LA_FLOAT32, 1, &B)) || !(d2 = la_empty(LA_FLOAT32, 1, &B))) goto done;
  {
    const float *x = la_fdata(a), *y = la_fdata(b), *pv = pl ? la_fdata(pl) : NULL;
    const float *mv = mg ? la_fdata(mg) : NULL;
    float *g1 = la_fdata(d1), *g2 = la_fdata(d2);
    double total = 0, acc = 0, mar = 0, ch = 0, rj = 0;
    for (int64_t i = 0; i < B; i++) {
      double diff = (double)x[i] - y[i];
      double z = diff - (mv ? mv[i] : margin_value);
      double L, dz;
      if (pv) {
        double q = pv[i];
        L = q * la_softplus(-z) + (1 - q) * la_softplus(z);
        dz = la_sigmoid(z) - q;
      } else {
        L = la_softplus(-z);
        dz = -la_sigmoid(-z);
      }
      double sum = (double)x[i] + y[i];
      L += center * sum * sum;
      total += L;
      g1[i] = (float)((dz + 2 * center * sum) / (double)B);
      g2[i] = (float)((-dz + 2 * center * sum) / (double)B);
      double s = pv && pv[i] < 0.5 ? -1.0 : 1.0;
      acc += s * diff > 0 ? 1 : 0;
      mar += s * diff;
      ch += s > 0 ? x[i] : y[i];
      rj += s > 0 ? y[i] : x[i];
    }
    if (mt) {
      mt->accuracy = acc / B;
      mt->margin = mar / B;
      mt->reward_chosen = ch / B;
      mt->reward_rejected = rj / B;
    }
    out = la_scalar(LA_FLOAT32, total / (double)B);
  }
  {
    la_tensor *in[2] = {r1, r2};
    la_node *n;
    out = la_record(out, op, la_bt_backward, 2, in, 2, &n);
    if (n && (la_node_save(n, 0, d1) < 0 || la_node_save(n, 1, d2) < 0)) la_release_p(&out);
  }
done:
  if (a) la_release(a);
  if (b) la_release(b);
  if (pl) la_release(pl);
  if (mg) la_release(mg);
  if (d1) la_release(d1);
  if (d2) la_release(d2);
  return out;
}
