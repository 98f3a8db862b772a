/*
** tests/fuzz/fuzz_lua_harness.c -- a harness whose checks are written in
** Lua: tests/fuzz/<NAME>.lua returns a function that gets each input as a
** string and raises an error when a contract is broken (errors the input is
** allowed to cause are caught there).  Compiled once per harness with
** -DFUZZ_NAME="jsonl" (or "tokenizer_json", "encode").
**
** The engine and its Lua binding are linked in, instrumented like the
** harness; Lua itself and lua-cjson are the system's.
*/
#include <stdio.h>
#include <stdlib.h>

#include <lua.h>

#include "fuzz.h"

#ifndef FUZZ_NAME
#error "define FUZZ_NAME"
#endif

static lua_State *L;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc; (void)argv;
  const char *root = getenv("LUALIGN_ROOT");
  char code[1024];
  snprintf(code, sizeof code, "return dofile('%s/tests/fuzz/%s.lua')", root && *root ? root : ".", FUZZ_NAME);
  L = fz_lua_new(code);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!L) LLVMFuzzerInitialize(NULL, NULL);
  const char *args[1] = {(const char *)data};
  size_t lens[1] = {size};
  fz_call(L, 1, args, lens);
  return 0;
}
