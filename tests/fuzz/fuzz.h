/*
** tests/fuzz/fuzz.h -- what the fuzzing harnesses share.
**
** Each harness defines LLVMFuzzerTestOneInput (and may define
** LLVMFuzzerInitialize).  Built with clang -fsanitize=fuzzer it is a libFuzzer
** target (`make fuzz`); built with driver.c instead it replays files, which is
** how `make test` runs the seed corpora and the inputs that once crashed
** (tests/fuzz/regressions/) with any compiler.
**
** A harness reports a broken contract -- an error message of the wrong form,
** a round trip that does not give back its input -- with fz_fail, which
** prints the reason and aborts, so libFuzzer saves the input as a crash.
*/
#ifndef FUZZ_H
#define FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Prints "fuzz: <reason>" and aborts. */
void fz_fail(const char *fmt, ...);
/* A private temporary directory, made on first use, removed at exit. */
const char *fz_tmpdir(void);
/* Writes bytes to <tmpdir>/<name> and returns that path (static buffer). */
const char *fz_write(const char *name, const void *data, size_t size);

#ifdef FUZZ_WITH_LUA
#include <lua.h>
/* A Lua state with the standard libraries, lualign.core and lualign.sys
** preloaded (linked into the harness) and package.path pointing at the
** checkout's lua/ ($LUALIGN_ROOT, default "."), with one thread.  `code` is
** run once and must return a function, left in the registry; fz_call calls
** it with the given string arguments and aborts with its message when it
** raises an error (Lua errors the harness expects are caught in that code). */
lua_State *fz_lua_new(const char *code);
void fz_call(lua_State *L, int nargs, const char *const *args, const size_t *lens);
#endif

#endif
