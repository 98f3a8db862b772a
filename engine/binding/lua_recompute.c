/*
** lua_recompute.c -- activation checkpointing: nn.checkpoint(fn, ...) runs a
** Lua function without recording its graph, and records one node whose
** backward pass runs the function again, this time recording, and
** backpropagates through that graph.  Only the function's arguments are kept
** between the passes; its intermediate activations live only while its
** gradient is computed.
**
** The engine calls backward functions from C, inside la_backward; this one
** calls back into Lua.  That is safe because:
**  - la_backward runs on the thread of the Lua call t:backward(), which
**    records its lua_State here (lt_set_backward_state) for the duration;
**    a checkpoint node reached from any other caller is an error;
**  - the function runs under lua_pcall, so a Lua error becomes an engine
**    error (no longjmp crosses the engine's frames), and the generator
**    state and grad mode are restored whatever happens;
**  - what the node keeps for Lua (the function and its non-tensor
**    arguments) is a registry reference; a node can be freed where no Lua
**    call should be made (inside a tensor's __gc), so freeing only queues
**    the reference, and the next tensor handle made releases it;
**  - while the function is recomputed, the engine refuses ops on tensors
**    produced before the recomputation (la_begin_recompute): the function
**    must receive every tensor that carries gradient history as an
**    argument, where it is replaced by a fresh leaf; parameters (leaves)
**    may be captured freely.
** Dropout and every other draw replay identically: the node saves the
** generator's state and restores it for the recomputation.
*/
#include <stdlib.h>
#include <string.h>

#include "lua_la.h"

typedef struct lt_ckpt {
  int ref;              /* registry: {fn, arg1, ..., argn} (tracked tensors as false) */
  int nargs;
  int n_in;             /* arguments that track gradients: the node's inputs */
  int *arg_of_input;    /* input i is argument arg_of_input[i] (1-based) */
  la_rng_state rng;     /* the generator before the first run */
} lt_ckpt;

/* ---------------------------------------------------------------- Lua state */

static lua_State *lt_bw_state;

lua_State *lt_set_backward_state(lua_State *L) {
  lua_State *prev = lt_bw_state;
  lt_bw_state = L;
  return prev;
}

/* References of freed nodes, released at the next chance to call Lua. */
static int *lt_dead_refs;
static size_t lt_n_dead, lt_cap_dead;

static void lt_ckpt_free(void *p) {
  lt_ckpt *c = p;
  if (lt_n_dead == lt_cap_dead) {
    size_t cap = lt_cap_dead ? 2 * lt_cap_dead : 64;
    int *v = realloc(lt_dead_refs, cap * sizeof *v);
    if (v) { lt_dead_refs = v; lt_cap_dead = cap; }
  }
  /* Without room the reference stays: a small leak rather than a Lua call here. */
  if (lt_n_dead < lt_cap_dead) lt_dead_refs[lt_n_dead++] = c->ref;
  free(c->arg_of_input);
  free(c);
}

void lt_release_checkpoints(lua_State *L) {
  while (lt_n_dead > 0) luaL_unref(L, LUA_REGISTRYINDEX, lt_dead_refs[--lt_n_dead]);
}

/* Drops a handle's tensor now rather than at the next collection. */
static void lt_close_handle(lua_State *L, int idx) {
  lt_box *b = lua_touserdata(L, idx);
  if (b && b->t) {
    la_release(b->t);
    b->t = NULL;
  }
}

/* ---------------------------------------------------------------- backward */

typedef struct {
  la_node *node;
  lt_ckpt *ckpt;
  la_tensor *gout, **gin;
} lt_recompute_args;

/* Runs the function again with fresh leaves for the tracked arguments and
** backpropagates gout through it (under lua_pcall). */
static int lt_recompute(lua_State *L) {
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF];
  lt_recompute_args *a = lua_touserdata(L, 1);
  lt_ckpt *c = a->ckpt;
  luaL_checkstack(L, c->nargs + c->n_in + 8, "checkpoint");
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref);
  int record = lua_gettop(L);
  int leaves = record + 1;   /* the fresh leaves, then the function and its arguments */
  for (int i = 0; i < c->n_in; i++) {
    la_tensor *leaf = la_alias(a->node->saved[i]);
    if (!leaf) return lt_error(L);
    leaf->requires_grad = true;
    lt_result(L, leaf);
  }
  lua_rawgeti(L, record, 1);
  int first_arg = lua_gettop(L) + 1;
  for (int k = 1; k <= c->nargs; k++) lua_rawgeti(L, record, k + 1);
  for (int i = 0; i < c->n_in; i++) {
    lua_pushvalue(L, leaves + i);
    lua_replace(L, first_arg + c->arg_of_input[i] - 1);
  }
  lua_call(L, c->nargs, 1);
  la_tensor *y = lt_test(L, -1);
  if (!y) return luaL_error(L, "checkpoint: the function returned %s when recomputed, not a tensor",
                            luaL_typename(L, -1));
  if (!la_same_shape(y, a->gout))
    return luaL_error(L, "checkpoint: the function returned shape %s when recomputed, %s the first time",
                      la_shape_str(b1, sizeof b1, y->ndim, y->shape),
                      la_shape_str(b2, sizeof b2, a->gout->ndim, a->gout->shape));
  if (la_tracks_grad(y) && la_backward(y, a->gout, false) < 0) return lt_error(L);
  for (int i = 0; i < c->n_in; i++) {
    la_tensor *leaf = lt_test(L, leaves + i);
    a->gin[i] = leaf->grad;   /* the leaf's reference passes to the engine */
    leaf->grad = NULL;
  }
  /* The recomputed activations go now, not at the next collection. */
  lt_close_handle(L, -1);
  for (int i = 0; i < c->n_in; i++) lt_close_handle(L, leaves + i);
  return 0;
}

