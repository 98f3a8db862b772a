/*
** engine_test.c -- tests of the C engine core alone, with no Lua: this proves
** the core builds and works without Lua headers, and lets memory checkers
** (valgrind, sanitizers) run on the engine directly.
**
** Prints one line per test, "ok NAME" or "FAIL NAME: why", and a final
** "N passed, N failed".  tests/engine_c_spec.lua runs it inside `make test`.
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "la.h"
#include "la_nn.h"
#include "la_dist.h"
#include "la_safetensors.h"

static int passed, failed;
static const char *current;
static char why[512];

#define CHECK(cond, ...)                                     \
  do {                                                       \
    if (!(cond)) {                                           \
      snprintf(why, sizeof why, __VA_ARGS__);                \
      return 0;                                              \
    }                                                        \
  } while (0)

static void run(const char *name, int (*fn)(void)) {
  current = name;
  why[0] = 0;
  size_t before = la_memory_stats().live_bytes;
  int ok = fn();
  size_t after = la_memory_stats().live_bytes;
  if (ok && after != before) {
    snprintf(why, sizeof why, "leaked %zu bytes of tensor storage", after - before);
    ok = 0;
  }
  if (ok) { passed++; printf("ok %s\n", name); }
  else { failed++; printf("FAIL %s: %s\n", name, why); }
}

static la_tensor *from(const float *v, int ndim, const int64_t *shape) {
  la_tensor *t = la_empty(LA_FLOAT32, ndim, shape);
  memcpy(la_fdata(t), v, (size_t)la_numel(t) * sizeof(float));
  return t;
}

static int near(float a, float b) { return fabsf(a - b) <= 1e-5f * (1 + fabsf(b)); }

/* ---------------------------------------------------------------- tests */

static int test_broadcast_add(void) {
  float a[] = {1, 2, 3, 4, 5, 6}, b[] = {10, 20, 30};
  la_tensor *ta = from(a, 2, (int64_t[]){2, 3}), *tb = from(b, 1, (int64_t[]){3});
  la_tensor *c = la_binary(LA_ADD, ta, tb);
  int ok = c && c->shape[0] == 2 && c->shape[1] == 3 && near(la_fdata(c)[4], 25);
  la_release(ta); la_release(tb); la_release(c);
  CHECK(ok, "(2,3) + (3,) gave the wrong result");
  return 1;
}

static int test_broadcast_error(void) {
  la_tensor *a = la_full(LA_FLOAT32, 2, (int64_t[]){2, 3}, 1), *b = la_full(LA_FLOAT32, 1, (int64_t[]){4}, 1);
  la_tensor *c = la_binary(LA_MUL, a, b);
  la_release(a); la_release(b);
  CHECK(c == NULL, "mismatched shapes were accepted");
  CHECK(strstr(la_error(), "mul: shapes (2, 3) and (4,) cannot be broadcast") != NULL,
        "message was: %s", la_error());
  return 1;
}

static int test_matmul_values(void) {
  float a[] = {1, 2, 3, 4, 5, 6}, b[] = {1, 0, 0, 1, 1, 1};
  la_tensor *ta = from(a, 2, (int64_t[]){2, 3}), *tb = from(b, 2, (int64_t[]){3, 2});
  la_tensor *c = la_matmul(ta, tb);
  /* [[1,2,3],[4,5,6]] x [[1,0],[0,1],[1,1]] = [[4,5],[10,11]] */
  float *p = la_fdata(c);
  int ok = near(p[0], 4) && near(p[1], 5) && near(p[2], 10) && near(p[3], 11);
  la_release(ta); la_release(tb); la_release(c);
  CHECK(ok, "2x3 by 3x2 product is wrong");
  return 1;
}

static int test_backward_mul_sum(void) {
  float a[] = {1, 2, 3}, b[] = {4, 5, 6};
  la_tensor *ta = from(a, 1, (int64_t[]){3}), *tb = from(b, 1, (int64_t[]){3});
  ta->requires_grad = true;
  la_tensor *p = la_binary(LA_MUL, ta, tb), *s = la_sum(p, -1, false);
  int rc = la_backward(s, NULL, false);
  int ok = rc == 0 && ta->grad && near(la_fdata(ta->grad)[2], 6) && tb->grad == NULL;
  la_release(s); la_release(p); la_release(ta); la_release(tb);
  CHECK(ok, "d sum(a*b)/da should be b (rc %d: %s)", rc, la_error());
  return 1;
}

