/*
** la_pointwise.c -- elementwise ops with NumPy broadcasting: unary math,
** binary arithmetic and comparisons, clamp, where, and the in-place forms.
**
** float32 runs through tight loops (unit-stride and scalar-operand cases are
** written out so the compiler vectorises them).  Integer and bool operands go
** through a general path that computes in double: exact for integers up to
** 2^53, which covers every id and index.  Each differentiable op's backward
** sits right after its forward.
*/
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "la_iter.h"
#include "la_math.h"

static const char *const la_unary_names[LA_NUNARY] = {
  "neg", "exp", "log", "sqrt", "tanh", "sigmoid", "relu", "gelu", "gelu_exact", "silu",
  "abs", "sin", "cos", "rsqrt", "square", "log1p", "expm1", "softplus", "logsigmoid",
};

static const char *const la_binary_names[LA_NBINARY] = {
  "add", "sub", "mul", "div", "pow", "maximum", "minimum", "floor_divide", "remainder",
  "eq", "ne", "lt", "le", "gt", "ge",
};

const char *la_unary_name(la_unary_op op) { return la_unary_names[op]; }
const char *la_binary_name(la_binary_op op) { return la_binary_names[op]; }

static bool la_is_compare(la_binary_op op) { return op >= LA_EQ; }
static bool la_has_grad(la_binary_op op) { return op <= LA_MINIMUM; }

/* ---------------------------------------------------------------- scalar math */

#define LA_SQRT_2_OVER_PI 0.7978845608028654f
#define LA_GELU_C 0.044715f

static inline float la_sigmoidf(float x) { return la_sigmoidf_fast(x); }

static inline float la_gelu_f(float x) {
  return 0.5f * x * (1.0f + la_tanhf(LA_SQRT_2_OVER_PI * (x + LA_GELU_C * x * x * x)));
}

static inline float la_gelu_df(float x) {
  float u = LA_SQRT_2_OVER_PI * (x + LA_GELU_C * x * x * x), t = la_tanhf(u);
  return 0.5f * (1.0f + t) +
         0.5f * x * (1.0f - t * t) * LA_SQRT_2_OVER_PI * (1.0f + 3.0f * LA_GELU_C * x * x);
}

static inline float la_unary_f(la_unary_op op, float x) {
  switch (op) {
    case LA_NEG: return -x;
    case LA_EXP: return la_expf(x);
    case LA_LOG: return logf(x);
    case LA_SQRT: return sqrtf(x);
    case LA_TANH: return la_tanhf(x);
    case LA_SIGMOID: return la_sigmoidf(x);
    case LA_RELU: return x > 0 ? x : 0.0f;
    case LA_GELU: return la_gelu_f(x);
    case LA_GELU_EXACT: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case LA_SILU: return x * la_sigmoidf(x);
    case LA_ABS: return fabsf(x);
    case LA_SIN: return sinf(x);
    case LA_COS: return cosf(x);
    case LA_RSQRT: return 1.0f / sqrtf(x);
    case LA_SQUARE: return x * x;
    case LA_LOG1P: return log1pf(x);
    case LA_EXPM1: return expm1f(x);
    case LA_SOFTPLUS: return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x)));
    case LA_LOGSIGMOID: return fminf(x, 0.0f) - log1pf(expf(-fabsf(x)));
    default: return x;
  }
}

/* d op(x) / dx, from the input x and the output y. */
static inline float la_unary_df(la_unary_op op, float x, float y) {
  switch (op) {
    case LA_NEG: return -1.0f;
    case LA_EXP: return y;
    case LA_LOG: return 1.0f / x;
    case LA_SQRT: return 0.5f / y;
    case LA_TANH: return 1.0f - y * y;
    case LA_SIGMOID: return y * (1.0f - y);
    case LA_RELU: return x > 0 ? 1.0f : 0.0f;
    case LA_GELU: return la_gelu_df(x);
    case LA_GELU_EXACT:
      return 0.5f * (1.0f + erff(x * 0.70710678118654752f)) +
             x * 0.3989422804014327f * expf(-0.5f * x * x);
    case LA_SILU: { float s = la_sigmoidf(x); return s * (1.0f + x * (1.0f - s)); }
    case LA_ABS: return x > 0 ? 1.0f : (x < 0 ? -1.0f : 0.0f);
    case LA_SIN: return cosf(x);
    case LA_COS: return -sinf(x);
    case LA_RSQRT: return -0.5f * y * y * y;
    case LA_SQUARE: return 2.0f * x;
    case LA_LOG1P: return 1.0f / (1.0f + x);
    case LA_EXPM1: return y + 1.0f;
    case LA_SOFTPLUS: return la_sigmoidf(x);
    case LA_LOGSIGMOID: return la_sigmoidf(-x);
    default: return 1.0f;
  }
}

