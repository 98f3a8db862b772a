/*
** lua_tokenizer.c -- the binding of la_tokenizer.c: lualign.core.bpe, the
** functions that lualign/tokenizer.lua builds its tokenizers on.
**
** A tokenizer is a userdata owning one la_bpe.  Ids cross the border as
** 0-based Lua integers.  Every failure is a Lua error; nothing here aborts.
*/
#include <stdlib.h>
#include <string.h>

#include "la_tokenizer.h"
#include "lua_la.h"

#define LB_NAME "lualign.BPE"

typedef struct {
  la_bpe *t;
  la_ids out;   /* reused by encode */
} lb_box;

static lb_box *lb_box_check(lua_State *L, int i) {
  lb_box *b = luaL_checkudata(L, i, LB_NAME);
  if (!b->t) luaL_error(L, "tokenizer: this tokenizer has been freed");
  return b;
}

static la_bpe *lb_check(lua_State *L, int i) { return lb_box_check(L, i)->t; }

static int lb_gc(lua_State *L) {
  lb_box *b = luaL_checkudata(L, 1, LB_NAME);
  la_bpe_free(b->t);
  b->t = NULL;
  la_ids_free(&b->out);
  return 0;
}

/* Pushes a new box; the caller fills b->t. */
static lb_box *lb_push(lua_State *L) {
  lb_box *b = lua_newuserdatauv(L, sizeof *b, 0);
  memset(b, 0, sizeof *b);
  luaL_setmetatable(L, LB_NAME);
  return b;
}

static int lb_fail(lua_State *L) { return luaL_error(L, "%s", la_error()); }

/* Reads an id argument (0-based). */
static int32_t lb_checkid(lua_State *L, int arg) {
  lua_Integer id = luaL_checkinteger(L, arg);
  if (id < 0 || id > INT32_MAX) return -1;
  return (int32_t)id;
}

/* ---------------------------------------------------------------- building */

/* bpe.new(spellings, pattern|nil, add_prefix_space): spellings[i] is the
** spelling of id i - 1. */
static int lb_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  const char *pattern = luaL_optstring(L, 2, NULL);
  bool prefix = lua_toboolean(L, 3);
  lb_box *b = lb_push(L);
  b->t = la_bpe_new(pattern, prefix);
  if (!b->t) return lb_fail(L);
  lua_Integer n = luaL_len(L, 1);
  for (lua_Integer i = 1; i <= n; i++) {
    if (lua_geti(L, 1, i) != LUA_TSTRING)
      return luaL_error(L, "vocabulary entry for id %d is a %s, not a string", (int)(i - 1),
                        luaL_typename(L, -1));
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    if (la_bpe_add_token(b->t, s, len) < 0)
      return luaL_error(L, "vocabulary entry for id %d: %s", (int)(i - 1), la_error());
    lua_pop(L, 1);
  }
  return 1;
}

/* bpe.add_merges_text(tok, text, name) */
static int lb_add_merges_text(lua_State *L) {
  la_bpe *t = lb_check(L, 1);
  size_t len;
  const char *text = luaL_checklstring(L, 2, &len);
  const char *name = luaL_optstring(L, 3, "vocab.bpe");
  if (la_bpe_add_merges_text(t, text, len, name) < 0) return lb_fail(L);
  return 0;
}

