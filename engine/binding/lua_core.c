/*
** lua_core.c -- the module lualign.core: constructors, the functions that
** are not methods (cat, stack, where), and the global switches (seed,
** threads, grad mode, memory).
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lua_la.h"

uint64_t lt_gc_count(void);
size_t lt_gc_limit(void);
int lt_where3(lua_State *L, int c, int a, int b);

/* ---------------------------------------------------------------- tensor{} */

typedef struct {
  int ndim;
  int64_t shape[LA_MAX_DIM];
  bool any_float, any_bool, any_number;
} lt_nested;

/* Walks the first elements down to find the shape. */
static void lt_nested_shape(lua_State *L, int arg, lt_nested *n) {
  lua_pushvalue(L, arg);
  n->ndim = 0;
  while (lua_istable(L, -1) && !lt_test(L, -1)) {
    if (n->ndim == LA_MAX_DIM) luaL_error(L, "tensor: nested deeper than %d levels", LA_MAX_DIM);
    lua_Integer len = luaL_len(L, -1);
    n->shape[n->ndim++] = len;
    if (len == 0) break;
    lua_geti(L, -1, 1);
    lua_remove(L, -2);
  }
  lua_pop(L, 1);
}

/* Checks that every sub-table has the shape found, and what the leaves are. */
static void lt_nested_scan(lua_State *L, int idx, lt_nested *n, int d) {
  if (d == n->ndim) {
    int ty = lua_type(L, idx);
    if (ty == LUA_TNUMBER) {
      n->any_number = true;
      if (!lua_isinteger(L, idx)) n->any_float = true;
    } else if (ty == LUA_TBOOLEAN) {
      n->any_bool = true;
    } else {
      luaL_error(L, "tensor: elements must be numbers or booleans (found a %s at depth %d)",
                 luaL_typename(L, idx), d);
    }
    return;
  }
  if (!lua_istable(L, idx) || lt_test(L, idx))
    luaL_error(L, "tensor: ragged nested table (a %s where a list of %d was expected at depth %d)",
               luaL_typename(L, idx), (int)n->shape[d], d + 1);
  lua_Integer len = luaL_len(L, idx);
  if (len != n->shape[d])
    luaL_error(L, "tensor: ragged nested table (a list of %d where %d were expected at depth %d)",
               (int)len, (int)n->shape[d], d + 1);
  luaL_checkstack(L, 4, "tensor");
  for (lua_Integer i = 1; i <= len; i++) {
    lua_geti(L, idx, i);
    lt_nested_scan(L, lua_gettop(L), n, d + 1);
    lua_pop(L, 1);
  }
}

static void lt_nested_fill(lua_State *L, int idx, la_tensor *t, int d, int64_t *pos) {
  if (d == t->ndim) {
    if (t->dtype == LA_INT64 && lua_isinteger(L, idx)) {   /* exact beyond 2^53 */
      int64_t off = 0;
      for (int i = 0; i < t->ndim; i++) off += pos[i] * t->stride[i];
      ((int64_t *)la_data(t))[off] = lua_tointeger(L, idx);
    } else {
      double v = lua_isboolean(L, idx) ? lua_toboolean(L, idx) : lua_tonumber(L, idx);
      la_set(t, pos, v);
    }
    return;
  }
  for (int64_t i = 0; i < t->shape[d]; i++) {
    pos[d] = i;
    lua_geti(L, idx, i + 1);
    lt_nested_fill(L, lua_gettop(L), t, d + 1, pos);
    lua_pop(L, 1);
  }
}

/* la.tensor(value [, dtype]): value a number, a boolean, a nested list of
** them, or a tensor (copied).  Lua integers give int64, any float gives
** float32, booleans give bool, unless dtype says otherwise. */
static int l_tensor(lua_State *L) {
  la_tensor *src = lt_test(L, 1);
  if (src) {
    la_dtype dt = lt_optdtype(L, 2, src->dtype);
    la_tensor *c = la_clone(src);
    if (c && dt != c->dtype) {
      la_tensor *d = la_to_dtype(c, dt);
      la_release(c);
      c = d;
    }
    if (c && la_tracks_grad(c)) {   /* a new leaf, as torch.tensor(t) */
      la_tensor *d = la_detach(c);
      la_release(c);
      c = d;
    }
    return lt_result(L, c);
  }
  luaL_argexpected(L, lua_istable(L, 1) || lua_isnumber(L, 1) || lua_isboolean(L, 1), 1,
                   "nested table, number or boolean");
  lt_nested n = {0};
  lt_nested_shape(L, 1, &n);
  lt_nested_scan(L, 1, &n, 0);
  if (n.any_bool && n.any_number)
    return luaL_error(L, "tensor: cannot mix booleans and numbers");
  la_dtype def = n.any_bool ? LA_BOOL : (n.any_float || !n.any_number) ? LA_FLOAT32 : LA_INT64;
  la_dtype dt = lt_optdtype(L, 2, def);
  la_tensor *t = la_empty(dt, n.ndim, n.shape);
  if (!t) return lt_error(L);
  int64_t pos[LA_MAX_DIM] = {0};
  lt_result(L, t);
  lt_nested_fill(L, 1, t, 0, pos);
  return 1;
}

