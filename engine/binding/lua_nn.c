/*
** lua_nn.c -- binding of the fused network kernels (la_nn.h) as the table
** lualign.core.nn; lualign.nn.functional and lualign.optim wrap them.
*/
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "la_nn.h"
#include "lua_la.h"

static la_tensor *lt_opttensor(lua_State *L, int i) {
  return lua_isnoneornil(L, i) ? NULL : lt_check(L, i);
}

static double lt_field_number(lua_State *L, int t, const char *k, double def) {
  if (lua_isnoneornil(L, t)) return def;
  lua_getfield(L, t, k);
  double v = lua_isnil(L, -1) ? def : luaL_checknumber(L, -1);
  lua_pop(L, 1);
  return v;
}

static bool lt_field_bool(lua_State *L, int t, const char *k, bool def) {
  if (lua_isnoneornil(L, t)) return def;
  lua_getfield(L, t, k);
  bool v = lua_isnil(L, -1) ? def : lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

static la_tensor *lt_field_tensor(lua_State *L, int t, const char *k) {
  if (lua_isnoneornil(L, t)) return NULL;
  lua_getfield(L, t, k);
  la_tensor *v = lua_isnil(L, -1) ? NULL : lt_check(L, -1);
  lua_pop(L, 1);   /* the options table keeps the tensor alive */
  return v;
}

/* linear(x, weight [, bias]) */
static int ln_linear(lua_State *L) {
  return lt_result(L, la_linear(lt_check(L, 1), lt_check(L, 2), lt_opttensor(L, 3)));
}

/* lora_linear(x, weight, bias or nil, lora_A, lora_B, scaling [, dropped x]) */
static int ln_lora_linear(lua_State *L) {
  return lt_result(L, la_lora_linear(lt_check(L, 1), lt_check(L, 2), lt_opttensor(L, 3), lt_check(L, 4),
                                     lt_check(L, 5), luaL_checknumber(L, 6), lt_opttensor(L, 7)));
}

/* layer_norm(x, weight, bias [, eps = 1e-5]) */
static int ln_layer_norm(lua_State *L) {
  return lt_result(L, la_layer_norm(lt_check(L, 1), lt_opttensor(L, 2), lt_opttensor(L, 3),
                                    luaL_optnumber(L, 4, 1e-5)));
}

/* rms_norm(x, weight [, eps = 1e-6]) */
static int ln_rms_norm(lua_State *L) {
  return lt_result(L, la_rms_norm(lt_check(L, 1), lt_opttensor(L, 2), luaL_optnumber(L, 3, 1e-6)));
}

/* dropout(x, p) */
static int ln_dropout(lua_State *L) {
  return lt_result(L, la_dropout(lt_check(L, 1), luaL_checknumber(L, 2)));
}

static la_attn_opts lt_attn_opts(lua_State *L, int t) {
  la_attn_opts o;
  o.causal = lt_field_bool(L, t, "causal", false);
  o.causal_offset = (int64_t)lt_field_number(L, t, "offset", 0);
  o.scale = lt_field_number(L, t, "scale", 0);
  o.key_mask = lt_field_tensor(L, t, "key_mask");
  o.segments = lt_field_tensor(L, t, "segments");
  o.window = (int64_t)lt_field_number(L, t, "window", 0);
  return o;
}

/* attention(q, k, v [, {causal, offset, scale, key_mask, segments}]) */
static int ln_attention(lua_State *L) {
  la_attn_opts o = lt_attn_opts(L, 4);
  return lt_result(L, la_attention(lt_check(L, 1), lt_check(L, 2), lt_check(L, 3), &o));
}

/* attention_qkv(qkv, n_head [, opts]) */
static int ln_attention_qkv(lua_State *L) {
  la_attn_opts o = lt_attn_opts(L, 3);
  lua_Integer h = luaL_checkinteger(L, 2);
  if (h < 1 || h > 1 << 20) return luaL_argerror(L, 2, "the number of heads must be positive");
  return lt_result(L, la_attention_qkv(lt_check(L, 1), (int)h, &o));
}

/* swiglu(gate, up) -> silu(gate) * up */
static int ln_swiglu(lua_State *L) {
  return lt_result(L, la_swiglu(lt_check(L, 1), lt_check(L, 2)));
}

/* swiglu_linear(gate, up, weight [, bias]) -> swiglu(gate, up) weight^T + bias */
static int ln_swiglu_linear(lua_State *L) {
  return lt_result(L, la_swiglu_linear(lt_check(L, 1), lt_check(L, 2), lt_check(L, 3), lt_opttensor(L, 4)));
}

/* rope_table(inv_freq (a Lua list of numbers), length) -> (2, length, #inv_freq) */
static int ln_rope_table(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer half = luaL_len(L, 1), length = luaL_checkinteger(L, 2);
  if (half < 1 || half > 1 << 20) return luaL_argerror(L, 1, "expected a non-empty list of frequencies");
  if (length < 1 || length > (lua_Integer)1 << 30) return luaL_argerror(L, 2, "the length must be positive");
  double *f = lua_newuserdatauv(L, (size_t)half * sizeof *f, 0);
  for (lua_Integer i = 0; i < half; i++) {
    lua_geti(L, 1, i + 1);
    int isnum;
    f[i] = lua_tonumberx(L, -1, &isnum);
    if (!isnum) return luaL_error(L, "rope_table: frequency %d is not a number", (int)i + 1);
    lua_pop(L, 1);
  }
  return lt_result(L, la_rope_table(f, (int64_t)half, (int64_t)length));
}

/* rope_(x (B, T, H, D), positions (B, T), table) -> x rotated in place, with its gradient */
static int ln_rope_(lua_State *L) {
  return lt_result(L, la_rope_(lt_check(L, 1), lt_check(L, 2), lt_check(L, 3)));
}

/* cross_entropy(logits, targets [, {ignore_index = -100, label_smoothing = 0}]) -> loss, count */
static int ln_cross_entropy(lua_State *L) {
  int64_t count = 0;
  int64_t ignore = (int64_t)lt_field_number(L, 3, "ignore_index", -100);
  double smooth = lt_field_number(L, 3, "label_smoothing", 0);
  lt_result(L, la_cross_entropy(lt_check(L, 1), lt_check(L, 2), ignore, smooth, &count));
  lua_pushinteger(L, count);
  return 2;
}

/* A Lua list of tensors (or nils, when nil_ok) as a C array owned by a
** userdata left on the stack. */
static la_tensor **lt_tensor_list(lua_State *L, int arg, int n, bool nil_ok, const char *what) {
  luaL_checktype(L, arg, LUA_TTABLE);
  la_tensor **v = lua_newuserdatauv(L, (size_t)(n ? n : 1) * sizeof *v, 0);
  for (int i = 0; i < n; i++) {
    lua_geti(L, arg, i + 1);
    v[i] = lt_test(L, -1);
    if (!v[i] && !(nil_ok && lua_isnil(L, -1)))
      luaL_error(L, "%s: entry %d is a %s, not a tensor", what, i + 1, luaL_typename(L, -1));
    lua_pop(L, 1);
  }
  return v;
}

static double *lt_number_list(lua_State *L, int arg, int n, const char *what) {
  luaL_checktype(L, arg, LUA_TTABLE);
  double *v = lua_newuserdatauv(L, (size_t)(n ? n : 1) * sizeof *v, 0);
  for (int i = 0; i < n; i++) {
    lua_geti(L, arg, i + 1);
    if (!lua_isnumber(L, -1)) luaL_error(L, "%s: entry %d is not a number", what, i + 1);
    v[i] = lua_tonumber(L, -1);
    lua_pop(L, 1);
  }
  return v;
}

/* adamw_step(params, m, v, weight_decays, {lr, beta1, beta2, eps, step}) */
static int ln_adamw_step(lua_State *L) {
  int n = (int)luaL_len(L, 1);
  lua_settop(L, 5);
  la_tensor **p = lt_tensor_list(L, 1, n, false, "adamw params");
  la_tensor **m = lt_tensor_list(L, 2, n, true, "adamw state");
  la_tensor **v = lt_tensor_list(L, 3, n, true, "adamw state");
  double *wd = lt_number_list(L, 4, n, "adamw weight decay");
  la_adamw_opts o = {lt_field_number(L, 5, "lr", 1e-3), lt_field_number(L, 5, "beta1", 0.9),
                     lt_field_number(L, 5, "beta2", 0.999), lt_field_number(L, 5, "eps", 1e-8),
                     (int64_t)lt_field_number(L, 5, "step", 1)};
  lt_check_rc(L, la_adamw_step(p, m, v, wd, n, &o));
  return 0;
}

/* sgd_step(params, buffers, weight_decays, {lr, momentum, dampening, nesterov}) */
static int ln_sgd_step(lua_State *L) {
  int n = (int)luaL_len(L, 1);
  lua_settop(L, 4);
  la_tensor **p = lt_tensor_list(L, 1, n, false, "sgd params");
  la_tensor **b = lt_tensor_list(L, 2, n, true, "sgd buffers");
  double *wd = lt_number_list(L, 3, n, "sgd weight decay");
  lt_check_rc(L, la_sgd_step(p, b, wd, n, lt_field_number(L, 4, "lr", 1e-2),
                             lt_field_number(L, 4, "momentum", 0), lt_field_number(L, 4, "dampening", 0),
                             lt_field_bool(L, 4, "nesterov", false)));
  return 0;
}

/* clip_grad_norm(params, max_norm) -> norm before clipping */
static int ln_clip_grad_norm(lua_State *L) {
  int n = (int)luaL_len(L, 1);
  double max_norm = luaL_optnumber(L, 2, 0);
  lua_settop(L, 2);
  la_tensor **p = lt_tensor_list(L, 1, n, false, "clip_grad_norm params");
  double norm;
  lt_check_rc(L, la_clip_grad_norm(p, n, max_norm, &norm));
  lua_pushnumber(L, norm);
  return 1;
}

/* The list opts.uniforms of B numbers, copied into a userdata left on the
** stack (collected with it), or NULL when opts has none. */
static const double *lt_field_uniforms(lua_State *L, int t, int64_t B) {
  if (lua_isnoneornil(L, t)) return NULL;
  lua_getfield(L, t, "uniforms");
  if (lua_isnil(L, -1)) { lua_pop(L, 1); return NULL; }
  if (!lua_istable(L, -1)) luaL_error(L, "sample: uniforms must be a list of numbers");
  if ((int64_t)luaL_len(L, -1) != B)
    luaL_error(L, "sample: %d uniform draws for %d rows", (int)luaL_len(L, -1), (int)B);
  double *u = lua_newuserdatauv(L, (size_t)(B > 0 ? B : 1) * sizeof(double), 0);
  for (int64_t b = 0; b < B; b++) {
    lua_geti(L, -2, b + 1);
    u[b] = luaL_checknumber(L, -1);
    lua_pop(L, 1);
  }
  lua_remove(L, -2);   /* the list; the userdata stays until the call returns */
  return u;
}

/* sample(logits (B, V) [, {temperature, top_k, top_p, uniforms}]) -> ids (B,) int64, logprobs (B,) */
static int ln_sample(lua_State *L) {
  la_tensor *logits = lt_check(L, 1);
  int64_t B = logits->ndim == 2 ? logits->shape[0] : 0;
  la_sample_opts o = {lt_field_number(L, 2, "temperature", 1.0),
                      (int64_t)lt_field_number(L, 2, "top_k", 0), lt_field_number(L, 2, "top_p", 1.0),
                      lt_field_uniforms(L, 2, B)};
  la_tensor *ids = la_empty(LA_INT64, 1, &B);
  if (!ids) return lt_error(L);
  lt_result(L, ids);
  la_tensor *lp = la_empty(LA_FLOAT32, 1, &B);
  if (!lp) return lt_error(L);
  lt_result(L, lp);
  lt_check_rc(L, la_sample(logits, &o, ids, lp));
  return 2;
}

static const luaL_Reg ln_funcs[] = {
  {"linear", ln_linear}, {"lora_linear", ln_lora_linear}, {"layer_norm", ln_layer_norm}, {"rms_norm", ln_rms_norm},
  {"dropout", ln_dropout}, {"attention", ln_attention}, {"attention_qkv", ln_attention_qkv},
  {"cross_entropy", ln_cross_entropy}, {"adamw_step", ln_adamw_step}, {"sgd_step", ln_sgd_step},
  {"clip_grad_norm", ln_clip_grad_norm}, {"sample", ln_sample}, {"swiglu", ln_swiglu},
  {"swiglu_linear", ln_swiglu_linear},
  {"rope_table", ln_rope_table}, {"rope_", ln_rope_},
  {NULL, NULL}
};

static void lt_open_nn_losses(lua_State *L);   /* the loss kernels, below */

void lt_open_nn(lua_State *L) {
  lua_newtable(L);
  luaL_setfuncs(L, ln_funcs, 0);
  lt_open_nn_losses(L);
  lt_open_recompute(L);
  lua_setfield(L, -2, "nn");
}

/* ---------------------------------------------------------------- loss kernels
** Log-probs and entropies (la_logprobs.c), preference and reward-model losses
** (la_pref.c), PPO losses and GAE (la_ppo.c).  lualign.loss wraps them. */

static const char *lt_field_string(lua_State *L, int t, const char *k, const char *def) {
  if (lua_isnoneornil(L, t)) return def;
  lua_getfield(L, t, k);
  const char *v = lua_isnil(L, -1) ? def : luaL_checkstring(L, -1);
  lua_pop(L, 1);   /* the options table keeps the string alive */
  return v;
}

static la_lp_reduce lt_reduce(lua_State *L, int t) {
  const char *r = lt_field_string(L, t, "reduce", "token");
  if (strcmp(r, "token") == 0) return LA_LP_TOKEN;
  if (strcmp(r, "sum") == 0) return LA_LP_SUM;
  if (strcmp(r, "mean") == 0) return LA_LP_MEAN;
  luaL_error(L, "reduce must be 'token', 'sum' or 'mean' (got '%s')", r);
  return LA_LP_TOKEN;
}

static int64_t lt_chunk(lua_State *L, int t) {
  double c = lt_field_number(L, t, "chunk_rows", 0);
  if (!(c >= 0) || c > 1e9 || c != floor(c)) luaL_error(L, "chunk_rows must be a positive integer (got %g)", c);
  return (int64_t)c;
}

/* logprobs(logits, targets [, mask] [, {reduce, temperature}]) */
static int ln_logprobs(lua_State *L) {
  return lt_result(L, la_logprobs(lt_check(L, 1), lt_check(L, 2), lt_opttensor(L, 3), lt_reduce(L, 4),
                                  lt_field_number(L, 4, "temperature", 1)));
}

/* logprobs_hidden(hidden, weight, targets [, mask] [, {reduce, temperature, chunk_rows}]) */
static int ln_logprobs_hidden(lua_State *L) {
  return lt_result(L, la_logprobs_hidden(lt_check(L, 1), lt_check(L, 2), lt_check(L, 3),
                                         lt_opttensor(L, 4), lt_reduce(L, 5),
                                         lt_field_number(L, 5, "temperature", 1), lt_chunk(L, 5)));
}

/* entropy(logits [, mask] [, {reduce, temperature}]) */
static int ln_entropy(lua_State *L) {
  return lt_result(L, la_entropy(lt_check(L, 1), lt_opttensor(L, 2), lt_reduce(L, 3),
                                 lt_field_number(L, 3, "temperature", 1)));
}

/* entropy_hidden(hidden, weight [, mask] [, {reduce, temperature, chunk_rows}]) */
static int ln_entropy_hidden(lua_State *L) {
  return lt_result(L, la_entropy_hidden(lt_check(L, 1), lt_check(L, 2), lt_opttensor(L, 3),
                                        lt_reduce(L, 4), lt_field_number(L, 4, "temperature", 1),
                                        lt_chunk(L, 4)));
}

/* pref_loss(kind, policy_chosen, policy_rejected, ref_chosen, ref_rejected
**           [, {beta = 0.1, p, eps = 0.1, label_smoothing = 0}]) -> loss, metrics */
static int ln_pref_loss(lua_State *L) {
  const char *kind = luaL_checkstring(L, 1);
  int k = 0;
  while (k < LA_PREF_N && strcmp(la_pref_name((la_pref_kind)k), kind) != 0) k++;
  if (k == LA_PREF_N)
    return luaL_error(L, "unknown preference loss '%s' (known: dpo, cdpo, rdpo, ipo, hinge, gdpo, gipo)", kind);
  la_pref_opts o = {lt_field_number(L, 6, "beta", 0.1), lt_field_number(L, 6, "eps", 0.1),
                    lt_field_number(L, 6, "label_smoothing", 0)};
  la_pref_metrics m;
  lt_result(L, la_pref_loss((la_pref_kind)k, lt_check(L, 2), lt_check(L, 3), lt_opttensor(L, 4),
                            lt_opttensor(L, 5), lt_field_tensor(L, 6, "p"), &o, &m));
  lua_createtable(L, 0, 6);
  lt_set_number(L, "rewards/chosen", m.reward_chosen);
  lt_set_number(L, "rewards/rejected", m.reward_rejected);
  lt_set_number(L, "rewards/accuracies", m.accuracy);
  lt_set_number(L, "rewards/margins", m.margin);
  lt_set_number(L, "logps/chosen", m.logp_chosen);
  lt_set_number(L, "logps/rejected", m.logp_rejected);
  return 2;
}

/* bradley_terry(r_chosen, r_rejected [, {p, margin (number or tensor), center = 0}]) -> loss, metrics */
static int ln_bradley_terry(lua_State *L) {
  la_tensor *margin = NULL;
  double margin_value = 0;
  if (!lua_isnoneornil(L, 3)) {
    lua_getfield(L, 3, "margin");
    if (lua_isnumber(L, -1)) margin_value = lua_tonumber(L, -1);
    else if (!lua_isnil(L, -1)) margin = lt_check(L, -1);
    lua_pop(L, 1);
  }
  la_bt_metrics m;
  lt_result(L, la_bradley_terry(lt_check(L, 1), lt_check(L, 2), lt_field_tensor(L, 3, "p"), margin,
                                margin_value, lt_field_number(L, 3, "center", 0), &m));
  lua_createtable(L, 0, 4);
  lt_set_number(L, "accuracy", m.accuracy);
  lt_set_number(L, "margin", m.margin);
  lt_set_number(L, "rewards/chosen", m.reward_chosen);
  lt_set_number(L, "rewards/rejected", m.reward_rejected);
  return 2;
}

/* ppo_policy_loss(logprobs, old_logprobs, advantages [, mask]
**                 [, {clip_eps = 0.2, clip_eps_low, clip_eps_high}]) -> loss, metrics */
static int ln_ppo_policy_loss(lua_State *L) {
  double eps = lt_field_number(L, 5, "clip_eps", 0.2);
  la_ppo_metrics m;
  lt_result(L, la_ppo_policy_loss(lt_check(L, 1), lt_check(L, 2), lt_check(L, 3), lt_opttensor(L, 4),
                                  lt_field_number(L, 5, "clip_eps_low", eps),
                                  lt_field_number(L, 5, "clip_eps_high", eps), &m));
  lua_createtable(L, 0, 4);
  lt_set_number(L, "policy/clipfrac_avg", m.clipfrac);
  lt_set_number(L, "policy/approxkl_avg", m.approxkl);
  lt_set_number(L, "val/ratio", m.ratio);
  lt_set_number(L, "tokens", m.count);
  return 2;
}

/* ppo_value_loss(values, old_values, returns [, mask] [, {clip_eps = 0.2}]) -> loss, metrics */
static int ln_ppo_value_loss(lua_State *L) {
  la_ppo_metrics m;
  lt_result(L, la_ppo_value_loss(lt_check(L, 1), lt_check(L, 2), lt_check(L, 3), lt_opttensor(L, 4),
                                 lt_field_number(L, 5, "clip_eps", 0.2), &m));
  lua_createtable(L, 0, 2);
  lt_set_number(L, "val/clipfrac_avg", m.clipfrac);
  lt_set_number(L, "tokens", m.count);
  return 2;
}

/* gae(rewards, values [, mask] [, {gamma = 1, lam = 0.95}]) -> advantages, returns */
static int ln_gae(lua_State *L) {
  la_tensor *adv, *ret;
  lt_check_rc(L, la_gae(lt_check(L, 1), lt_check(L, 2), lt_opttensor(L, 3),
                        lt_field_number(L, 4, "gamma", 1.0), lt_field_number(L, 4, "lam", 0.95), &adv, &ret));
  lt_result(L, adv);
  lt_result(L, ret);
  return 2;
}

static const luaL_Reg ln_loss_funcs[] = {
  {"logprobs", ln_logprobs}, {"logprobs_hidden", ln_logprobs_hidden}, {"entropy", ln_entropy},
  {"entropy_hidden", ln_entropy_hidden}, {"pref_loss", ln_pref_loss},
  {"bradley_terry", ln_bradley_terry}, {"ppo_policy_loss", ln_ppo_policy_loss},
  {"ppo_value_loss", ln_ppo_value_loss}, {"gae", ln_gae},
  {NULL, NULL}
};

static void lt_open_nn_losses(lua_State *L) {
  luaL_setfuncs(L, ln_loss_funcs, 0);
}