static int lt_checkpoint_backward(la_node *n, la_tensor *gout, la_tensor **gin) {
  lua_State *L = lt_bw_state;
  if (!L) return la_failn("checkpoint: its backward pass must be started from Lua (t:backward())");
  if (!lua_checkstack(L, 4)) return la_failn("checkpoint: Lua stack overflow");
  lt_recompute_args args = {n, n->ctx, gout, gin};
  size_t live_before = la_memory_stats().live_bytes;
  la_rng_state outside = la_get_rng_state();
  la_set_rng_state(&args.ckpt->rng);
  bool grad_mode = la_set_grad_enabled(true);
  uint64_t floor = la_begin_recompute();
  lua_pushcfunction(L, lt_recompute);
  lua_pushlightuserdata(L, &args);
  int status = lua_pcall(L, 1, 0, 0);
  la_end_recompute(floor);
  la_set_grad_enabled(grad_mode);
  la_set_rng_state(&outside);
  if (status != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    la_failn("%s", msg ? msg : "(error object is not a string)");
    lua_pop(L, 1);
    for (int i = 0; i < n->n_in; i++) la_release_p(&gin[i]);
    return -1;
  }
  lt_collect_after_recompute(L, live_before);
  return 0;
}

/* ---------------------------------------------------------------- forward */

/* nn.checkpoint(fn, ...) -> fn(...), a tensor, recomputed in the backward pass. */
static int lt_checkpoint(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  int nargs = lua_gettop(L) - 1;
  lt_release_checkpoints(L);
  if (!la_is_grad_enabled()) {   /* nothing to save: a plain call */
    lua_call(L, nargs, LUA_MULTRET);
    return lua_gettop(L);
  }
  la_rng_state rng = la_get_rng_state();
  size_t live_before = la_memory_stats().live_bytes;
  luaL_checkstack(L, nargs + 4, "checkpoint");
  for (int k = 1; k <= nargs + 1; k++) lua_pushvalue(L, k);
  bool grad_mode = la_set_grad_enabled(false);
  int status = lua_pcall(L, nargs, 1, 0);
  la_set_grad_enabled(grad_mode);
  if (status != LUA_OK) return lua_error(L);
  int result = lua_gettop(L);
  la_tensor *y = lt_test(L, result);
  if (!y) return luaL_error(L, "checkpoint: the function must return a tensor (got %s)", luaL_typename(L, result));

  lt_ckpt *c = calloc(1, sizeof *c);
  la_tensor **inputs = c ? calloc((size_t)(nargs ? nargs : 1), sizeof *inputs) : NULL;
  if (c) c->arg_of_input = calloc((size_t)(nargs ? nargs : 1), sizeof *c->arg_of_input);
  if (!inputs || !c->arg_of_input) {
    free(inputs);
    if (c) free(c->arg_of_input);
    free(c);
    return luaL_error(L, "checkpoint: out of memory");
  }
  lua_createtable(L, nargs + 1, 0);
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, 1);
  for (int k = 1; k <= nargs; k++) {
    la_tensor *t = lt_test(L, k + 1);
    if (t && la_tracks_grad(t)) {
      c->arg_of_input[c->n_in] = k;
      inputs[c->n_in++] = t;
      lua_pushboolean(L, 0);
    } else {
      lua_pushvalue(L, k + 1);
    }
    lua_rawseti(L, -2, k + 1);
  }
  c->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  c->nargs = nargs;
  c->rng = rng;
  /* A node even without tracked arguments: the function's parameters may
  ** require gradients (LoRA adapters on a frozen embedding's output). */
  la_tensor *out = la_alias(y);
  la_node *n = out ? la_node_new("checkpoint", lt_checkpoint_backward, c->n_in, inputs, c->n_in) : NULL;
  int rc = n ? 0 : -1;
  for (int i = 0; rc == 0 && i < c->n_in; i++) rc = la_node_save(n, i, inputs[i]);
  free(inputs);
  if (n) {
    n->ctx = c;
    n->ctx_free = lt_ckpt_free;
  } else {
    lt_ckpt_free(c);
  }
  if (rc < 0) {
    la_node_release(n);
    la_release(out);
    return lt_error(L);
  }
  la_node_attach(n, out);
  lt_result(L, out);
  /* The function's intermediates are garbage now, as in the backward pass. */
  lt_collect_after_recompute(L, live_before);
  return 1;
}

void lt_open_recompute(lua_State *L) {
  lua_pushcfunction(L, lt_checkpoint);
  lua_setfield(L, -2, "checkpoint");
}
