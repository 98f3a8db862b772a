/*
** la_ppo.c -- the per-token losses of PPO (clipped policy surrogate, clipped
** value loss) as masked means with their gradients computed in the forward
** pass, and generalised advantage estimation over right-padded sequences.
**
** Shapes: every operand is (B, T) (any equal shapes work), float32; the mask
** (any dtype, read as float weights, NULL = all ones) says which tokens are
** real.  The means are sum(mask * x) / sum(mask) over the whole batch, as in
** TRL.  Only the first operand of each loss (new log-probs, new values) gets
** a gradient; old log-probs, advantages, old values and returns are data.
*/
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "la_nn.h"

/* Contiguous float32 copies (or the tensors themselves) of n same-shaped
** operands; mask converted from any dtype, or NULL. */
static int la_ppo_operands(const char *op, int n, la_tensor **in, const char *const *names,
                           la_tensor *mask, la_tensor **c, la_tensor **mf) {
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF];
  for (int k = 0; k < n; k++) c[k] = NULL;
  *mf = NULL;
  for (int k = 0; k < n; k++) {
    if (in[k]->dtype != LA_FLOAT32) {
      la_failn("%s: %s must be float32 (got %s)", op, names[k], la_dtype_name(in[k]->dtype));
      goto fail;
    }
    if (k > 0 && !la_same_shape(in[k], in[0])) {
      la_failn("%s: %s has shape %s but %s has shape %s", op, names[k],
               la_shape_str(b1, sizeof b1, in[k]->ndim, in[k]->shape), names[0],
               la_shape_str(b2, sizeof b2, in[0]->ndim, in[0]->shape));
      goto fail;
    }
    if (!(c[k] = la_contiguous(in[k]))) goto fail;
  }
  if (mask) {
    if (!la_same_shape(mask, in[0])) {
      la_failn("%s: mask has shape %s but %s has shape %s", op,
               la_shape_str(b1, sizeof b1, mask->ndim, mask->shape), names[0],
               la_shape_str(b2, sizeof b2, in[0]->ndim, in[0]->shape));
      goto fail;
    }
    la_tensor *f = la_to_dtype(mask, LA_FLOAT32);
    *mf = f ? la_contiguous(f) : NULL;
    if (f) la_release(f);
    if (!*mf) goto fail;
  }
  return 0;
fail:
  for (int k = 0; k < n; k++) la_release_p(&c[k]);
  return -1;
}

/* saved[0]: d loss / d x per element (already masked and divided by the count). */
static int la_elem_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  la_tensor *d = n->saved[0];
  double g = la_item(gout);
  la_tensor *t = la_empty(LA_FLOAT32, d->ndim, d->shape);
  if (!t) return -1;
  float *o = la_fdata(t);
  const float *dp = la_fdata(d);
  int64_t N = la_numel(d);
  for (int64_t i = 0; i < N; i++) o[i] = (float)(g * dp[i]);
  gin[0] = t;
  return 0;
}

/* Records the node and saves d; releases d. */
static la_tensor *la_elem_finish(const char *op, la_tensor *out, la_tensor *x, la_tensor *d) {
  la_node *n;
  out = la_record(out, op, la_elem_backward, 1, &x, 1, &n);
  if (n && la_node_save(n, 0, d) < 0) la_release_p(&out);
  la_release(d);
  return out;
}

la_tensor *la_ppo_policy_loss(la_tensor *logp, la_tensor *old_logp, la_tensor *adv, la_tensor *mask,
                              double clip_low, double clip_high, la_ppo_metrics *mt) {
  const char *op = "ppo_policy_loss";
  static const char *const names[3] = {"logprobs", "old_logprobs", "advantages"};
  if (!(clip_low >= 0 && clip_low < 1) || !(clip_high >= 0) || !isfinite(clip_high))
    return la_fail("%s: the clip range must satisfy 0 <= eps_low < 1 and 0 <= eps_high "
                   "(got %g, %g)", op, clip_low, clip_high);
  la_tensor *in[3] = {logp, old_logp, adv}, *c[3], *mf, *d;
  if (la_ppo_operands(op, 3, in, names, mask, c, &mf) < 0) return NULL;
  int64_t N = la_numel(c[0]);
  la_tensor *out = NULL;
  if (!(d = la_empty(LA_FLOAT32, logp->ndim, logp->shape))) goto done;
  {
    const float *lp = la_fdata(c[0]), *old = la_fdata(c[1]), *A = la_fdata(c[2]);
    const float *m = mf ? la_fdata(mf) : NULL;
    float *dp = la_fdata(d);
    double count = 0;
    for (int64_t i = 0; i < N; i++) count += m ? m[i] : 1.0;
    double total = 0, clipped = 0, kl = 0, ratio_sum = 0;
    double lo = 1 - clip_low, hi = 1 + clip_high;
    for (int64_t i = 0; i < N; i++) {
      double w = m ? m[i] : 1.0;
      if (w == 0.0 || count == 0.0) { dp[i] = 0; continue; }
      double diff = (double)lp[i] - old[i];
      double r = exp(diff);
      double rc = r < lo ? lo : (r > hi ? hi : r);
      double l1 = -A[i] * r, l2 = -A[i] * rc;
      bool clip = l2 > l1;
      total += w * (clip ? l2 : l1);
      dp[i] = (float)(clip ? 0.0 : w * -A[i] * r / count);
      clipped += w * (clip ? 1 : 0);
      kl += w * 0.5 * diff * diff;
      ratio_sum += w * r;
    }
    double den = count != 0.0 ? count : NAN;
    if (mt) {
      mt->clipfrac = clipped / den;
      mt->approxkl = kl / den;
      mt->ratio = ratio_sum / den;
      mt->count = count;
    }
    out = la_scalar(LA_FLOAT32, total / den);
  }
  out = la_elem_finish(op, out, logp, d);
done:
  for (int k = 0; k < 3; k++) la_release(c[k]);
  if (mf) la_release(mf);
  return out;
}

