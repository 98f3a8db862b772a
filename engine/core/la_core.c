/*
** la_core.c -- dtypes, error reporting, tensor headers, element access and
** the random generator.  Tensor memory itself is la_alloc.c's.
*/
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "la.h"

/* ---------------------------------------------------------------- dtypes */

static const struct { const char *name; size_t size; } la_dtypes[LA_NDTYPE] = {
  [LA_FLOAT32] = {"float32", 4},
  [LA_INT32] = {"int32", 4},
  [LA_INT64] = {"int64", 8},
  [LA_BOOL] = {"bool", 1},
  [LA_BFLOAT16] = {"bfloat16", 2},
  [LA_FLOAT16] = {"float16", 2},
};

size_t la_dtype_size(la_dtype dt) { return la_dtypes[dt].size; }
const char *la_dtype_name(la_dtype dt) { return la_dtypes[dt].name; }
bool la_dtype_is_float(la_dtype dt) { return dt == LA_FLOAT32 || la_dtype_is_half(dt); }
bool la_dtype_is_half(la_dtype dt) { return dt == LA_BFLOAT16 || dt == LA_FLOAT16; }

int la_check_compute(const char *op, const la_tensor *t) {
  if (!la_dtype_is_half(t->dtype)) return 0;
  return la_failn("%s: %s tensors are storage only (frozen weights); %s computes in float32 and "
                  "int types: convert with :float() first", op, la_dtype_name(t->dtype), op);
}

int la_dtype_from_name(const char *name, la_dtype *out) {
  static const struct { const char *alias; la_dtype dt; } aliases[] = {
    {"float32", LA_FLOAT32}, {"float", LA_FLOAT32},
    {"int32", LA_INT32}, {"int", LA_INT32},
    {"int64", LA_INT64}, {"long", LA_INT64},
    {"bool", LA_BOOL},
    {"bfloat16", LA_BFLOAT16}, {"bf16", LA_BFLOAT16},
    {"float16", LA_FLOAT16}, {"f16", LA_FLOAT16}, {"half", LA_FLOAT16},
  };
  for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
    if (strcmp(name, aliases[i].alias) == 0) { *out = aliases[i].dt; return 0; }
  return -1;
}

/* ---------------------------------------------------------------- errors */

static _Thread_local char la_errbuf[1024];

const char *la_error(void) { return la_errbuf; }

static void la_verror(const char *fmt, va_list ap) {
  vsnprintf(la_errbuf, sizeof la_errbuf, fmt, ap);
}

void *la_fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  la_verror(fmt, ap);
  va_end(ap);
  return NULL;
}

int la_failn(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  la_verror(fmt, ap);
  va_end(ap);
  return -1;
}

void la_error_prefix(const char *fmt, ...) {
  char prefix[256], old[sizeof la_errbuf];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  memcpy(old, la_errbuf, sizeof old);
  snprintf(la_errbuf, sizeof la_errbuf, "%s%s", prefix, old);
}

char *la_shape_str(char *buf, size_t n, int ndim, const int64_t *shape) {
  size_t used = (size_t)snprintf(buf, n, "(");
  for (int i = 0; i < ndim && used < n; i++)
    used += (size_t)snprintf(buf + used, n - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
  if (used < n) snprintf(buf + used, n - used, ndim == 1 ? ",)" : ")");
  return buf;
}

/* ---------------------------------------------------------------- tensors */

/* Tensor headers are recycled through a free list.  Ops on small tensors
** make and drop one header per call, and drop them in bursts when the Lua
** collector runs finalizers; glibc's free of a ~190-byte block (too large
** for its fastbins, and its per-size cache of 7 overflows in a burst) was
** about a tenth of a (4, 4) add.  Like the memory counters, this assumes
** tensors are made and released by one thread at a time (never inside a
** parallel region). */
#define LA_HEADER_CACHE 256

static la_tensor *la_header_cache[LA_HEADER_CACHE];
static int la_header_n;

/* A zeroed header. */
static la_tensor *la_header_new(void) {
  if (la_header_n == 0) return calloc(1, sizeof(la_tensor));
  la_tensor *t = la_header_cache[--la_header_n];
  memset(t, 0, sizeof *t);
  return t;
}

static void la_header_free(la_tensor *t) {
  if (la_header_n < LA_HEADER_CACHE) la_header_cache[la_header_n++] = t;
  else free(t);
}

la_tensor *la_retain(la_tensor *t) { if (t) t->refcount++; return t; }

void la_release(la_tensor *t) {
  if (!t || --t->refcount > 0) return;
  la_storage_release(t->storage);
  la_release(t->grad);
  if (t->grad_fn) la_node_release(t->grad_fn);
  la_header_free(t);
}

int64_t la_numel(const la_tensor *t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
  return n;
}

bool la_is_contiguous(const la_tensor *t) {
  int64_t expect = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    if (t->shape[i] != 1 && t->stride[i] != expect) return false;
    expect *= t->shape[i];
  }
  return true;
}

