/*
** la_tok_util.c -- the tokenizer's PCRE2 patterns (see la_tok_util.h).
*/
#include "la_tok_util.h"

#include "la_tokenizer.h"

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
  r->gpt2 = !literal && len == strlen(la_bpe_gpt2_pattern) && memcmp(pattern, la_bpe_gpt2_pattern, len) == 0;
  r->md = pcre2_match_data_create_from_pattern(r->re, NULL);
  if (!r->md) {
    tk_regex_free(r);
    return la_failn("tokenizer: out of memory");
  }
  return 0;
}

/* The classes of ASCII bytes, one letter each (see la_tok_util.h). */
const char tk_ascii_classes[128] =
    "oooooooooSSSSSoooooooooooooooooo"    /* 0x00-0x1F: \t \n \v \f \r are White_Space */
    "SoooooooooooooooNNNNNNNNNNoooooo"    /* 0x20-0x3F: space, punctuation, 0-9 */
    "oLLLLLLLLLLLLLLLLLLLLLLLLLLooooo"    /* 0x40-0x5F: A-Z */
    "oLLLLLLLLLLLLLLLLLLLLLLLLLLooooo";   /* 0x60-0x7F: a-z */

int tk_regex_pcre2_next(tk_regex *r, const char *s, size_t n, size_t off, size_t *ms, size_t *me) {
  while (off < n) {
    int rc = r->jit ? pcre2_jit_match(r->re, (PCRE2_SPTR)s, n, off, 0, r->md, NULL)
                    : pcre2_match(r->re, (PCRE2_SPTR)s, n, off, 0, r->md, NULL);
    if (rc == PCRE2_ERROR_NOMATCH) return 0;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      return la_failn("tokenizer: regex match failed at byte %zu: %s", off, (const char *)msg);
    }
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(r->md);
    if (ov[1] > ov[0]) {
      *ms = ov[0];
      *me = ov[1];
      return 1;
    }
    int32_t cp;
    off = ov[0] + tk_utf8((const unsigned char *)s + ov[0], n - ov[0], &cp);
  }
  return 0;
}

void tk_regex_free(tk_regex *r) {
  if (r->md) pcre2_match_data_free(r->md);
  if (r->re) pcre2_code_free(r->re);
  r->md = NULL;
  r->re = NULL;
}

char *tk_memdup(const char *s, size_t n) {
  char *p = malloc(n + 1);
  if (!p) return la_fail("tokenizer: out of memory");
  memcpy(p, s, n);
  p[n] = 0;
  return p;
}

int tk_replace_init(tk_replace *r, const char *pattern, size_t plen, bool literal, const char *text, size_t tlen,
                    const char *what) {
  memset(r, 0, sizeof *r);
  if (!pattern || plen == 0) return la_failn("tokenizer: the %s needs a non-empty pattern", what);
  if (!(r->text = tk_memdup(text ? text : "", text ? tlen : 0))) return -1;
  r->tlen = text ? tlen : 0;
  if (literal) {
    if (!(r->lit = tk_memdup(pattern, plen))) {
      tk_replace_free(r);
      return -1;
    }
    r->llen = plen;
    return 0;
  }
  if (tk_regex_compile(&r->re, pattern, plen, false, what) < 0) {
    tk_replace_free(r);
    return -1;
  }
  return 0;
}

void tk_replace_free(tk_replace *r) {
  tk_regex_free(&r->re);
  free(r->text);
  free(r->lit);
  r->text = r->lit = NULL;
}

/* The next occurrence of the literal pattern in s[off, n): 1 with *ms, *me. */
static int tk_literal_next(const tk_replace *r, const char *s, size_t n, size_t off, size_t *ms, size_t *me) {
  while (off + r->llen <= n) {
    const char *q = memchr(s + off, r->lit[0], n - off - r->llen + 1);
    if (!q) return 0;
    size_t at = (size_t)(q - s);
    if (memcmp(q, r->lit, r->llen) == 0) {
      *ms = at;
      *me = at + r->llen;
      return 1;
    }
    off = at + 1;
  }
  return 0;
}

int tk_replace_run(tk_replace *r, const char *s, size_t n, tk_buf *out) {
  size_t off = 0;
  for (;;) {
    size_t ms = 0, me = 0;
    int rc = r->lit ? tk_literal_next(r, s, n, off, &ms, &me) : tk_regex_next(&r->re, s, n, off, &ms, &me);
    if (rc < 0) return -1;
    if (rc == 0) break;
    if (tk_buf_put(out, s + off, ms - off) < 0 || tk_buf_put(out, r->text, r->tlen) < 0) return -1;
    off = me;
  }
  return tk_buf_put(out, s + off, n - off);
}