/* ---------------------------------------------------------------- constructors */

static int l_fill_ctor(lua_State *L, double value) {
  int nd;
  int64_t shape[LA_MAX_DIM];
  int next = lt_checkshape(L, 1, "zeros", &nd, shape);
  la_dtype dt = lt_optdtype(L, next, LA_FLOAT32);
  if (la_check_shape("zeros", nd, shape) < 0) return lt_error(L);
  return lt_result(L, la_full(dt, nd, shape, value));
}

static int l_zeros(lua_State *L) { return l_fill_ctor(L, 0); }
static int l_ones(lua_State *L) { return l_fill_ctor(L, 1); }

static int l_empty(lua_State *L) {
  int nd;
  int64_t shape[LA_MAX_DIM];
  int next = lt_checkshape(L, 1, "empty", &nd, shape);
  la_dtype dt = lt_optdtype(L, next, LA_FLOAT32);
  return lt_result(L, la_empty(dt, nd, shape));
}

/* la.full({shape}, value [, dtype]) */
static int l_full(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  int nd;
  int64_t shape[LA_MAX_DIM];
  lt_checkshape(L, 1, "full", &nd, shape);
  double v = lua_isboolean(L, 2) ? lua_toboolean(L, 2) : luaL_checknumber(L, 2);
  la_dtype def = lua_isboolean(L, 2) ? LA_BOOL : LA_FLOAT32;
  return lt_result(L, la_full(lt_optdtype(L, 3, def), nd, shape, v));
}

/* la.arange(stop) / la.arange(start, stop [, step]) [, dtype]: int64 when
** every bound is an integer, as in PyTorch. */
static int l_arange(lua_State *L) {
  int nnum = 0;
  while (nnum < 3 && lua_type(L, nnum + 1) == LUA_TNUMBER) nnum++;
  if (nnum == 0) return luaL_argerror(L, 1, "number expected");
  double start = 0, stop, step = 1;
  bool all_int = true;
  for (int i = 1; i <= nnum; i++) all_int = all_int && lua_isinteger(L, i);
  if (nnum == 1) stop = lua_tonumber(L, 1);
  else { start = lua_tonumber(L, 1); stop = lua_tonumber(L, 2); }
  if (nnum == 3) step = lua_tonumber(L, 3);
  la_dtype dt = lt_optdtype(L, nnum + 1, all_int ? LA_INT64 : LA_FLOAT32);
  return lt_result(L, la_arange(dt, start, stop, step));
}

static int l_random(lua_State *L) {
  bool normal = lua_toboolean(L, lua_upvalueindex(1));
  int nd;
  int64_t shape[LA_MAX_DIM];
  const char *op = normal ? "randn" : "rand";
  int next = lt_checkshape(L, 1, op, &nd, shape);
  if (!lua_isnoneornil(L, next) && lt_optdtype(L, next, LA_FLOAT32) != LA_FLOAT32)
    return luaL_error(L, "%s: only float32 is supported", op);
  if (la_check_shape(op, nd, shape) < 0) return lt_error(L);
  return lt_result(L, normal ? la_randn(nd, shape) : la_rand(nd, shape));
}

/* la.randint(low, high, shape... [, dtype]): uniform in [low, high). */
static int l_randint(lua_State *L) {
  lua_Integer lo = luaL_checkinteger(L, 1), hi = luaL_checkinteger(L, 2);
  int nd;
  int64_t shape[LA_MAX_DIM];
  int next = lt_checkshape(L, 3, "randint", &nd, shape);
  la_dtype dt = lt_optdtype(L, next, LA_INT64);
  if (dt == LA_INT32 && (lo < INT32_MIN || hi - 1 > INT32_MAX))
    return luaL_error(L, "randint: bounds do not fit int32");
  if (la_check_shape("randint", nd, shape) < 0) return lt_error(L);
  return lt_result(L, la_randint(dt, lo, hi, nd, shape));
}