static int test_second_backward_fails(void) {
  la_tensor *x = la_full(LA_FLOAT32, 1, (int64_t[]){4}, 2);
  x->requires_grad = true;
  la_tensor *y = la_unary(LA_EXP, x), *s = la_sum(y, -1, false);
  int first = la_backward(s, NULL, false), second = la_backward(s, NULL, false);
  la_release(s); la_release(y); la_release(x);
  CHECK(first == 0 && second < 0, "a second backward through a freed graph succeeded");
  CHECK(strstr(la_error(), "already freed") != NULL, "message was: %s", la_error());
  return 1;
}

static int test_saved_tensor_freed_by_backward(void) {
  la_tensor *x = la_full(LA_FLOAT32, 1, (int64_t[]){1 << 16}, 1);
  x->requires_grad = true;
  la_tensor *y = la_unary(LA_EXP, x);   /* saves its 256 KiB output */
  la_tensor *s = la_sum(y, -1, false);
  la_release(y);                        /* only the graph holds y's storage now */
  size_t before = la_memory_stats().live_bytes;
  la_backward(s, NULL, false);
  size_t after = la_memory_stats().live_bytes;
  la_release(s); la_release(x);
  /* y's storage (256 KiB) went, x.grad (256 KiB) came. */
  CHECK(after <= before, "backward kept the saved tensors (%zu -> %zu bytes)", before, after);
  return 1;
}

static int test_long_chain_release(void) {
  /* Freeing a 100000-op graph must not recurse once per node. */
  la_tensor *x = la_full(LA_FLOAT32, 1, (int64_t[]){1}, 0.5);
  x->requires_grad = true;
  la_tensor *y = la_retain(x);
  for (int i = 0; i < 100000; i++) {
    la_tensor *z = la_binary_scalar(LA_MUL, y, 1.0, false);
    la_release(y);
    y = z;
  }
  la_release(y);
  la_release(x);
  return 1;
}

static int test_inplace_on_saved_detected(void) {
  la_tensor *x = la_full(LA_FLOAT32, 1, (int64_t[]){3}, 2);
  x->requires_grad = true;
  la_tensor *y = la_unary(LA_EXP, x), *s = la_sum(y, -1, false);
  bool prev = la_set_grad_enabled(false);
  la_fill_(y, 0);                       /* modifies exp's saved output */
  la_set_grad_enabled(prev);
  int rc = la_backward(s, NULL, false);
  la_release(s); la_release(y); la_release(x);
  CHECK(rc < 0 && strstr(la_error(), "modified in place") != NULL,
        "in-place change of a saved tensor went unnoticed (%s)", la_error());
  return 1;
}

static int test_view_shares_storage(void) {
  la_tensor *x = la_arange(LA_FLOAT32, 0, 12, 1);
  la_tensor *v = la_view(x, 2, (int64_t[]){3, 4}), *t = la_transpose(v, 0, 1);
  int ok = v->storage == x->storage && t->storage == x->storage && !la_is_contiguous(t) &&
           la_get(t, (int64_t[]){3, 1}) == 7;
  la_tensor *bad = la_view(t, 1, (int64_t[]){12});
  la_release(x); la_release(v); la_release(t);
  CHECK(ok, "views must share storage, and t[4][2] of arange(12):view(3,4):t() is 7");
  CHECK(bad == NULL && strstr(la_error(), "use reshape") != NULL, "viewing a transpose flat must fail");
  return 1;
}

static int test_memory_limit(void) {
  la_set_memory_limit(la_memory_stats().live_bytes + (1 << 20));
  la_tensor *t = la_empty(LA_FLOAT32, 1, (int64_t[]){1 << 20});   /* 4 MiB */
  la_set_memory_limit(0);
  CHECK(t == NULL, "allocation past the limit succeeded");
  CHECK(strstr(la_error(), "out of memory") != NULL, "message was: %s", la_error());
  return 1;
}

