/*
** lua_dist.c -- core.dist: the processes of a data-parallel job, for
** lualign/dist.lua (which documents them for users as la.dist):
**
**   init() -> rank, size          launched() -> processes the launcher started (0: none)
**   rank(), size(), barrier()     built_with_mpi()
**   broadcast(t, root) -> t       all_reduce(t, "sum"|"mean"|"max") -> t
**   all_gather(t) -> (size, ...) tensor
**   broadcast_string(s, root) -> s              (s is ignored off the root)
**   all_reduce_numbers({x, ...}, op) -> {x, ...}  (in double precision)
**   Reducer({params}, {bucket_bytes = n, op = "sum"|"mean"})
**     :backward(loss [, grad])  :sync()  :stats()  :close()
**   abort(code)    finalize()
**
** Every call joins the world first (la_dist_init).  Errors carry the
** operation and the rank from the engine.  abort() is the one way a Lua
** program ends every process of a job: the engine never decides that itself.
*/
#include <stdlib.h>
#include <string.h>

#include "la_dist.h"
#include "lua_la.h"

#define LD_REDUCER "lualign.Reducer"

static void ld_join(lua_State *L) {
  if (la_dist_init() < 0) lt_error(L);
}

static la_dist_op ld_checkop(lua_State *L, int arg, const char *def) {
  const char *name = luaL_optstring(L, arg, def);
  la_dist_op op;
  if (la_dist_op_from_name(name, &op) < 0)
    luaL_error(L, "unknown reduction '%s' (expected 'sum', 'mean' or 'max')", name);
  return op;
}

static int ld_checkroot(lua_State *L, int arg) {
  lua_Integer root = luaL_optinteger(L, arg, 0);
  if (root < 0 || root >= la_dist_size())
    luaL_error(L, "root %d is not a rank of this world of %d (ranks are 0 to %d)", (int)root,
               la_dist_size(), la_dist_size() - 1);
  return (int)root;
}

static int ld_init(lua_State *L) {
  ld_join(L);
  lua_pushinteger(L, la_dist_rank());
  lua_pushinteger(L, la_dist_size());
  return 2;
}

static int ld_launched(lua_State *L) {
  lua_pushinteger(L, la_dist_launched_size());
  return 1;
}

static int ld_built_with_mpi(lua_State *L) {
  lua_pushboolean(L, la_dist_built_with_mpi());
  return 1;
}

static int ld_rank(lua_State *L) {
  ld_join(L);
  lua_pushinteger(L, la_dist_rank());
  return 1;
}

static int ld_size(lua_State *L) {
  ld_join(L);
  lua_pushinteger(L, la_dist_size());
  return 1;
}

static int ld_barrier(lua_State *L) {
  ld_join(L);
  lt_check_rc(L, la_dist_barrier());
  return 0;
}

static int ld_broadcast(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  ld_join(L);
  lt_check_rc(L, la_dist_broadcast_tensor(t, ld_checkroot(L, 2)));
  lua_settop(L, 1);
  return 1;
}

static int ld_all_reduce(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  la_dist_op op = ld_checkop(L, 2, "sum");
  ld_join(L);
  lt_check_rc(L, la_dist_all_reduce_tensor(t, op));
  lua_settop(L, 1);
  return 1;
}

static int ld_all_gather(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  ld_join(L);
  return lt_result(L, la_dist_all_gather_tensor(t));
}

/* The root's string, on every rank: its length first, then its bytes. */
static int ld_broadcast_string(lua_State *L) {
  ld_join(L);
  int root = ld_checkroot(L, 2);
  size_t len = 0;
  const char *s = la_dist_rank() == root ? luaL_checklstring(L, 1, &len) : NULL;
  int64_t n = (int64_t)len;
  lt_check_rc(L, la_dist_bcast("broadcast_string", &n, 1, LA_DIST_I64, root));
  if (la_dist_rank() == root) {
    lt_check_rc(L, la_dist_bcast("broadcast_string", (void *)s, n, LA_DIST_BYTE, root));
    lua_pushvalue(L, 1);
    return 1;
  }
  luaL_Buffer b;
  char *p = luaL_buffinitsize(L, &b, (size_t)n);
  lt_check_rc(L, la_dist_bcast("broadcast_string", p, n, LA_DIST_BYTE, root));
  luaL_pushresultsize(&b, (size_t)n);
  return 1;
}

/* A list of numbers reduced across the ranks in double precision (metrics,
** counts); every rank must pass as many. */
static int ld_all_reduce_numbers(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  la_dist_op op = ld_checkop(L, 2, "sum");
  ld_join(L);
  lua_Integer n = luaL_len(L, 1);
  double *v = lua_newuserdatauv(L, (size_t)(n + 1) * sizeof *v, 0);
  for (lua_Integer i = 1; i <= n; i++) {
    if (lua_geti(L, 1, i) != LUA_TNUMBER)
      return luaL_error(L, "all_reduce_numbers: element %d is a %s, not a number", (int)i,
                        luaL_typename(L, -1));
    v[i - 1] = lua_tonumber(L, -1);
    lua_pop(L, 1);
  }
  /* The count goes too, so that ranks passing lists of different lengths all
  ** fail (its max against its min), not sum misaligned values. */
  double count[2] = {(double)n, -(double)n};
  lt_check_rc(L, la_dist_allreduce("all_reduce_numbers", count, 2, LA_DIST_F64, LA_DIST_MAX));
  if (count[0] != -count[1])
    return luaL_error(L, "all_reduce_numbers on rank %d of %d: the ranks passed lists of "
                      "different lengths (from %d to %d numbers)", la_dist_rank(), la_dist_size(),
                      (int)-count[1], (int)count[0]);
  lt_check_rc(L, la_dist_allreduce("all_reduce_numbers", v, n, LA_DIST_F64, op));
  lua_createtable(L, (int)n, 0);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_pushnumber(L, v[i - 1]);
    lua_rawseti(L, -2, i);
  }
  return 1;
}

