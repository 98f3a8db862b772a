/*
** tests/fuzz/fuzz_bpe.c -- the C side of the tokenizer loaders on arbitrary
** input: what tokenizer.lua hands to the engine after lua-cjson has parsed
** tokenizer.json or encoder.json (vocabulary spellings by id, merges, added
** tokens), vocab.bpe text, and then encode and decode.
**
** Input layout: one flags byte, then sections separated by NUL bytes:
**   1. vocabulary spellings, one per line (la_bpe_add_token)
**   2. merges: vocab.bpe text (la_bpe_add_merges_text)
**   3. special tokens, one per line (la_bpe_add_special; a line "=N text"
**      asks for id N)
**   4. text to encode (and texts to train on, when flag 0x08 is set)
** Flags: 0x01 add_prefix_space, 0x02 the merge heap for every word, 0x04
** split special tokens, 0x08 train a tokenizer on section 4, 0x10 a
** one-character pattern instead of GPT-2's.
** Every call must succeed or fail with a message; what encode returns must
** be valid ids that decode.  With GPT-2's pattern, the pre-tokens must be
** those PCRE2 alone finds (GPT-2's pattern is matched over ASCII without it).
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "la.h"
#include "la_tokenizer.h"
#include "fuzz.h"

typedef struct { const char *p; size_t n; } span;

static void check_failed(const char *what) {
  const char *e = la_error();
  if (!e || !*e) fz_fail("%s failed without a message", what);
}

/* GPT-2's pattern in other words, which PCRE2 alone matches. */
static la_bpe *pcre_only;

typedef struct {
  size_t *len;
  size_t n, cap;
} piece_lens;

static int collect_len(void *ctx, const char *p, size_t len) {
  (void)p;
  piece_lens *c = ctx;
  if (c->n == c->cap) {
    c->cap = c->cap ? 2 * c->cap : 64;
    c->len = realloc(c->len, c->cap * sizeof *c->len);
    if (!c->len) fz_fail("out of memory");
  }
  c->len[c->n++] = len;
  return 0;
}

static void check_split(la_bpe *t, span text) {
  piece_lens a = {0}, b = {0};
  if (la_bpe_pretokenize(t, text.p, text.n, collect_len, &a) < 0) fz_fail("pretokenize failed: %s", la_error());
  if (la_bpe_pretokenize(pcre_only, text.p, text.n, collect_len, &b) < 0) fz_fail("pretokenize failed: %s", la_error());
  if (a.n != b.n || (a.n && memcmp(a.len, b.len, a.n * sizeof *a.len)))
    fz_fail("GPT-2's pattern splits the text otherwise than PCRE2 alone");
  free(a.len);
  free(b.len);
}

