/*
** la_tok_util.c -- the tokenizer's PCRE2 patterns (see la_tok_util.h).
*/
#include "la_tok_util.h"

int tk_regex_compile(tk_regex *r, const char *pattern, size_t len, bool literal, const char *what) {
  int err;
  PCRE2_SIZE erroff;
  /* PCRE2_LITERAL allows UTF but not UCP (nothing to classify in plain text). */
  uint32_t flags = PCRE2_UTF | PCRE2_MATCH_INVALID_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
  memset(r, 0, sizeof *r);
  r->re = pcre2_compile((PCRE2_SPTR)pattern, len, flags, &err, &erroff, NULL);
  if (!r->re) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    return la_failn("tokenizer: bad %s regex at offset %zu: %s", what, (size_t)erroff, (const char *)msg);
  }
  r->jit = pcre2_jit_compile(r->re, PCRE2_JIT_COMPLETE) == 0;
  r->md = pcre2_match_data_create_from_pattern(r->re, NULL);
  if (!r->md) {
    tk_regex_free(r);
    return la_failn("tokenizer: out of memory");
  }
  return 0;
}

void tk_regex_free(tk_regex *r) {
  if (r->md) pcre2_match_data_free(r->md);
  if (r->re) pcre2_code_free(r->re);
  r->md = NULL;
  r->re = NULL;
}
