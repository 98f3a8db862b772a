/*
** tests/sanitize/lua.c -- a small stand-in for the lua5.4 command, built with
** AddressSanitizer and UndefinedBehaviorSanitizer by `make sanitize`.
**
** Debian's lua5.4 is not instrumented, so the sanitizers' runtime would have
** to be preloaded into it (LD_PRELOAD), and every program a test starts from
** Lua (mktemp, tmux, the compiler under luarocks) would inherit the preload
** and report its own leaks.  An interpreter that links the runtime itself
** needs no preload: `make sanitize` puts it first on PATH as lua5.4, so the
** tests, busted and bin/lualign run in it, and nothing else is instrumented.
** It links Debian's liblua5.4, so behaviour is the real interpreter's.
**
** It does what the tests ask of lua5.4: `lua5.4 [-e stat] [-l mod] [-v]
** [--] [script [args]]`, `-` for a script on stdin, and the `arg` table laid
** out as lua.c lays it out.  Errors print "lua5.4: message" and a traceback.
** At the end it closes the state, so leak checking sees every tensor freed.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

static const char *progname = "lua5.4";

static int msghandler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

static int report(lua_State *L, int status) {
  if (status != LUA_OK) {
    fprintf(stderr, "%s: %s\n", progname, lua_tostring(L, -1));
    fflush(stderr);
    lua_pop(L, 1);
  }
  return status;
}

static int docall(lua_State *L, int narg, int nres) {
  int base = lua_gettop(L) - narg;
  lua_pushcfunction(L, msghandler);
  lua_insert(L, base);
  int status = lua_pcall(L, narg, nres, base);
  lua_remove(L, base);
  return status;
}

/* The global arg: script at 0, interpreter and options below, args above. */
static void createargtable(lua_State *L, char **argv, int argc, int script) {
  if (script == argc) script = 0;   /* no script: everything is an option */
  lua_createtable(L, argc - script - 1, script + 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
}

static int pushargs(lua_State *L) {
  if (lua_getglobal(L, "arg") != LUA_TTABLE) luaL_error(L, "'arg' is not a table");
  int n = (int)luaL_len(L, -1);
  luaL_checkstack(L, n + 3, "too many arguments to script");
  int i;
  for (i = 1; i <= n; i++) lua_rawgeti(L, -i, i);
  lua_remove(L, -i);
  return n;
}

static int pmain(lua_State *L) {
  int argc = (int)lua_tointeger(L, 1);
  char **argv = (char **)lua_touserdata(L, 2);
  luaL_openlibs(L);
  /* Find the script: the first argument that is not an option. */
  int script = 1;
  for (; script < argc; script++) {
    const char *a = argv[script];
    if (a[0] != '-' || strcmp(a, "-") == 0) break;
    if (strcmp(a, "--") == 0) { script++; break; }
    if ((strcmp(a, "-e") == 0 || strcmp(a, "-l") == 0) && script + 1 < argc) script++;
  }
  createargtable(L, argv, argc, script);
  for (int i = 1; i < script; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--") == 0) break;
    if (strcmp(a, "-v") == 0) { printf("%s\n", LUA_COPYRIGHT); continue; }
    if ((strcmp(a, "-e") == 0 || strcmp(a, "-l") == 0) && i + 1 < argc) {
      const char *v = argv[++i];
      int status;
      if (a[1] == 'e') {
        status = luaL_loadbuffer(L, v, strlen(v), "=(command line)");
        if (status == LUA_OK) status = docall(L, 0, 0);
      } else {
        lua_getglobal(L, "require");
        lua_pushstring(L, v);
        status = docall(L, 1, 1);
        if (status == LUA_OK) lua_setglobal(L, v);
      }
      if (report(L, status) != LUA_OK) { lua_pushboolean(L, 0); return 1; }
      continue;
    }
    fprintf(stderr, "%s: unrecognized option '%s'\n", progname, a);
    lua_pushboolean(L, 0);
    return 1;
  }
  if (script < argc) {
    const char *fname = argv[script];
    if (strcmp(fname, "-") == 0 && strcmp(argv[script - 1], "--") != 0) fname = NULL;   /* stdin */
    int status = luaL_loadfile(L, fname);
    if (status == LUA_OK) {
      int n = pushargs(L);
      status = docall(L, n, LUA_MULTRET);
    }
    if (report(L, status) != LUA_OK) { lua_pushboolean(L, 0); return 1; }
  }
  lua_pushboolean(L, 1);
  return 1;
}

int main(int argc, char **argv) {
  lua_State *L = luaL_newstate();
  if (!L) {
    fprintf(stderr, "%s: cannot create state: not enough memory\n", progname);
    return EXIT_FAILURE;
  }
  lua_pushcfunction(L, pmain);
  lua_pushinteger(L, argc);
  lua_pushlightuserdata(L, argv);
  int status = lua_pcall(L, 2, 1, 0);
  int ok = lua_toboolean(L, -1);
  report(L, status);
  lua_close(L);
  return (ok && status == LUA_OK) ? EXIT_SUCCESS : EXIT_FAILURE;
}
