/*
** lua_tensor.c -- the tensor userdata: handles, argument helpers, GC pacing,
** and every tensor method.
**
** The methods table is open to Lua: lualign/init.lua adds the methods
** written in Lua and the __tostring printer to the same tables.
*/
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lua_la.h"

static char lt_key_mt, lt_key_handles;

/* ---------------------------------------------------------------- errors */

int lt_error(lua_State *L) { return luaL_error(L, "%s", la_error()); }

int lt_check_rc(lua_State *L, int rc) {
  if (rc < 0) lt_error(L);
  return rc;
}

void lt_set_number(lua_State *L, const char *k, double v) {
  lua_pushnumber(L, v);
  lua_setfield(L, -2, k);
}

void lt_set_integer(lua_State *L, const char *k, int64_t v) {
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, k);
}

/* ---------------------------------------------------------------- GC pacing */
/* The collector only sees the small userdata, not the tensor bytes behind
** them, so left alone it lets dead tensors pile up (Torch7's classic leak).
** We watch the bytes of live tensors instead: once they pass a soft limit, a
** full collection runs, and the limit is set again from what survived. */

#define LT_GC_FLOOR ((size_t)64 << 20)
/* The slack stops growing here: a run whose live bytes are mostly state that
** lives for the whole run (a full fine-tune's weights, gradients and optimizer
** moments: 8 GiB for 0.5B parameters) would otherwise let a quarter of that
** pile up as dead activations before a collection. */
#define LT_GC_SLACK_CAP ((size_t)512 << 20)

static size_t lt_gc_threshold = LT_GC_FLOOR;
static size_t lt_gc_step_base;   /* live bytes after the last collection between steps */
static uint64_t lt_gc_collections;

static size_t lt_gc_limit_for(size_t live) {
  size_t slack = live / 4;
  if (slack > LT_GC_SLACK_CAP) slack = LT_GC_SLACK_CAP;
  return live + (slack > LT_GC_FLOOR ? slack : LT_GC_FLOOR);
}

static void lt_gc_reset_threshold(void) {
  size_t live = la_memory_stats().live_bytes;
  if (live < lt_gc_step_base) lt_gc_step_base = live;
  lt_gc_threshold = lt_gc_limit_for(live);
}

/* Whether it collected: it respects collectgarbage("stop"). */
static bool lt_collect(lua_State *L) {
  bool running = lua_gc(L, LUA_GCISRUNNING);
  if (running) {
    lua_gc(L, LUA_GCCOLLECT);
    lt_gc_collections++;
  }
  lt_gc_reset_threshold();
  return running;
}

void lt_pace_gc(lua_State *L) {
  size_t live = la_memory_stats().live_bytes;
  if (live > lt_gc_threshold) {
    lt_collect(L);
  } else if (lt_gc_limit_for(live) < lt_gc_threshold) {
    /* Live bytes fell (a collection of the user's or of Lua's own, tensors
    ** closed, a model's float32 weights dropped for 16-bit ones): the limit
    ** follows them down, so that garbage stays bounded by a quarter of what
    ** is alive now rather than of what was alive once. */
    lt_gc_threshold = lt_gc_limit_for(live);
  }
}

/* A backward pass frees its graph, and with it the last references to the
** forward pass's activations but those of their Lua handles, which hold them
** until a collection.  Left to the threshold above, a training step's
** activations stay on top of the next step's: a whole step's worth of dead
** tensors (1.3 GB at GPT-2's size).  So a backward pass ends with a
** collection when the live bytes exceed, by more than the floor, what
** survived the last one that ran between steps (or any later one that found
** less); a collection in the middle of a step is no baseline, as it finds the
** step's activations alive.  Steps smaller than the floor cost the collector
** more than they hold, and are left to the threshold. */
void lt_after_backward(lua_State *L) {
  if (la_memory_stats().live_bytes <= lt_gc_step_base + LT_GC_FLOOR) return;
  if (lt_collect(L)) lt_gc_step_base = la_memory_stats().live_bytes;
}

/* A checkpointed block, run without recording in the forward pass and
** recomputed in the backward pass (lua_recompute.c), leaves its activations
** to the Lua handles of its intermediates, dead once it has returned (or its
** gradient is through), and the next block would stack its own on top.  So
** when they amount to a share of what was alive before (an eighth, or 64 MiB
** when that is less), a collection frees them before the next block; smaller
** ones are left to the threshold. */
void lt_collect_after_recompute(lua_State *L, size_t live_before) {
  size_t live = la_memory_stats().live_bytes, share = live_before / 8;
  if (share > LT_GC_FLOOR) share = LT_GC_FLOOR;
  if (live > live_before && live - live_before > share && live - live_before > ((size_t)1 << 20))
    lt_collect(L);
}

/* The bytes above count only tensor data, so a loop of ops on tiny tensors
** (a few dozen bytes of data each) would pass the 64 MiB floor only after a
** million dead tensors.  Meanwhile Lua's own collector sees a 48-byte
** userdata per tensor and none of the ~300 bytes of engine headers behind it;
** and since a userdata with __gc survives one extra cycle, with the default
** pause (200%) each cycle leaves more garbage than the last: 2 million tiny
** adds grew the process to 520 MB and spent most of their time in page
** faults.  So every new handle also tells the collector about its headers
** (as allocation debt, in 16 KiB steps), which keeps the garbage of tiny
** tensors bounded by what Lua's incremental collector sweeps as it goes. */
#define LT_HANDLE_BYTES (sizeof(la_tensor) + sizeof(la_storage) + 64)
#define LT_DEBT_STEP_KB 16

static size_t lt_unseen_bytes;

static void lt_add_debt(lua_State *L) {
  lt_unseen_bytes += LT_HANDLE_BYTES;
  if (lt_unseen_bytes < (size_t)LT_DEBT_STEP_KB << 10) return;
  lt_unseen_bytes = 0;
  if (lua_gc(L, LUA_GCISRUNNING)) lua_gc(L, LUA_GCSTEP, LT_DEBT_STEP_KB);
}

uint64_t lt_gc_count(void);
uint64_t lt_gc_count(void) { return lt_gc_collections; }
size_t lt_gc_limit(void);
size_t lt_gc_limit(void) { return lt_gc_threshold; }

