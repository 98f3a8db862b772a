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

/* bpe.new(spellings, pattern|nil, add_prefix_space, char_level): spellings[i]
** is the spelling of id i - 1. */
static int lb_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  const char *pattern = luaL_optstring(L, 2, NULL);
  bool prefix = lua_toboolean(L, 3);
  bool char_level = lua_toboolean(L, 4);
  lua_settop(L, 4);
  lb_box *b = lb_push(L);
  b->t = la_bpe_new(pattern, prefix);
  if (!b->t) return lb_fail(L);
  if (char_level && la_bpe_set_char_level(b->t) < 0) return lb_fail(L);
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

/* Adds the added token text (argument 2) with id (argument 3, nil for the
** next or its own) and flags; pushes the id. */
static int lb_add_with_flags(lua_State *L, unsigned flags) {
  la_bpe *t = lb_check(L, 1);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  int32_t id = -1;
  if (!lua_isnoneornil(L, 3)) {
    id = lb_checkid(L, 3);
    if (id < 0) return luaL_argerror(L, 3, "token id out of range");
  }
  id = la_bpe_add_added(t, s, len, id, flags);
  if (id < 0) return lb_fail(L);
  lua_pushinteger(L, id);
  return 1;
}

/* bpe.add_special(tok, text [, id]) -> id */
static int lb_add_special(lua_State *L) { return lb_add_with_flags(L, LA_ADDED_SPECIAL); }

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

/* Appends an id to b->out; an id outside int32 becomes -1 (out of range). */
static void lb_decode_put(lua_State *L, lb_box *b, lua_Integer id) {
  int32_t v = (id >= 0 && id <= INT32_MAX) ? (int32_t)id : -1;
  if (b->out.n == b->out.cap) {
    size_t nc = b->out.cap ? b->out.cap * 2 : 64;
    int32_t *p = realloc(b->out.ids, nc * sizeof *p);
    if (!p) luaL_error(L, "decode: out of memory");
    b->out.ids = p;
    b->out.cap = nc;
  }
  b->out.ids[b->out.n++] = v;
}

/* bpe.decode(tok, ids, skip_special) -> string; ids a list or a 1-d integer
** tensor. */
static int lb_decode(lua_State *L) {
  lb_box *b = lb_box_check(L, 1);
  bool skip = lua_toboolean(L, 3);
  lua_settop(L, 3);
  la_tensor *x = lt_test(L, 2);
  b->out.n = 0;
  if (x) {
    if (x->ndim != 1 || (x->dtype != LA_INT32 && x->dtype != LA_INT64)) {
      char sh[LA_SHAPE_BUF];
      return luaL_error(L, "decode: expected a 1-d integer tensor of ids, got %s of shape %s",
                        la_dtype_name(x->dtype), la_shape_str(sh, sizeof sh, x->ndim, x->shape));
    }
    const char *base = la_data(x);
    for (int64_t i = 0; i < x->shape[0]; i++) {
      int64_t off = i * x->stride[0];
      lb_decode_put(L, b, x->dtype == LA_INT32 ? ((const int32_t *)base)[off] : ((const int64_t *)base)[off]);
    }
  } else {
    if (!lua_istable(L, 2))
      return luaL_error(L, "decode: expected a list of ids or a 1-d integer tensor, got a %s", luaL_typename(L, 2));
    lua_Integer n = luaL_len(L, 2);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_geti(L, 2, i);
      int isint;
      lua_Integer id = lua_tointegerx(L, -1, &isint);
      if (!isint)
        return luaL_error(L, "decode: ids[%I] is %s, not an integer id", i,
                          lua_type(L, -1) == LUA_TNUMBER ? "a non-integral number" : luaL_typename(L, -1));
      lua_pop(L, 1);
      lb_decode_put(L, b, id);
    }
  }
  char *out;
  size_t len;
  if (la_bpe_decode(b->t, b->out.ids, b->out.n, skip, &out, &len) < 0) return lb_fail(L);
  lua_pushlstring(L, out, len);
  free(out);
  if (b->out.cap > (1u << 20)) la_ids_free(&b->out);
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

