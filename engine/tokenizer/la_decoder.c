/*
** la_decoder.c -- tokenizer.json decoders.  As in Hugging Face's
** `tokenizers`, a decoder works on the list of token strings: each step
** maps the list to a new one (some join tokens), and the result is the
** concatenation of the last list.
**
** A list is a buffer of bytes with the (offset, length) of each token.
*/
#include "la_tok_parts.h"
#include "la_tok_util.h"
#include "la_tokenizer.h"

typedef struct {
  la_dec_kind kind;
  tk_replace rep;      /* REPLACE */
  char *text;          /* METASPACE, STRIP: the character */
  size_t tlen;
  int a, b;
} dc_step;

struct la_decoder {
  dc_step *steps;
  size_t n, cap;
};

typedef struct {
  tk_buf bytes;
  size_t *off, *len;
  size_t n, cap;
} dc_list;

la_decoder *la_decoder_new(void) {
  la_decoder *d = calloc(1, sizeof *d);
  if (!d) return la_fail("tokenizer: out of memory");
  return d;
}

void la_decoder_free(la_decoder *d) {
  if (!d) return;
  for (size_t i = 0; i < d->n; i++) {
    tk_replace_free(&d->steps[i].rep);
    free(d->steps[i].text);
  }
  free(d->steps);
  free(d);
}

int la_decoder_add(la_decoder *d, la_dec_kind kind, const char *pattern, size_t plen, bool literal,
                   const char *text, size_t tlen, int a, int b) {
  if (tk_grow(&d->steps, &d->cap, d->n + 1, sizeof *d->steps) < 0) return -1;
  dc_step *s = &d->steps[d->n];
  memset(s, 0, sizeof *s);
  s->kind = kind;
  s->a = a;
  s->b = b;
  if (kind == LA_DEC_REPLACE) {
    if (tk_replace_init(&s->rep, pattern, plen, literal, text, tlen, "Replace decoder") < 0) return -1;
    d->n++;
    return 0;
  }
  if ((kind == LA_DEC_METASPACE || kind == LA_DEC_STRIP) && (!text || tlen == 0))
    return la_failn("tokenizer: the %s decoder needs its character", kind == LA_DEC_STRIP ? "Strip" : "Metaspace");
  if (text && !(s->text = tk_memdup(text, tlen))) return -1;
  s->tlen = text ? tlen : 0;
  d->n++;
  return 0;
}

static void dc_list_free(dc_list *l) {
  tk_buf_free(&l->bytes);
  free(l->off);
  free(l->len);
}

/* Starts a new token at the end of the buffer. */
static int dc_begin(dc_list *l) {
  size_t c1 = l->cap, c2 = l->cap;
  if (tk_grow(&l->off, &c1, l->n + 1, sizeof *l->off) < 0 || tk_grow(&l->len, &c2, l->n + 1, sizeof *l->len) < 0)
    return -1;
  l->cap = c1 < c2 ? c1 : c2;
  l->off[l->n] = l->bytes.n;
  l->len[l->n] = 0;
  l->n++;
  return 0;
}

/* Appends bytes to the last token. */
static int dc_put(dc_list *l, const char *s, size_t n) {
  if (tk_buf_put(&l->bytes, s, n) < 0) return -1;
  l->len[l->n - 1] += n;
  return 0;
}

static int dc_token(dc_list *l, const char *s, size_t n) {
  return dc_begin(l) < 0 ? -1 : dc_put(l, s, n);
}

