/*
** lua_regex.c -- core.regex_fullmatch(pattern, subject): whether a regular
** expression matches the whole of a string, as Python's re.fullmatch (and
** then its capture groups, as strings or false), for the
** module-name patterns of adapter configs (PEFT's target_modules,
** rank_pattern, ...).  Patterns are PCRE2's dialect, which agrees with
** Python's re on the syntax such patterns use (classes, groups,
** alternation, repetition, lookahead).
*/
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "lua_la.h"

static int l_regex_fullmatch(lua_State *L) {
  size_t plen, slen;
  const char *pattern = luaL_checklstring(L, 1, &plen);
  const char *subject = luaL_checklstring(L, 2, &slen);
  int err;
  PCRE2_SIZE erroff;
  pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, plen, PCRE2_ANCHORED | PCRE2_ENDANCHORED | PCRE2_UTF,
                                 &err, &erroff, NULL);
  if (!re) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    return luaL_error(L, "regex '%s': %s at offset %d", pattern, (const char *)msg, (int)erroff);
  }
  pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
  int rc = md ? pcre2_match(re, (PCRE2_SPTR)subject, slen, 0, 0, md, NULL) : PCRE2_ERROR_NOMEMORY;
  uint32_t groups = 0;
  pcre2_pattern_info(re, PCRE2_INFO_CAPTURECOUNT, &groups);
  int pushed = 1;
  lua_pushboolean(L, rc >= 0);
  if (rc >= 0 && lua_checkstack(L, (int)groups + 1)) {
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    for (uint32_t g = 1; g <= groups; g++, pushed++) {
      if ((int)g < rc && ov[2 * g] != PCRE2_UNSET) lua_pushlstring(L, subject + ov[2 * g], ov[2 * g + 1] - ov[2 * g]);
      else lua_pushboolean(L, 0);
    }
  }
  pcre2_match_data_free(md);
  pcre2_code_free(re);
  if (rc < 0 && rc != PCRE2_ERROR_NOMATCH)
    return luaL_error(L, "regex '%s': matching failed (PCRE2 error %d)", pattern, rc);
  return pushed;
}

void lt_open_regex(lua_State *L) {
  lua_pushcfunction(L, l_regex_fullmatch);
  lua_setfield(L, -2, "regex_fullmatch");
}