/* Whether the derivative needs the input (else only the output). */
static bool la_unary_needs_x(la_unary_op op) {
  switch (op) {
    case LA_NEG: case LA_EXP: case LA_SQRT: case LA_TANH: case LA_SIGMOID:
    case LA_RSQRT: case LA_EXPM1: return false;
    default: return true;
  }
}
static bool la_unary_needs_y(la_unary_op op) { return !la_unary_needs_x(op) && op != LA_NEG; }

/* ---------------------------------------------------------------- unary */

typedef struct { la_unary_op op; la_dtype dt; } la_unary_ctx;

static void la_unary_row(void *ctx, int64_t n, char *const *p, const int64_t *s) {
  const la_unary_ctx *c = ctx;
  if (c->dt != LA_FLOAT32) {
    for (int64_t i = 0; i < n; i++) {
      double x = la_load_elem(c->dt, p[1] + i * s[1]);
      double y = c->op == LA_NEG ? -x : c->op == LA_ABS ? fabs(x) : x * x;
      la_store_elem(c->dt, p[0] + i * s[0], y);
    }
    return;
  }
  float *o = (float *)p[0];
  if (s[1] == 4) {
    const float *x = (const float *)p[1];
    /* The common ones get loops of their own, which the compiler vectorises. */
    switch (c->op) {
      case LA_NEG: for (int64_t i = 0; i < n; i++) o[i] = -x[i]; break;
      case LA_RELU: for (int64_t i = 0; i < n; i++) o[i] = x[i] > 0 ? x[i] : 0.0f; break;
      case LA_SQUARE: for (int64_t i = 0; i < n; i++) o[i] = x[i] * x[i]; break;
      case LA_ABS: for (int64_t i = 0; i < n; i++) o[i] = fabsf(x[i]); break;
      case LA_EXP: for (int64_t i = 0; i < n; i++) o[i] = la_expf(x[i]); break;
      case LA_TANH: for (int64_t i = 0; i < n; i++) o[i] = la_tanhf(x[i]); break;
      case LA_SIGMOID: for (int64_t i = 0; i < n; i++) o[i] = la_sigmoidf(x[i]); break;
      case LA_GELU: for (int64_t i = 0; i < n; i++) o[i] = la_gelu_f(x[i]); break;
      case LA_SILU: for (int64_t i = 0; i < n; i++) o[i] = x[i] * la_sigmoidf(x[i]); break;
      default: for (int64_t i = 0; i < n; i++) o[i] = la_unary_f(c->op, x[i]); break;
    }
  } else {
    for (int64_t i = 0; i < n; i++) o[i] = la_unary_f(c->op, *(const float *)(p[1] + i * s[1]));
  }
}

/* out = f(a) elementwise into a new contiguous tensor of dtype dt. */
static la_tensor *la_map(la_tensor *a, la_dtype dt, la_row_fn fn, void *ctx) {
  la_tensor *out = la_empty(dt, a->ndim, a->shape);
  if (!out) return NULL;
  const int64_t *strides[2] = {out->stride, a->stride};
  char *base[2] = {la_data(out), la_data(a)};
  size_t sizes[2] = {la_dtype_size(dt), la_dtype_size(a->dtype)};
  la_iter it;
  la_iter_init(&it, a->ndim, a->shape, 2, base, strides, sizes);
  la_iter_run(&it, fn, ctx);
  return out;
}

typedef struct {
  la_unary_op op;
  const float *x, *y, *g;   /* x or y may be NULL when the derivative does not need it */
  float *out;
} la_unary_bw_ctx;

static void la_unary_bw_range(void *ctx, int64_t lo, int64_t hi) {
  const la_unary_bw_ctx *c = ctx;
  const float *xp = c->x, *yp = c->y, *gp = c->g;
  float *o = c->out;
  switch (c->op) {   /* vectorised loops for the common activations */
    case LA_GELU: for (int64_t i = lo; i < hi; i++) o[i] = gp[i] * la_gelu_df(xp[i]); break;
    case LA_TANH: for (int64_t i = lo; i < hi; i++) o[i] = gp[i] * (1.0f - yp[i] * yp[i]); break;
    case LA_SIGMOID: for (int64_t i = lo; i < hi; i++) o[i] = gp[i] * yp[i] * (1.0f - yp[i]); break;
    case LA_EXP: for (int64_t i = lo; i < hi; i++) o[i] = gp[i] * yp[i]; break;
    case LA_RELU: for (int64_t i = lo; i < hi; i++) o[i] = xp[i] > 0 ? gp[i] : 0.0f; break;
    case LA_SILU:
      for (int64_t i = lo; i < hi; i++) {
        float s = la_sigmoidf(xp[i]);
        o[i] = gp[i] * s * (1.0f + xp[i] * (1.0f - s));
      }
      break;
    default:
      for (int64_t i = lo; i < hi; i++) o[i] = gp[i] * la_unary_df(c->op, xp ? xp[i] : 0.0f, yp ? yp[i] : 0.0f);
      break;
  }
}