static int ld_abort(lua_State *L) {
  la_dist_abort((int)luaL_optinteger(L, 1, 1));
  return 0;
}

static int ld_finalize(lua_State *L) {
  lt_check_rc(L, la_dist_finalize());
  return 0;
}

/* ---------------------------------------------------------------- Reducer */

typedef struct ld_box {
  la_reducer *r;
} ld_box;

static la_reducer *ld_checkreducer(lua_State *L, int i) {
  ld_box *b = luaL_checkudata(L, i, LD_REDUCER);
  if (!b->r) luaL_argerror(L, i, "the reducer was closed");
  return b->r;
}

static int ld_reducer_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  int n = (int)luaL_len(L, 1);
  lua_Integer bucket = 4 << 20;        /* as la.dist.data_parallel's default */
  la_dist_op op = LA_DIST_SUM;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    if (lua_getfield(L, 2, "bucket_bytes") != LUA_TNIL) bucket = luaL_checkinteger(L, -1);
    if (lua_getfield(L, 2, "op") != LUA_TNIL) op = ld_checkop(L, -1, "sum");
    lua_pop(L, 2);
  }
  ld_join(L);
  la_tensor **params = lua_newuserdatauv(L, (size_t)(n > 0 ? n : 1) * sizeof *params, 0);
  for (int i = 0; i < n; i++) {
    lua_geti(L, 1, i + 1);
    la_tensor *t = lt_test(L, -1);
    if (!t) return luaL_error(L, "Reducer: parameter %d is a %s, not a tensor", i + 1, luaL_typename(L, -1));
    params[i] = t;
    lua_pop(L, 1);
  }
  ld_box *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->r = NULL;
  luaL_setmetatable(L, LD_REDUCER);
  if (!(b->r = la_reducer_new(params, n, bucket, op))) return lt_error(L);
  return 1;
}

static int ld_reducer_backward(lua_State *L) {
  la_reducer *r = ld_checkreducer(L, 1);
  la_tensor *loss = lt_check(L, 2), *grad = lua_isnoneornil(L, 3) ? NULL : lt_check(L, 3);
  lua_State *outer = lt_set_backward_state(L);   /* checkpointed blocks call back into Lua */
  int rc = la_reducer_backward(r, loss, grad);
  lt_set_backward_state(outer);
  lt_release_checkpoints(L);
  lt_check_rc(L, rc);
  lt_after_backward(L);
  return 0;
}

static int ld_reducer_sync(lua_State *L) {
  lt_check_rc(L, la_reducer_sync(ld_checkreducer(L, 1)));
  return 0;
}

static int ld_reducer_stats(lua_State *L) {
  la_reducer_stats s = la_reducer_get_stats(ld_checkreducer(L, 1));
  lua_createtable(L, 0, 10);
  lt_set_integer(L, "params", s.n_params);
  lt_set_integer(L, "buckets", s.n_buckets);
  lt_set_integer(L, "bucket_bytes", s.bucket_bytes);
  lt_set_integer(L, "bytes_per_step", s.bytes_per_step);
  lt_set_integer(L, "steps", s.steps);
  lt_set_integer(L, "launched_early", s.launched_early);
  lt_set_number(L, "pass_seconds", s.pass_s);
  lt_set_number(L, "hook_seconds", s.hook_s);
  lt_set_number(L, "wait_seconds", s.wait_s);
  return 1;
}

static int ld_reducer_close(lua_State *L) {
  ld_box *b = luaL_checkudata(L, 1, LD_REDUCER);
  la_reducer_free(b->r);
  b->r = NULL;
  return 0;
}

static int ld_reducer_tostring(lua_State *L) {
  ld_box *b = luaL_checkudata(L, 1, LD_REDUCER);
  if (!b->r) {
    lua_pushstring(L, "Reducer(closed)");
    return 1;
  }
  la_reducer_stats s = la_reducer_get_stats(b->r);
  lua_pushfstring(L, "Reducer(%d parameters in %d buckets, rank %d of %d)", s.n_params, s.n_buckets,
                  la_dist_rank(), la_dist_size());
  return 1;
}

static const luaL_Reg ld_reducer_methods[] = {
  {"backward", ld_reducer_backward}, {"sync", ld_reducer_sync}, {"stats", ld_reducer_stats},
  {"close", ld_reducer_close}, {NULL, NULL}
};

static const luaL_Reg ld_funcs[] = {
  {"init", ld_init}, {"launched", ld_launched}, {"built_with_mpi", ld_built_with_mpi},
  {"rank", ld_rank}, {"size", ld_size}, {"barrier", ld_barrier}, {"broadcast", ld_broadcast},
  {"all_reduce", ld_all_reduce}, {"all_gather", ld_all_gather},
  {"broadcast_string", ld_broadcast_string}, {"all_reduce_numbers", ld_all_reduce_numbers},
  {"abort", ld_abort}, {"finalize", ld_finalize}, {"Reducer", ld_reducer_new},
  {NULL, NULL}
};

static const luaL_Reg ld_reducer_meta[] = {
  {"__gc", ld_reducer_close}, {"__close", ld_reducer_close}, {"__tostring", ld_reducer_tostring},
  {NULL, NULL}
};

void lt_open_dist(lua_State *L) {
  if (luaL_newmetatable(L, LD_REDUCER)) {
    luaL_setfuncs(L, ld_reducer_meta, 0);
    luaL_newlib(L, ld_reducer_methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  lua_newtable(L);
  luaL_setfuncs(L, ld_funcs, 0);
  lua_setfield(L, -2, "dist");
}
