/*
** la_tok_util.h -- what the tokenizer's C files share: growing arrays,
** UTF-8 reading and writing, Unicode White_Space, a byte buffer, and a
** PCRE2 regex compiled the way every tokenizer pattern is (UTF, Unicode
** properties, invalid UTF-8 allowed).  Internal to engine/tokenizer/.
*/
#ifndef LA_TOK_UTIL_H
#define LA_TOK_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "la.h"

/* Grows *p (of *cap elements of size el) to hold at least need elements. */
static inline int tk_grow(void *pp, size_t *cap, size_t need, size_t el) {
  if (need <= *cap) return 0;
  size_t nc = *cap ? *cap : 16;
  while (nc < need) {
    if (nc > SIZE_MAX / 2 / el) return la_failn("tokenizer: out of memory");
    nc *= 2;
  }
  void *np = realloc(*(void **)pp, nc * el);
  if (!np) return la_failn("tokenizer: out of memory (%zu bytes)", nc * el);
  *(void **)pp = np;
  *cap = nc;
  return 0;
}

/* Length of the UTF-8 character at s (1 for a byte that starts none), and
** its code point in *cp (-1 when invalid). */
static inline size_t tk_utf8(const unsigned char *s, size_t n, int32_t *cp) {
  unsigned c = s[0];
  *cp = -1;
  if (c < 0x80) { *cp = (int32_t)c; return 1; }
  size_t len;
  uint32_t v, min;
  if (c >= 0xC2 && c <= 0xDF) { len = 2; v = c & 0x1F; min = 0x80; }
  else if (c >= 0xE0 && c <= 0xEF) { len = 3; v = c & 0x0F; min = 0x800; }
  else if (c >= 0xF0 && c <= 0xF4) { len = 4; v = c & 0x07; min = 0x10000; }
  else return 1;
  if (n < len) return 1;
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xC0) != 0x80) return 1;
    v = (v << 6) | (s[i] & 0x3F);
  }
  if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 1;
  *cp = (int32_t)v;
  return len;
}

/* Writes cp as UTF-8 (up to 4 bytes); returns the length. */
static inline size_t tk_put_utf8(char *out, uint32_t cp) {
  if (cp < 0x80) { out[0] = (char)cp; return 1; }
  if (cp < 0x800) {
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = (char)(0xE0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  out[0] = (char)(0xF0 | (cp >> 18));
  out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
  out[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/* Unicode's White_Space property (what Rust's char::is_whitespace and
** Python's str.isspace test, and what GPT-2's \s means). */
static inline bool tk_is_ws(int32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

/* A growable byte buffer. */
typedef struct {
  char *p;
  size_t n, cap;
} tk_buf;

static inline int tk_buf_put(tk_buf *b, const char *s, size_t n) {
  if (tk_grow(&b->p, &b->cap, b->n + n + 1, 1) < 0) return -1;
  if (n) memcpy(b->p + b->n, s, n);   /* s may be NULL when n is 0 */
  b->n += n;
  return 0;
}

static inline void tk_buf_free(tk_buf *b) {
  free(b->p);
  b->p = NULL;
  b->n = b->cap = 0;
}

/* A compiled pattern with its match data.  literal: the pattern is plain
** text to find, not a regex.  gpt2: the pattern is GPT-2's
** (la_bpe_gpt2_pattern), whose matches over ASCII tk_gpt2_ascii finds. */
typedef struct {
  pcre2_code *re;
  pcre2_match_data *md;
  bool jit;
  bool gpt2;
} tk_regex;

int tk_regex_compile(tk_regex *r, const char *pattern, size_t len, bool literal, const char *what);
void tk_regex_free(tk_regex *r);

/* ASCII's classes in GPT-2's pattern: \p{L}, \p{N}, White_Space, and the
** rest ([^\s\p{L}\p{N}]), by byte (tk_ascii_classes); TK_HIGH for a byte
** >= 0x80, which only PCRE2 classifies (a character beyond ASCII, or not
** UTF-8 at all). */
enum { TK_LETTER = 'L', TK_DIGIT = 'N', TK_SPACE = 'S', TK_OTHER = 'o', TK_HIGH = 'H' };
extern const char tk_ascii_classes[128];

static inline int tk_ascii_class(unsigned char c) { return c < 0x80 ? tk_ascii_classes[c] : TK_HIGH; }

/* The match of GPT-2's pattern
**   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
** that starts at s[off] (off < n), found without PCRE2 when every byte it
** looks at is ASCII: 1 with the match's end in *me, or 0 when a byte >= 0x80
** takes part in the decision (PCRE2 then matches from off).  Every ASCII
** character starts a match of one alternative, taken in the pattern's
** order (PCRE2's leftmost-first), each run greedy as there.  Most text is
** ASCII, and a PCRE2 call per pre-token costs more than the rest of
** encoding it from the word cache. */
static inline int tk_gpt2_ascii(const unsigned char *s, size_t n, size_t off, size_t *me) {
  size_t i = off;
  int c = tk_ascii_class(s[i]);
  if (c == TK_HIGH) return 0;
  if (s[i] == '\'' && i + 1 < n) {   /* the contractions, byte for byte */
    unsigned char a = s[i + 1], b = i + 2 < n ? s[i + 2] : 0;
    if (a == 's' || a == 't' || a == 'm' || a == 'd') { *me = i + 2; return 1; }
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) { *me = i + 3; return 1; }
  }
  if (s[i] == ' ' && i + 1 < n) {   /* " ?": a space joins a run of letters, digits or the rest after it */
    int next = tk_ascii_class(s[i + 1]);
    if (next == TK_HIGH) return 0;
    if (next != TK_SPACE) c = next, i++;
  }
  size_t j = i + 1;
  while (j < n && tk_ascii_class(s[j]) == c) j++;
  if (j < n && s[j] >= 0x80) return 0;   /* the run may go on beyond ASCII */
  /* \s+(?!\S): a run of spaces before a non-space leaves its last one to
  ** the next match, unless it is the only one (then \s+ takes it). */
  if (c == TK_SPACE && j < n && j - 1 > off) j--;
  *me = j;
  return 1;
}

/* tk_regex_next through PCRE2. */
int tk_regex_pcre2_next(tk_regex *r, const char *s, size_t n, size_t off, size_t *ms, size_t *me);

/* The next non-empty match in s[off, n): 1 with *ms, *me set, 0 when there
** is none, -1 on error.  An empty match steps over one character. */
static inline int tk_regex_next(tk_regex *r, const char *s, size_t n, size_t off, size_t *ms, size_t *me) {
  if (r->gpt2 && off < n && tk_gpt2_ascii((const unsigned char *)s, n, off, me)) {
    *ms = off;
    return 1;
  }
  return tk_regex_pcre2_next(r, s, n, off, ms, me);
}

/* A copy of s[0, n) with a NUL after it (malloc'd), or NULL with the error set. */
char *tk_memdup(const char *s, size_t n);

/* Replace: every non-empty match of a pattern (a regex, or literal text)
** becomes `text` -- the Replace normalizer's and decoder's rule. */
typedef struct {
  tk_regex re;
  char *text;
  size_t tlen;
  char *lit;       /* the pattern when literal: found with memchr, not PCRE2 */
  size_t llen;
} tk_replace;

int tk_replace_init(tk_replace *r, const char *pattern, size_t plen, bool literal, const char *text, size_t tlen,
                    const char *what);
void tk_replace_free(tk_replace *r);
/* Appends s with the replacements made to out. */
int tk_replace_run(tk_replace *r, const char *s, size_t n, tk_buf *out);

#endif