/* ---------------------------------------------------------------- the pipeline */

/* Field k of the table at idx: a string (NULL when absent), a boolean, an integer. */
static const char *lb_fstr(lua_State *L, int idx, const char *k, size_t *len) {
  lua_getfield(L, idx, k);
  const char *s = lua_isstring(L, -1) ? lua_tolstring(L, -1, len) : NULL;
  if (!s) *len = 0;
  lua_pop(L, 1);   /* the table keeps the string alive */
  return s;
}

static bool lb_fbool(lua_State *L, int idx, const char *k) {
  lua_getfield(L, idx, k);
  bool v = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

static int lb_fint(lua_State *L, int idx, const char *k, int dflt) {
  lua_getfield(L, idx, k);
  int v = lua_isinteger(L, -1) ? (int)lua_tointeger(L, -1) : dflt;
  lua_pop(L, 1);
  return v;
}

/* An option given by name; raises naming the step and the allowed names. */
static int lb_fenum(lua_State *L, int idx, const char *k, const char *const names[], int dflt, const char *step) {
  size_t len;
  const char *s = lb_fstr(L, idx, k, &len);
  if (!s) return dflt;
  for (int i = 0; names[i]; i++)
    if (strcmp(s, names[i]) == 0) return i;
  return luaL_error(L, "%s: %s \"%s\" is not supported", step, k, s);
}

/* Raises on a step whose named options are not known, before anything is
** allocated (an error raised later would leak what was built). */
static void lb_check_steps(lua_State *L, int idx, const char *what, const char *const kinds[],
                           const char *const *enum_keys[], const char *const *const enum_names[]) {
  lua_Integer n = luaL_len(L, idx);
  for (lua_Integer i = 1; i <= n; i++) {
    if (lua_geti(L, idx, i) != LUA_TTABLE) luaL_error(L, "%s step %d is not a table", what, (int)i);
    int top = lua_gettop(L);
    if (lb_fenum(L, top, "kind", kinds, -1, what) < 0) luaL_error(L, "%s step %d has no kind", what, (int)i);
    for (int k = 0; enum_keys && enum_keys[k]; k++) lb_fenum(L, top, *enum_keys[k], enum_names[k], 0, what);
    lua_pop(L, 1);
  }
}

static const char *const lb_behaviors[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext",
                                           "Contiguous", NULL};
static const char *const lb_schemes[] = {"always", "first", "never", NULL};

/* Adds one step (the table at index top, of kind `kind`) to a part; 0 or -1. */
typedef int (*lb_add_step)(lua_State *L, int top, int kind, void *part);

/* Calls add on each step of the list at index 2, which lb_check_steps has
** checked (so reading its names raises nothing); -1 at the first failure. */
static int lb_each_step(lua_State *L, const char *what, const char *const kinds[], lb_add_step add, void *part) {
  lua_Integer n = luaL_len(L, 2);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, 2, i);
    int top = lua_gettop(L);
    int rc = add(L, top, lb_fenum(L, top, "kind", kinds, -1, what), part);
    lua_pop(L, 1);
    if (rc < 0) return -1;
  }
  return 0;
}

static const char *const lb_norm_kinds[] = {"NFC", "NFD", "NFKC", "NFKD", "Lowercase", "Strip", "Prepend", "Replace",
                                            NULL};

static int lb_norm_step(lua_State *L, int top, int kind, void *part) {
  size_t plen, tlen;
  const char *pat = lb_fstr(L, top, "pattern", &plen), *text = lb_fstr(L, top, "text", &tlen);
  bool a = kind == LA_NORM_REPLACE ? lb_fbool(L, top, "literal") : lb_fbool(L, top, "left");
  return la_norm_add(part, (la_norm_kind)kind, pat, plen, text, tlen, a, lb_fbool(L, top, "right"));
}

