/*
** lua_checkpoint.c -- the safetensors functions of lualign.core, used by
** lualign/checkpoint.lua (which checks the arguments and adds the caller's
** position to errors):
**
**   core._safetensors.read(path [, names])  -> {name = tensor}, {key = value}
**   core._safetensors.read_into(path, {name = tensor})   reads into existing tensors
**   core._safetensors.header(path)          -> the header as a table
**   core._safetensors.write(path, {name = tensor}, {key = value} [, float_type])
**
** Errors are raised with the engine's message alone (it starts with the
** file's path), without a position: the Lua layer adds the caller's.
*/
#include <string.h>

#include "la_safetensors.h"
#include "lua_la.h"

#define ST_FILE_MT "lualign.safetensors.File"

/* An open file, boxed so that a Lua error (out of memory while building the
** result) cannot leak its descriptor: the box closes it when collected. */
typedef struct st_box {
  la_st_file *f;
} st_box;

static int st_box_close(lua_State *L) {
  st_box *b = luaL_checkudata(L, 1, ST_FILE_MT);
  if (b->f) {
    la_st_close(b->f);
    b->f = NULL;
  }
  return 0;
}

static int st_raise(lua_State *L, st_box *b) {
  if (b && b->f) {
    la_st_close(b->f);
    b->f = NULL;
  }
  lua_pushstring(L, la_error());
  return lua_error(L);
}

/* Closes the file and raises the message on top of the stack. */
static int st_raise_msg(lua_State *L, st_box *b) {
  if (b->f) {
    la_st_close(b->f);
    b->f = NULL;
  }
  return lua_error(L);
}

static st_box *st_open(lua_State *L, const char *path) {
  st_box *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->f = NULL;
  luaL_setmetatable(L, ST_FILE_MT);
  b->f = la_st_open(path);
  if (!b->f) st_raise(L, NULL);
  return b;
}

static void st_push_metadata(lua_State *L, const la_st_header *h) {
  lua_createtable(L, 0, (int)(h->n_meta < 1000 ? h->n_meta : 1000));
  for (size_t i = 0; i < h->n_meta; i++) {
    lua_pushlstring(L, h->meta[i].key, h->meta[i].key_len);
    lua_pushlstring(L, h->meta[i].value, h->meta[i].value_len);
    lua_rawset(L, -3);
  }
}

/* Reads tensor i and sets result[name] = tensor (the table on top). */
static void st_read_into(lua_State *L, st_box *b, size_t i) {
  const la_st_entry *e = &la_st_file_header(b->f)->tensors[i];
  lua_pushlstring(L, e->name, e->name_len);
  la_tensor *t = la_st_read(b->f, i);
  if (!t) st_raise(L, b);
  lt_result(L, t);
  lua_rawset(L, -3);
}

/* read(path [, names]): every tensor, or those named in the list. */
static int st_read(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  bool some = !lua_isnoneornil(L, 2);
  if (some) luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  st_box *b = st_open(L, path);                         /* 3 */
  const la_st_header *h = la_st_file_header(b->f);
  lua_createtable(L, 0, (int)(h->n_tensors < 100000 ? h->n_tensors : 100000));   /* 4 */
  if (some) {
    lua_Integer n = luaL_len(L, 2);
    for (lua_Integer k = 1; k <= n; k++) {
      lua_geti(L, 2, k);
      if (lua_type(L, -1) != LUA_TSTRING) {
        lua_pushfstring(L, "names[%d] is a %s, not a tensor name", (int)k, luaL_typename(L, -1));
        la_st_close(b->f);
        b->f = NULL;
        return lua_error(L);
      }
      size_t len;
      const char *name = lua_tolstring(L, -1, &len);
      ptrdiff_t i = la_st_find(h, name, len);
      if (i < 0) {
        lua_pushfstring(L, "%s: has no tensor named '%s' (it holds %d)", path, name, (int)h->n_tensors);
        la_st_close(b->f);
        b->f = NULL;
        return lua_error(L);
      }
      lua_pop(L, 1);
      st_read_into(L, b, (size_t)i);
    }
  } else {
    for (size_t i = 0; i < h->n_tensors; i++) st_read_into(L, b, i);
  }
  st_push_metadata(L, h);
  la_st_close(b->f);
  b->f = NULL;
  return 2;
}

