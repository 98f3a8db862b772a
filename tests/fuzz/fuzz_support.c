/*
** tests/fuzz/fuzz_support.c -- see fuzz.h.
*/
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz.h"

void fz_fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("fuzz: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  fflush(stderr);
  abort();
}

static char fz_dir[256];

static void fz_cleanup(void) {
  if (!fz_dir[0]) return;
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", fz_dir);
  if (system(cmd) != 0) { /* nothing to do */ }
}

const char *fz_tmpdir(void) {
  if (!fz_dir[0]) {
    const char *base = getenv("TMPDIR");
    snprintf(fz_dir, sizeof fz_dir, "%s/lualign-fuzz-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(fz_dir)) fz_fail("cannot make a temporary directory");
    atexit(fz_cleanup);
  }
  return fz_dir;
}

const char *fz_write(const char *name, const void *data, size_t size) {
  static char path[512];
  snprintf(path, sizeof path, "%s/%s", fz_tmpdir(), name);
  FILE *f = fopen(path, "wb");
  if (!f) fz_fail("cannot write %s", path);
  if (size && fwrite(data, 1, size, f) != size) fz_fail("cannot write %s", path);
  fclose(f);
  return path;
}

#ifdef FUZZ_WITH_LUA
#include <lauxlib.h>
#include <lualib.h>

int luaopen_lualign_core(lua_State *L);
int luaopen_lualign_sys(lua_State *L);

static char fz_key;

#ifdef FUZZ_LUA_COVERAGE
/* libFuzzer sees the coverage of instrumented C code only.  So that it is
** also guided by the Lua code a harness runs (the JSONL validators, the
** tokenizer loaders), a line hook counts (previous line, line) pairs into
** extra counters, which libFuzzer reads as it reads its own. */
#define FZ_COUNTERS 65536
__attribute__((used, section("__libfuzzer_extra_counters"))) static uint8_t fz_counters[FZ_COUNTERS];
static uintptr_t fz_prev;

static void fz_line_hook(lua_State *L, lua_Debug *ar) {
  if (!lua_getinfo(L, "S", ar)) return;
  uintptr_t cur = (uintptr_t)ar->source * 31u ^ (uintptr_t)ar->currentline * 2654435761u;
  fz_counters[(cur ^ fz_prev) % FZ_COUNTERS]++;
  fz_prev = cur >> 1;
}
#endif

lua_State *fz_lua_new(const char *code) {
  lua_State *L = luaL_newstate();
  if (!L) fz_fail("cannot make a Lua state");
  luaL_openlibs(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_lualign_core);
  lua_setfield(L, -2, "lualign.core");
  lua_pushcfunction(L, luaopen_lualign_sys);
  lua_setfield(L, -2, "lualign.sys");
  lua_pop(L, 1);
  const char *root = getenv("LUALIGN_ROOT");
  if (!root || !*root) root = ".";
  lua_getglobal(L, "package");
  lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua;", root, root);
  lua_getfield(L, -2, "path");
  lua_concat(L, 2);
  lua_setfield(L, -2, "path");
  lua_pop(L, 1);
  lua_pushstring(L, fz_tmpdir());
  lua_setglobal(L, "FUZZ_TMPDIR");
  if (luaL_loadstring(L, code) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK)
    fz_fail("harness setup: %s", lua_tostring(L, -1));
  if (!lua_isfunction(L, -1)) fz_fail("harness setup must return a function");
  lua_rawsetp(L, LUA_REGISTRYINDEX, &fz_key);
#ifdef FUZZ_LUA_COVERAGE
  lua_sethook(L, fz_line_hook, LUA_MASKLINE, 0);
#endif
  return L;
}

static int fz_traceback(lua_State *L) {
  luaL_traceback(L, L, lua_tostring(L, 1), 1);
  return 1;
}

void fz_call(lua_State *L, int nargs, const char *const *args, const size_t *lens) {
  lua_pushcfunction(L, fz_traceback);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &fz_key);
  for (int i = 0; i < nargs; i++) lua_pushlstring(L, args[i], lens[i]);
  if (lua_pcall(L, nargs, 0, -2 - nargs) != LUA_OK) fz_fail("%s", lua_tostring(L, -1));
  lua_pop(L, 1);
  /* Each input's garbage goes now, so that memory stays flat across runs. */
  lua_gc(L, LUA_GCCOLLECT);
}
#endif
