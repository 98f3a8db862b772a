/*
** la_anomaly.c -- finding NaN and inf: the test every float tensor can take
** (t:all_finite(), the recipes' checks before a checkpoint), and anomaly
** mode, which makes autograd name the first op whose output or gradient is
** not finite.
**
** Anomaly mode (la_set_anomaly_enabled) is a switch read in two places of
** la_autograd.c: la_record checks the float output of every op that records
** a node (views, which share their input's storage, make no new values and
** are skipped), and the backward engine checks every gradient a node hands
** to its inputs.  The first NaN or inf is an error that names the op, what
** was found and the shapes involved; nothing is recorded or accumulated past
** it.  Off, it costs nothing but a branch.
*/
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "la_iter.h"

static bool la_anomaly_on = false;

bool la_is_anomaly_enabled(void) { return la_anomaly_on; }

bool la_set_anomaly_enabled(bool on) {
  bool prev = la_anomaly_on;
  la_anomaly_on = on;
  return prev;
}

typedef struct {
  int64_t nan, inf;
} la_nf_count;

static void la_nf_row(void *ctx, int64_t n, char *const *p, const int64_t *s) {
  la_nf_count *c = ctx;
  const char *x = p[0];
  for (int64_t i = 0; i < n; i++, x += s[0]) {
    uint32_t bits;
    memcpy(&bits, x, sizeof bits);
    if ((bits & 0x7F800000u) != 0x7F800000u) continue;   /* exponent all ones: inf or NaN */
    if (bits & 0x007FFFFFu) c->nan++;
    else c->inf++;
  }
}

void la_count_nonfinite(const la_tensor *t, int64_t *nan, int64_t *inf) {
  la_nf_count c = {0, 0};
  if (la_dtype_is_half(t->dtype) && la_numel(t) > 0) {
    /* Widening keeps NaN and inf as they are; counted on a float32 copy. */
    la_tensor *f = la_to_dtype((la_tensor *)t, LA_FLOAT32);
    if (f) {
      la_count_nonfinite(f, nan, inf);
      la_release(f);
      return;
    }
  }
  if (t->dtype == LA_FLOAT32 && la_numel(t) > 0) {
    la_iter it;
    char *base = la_data(t);
    const int64_t *strides = t->stride;
    size_t size = sizeof(float);
    la_iter_init(&it, t->ndim, t->shape, 1, &base, &strides, &size);   /* 0-d: one element */
    la_iter_run_serial(&it, la_nf_row, &c);
  }
  *nan = c.nan;
  *inf = c.inf;
}

bool la_all_finite(const la_tensor *t) {
  int64_t nan, inf;
  la_count_nonfinite(t, &nan, &inf);
  return nan == 0 && inf == 0;
}

/* "NaN (2 of 6 values)", "inf (1 of 6 values)", "NaN and inf (3 of 6 values)" */
static void la_nf_what(char *buf, size_t n, const la_tensor *t, int64_t nan, int64_t inf) {
  const char *what = nan && inf ? "NaN and inf" : nan ? "NaN" : "inf";
  snprintf(buf, n, "%s (%lld of %lld value%s)", what, (long long)(nan + inf),
           (long long)la_numel(t), la_numel(t) == 1 ? "" : "s");
}

/* "(2, 3)", "(2, 3) and (3,)", "(2, 3), (3,) and (1,)" for the edges' shapes. */
static void la_shapes_list(char *buf, size_t n, int count, const la_tensor *const *in) {
  char one[LA_SHAPE_BUF];
  size_t used = 0;
  buf[0] = 0;
  int shown = 0, total = 0;
  for (int i = 0; i < count; i++) if (in[i]) total++;
  for (int i = 0; i < count && used < n; i++) {
    if (!in[i]) continue;
    la_shape_str(one, sizeof one, in[i]->ndim, in[i]->shape);
    const char *sep = shown == 0 ? "" : shown == total - 1 ? " and " : ", ";
    int k = snprintf(buf + used, n - used, "%s%s", sep, one);
    if (k < 0) break;
    used += (size_t)k;
    shown++;
  }
}

int la_anomaly_check_forward(const char *op, la_tensor *out, int n_in, la_tensor *const *in) {
  if (out->dtype != LA_FLOAT32) return 0;
  /* A view makes no new values: if they are not finite, an earlier op made them. */
  for (int i = 0; i < n_in; i++)
    if (in[i] && in[i]->storage == out->storage) return 0;
  int64_t nan, inf;
  la_count_nonfinite(out, &nan, &inf);
  if (!nan && !inf) return 0;
  char what[96], shape[LA_SHAPE_BUF], inputs[4 * LA_SHAPE_BUF];
  la_nf_what(what, sizeof what, out, nan, inf);
  la_shape_str(shape, sizeof shape, out->ndim, out->shape);
  la_shapes_list(inputs, sizeof inputs, n_in, (const la_tensor *const *)in);
  int shown = 0;
  for (int i = 0; i < n_in; i++) if (in[i]) shown++;
  return la_failn("detect_anomaly: '%s' produced %s in its output of shape %s; its input%s %s %s",
                  op, what, shape, shown == 1 ? "" : "s", shown == 1 ? "has shape" : "have shapes",
                  inputs);
}

int la_anomaly_check_backward(const char *op, int input, int n_in, la_tensor *g, const la_tensor *gout) {
  if (g->dtype != LA_FLOAT32) return 0;
  int64_t nan, inf;
  la_count_nonfinite(g, &nan, &inf);
  if (!nan && !inf) return 0;
  char what[96], shape[LA_SHAPE_BUF], oshape[LA_SHAPE_BUF];
  la_nf_what(what, sizeof what, g, nan, inf);
  la_shape_str(shape, sizeof shape, g->ndim, g->shape);
  la_shape_str(oshape, sizeof oshape, gout->ndim, gout->shape);
  return la_failn("detect_anomaly: the backward of '%s' produced %s in the gradient of its input %d "
                  "(of %d), of shape %s; the gradient of its output, of shape %s, was finite",
                  op, what, input + 1, n_in, shape, oshape);
}