static int la_unary_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  la_unary_op op = (la_unary_op)n->iarg[0];
  la_tensor *x = n->saved[0], *y = n->saved[1];
  la_tensor *g = la_contiguous(gout);
  if (!g) return -1;
  la_tensor *out = la_empty(LA_FLOAT32, g->ndim, g->shape);
  if (!out) { la_release(g); return -1; }
  la_unary_bw_ctx c = {op, x ? la_fdata(x) : NULL, y ? la_fdata(y) : NULL, la_fdata(g),
                       la_fdata(out)};
  int64_t total = la_numel(g);
  la_parallel_range(total, total >= LA_PARALLEL_GRAIN, la_unary_bw_range, &c);
  la_release(g);
  gin[0] = out;
  return 0;
}

la_tensor *la_unary(la_unary_op op, la_tensor *a) {
  if (la_check_compute(la_unary_names[op], a) < 0) return NULL;
  if (a->dtype != LA_FLOAT32) {
    if (op == LA_NEG || op == LA_ABS || op == LA_SQUARE) {
      if (a->dtype == LA_BOOL)
        return la_fail("%s: not defined for bool tensors", la_unary_names[op]);
      la_unary_ctx c = {op, a->dtype};
      return la_map(a, a->dtype, la_unary_row, &c);
    }
    /* Math on integers promotes to float32, as in PyTorch. */
    la_tensor *f = la_to_dtype(a, LA_FLOAT32);
    if (!f) return NULL;
    la_tensor *r = la_unary(op, f);
    la_release(f);
    return r;
  }
  la_unary_ctx c = {op, LA_FLOAT32};
  la_tensor *out = la_map(a, LA_FLOAT32, la_unary_row, &c);
  la_node *n;
  out = la_record(out, la_unary_names[op], la_unary_backward, 1, &a, 2, &n);
  if (n) {
    n->iarg[0] = op;
    /* Saved values must be contiguous for the backward loop. */
    la_tensor *xc = la_unary_needs_x(op) ? la_contiguous(a) : NULL;
    int rc = 0;
    if (la_unary_needs_x(op)) rc = xc ? la_node_save(n, 0, xc) : -1;
    if (rc == 0 && la_unary_needs_y(op)) rc = la_node_save(n, 1, out);
    la_release(xc);
    if (rc < 0) { la_release(out); return NULL; }
  }
  return out;
}

/* ---------------------------------------------------------------- broadcasting */

int la_broadcast_shape(const char *op, const la_tensor *a, const la_tensor *b, int *ndim,
                       int64_t *shape) {
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF];
  int nd = a->ndim > b->ndim ? a->ndim : b->ndim;
  for (int d = 0; d < nd; d++) {
    int da = d - (nd - a->ndim), db = d - (nd - b->ndim);
    int64_t sa = da >= 0 ? a->shape[da] : 1, sb = db >= 0 ? b->shape[db] : 1;
    if (sa != sb && sa != 1 && sb != 1)
      return la_failn("%s: shapes %s and %s cannot be broadcast together (dimension %d: %lld vs %lld)",
                      op, la_shape_str(b1, sizeof b1, a->ndim, a->shape),
                      la_shape_str(b2, sizeof b2, b->ndim, b->shape), d + 1, (long long)sa,
                      (long long)sb);
    shape[d] = sa == 1 ? sb : sa;
  }
  *ndim = nd;
  return 0;
}

static la_dtype la_promote(la_dtype a, la_dtype b) {
  if (a == LA_FLOAT32 || b == LA_FLOAT32) return LA_FLOAT32;
  if (a == LA_INT64 || b == LA_INT64) return LA_INT64;
  return LA_INT32;   /* int32 with int32 or bool; bool with bool counts as int32 */
}

/* ---------------------------------------------------------------- binary kernels */

