/*
** la_optim.c -- fused optimizer steps over all parameters at once, and
** global gradient-norm clipping.  Steps write parameters in place and bump
** their storage versions, so a graph that saved a parameter before the step
** refuses to run backward afterwards.
*/
#include <math.h>

#include "la_nn.h"

/* Every parameter, gradient and state buffer must be contiguous float32 of
** the parameter's shape; checked before anything is written. */
static int la_check_state(const char *op, int i, la_tensor *p, la_tensor *s, const char *what) {
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF];
  if (!s) return 0;
  if (s->dtype != LA_FLOAT32 || !la_same_shape(p, s) || !la_is_contiguous(s))
    return la_failn("%s: %s of parameter %d must be contiguous float32 of shape %s (got %s %s)", op,
                    what, i + 1, la_shape_str(b1, sizeof b1, p->ndim, p->shape),
                    la_dtype_name(s->dtype), la_shape_str(b2, sizeof b2, s->ndim, s->shape));
  return 0;
}

static int la_check_params(const char *op, la_tensor **params, la_tensor **s1, la_tensor **s2, int n) {
  for (int i = 0; i < n; i++) {
    la_tensor *p = params[i];
    if (p->dtype != LA_FLOAT32 || !la_is_contiguous(p))
      return la_failn("%s: parameter %d must be a contiguous float32 tensor", op, i + 1);
    if (la_check_state(op, i, p, p->grad, "gradient") < 0) return -1;
    if (s1 && la_check_state(op, i, p, s1[i], "state") < 0) return -1;
    if (s2 && la_check_state(op, i, p, s2[i], "state") < 0) return -1;
  }
  return 0;
}

int la_adamw_step(la_tensor **params, la_tensor **m, la_tensor **v, const double *wd, int n,
                  const la_adamw_opts *o) {
  if (o->step < 1) return la_failn("adamw: step must be >= 1 (got %lld)", (long long)o->step);
  if (la_check_params("adamw", params, m, v, n) < 0) return -1;
  for (int i = 0; i < n; i++)
    if (params[i]->grad && (!m[i] || !v[i])) return la_failn("adamw: missing state for parameter %d", i + 1);
  double bc1 = 1.0 - pow(o->beta1, (double)o->step), bc2 = 1.0 - pow(o->beta2, (double)o->step);
  /* 1 - beta is computed in double, then rounded: 1 - (float)0.999 would be
  ** off by 1.3e-5 relative, and so would every second moment (PyTorch rounds
  ** the double 1 - beta2 too). */
  float b1 = (float)o->beta1, b2 = (float)o->beta2, eps = (float)o->eps;
  float c1 = (float)(1.0 - o->beta1), c2 = (float)(1.0 - o->beta2);
  /* Adam's update with bias correction folded into the step size:
  **   p -= lr * wd * p;  p -= (lr / bc1) * m / (sqrt(v / bc2) + eps) */
  float step = (float)(o->lr / bc1), rbc2 = (float)(1.0 / sqrt(bc2));
  for (int i = 0; i < n; i++) {
    la_tensor *p = params[i];
    if (!p->grad) continue;
    float *pp = la_fdata(p), *mp = la_fdata(m[i]), *vp = la_fdata(v[i]);
    const float *gp = la_fdata(p->grad);
    float decay = (float)(1.0 - o->lr * wd[i]);
    int64_t total = la_numel(p);
    #pragma omp parallel for if (total >= LA_PARALLEL_GRAIN) schedule(static)
    for (int64_t j = 0; j < total; j++) {
      float g = gp[j];
      float mj = b1 * mp[j] + c1 * g;
      float vj = b2 * vp[j] + c2 * g * g;
      mp[j] = mj;
      vp[j] = vj;
      pp[j] = pp[j] * decay - step * mj / (sqrtf(vj) * rbc2 + eps);
    }
    p->storage->version++;
    m[i]->storage->version++;
    v[i]->storage->version++;
  }
  return 0;
}

int la_sgd_step(la_tensor **params, la_tensor **buf, const double *wd, int n, double lr,
                double momentum, double dampening, bool nesterov) {
  if (la_check_params("sgd", params, momentum != 0 ? buf : NULL, NULL, n) < 0) return -1;
  for (int i = 0; i < n; i++) {
    la_tensor *p = params[i];
    if (!p->grad) continue;
    if (momentum != 0 && !buf[i]) return la_failn("sgd: missing momentum buffer for parameter %d", i + 1);
    float *pp = la_fdata(p), *bp = momentum != 0 ? la_fdata(buf[i]) : NULL;
    const float *gp = la_fdata(p->grad);
    float w = (float)wd[i], mu = (float)momentum, damp = (float)(1.0 - dampening), rate = (float)lr;
    int64_t total = la_numel(p);
    #pragma omp parallel for if (total >= LA_PARALLEL_GRAIN) schedule(static)
    for (int64_t j = 0; j < total; j++) {
      float g = gp[j] + w * pp[j];   /* SGD's weight decay is L2, added to the gradient */
      if (bp) {
        float b = mu * bp[j] + damp * g;
        bp[j] = b;
        g = nesterov ? g + mu * b : b;
      }
      pp[j] -= rate * g;
    }
    p->storage->version++;
    if (bp) buf[i]->storage->version++;
  }
  return 0;
}

int la_clip_grad_norm(la_tensor **params, int n, double max_norm, double *norm_out) {
  double sq = 0;
  for (int i = 0; i < n; i++) {
    la_tensor *g = params[i]->grad;
    if (g && (g->dtype != LA_FLOAT32 || !la_is_contiguous(g)))
      return la_failn("clip_grad_norm: gradient of parameter %d is not a contiguous float32 tensor", i + 1);
  }
  for (int i = 0; i < n; i++) {
    la_tensor *g = params[i]->grad;
    if (!g) continue;
    const float *gp = la_fdata(g);
    int64_t total = la_numel(g);
    double s = 0;
    #pragma omp parallel for reduction(+ : s) if (total >= LA_PARALLEL_GRAIN) schedule(static)
    for (int64_t j = 0; j < total; j++) s += (double)gp[j] * gp[j];
    sq += s;
  }
  double norm = sqrt(sq);
  if (max_norm > 0 && norm > max_norm && isfinite(norm)) {
    float scale = (float)(max_norm / (norm + 1e-6));
    for (int i = 0; i < n; i++) {
      la_tensor *g = params[i]->grad;
      if (!g) continue;
      float *gp = la_fdata(g);
      int64_t total = la_numel(g);
      #pragma omp parallel for if (total >= LA_PARALLEL_GRAIN) schedule(static)
      for (int64_t j = 0; j < total; j++) gp[j] *= scale;
      g->storage->version++;
    }
  }
  *norm_out = norm;
  return 0;
}
