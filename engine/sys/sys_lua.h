/*
** sys_lua.h -- the parts of the module lualign.sys that live in other files.
*/
#ifndef SYS_LUA_H
#define SYS_LUA_H

#include <lua.h>

/* Adds the table 'lineedit' (the REPL's terminal editor) to the table on top. */
void ls_open_lineedit(lua_State *L);

#endif