#define LA_FBIN(EXPR)                                                                 \
  do {                                                                                \
    float *o = (float *)p[0];                                                         \
    const float *A = (const float *)p[1], *B = (const float *)p[2];                   \
    if (s[0] == 4 && s[1] == 4 && s[2] == 4) {                                        \
      for (int64_t i = 0; i < n; i++) { float a = A[i], b = B[i]; o[i] = (EXPR); }    \
    } else if (s[0] == 4 && s[1] == 4 && s[2] == 0) {                                 \
      const float b = B[0];                                                           \
      for (int64_t i = 0; i < n; i++) { float a = A[i]; o[i] = (EXPR); }              \
    } else if (s[0] == 4 && s[1] == 0 && s[2] == 4) {                                 \
      const float a = A[0];                                                           \
      for (int64_t i = 0; i < n; i++) { float b = B[i]; o[i] = (EXPR); }              \
    } else {                                                                          \
      for (int64_t i = 0; i < n; i++) {                                               \
        float a = *(const float *)(p[1] + i * s[1]), b = *(const float *)(p[2] + i * s[2]); \
        *(float *)(p[0] + i * s[0]) = (EXPR);                                         \
      }                                                                               \
    }                                                                                 \
  } while (0)

#define LA_FCMP(EXPR)                                                                 \
  do {                                                                                \
    for (int64_t i = 0; i < n; i++) {                                                 \
      float a = *(const float *)(p[1] + i * s[1]), b = *(const float *)(p[2] + i * s[2]); \
      *(uint8_t *)(p[0] + i * s[0]) = (EXPR);                                         \
    }                                                                                 \
  } while (0)

static inline float la_fmodf_floor(float a, float b) {
  float r = fmodf(a, b);
  return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}

typedef struct { la_binary_op op; la_dtype out, a, b; } la_binary_ctx;

static void la_binary_row_f32(void *ctx, int64_t n, char *const *p, const int64_t *s) {
  const la_binary_ctx *c = ctx;
  switch (c->op) {
    case LA_ADD: LA_FBIN(a + b); break;
    case LA_SUB: LA_FBIN(a - b); break;
    case LA_MUL: LA_FBIN(a * b); break;
    case LA_DIV: LA_FBIN(a / b); break;
    case LA_POW: LA_FBIN(b == 2.0f ? a * a : powf(a, b)); break;
    case LA_MAXIMUM: LA_FBIN((a != a || a > b) ? a : b); break;   /* NaN propagates */
    case LA_MINIMUM: LA_FBIN((a != a || a < b) ? a : b); break;
    case LA_FLOORDIV: LA_FBIN(floorf(a / b)); break;
    case LA_MOD: LA_FBIN(la_fmodf_floor(a, b)); break;
    case LA_EQ: LA_FCMP(a == b); break;
    case LA_NE: LA_FCMP(a != b); break;
    case LA_LT: LA_FCMP(a < b); break;
    case LA_LE: LA_FCMP(a <= b); break;
    case LA_GT: LA_FCMP(a > b); break;
    case LA_GE: LA_FCMP(a >= b); break;
    default: break;
  }
}

static inline double la_binary_d(la_binary_op op, double a, double b, bool integral) {
  switch (op) {
    case LA_ADD: return a + b;
    case LA_SUB: return a - b;
    case LA_MUL: return a * b;
    case LA_DIV: return a / b;
    case LA_POW: return pow(a, b);
    case LA_MAXIMUM: return (a != a || a > b) ? a : b;
    case LA_MINIMUM: return (a != a || a < b) ? a : b;
    case LA_FLOORDIV: return integral && b == 0 ? 0 : floor(a / b);
    case LA_MOD: {
      if (integral && b == 0) return 0;
      double r = fmod(a, b);
      return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
    }
    case LA_EQ: return a == b;
    case LA_NE: return a != b;
    case LA_LT: return a < b;
    case LA_LE: return a <= b;
    case LA_GT: return a > b;
    case LA_GE: return a >= b;
    default: return 0;
  }
}

static void la_binary_row_any(void *ctx, int64_t n, char *const *p, const int64_t *s) {
  const la_binary_ctx *c = ctx;
  bool integral = c->out != LA_FLOAT32;
  for (int64_t i = 0; i < n; i++) {
    double a = la_load_elem(c->a, p[1] + i * s[1]), b = la_load_elem(c->b, p[2] + i * s[2]);
    la_store_elem(c->out, p[0] + i * s[0], la_binary_d(c->op, a, b, integral));
  }
}

