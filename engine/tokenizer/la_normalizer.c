/*
** la_normalizer.c -- tokenizer.json normalizers: Unicode normal forms and
** case mapping through utf8proc, Strip, Prepend and Replace, applied in
** order.  Text is bytes: each maximal run of valid UTF-8 is normalized, and
** bytes that are not valid UTF-8 are kept between the runs unchanged
** (Hugging Face works on Rust strings, which cannot hold them).
*/
#include <utf8proc.h>

#include "la_tok_parts.h"
#include "la_tok_util.h"

typedef struct {
  la_norm_kind kind;
  char *text;          /* PREPEND */
  size_t tlen;
  tk_replace rep;      /* REPLACE */
  bool a, b;
} nm_step;

struct la_norm {
  nm_step *steps;
  size_t n, cap;
};

la_norm *la_norm_new(void) {
  la_norm *n = calloc(1, sizeof *n);
  if (!n) return la_fail("tokenizer: out of memory");
  return n;
}

void la_norm_free(la_norm *n) {
  if (!n) return;
  for (size_t i = 0; i < n->n; i++) {
    free(n->steps[i].text);
    tk_replace_free(&n->steps[i].rep);
  }
  free(n->steps);
  free(n);
}

int la_norm_add(la_norm *n, la_norm_kind kind, const char *pattern, size_t plen, const char *text, size_t tlen,
                bool a, bool b) {
  if (tk_grow(&n->steps, &n->cap, n->n + 1, sizeof *n->steps) < 0) return -1;
  nm_step *s = &n->steps[n->n];
  memset(s, 0, sizeof *s);
  s->kind = kind;
  s->a = a;
  s->b = b;
  if (kind == LA_NORM_REPLACE) {
    if (tk_replace_init(&s->rep, pattern, plen, a, text, tlen, "Replace normalizer") < 0) return -1;
    n->n++;
    return 0;
  }
  if (text && !(s->text = tk_memdup(text, tlen))) return -1;
  s->tlen = text ? tlen : 0;
  n->n++;
  return 0;
}

/* A normal form of s[0, n) with utf8proc: each maximal run of valid UTF-8
** mapped, bytes that are not UTF-8 kept. */
static int nm_form_chunk(const char *s, size_t len, utf8proc_option_t opts, tk_buf *out) {
  size_t i = 0;
  while (i < len) {
    size_t j = i;
    int32_t cp;
    while (j < len) {   /* the valid run [i, j) */
      size_t k = tk_utf8((const unsigned char *)s + j, len - j, &cp);
      if (cp < 0) break;
      j += k;
    }
    if (j > i) {
      utf8proc_uint8_t *dst = NULL;
      utf8proc_ssize_t m = utf8proc_map((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(j - i), &dst, opts);
      if (m < 0) return la_failn("tokenizer: Unicode normalization failed: %s", utf8proc_errmsg(m));
      int rc = tk_buf_put(out, (const char *)dst, (size_t)m);
      free(dst);
      if (rc < 0) return -1;
    }
    if (j < len) {   /* one invalid byte, kept */
      if (tk_buf_put(out, s + j, 1) < 0) return -1;
      j++;
    }
    i = j;
  }
  return 0;
}

/* A Unicode normal form of s, appended to out.  ASCII is its own normal
** form in all four, and a boundary between two ASCII characters is one no
** normalization crosses (an ASCII character is a starter that never
** combines with what precedes it), so runs of ASCII are copied and only
** the stretches around other characters -- each with the ASCII character
** before it, which a combining mark may join -- go through utf8proc. */
static int nm_form(const char *s, size_t len, utf8proc_option_t opts, tk_buf *out) {
  size_t i = 0;
  while (i < len) {
    size_t j = i;
    while (j < len && (unsigned char)s[j] < 0x80 && (j + 1 == len || (unsigned char)s[j + 1] < 0x80)) j++;
    if (tk_buf_put(out, s + i, j - i) < 0) return -1;
    if (j == len) break;
    size_t k = j + 1;
    while (k < len && (unsigned char)s[k] >= 0x80) k++;
    if (nm_form_chunk(s + j, k - j, opts, out) < 0) return -1;
    i = k;
  }
  return 0;
}

/* Per-character lowercase, as Rust's char::to_lowercase: the simple
** mapping, except U+0130 (capital I with dot) which becomes "i" + U+0307. */
static int nm_lower(const char *s, size_t len, tk_buf *out) {
  for (size_t i = 0; i < len;) {
    int32_t cp;
    size_t k = tk_utf8((const unsigned char *)s + i, len - i, &cp);
    char u[8];
    size_t m;
    if (cp < 0) {
      memcpy(u, s + i, 1);
      m = 1;
    } else if (cp == 0x130) {
      u[0] = 'i';
      m = 1 + tk_put_utf8(u + 1, 0x307);
    } else {
      m = tk_put_utf8(u, (uint32_t)utf8proc_tolower(cp));
    }
    if (tk_buf_put(out, u, m) < 0) return -1;
    i += k;
  }
  return 0;
}

static int nm_strip(const char *s, size_t len, bool left, bool right, tk_buf *out) {
  size_t a = 0, b = len;
  while (left && a < b) {
    int32_t cp;
    size_t k = tk_utf8((const unsigned char *)s + a, b - a, &cp);
    if (cp < 0 || !tk_is_ws(cp)) break;
    a += k;
  }
  while (right && b > a) {   /* step back to the start of the last character */
    size_t st = b - 1;
    while (st > a && ((unsigned char)s[st] & 0xC0) == 0x80 && b - st < 4) st--;
    int32_t cp;
    size_t k = tk_utf8((const unsigned char *)s + st, b - st, &cp);
    if (cp < 0 || st + k != b || !tk_is_ws(cp)) break;
    b = st;
  }
  return tk_buf_put(out, s + a, b - a);
}

static int nm_step_run(nm_step *st, const char *s, size_t len, tk_buf *out) {
  switch (st->kind) {
    case LA_NORM_NFC: return nm_form(s, len, UTF8PROC_STABLE | UTF8PROC_COMPOSE, out);
    case LA_NORM_NFD: return nm_form(s, len, UTF8PROC_STABLE | UTF8PROC_DECOMPOSE, out);
    case LA_NORM_NFKC: return nm_form(s, len, UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT, out);
    case LA_NORM_NFKD: return nm_form(s, len, UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT, out);
    case LA_NORM_LOWERCASE: return nm_lower(s, len, out);
    case LA_NORM_STRIP: return nm_strip(s, len, st->a, st->b, out);
    case LA_NORM_PREPEND:
      if (len > 0 && tk_buf_put(out, st->text, st->tlen) < 0) return -1;
      return tk_buf_put(out, s, len);
    case LA_NORM_REPLACE: return tk_replace_run(&st->rep, s, len, out);
  }
  return la_failn("tokenizer: unknown normalizer step %d", (int)st->kind);
}

int la_norm_apply(la_norm *n, const char *s, size_t len, char **out, size_t *outlen) {
  tk_buf a = {0}, b = {0};
  if (tk_buf_put(&a, s, len) < 0) return -1;
  for (size_t i = 0; i < n->n; i++) {
    b.n = 0;
    if (nm_step_run(&n->steps[i], a.p, a.n, &b) < 0) {
      tk_buf_free(&a);
      tk_buf_free(&b);
      return -1;
    }
    tk_buf t = a;
    a = b;
    b = t;
  }
  tk_buf_free(&b);
  *out = a.p;
  *outlen = a.n;
  return 0;
}