/* ---------------------------------------------------------------- handles */

/* The metatable and the handle table live in the registry under
** light-userdata keys.  Every op needs them four or five times (checking its
** arguments, making the result's handle), and a light-userdata lookup hashes
** the pointer with a division.  So lt_open_tensor also keeps them in the
** registry's array part (luaL_ref) and remembers, for the state that opened
** the module last, the registry's address, the two refs and the metatable's
** address.  A call from another state that loaded lualign sees a different
** registry and takes the slower light-userdata path. */
static struct {
  const void *registry, *mt;
  int mt_ref, handles_ref;
} lt_fast;

static bool lt_fast_ok(lua_State *L) {
  return lua_topointer(L, LUA_REGISTRYINDEX) == lt_fast.registry;
}

static void lt_push_mt(lua_State *L) {
  if (lt_fast_ok(L)) lua_rawgeti(L, LUA_REGISTRYINDEX, lt_fast.mt_ref);
  else lua_rawgetp(L, LUA_REGISTRYINDEX, &lt_key_mt);
}

static void lt_push_handles(lua_State *L) {
  if (lt_fast_ok(L)) lua_rawgeti(L, LUA_REGISTRYINDEX, lt_fast.handles_ref);
  else lua_rawgetp(L, LUA_REGISTRYINDEX, &lt_key_handles);
}