/* out[...] = a op b over out's shape, a and b broadcast to it. */
static void la_binary_into(la_binary_op op, la_tensor *out, const la_tensor *a,
                           const la_tensor *b) {
  int64_t sa[LA_MAX_DIM], sb[LA_MAX_DIM];
  la_broadcast_strides(a, out->ndim, out->shape, sa);
  la_broadcast_strides(b, out->ndim, out->shape, sb);
  const int64_t *strides[3] = {out->stride, sa, sb};
  char *base[3] = {la_data(out), la_data(a), la_data(b)};
  size_t sizes[3] = {la_dtype_size(out->dtype), la_dtype_size(a->dtype), la_dtype_size(b->dtype)};
  la_iter it;
  la_iter_init(&it, out->ndim, out->shape, 3, base, strides, sizes);
  la_binary_ctx c = {op, out->dtype, a->dtype, b->dtype};
  bool f32 = a->dtype == LA_FLOAT32 && b->dtype == LA_FLOAT32 &&
             (out->dtype == LA_FLOAT32 || la_is_compare(op));
  la_iter_run(&it, f32 ? la_binary_row_f32 : la_binary_row_any, &c);
}

/* ---------------------------------------------------------------- binary backward */

/* Reduces a gradient over the dims that input i was broadcast along. */
static la_tensor *la_grad_for(la_node *n, int i, la_tensor *g) {
  if (!g) return NULL;
  la_tensor *r = la_sum_to(g, n->in[i].ndim, n->in[i].shape);
  la_release(g);
  return r;
}

typedef struct { la_binary_op op; int which; } la_binary_bw_ctx;

/* Fused d(a op b)/da or /db times g, for mul/div/pow/maximum/minimum. */
static void la_binary_bw_row(void *ctx, int64_t n, char *const *p, const int64_t *s) {
  const la_binary_bw_ctx *c = ctx;
  for (int64_t i = 0; i < n; i++) {
    float g = *(const float *)(p[1] + i * s[1]);
    float a = *(const float *)(p[2] + i * s[2]);
    float b = *(const float *)(p[3] + i * s[3]);
    float d;
    switch (c->op) {
      case LA_MUL: d = c->which == 0 ? b : a; break;
      case LA_DIV: d = c->which == 0 ? 1.0f / b : -a / (b * b); break;
      case LA_POW:
        if (c->which == 0) d = b == 0 ? 0.0f : b * powf(a, b - 1.0f);
        else d = (a == 0 && b >= 0) ? 0.0f : powf(a, b) * logf(a);
        break;
      case LA_MAXIMUM:
        d = a == b ? 0.5f : ((c->which == 0) == (a > b) ? 1.0f : 0.0f);
        break;
      case LA_MINIMUM:
        d = a == b ? 0.5f : ((c->which == 0) == (a < b) ? 1.0f : 0.0f);
        break;
      default: d = 0; break;
    }
    *(float *)(p[0] + i * s[0]) = g * d;
  }
}

static la_tensor *la_binary_bw_one(la_binary_op op, int which, la_tensor *g, la_tensor *a,
                                   la_tensor *b) {
  la_tensor *out = la_empty(LA_FLOAT32, g->ndim, g->shape);
  if (!out) return NULL;
  int64_t sg[LA_MAX_DIM], sa[LA_MAX_DIM], sb[LA_MAX_DIM];
  la_broadcast_strides(g, out->ndim, out->shape, sg);
  la_broadcast_strides(a, out->ndim, out->shape, sa);
  la_broadcast_strides(b, out->ndim, out->shape, sb);
  const int64_t *strides[4] = {out->stride, sg, sa, sb};
  char *base[4] = {la_data(out), la_data(g), la_data(a), la_data(b)};
  size_t sizes[4] = {4, 4, 4, 4};
  la_iter it;
  la_iter_init(&it, out->ndim, out->shape, 4, base, strides, sizes);
  la_binary_bw_ctx c = {op, which};
  la_iter_run(&it, la_binary_bw_row, &c);
  return out;
}

static int la_binary_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  la_binary_op op = (la_binary_op)n->iarg[0];
  for (int i = 0; i < 2; i++) {
    if (!LA_NEEDS_GRAD(n, i)) continue;
    la_tensor *g;
    if (op == LA_ADD || (op == LA_SUB && i == 0)) g = la_retain(gout);
    else if (op == LA_SUB) g = la_unary(LA_NEG, gout);
    else g = la_binary_bw_one(op, i, gout, n->saved[0], n->saved[1]);
    if (!g || !(gin[i] = la_grad_for(n, i, g))) return -1;
  }
  return 0;
}

/* ---------------------------------------------------------------- binary */

