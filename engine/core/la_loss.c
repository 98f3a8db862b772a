/*
** la_loss.c -- cross-entropy over logits, fused: one pass finds each row's
** log-sum-exp, the loss reads the target's logit, and the backward pass
** writes (softmax - onehot) * g / count straight from the logits and the
** saved log-sum-exp.  No log-softmax tensor is ever stored.
*/
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "la_math.h"
#include "la_nn.h"

static inline int64_t la_target_at(const la_tensor *t, int64_t i) {
  return t->dtype == LA_INT32 ? ((const int32_t *)la_data(t))[i] : ((const int64_t *)la_data(t))[i];
}

static double la_row_lse(const float *x, int64_t V) {
  float m = la_max_of(x, V);
  if (m == -INFINITY || m != m) return m;
  return m + log(la_sum_exp(x, V, m));
}

static int la_cross_entropy_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  la_tensor *x = n->saved[0], *t = n->saved[1], *lse = n->saved[2];
  int64_t N = x->shape[0], V = x->shape[1], ignore = n->iarg[0], count = n->iarg[1];
  double eps = n->farg[0];
  /* When nothing else holds the logits (GPT:loss closes its handles to them),
  ** the gradient is written over them: at GPT-2's vocabulary that is one
  ** (B*T, 50257) buffer fewer at the peak of a training step.  Each element is
  ** read before it is written. */
  bool in_place = la_node_saved_is_free(n, 0);
  la_tensor *dx = in_place ? la_retain(x) : la_empty(LA_FLOAT32, 2, x->shape);
  if (!dx) return -1;
  if (in_place) x->storage->version++;
  float g = count > 0 ? (float)(la_item(gout) / (double)count) : 0.0f;
  const float *xp = la_fdata(x), *lp = la_fdata(lse);
  float *dp = la_fdata(dx);
  float smooth = (float)(eps / (double)V);
  #pragma omp parallel for if (N * V >= LA_PARALLEL_GRAIN) schedule(static)
  for (int64_t i = 0; i < N; i++) {
    const float *xr = xp + i * V;
    float *dr = dp + i * V;
    int64_t tg = la_target_at(t, i);
    if (tg == ignore) { memset(dr, 0, (size_t)V * sizeof(float)); continue; }
    float l = lp[i];
    for (int64_t j = 0; j < V; j++) dr[j] = g * (la_expf(xr[j] - l) - smooth);
    dr[tg] -= g * (float)(1.0 - eps);
  }
  gin[0] = dx;
  return 0;
}

la_tensor *la_cross_entropy(la_tensor *logits, la_tensor *targets, int64_t ignore_index,
                            double label_smoothing, int64_t *count_out) {
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF];
  const char *op = "cross_entropy";
  if (logits->dtype != LA_FLOAT32 || logits->ndim != 2)
    return la_fail("%s: logits must be float32 (N, V); got %s %s", op, la_dtype_name(logits->dtype),
                   la_shape_str(b1, sizeof b1, logits->ndim, logits->shape));
  if ((targets->dtype != LA_INT32 && targets->dtype != LA_INT64) || targets->ndim != 1 ||
      targets->shape[0] != logits->shape[0])
    return la_fail("%s: targets must be int32 or int64 of shape (N,) = (%lld,); got %s %s", op,
                   (long long)logits->shape[0], la_dtype_name(targets->dtype),
                   la_shape_str(b2, sizeof b2, targets->ndim, targets->shape));
  if (!(label_smoothing >= 0 && label_smoothing < 1))
    return la_fail("%s: label_smoothing must be in [0, 1) (got %g)", op, label_smoothing);
  int64_t N = logits->shape[0], V = logits->shape[1];
  la_tensor *x = la_contiguous(logits), *t = x ? la_contiguous(targets) : NULL;
  la_tensor *lse = t ? la_empty(LA_FLOAT32, 1, &N) : NULL;
  if (!lse) { la_release(x); la_release(t); return NULL; }
  int64_t count = 0;
  for (int64_t i = 0; i < N; i++) {
    int64_t tg = la_target_at(t, i);
    if (tg == ignore_index) continue;
    if (tg < 0 || tg >= V) {
      la_release(x); la_release(t); la_release(lse);
      return la_fail("%s: target %lld at row %lld is out of range for %lld classes (targets are "
                     "0-based; use ignore_index %lld to skip a row)", op, (long long)tg,
                     (long long)i + 1, (long long)V, (long long)ignore_index);
    }
    count++;
  }
  const float *xp = la_fdata(x);
  float *lp = la_fdata(lse);
  double total = 0;
  #pragma omp parallel for reduction(+ : total) if (N * V >= LA_PARALLEL_GRAIN) schedule(static)
  for (int64_t i = 0; i < N; i++) {
    int64_t tg = la_target_at(t, i);
    const float *xr = xp + i * V;
    double l = la_row_lse(xr, V);
    lp[i] = (float)l;
    if (tg == ignore_index) continue;
    double row = l - xr[tg];
    if (label_smoothing > 0) {   /* mixes in the loss against the uniform distribution */
      double mean = 0;
      for (int64_t j = 0; j < V; j++) mean += xr[j];
      row = (1 - label_smoothing) * row + label_smoothing * (l - mean / (double)V);
    }
    total += row;
  }
  /* With nothing counted the mean is NaN, as in PyTorch. */
  la_tensor *out = la_scalar(LA_FLOAT32, count ? total / (double)count : NAN);
  if (count_out) *count_out = count;
  la_node *n;
  out = la_record(out, op, la_cross_entropy_backward, 1, &logits, 3, &n);
  if (n) {
    n->iarg[0] = ignore_index;
    n->iarg[1] = count;
    n->farg[0] = label_smoothing;
    if (la_node_save(n, 0, x) < 0 || la_node_save(n, 1, t) < 0 || la_node_save(n, 2, lse) < 0) {
      la_release(out);
      out = NULL;
    }
  }
  la_release(x); la_release(t); la_release(lse);
  return out;
}