/* The byte of a "<0xXX>" token, or -1. */
static int dc_byte_token(const char *s, size_t n) {
  if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
  int v = 0;
  for (int i = 3; i < 5; i++) {
    char c = s[i];
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

static bool dc_valid_utf8(const char *s, size_t n) {
  for (size_t i = 0; i < n;) {
    int32_t cp;
    i += tk_utf8((const unsigned char *)s + i, n - i, &cp);
    if (cp < 0) return false;
  }
  return true;
}

static int dc_flush_bytes(dc_list *out, tk_buf *pend) {
  if (pend->n == 0) return 0;
  int rc;
  if (dc_valid_utf8(pend->p, pend->n)) rc = dc_token(out, pend->p, pend->n);
  else {
    rc = 0;
    for (size_t i = 0; i < pend->n && rc == 0; i++) rc = dc_token(out, "\xEF\xBF\xBD", 3);
  }
  pend->n = 0;
  return rc;
}

static int dc_step_run(dc_step *st, const dc_list *in, dc_list *out) {
  const char *base = in->bytes.p;
  switch (st->kind) {
    case LA_DEC_FUSE:
    case LA_DEC_JOIN:
    case LA_DEC_BYTELEVEL:
      if (dc_begin(out) < 0) return -1;
      for (size_t i = 0; i < in->n; i++) {
        const char *s = base + in->off[i];
        size_t n = in->len[i];
        if (st->kind == LA_DEC_JOIN && i > 0 && dc_put(out, " ", 1) < 0) return -1;
        if (st->kind != LA_DEC_BYTELEVEL) {
          if (dc_put(out, s, n) < 0) return -1;
          continue;
        }
        /* every character a stand-in: its bytes; otherwise the token as it is */
        size_t mark = out->bytes.n;
        bool level = true;
        for (size_t j = 0; j < n && level;) {
          int32_t cp;
          j += tk_utf8((const unsigned char *)s + j, n - j, &cp);
          int b = cp >= 0 ? la_bpe_unicode_to_byte((uint32_t)cp) : -1;
          char c = (char)b;
          if (b < 0) level = false;
          else if (dc_put(out, &c, 1) < 0) return -1;
        }
        if (!level) {
          out->len[out->n - 1] -= out->bytes.n - mark;
          out->bytes.n = mark;
          if (dc_put(out, s, n) < 0) return -1;
        }
      }
      return 0;
    case LA_DEC_BYTEFALLBACK: {
      tk_buf pend = {0};
      int rc = 0;
      for (size_t i = 0; i < in->n && rc == 0; i++) {
        int b = dc_byte_token(base + in->off[i], in->len[i]);
        if (b >= 0) {
          char c = (char)b;
          rc = tk_buf_put(&pend, &c, 1);
        } else {
          rc = dc_flush_bytes(out, &pend);
          if (rc == 0) rc = dc_token(out, base + in->off[i], in->len[i]);
        }
      }
      if (rc == 0) rc = dc_flush_bytes(out, &pend);
      tk_buf_free(&pend);
      return rc;
    }
    case LA_DEC_METASPACE:
      for (size_t i = 0; i < in->n; i++) {
        const char *s = base + in->off[i];
        size_t n = in->len[i], from = 0;
        bool drop = i == 0 && st->a != LA_PREPEND_NEVER;
        if (dc_begin(out) < 0) return -1;
        for (size_t j = 0; j + st->tlen <= n;) {
          if (memcmp(s + j, st->text, st->tlen) != 0) { j++; continue; }
          if (dc_put(out, s + from, j - from) < 0 || (!drop && dc_put(out, " ", 1) < 0)) return -1;
          j += st->tlen;
          from = j;
        }
        if (dc_put(out, s + from, n - from) < 0) return -1;
      }
      return 0;
    case LA_DEC_STRIP:
      for (size_t i = 0; i < in->n; i++) {
        const char *s = base + in->off[i];
        size_t n = in->len[i], a = 0, b = n, c = st->tlen;
        for (int k = 0; k < st->a && b - a >= c && memcmp(s + a, st->text, c) == 0; k++) a += c;
        for (int k = 0; k < st->b && b - a >= c && memcmp(s + b - c, st->text, c) == 0; k++) b -= c;
        if (dc_token(out, s + a, b - a) < 0) return -1;
      }
      return 0;
    case LA_DEC_REPLACE:
      for (size_t i = 0; i < in->n; i++) {
        if (dc_begin(out) < 0) return -1;
        size_t before = out->bytes.n;
        if (tk_replace_run(&st->rep, base + in->off[i], in->len[i], &out->bytes) < 0) return -1;
        out->len[out->n - 1] += out->bytes.n - before;
      }
      return 0;
  }
  return la_failn("tokenizer: unknown decoder step %d", (int)st->kind);
}

int la_decoder_run(la_decoder *d, const char *const *tokens, const size_t *lens, size_t n, char **out,
                   size_t *outlen) {
  dc_list a = {0}, b = {0};
  int rc = 0;
  for (size_t i = 0; i < n && rc == 0; i++) rc = dc_token(&a, tokens[i], lens[i]);
  for (size_t k = 0; k < d->n && rc == 0; k++) {
    b.n = 0;
    b.bytes.n = 0;
    rc = dc_step_run(&d->steps[k], &a, &b);
    dc_list t = a;
    a = b;
    b = t;
  }
  if (rc == 0) {
    tk_buf r = {0};
    for (size_t i = 0; i < a.n && rc == 0; i++) rc = tk_buf_put(&r, a.bytes.p + a.off[i], a.len[i]);
    if (rc == 0 && tk_buf_put(&r, "", 0) < 0) rc = -1;
    if (rc == 0) {
      *out = r.p;
      *outlen = r.n;
    } else {
      tk_buf_free(&r);
    }
  }
  dc_list_free(&a);
  dc_list_free(&b);
  return rc;
}