static int test_index_range_error(void) {
  la_tensor *w = la_full(LA_FLOAT32, 2, (int64_t[]){4, 2}, 1);
  la_tensor *idx = la_full(LA_INT64, 1, (int64_t[]){2}, 4);
  la_tensor *r = la_index_select(w, 0, idx);
  la_release(w); la_release(idx);
  CHECK(r == NULL && strstr(la_error(), "index 4") && strstr(la_error(), "0-based"),
        "out-of-range index not reported: %s", la_error());
  return 1;
}

static int test_seed_reproducible(void) {
  la_manual_seed(42);
  la_tensor *a = la_randn(1, (int64_t[]){5});
  la_manual_seed(42);
  la_tensor *b = la_randn(1, (int64_t[]){5});
  int same = memcmp(la_fdata(a), la_fdata(b), 5 * sizeof(float)) == 0;
  la_release(a); la_release(b);
  CHECK(same, "the same seed gave different numbers");
  return 1;
}

static int test_all_finite(void) {
  float v[] = {1, 2, 3, 4, 5, 6};
  la_tensor *t = from(v, 2, (int64_t[]){2, 3});
  la_tensor *tt = la_transpose(t, 0, 1);
  int ok = la_all_finite(t) && la_all_finite(tt);
  la_fdata(t)[4] = NAN;
  la_fdata(t)[1] = -INFINITY;
  int64_t nan = 0, inf = 0;
  la_count_nonfinite(tt, &nan, &inf);
  ok = ok && !la_all_finite(tt) && nan == 1 && inf == 1;
  la_tensor *s = la_scalar(LA_FLOAT32, INFINITY), *i = la_full(LA_INT64, 1, (int64_t[]){3}, 7);
  ok = ok && !la_all_finite(s) && la_all_finite(i);
  la_release(t); la_release(tt); la_release(s); la_release(i);
  CHECK(ok, "all_finite or count_nonfinite gave a wrong answer");
  return 1;
}

/* exp of NaN, +-inf and the ends of its range: NaN once went through an
** integer conversion and a shift of a negative number (undefined behaviour
** that `make sanitize` reported). */
static int test_exp_special_values(void) {
  float v[] = {NAN, INFINITY, -INFINITY, 88.7f, -87.0f, -100.0f, 0.0f, 1.0f};
  la_tensor *x = from(v, 1, (int64_t[]){8});
  la_tensor *y = la_unary(LA_EXP, x), *s = la_unary(LA_SIGMOID, x), *t = la_unary(LA_TANH, x);
  float *p = la_fdata(y), *q = la_fdata(s), *r = la_fdata(t);
  int ok = isnan(p[0]) && isinf(p[1]) && p[2] == 0 && isfinite(p[3]) && p[4] > 0 && p[5] == 0 &&
           p[6] == 1 && near(p[7], 2.7182817f) && isnan(q[0]) && q[1] == 1 && q[2] == 0 &&
           isnan(r[0]) && r[1] == 1 && r[2] == -1;
  la_release(x); la_release(y); la_release(s); la_release(t);
  CHECK(ok, "exp, sigmoid or tanh of a special value is wrong");
  return 1;
}

static int test_anomaly_forward(void) {
  float v[] = {1, -1, 2};
  la_tensor *x = from(v, 1, (int64_t[]){3});
  x->requires_grad = true;
  bool prev = la_set_anomaly_enabled(true);
  la_tensor *y = la_unary(LA_LOG, x);
  char msg[512];
  snprintf(msg, sizeof msg, "%s", la_error());
  la_tensor *z = la_unary(LA_EXP, x);   /* finite: recorded as usual */
  la_set_anomaly_enabled(prev);
  la_tensor *w = la_unary(LA_LOG, x);   /* anomaly mode off: no check */
  int ok = y == NULL && z != NULL && w != NULL;
  la_release(x); la_release(z); la_release(w);
  CHECK(ok, "log(-1) was not stopped in anomaly mode, or a finite op was");
  CHECK(strstr(msg, "'log' produced NaN (1 of 3 values) in its output of shape (3,)") != NULL,
        "message was: %s", msg);
  return 1;
}