la_tensor *la_binary(la_binary_op op, la_tensor *a, la_tensor *b) {
  const char *name = la_binary_names[op];
  if (la_check_compute(name, a) < 0 || la_check_compute(name, b) < 0) return NULL;
  int nd;
  int64_t shape[LA_MAX_DIM];
  if (la_broadcast_shape(name, a, b, &nd, shape) < 0) return NULL;
  la_dtype rt = la_promote(a->dtype, b->dtype);
  if (op == LA_DIV) rt = LA_FLOAT32;   /* true division, as Python's / */
  /* Mixed float/integer arithmetic converts the integer side first, so the
  ** float loops (and the gradient) see float32 on both sides. */
  if (rt == LA_FLOAT32 && (a->dtype != LA_FLOAT32 || b->dtype != LA_FLOAT32)) {
    la_tensor *fa = la_to_dtype(a, LA_FLOAT32), *fb = fa ? la_to_dtype(b, LA_FLOAT32) : NULL;
    la_tensor *r = fb ? la_binary(op, fa, fb) : NULL;
    la_release(fa);
    la_release(fb);
    return r;
  }
  la_tensor *out = la_empty(la_is_compare(op) ? LA_BOOL : rt, nd, shape);
  if (!out) return NULL;
  la_binary_into(op, out, a, b);
  if (!la_has_grad(op) || rt != LA_FLOAT32) return out;
  la_tensor *in[2] = {a, b};
  la_node *n;
  bool save = op != LA_ADD && op != LA_SUB;
  out = la_record(out, name, la_binary_backward, 2, in, save ? 2 : 0, &n);
  if (n) {
    n->iarg[0] = op;
    if (save && (la_node_save(n, 0, a) < 0 || la_node_save(n, 1, b) < 0)) {
      la_release(out);
      return NULL;
    }
  }
  return out;
}

la_tensor *la_binary_scalar(la_binary_op op, la_tensor *a, double b, bool scalar_first) {
  if (la_check_compute(la_binary_names[op], a) < 0) return NULL;
  /* An integral number keeps an integer tensor integral; others make float. */
  la_dtype dt = (a->dtype != LA_FLOAT32 && b == floor(b) && fabs(b) < 9e15)
                    ? (a->dtype == LA_BOOL ? LA_INT32 : a->dtype)
                    : LA_FLOAT32;
  la_tensor *s = la_scalar(dt, b);
  if (!s) return NULL;
  la_tensor *r = scalar_first ? la_binary(op, s, a) : la_binary(op, a, s);
  la_release(s);
  return r;
}

/* ---------------------------------------------------------------- clamp */

typedef struct { float lo, hi; la_dtype dt; double dlo, dhi; } la_clamp_ctx;

static void la_clamp_row(void *ctx, int64_t n, char *const *p, const int64_t *s) {
  const la_clamp_ctx *c = ctx;
  if (c->dt != LA_FLOAT32) {
    for (int64_t i = 0; i < n; i++) {
      double x = la_load_elem(c->dt, p[1] + i * s[1]);
      la_store_elem(c->dt, p[0] + i * s[0], x < c->dlo ? c->dlo : (x > c->dhi ? c->dhi : x));
    }
    return;
  }
  for (int64_t i = 0; i < n; i++) {
    float x = *(const float *)(p[1] + i * s[1]);
    *(float *)(p[0] + i * s[0]) = x < c->lo ? c->lo : (x > c->hi ? c->hi : x);
  }
}

static int la_clamp_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  la_tensor *x = n->saved[0];
  la_tensor *g = la_contiguous(gout);
  if (!g) return -1;
  la_tensor *out = la_empty(LA_FLOAT32, g->ndim, g->shape);
  if (!out) { la_release(g); return -1; }
  const float *xp = la_fdata(x), *gp = la_fdata(g);
  float *o = la_fdata(out), lo = (float)n->farg[0], hi = (float)n->farg[1];
  int64_t total = la_numel(g);
  for (int64_t i = 0; i < total; i++) o[i] = (xp[i] >= lo && xp[i] <= hi) ? gp[i] : 0.0f;
  la_release(g);
  gin[0] = out;
  return 0;
}

la_tensor *la_clamp(la_tensor *a, double lo, double hi) {
  if (la_check_compute("clamp", a) < 0) return NULL;
  if (lo > hi) return la_fail("clamp: min %g is greater than max %g", lo, hi);
  if (a->dtype == LA_BOOL) return la_fail("clamp: not defined for bool tensors");
  la_clamp_ctx c = {(float)lo, (float)hi, a->dtype, lo, hi};
  la_tensor *out = la_map(a, a->dtype, la_clamp_row, &c);
  if (a->dtype != LA_FLOAT32) return out;
  la_node *n;
  out = la_record(out, "clamp", la_clamp_backward, 1, &a, 1, &n);
  if (n) {
    n->farg[0] = lo;
    n->farg[1] = hi;
    la_tensor *xc = la_contiguous(a);
    int rc = xc ? la_node_save(n, 0, xc) : -1;
    la_release(xc);
    if (rc < 0) { la_release(out); return NULL; }
  }
  return out;
}