bool la_same_shape(const la_tensor *a, const la_tensor *b) {
  if (a->ndim != b->ndim) return false;
  for (int i = 0; i < a->ndim; i++)
    if (a->shape[i] != b->shape[i]) return false;
  return true;
}

bool la_tracks_grad(const la_tensor *t) { return t->requires_grad || t->grad_fn != NULL; }

int la_check_shape(const char *op, int ndim, const int64_t *shape) {
  if (ndim < 0 || ndim > LA_MAX_DIM)
    return la_failn("%s: a tensor may have at most %d dimensions (got %d)", op, LA_MAX_DIM, ndim);
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0)
      return la_failn("%s: size %lld of dimension %d is negative", op, (long long)shape[i], i + 1);
    if (shape[i] && n > INT64_MAX / 8 / shape[i])
      return la_failn("%s: shape is too large", op);
    n *= shape[i];
  }
  return 0;
}

int la_norm_dim(const char *op, int dim, int ndim) {
  if (dim < 0 || dim >= ndim) {
    if (ndim == 0) return la_failn("%s: a 0-d tensor has no dimension %d", op, dim + 1);
    return la_failn("%s: dimension %d out of range for a %d-d tensor (use 1..%d or -%d..-1)",
                    op, dim + 1, ndim, ndim, ndim);
  }
  return dim;
}

/* A header with contiguous strides over a fresh storage. */
la_tensor *la_empty(la_dtype dt, int ndim, const int64_t *shape) {
  if (la_check_shape("empty", ndim, shape) < 0) return NULL;
  la_tensor *t = la_header_new();
  if (!t) return la_fail("out of memory allocating a tensor header");
  t->refcount = 1;
  t->dtype = dt;
  t->ndim = ndim;
  int64_t n = 1;
  for (int i = ndim - 1; i >= 0; i--) {
    t->shape[i] = shape[i];
    t->stride[i] = n;
    n *= shape[i];
  }
  t->storage = la_storage_new((size_t)n * la_dtype_size(dt));
  if (!t->storage) { la_header_free(t); return NULL; }
  return t;
}

la_tensor *la_alias(const la_tensor *t) {
  la_tensor *a = la_header_new();
  if (!a) return la_fail("out of memory allocating a tensor header");
  *a = *t;
  a->refcount = 1;
  a->requires_grad = false;
  a->grad = NULL;
  a->grad_fn = NULL;
  la_storage_retain(a->storage);
  return a;
}

static void la_fill_contiguous(void *p, la_dtype dt, int64_t n, double v) {
  switch (dt) {
    case LA_FLOAT32: { float *q = p, f = (float)v; for (int64_t i = 0; i < n; i++) q[i] = f; break; }
    case LA_INT32: { int32_t *q = p, x = la_to_i32(v); for (int64_t i = 0; i < n; i++) q[i] = x; break; }
    case LA_INT64: { int64_t *q = p, x = la_to_i64(v); for (int64_t i = 0; i < n; i++) q[i] = x; break; }
    case LA_BOOL: memset(p, v != 0, (size_t)n); break;
    case LA_BFLOAT16: case LA_FLOAT16: {
      uint16_t *q = p, h;
      la_store_elem(dt, &h, v);
      for (int64_t i = 0; i < n; i++) q[i] = h;
      break;
    }
    default: break;
  }
}

la_tensor *la_full(la_dtype dt, int ndim, const int64_t *shape, double value) {
  la_tensor *t = la_empty(dt, ndim, shape);
  if (t) la_fill_contiguous(la_data(t), dt, la_numel(t), value);
  return t;
}

la_tensor *la_scalar(la_dtype dt, double v) { return la_full(dt, 0, NULL, v); }

la_tensor *la_arange(la_dtype dt, double start, double stop, double step) {
  if (step == 0 || !isfinite(start) || !isfinite(stop) || !isfinite(step))
    return la_fail("arange: start %g, stop %g and step %g must be finite, step non-zero",
                   start, stop, step);
  double count = ceil((stop - start) / step);
  if (count < 0) count = 0;
  if (count > 1e12) return la_fail("arange: %g elements is too many", count);
  int64_t n = (int64_t)count;
  la_tensor *t = la_empty(dt, 1, &n);
  if (!t) return NULL;
  for (int64_t i = 0; i < n; i++) la_set(t, &i, start + (double)i * step);
  return t;
}