/* bpe.add_merges_list(tok, merges, where): each merge "a b" or {"a", "b"}. */
static int lb_add_merges_list(lua_State *L) {
  la_bpe *t = lb_check(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  const char *where = luaL_optstring(L, 3, "merges");
  lua_Integer n = luaL_len(L, 2);
  for (lua_Integer i = 1; i <= n; i++) {
    int ty = lua_geti(L, 2, i);
    size_t alen, blen;
    const char *a, *b;
    if (ty == LUA_TSTRING) {
      size_t len;
      const char *s = lua_tolstring(L, -1, &len);
      const char *sp = memchr(s, ' ', len);
      if (!sp || sp == s || sp == s + len - 1 || memchr(sp + 1, ' ', len - (size_t)(sp - s) - 1))
        return luaL_error(L, "%s[%d]: expected \"a b\" (two tokens separated by one space)", where, (int)i);
      a = s;
      alen = (size_t)(sp - s);
      b = sp + 1;
      blen = len - alen - 1;
    } else if (ty == LUA_TTABLE) {
      if (luaL_len(L, -1) != 2 || lua_geti(L, -1, 1) != LUA_TSTRING || lua_geti(L, -2, 2) != LUA_TSTRING)
        return luaL_error(L, "%s[%d]: expected a pair of two strings", where, (int)i);
      a = lua_tolstring(L, -2, &alen);
      b = lua_tolstring(L, -1, &blen);
    } else {
      return luaL_error(L, "%s[%d]: expected a string \"a b\" or a pair {a, b}, got a %s", where, (int)i,
                        luaL_typename(L, -1));
    }
    if (la_bpe_add_merge(t, a, alen, b, blen) < 0)
      return luaL_error(L, "%s[%d]: %s", where, (int)i, la_error());
    lua_settop(L, 3);
  }
  return 0;
}

/* bpe.add_special(tok, text [, id]) -> id */
static int lb_add_special(lua_State *L) {
  la_bpe *t = lb_check(L, 1);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  int32_t id = -1;
  if (!lua_isnoneornil(L, 3)) {
    id = lb_checkid(L, 3);
    if (id < 0) return luaL_argerror(L, 3, "special token id out of range");
  }
  id = la_bpe_add_special(t, s, len, id);
  if (id < 0) return lb_fail(L);
  lua_pushinteger(L, id);
  return 1;
}

/* bpe.train(texts, specials, n_tokens, min_frequency, pattern|nil) -> tok */
static int lb_train(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_Integer n_tokens = luaL_checkinteger(L, 3);
  lua_Integer min_freq = luaL_optinteger(L, 4, 2);
  const char *pattern = luaL_optstring(L, 5, NULL);
  if (n_tokens < 256 || n_tokens > INT32_MAX)
    return luaL_error(L, "bpe train: the vocabulary must hold at least the 256 bytes (asked for %d tokens)",
                      (int)n_tokens);
  lua_settop(L, 5);
  lua_Integer nt = luaL_len(L, 1), ns = luaL_len(L, 2);
  /* Scratch arrays as userdata: freed by the collector even after an error. */
  const char **texts = lua_newuserdatauv(L, (size_t)(nt + 1) * sizeof *texts, 0);
  size_t *lens = lua_newuserdatauv(L, (size_t)(nt + 1) * sizeof *lens, 0);
  const char **specials = lua_newuserdatauv(L, (size_t)(ns + 1) * sizeof *specials, 0);
  size_t *slens = lua_newuserdatauv(L, (size_t)(ns + 1) * sizeof *slens, 0);
  for (lua_Integer i = 1; i <= nt; i++) {
    if (lua_geti(L, 1, i) != LUA_TSTRING)
      return luaL_error(L, "bpe train: text %d is a %s, not a string", (int)i, luaL_typename(L, -1));
    texts[i - 1] = lua_tolstring(L, -1, &lens[i - 1]);   /* kept alive by the list */
    lua_pop(L, 1);
  }
  for (lua_Integer i = 1; i <= ns; i++) {
    if (lua_geti(L, 2, i) != LUA_TSTRING)
      return luaL_error(L, "bpe train: special token %d is a %s, not a string", (int)i, luaL_typename(L, -1));
    specials[i - 1] = lua_tolstring(L, -1, &slens[i - 1]);
    lua_pop(L, 1);
  }
  lb_box *b = lb_push(L);
  b->t = la_bpe_train(texts, lens, (size_t)nt, specials, slens, (size_t)ns, (int32_t)n_tokens, min_freq,
                      pattern);
  if (!b->t) return lb_fail(L);
  return 1;
}

/* ---------------------------------------------------------------- encoding */

/* bpe.encode(tok, text, recognise_special) -> list of ids */
static int lb_encode(lua_State *L) {
  lb_box *b = lb_box_check(L, 1);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  bool special = lua_isnoneornil(L, 3) ? true : lua_toboolean(L, 3);
  b->out.n = 0;
  if (la_bpe_encode(b->t, s, len, special, &b->out) < 0) return lb_fail(L);
  size_t n = b->out.n;
  lua_createtable(L, n > INT32_MAX ? INT32_MAX : (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    lua_pushinteger(L, b->out.ids[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  if (b->out.cap > (1u << 20)) la_ids_free(&b->out);   /* do not hold on to huge buffers */
  return 1;
}

static void lb_decode_one(lua_State *L, la_bpe *t, luaL_Buffer *buf, lua_Integer id, lua_Integer pos,
                          bool skip_special) {
  size_t len;
  const char *bytes = (id >= 0 && id <= INT32_MAX) ? la_bpe_token_bytes(t, (int32_t)id, &len) : NULL;
  if (!bytes)
    luaL_error(L, "decode: id %I at position %I is out of range (the vocabulary has %d tokens, ids 0..%d)",
               id, pos, (int)la_bpe_vocab_size(t), (int)la_bpe_vocab_size(t) - 1);
  if (skip_special && la_bpe_is_special(t, (int32_t)id)) return;
  luaL_addlstring(buf, bytes, len);
}

/* bpe.decode(tok, ids, skip_special) -> string; ids a list or a 1-d integer
** tensor. */
static int lb_decode(lua_State *L) {
  la_bpe *t = lb_check(L, 1);
  bool skip = lua_toboolean(L, 3);
  lua_settop(L, 3);
  la_tensor *x = lt_test(L, 2);
  luaL_Buffer buf;
  if (x) {
    if (x->ndim != 1 || (x->dtype != LA_INT32 && x->dtype != LA_INT64)) {
      char sh[LA_SHAPE_BUF];
      return luaL_error(L, "decode: expected a 1-d integer tensor of ids, got %s of shape %s",
                        la_dtype_name(x->dtype), la_shape_str(sh, sizeof sh, x->ndim, x->shape));
    }
    luaL_buffinit(L, &buf);
    const char *base = la_data(x);
    for (int64_t i = 0; i < x->shape[0]; i++) {
      int64_t off = i * x->stride[0];
      lua_Integer id = x->dtype == LA_INT32 ? ((const int32_t *)base)[off] : ((const int64_t *)base)[off];
      lb_decode_one(L, t, &buf, id, (lua_Integer)i + 1, skip);
    }
    luaL_pushresult(&buf);
    return 1;
  }
  if (!lua_istable(L, 2))
    return luaL_error(L, "decode: expected a list of ids or a 1-d integer tensor, got a %s", luaL_typename(L, 2));
  lua_Integer n = luaL_len(L, 2);
  luaL_buffinit(L, &buf);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, 2, i);
    int isint;
    lua_Integer id = lua_tointegerx(L, -1, &isint);
    if (!isint) {
      /* the buffer may sit on the stack: raise with a fresh message */
      return luaL_error(L, "decode: ids[%I] is %s, not an integer id", i,
                        lua_type(L, -1) == LUA_TNUMBER ? "a non-integral number" : luaL_typename(L, -1));
    }
    lua_pop(L, 1);
    lb_decode_one(L, t, &buf, id, i, skip);
  }
  luaL_pushresult(&buf);
  return 1;
}

static int lb_piece(void *ctx, const char *p, size_t n) {
  lua_State *L = ctx;
  lua_pushlstring(L, p, n);
  lua_rawseti(L, -2, luaL_len(L, -2) + 1);
  return 0;
}

/* bpe.pretokenize(tok, text) -> list of strings */
static int lb_pretokenize(lua_State *L) {
  la_bpe *t = lb_check(L, 1);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  lua_newtable(L);
  if (la_bpe_pretokenize(t, s, len, lb_piece, L) < 0) return lb_fail(L);
  return 1;
}

/* ---------------------------------------------------------------- queries */

static int lb_vocab_size(lua_State *L) {
  lua_pushinteger(L, la_bpe_vocab_size(lb_check(L, 1)));
  return 1;
}

static int lb_num_merges(lua_State *L) {
  lua_pushinteger(L, la_bpe_num_merges(lb_check(L, 1)));
  return 1;
}

/* bpe.token_bytes(tok, id) -> string or nil */
static int lb_token_bytes(lua_State *L) {
  la_bpe *t = lb_check(L, 1);
  size_t len;
  const char *s = la_bpe_token_bytes(t, lb_checkid(L, 2), &len);
  if (!s) return 0;
  lua_pushlstring(L, s, len);
  return 1;
}

static int lb_token_spelling(lua_State *L) {
  la_bpe *t = lb_check(L, 1);
  size_t len;
  const char *s = la_bpe_token_spelling(t, lb_checkid(L, 2), &len);
  if (!s) return 0;
  lua_pushlstring(L, s, len);
  return 1;
}

static int lb_is_special(lua_State *L) {
  la_bpe *t = lb_check(L, 1);
  lua_pushboolean(L, la_bpe_is_special(t, lb_checkid(L, 2)));
  return 1;
}

static int lb_token_to_id(lua_State *L) {
  la_bpe *t = lb_check(L, 1);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  int32_t id = la_bpe_token_to_id(t, s, len);
  if (id < 0) return 0;
  lua_pushinteger(L, id);
  return 1;
}

/* bpe.spellings(tok) -> list of every token's spelling, by id */
static int lb_spellings(lua_State *L) {
  la_bpe *t = lb_check(L, 1);
  int32_t n = la_bpe_vocab_size(t);
  lua_createtable(L, n, 0);
  for (int32_t i = 0; i < n; i++) {
    size_t len;
    const char *s = la_bpe_token_spelling(t, i, &len);
    lua_pushlstring(L, s, len);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

/* bpe.merges(tok) -> list of {a_id, b_id} pairs, by rank */
static int lb_merges(lua_State *L) {
  la_bpe *t = lb_check(L, 1);
  int32_t n = la_bpe_num_merges(t);
  lua_createtable(L, n, 0);
  for (int32_t r = 0; r < n; r++) {
    int32_t a, b, m;
    la_bpe_merge_at(t, r, &a, &b, &m);
    lua_createtable(L, 3, 0);
    lua_pushinteger(L, a);
    lua_rawseti(L, -2, 1);
    lua_pushinteger(L, b);
    lua_rawseti(L, -2, 2);
    lua_pushinteger(L, m);
    lua_rawseti(L, -2, 3);
    lua_rawseti(L, -2, (lua_Integer)r + 1);
  }
  return 1;
}

static int lb_pattern(lua_State *L) {
  la_bpe *t = lb_check(L, 1);
  lua_pushstring(L, la_bpe_pattern(t));
  lua_pushboolean(L, la_bpe_prefix_space(t));
  return 2;
}

static int lb_set_heap_threshold(lua_State *L) {
  la_bpe *t = lb_check(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_argcheck(L, n >= 0, 2, "must be >= 0");
  la_bpe_set_heap_threshold(t, (size_t)n);
  return 0;
}

static int lb_clear_cache(lua_State *L) {
  la_bpe_clear_cache(lb_check(L, 1));
  return 0;
}

static int lb_free(lua_State *L) { return lb_gc(L); }

static int lb_gpt2_pattern(lua_State *L) {
  lua_pushstring(L, la_bpe_gpt2_pattern);
  return 1;
}

static const luaL_Reg lb_funcs[] = {
  {"new", lb_new}, {"train", lb_train}, {"add_merges_text", lb_add_merges_text},
  {"add_merges_list", lb_add_merges_list}, {"add_special", lb_add_special},
  {"encode", lb_encode}, {"decode", lb_decode}, {"pretokenize", lb_pretokenize},
  {"vocab_size", lb_vocab_size}, {"num_merges", lb_num_merges}, {"token_bytes", lb_token_bytes},
  {"token_spelling", lb_token_spelling}, {"is_special", lb_is_special}, {"token_to_id", lb_token_to_id},
  {"spellings", lb_spellings}, {"merges", lb_merges}, {"pattern", lb_pattern},
  {"set_heap_threshold", lb_set_heap_threshold}, {"clear_cache", lb_clear_cache}, {"free", lb_free},
  {"gpt2_pattern", lb_gpt2_pattern},
  {NULL, NULL}
};

/* Adds the table `bpe` of these functions to the module table on the top
** of the stack. */
void lt_open_tokenizer(lua_State *L) {
  if (luaL_newmetatable(L, LB_NAME)) {
    lua_pushcfunction(L, lb_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, lb_gc);
    lua_setfield(L, -2, "__close");
    lua_pushliteral(L, "lualign.BPE");
    lua_setfield(L, -2, "__name");
  }
  lua_pop(L, 1);
  luaL_newlib(L, lb_funcs);
  lua_setfield(L, -2, "bpe");
}