/* ---------------------------------------------------------------- where */

typedef struct { la_dtype out, cond, a, b; } la_where_ctx;

static void la_where_row(void *ctx, int64_t n, char *const *p, const int64_t *s) {
  const la_where_ctx *c = ctx;
  if (c->out == LA_FLOAT32 && c->a == LA_FLOAT32 && c->b == LA_FLOAT32 && c->cond == LA_BOOL) {
    for (int64_t i = 0; i < n; i++) {
      bool k = *(const uint8_t *)(p[1] + i * s[1]);
      *(float *)(p[0] + i * s[0]) = *(const float *)(k ? p[2] + i * s[2] : p[3] + i * s[3]);
    }
    return;
  }
  for (int64_t i = 0; i < n; i++) {
    bool k = la_load_elem(c->cond, p[1] + i * s[1]) != 0;
    double v = k ? la_load_elem(c->a, p[2] + i * s[2]) : la_load_elem(c->b, p[3] + i * s[3]);
    la_store_elem(c->out, p[0] + i * s[0], v);
  }
}

static la_tensor *la_where_raw(la_tensor *cond, la_tensor *a, la_tensor *b, la_dtype dt) {
  int nd, nd2;
  int64_t s1[LA_MAX_DIM], shape[LA_MAX_DIM];
  if (la_broadcast_shape("where", a, b, &nd, s1) < 0) return NULL;
  la_tensor tmp = {.ndim = nd};
  memcpy(tmp.shape, s1, sizeof s1);
  if (la_broadcast_shape("where", cond, &tmp, &nd2, shape) < 0) return NULL;
  la_tensor *out = la_empty(dt, nd2, shape);
  if (!out) return NULL;
  int64_t sc[LA_MAX_DIM], sa[LA_MAX_DIM], sb[LA_MAX_DIM];
  la_broadcast_strides(cond, nd2, shape, sc);
  la_broadcast_strides(a, nd2, shape, sa);
  la_broadcast_strides(b, nd2, shape, sb);
  const int64_t *strides[4] = {out->stride, sc, sa, sb};
  char *base[4] = {la_data(out), la_data(cond), la_data(a), la_data(b)};
  size_t sizes[4] = {la_dtype_size(dt), la_dtype_size(cond->dtype), la_dtype_size(a->dtype),
                     la_dtype_size(b->dtype)};
  la_iter it;
  la_iter_init(&it, nd2, shape, 4, base, strides, sizes);
  la_where_ctx c = {dt, cond->dtype, a->dtype, b->dtype};
  la_iter_run(&it, la_where_row, &c);
  return out;
}

static int la_where_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  la_tensor *cond = n->saved[0];
  la_tensor *zero = la_scalar(LA_FLOAT32, 0.0);
  if (!zero) return -1;
  for (int i = 0; i < 2; i++) {
    if (!LA_NEEDS_GRAD(n, i + 1)) continue;
    la_tensor *g = i == 0 ? la_where_raw(cond, gout, zero, LA_FLOAT32)
                          : la_where_raw(cond, zero, gout, LA_FLOAT32);
    if (!g || !(gin[i + 1] = la_grad_for(n, i + 1, g))) { la_release(zero); return -1; }
  }
  la_release(zero);
  return 0;
}

la_tensor *la_where(la_tensor *cond, la_tensor *a, la_tensor *b) {
  if (la_check_compute("where", a) < 0 || la_check_compute("where", b) < 0 ||
      la_check_compute("where", cond) < 0)
    return NULL;
  la_dtype dt = la_promote(a->dtype, b->dtype);
  if (a->dtype == LA_BOOL && b->dtype == LA_BOOL) dt = LA_BOOL;
  if (dt == LA_FLOAT32 && (a->dtype != LA_FLOAT32 || b->dtype != LA_FLOAT32)) {
    la_tensor *fa = la_to_dtype(a, LA_FLOAT32), *fb = fa ? la_to_dtype(b, LA_FLOAT32) : NULL;
    la_tensor *r = fb ? la_where(cond, fa, fb) : NULL;
    la_release(fa);
    la_release(fb);
    return r;
  }
  la_tensor *out = la_where_raw(cond, a, b, dt);
  if (dt != LA_FLOAT32) return out;
  la_tensor *in[3] = {cond, a, b};
  la_node *n;
  out = la_record(out, "where", la_where_backward, 3, in, 1, &n);
  if (n && la_node_save(n, 0, cond) < 0) { la_release(out); return NULL; }
  return out;
}

