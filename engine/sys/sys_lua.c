/*
** sys_lua.c -- the module lualign.sys: the few operating-system calls the
** Lua library needs and Lua lacks -- whether an output is a terminal
** (progress bars), creating directories (run folders), listing them,
** renaming with fsync (atomic files), setting an environment variable, a
** digest of a file's bytes (what a cached result was computed from), and
** the REPL's line editor (lineedit.c).
**
** It is a module of its own, built without OpenMP, because lualign/init.lua
** loads it *before* the engine: that is the one moment an environment
** variable can still choose how OpenMP's threads wait (libgomp reads
** OMP_WAIT_POLICY once, when the engine's library is loaded).
*/
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <stdint.h>
#include <stdlib.h>

#include <lauxlib.h>
#include <lua.h>

#include "sys_lua.h"

/* isatty([fd = 1]) -> boolean */
static int ls_isatty(lua_State *L) {
  lua_pushboolean(L, isatty((int)luaL_optinteger(L, 1, 1)) == 1);
  return 1;
}

/* mkdir(path): creates path and its missing parents; true, or nil and a message. */
static int ls_mkdir(lua_State *L) {
  size_t n;
  const char *path = luaL_checklstring(L, 1, &n);
  luaL_Buffer b;
  char *buf = luaL_buffinitsize(L, &b, n + 1);
  memcpy(buf, path, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (buf[i] != '/' && buf[i] != '\0') continue;
    char saved = buf[i];
    buf[i] = '\0';
    if (mkdir(buf, 0777) != 0 && errno != EEXIST) {
      lua_pushnil(L);
      lua_pushfstring(L, "cannot create directory %s: %s", buf, strerror(errno));
      return 2;
    }
    buf[i] = saved;
  }
  struct stat st;
  if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s exists and is not a directory", path);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* listdir(path) -> sorted list of the names in a directory (without . and
** ..), or nil and a message. */
static int ls_listdir(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  DIR *d = opendir(path);
  if (!d) {
    lua_pushnil(L);
    lua_pushfstring(L, "cannot list %s: %s", path, strerror(errno));
    return 2;
  }
  lua_newtable(L);
  lua_Integer n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    lua_pushstring(L, e->d_name);
    lua_rawseti(L, -2, ++n);
  }
  closedir(d);
  lua_getglobal(L, "table");
  lua_getfield(L, -1, "sort");
  lua_pushvalue(L, -3);
  lua_call(L, 1, 0);
  lua_pop(L, 1);
  return 1;
}

/* Flushes a file's data to disk by path. */
static int ls_fsync_path(const char *path, int flags) {
  int fd = open(path, flags);
  if (fd < 0) return -1;
  int rc = fsync(fd);
  close(fd);
  return rc;
}

/* commit(tmp, path): fsyncs tmp, renames it over path and fsyncs the
** directory, so path holds either its old or its new contents after a
** crash.  true, or nil and a message (tmp is removed on failure). */
static int ls_commit(lua_State *L) {
  const char *tmp = luaL_checkstring(L, 1), *path = luaL_checkstring(L, 2);
  if (ls_fsync_path(tmp, O_RDONLY) != 0 || rename(tmp, path) != 0) {
    int e = errno;
    remove(tmp);
    lua_pushnil(L);
    lua_pushfstring(L, "cannot write %s: %s", path, strerror(e));
    return 2;
  }
  const char *slash = strrchr(path, '/');
  lua_pushlstring(L, path, slash ? (size_t)(slash - path) : 0);
  const char *dir = lua_tostring(L, -1);
  ls_fsync_path(dir[0] ? dir : ".", O_RDONLY | O_DIRECTORY);
  lua_pushboolean(L, 1);
  return 1;
}

/* setenv_default(name, value): sets name unless it is already set; returns
** the value in force afterwards. */
static int ls_setenv_default(lua_State *L) {
  const char *name = luaL_checkstring(L, 1), *value = luaL_checkstring(L, 2);
  if (setenv(name, value, 0) != 0) return luaL_error(L, "setenv %s: %s", name, strerror(errno));
  lua_pushstring(L, getenv(name));
  return 1;
}

/* The digest of file_digest: 8-byte words folded into two lanes with
** multiply-rotate steps, then the length and a final avalanche (splitmix64's
** finalizer).  It tells files apart (a changed byte changes it); it is not
** cryptographic and does not authenticate anything. */
typedef struct ls_digest { uint64_t a, b, n; } ls_digest;

static uint64_t ls_rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static uint64_t ls_avalanche(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

static void ls_digest_word(ls_digest *d, uint64_t w) {
  if (d->n++ & 1) d->b = ls_rotl(d->b ^ (w * 0xC2B2AE3D27D4EB4FULL), 29) * 0x9E3779B97F4A7C15ULL;
  else d->a = ls_rotl(d->a ^ (w * 0x9E3779B97F4A7C15ULL), 31) * 0xC2B2AE3D27D4EB4FULL;
}

/* file_digest(path) -> 16 hex digits and the size in bytes, or nil and a message. */
static int ls_file_digest(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  FILE *f = fopen(path, "rb");
  if (!f) {
    lua_pushnil(L);
    lua_pushfstring(L, "cannot read %s: %s", path, strerror(errno));
    return 2;
  }
  enum { CHUNK = 1 << 20 };
  unsigned char *buf = malloc(CHUNK);
  if (!buf) {
    fclose(f);
    return luaL_error(L, "file_digest: out of memory");
  }
  ls_digest d = {0x243F6A8885A308D3ULL, 0x13198A2E03707344ULL, 0};
  uint64_t total = 0;
  size_t got;
  while ((got = fread(buf, 1, CHUNK, f)) > 0) {
    size_t i = 0;
    for (; i + 8 <= got; i += 8) {
      uint64_t w;
      memcpy(&w, buf + i, 8);
      ls_digest_word(&d, w);
    }
    if (i < got) {              /* only the file's last chunk can end mid-word */
      uint64_t w = 0;
      memcpy(&w, buf + i, got - i);
      ls_digest_word(&d, w ^ ((uint64_t)(got - i) << 56));
    }
    total += got;
  }
  int failed = ferror(f);
  free(buf);
  fclose(f);
  if (failed) {
    lua_pushnil(L);
    lua_pushfstring(L, "cannot read %s: read error", path);
    return 2;
  }
  char hex[17];
  snprintf(hex, sizeof hex, "%016llx", (unsigned long long)ls_avalanche(d.a ^ ls_rotl(d.b, 17) ^ total));
  lua_pushstring(L, hex);
  lua_pushinteger(L, (lua_Integer)total);
  return 2;
}

static const luaL_Reg ls_funcs[] = {
  {"isatty", ls_isatty}, {"mkdir", ls_mkdir}, {"listdir", ls_listdir}, {"commit", ls_commit},
  {"setenv_default", ls_setenv_default}, {"file_digest", ls_file_digest},
  {NULL, NULL}
};

int luaopen_lualign_sys(lua_State *L);

int luaopen_lualign_sys(lua_State *L) {
  luaL_newlib(L, ls_funcs);
  ls_open_lineedit(L);
  return 1;
}