static int test_anomaly_backward(void) {
  la_tensor *x = la_full(LA_FLOAT32, 1, (int64_t[]){2}, 0);
  x->requires_grad = true;
  bool prev = la_set_anomaly_enabled(true);
  la_tensor *y = la_unary(LA_SQRT, x), *s = la_sum(y, -1, false);
  int rc = la_backward(s, NULL, false);
  la_set_anomaly_enabled(prev);
  int no_grad = x->grad == NULL;
  la_release(s); la_release(y); la_release(x);
  CHECK(rc < 0 && no_grad, "an infinite gradient was accumulated in anomaly mode");
  CHECK(strstr(la_error(), "the backward of 'sqrt' produced inf (2 of 2 values) in the gradient of its input 1") != NULL,
        "message was: %s", la_error());
  return 1;
}

static int test_anomaly_skips_views(void) {
  float v[] = {1, NAN, 2, 3};
  la_tensor *x = from(v, 2, (int64_t[]){2, 2});
  x->requires_grad = true;
  bool prev = la_set_anomaly_enabled(true);
  la_tensor *t = la_transpose(x, 0, 1);            /* a view: makes no value */
  la_tensor *m = t ? la_binary_scalar(LA_MUL, t, 2.0, false) : NULL;   /* the first op to make NaN */
  la_set_anomaly_enabled(prev);
  la_release(x); la_release(t); la_release(m);
  CHECK(t != NULL && m == NULL && strstr(la_error(), "'mul' produced NaN"), "message was: %s", la_error());
  return 1;
}

static int test_safetensors_roundtrip(void) {
  char path[] = "/tmp/lualign-engine-test-XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0, "no temporary file");
  close(fd);
  float v[] = {1, 2, 3, 4, 5, 6};
  la_tensor *a = from(v, 2, (int64_t[]){2, 3}), *at = la_transpose(a, 0, 1);
  la_tensor *b = la_full(LA_INT64, 1, (int64_t[]){2}, 9);
  la_st_named named[2] = {{.name = "a.t", .name_len = 3, .tensor = at}, {.name = "b", .name_len = 1, .tensor = b}};
  la_st_pair meta[1] = {{"k", "v", 1, 1}};
  int rc = la_st_save(path, 2, named, 1, meta);
  la_st_file *f = rc == 0 ? la_st_open(path) : NULL;
  la_tensor *back = NULL;
  if (f) {
    ptrdiff_t i = la_st_find(la_st_file_header(f), "a.t", 3);
    back = i >= 0 ? la_st_read(f, (size_t)i) : NULL;
    la_st_close(f);
  }
  int ok = back && back->ndim == 2 && back->shape[0] == 3 && la_fdata(back)[1] == 4;
  unlink(path);
  la_release(a); la_release(at); la_release(b); la_release(back);
  CHECK(ok, "a transposed tensor did not survive save and load: %s", la_error());
  return 1;
}

/* Every 16-bit pattern widens to float32 and narrows back to itself (NaNs
** to a NaN), and float32 values half way between two halves go to the even one. */
static int test_half_conversions(void) {
  int bad = 0;
  for (uint32_t h = 0; h < 65536; h++) {
    float f = la_f16_to_f32((uint16_t)h), b = la_bf16_to_f32((uint16_t)h);
    uint16_t h2 = la_f32_to_f16(f), b2 = la_f32_to_bf16(b);
    if (f == f ? h2 != h : la_f16_to_f32(h2) == la_f16_to_f32(h2)) bad++;
    if (b == b ? b2 != h : la_bf16_to_f32(b2) == la_bf16_to_f32(b2)) bad++;
  }
  CHECK(bad == 0, "%d 16-bit values did not survive the round trip", bad);
  /* 1 + 2^-11 lies half way between 1 and 1 + 2^-10: to even (1); 1 + 3 * 2^-11 up */
  CHECK(la_f32_to_f16(1.0f + 0x1p-11f) == 0x3C00 && la_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3C02,
        "F16 ties do not round to even");
  CHECK(la_f32_to_bf16(1.0f + 0x1p-8f) == 0x3F80 && la_f32_to_bf16(1.0f + 3 * 0x1p-8f) == 0x3F82,
        "BF16 ties do not round to even");
  CHECK(la_f32_to_f16(65520.0f) == 0x7C00 && la_f32_to_f16(65519.0f) == 0x7BFF && la_f32_to_f16(0x1p-25f) == 0,
        "F16 overflow or underflow rounding is wrong");
  return 1;
}