/* read_into(path, {name = tensor}): reads each named tensor of the file into
** the given tensor (same shape), opening the file once. */
static int st_read_into_l(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  st_box *b = st_open(L, path);                         /* 3 */
  const la_st_header *h = la_st_file_header(b->f);
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    if (lua_type(L, -2) != LUA_TSTRING) {
      lua_pushstring(L, "read_into: tensor names must be strings");
      return st_raise_msg(L, b);
    }
    size_t len;
    const char *name = lua_tolstring(L, -2, &len);
    la_tensor *dst = lt_test(L, -1);
    if (!dst) {
      lua_pushfstring(L, "read_into: the destination for '%s' is not a tensor", name);
      return st_raise_msg(L, b);
    }
    ptrdiff_t i = la_st_find(h, name, len);
    if (i < 0) {
      lua_pushfstring(L, "%s: has no tensor named '%s'", path, name);
      return st_raise_msg(L, b);
    }
    bool previous = la_set_grad_enabled(false);
    int rc = la_st_read_into(b->f, (size_t)i, dst);
    la_set_grad_enabled(previous);
    if (rc < 0) return st_raise(L, b);
    lua_pop(L, 1);
  }
  la_st_close(b->f);
  b->f = NULL;
  return 0;
}

static void st_push_u64(lua_State *L, uint64_t v) { lua_pushinteger(L, (lua_Integer)v); }

/* header(path): {names = {sorted}, tensors = {name = {dtype, shape,
** data_offsets, nbytes, loads_as}}, metadata = {...}, header_size, data_size} */
static int st_header(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  lua_settop(L, 1);
  st_box *b = st_open(L, path);
  const la_st_header *h = la_st_file_header(b->f);
  int nt = (int)(h->n_tensors < 100000 ? h->n_tensors : 100000);
  lua_createtable(L, 0, 5);
  lua_createtable(L, nt, 0);                            /* names */
  lua_createtable(L, 0, nt);                            /* tensors */
  for (size_t i = 0; i < h->n_tensors; i++) {
    const la_st_entry *e = &h->tensors[i];
    lua_pushlstring(L, e->name, e->name_len);
    lua_pushvalue(L, -1);
    lua_rawseti(L, -4, (lua_Integer)i + 1);
    lua_createtable(L, 0, 5);
    lua_pushstring(L, la_st_dtype_name(e->dtype));
    lua_setfield(L, -2, "dtype");
    lua_createtable(L, e->ndim, 0);
    for (int d = 0; d < e->ndim; d++) {
      lua_pushinteger(L, e->shape[d]);
      lua_rawseti(L, -2, d + 1);
    }
    lua_setfield(L, -2, "shape");
    lua_createtable(L, 2, 0);
    st_push_u64(L, e->begin);
    lua_rawseti(L, -2, 1);
    st_push_u64(L, e->end);
    lua_rawseti(L, -2, 2);
    lua_setfield(L, -2, "data_offsets");
    st_push_u64(L, e->end - e->begin);
    lua_setfield(L, -2, "nbytes");
    la_dtype dt;
    if (la_st_load_dtype(e->dtype, &dt) == 0) {
      lua_pushstring(L, la_dtype_name(dt));
      lua_setfield(L, -2, "loads_as");
    }
    lua_rawset(L, -3);
  }
  lua_setfield(L, -3, "tensors");
  lua_setfield(L, -2, "names");
  st_push_metadata(L, h);
  lua_setfield(L, -2, "metadata");
  st_push_u64(L, h->header_len);
  lua_setfield(L, -2, "header_size");
  st_push_u64(L, h->data_len);
  lua_setfield(L, -2, "data_size");
  la_st_close(b->f);
  b->f = NULL;
  return 1;
}