/* bpe.set_normalizer(tok, steps): steps a list of {kind = "NFC" | "NFD" |
** "NFKC" | "NFKD" | "Lowercase" | "Strip" (left, right) | "Prepend" (text) |
** "Replace" (pattern, literal, text)}; an empty list removes it. */
static int lb_set_normalizer(lua_State *L) {
  la_bpe *t = lb_check(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lb_check_steps(L, 2, "normalizer", lb_norm_kinds, NULL, NULL);
  la_norm *nm = NULL;
  if (luaL_len(L, 2) > 0 && !(nm = la_norm_new())) return lb_fail(L);
  if ((nm && lb_each_step(L, "normalizer", lb_norm_kinds, lb_norm_step, nm) < 0) || la_bpe_set_normalizer(t, nm) < 0) {
    la_norm_free(nm);
    return lb_fail(L);
  }
  return 0;
}

static const char *const lb_pre_kinds[] = {"Split", "Digits", "Punctuation", "Whitespace", "WhitespaceSplit",
                                           "Metaspace", "ByteLevel", NULL};

static int lb_pre_step(lua_State *L, int top, int kind, void *part) {
  la_pre_step st;
  memset(&st, 0, sizeof st);
  st.kind = (la_pre_kind)kind;
  st.behavior = (la_split_behavior)lb_fenum(L, top, "behavior", lb_behaviors, LA_SPLIT_ISOLATED, "pre-tokenizer");
  st.scheme = (la_prepend_scheme)lb_fenum(L, top, "scheme", lb_schemes, LA_PREPEND_ALWAYS, "Metaspace");
  st.literal = lb_fbool(L, top, "literal");
  st.invert = lb_fbool(L, top, "invert");
  st.use_regex = lb_fbool(L, top, "use_regex");
  if (kind == LA_PRE_SPLIT) st.pattern = lb_fstr(L, top, "pattern", &st.plen);
  if (kind == LA_PRE_METASPACE) st.pattern = lb_fstr(L, top, "replacement", &st.plen);
  st.flag = lb_fbool(L, top, kind == LA_PRE_DIGITS ? "individual" : kind == LA_PRE_METASPACE ? "split"
                                                                                              : "add_prefix_space");
  return la_pretok_add(part, &st);
}

/* bpe.set_pretokenizer(tok, steps): steps a list of {kind = "Split"
** (pattern, literal, invert, behavior) | "Digits" (individual) |
** "Punctuation" (behavior) | "Whitespace" | "WhitespaceSplit" | "Metaspace"
** (replacement, scheme, split) | "ByteLevel" (add_prefix_space, use_regex)};
** an empty list removes it. */
static int lb_set_pretokenizer(lua_State *L) {
  la_bpe *t = lb_check(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  static const char *const behavior = "behavior", *const scheme = "scheme";
  static const char *const *keys[] = {&behavior, &scheme, NULL};
  static const char *const *const names[] = {lb_behaviors, lb_schemes};
  lb_check_steps(L, 2, "pre-tokenizer", lb_pre_kinds, keys, names);
  la_pretok *p = NULL;
  if (luaL_len(L, 2) > 0 && !(p = la_pretok_new())) return lb_fail(L);
  if (p && lb_each_step(L, "pre-tokenizer", lb_pre_kinds, lb_pre_step, p) < 0) {
    la_pretok_free(p);
    return lb_fail(L);
  }
  la_bpe_set_pretokenizer(t, p);
  return 0;
}

static const char *const lb_dec_kinds[] = {"ByteLevel", "Metaspace", "ByteFallback", "Fuse", "Strip", "Replace",
                                           "Join", NULL};

static int lb_dec_step(lua_State *L, int top, int kind, void *part) {
  size_t plen = 0, tlen = 0;
  const char *pat = lb_fstr(L, top, "pattern", &plen), *text;
  int a = 0, b = 0;
  if (kind == LA_DEC_METASPACE) {
    text = lb_fstr(L, top, "replacement", &tlen);
    a = lb_fenum(L, top, "scheme", lb_schemes, LA_PREPEND_ALWAYS, "Metaspace");
  } else if (kind == LA_DEC_STRIP) {
    text = lb_fstr(L, top, "content", &tlen);
    a = lb_fint(L, top, "start", 0);
    b = lb_fint(L, top, "stop", 0);
  } else {
    text = lb_fstr(L, top, "text", &tlen);
  }
  return la_decoder_add(part, (la_dec_kind)kind, pat, plen, lb_fbool(L, top, "literal"), text, tlen, a, b);
}

/* bpe.set_decoder(tok, steps): steps a list of {kind = "ByteLevel" |
** "Metaspace" (replacement, scheme) | "ByteFallback" | "Fuse" | "Strip"
** (content, start, stop) | "Replace" (pattern, literal, text) | "Join"}; an
** empty list removes it (decode then joins the tokens' bytes). */
static int lb_set_decoder(lua_State *L) {
  la_bpe *t = lb_check(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  static const char *const scheme = "scheme";
  static const char *const *keys[] = {&scheme, NULL};
  static const char *const *const names[] = {lb_schemes};
  lb_check_steps(L, 2, "decoder", lb_dec_kinds, keys, names);
  la_decoder *d = NULL;
  if (luaL_len(L, 2) > 0 && !(d = la_decoder_new())) return lb_fail(L);
  if (d && lb_each_step(L, "decoder", lb_dec_kinds, lb_dec_step, d) < 0) {
    la_decoder_free(d);
    return lb_fail(L);
  }
  la_bpe_set_decoder(t, d);
  return 0;
}

/* bpe.set_model(tok, byte_fallback, unk_id|nil, fuse_unk, ignore_merges) */
static int lb_set_model(lua_State *L) {
  la_bpe *t = lb_check(L, 1);
  int32_t unk = lua_isnoneornil(L, 3) ? -1 : lb_checkid(L, 3);
  if (la_bpe_set_model(t, lua_toboolean(L, 2), unk, lua_toboolean(L, 4), lua_toboolean(L, 5)) < 0) return lb_fail(L);
  return 0;
}

/* bpe.add_added(tok, text, id|nil, {special, lstrip, rstrip, single_word, normalized}) -> id */
static int lb_add_added(lua_State *L) {
  luaL_checktype(L, 4, LUA_TTABLE);
  unsigned flags = (lb_fbool(L, 4, "special") ? LA_ADDED_SPECIAL : 0) | (lb_fbool(L, 4, "lstrip") ? LA_ADDED_LSTRIP : 0) |
                   (lb_fbool(L, 4, "rstrip") ? LA_ADDED_RSTRIP : 0) |
                   (lb_fbool(L, 4, "single_word") ? LA_ADDED_SINGLE_WORD : 0) |
                   (lb_fbool(L, 4, "normalized") ? LA_ADDED_NORMALIZED : 0);
  return lb_add_with_flags(L, flags);
}

static const luaL_Reg lb_funcs[] = {
  {"new", lb_new}, {"train", lb_train}, {"add_merges_text", lb_add_merges_text},
  {"add_merges_list", lb_add_merges_list}, {"add_special", lb_add_special},
  {"encode", lb_encode}, {"decode", lb_decode}, {"pretokenize", lb_pretokenize},
  {"vocab_size", lb_vocab_size}, {"num_merges", lb_num_merges}, {"token_bytes", lb_token_bytes},
  {"token_spelling", lb_token_spelling}, {"is_special", lb_is_special}, {"token_to_id", lb_token_to_id},
  {"spellings", lb_spellings}, {"merges", lb_merges}, {"pattern", lb_pattern},
  {"set_heap_threshold", lb_set_heap_threshold}, {"clear_cache", lb_clear_cache}, {"free", lb_free},
  {"gpt2_pattern", lb_gpt2_pattern}, {"set_normalizer", lb_set_normalizer},
  {"set_pretokenizer", lb_set_pretokenizer}, {"set_decoder", lb_set_decoder}, {"set_model", lb_set_model},
  {"add_added", lb_add_added},
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