/* The largest |a - b| of two float32 tensors of one shape (contiguous). */
static float max_diff(la_tensor *a, la_tensor *b) {
  float m = 0;
  for (int64_t i = 0; i < la_numel(a); i++) {
    float d = fabsf(la_fdata(a)[i] - la_fdata(b)[i]);
    if (d > m) m = d;
  }
  return m;
}

/* A product with a bfloat16 weight equals sgemm on the weight widened, both
** ways and over several 4 MiB panels; arithmetic on the 16-bit tensor is refused. */
static int test_half_weight_gemm(void) {
  la_manual_seed(3);
  la_tensor *x = la_randn(2, (int64_t[]){40, 700}), *w = la_randn(2, (int64_t[]){3200, 700});
  la_tensor *wh = la_to_dtype(w, LA_BFLOAT16), *ww = la_to_dtype(wh, LA_FLOAT32);
  la_tensor *c16 = la_empty(LA_FLOAT32, 2, (int64_t[]){40, 3200}), *c32 = la_empty(LA_FLOAT32, 2, (int64_t[]){40, 3200});
  int ok = la_gemm(false, true, 1.0f, x, wh, 0.0f, c16) == 0 && la_gemm(false, true, 1.0f, x, ww, 0.0f, c32) == 0 &&
           max_diff(c16, c32) < 1e-4f;
  la_tensor *g = la_randn(2, (int64_t[]){40, 3200});
  la_tensor *d16 = la_empty(LA_FLOAT32, 2, (int64_t[]){40, 700}), *d32 = la_empty(LA_FLOAT32, 2, (int64_t[]){40, 700});
  ok = ok && la_gemm(false, false, 1.0f, g, wh, 0.0f, d16) == 0 && la_gemm(false, false, 1.0f, g, ww, 0.0f, d32) == 0 &&
       max_diff(d16, d32) < 1e-4f;
  la_tensor *bad = la_unary(LA_EXP, wh);
  int refused = bad == NULL && strstr(la_error(), "exp: bfloat16 tensors are storage only") != NULL;
  la_release(bad);
  la_tensor *all[] = {x, w, wh, ww, c16, c32, g, d16, d32};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) la_release(all[i]);
  CHECK(ok, "16-bit weight products differ from float32 ones");
  CHECK(refused, "exp on a bfloat16 tensor: %s", la_error());
  return 1;
}

/* lora_linear = linear + s (x A^T) B^T, and its gradients for x, A and B
** match the composed ops'. */
static int test_lora_linear(void) {
  la_manual_seed(4);
  la_tensor *x = la_randn(2, (int64_t[]){5, 6}), *w = la_randn(2, (int64_t[]){4, 6});
  la_tensor *a = la_randn(2, (int64_t[]){2, 6}), *b = la_randn(2, (int64_t[]){4, 2});
  x->requires_grad = a->requires_grad = b->requires_grad = true;
  la_tensor *y = la_lora_linear(x, w, NULL, a, b, 0.5, NULL);
  la_tensor *ones = la_full(LA_FLOAT32, 2, (int64_t[]){5, 4}, 1.0);
  int ok = y && la_backward(y, ones, false) == 0;
  la_tensor *gx = ok ? la_clone(x->grad) : NULL, *ga = ok ? la_clone(a->grad) : NULL, *gb = ok ? la_clone(b->grad) : NULL;
  la_release_p(&x->grad); la_release_p(&a->grad); la_release_p(&b->grad);
  /* the composition: x W^T + 0.5 (x A^T) B^T */
  la_tensor *base = la_linear(x, w, NULL), *u = la_linear(x, a, NULL), *up = la_linear(u, b, NULL);
  la_tensor *upd = la_binary_scalar(LA_MUL, up, 0.5, false), *y2 = la_binary(LA_ADD, base, upd);
  ok = ok && y2 && max_diff(y, y2) < 1e-5f && la_backward(y2, ones, false) == 0 &&
       max_diff(gx, x->grad) < 1e-4f && max_diff(ga, a->grad) < 1e-4f && max_diff(gb, b->grad) < 1e-4f;
  la_tensor *all[] = {x, w, a, b, y, gx, ga, gb, base, u, up, upd, y2, ones};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) la_release(all[i]);
  CHECK(ok, "lora_linear differs from its composition: %s", la_error());
  return 1;
}