/* ---------------------------------------------------------------- lists */

/* Reads a list of tensors; the references stay owned by the Lua values. */
static la_tensor **lt_checklist(lua_State *L, int arg, const char *op, int *n) {
  luaL_checktype(L, arg, LUA_TTABLE);
  lua_Integer len = luaL_len(L, arg);
  if (len < 1) luaL_error(L, "%s: expected a non-empty list of tensors", op);
  la_tensor **ts = lua_newuserdatauv(L, (size_t)len * sizeof *ts, 0);   /* freed by the GC */
  for (lua_Integer i = 1; i <= len; i++) {
    lua_geti(L, arg, i);
    ts[i - 1] = lt_test(L, -1);
    if (!ts[i - 1]) luaL_error(L, "%s: element %d of the list is a %s, not a tensor", op, (int)i,
                               luaL_typename(L, -1));
    lua_pop(L, 1);
  }
  *n = (int)len;
  return ts;
}

static int l_cat(lua_State *L) {
  int n;
  lua_settop(L, 2);   /* the list's scratch array goes above the arguments */
  la_tensor **ts = lt_checklist(L, 1, "cat", &n);
  int dim = lt_optdim(L, 2, ts[0]->ndim, "cat", 0);
  return lt_result(L, la_cat(ts, n, dim));
}

static int l_stack(lua_State *L) {
  int n;
  lua_settop(L, 2);
  la_tensor **ts = lt_checklist(L, 1, "stack", &n);
  int dim = lua_isnoneornil(L, 2) ? 0 : lt_checkdim(L, 2, ts[0]->ndim, "stack", 1);
  return lt_result(L, la_stack(ts, n, dim));
}

static int l_where(lua_State *L) { return lt_where3(L, 1, 2, 3); }

static int l_is_tensor(lua_State *L) {
  lua_pushboolean(L, lt_test(L, 1) != NULL);
  return 1;
}

/* ---------------------------------------------------------------- switches */

static int l_manual_seed(lua_State *L) {
  la_manual_seed((uint64_t)luaL_checkinteger(L, 1));
  return 0;
}

/* get_rng_state() -> a list of strings (hex words) and the spare normal,
** safe to store as text in checkpoint metadata. */
static int l_get_rng_state(lua_State *L) {
  la_rng_state st = la_get_rng_state();
  lua_createtable(L, 0, 2);
  lua_createtable(L, 4, 0);
  for (int i = 0; i < 4; i++) {
    char buf[20];
    snprintf(buf, sizeof buf, "%016llx", (unsigned long long)st.s[i]);
    lua_pushstring(L, buf);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "state");
  if (st.have_spare) {
    lua_pushnumber(L, st.spare);
    lua_setfield(L, -2, "spare");
  }
  return 1;
}

