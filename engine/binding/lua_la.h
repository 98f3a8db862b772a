/*
** lua_la.h -- what the binding files share: the tensor userdata, argument
** checking, and turning engine results into Lua values or Lua errors.
*/
#ifndef LUA_LA_H
#define LUA_LA_H

#include <lauxlib.h>
#include <lua.h>

#include "la.h"

#define LT_NAME "lualign.Tensor"

/* The userdata is the tensor handle.  Each op result gets a new one; a
** gradient read as t.grad always comes back as the same handle (see
** lt_register in lua_tensor.c).  t is NULL once the handle has been closed. */
typedef struct lt_box {
  la_tensor *t;
} lt_box;

la_tensor *lt_check(lua_State *L, int i);
la_tensor *lt_test(lua_State *L, int i);          /* NULL if not a live tensor */
/* Pushes a tensor fresh from the engine, taking over its reference; raises
** the engine's error when t is NULL.  Returns 1 (values pushed). */
int lt_result(lua_State *L, la_tensor *t);
/* Pushes the handle of a tensor the engine already holds (a .grad): the one
** registered for it, or a new one, registered.  Pushes nil for NULL. */
void lt_push(lua_State *L, la_tensor *t);
int lt_error(lua_State *L);                        /* raises la_error() */
int lt_check_rc(lua_State *L, int rc);             /* raises when rc < 0 */
/* t[k] = v for the table on top of the stack (metrics, statistics). */
void lt_set_number(lua_State *L, const char *k, double v);
void lt_set_integer(lua_State *L, const char *k, int64_t v);

/* A dimension argument: 1-based, or negative from the end; 0-based result.
** 'extra' widens the range by one for ops that insert a dim (unsqueeze). */
int lt_checkdim(lua_State *L, int arg, int ndim, const char *op, int extra);
int lt_optdim(lua_State *L, int arg, int ndim, const char *op, int def);
la_dtype lt_optdtype(lua_State *L, int arg, la_dtype def);
/* A shape given as numbers from 'arg' on, or as one list; returns the index
** of the first argument after it. */
int lt_checkshape(lua_State *L, int arg, const char *op, int *ndim, int64_t *shape);

void lt_open_tensor(lua_State *L);    /* builds the metatable and methods */
void lt_open_nn(lua_State *L);        /* core.nn: fused network kernels */
void lt_pace_gc(lua_State *L);        /* GC pacing after allocations */
void lt_after_backward(lua_State *L); /* GC pacing after a backward pass (lua_tensor.c) */
void lt_open_tokenizer(lua_State *L); /* adds core.bpe (lua_tokenizer.c) */
void lt_open_checkpoint(lua_State *L); /* sets _safetensors in the table on top */
void lt_open_regex(lua_State *L);      /* sets regex_fullmatch in the table on top */
void lt_open_recompute(lua_State *L);  /* sets checkpoint in the table on top (core.nn) */
/* Activation checkpointing (lua_recompute.c): the state whose backward()
** is running, for the nodes that call back into Lua (returns the previous
** one); and the release of what freed checkpoint nodes held in the registry. */
lua_State *lt_set_backward_state(lua_State *L);
void lt_release_checkpoints(lua_State *L);
/* A collection when a recomputation left much more alive than before it. */
void lt_collect_after_recompute(lua_State *L, size_t live_before);
void lt_open_dist(lua_State *L);      /* sets dist in the table on top (lua_dist.c) */

#endif