/* ---------------------------------------------------------------- hooked backward */

typedef struct hook_log {
  int n;
  la_tensor *leaf[8];
  float first[8];          /* the gradient's first value when reported */
  int fail_at;             /* report number that fails (0: none) */
} hook_log;

static int record_ready(void *ctx, la_tensor *leaf) {
  hook_log *h = ctx;
  if (h->n == 8) return la_failn("too many reports");
  h->leaf[h->n] = leaf;
  h->first[h->n] = leaf->grad ? la_fdata(leaf->grad)[0] : NAN;
  h->n++;
  if (h->n == h->fail_at) return la_failn("hook stopped the pass");
  return 0;
}

/* s = sum(w2 * exp(w1 * c + w1)): w2 is final after the last op, w1 only
** once both of its uses have delivered. */
static la_tensor *hooked_graph(la_tensor *w1, la_tensor *w2) {
  la_tensor *a = la_binary_scalar(LA_MUL, w1, 0.5, false);
  la_tensor *b = la_binary(LA_ADD, a, w1), *e = la_unary(LA_EXP, b);
  la_tensor *y = la_binary(LA_MUL, e, w2), *s = la_sum(y, -1, false);
  la_release(a); la_release(b); la_release(e); la_release(y);
  return s;
}

static int test_backward_hook_order(void) {
  float v1[] = {0.1f, -0.2f}, v2[] = {2, 3};
  la_tensor *w1 = from(v1, 1, (int64_t[]){2}), *w2 = from(v2, 1, (int64_t[]){2});
  w1->requires_grad = w2->requires_grad = true;
  la_tensor *s = hooked_graph(w1, w2);
  hook_log h = {0};
  int rc = la_backward_hooked(s, NULL, false, record_ready, &h);
  float want1 = 2 * expf(1.5f * 0.1f) * 1.5f;   /* d/dw1[0] = w2 exp(1.5 w1) 1.5 */
  int ok = rc == 0 && h.n == 2 && h.leaf[0] == w2 && h.leaf[1] == w1 && w1->grad && w2->grad &&
           near(h.first[1], want1) && h.first[1] == la_fdata(w1->grad)[0] &&
           h.first[0] == la_fdata(w2->grad)[0];
  la_release(s); la_release(w1); la_release(w2);
  CHECK(ok, "expected w2 then w1, each once with its final gradient (rc %d, %d reports: %s)", rc, h.n,
        la_error());
  return 1;
}

static int test_backward_hook_error_stops(void) {
  float v1[] = {0.1f, -0.2f}, v2[] = {2, 3};
  la_tensor *w1 = from(v1, 1, (int64_t[]){2}), *w2 = from(v2, 1, (int64_t[]){2});
  w1->requires_grad = w2->requires_grad = true;
  la_tensor *s = hooked_graph(w1, w2);
  hook_log h = {.fail_at = 1};
  int rc = la_backward_hooked(s, NULL, false, record_ready, &h);
  la_release(s); la_release(w1); la_release(w2);
  CHECK(rc < 0 && h.n == 1 && strstr(la_error(), "hook stopped the pass"),
        "a failing hook must stop the pass with its error (rc %d, %d reports, %s)", rc, h.n, la_error());
  return 1;
}