static size_t st_count(lua_State *L, int idx) {
  size_t n = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    n++;
    lua_pop(L, 1);
  }
  return n;
}

static int st_write_error(lua_State *L, const char *fmt, const char *key, const char *type) {
  lua_pushfstring(L, fmt, key, type);
  return lua_error(L);
}

/* write(path, {name = tensor}, {key = value} [, "F32" | "F16" | "BF16"]):
** the last argument is the type float tensors are stored as; without it
** each keeps its own (float32 as F32, bfloat16 as BF16, float16 as F16).
** The arrays handed to the engine are userdata, so an error on the way frees them. */
static int st_write(lua_State *L) {
  static const char *const float_types[] = {"F32", "F16", "BF16", NULL};
  static const la_st_dtype float_as[] = {LA_ST_F32, LA_ST_F16, LA_ST_BF16};
  const char *path = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  la_st_dtype as = lua_isnoneornil(L, 4) ? LA_ST_NDTYPE : float_as[luaL_checkoption(L, 4, NULL, float_types)];
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  else { lua_settop(L, 2); lua_newtable(L); }
  lua_settop(L, 3);
  size_t n = st_count(L, 2), nm = st_count(L, 3);
  if (n > SIZE_MAX / sizeof(la_st_named) || nm > SIZE_MAX / sizeof(la_st_pair))
    return luaL_error(L, "too many entries");
  la_st_named *ts = lua_newuserdatauv(L, (n ? n : 1) * sizeof *ts, 0);     /* 4 */
  la_st_pair *ms = lua_newuserdatauv(L, (nm ? nm : 1) * sizeof *ms, 0);    /* 5 */
  size_t k = 0;
  lua_pushnil(L);
  while (lua_next(L, 2)) {   /* strings stay alive: the table holds them */
    if (lua_type(L, -2) != LUA_TSTRING)
      return st_write_error(L, "tensor names must be strings (found a %s key%s)", luaL_typename(L, -2), "");
    const char *name = lua_tolstring(L, -2, &ts[k].name_len);
    ts[k].name = name;
    ts[k].tensor = lt_test(L, -1);
    ts[k].as = as;
    if (!ts[k].tensor)
      return st_write_error(L, "the value for '%s' is a %s, not a tensor", name,
                            lua_isuserdata(L, -1) && luaL_testudata(L, -1, LT_NAME) ? "closed tensor"
                                                                                    : luaL_typename(L, -1));
    k++;
    lua_pop(L, 1);
  }
  k = 0;
  lua_pushnil(L);
  while (lua_next(L, 3)) {
    if (lua_type(L, -2) != LUA_TSTRING)
      return st_write_error(L, "metadata keys must be strings (found a %s key%s)", luaL_typename(L, -2), "");
    ms[k].key = lua_tolstring(L, -2, &ms[k].key_len);
    if (lua_type(L, -1) != LUA_TSTRING)
      return st_write_error(L, "metadata value for '%s' is a %s; values must be strings", ms[k].key,
                            luaL_typename(L, -1));
    ms[k].value = lua_tolstring(L, -1, &ms[k].value_len);
    k++;
    lua_pop(L, 1);
  }
  if (la_st_save(path, n, ts, nm, ms) < 0) return st_raise(L, NULL);
  return 0;
}

static const luaL_Reg st_funcs[] = {
  {"read", st_read}, {"read_into", st_read_into_l}, {"header", st_header}, {"write", st_write},
  {NULL, NULL}
};

void lt_open_checkpoint(lua_State *L) {
  if (luaL_newmetatable(L, ST_FILE_MT)) {
    lua_pushcfunction(L, st_box_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, st_box_close);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  luaL_newlib(L, st_funcs);
  lua_setfield(L, -2, "_safetensors");
}