/* ---------------------------------------------------------------- elements */

static size_t la_offset_of(const la_tensor *t, const int64_t *index) {
  int64_t off = t->offset;
  for (int i = 0; i < t->ndim; i++) off += index[i] * t->stride[i];
  return (size_t)off;
}

double la_get(const la_tensor *t, const int64_t *index) {
  const char *base = t->storage->data;
  return la_load_elem(t->dtype, base + la_offset_of(t, index) * la_dtype_size(t->dtype));
}

void la_set(la_tensor *t, const int64_t *index, double v) {
  char *base = t->storage->data;
  la_store_elem(t->dtype, base + la_offset_of(t, index) * la_dtype_size(t->dtype), v);
}

double la_item(const la_tensor *t) {
  int64_t zero[LA_MAX_DIM] = {0};
  return la_get(t, zero);
}

/* ---------------------------------------------------------------- RNG */
/* xoshiro256** (Blackman and Vigna), seeded through splitmix64: fast, with a
** 2^256 period, and the same stream on every platform for a given seed. */

static uint64_t la_rng_s[4];
static bool la_rng_have_spare;
static double la_rng_spare;

static uint64_t la_splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

void la_manual_seed(uint64_t seed) {
  uint64_t x = seed;
  for (int i = 0; i < 4; i++) la_rng_s[i] = la_splitmix64(&x);
  la_rng_have_spare = false;
}

la_rng_state la_get_rng_state(void) {
  la_rng_state st;
  memcpy(st.s, la_rng_s, sizeof st.s);
  st.have_spare = la_rng_have_spare;
  st.spare = la_rng_spare;
  return st;
}

void la_set_rng_state(const la_rng_state *st) {
  memcpy(la_rng_s, st->s, sizeof la_rng_s);
  la_rng_have_spare = st->have_spare;
  la_rng_spare = st->spare;
}

static inline uint64_t la_rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t la_rng_next(void) {
  if (!(la_rng_s[0] | la_rng_s[1] | la_rng_s[2] | la_rng_s[3])) la_manual_seed(0);
  uint64_t *s = la_rng_s;
  uint64_t result = la_rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = la_rotl(s[3], 45);
  return result;
}

double la_rng_uniform(void) { return (double)(la_rng_next() >> 11) * 0x1.0p-53; }

/* Box-Muller, keeping the second value of each pair. */
double la_rng_normal(void) {
  if (la_rng_have_spare) { la_rng_have_spare = false; return la_rng_spare; }
  double u1, u2;
  do u1 = la_rng_uniform(); while (u1 <= 0);
  u2 = la_rng_uniform();
  double r = sqrt(-2.0 * log(u1)), th = 6.283185307179586 * u2;
  la_rng_spare = r * sin(th);
  la_rng_have_spare = true;
  return r * cos(th);
}

la_tensor *la_rand(int ndim, const int64_t *shape) {
  la_tensor *t = la_empty(LA_FLOAT32, ndim, shape);
  if (!t) return NULL;
  float *p = la_fdata(t);
  /* 24 random bits give every float in [0, 1) on the 2^-24 grid, never 1. */
  for (int64_t i = 0, n = la_numel(t); i < n; i++) p[i] = (float)(la_rng_next() >> 40) * 0x1.0p-24f;
  return t;
}

la_tensor *la_randn(int ndim, const int64_t *shape) {
  la_tensor *t = la_empty(LA_FLOAT32, ndim, shape);
  if (!t) return NULL;
  float *p = la_fdata(t);
  for (int64_t i = 0, n = la_numel(t); i < n; i++) p[i] = (float)la_rng_normal();
  return t;
}

la_tensor *la_randint(la_dtype dt, int64_t low, int64_t high, int ndim, const int64_t *shape) {
  if (high <= low)
    return la_fail("randint: high (%lld) must be greater than low (%lld)", (long long)high,
                   (long long)low);
  if (dt != LA_INT32 && dt != LA_INT64)
    return la_fail("randint: dtype must be int32 or int64 (got %s)", la_dtype_name(dt));
  la_tensor *t = la_empty(dt, ndim, shape);
  if (!t) return NULL;
  uint64_t range = (uint64_t)(high - low);
  /* Rejection sampling keeps every value equally likely. */
  uint64_t limit = UINT64_MAX - UINT64_MAX % range;
  for (int64_t i = 0, n = la_numel(t); i < n; i++) {
    uint64_t r;
    do r = la_rng_next(); while (r >= limit);
    int64_t v = low + (int64_t)(r % range);
    if (dt == LA_INT32) ((int32_t *)la_data(t))[i] = (int32_t)v;
    else ((int64_t *)la_data(t))[i] = v;
  }
  return t;
}