/* In a world of one the reducer must give exactly what a plain backward
** gives, leave a parameter no pass reached without a gradient, and send the
** buckets of the parameters reached before the pass ends. */
static int test_reducer_world_of_one(void) {
  float v1[] = {0.1f, -0.2f}, v2[] = {2, 3};
  la_tensor *w1 = from(v1, 1, (int64_t[]){2}), *w2 = from(v2, 1, (int64_t[]){2});
  la_tensor *u1 = from(v1, 1, (int64_t[]){2}), *u2 = from(v2, 1, (int64_t[]){2});
  la_tensor *unused = la_full(LA_FLOAT32, 1, (int64_t[]){3}, 1);
  w1->requires_grad = w2->requires_grad = u1->requires_grad = u2->requires_grad = true;
  unused->requires_grad = true;
  la_reducer *r = la_reducer_new((la_tensor *[]){unused, w1, w2}, 3, 4, LA_DIST_SUM);
  la_tensor *s = hooked_graph(w1, w2), *t = hooked_graph(u1, u2);
  int rc = r ? la_reducer_backward(r, s, NULL) : -1;
  int rc2 = la_backward(t, NULL, false);
  la_reducer_stats st = r ? la_reducer_get_stats(r) : (la_reducer_stats){0};
  int ok = rc == 0 && rc2 == 0 && w1->grad && w2->grad && !unused->grad &&
           memcmp(la_fdata(w1->grad), la_fdata(u1->grad), 2 * sizeof(float)) == 0 &&
           memcmp(la_fdata(w2->grad), la_fdata(u2->grad), 2 * sizeof(float)) == 0 &&
           st.n_buckets == 3 && st.steps == 1 && st.launched_early == 2 &&
           st.bytes_per_step == (2 + 2 + 3 + 3) * 4;
  la_reducer_free(r);
  la_release(s); la_release(t);
  la_release(w1); la_release(w2); la_release(u1); la_release(u2); la_release(unused);
  CHECK(ok, "reducer gradients or counters differ (rc %d/%d, buckets %d, early %lld: %s)", rc, rc2,
        st.n_buckets, (long long)st.launched_early, la_error());
  return 1;
}

static int test_reducer_rejects_duplicates(void) {
  la_tensor *w = la_full(LA_FLOAT32, 1, (int64_t[]){2}, 1);
  w->requires_grad = true;
  la_reducer *r = la_reducer_new((la_tensor *[]){w, w}, 2, 1 << 20, LA_DIST_SUM);
  la_release(w);
  CHECK(r == NULL && strstr(la_error(), "parameters 1 and 2 are the same tensor"),
        "a parameter listed twice was accepted (%s)", la_error());
  return 1;
}

int main(void) {
  run("broadcast_add", test_broadcast_add);
  run("broadcast_error", test_broadcast_error);
  run("matmul_values", test_matmul_values);
  run("backward_mul_sum", test_backward_mul_sum);
  run("second_backward_fails", test_second_backward_fails);
  run("saved_tensor_freed_by_backward", test_saved_tensor_freed_by_backward);
  run("long_chain_release", test_long_chain_release);
  run("inplace_on_saved_detected", test_inplace_on_saved_detected);
  run("view_shares_storage", test_view_shares_storage);
  run("memory_limit", test_memory_limit);
  run("index_range_error", test_index_range_error);
  run("seed_reproducible", test_seed_reproducible);
  run("all_finite", test_all_finite);
  run("exp_special_values", test_exp_special_values);
  run("anomaly_forward", test_anomaly_forward);
  run("anomaly_backward", test_anomaly_backward);
  run("anomaly_skips_views", test_anomaly_skips_views);
  run("safetensors_roundtrip", test_safetensors_roundtrip);
  run("half_conversions", test_half_conversions);
  run("half_weight_gemm", test_half_weight_gemm);
  run("lora_linear", test_lora_linear);
  run("backward_hook_order", test_backward_hook_order);
  run("backward_hook_error_stops", test_backward_hook_error_stops);
  run("reducer_world_of_one", test_reducer_world_of_one);
  run("reducer_rejects_duplicates", test_reducer_rejects_duplicates);
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