static int l_set_rng_state(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  la_rng_state st = {{0}, false, 0};
  lua_getfield(L, 1, "state");
  if (!lua_istable(L, -1)) return luaL_argerror(L, 1, "expected {state = {4 hex strings}, spare = number?}");
  for (int i = 0; i < 4; i++) {
    lua_geti(L, -1, i + 1);
    const char *h = lua_tostring(L, -1);
    char *end = NULL;
    unsigned long long v = h ? strtoull(h, &end, 16) : 0;
    if (!h || *end || end == h) return luaL_argerror(L, 1, "rng state words must be hex strings");
    st.s[i] = v;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  lua_getfield(L, 1, "spare");
  if (!lua_isnil(L, -1)) { st.have_spare = true; st.spare = luaL_checknumber(L, -1); }
  lua_pop(L, 1);
  la_set_rng_state(&st);
  return 0;
}

static int l_set_num_threads(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  if (n < 1 || n > 1024) return luaL_argerror(L, 1, "thread count must be in 1..1024");
  la_set_num_threads((int)n);
  return 0;
}

static int l_get_num_threads(lua_State *L) {
  lua_pushinteger(L, la_get_num_threads());
  return 1;
}

static int l_set_grad_enabled(lua_State *L) {
  luaL_checktype(L, 1, LUA_TBOOLEAN);
  lua_pushboolean(L, la_set_grad_enabled(lua_toboolean(L, 1)));
  return 1;
}

static int l_is_grad_enabled(lua_State *L) {
  lua_pushboolean(L, la_is_grad_enabled());
  return 1;
}

static int l_set_anomaly_enabled(lua_State *L) {
  luaL_checktype(L, 1, LUA_TBOOLEAN);
  lua_pushboolean(L, la_set_anomaly_enabled(lua_toboolean(L, 1)));
  return 1;
}

static int l_is_anomaly_enabled(lua_State *L) {
  lua_pushboolean(L, la_is_anomaly_enabled());
  return 1;
}

static int l_memory(lua_State *L) {
  la_memstats m = la_memory_stats();
  lua_createtable(L, 0, 7);
  lua_pushinteger(L, (lua_Integer)m.live_bytes);
  lua_setfield(L, -2, "live_bytes");
  lua_pushinteger(L, (lua_Integer)m.peak_bytes);
  lua_setfield(L, -2, "peak_bytes");
  lua_pushinteger(L, (lua_Integer)m.limit_bytes);
  lua_setfield(L, -2, "limit_bytes");
  lua_pushinteger(L, (lua_Integer)m.allocations);
  lua_setfield(L, -2, "allocations");
  lua_pushinteger(L, (lua_Integer)m.oom_retries);
  lua_setfield(L, -2, "oom_retries");
  lua_pushinteger(L, (lua_Integer)m.cached_bytes);
  lua_setfield(L, -2, "cached_bytes");
  lua_pushinteger(L, (lua_Integer)lt_gc_limit());
  lua_setfield(L, -2, "gc_threshold");
  lua_pushinteger(L, (lua_Integer)lt_gc_count());
  lua_setfield(L, -2, "collections");
  return 1;
}

static int l_set_memory_limit(lua_State *L) {
  lua_Integer n = luaL_optinteger(L, 1, 0);
  if (n < 0) return luaL_argerror(L, 1, "limit must be >= 0 bytes (0 or nil: none)");
  la_set_memory_limit((size_t)n);
  return 0;
}

static int l_empty_cache(lua_State *L) {
  (void)L;
  la_empty_cache();
  return 0;
}

static int l_reset_peak_memory(lua_State *L) {
  (void)L;
  la_reset_peak();
  return 0;
}

/* Monotonic wall-clock seconds, for timing and progress reports. */
static int l_clock(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec * 1e-9);
  return 1;
}

/* Out of memory: collect everything unreachable, so its tensors are freed,
** before the engine tries once more. */
static void lt_on_oom(void *ctx) {
  lua_State *L = ctx;
  lua_gc(L, LUA_GCCOLLECT);
}

static const luaL_Reg l_funcs[] = {
  {"tensor", l_tensor}, {"zeros", l_zeros}, {"ones", l_ones}, {"empty", l_empty},
  {"full", l_full}, {"arange", l_arange}, {"randint", l_randint},
  {"cat", l_cat}, {"stack", l_stack}, {"where", l_where}, {"is_tensor", l_is_tensor},
  {"manual_seed", l_manual_seed}, {"get_rng_state", l_get_rng_state},
  {"set_rng_state", l_set_rng_state}, {"set_num_threads", l_set_num_threads},
  {"get_num_threads", l_get_num_threads}, {"set_grad_enabled", l_set_grad_enabled},
  {"is_grad_enabled", l_is_grad_enabled}, {"set_anomaly_enabled", l_set_anomaly_enabled},
  {"is_anomaly_enabled", l_is_anomaly_enabled}, {"memory", l_memory},
  {"set_memory_limit", l_set_memory_limit}, {"reset_peak_memory", l_reset_peak_memory},
  {"clock", l_clock}, {"empty_cache", l_empty_cache},
  {NULL, NULL}
};

int luaopen_lualign_core(lua_State *L);

int luaopen_lualign_core(lua_State *L) {
  luaL_checkversion(L);
  lua_newtable(L);
  luaL_setfuncs(L, l_funcs, 0);
  lt_open_checkpoint(L);
  lt_open_regex(L);
  lua_pushboolean(L, 0);
  lua_pushcclosure(L, l_random, 1);
  lua_setfield(L, -2, "rand");
  lua_pushboolean(L, 1);
  lua_pushcclosure(L, l_random, 1);
  lua_setfield(L, -2, "randn");
  lt_open_tensor(L);
  lua_setfield(L, -2, "Tensor");
  lt_open_nn(L);
  luaL_getmetatable(L, LT_NAME);
  lua_setfield(L, -2, "metatable");
  lt_open_tokenizer(L);
  lt_open_dist(L);
  /* The handler runs the collector of the main thread's state. */
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  la_set_oom_handler(lt_on_oom, lua_tothread(L, -1));
  lua_pop(L, 1);
  la_get_num_threads();   /* settles the thread count: OpenMP's, BLAS at one */
  return 1;
}
