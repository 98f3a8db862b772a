/*
** la_rope.c -- rotary position embeddings (RoPE), forward and backward.
**
** The rotate-half convention of the Llama family: a head vector x of width D
** is split into halves x1 = x[0, D/2) and x2 = x[D/2, D); at position p, with
** angle a_i = p * inv_freq[i],
**   forward    y1 = x1 cos a - x2 sin a,   y2 = x2 cos a + x1 sin a
**   backward   g1' = g1 cos a + g2 sin a,  g2' = g2 cos a - g1 sin a   (the inverse rotation)
** The cos and sin values come from a table (2, P, D/2) built once per length
** (la_rope_table, in double precision) and read by position, so no angle is
** recomputed per token.  The forward pass rotates its input in place: the q
** and k projections it is applied to are fresh tensors nothing else reads.
*/
#include <math.h>
#include <string.h>

#include "la_nn.h"

la_tensor *la_rope_table(const double *inv_freq, int64_t half, int64_t length) {
  if (half < 1 || length < 1)
    return la_fail("rope_table: needs at least one frequency and one position (got %lld, %lld)",
                   (long long)half, (long long)length);
  la_tensor *t = la_empty(LA_FLOAT32, 3, (int64_t[]){2, length, half});
  if (!t) return NULL;
  float *c = la_fdata(t), *s = c + length * half;
  for (int64_t p = 0; p < length; p++)
    for (int64_t i = 0; i < half; i++) {
      double a = (double)p * inv_freq[i];
      c[p * half + i] = (float)cos(a);
      s[p * half + i] = (float)sin(a);
    }
  return t;
}

typedef struct {
  float *x;
  int64_t T, H, half;
  int64_t sb, st, sh;        /* element strides of x (unit stride along D) */
  const int64_t *pos;        /* (B, T) contiguous */
  const float *cos, *sin;    /* (P, half) each */
  float sign;                /* +1 forward, -1 backward (the inverse rotation) */
} la_rope_job;

/* Rotates the heads of rows [lo, hi) of (b, t) pairs in place. */
static void la_rope_rows(void *ctx, int64_t lo, int64_t hi) {
  const la_rope_job *j = ctx;
  for (int64_t r = lo; r < hi; r++) {
    int64_t b = r / j->T, t = r % j->T;
    const float *c = j->cos + j->pos[r] * j->half, *s = j->sin + j->pos[r] * j->half;
    for (int64_t h = 0; h < j->H; h++) {
      float *x1 = j->x + b * j->sb + t * j->st + h * j->sh, *x2 = x1 + j->half;
      for (int64_t i = 0; i < j->half; i++) {
        float a = x1[i], d = x2[i], sn = j->sign * s[i];
        x1[i] = a * c[i] - d * sn;
        x2[i] = d * c[i] + a * sn;
      }
    }
  }
}

static void la_rope_run(la_tensor *x, la_tensor *pos, la_tensor *table, float sign) {
  int64_t B = x->shape[0], T = x->shape[1], half = x->shape[3] / 2, P = table->shape[1];
  la_rope_job j = {la_fdata(x), T, x->shape[2], half, x->stride[0], x->stride[1], x->stride[2],
                   la_data(pos), la_fdata(table), la_fdata(table) + P * half, sign};
  la_parallel_range(B * T, la_numel(x) >= LA_PARALLEL_GRAIN, la_rope_rows, &j);
}

static int la_rope_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  la_tensor *g = la_clone(gout);   /* contiguous, and ours to rotate */
  if (!g) return -1;
  la_rope_run(g, n->saved[0], n->saved[1], -1.0f);
  gin[0] = g;
  return 0;
}

la_tensor *la_rope_(la_tensor *x, la_tensor *positions, la_tensor *table) {
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF], b3[LA_SHAPE_BUF];
  const char *op = "rope";
  if (x->dtype != LA_FLOAT32 || x->ndim != 4 || x->shape[3] % 2 || x->stride[3] != 1)
    return la_fail("%s: x must be float32 (batch, time, heads, head_dim) with an even head_dim and "
                   "unit stride along it; got %s %s", op, la_dtype_name(x->dtype),
                   la_shape_str(b1, sizeof b1, x->ndim, x->shape));
  if (table->dtype != LA_FLOAT32 || table->ndim != 3 || table->shape[0] != 2 ||
      table->shape[2] != x->shape[3] / 2 || !la_is_contiguous(table))
    return la_fail("%s: the table must be a contiguous float32 (2, positions, %lld) from rope_table; "
                   "got %s", op, (long long)(x->shape[3] / 2),
                   la_shape_str(b2, sizeof b2, table->ndim, table->shape));
  if (positions->ndim != 2 || positions->shape[0] != x->shape[0] || positions->shape[1] != x->shape[1] ||
      la_dtype_is_float(positions->dtype) || positions->dtype == LA_BOOL)
    return la_fail("%s: positions must be an integer (batch, time) tensor matching x %s; got %s %s", op,
                   la_shape_str(b1, sizeof b1, x->ndim, x->shape), la_dtype_name(positions->dtype),
                   la_shape_str(b3, sizeof b3, positions->ndim, positions->shape));
  if (la_is_grad_enabled() && x->requires_grad && !x->grad_fn)
    return la_fail("%s: rotates x in place, and x is a leaf that requires grad; apply it to a "
                   "computed tensor (a projection)", op);
  for (int d = 0; d < 3; d++)
    if (x->stride[d] == 0 && x->shape[d] > 1)
      return la_fail("%s: x is an expanded view (its elements share memory); clone it first", op);
  la_tensor *pc = la_to_dtype(positions, LA_INT64), *pos = pc ? la_contiguous(pc) : NULL;
  la_release(pc);
  if (!pos) return NULL;
  const int64_t *pp = la_data(pos);
  int64_t P = table->shape[1], n = la_numel(pos);
  for (int64_t i = 0; i < n; i++)
    if (pp[i] < 0 || pp[i] >= P) {
      la_fail("%s: position %lld (element %lld of the positions) is outside the table's %lld "
              "positions", op, (long long)pp[i], (long long)i + 1, (long long)P);
      la_release(pos);
      return NULL;
    }
  la_rope_run(x, pos, table, 1.0f);
  x->storage->version++;   /* anything that saved x before the rotation is now stale */
  la_tensor *out = la_alias(x);
  la_node *node;
  out = la_record(out, op, la_rope_backward, 1, &x, 2, &node);
  if (node && (la_node_save(node, 0, pos) < 0 || la_node_save(node, 1, table) < 0)) {
    la_release(out);
    out = NULL;
  }
  la_release(pos);
  return out;
}