/* ---------------------------------------------------------------- in place */

static int la_inplace_check_shape(const char *op, la_tensor *dst, la_tensor *src) {
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF];
  int nd;
  int64_t shape[LA_MAX_DIM];
  if (la_broadcast_shape(op, dst, src, &nd, shape) < 0) return -1;
  if (nd != dst->ndim || memcmp(shape, dst->shape, (size_t)nd * sizeof(int64_t)))
    return la_failn("%s: in-place result would have shape %s, not the destination's %s", op,
                    la_shape_str(b1, sizeof b1, nd, shape),
                    la_shape_str(b2, sizeof b2, dst->ndim, dst->shape));
  for (int d = 0; d < dst->ndim; d++)
    if (dst->stride[d] == 0 && dst->shape[d] > 1)
      return la_failn("%s: the destination is an expanded view (its elements share memory); "
                      "clone it first", op);
  return 0;
}

int la_binary_(la_binary_op op, la_tensor *dst, la_tensor *src) {
  char name[32];
  snprintf(name, sizeof name, "%s_", la_binary_names[op]);
  if (la_check_compute(name, dst) < 0 || la_check_compute(name, src) < 0) return -1;
  if (la_check_inplace(name, dst) < 0 || la_inplace_check_shape(name, dst, src) < 0) return -1;
  if (la_is_compare(op)) return la_failn("%s: comparisons have no in-place form", name);
  la_dtype rt = op == LA_DIV ? LA_FLOAT32 : la_promote(dst->dtype, src->dtype);
  if (rt != dst->dtype)
    return la_failn("%s: the result would be %s, which cannot be stored in place in a %s tensor",
                    name, la_dtype_name(rt), la_dtype_name(dst->dtype));
  la_tensor *s = NULL;
  if (src->dtype != dst->dtype || src->storage == dst->storage) {
    /* Convert, or copy so that overlapping views read the old values. */
    s = src->dtype != dst->dtype ? la_to_dtype(src, dst->dtype) : la_clone(src);
    if (!s) return -1;
    src = s;
  }
  la_binary_into(op, dst, dst, src);
  la_release(s);
  dst->storage->version++;
  return 0;
}

int la_binary_scalar_(la_binary_op op, la_tensor *dst, double v) {
  if (la_check_compute(la_binary_names[op], dst) < 0) return -1;
  la_tensor *s = la_scalar(dst->dtype == LA_BOOL ? LA_INT32 : dst->dtype, v);
  if (!s) return -1;
  if (dst->dtype != LA_FLOAT32 && v != floor(v)) {
    la_release(s);
    return la_failn("%s_: cannot store the non-integral result in place in a %s tensor",
                    la_binary_names[op], la_dtype_name(dst->dtype));
  }
  int rc = la_binary_(op, dst, s);
  la_release(s);
  return rc;
}

typedef struct { float alpha; } la_axpy_ctx;

static void la_axpy_row(void *ctx, int64_t n, char *const *p, const int64_t *s) {
  float alpha = ((const la_axpy_ctx *)ctx)->alpha;
  if (s[0] == 4 && s[1] == 4) {
    float *y = (float *)p[0];
    const float *x = (const float *)p[1];
    for (int64_t i = 0; i < n; i++) y[i] += alpha * x[i];
  } else {
    for (int64_t i = 0; i < n; i++)
      *(float *)(p[0] + i * s[0]) += alpha * *(const float *)(p[1] + i * s[1]);
  }
}

int la_axpy_(la_tensor *dst, double alpha, la_tensor *src) {
  if (dst->dtype != LA_FLOAT32 || src->dtype != LA_FLOAT32)
    return la_failn("add_: scaled in-place addition needs float32 tensors (got %s and %s)",
                    la_dtype_name(dst->dtype), la_dtype_name(src->dtype));
  if (la_check_inplace("add_", dst) < 0 || la_inplace_check_shape("add_", dst, src) < 0)
    return -1;
  la_tensor *s = NULL;
  if (src->storage == dst->storage) {
    if (!(s = la_clone(src))) return -1;
    src = s;
  }
  int64_t ss[LA_MAX_DIM];
  la_broadcast_strides(src, dst->ndim, dst->shape, ss);
  const int64_t *strides[2] = {dst->stride, ss};
  char *base[2] = {la_data(dst), la_data(src)};
  size_t sizes[2] = {4, 4};
  la_iter it;
  la_iter_init(&it, dst->ndim, dst->shape, 2, base, strides, sizes);
  la_axpy_ctx c = {(float)alpha};
  la_iter_run(&it, la_axpy_row, &c);
  la_release(s);
  dst->storage->version++;
  return 0;
}