/* The box at i if it is a tensor handle, else NULL.  The same test as
** luaL_testudata, which would look the metatable up by name (interning the
** name: a string-cache lookup and a strcmp) on every call. */
static lt_box *lt_tobox(lua_State *L, int i) {
  void *p = lua_touserdata(L, i);
  if (!p || !lua_getmetatable(L, i)) return NULL;
  bool ours;
  if (lt_fast_ok(L)) {
    ours = lua_topointer(L, -1) == lt_fast.mt;
  } else {
    lua_rawgetp(L, LUA_REGISTRYINDEX, &lt_key_mt);
    ours = lua_rawequal(L, -1, -2);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return ours ? p : NULL;
}

static lt_box *lt_checkbox(lua_State *L, int i) {
  lt_box *b = lt_tobox(L, i);
  if (!b) luaL_typeerror(L, i, LT_NAME);
  return b;
}

la_tensor *lt_test(lua_State *L, int i) {
  lt_box *b = lt_tobox(L, i);
  return b ? b->t : NULL;
}

la_tensor *lt_check(lua_State *L, int i) {
  lt_box *b = lt_checkbox(L, i);
  if (!b->t) luaL_argerror(L, i, "the tensor was closed");
  return b->t;
}

static void lt_new_handle(lua_State *L, la_tensor *t) {
  lt_release_checkpoints(L);   /* what freed checkpoint nodes left in the registry */
  lt_box *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->t = t;
  lt_push_mt(L);
  lua_setmetatable(L, -2);
  lt_add_debt(L);
}

/* The handle table maps an engine tensor to the handle that t.grad returns
** for it, so that reading a gradient twice gives the same handle, and
** "w.grad = g" makes w.grad return g.  Only handles that went through
** lt_push or a .grad assignment are entered: entering every op's result
** (a light-userdata key hashed into a weak table the collector then has
** to clear) cost 11-19% of an op on a (4, 4) tensor. */
static void lt_register(lua_State *L, int idx, la_tensor *t) {
  idx = lua_absindex(L, idx);
  lt_push_handles(L);
  lua_pushvalue(L, idx);
  lua_rawsetp(L, -2, t);
  lua_pop(L, 1);
}

int lt_result(lua_State *L, la_tensor *t) {
  if (!t) return lt_error(L);
  lt_new_handle(L, t);
  lt_pace_gc(L);
  return 1;
}

void lt_push(lua_State *L, la_tensor *t) {
  if (!t) { lua_pushnil(L); return; }
  lt_push_handles(L);
  if (lua_rawgetp(L, -1, t) != LUA_TNIL) {
    lua_remove(L, -2);
    return;
  }
  lua_pop(L, 2);
  lt_new_handle(L, la_retain(t));
  lt_register(L, -1, t);
}

static int lt_gc(lua_State *L) {
  lt_box *b = lt_checkbox(L, 1);
  la_release_p(&b->t);
  return 0;
}

/* local x <close> = ... : the tensor's memory goes now, not at the next
** collection (unless the graph or another tensor still shares it). */
static int lt_close(lua_State *L) {
  lt_box *b = lt_checkbox(L, 1);
  if (!b->t) return 0;
  lt_push_handles(L);
  if (lua_rawgetp(L, -1, b->t) == LUA_TUSERDATA && lua_touserdata(L, -1) == b) {
    lua_pushnil(L);
    lua_rawsetp(L, -3, b->t);
  }
  lua_pop(L, 2);
  la_release_p(&b->t);
  return 0;
}

/* ---------------------------------------------------------------- arguments */

/* A dimension given as a number: an integer, or a float with an integral
** value (one read from JSON, or computed with /), the same dimension.  A
** fractional number is an error, never rounded. */
static lua_Integer lt_dim_number(lua_State *L, int arg, const char *op) {
  if (lua_isinteger(L, arg)) return lua_tointeger(L, arg);
  if (lua_type(L, arg) != LUA_TNUMBER)
    return luaL_error(L, "%s: expected a dimension (an integer), got %s", op, luaL_typename(L, arg));
  lua_Number x = lua_tonumber(L, arg);
  if (!(x == floor(x)) || x < -1e9 || x > 1e9)
    return luaL_error(L, "%s: a dimension must be an integer (got %f)", op, x);
  return (lua_Integer)x;
}

int lt_checkdim(lua_State *L, int arg, int ndim, const char *op, int extra) {
  lua_Integer d = lt_dim_number(L, arg, op);
  int n = ndim + extra;
  if (d == 0 || d > n || d < -n) {
    if (n == 0) return luaL_error(L, "%s: a 0-d tensor has no dimension %d", op, (int)d);
    return luaL_error(L, "%s: dimension %d out of range for a %d-d tensor (use 1..%d or -%d..-1)",
                      op, (int)d, ndim, n, n);
  }
  return (int)(d > 0 ? d - 1 : n + d);
}

int lt_optdim(lua_State *L, int arg, int ndim, const char *op, int def) {
  return lua_isnoneornil(L, arg) ? def : lt_checkdim(L, arg, ndim, op, 0);
}

la_dtype lt_optdtype(lua_State *L, int arg, la_dtype def) {
  if (lua_isnoneornil(L, arg)) return def;
  const char *name = luaL_checkstring(L, arg);
  la_dtype dt;
  if (la_dtype_from_name(name, &dt) < 0)
    luaL_argerror(L, arg, lua_pushfstring(L, "unknown dtype '%s' (use float32, int32, int64, bool, bfloat16 or float16)", name));
  return dt;
}

static int64_t lt_checksize(lua_State *L, int arg, const char *op, lua_Integer v) {
  if (v < -1) luaL_error(L, "%s: invalid size %d (argument #%d)", op, (int)v, arg);
  return (int64_t)v;
}

int lt_checkshape(lua_State *L, int arg, const char *op, int *ndim, int64_t *shape) {
  int n = 0;
  if (lua_istable(L, arg) && !lt_test(L, arg)) {
    lua_Integer len = luaL_len(L, arg);
    if (len > LA_MAX_DIM) luaL_error(L, "%s: at most %d dimensions (got %d)", op, LA_MAX_DIM, (int)len);
    for (lua_Integer i = 1; i <= len; i++) {
      lua_geti(L, arg, i);
      int ok;
      lua_Integer v = lua_tointegerx(L, -1, &ok);
      if (!ok) luaL_error(L, "%s: shape entry %d is not an integer", op, (int)i);
      shape[n++] = lt_checksize(L, arg, op, v);
      lua_pop(L, 1);
    }
    *ndim = n;
    return arg + 1;
  }
  while (lua_type(L, arg) == LUA_TNUMBER) {
    int ok;
    lua_Integer v = lua_tointegerx(L, arg, &ok);
    if (!ok) luaL_error(L, "%s: size argument #%d is not an integer", op, arg);
    if (n >= LA_MAX_DIM) luaL_error(L, "%s: at most %d dimensions", op, LA_MAX_DIM);
    shape[n++] = lt_checksize(L, arg, op, v);
    arg++;
  }
  *ndim = n;
  return arg;
}

/* A 1-based (or negative) position along a dim of the given size. */
static int64_t lt_checkpos(lua_State *L, int arg, int64_t size, const char *op, int dim) {
  lua_Integer i = luaL_checkinteger(L, arg);
  int64_t p = i > 0 ? i - 1 : size + i;
  if (i == 0 || p < 0 || p >= size)
    luaL_error(L, "%s: position %d is out of range for dimension %d of size %d (positions are "
               "1-based; negative counts from the end)", op, (int)i, dim + 1, (int)size);
  return p;
}

static bool lt_optbool(lua_State *L, int arg, bool def) {
  return lua_isnoneornil(L, arg) ? def : lua_toboolean(L, arg);
}

/* ---------------------------------------------------------------- queries */

static int lt_shape(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  lua_createtable(L, t->ndim, 0);
  for (int i = 0; i < t->ndim; i++) {
    lua_pushinteger(L, t->shape[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static int lt_size(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  if (lua_isnoneornil(L, 2)) return lt_shape(L);
  lua_pushinteger(L, t->shape[lt_checkdim(L, 2, t->ndim, "size", 0)]);
  return 1;
}

static int lt_stride(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  if (!lua_isnoneornil(L, 2)) {
    lua_pushinteger(L, t->stride[lt_checkdim(L, 2, t->ndim, "stride", 0)]);
    return 1;
  }
  lua_createtable(L, t->ndim, 0);
  for (int i = 0; i < t->ndim; i++) {
    lua_pushinteger(L, t->stride[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static int lt_dim(lua_State *L) { lua_pushinteger(L, lt_check(L, 1)->ndim); return 1; }
static int lt_numel(lua_State *L) { lua_pushinteger(L, la_numel(lt_check(L, 1))); return 1; }
static int lt_dtype(lua_State *L) { lua_pushstring(L, la_dtype_name(lt_check(L, 1)->dtype)); return 1; }
static int lt_is_contiguous(lua_State *L) { lua_pushboolean(L, la_is_contiguous(lt_check(L, 1))); return 1; }
static int lt_is_leaf(lua_State *L) { lua_pushboolean(L, lt_check(L, 1)->grad_fn == NULL); return 1; }
static int lt_needs_grad(lua_State *L) { lua_pushboolean(L, la_tracks_grad(lt_check(L, 1))); return 1; }

/* Whether t.grad is set, without making a handle for it (a handle keeps the
** gradient alive until it is collected, after zero_grad has dropped it). */
static int lt_has_grad(lua_State *L) { lua_pushboolean(L, lt_check(L, 1)->grad != NULL); return 1; }

static int lt_grad_fn(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  if (t->grad_fn) lua_pushstring(L, t->grad_fn->op);
  else lua_pushnil(L);
  return 1;
}

/* t:all_finite() -> true when no element is NaN or +-inf (always true for
** integer and bool tensors). */
static int lt_all_finite(lua_State *L) {
  lua_pushboolean(L, la_all_finite(lt_check(L, 1)));
  return 1;
}

static int lt_storage_offset(lua_State *L) {
  lua_pushinteger(L, lt_check(L, 1)->offset);
  return 1;
}

/* Whether two tensors share memory (a view and its base, say). */
static int lt_shares_storage(lua_State *L) {
  lua_pushboolean(L, lt_check(L, 1)->storage == lt_check(L, 2)->storage);
  return 1;
}

static void lt_push_value(lua_State *L, la_dtype dt, double v) {
  if (la_dtype_is_float(dt)) lua_pushnumber(L, v);
  else if (dt == LA_BOOL) lua_pushboolean(L, v != 0);
  else lua_pushinteger(L, (lua_Integer)v);
}

/* The element at 0-based idx; int64 read exactly, not through a double. */
static void lt_push_element(lua_State *L, la_tensor *t, const int64_t *idx) {
  if (t->dtype == LA_INT64) {
    int64_t off = t->offset;
    for (int d = 0; d < t->ndim; d++) off += idx[d] * t->stride[d];
    lua_pushinteger(L, ((const int64_t *)t->storage->data)[off]);
  } else {
    lt_push_value(L, t->dtype, la_get(t, idx));
  }
}

static int lt_item(lua_State *L) {
  char b1[LA_SHAPE_BUF];
  la_tensor *t = lt_check(L, 1);
  if (la_numel(t) != 1)
    return luaL_error(L, "item: the tensor has %d elements (shape %s); item() needs exactly one",
                      (int)la_numel(t), la_shape_str(b1, sizeof b1, t->ndim, t->shape));
  int64_t zero[LA_MAX_DIM] = {0};
  lt_push_element(L, t, zero);
  return 1;
}

static void lt_totable_rec(lua_State *L, la_tensor *t, int d, int64_t *idx) {
  lua_createtable(L, (int)t->shape[d], 0);
  for (int64_t i = 0; i < t->shape[d]; i++) {
    idx[d] = i;
    if (d == t->ndim - 1) lt_push_element(L, t, idx);
    else lt_totable_rec(L, t, d + 1, idx);
    lua_rawseti(L, -2, i + 1);
  }
}

static int lt_totable(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  int64_t idx[LA_MAX_DIM] = {0};
  luaL_checkstack(L, t->ndim + 4, "totable");
  if (t->ndim == 0) lt_push_element(L, t, idx);
  else lt_totable_rec(L, t, 0, idx);
  return 1;
}

/* ---------------------------------------------------------------- autograd */

static int lt_requires_grad(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  bool on = lt_optbool(L, 2, true);
  if (on && t->dtype != LA_FLOAT32)
    return luaL_error(L, "requires_grad: only float32 tensors can require gradients (got %s)",
                      la_dtype_name(t->dtype));
  if (t->grad_fn)
    return luaL_error(L, "requires_grad: only leaf tensors can change this flag (this one comes "
                      "from '%s'); use :detach() to make a new leaf", t->grad_fn->op);
  t->requires_grad = on;
  lua_settop(L, 1);
  return 1;
}

static int lt_backward(lua_State *L) {
  la_tensor *t = lt_check(L, 1), *g = NULL;
  int opts = 0;
  if (lt_test(L, 2)) {
    g = lt_check(L, 2);
    if (lua_istable(L, 3)) opts = 3;
  } else if (lua_istable(L, 2)) {
    opts = 2;
  } else if (!lua_isnoneornil(L, 2)) {
    return luaL_argerror(L, 2, "expected a gradient tensor or an options table");
  }
  bool retain = false;
  if (opts) {
    lua_getfield(L, opts, "retain_graph");
    retain = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  lua_State *outer = lt_set_backward_state(L);
  int rc = la_backward(t, g, retain);
  lt_set_backward_state(outer);
  lt_release_checkpoints(L);
  lt_check_rc(L, rc);
  if (!retain) lt_after_backward(L);
  return 0;
}

static int lt_detach(lua_State *L) { return lt_result(L, la_detach(lt_check(L, 1))); }

static int lt_zero_grad(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  la_release_p(&t->grad);
  return 0;
}

/* ---------------------------------------------------------------- fields */

static int lt_set_grad(lua_State *L, la_tensor *t) {
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF];
  if (lua_isnil(L, 3)) {
    la_release_p(&t->grad);
    return 0;
  }
  la_tensor *g = lt_test(L, 3);
  if (!g) return luaL_error(L, "grad: assign a tensor or nil (got %s)", luaL_typename(L, 3));
  if (g->dtype != LA_FLOAT32 || !la_same_shape(g, t))
    return luaL_error(L, "grad: a gradient for a %s tensor of shape %s must be float32 of that "
                      "shape (got %s %s)", la_dtype_name(t->dtype),
                      la_shape_str(b1, sizeof b1, t->ndim, t->shape), la_dtype_name(g->dtype),
                      la_shape_str(b2, sizeof b2, g->ndim, g->shape));
  if (g == t) return luaL_error(L, "grad: a tensor cannot be its own gradient");
  la_retain(g);
  la_release(t->grad);
  t->grad = g;
  lt_register(L, 3, g);   /* so that t.grad returns this very handle */
  return 0;
}

/* A list of 1-based (or negative) positions, one per dim, at arg. */
static void lt_checkpositions(lua_State *L, int arg, la_tensor *t, int64_t *pos, const char *op) {
  luaL_checktype(L, arg, LUA_TTABLE);
  lua_Integer n = luaL_len(L, arg);
  if (n != t->ndim)
    luaL_error(L, "%s: a %d-d tensor needs %d positions (got %d)", op, t->ndim, t->ndim, (int)n);
  for (int d = 0; d < t->ndim; d++) {
    lua_geti(L, arg, d + 1);
    pos[d] = lt_checkpos(L, lua_gettop(L), t->shape[d], op, d);
    lua_pop(L, 1);
  }
}

static int lt_get_at(lua_State *L, la_tensor *t, int arg) {
  int64_t pos[LA_MAX_DIM];
  lt_checkpositions(L, arg, t, pos, "get");
  lt_push_element(L, t, pos);
  return 1;
}

static int lt_set_at(lua_State *L, la_tensor *t, int arg, int value) {
  int64_t pos[LA_MAX_DIM];
  lt_checkpositions(L, arg, t, pos, "set");
  double v = lua_isboolean(L, value) ? lua_toboolean(L, value) : luaL_checknumber(L, value);
  lt_check_rc(L, la_check_inplace("set", t));
  for (int d = 0; d < t->ndim; d++)
    if (t->stride[d] == 0 && t->shape[d] > 1)
      return luaL_error(L, "set: the tensor is an expanded view (its elements share memory)");
  la_set(t, pos, v);
  t->storage->version++;
  return 0;
}

/* t:get{i, j, ...} -> the element at those 1-based positions. */
static int lt_get(lua_State *L) { return lt_get_at(L, lt_check(L, 1), 2); }

/* t:set({i, j, ...}, v) -> t, writing one element. */
static int lt_set(lua_State *L) {
  lt_set_at(L, lt_check(L, 1), 2, 3);
  lua_settop(L, 1);
  return 1;
}

static int lt_index(lua_State *L) {
  if (lua_type(L, 2) == LUA_TSTRING) {
    const char *k = lua_tostring(L, 2);
    if (k[0] == 'g' && strcmp(k, "grad") == 0) {
      lt_push(L, lt_check(L, 1)->grad);
      return 1;
    }
    /* A method: every t:method() call comes here, and looking it up does
    ** not need the tensor itself, so it is not checked (the method is). */
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1));
    return 1;
  }
  la_tensor *t = lt_check(L, 1);
  if (lua_istable(L, 2)) return lt_get_at(L, t, 2);
  if (lua_isinteger(L, 2)) {
    if (t->ndim == 0) return luaL_error(L, "index: a 0-d tensor cannot be indexed; use :item()");
    int64_t p = lt_checkpos(L, 2, t->shape[0], "index", 0);
    if (t->ndim == 1) {
      lt_push_element(L, t, &p);
      return 1;
    }
    return lt_result(L, la_select(t, 0, p));
  }
  return luaL_error(L, "index: tensors are indexed by a 1-based integer, a list of positions or a "
                    "method name (got %s)",
                    luaL_typename(L, 2));
}

static int lt_newindex(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  if (lua_type(L, 2) == LUA_TSTRING) {
    if (strcmp(lua_tostring(L, 2), "grad") == 0) return lt_set_grad(L, t);
    return luaL_error(L, "tensors have no settable field '%s'", lua_tostring(L, 2));
  }
  if (lua_istable(L, 2)) return lt_set_at(L, t, 2, 3);
  if (!lua_isinteger(L, 2))
    return luaL_error(L, "index: tensors are indexed by a 1-based integer (got %s)",
                      luaL_typename(L, 2));
  if (t->ndim == 0) return luaL_error(L, "index: a 0-d tensor cannot be indexed; use :fill()");
  int64_t p = lt_checkpos(L, 2, t->shape[0], "index", 0);
  la_tensor *row = la_select(t, 0, p);
  if (!row) return lt_error(L);
  int rc;
  la_tensor *src = lt_test(L, 3);
  if (src) rc = la_copy_(row, src);
  else if (lua_isboolean(L, 3)) rc = la_fill_(row, lua_toboolean(L, 3));
  else if (lua_type(L, 3) == LUA_TNUMBER) rc = la_fill_(row, lua_tonumber(L, 3));
  else rc = la_failn("index: assign a number or a tensor (got %s)", luaL_typename(L, 3));
  la_release(row);
  lt_check_rc(L, rc);
  return 0;
}

static int lt_len(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  if (t->ndim == 0) return luaL_error(L, "#: a 0-d tensor has no length; use :numel()");
  lua_pushinteger(L, t->shape[0]);
  return 1;
}

static int lt_tostring_plain(lua_State *L) {
  char b1[LA_SHAPE_BUF];
  la_tensor *t = lt_test(L, 1);
  if (!t) { lua_pushliteral(L, "lualign.Tensor (closed)"); return 1; }
  lua_pushfstring(L, "lualign.Tensor of shape %s, %s", la_shape_str(b1, sizeof b1, t->ndim, t->shape),
                  la_dtype_name(t->dtype));
  return 1;
}

static int lt_compare_error(lua_State *L) {
  return luaL_error(L, "compare: Lua's < and <= must return booleans, so they cannot compare "
                    "tensors; use a:lt(b), a:le(b), a:gt(b) or a:ge(b)");
}

/* ---------------------------------------------------------------- views */

static int lt_view(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  int nd;
  int64_t shape[LA_MAX_DIM];
  lt_checkshape(L, 2, "view", &nd, shape);
  return lt_result(L, la_view(t, nd, shape));
}

static int lt_reshape(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  int nd;
  int64_t shape[LA_MAX_DIM];
  lt_checkshape(L, 2, "reshape", &nd, shape);
  return lt_result(L, la_reshape(t, nd, shape));
}

static int lt_transpose(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  if (lua_isnoneornil(L, 2) && t->ndim == 2) return lt_result(L, la_transpose(t, 0, 1));
  int d0 = lt_checkdim(L, 2, t->ndim, "transpose", 0), d1 = lt_checkdim(L, 3, t->ndim, "transpose", 0);
  return lt_result(L, la_transpose(t, d0, d1));
}

static int lt_t(lua_State *L) {
  char b1[LA_SHAPE_BUF];
  la_tensor *t = lt_check(L, 1);
  if (t->ndim != 2)
    return luaL_error(L, "t: needs a 2-d tensor (got shape %s); use transpose(d1, d2)",
                      la_shape_str(b1, sizeof b1, t->ndim, t->shape));
  return lt_result(L, la_transpose(t, 0, 1));
}

static int lt_permute(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  int perm[LA_MAX_DIM], n = 0;
  bool list = lua_istable(L, 2);
  int count = list ? (int)luaL_len(L, 2) : lua_gettop(L) - 1;
  if (count != t->ndim)
    return luaL_error(L, "permute: a %d-d tensor needs %d dims (got %d)", t->ndim, t->ndim, count);
  for (int i = 0; i < count; i++) {
    if (list) lua_geti(L, 2, i + 1);
    else lua_pushvalue(L, i + 2);
    perm[n++] = lt_checkdim(L, lua_gettop(L), t->ndim, "permute", 0);
    lua_pop(L, 1);
  }
  return lt_result(L, la_permute(t, perm));
}

static int lt_narrow(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  int dim = lt_checkdim(L, 2, t->ndim, "narrow", 0);
  lua_Integer start = luaL_checkinteger(L, 3), len = luaL_checkinteger(L, 4);
  int64_t s = start > 0 ? start - 1 : t->shape[dim] + start;
  if (start == 0)
    return luaL_error(L, "narrow: start 0 is invalid (positions are 1-based; negative counts from the end)");
  return lt_result(L, la_narrow(t, dim, s, len));
}

static int lt_select(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  int dim = lt_checkdim(L, 2, t->ndim, "select", 0);
  return lt_result(L, la_select(t, dim, lt_checkpos(L, 3, t->shape[dim], "select", dim)));
}

static int lt_expand(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  int nd;
  int64_t shape[LA_MAX_DIM];
  lt_checkshape(L, 2, "expand", &nd, shape);
  return lt_result(L, la_expand(t, nd, shape));
}

static int lt_expand_as(lua_State *L) {
  la_tensor *t = lt_check(L, 1), *o = lt_check(L, 2);
  return lt_result(L, la_expand(t, o->ndim, o->shape));
}

static int lt_squeeze(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  return lt_result(L, la_squeeze(t, lt_optdim(L, 2, t->ndim, "squeeze", -1)));
}

static int lt_unsqueeze(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  return lt_result(L, la_unsqueeze(t, lt_checkdim(L, 2, t->ndim, "unsqueeze", 1)));
}

static int lt_flatten(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  if (t->ndim == 0) return lt_result(L, la_flatten(t, 0, 0));
  int s = lt_optdim(L, 2, t->ndim, "flatten", 0), e = lt_optdim(L, 3, t->ndim, "flatten", t->ndim - 1);
  return lt_result(L, la_flatten(t, s, e));
}

static int lt_contiguous(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  if (la_is_contiguous(t)) { lua_settop(L, 1); return 1; }
  return lt_result(L, la_contiguous(t));
}

static int lt_clone(lua_State *L) { return lt_result(L, la_clone(lt_check(L, 1))); }

static int lt_to(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  la_dtype dt = lua_isinteger(L, lua_upvalueindex(1))
                    ? (la_dtype)lua_tointeger(L, lua_upvalueindex(1))
                    : lt_optdtype(L, 2, t->dtype);
  if (dt == t->dtype) { lua_settop(L, 1); return 1; }
  return lt_result(L, la_to_dtype(t, dt));
}

/* ---------------------------------------------------------------- in place */

static int lt_copy(lua_State *L) {
  lt_check_rc(L, la_copy_(lt_check(L, 1), lt_check(L, 2)));
  lua_settop(L, 1);
  return 1;
}

static int lt_fill(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  double v = lua_isboolean(L, 2) ? lua_toboolean(L, 2) : luaL_checknumber(L, 2);
  lt_check_rc(L, la_fill_(t, v));
  lua_settop(L, 1);
  return 1;
}

static int lt_zero(lua_State *L) {
  lt_check_rc(L, la_fill_(lt_check(L, 1), 0));
  lua_settop(L, 1);
  return 1;
}

/* t:add_(x [, alpha]), t:sub_(x), t:mul_(x), t:div_(x): x a tensor or number. */
static int lt_inplace(lua_State *L) {
  la_binary_op op = (la_binary_op)lua_tointeger(L, lua_upvalueindex(1));
  la_tensor *t = lt_check(L, 1), *x = lt_test(L, 2);
  int rc;
  if (x && op == LA_ADD && !lua_isnoneornil(L, 3)) rc = la_axpy_(t, luaL_checknumber(L, 3), x);
  else if (x) rc = la_binary_(op, t, x);
  else rc = la_binary_scalar_(op, t, luaL_checknumber(L, 2));
  lt_check_rc(L, rc);
  lua_settop(L, 1);
  return 1;
}

/* ---------------------------------------------------------------- math */

static int lt_unary(lua_State *L) {
  la_unary_op op = (la_unary_op)lua_tointeger(L, lua_upvalueindex(1));
  return lt_result(L, la_unary(op, lt_check(L, 1)));
}

static int lt_gelu(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  const char *approx = luaL_optstring(L, 2, "tanh");
  if (strcmp(approx, "tanh") == 0) return lt_result(L, la_unary(LA_GELU, t));
  if (strcmp(approx, "none") == 0) return lt_result(L, la_unary(LA_GELU_EXACT, t));
  return luaL_argerror(L, 2, "approximate must be 'tanh' or 'none'");
}

/* The type of a value for messages: "lualign.Tensor" rather than "userdata". */
static const char *lt_typename(lua_State *L, int i) {
  return lt_test(L, i) ? LT_NAME : luaL_typename(L, i);
}

/* a op b where either side may be a number (metamethods put it first). */
static int lt_binary_at(lua_State *L, la_binary_op op) {
  la_tensor *a = lt_test(L, 1), *b = lt_test(L, 2);
  if (a && b) return lt_result(L, la_binary(op, a, b));
  if (a && lua_type(L, 2) == LUA_TNUMBER)
    return lt_result(L, la_binary_scalar(op, a, lua_tonumber(L, 2), false));
  if (b && lua_type(L, 1) == LUA_TNUMBER)
    return lt_result(L, la_binary_scalar(op, b, lua_tonumber(L, 1), true));
  if (!a && !b && !lua_isnumber(L, 1)) lt_check(L, 1);
  return luaL_error(L, "%s: expected tensors or numbers (got %s and %s)", la_binary_name(op),
                    lt_typename(L, 1), lt_typename(L, 2));
}

static int lt_binary(lua_State *L) {
  return lt_binary_at(L, (la_binary_op)lua_tointeger(L, lua_upvalueindex(1)));
}

static int lt_clamp(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  double lo = luaL_optnumber(L, 2, -INFINITY), hi = luaL_optnumber(L, 3, INFINITY);
  return lt_result(L, la_clamp(t, lo, hi));
}

static int lt_matmul(lua_State *L) { return lt_result(L, la_matmul(lt_check(L, 1), lt_check(L, 2))); }

/* ---------------------------------------------------------------- reductions */

static int lt_sum(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  bool mean = lua_toboolean(L, lua_upvalueindex(1));
  const char *op = mean ? "mean" : "sum";
  int dim = lt_optdim(L, 2, t->ndim, op, -1);
  bool keep = lt_optbool(L, 3, false);
  return lt_result(L, mean ? la_mean(t, dim, keep) : la_sum(t, dim, keep));
}

/* t:max() -> scalar; t:max(dim [, keepdim]) -> values, indices (0-based);
** t:max(u) with a tensor u -> elementwise maximum (also t:maximum(u)).  A
** number is always a dimension, as in every reduction: the elementwise
** maximum with a number is t:maximum(x). */
static int lt_extreme(lua_State *L) {
  bool want_max = lua_toboolean(L, lua_upvalueindex(1));
  la_tensor *t = lt_check(L, 1);
  if (lt_test(L, 2)) return lt_binary_at(L, want_max ? LA_MAXIMUM : LA_MINIMUM);
  const char *op = want_max ? "max" : "min";
  if (lua_isnoneornil(L, 2))
    return lt_result(L, want_max ? la_max(t, -1, false, NULL) : la_min(t, -1, false, NULL));
  if (lua_type(L, 2) == LUA_TNUMBER && !lua_isinteger(L, 2) && lua_tonumber(L, 2) != floor(lua_tonumber(L, 2)))
    return luaL_error(L, "%s: a dimension must be an integer (got %f); the elementwise %s with a number is "
                      "t:%s(x)", op, lua_tonumber(L, 2), want_max ? "maximum" : "minimum",
                      want_max ? "maximum" : "minimum");
  int dim = lt_checkdim(L, 2, t->ndim, op, 0);
  bool keep = lt_optbool(L, 3, false);
  la_tensor *idx = NULL;
  la_tensor *v = want_max ? la_max(t, dim, keep, &idx) : la_min(t, dim, keep, &idx);
  lt_result(L, v);
  lt_result(L, idx);
  return 2;
}

static int lt_argextreme(lua_State *L) {
  bool want_max = lua_toboolean(L, lua_upvalueindex(1));
  la_tensor *t = lt_check(L, 1), *idx = NULL;
  const char *op = want_max ? "argmax" : "argmin";
  int dim = lt_optdim(L, 2, t->ndim, op, -1);
  bool keep = lt_optbool(L, 3, false);
  bool grad_mode = la_set_grad_enabled(false);
  la_tensor *v = want_max ? la_max(t, dim, keep, &idx) : la_min(t, dim, keep, &idx);
  la_set_grad_enabled(grad_mode);
  if (!v) return lt_error(L);
  la_release(v);
  return lt_result(L, idx);
}

static int lt_logsumexp(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  int dim = lt_optdim(L, 2, t->ndim, "logsumexp", -1);
  return lt_result(L, la_logsumexp(t, dim, lt_optbool(L, 3, false)));
}

static int lt_softmax(lua_State *L) {
  bool log = lua_toboolean(L, lua_upvalueindex(1));
  la_tensor *t = lt_check(L, 1);
  const char *op = log ? "log_softmax" : "softmax";
  if (t->ndim == 0) return luaL_error(L, "%s: needs at least one dimension", op);
  int dim = lt_optdim(L, 2, t->ndim, op, t->ndim - 1);
  return lt_result(L, log ? la_log_softmax(t, dim) : la_softmax(t, dim));
}

/* ---------------------------------------------------------------- indexing */

static int lt_index_select(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  int dim = lt_checkdim(L, 2, t->ndim, "index_select", 0);
  return lt_result(L, la_index_select(t, dim, lt_check(L, 3)));
}

static int lt_gather(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  int dim = lt_checkdim(L, 2, t->ndim, "gather", 0);
  return lt_result(L, la_gather(t, dim, lt_check(L, 3)));
}

static int lt_index_add(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  int dim = lt_checkdim(L, 2, t->ndim, "index_add_", 0);
  lt_check_rc(L, la_index_add_(t, dim, lt_check(L, 3), lt_check(L, 4)));
  lua_settop(L, 1);
  return 1;
}

static int lt_scatter_add(lua_State *L) {
  la_tensor *t = lt_check(L, 1);
  int dim = lt_checkdim(L, 2, t->ndim, "scatter_add_", 0);
  lt_check_rc(L, la_scatter_add_(t, dim, lt_check(L, 3), lt_check(L, 4)));
  lua_settop(L, 1);
  return 1;
}

/* Raises the error for an operand that is not a tensor, number or boolean.
** Called for every operand before any is made into a tensor: a Lua error
** after that would leave the tensors made so far unreleased. */
static void lt_check_operand(lua_State *L, int arg) {
  if (lt_test(L, arg) || lua_isboolean(L, arg) || lua_isnumber(L, arg)) return;
  luaL_typeerror(L, arg, "tensor, number or boolean");
}

/* Tensor or number at arg (checked by lt_check_operand), as a tensor (a
** 0-d one for numbers).  Raises no Lua error. */
static la_tensor *lt_operand(lua_State *L, int arg, la_dtype like) {
  la_tensor *t = lt_test(L, arg);
  if (t) return la_retain(t);
  if (lua_isboolean(L, arg)) return la_scalar(LA_BOOL, lua_toboolean(L, arg));
  double v = lua_tonumber(L, arg);
  la_dtype dt = (like != LA_FLOAT32 && lua_isinteger(L, arg)) ? like : LA_FLOAT32;
  return la_scalar(dt, v);
}

/* where(cond, a, b): a and b tensors or numbers. */
int lt_where3(lua_State *L, int c, int a, int b);
int lt_where3(lua_State *L, int c, int a, int b) {
  la_tensor *cond = lt_check(L, c), *ta = lt_test(L, a), *tb = lt_test(L, b);
  lt_check_operand(L, a);
  lt_check_operand(L, b);
  la_dtype like = ta ? ta->dtype : tb ? tb->dtype : LA_FLOAT32;
  la_tensor *x = lt_operand(L, a, like);
  la_tensor *y = x ? lt_operand(L, b, like) : NULL;
  la_tensor *r = y ? la_where(cond, x, y) : NULL;
  la_release(x);
  la_release(y);
  return lt_result(L, r);
}

/* t:masked_fill(mask, value): value where mask is true, t elsewhere. */
static int lt_masked_fill(lua_State *L) {
  lt_check(L, 1);
  return lt_where3(L, 2, 3, 1);
}

/* t:where(cond, other): t where cond, other elsewhere (PyTorch's order). */
static int lt_where_method(lua_State *L) {
  lt_check(L, 1);
  return lt_where3(L, 2, 1, 3);
}

/* ---------------------------------------------------------------- metatable */

static const luaL_Reg lt_methods[] = {
  {"shape", lt_shape}, {"size", lt_size}, {"stride", lt_stride}, {"dim", lt_dim},
  {"numel", lt_numel}, {"dtype", lt_dtype}, {"is_contiguous", lt_is_contiguous},
  {"is_leaf", lt_is_leaf}, {"needs_grad", lt_needs_grad}, {"has_grad", lt_has_grad}, {"grad_fn", lt_grad_fn},
  {"storage_offset", lt_storage_offset}, {"shares_storage", lt_shares_storage},
  {"all_finite", lt_all_finite},
  {"item", lt_item}, {"totable", lt_totable}, {"get", lt_get}, {"set", lt_set},
  {"requires_grad", lt_requires_grad}, {"backward", lt_backward}, {"detach", lt_detach},
  {"zero_grad", lt_zero_grad},
  {"view", lt_view}, {"reshape", lt_reshape}, {"transpose", lt_transpose}, {"t", lt_t},
  {"permute", lt_permute}, {"narrow", lt_narrow}, {"select", lt_select},
  {"expand", lt_expand}, {"expand_as", lt_expand_as}, {"squeeze", lt_squeeze},
  {"unsqueeze", lt_unsqueeze}, {"flatten", lt_flatten}, {"contiguous", lt_contiguous},
  {"clone", lt_clone}, {"copy", lt_copy}, {"fill", lt_fill}, {"zero", lt_zero},
  {"gelu", lt_gelu}, {"clamp", lt_clamp}, {"matmul", lt_matmul},
  {"logsumexp", lt_logsumexp}, {"index_select", lt_index_select}, {"gather", lt_gather},
  {"index_add_", lt_index_add}, {"scatter_add_", lt_scatter_add},
  {"masked_fill", lt_masked_fill}, {"where", lt_where_method},
  {NULL, NULL}
};

/* Methods sharing one C function, told apart by an integer upvalue. */
static void lt_set_closure(lua_State *L, const char *name, lua_CFunction fn, lua_Integer up) {
  lua_pushinteger(L, up);
  lua_pushcclosure(L, fn, 1);
  lua_setfield(L, -2, name);
}

static void lt_set_flag_closure(lua_State *L, const char *name, lua_CFunction fn, int flag) {
  lua_pushboolean(L, flag);
  lua_pushcclosure(L, fn, 1);
  lua_setfield(L, -2, name);
}

static void lt_fill_methods(lua_State *L) {
  luaL_setfuncs(L, lt_methods, 0);
  for (int op = 0; op < LA_NUNARY; op++)
    if (op != LA_GELU && op != LA_GELU_EXACT) lt_set_closure(L, la_unary_name(op), lt_unary, op);
  for (int op = 0; op < LA_NBINARY; op++) lt_set_closure(L, la_binary_name(op), lt_binary, op);
  lt_set_closure(L, "add_", lt_inplace, LA_ADD);
  lt_set_closure(L, "sub_", lt_inplace, LA_SUB);
  lt_set_closure(L, "mul_", lt_inplace, LA_MUL);
  lt_set_closure(L, "div_", lt_inplace, LA_DIV);
  lt_set_flag_closure(L, "sum", lt_sum, 0);
  lt_set_flag_closure(L, "mean", lt_sum, 1);
  lt_set_flag_closure(L, "max", lt_extreme, 1);
  lt_set_flag_closure(L, "min", lt_extreme, 0);
  lt_set_flag_closure(L, "argmax", lt_argextreme, 1);
  lt_set_flag_closure(L, "argmin", lt_argextreme, 0);
  lt_set_flag_closure(L, "softmax", lt_softmax, 0);
  lt_set_flag_closure(L, "log_softmax", lt_softmax, 1);
  lua_pushboolean(L, 0);
  lua_pushcclosure(L, lt_to, 1);
  lua_setfield(L, -2, "to");
  lt_set_closure(L, "float", lt_to, LA_FLOAT32);
  lt_set_closure(L, "int", lt_to, LA_INT32);
  lt_set_closure(L, "long", lt_to, LA_INT64);
  lt_set_closure(L, "bool", lt_to, LA_BOOL);
  lt_set_closure(L, "bfloat16", lt_to, LA_BFLOAT16);
  lt_set_closure(L, "half", lt_to, LA_FLOAT16);
}

static int lt_meta_add(lua_State *L) { return lt_binary_at(L, LA_ADD); }
static int lt_meta_sub(lua_State *L) { return lt_binary_at(L, LA_SUB); }
static int lt_meta_mul(lua_State *L) { return lt_binary_at(L, LA_MUL); }
static int lt_meta_div(lua_State *L) { return lt_binary_at(L, LA_DIV); }
static int lt_meta_pow(lua_State *L) { return lt_binary_at(L, LA_POW); }
static int lt_meta_idiv(lua_State *L) { return lt_binary_at(L, LA_FLOORDIV); }
static int lt_meta_mod(lua_State *L) { return lt_binary_at(L, LA_MOD); }
static int lt_meta_unm(lua_State *L) { return lt_result(L, la_unary(LA_NEG, lt_check(L, 1))); }

static const luaL_Reg lt_meta[] = {
  {"__gc", lt_gc}, {"__close", lt_close}, {"__newindex", lt_newindex}, {"__len", lt_len},
  {"__tostring", lt_tostring_plain}, {"__add", lt_meta_add}, {"__sub", lt_meta_sub},
  {"__mul", lt_meta_mul}, {"__div", lt_meta_div}, {"__pow", lt_meta_pow},
  {"__idiv", lt_meta_idiv}, {"__mod", lt_meta_mod}, {"__unm", lt_meta_unm},
  {"__lt", lt_compare_error}, {"__le", lt_compare_error},
  {NULL, NULL}
};

/* Leaves the methods table on the stack. */
void lt_open_tensor(lua_State *L) {
  /* handle table: engine tensor -> its live userdata, weak so it never
  ** keeps a handle alive */
  lua_newtable(L);
  lua_newtable(L);
  lua_pushliteral(L, "v");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  int handles_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &lt_key_handles);

  luaL_newmetatable(L, LT_NAME);
  luaL_setfuncs(L, lt_meta, 0);
  lua_newtable(L);                  /* methods */
  lt_fill_methods(L);
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, lt_index, 1);
  lua_setfield(L, -3, "__index");
  lua_pushvalue(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &lt_key_mt);
  /* the fast paths for this state (see lt_fast) */
  lt_fast.mt = lua_topointer(L, -2);
  lua_pushvalue(L, -2);
  lt_fast.mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lt_fast.handles_ref = handles_ref;
  lt_fast.registry = lua_topointer(L, LUA_REGISTRYINDEX);
  lua_remove(L, -2);                /* leave only the methods */
}