static void exercise(la_bpe *t, span text, int flags) {
  if (!(flags & 0x10)) check_split(t, text);
  if (flags & 0x02) la_bpe_set_heap_threshold(t, 0);
  la_ids ids = {0};
  if (la_bpe_encode(t, text.p, text.n, !(flags & 0x04), &ids) < 0) {
    check_failed("encode");
    la_ids_free(&ids);
    return;
  }
  size_t total = 0;
  for (size_t i = 0; i < ids.n; i++) {
    size_t len;
    if (!la_bpe_token_bytes(t, ids.ids[i], &len)) fz_fail("encode gave id %d, outside the vocabulary", ids.ids[i]);
    total += len;
  }
  (void)total;
  /* Encoding the same text twice (the second from the word cache) agrees. */
  la_ids again = {0};
  if (la_bpe_encode(t, text.p, text.n, !(flags & 0x04), &again) < 0) fz_fail("second encode failed: %s", la_error());
  if (again.n != ids.n || (ids.n && memcmp(again.ids, ids.ids, ids.n * sizeof *ids.ids)))
    fz_fail("encoding twice gave different ids");
  la_ids_free(&again);
  la_ids_free(&ids);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc; (void)argv;
  la_set_num_threads(1);
  char pattern[512];
  snprintf(pattern, sizeof pattern, "(?:%s)", la_bpe_gpt2_pattern);
  pcre_only = la_bpe_new(pattern, false);
  if (!pcre_only) fz_fail("la_bpe_new failed: %s", la_error());
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  int flags = data[0];
  span sec[4] = {{0}};
  const char *p = (const char *)data + 1, *end = (const char *)data + size;
  for (int k = 0; k < 4; k++) {
    const char *z = k < 3 ? memchr(p, 0, (size_t)(end - p)) : NULL;
    sec[k].p = p;
    sec[k].n = (size_t)((z ? z : end) - p);
    p = z ? z + 1 : end;
  }
  if (flags & 0x08) {
    /* Train on the lines of section 4, with the lines of section 3 as specials. */
    const char *texts[16], *specials[8];
    size_t lens[16], slens[8], nt = 0, ns = 0;
    for (const char *q = sec[3].p, *e3 = sec[3].p + sec[3].n; q < e3 && nt < 16;) {
      const char *nl = memchr(q, '\n', (size_t)(e3 - q));
      texts[nt] = q;
      lens[nt++] = (size_t)((nl ? nl : e3) - q);
      q = nl ? nl + 1 : e3;
    }
    for (const char *q = sec[2].p, *e2 = sec[2].p + sec[2].n; q < e2 && ns < 8;) {
      const char *nl = memchr(q, '\n', (size_t)(e2 - q));
      specials[ns] = q;
      slens[ns++] = (size_t)((nl ? nl : e2) - q);
      q = nl ? nl + 1 : e2;
    }
    la_bpe *t = la_bpe_train(texts, lens, nt, specials, slens, ns, 256 + (flags >> 5) * 8, 1,
                             (flags & 0x10) ? "(?s)." : NULL);
    if (!t) { check_failed("train"); return 0; }
    for (size_t i = 0; i < ns; i++)
      if (slens[i] && la_bpe_add_special(t, specials[i], slens[i], -1) < 0) check_failed("add_special");
    exercise(t, sec[3], flags);
    la_bpe_free(t);
    return 0;
  }
  la_bpe *t = la_bpe_new((flags & 0x10) ? "(?s)." : NULL, flags & 0x01);
  if (!t) fz_fail("la_bpe_new failed: %s", la_error());
  /* 1. the vocabulary */
  for (const char *q = sec[0].p, *e0 = sec[0].p + sec[0].n; q < e0;) {
    const char *nl = memchr(q, '\n', (size_t)(e0 - q));
    size_t len = (size_t)((nl ? nl : e0) - q);
    if (len && la_bpe_add_token(t, q, len) < 0) check_failed("add_token");
    q = nl ? nl + 1 : e0;
  }
  /* 2. merges */
  if (la_bpe_add_merges_text(t, sec[1].p, sec[1].n, "vocab.bpe") < 0) check_failed("add_merges_text");
  /* 3. specials, "=N text" for an explicit id */
  for (const char *q = sec[2].p, *e2 = sec[2].p + sec[2].n; q < e2;) {
    const char *nl = memchr(q, '\n', (size_t)(e2 - q));
    size_t len = (size_t)((nl ? nl : e2) - q);
    int32_t id = -1;
    const char *s = q;
    if (len > 2 && q[0] == '=') {
      id = 0;
      size_t k = 1;
      while (k < len && k < 6 && q[k] >= '0' && q[k] <= '9') id = id * 10 + (q[k++] - '0');
      if (k < len && q[k] == ' ') k++;
      s = q + k;
      len -= k;
    }
    if (len && la_bpe_add_special(t, s, len, id) < 0) check_failed("add_special");
    q = nl ? nl + 1 : e2;
  }
  exercise(t, sec[3], flags);
  la_bpe_free(t);
  return 0;
}