la_tensor *la_ppo_value_loss(la_tensor *values, la_tensor *old_values, la_tensor *returns,
                             la_tensor *mask, double clip, la_ppo_metrics *mt) {
  const char *op = "ppo_value_loss";
  static const char *const names[3] = {"values", "old_values", "returns"};
  if (!(clip >= 0)) return la_fail("%s: the clip range must be >= 0 (got %g; use math.huge for none)", op, clip);
  la_tensor *in[3] = {values, old_values, returns}, *c[3], *mf, *d;
  if (la_ppo_operands(op, 3, in, names, mask, c, &mf) < 0) return NULL;
  int64_t N = la_numel(c[0]);
  la_tensor *out = NULL;
  if (!(d = la_empty(LA_FLOAT32, values->ndim, values->shape))) goto done;
  {
    const float *v = la_fdata(c[0]), *vo = la_fdata(c[1]), *R = la_fdata(c[2]);
    const float *m = mf ? la_fdata(mf) : NULL;
    float *dp = la_fdata(d);
    double count = 0;
    for (int64_t i = 0; i < N; i++) count += m ? m[i] : 1.0;
    double total = 0, clipped = 0;
    for (int64_t i = 0; i < N; i++) {
      double w = m ? m[i] : 1.0;
      if (w == 0.0 || count == 0.0) { dp[i] = 0; continue; }
      double lo = (double)vo[i] - clip, hi = (double)vo[i] + clip;
      double vc = v[i] < lo ? lo : (v[i] > hi ? hi : v[i]);
      double e1 = (double)v[i] - R[i], e2 = vc - R[i];
      bool use_clip = e2 * e2 > e1 * e1;
      total += w * 0.5 * (use_clip ? e2 * e2 : e1 * e1);
      dp[i] = (float)(use_clip ? 0.0 : w * e1 / count);
      clipped += w * (use_clip ? 1 : 0);
    }
    double den = count != 0.0 ? count : NAN;
    if (mt) {
      mt->clipfrac = clipped / den;
      mt->approxkl = 0;
      mt->ratio = 0;
      mt->count = count;
    }
    out = la_scalar(LA_FLOAT32, total / den);
  }
  out = la_elem_finish(op, out, values, d);
done:
  for (int k = 0; k < 3; k++) la_release(c[k]);
  if (mf) la_release(mf);
  return out;
}

int la_gae(la_tensor *rewards, la_tensor *values, la_tensor *mask, double gamma, double lam,
           la_tensor **adv_out, la_tensor **ret_out) {
  const char *op = "gae";
  static const char *const names[2] = {"rewards", "values"};
  char b1[LA_SHAPE_BUF];
  *adv_out = *ret_out = NULL;
  if (!isfinite(gamma) || !isfinite(lam) || gamma < 0 || lam < 0)
    return la_failn("%s: gamma and lambda must be finite and >= 0 (got %g, %g)", op, gamma, lam);
  if (rewards->ndim != 2)
    return la_failn("%s: rewards must be (B, T); got %s", op,
                    la_shape_str(b1, sizeof b1, rewards->ndim, rewards->shape));
  la_tensor *in[2] = {rewards, values}, *c[2], *mf;
  if (la_ppo_operands(op, 2, in, names, mask, c, &mf) < 0) return -1;
  int64_t B = rewards->shape[0], T = rewards->shape[1];
  la_tensor *adv = la_empty(LA_FLOAT32, 2, rewards->shape);
  la_tensor *ret = adv ? la_empty(LA_FLOAT32, 2, rewards->shape) : NULL;
  int rc = ret ? 0 : -1;
  if (rc == 0) {
    const float *r = la_fdata(c[0]), *v = la_fdata(c[1]), *m = mf ? la_fdata(mf) : NULL;
    float *a = la_fdata(adv), *R = la_fdata(ret);
    for (int64_t b = 0; b < B; b++) {
      double last = 0, next_value = 0;
      for (int64_t t = T - 1; t >= 0; t--) {
        int64_t i = b * T + t;
        if (m && m[i] == 0.0f) { a[i] = 0; R[i] = 0; continue; }
        double delta = r[i] + gamma * next_value - v[i];
        last = delta + gamma * lam * last;
        a[i] = (float)last;
        R[i] = (float)(last + v[i]);
        next_value = v[i];
      }
    }
    *adv_out = adv;
    *ret_out = ret;
  } else {
    if (adv) la_release(adv);
  }
  for (int k = 0; k < 2; k++) la_release(c[k]);
  if (mf) la_release(mf);
  return rc;
}
