/*
** la_tokenizer.c -- byte-level BPE as in GPT-2, and a BPE trainer.
**
** Encoding a text:
**   1. special tokens found in the text are cut out and become their ids;
**   2. each remaining segment is split into pre-tokens by the regex (PCRE2,
**      UTF + UCP, so \p{L} and \p{N} are real Unicode classes);
**   3. each pre-token's bytes start as one symbol per byte, and merges are
**      applied exactly as OpenAI's encoder.py does: take the adjacent pair of
**      lowest rank, merge every occurrence of it from left to right, repeat.
**      Results are cached per pre-token.
**
** Invalid UTF-8: the regex is compiled with PCRE2_MATCH_INVALID_UTF, under
** which bytes that are not valid UTF-8 never match any part of the pattern;
** each maximal run of them between two matches becomes a pre-token of its
** own.  Every byte has a token, so encode/decode round-trips any bytes.
*/
#include "la_tokenizer.h"

#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "la.h"

/* ---------------------------------------------------------------- helpers */

/* Grows *p (of *cap elements of size el) to hold at least need elements. */
static int tk_grow(void *pp, size_t *cap, size_t need, size_t el) {
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

static inline uint64_t tk_mix(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

static uint64_t tk_hash(const char *p, size_t n) {
  uint64_t h = 0x9E3779B97F4A7C15ULL ^ (uint64_t)n;
  while (n >= 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    h = (h ^ v) * 0x100000001b3ULL;
    h ^= h >> 29;
    p += 8;
    n -= 8;
  }
  uint64_t v = 0;
  memcpy(&v, p, n);
  return tk_mix(h ^ v);
}

/* Length of the UTF-8 character at s (1 for a byte that starts none), and
** its code point in *cp (-1 when invalid). */
static size_t tk_utf8(const unsigned char *s, size_t n, int32_t *cp) {
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

static size_t tk_put_utf8(char *out, uint32_t cp) {
  if (cp < 0x80) { out[0] = (char)cp; return 1; }
  if (cp < 0x800) {
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  out[0] = (char)(0xE0 | (cp >> 12));
  out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
  out[2] = (char)(0x80 | (cp & 0x3F));
  return 3;
}

/* ---------------------------------------------------------------- GPT-2's byte table */
/* Printable bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the
** other 68 bytes, in increasing order, get the code points 256, 257, ... */

static uint32_t tk_b2u[256];
static int16_t tk_u2b[324];
static int tk_table_ready;

static void tk_init_table(void) {
  if (tk_table_ready) return;
  uint32_t next = 256;
  for (int i = 0; i < 324; i++) tk_u2b[i] = -1;
  for (int b = 0; b < 256; b++) {
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    tk_b2u[b] = printable ? (uint32_t)b : next++;
    tk_u2b[tk_b2u[b]] = (int16_t)b;
  }
  tk_table_ready = 1;
}

uint32_t la_bpe_byte_to_unicode(unsigned char b) {
  tk_init_table();
  return tk_b2u[b];
}

/* ---------------------------------------------------------------- byte-string map */
/* Open addressing over entries that keep their key bytes in an arena. */

typedef struct {
  uint64_t hash;
  size_t off;
  uint32_t len;
  int64_t val;
} tk_sent;

typedef struct {
  int32_t *slots;   /* -1 empty, else an entry index */
  size_t cap;       /* power of two, or 0 */
  tk_sent *ent;
  size_t n, ecap;
  char *keys;
  size_t klen, kcap;
} tk_smap;

static void tk_smap_free(tk_smap *m) {
  free(m->slots);
  free(m->ent);
  free(m->keys);
  memset(m, 0, sizeof *m);
}

static void tk_smap_clear(tk_smap *m) {
  if (m->slots) memset(m->slots, 0xFF, m->cap * sizeof *m->slots);
  m->n = 0;
  m->klen = 0;
}

static int64_t *tk_smap_find(const tk_smap *m, const char *key, size_t len, uint64_t h) {
  if (!m->cap) return NULL;
  size_t mask = m->cap - 1, i = (size_t)h & mask;
  for (;;) {
    int32_t e = m->slots[i];
    if (e < 0) return NULL;
    const tk_sent *s = &m->ent[e];
    if (s->hash == h && s->len == len && memcmp(m->keys + s->off, key, len) == 0)
      return &m->ent[e].val;
    i = (i + 1) & mask;
  }
}

static int tk_smap_rehash(tk_smap *m, size_t ncap) {
  int32_t *ns = malloc(ncap * sizeof *ns);
  if (!ns) return la_failn("tokenizer: out of memory");
  memset(ns, 0xFF, ncap * sizeof *ns);
  size_t mask = ncap - 1;
  for (size_t e = 0; e < m->n; e++) {
    size_t i = (size_t)m->ent[e].hash & mask;
    while (ns[i] >= 0) i = (i + 1) & mask;
    ns[i] = (int32_t)e;
  }
  free(m->slots);
  m->slots = ns;
  m->cap = ncap;
  return 0;
}

/* Inserts key (which must be absent) with val; returns 0 or -1. */
static int tk_smap_add(tk_smap *m, const char *key, size_t len, uint64_t h, int64_t val) {
  if (m->n >= INT32_MAX - 1 || len > UINT32_MAX) return la_failn("tokenizer: map too large");
  if ((m->n + 1) * 2 > m->cap && tk_smap_rehash(m, m->cap ? m->cap * 2 : 64) < 0) return -1;
  if (tk_grow(&m->ent, &m->ecap, m->n + 1, sizeof *m->ent) < 0) return -1;
  if (tk_grow(&m->keys, &m->kcap, m->klen + len + 1, 1) < 0) return -1;
  memcpy(m->keys + m->klen, key, len);
  tk_sent *s = &m->ent[m->n];
  s->hash = h;
  s->off = m->klen;
  s->len = (uint32_t)len;
  s->val = val;
  m->klen += len;
  size_t mask = m->cap - 1, i = (size_t)h & mask;
  while (m->slots[i] >= 0) i = (i + 1) & mask;
  m->slots[i] = (int32_t)m->n++;
  return 0;
}

/* ---------------------------------------------------------------- pair map */

#define TK_NONE INT32_MAX

typedef struct {
  uint64_t key;   /* (a << 32) | b; UINT64_MAX marks an empty slot */
  int32_t val;
} tk_pslot;

typedef struct {
  tk_pslot *slots;
  size_t cap, n;
} tk_pmap;

static inline uint64_t tk_pkey(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }

static inline int32_t tk_pmap_get(const tk_pmap *m, uint64_t key) {
  if (!m->cap) return TK_NONE;
  size_t mask = m->cap - 1, i = (size_t)tk_mix(key) & mask;
  for (;;) {
    const tk_pslot *s = &m->slots[i];
    if (s->key == key) return s->val;
    if (s->key == UINT64_MAX) return TK_NONE;
    i = (i + 1) & mask;
  }
}

static int tk_pmap_set(tk_pmap *m, uint64_t key, int32_t val) {
  if ((m->n + 1) * 2 > m->cap) {
    size_t ncap = m->cap ? m->cap * 2 : 1024;
    tk_pslot *ns = malloc(ncap * sizeof *ns);
    if (!ns) return la_failn("tokenizer: out of memory");
    for (size_t i = 0; i < ncap; i++) ns[i].key = UINT64_MAX;
    for (size_t j = 0; j < m->cap; j++) {
      if (m->slots[j].key == UINT64_MAX) continue;
      size_t i = (size_t)tk_mix(m->slots[j].key) & (ncap - 1);
      while (ns[i].key != UINT64_MAX) i = (i + 1) & (ncap - 1);
      ns[i] = m->slots[j];
    }
    free(m->slots);
    m->slots = ns;
    m->cap = ncap;
  }
  size_t mask = m->cap - 1, i = (size_t)tk_mix(key) & mask;
  while (m->slots[i].key != UINT64_MAX && m->slots[i].key != key) i = (i + 1) & mask;
  if (m->slots[i].key == UINT64_MAX) m->n++;
  m->slots[i].key = key;
  m->slots[i].val = val;
  return 0;
}

/* ---------------------------------------------------------------- the tokenizer */

typedef struct {
  size_t boff, soff;      /* bytes and spelling, in the arena */
  uint32_t blen, slen;
  bool special;
} tk_token;

typedef struct {
  int32_t a, b, merged;
} tk_merge;

typedef struct {
  int32_t rank, pos, right;
} tk_hent;

#define TK_CACHE_MAX_WORD 256          /* longer pre-tokens are not cached */
#define TK_CACHE_MAX_ENTRIES (1 << 18)
#define TK_CACHE_MAX_IDS (1 << 22)

struct la_bpe {
  tk_token *tok;
  size_t ntok, tokcap;
  char *arena;
  size_t alen, acap;
  tk_smap vocab;               /* spelling -> id */
  int32_t byte_id[256];        /* the token of each single byte, -1 if none */

  tk_pmap ranks;               /* (a, b) -> rank */
  tk_merge *merges;
  size_t nmerges, mcap;

  int32_t *specials;           /* ids, longest text first */
  size_t nspecial, speccap;

  char *pattern;
  pcre2_code *re;
  pcre2_match_data *md;
  bool jit;
  bool prefix_space;
  size_t heap_threshold;

  tk_smap cache;               /* pre-token -> (offset << 16 | count) into cids */
  int32_t *cids;
  size_t cn, ccap;

  /* scratch for one word */
  int32_t *sym, *rk, *aux, *nxt;
  size_t scap;
  tk_hent *heap, *batch;
  size_t hcap, bcap;
  char *pbuf;
  size_t pcap;
};

/* GPT-2's pattern.  \s is spelled out as Unicode's White_Space property. */
#define TK_WS "\\t\\n\\x{0B}\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
const char la_bpe_gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" TK_WS "\\p{L}\\p{N}]+|[" TK_WS "]+(?![^" TK_WS
    "])|[" TK_WS "]+";

static int tk_compile(la_bpe *t, const char *pattern) {
  int err;
  PCRE2_SIZE erroff;
  t->re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED,
                        PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &erroff, NULL);
  if (!t->re) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    return la_failn("tokenizer: bad pre-tokenisation regex at offset %zu: %s", (size_t)erroff,
                    (const char *)msg);
  }
  t->jit = pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE) == 0;
  t->md = pcre2_match_data_create_from_pattern(t->re, NULL);
  if (!t->md) return la_failn("tokenizer: out of memory");
  t->pattern = strdup(pattern);
  if (!t->pattern) return la_failn("tokenizer: out of memory");
  return 0;
}

la_bpe *la_bpe_new(const char *pattern, bool add_prefix_space) {
  tk_init_table();
  la_bpe *t = calloc(1, sizeof *t);
  if (!t) return la_fail("tokenizer: out of memory");
  for (int i = 0; i < 256; i++) t->byte_id[i] = -1;
  t->prefix_space = add_prefix_space;
  t->heap_threshold = 128;
  if (tk_compile(t, pattern ? pattern : la_bpe_gpt2_pattern) < 0) {
    la_bpe_free(t);
    return NULL;
  }
  return t;
}

void la_bpe_free(la_bpe *t) {
  if (!t) return;
  free(t->tok);
  free(t->arena);
  tk_smap_free(&t->vocab);
  free(t->ranks.slots);
  free(t->merges);
  free(t->specials);
  free(t->pattern);
  if (t->md) pcre2_match_data_free(t->md);
  if (t->re) pcre2_code_free(t->re);
  tk_smap_free(&t->cache);
  free(t->cids);
  free(t->sym);
  free(t->rk);
  free(t->aux);
  free(t->nxt);
  free(t->heap);
  free(t->batch);
  free(t->pbuf);
  free(t);
}

void la_ids_free(la_ids *v) {
  free(v->ids);
  v->ids = NULL;
  v->n = v->cap = 0;
}

static inline int tk_push_id(la_ids *v, int32_t id) {
  if (v->n == v->cap && tk_grow(&v->ids, &v->cap, v->n + 1, sizeof *v->ids) < 0) return -1;
  v->ids[v->n++] = id;
  return 0;
}

static size_t tk_arena_put(la_bpe *t, const char *s, size_t n, int *err) {
  if (tk_grow(&t->arena, &t->acap, t->alen + n + 1, 1) < 0) { *err = -1; return 0; }
  size_t off = t->alen;
  memcpy(t->arena + off, s, n);
  t->alen += n;
  return off;
}

/* Shortens s for an error message. */
static const char *tk_show(const char *s, size_t n, char *buf, size_t bufsize) {
  size_t k = n < bufsize - 4 ? n : bufsize - 4;
  memcpy(buf, s, k);
  if (k < n) memcpy(buf + k, "...", 3), k += 3;
  buf[k] = 0;
  return buf;
}

/* Appends a token with these bytes and spelling. */
static int32_t tk_append(la_bpe *t, const char *bytes, size_t blen, const char *sp, size_t slen) {
  if (t->ntok >= INT32_MAX - 1 || blen > UINT32_MAX || slen > UINT32_MAX)
    return la_failn("tokenizer: vocabulary too large");
  if (tk_grow(&t->tok, &t->tokcap, t->ntok + 1, sizeof *t->tok) < 0) return -1;
  int err = 0;
  size_t boff = tk_arena_put(t, bytes, blen, &err);
  size_t soff = tk_arena_put(t, sp, slen, &err);
  if (err) return -1;
  int32_t id = (int32_t)t->ntok;
  uint64_t h = tk_hash(sp, slen);
  if (!tk_smap_find(&t->vocab, sp, slen, h) && tk_smap_add(&t->vocab, sp, slen, h, id) < 0) return -1;
  t->tok[id] = (tk_token){.boff = boff, .soff = soff, .blen = (uint32_t)blen, .slen = (uint32_t)slen};
  t->ntok++;
  return id;
}

int32_t la_bpe_add_token(la_bpe *t, const char *sp, size_t len) {
  /* Decode the spelling through the byte table; fall back to its own bytes. */
  if (len == 0) return la_failn("tokenizer: a vocabulary entry is empty");
  char small[256];
  small[0] = 0;
  char *bytes = len <= sizeof small ? small : malloc(len);
  if (!bytes) return la_failn("tokenizer: out of memory");
  size_t nb = 0, i = 0;
  bool level = true;
  while (i < len) {
    int32_t cp;
    size_t k = tk_utf8((const unsigned char *)sp + i, len - i, &cp);
    if (cp < 0 || cp >= 324 || tk_u2b[cp] < 0) { level = false; break; }
    bytes[nb++] = (char)tk_u2b[cp];
    i += k;
  }
  int32_t id = level ? tk_append(t, bytes, nb, sp, len) : tk_append(t, sp, len, sp, len);
  if (id >= 0 && level && nb == 1 && t->byte_id[(unsigned char)bytes[0]] < 0)
    t->byte_id[(unsigned char)bytes[0]] = id;
  if (bytes != small) free(bytes);
  return id;
}

static void tk_sort_specials(la_bpe *t) {
  for (size_t i = 1; i < t->nspecial; i++) {   /* insertion sort: few specials */
    int32_t id = t->specials[i];
    size_t j = i;
    while (j > 0 && t->tok[t->specials[j - 1]].blen < t->tok[id].blen) {
      t->specials[j] = t->specials[j - 1];
      j--;
    }
    t->specials[j] = id;
  }
}

int32_t la_bpe_add_special(la_bpe *t, const char *text, size_t len, int32_t id) {
  char show[64];
  if (len == 0) return la_failn("tokenizer: a special token cannot be empty");
  if (id < 0) {
    int64_t *v = tk_smap_find(&t->vocab, text, len, tk_hash(text, len));
    if (v) {
      tk_token *k = &t->tok[*v];
      if (k->blen == len && memcmp(t->arena + k->boff, text, len) == 0) id = (int32_t)*v;
    }
    if (id < 0) id = (int32_t)t->ntok;
  }
  if ((size_t)id > t->ntok)
    return la_failn("tokenizer: special token '%s' has id %d, but the vocabulary ends at %d (ids must not leave gaps)",
                    tk_show(text, len, show, sizeof show), (int)id, (int)t->ntok);
  if ((size_t)id == t->ntok) {
    if (tk_append(t, text, len, text, len) < 0) return -1;
  } else {
    tk_token *k = &t->tok[id];
    if (!(k->blen == len && memcmp(t->arena + k->boff, text, len) == 0) ||
        !(k->slen == len && memcmp(t->arena + k->soff, text, len) == 0)) {
      int err = 0;
      size_t off = tk_arena_put(t, text, len, &err);
      if (err) return -1;
      k = &t->tok[id];
      if (k->blen == 1 && t->byte_id[(unsigned char)t->arena[k->boff]] == id)
        t->byte_id[(unsigned char)t->arena[k->boff]] = -1;
      k->boff = k->soff = off;
      k->blen = k->slen = (uint32_t)len;
      uint64_t h = tk_hash(text, len);
      if (!tk_smap_find(&t->vocab, text, len, h) && tk_smap_add(&t->vocab, text, len, h, id) < 0) return -1;
    }
  }
  if (!t->tok[id].special) {
    if (tk_grow(&t->specials, &t->speccap, t->nspecial + 1, sizeof *t->specials) < 0) return -1;
    t->tok[id].special = true;
    t->specials[t->nspecial++] = id;
    tk_sort_specials(t);
  }
  la_bpe_clear_cache(t);
  return id;
}

static int tk_add_merge_ids(la_bpe *t, int32_t a, int32_t b, int32_t merged) {
  if (t->nmerges >= INT32_MAX - 1) return la_failn("tokenizer: too many merges");
  if (tk_grow(&t->merges, &t->mcap, t->nmerges + 1, sizeof *t->merges) < 0) return -1;
  t->merges[t->nmerges] = (tk_merge){a, b, merged};
  if (tk_pmap_set(&t->ranks, tk_pkey(a, b), (int32_t)t->nmerges) < 0) return -1;
  t->nmerges++;
  la_bpe_clear_cache(t);
  return 0;
}

int la_bpe_add_merge(la_bpe *t, const char *a, size_t alen, const char *b, size_t blen) {
  char show[64];
  int64_t *ia = tk_smap_find(&t->vocab, a, alen, tk_hash(a, alen));
  if (!ia) return la_failn("merge token '%s' is not in the vocabulary", tk_show(a, alen, show, sizeof show));
  int32_t ida = (int32_t)*ia;
  int64_t *ib = tk_smap_find(&t->vocab, b, blen, tk_hash(b, blen));
  if (!ib) return la_failn("merge token '%s' is not in the vocabulary", tk_show(b, blen, show, sizeof show));
  int32_t idb = (int32_t)*ib;
  char small[256];
  size_t n = alen + blen;
  char *ab = n <= sizeof small ? small : malloc(n);
  if (!ab) return la_failn("tokenizer: out of memory");
  memcpy(ab, a, alen);
  memcpy(ab + alen, b, blen);
  int64_t *im = tk_smap_find(&t->vocab, ab, n, tk_hash(ab, n));
  int rc;
  if (!im) rc = la_failn("the merge of '%s' and '%s' gives '%s', which is not in the vocabulary",
                         tk_show(a, alen, show, 24), tk_show(b, blen, show + 24, 24),
                         tk_show(ab, n, show + 48, 16));
  else rc = tk_add_merge_ids(t, ida, idb, (int32_t)*im);
  if (ab != small) free(ab);
  return rc;
}

int la_bpe_add_merges_text(la_bpe *t, const char *text, size_t len, const char *name) {
  size_t pos = 0;
  long line = 0;
  while (pos < len) {
    size_t end = pos;
    while (end < len && text[end] != '\n') end++;
    line++;
    size_t e = end;
    if (e > pos && text[e - 1] == '\r') e--;
    const char *s = text + pos;
    size_t n = e - pos;
    pos = end + 1;
    if (line == 1 && n >= 8 && memcmp(s, "#version", 8) == 0) continue;
    if (n == 0) continue;   /* blank lines (the last one, say) */
    size_t sp = 0;
    while (sp < n && s[sp] != ' ') sp++;
    size_t b0 = sp + 1;
    size_t sp2 = b0;
    while (sp2 < n && s[sp2] != ' ') sp2++;
    if (sp == 0 || sp >= n || b0 >= n || sp2 != n)
      return la_failn("%s:%ld: expected two tokens separated by one space", name, line);
    if (la_bpe_add_merge(t, s, sp, s + b0, n - b0) < 0) {
      la_error_prefix("%s:%ld: ", name, line);
      return -1;
    }
  }
  return 0;
}

/* ---------------------------------------------------------------- queries */

int32_t la_bpe_vocab_size(const la_bpe *t) { return (int32_t)t->ntok; }
int32_t la_bpe_num_merges(const la_bpe *t) { return (int32_t)t->nmerges; }
const char *la_bpe_pattern(const la_bpe *t) { return t->pattern; }
bool la_bpe_prefix_space(const la_bpe *t) { return t->prefix_space; }

const char *la_bpe_token_bytes(const la_bpe *t, int32_t id, size_t *len) {
  if (id < 0 || (size_t)id >= t->ntok) return NULL;
  *len = t->tok[id].blen;
  return t->arena + t->tok[id].boff;
}

const char *la_bpe_token_spelling(const la_bpe *t, int32_t id, size_t *len) {
  if (id < 0 || (size_t)id >= t->ntok) return NULL;
  *len = t->tok[id].slen;
  return t->arena + t->tok[id].soff;
}

bool la_bpe_is_special(const la_bpe *t, int32_t id) {
  return id >= 0 && (size_t)id < t->ntok && t->tok[id].special;
}

int32_t la_bpe_token_to_id(const la_bpe *t, const char *sp, size_t len) {
  int64_t *v = tk_smap_find(&t->vocab, sp, len, tk_hash(sp, len));
  return v ? (int32_t)*v : -1;
}

int la_bpe_merge_at(const la_bpe *t, int32_t rank, int32_t *a, int32_t *b, int32_t *merged) {
  if (rank < 0 || (size_t)rank >= t->nmerges) return -1;
  *a = t->merges[rank].a;
  *b = t->merges[rank].b;
  *merged = t->merges[rank].merged;
  return 0;
}

void la_bpe_set_heap_threshold(la_bpe *t, size_t nbytes) {
  t->heap_threshold = nbytes;
  la_bpe_clear_cache(t);
}

void la_bpe_clear_cache(la_bpe *t) {
  tk_smap_clear(&t->cache);
  t->cn = 0;
}

/* ---------------------------------------------------------------- merging one word */

static inline int32_t tk_rank(const la_bpe *t, int32_t a, int32_t b) {
  return tk_pmap_get(&t->ranks, tk_pkey(a, b));
}

/* Short words: the symbols in an array.  Each pass finds the lowest rank,
** then merges every occurrence of that pair from left to right, keeping
** the ranks of untouched neighbours. */
static size_t tk_merge_scan(la_bpe *t, size_t m) {
  int32_t *sym = t->sym, *rk = t->rk, *orig = t->aux;
  for (size_t i = 0; i + 1 < m; i++) rk[i] = tk_rank(t, sym[i], sym[i + 1]);
  while (m > 1) {
    int32_t r = TK_NONE;
    for (size_t i = 0; i + 1 < m; i++)
      if (rk[i] < r) r = rk[i];
    if (r == TK_NONE) break;
    int32_t merged = t->merges[r].merged;
    size_t k = 0, i = 0;
    while (i < m) {
      if (i + 1 < m && rk[i] == r) {
        sym[k] = merged;
        orig[k++] = -1;
        i += 2;
      } else {
        sym[k] = sym[i];
        orig[k++] = (int32_t)i;
        i++;
      }
    }
    /* orig[j] >= j, and rk is rewritten in increasing j: reads stay ahead. */
    for (size_t j = 0; j + 1 < k; j++) {
      if (orig[j] >= 0 && orig[j + 1] == orig[j] + 1) rk[j] = rk[orig[j]];
      else rk[j] = tk_rank(t, sym[j], sym[j + 1]);
    }
    m = k;
  }
  return m;
}

static inline bool tk_hless(tk_hent x, tk_hent y) {
  return x.rank < y.rank || (x.rank == y.rank && x.pos < y.pos);
}

static void tk_hpush(tk_hent *h, size_t *n, tk_hent e) {
  size_t i = (*n)++;
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!tk_hless(e, h[p])) break;
    h[i] = h[p];
    i = p;
  }
  h[i] = e;
}

static tk_hent tk_hpop(tk_hent *h, size_t *n) {
  tk_hent top = h[0], last = h[--*n];
  size_t i = 0, m = *n;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= m) break;
    if (c + 1 < m && tk_hless(h[c + 1], h[c])) c++;
    if (!tk_hless(h[c], last)) break;
    h[i] = h[c];
    i = c;
  }
  if (m) h[i] = last;
  return top;
}

/* Long words: a linked list and a heap of (rank, position).  All entries of
** the lowest rank are taken out together and merged from left to right, so
** the result is that of the scan above (a merge never creates another
** occurrence of the pair being merged: the new token is longer than both). */
static int tk_merge_heap(la_bpe *t, size_t n, size_t *out_m) {
  int32_t *sym = t->sym, *prev = t->aux, *next = t->nxt;
  size_t need = 3 * n + 4;   /* n - 1 initial entries, at most 2 per merge */
  if (tk_grow(&t->heap, &t->hcap, need, sizeof *t->heap) < 0) return -1;
  if (tk_grow(&t->batch, &t->bcap, need, sizeof *t->batch) < 0) return -1;
  tk_hent *h = t->heap, *batch = t->batch;
  size_t hn = 0;
  for (size_t i = 0; i < n; i++) {
    prev[i] = (int32_t)i - 1;
    next[i] = (int32_t)i + 1;
  }
  for (size_t i = 0; i + 1 < n; i++) {
    int32_t r = tk_rank(t, sym[i], sym[i + 1]);
    if (r != TK_NONE) tk_hpush(h, &hn, (tk_hent){r, (int32_t)i, (int32_t)i + 1});
  }
  while (hn) {
    int32_t r = h[0].rank;
    size_t bn = 0;
    while (hn && h[0].rank == r) batch[bn++] = tk_hpop(h, &hn);
    tk_merge mg = t->merges[r];
    for (size_t k = 0; k < bn; k++) {
      int32_t p = batch[k].pos, q = batch[k].right;
      if (sym[p] != mg.a || next[p] != q || sym[q] != mg.b) continue;   /* stale */
      sym[p] = mg.merged;
      sym[q] = -1;
      next[p] = next[q];
      if ((size_t)next[p] < n) prev[next[p]] = p;
      if (prev[p] >= 0) {
        int32_t r2 = tk_rank(t, sym[prev[p]], sym[p]);
        if (r2 != TK_NONE) tk_hpush(h, &hn, (tk_hent){r2, prev[p], p});
      }
      if ((size_t)next[p] < n) {
        int32_t r2 = tk_rank(t, sym[p], sym[next[p]]);
        if (r2 != TK_NONE) tk_hpush(h, &hn, (tk_hent){r2, p, next[p]});
      }
    }
  }
  size_t m = 0;
  for (int32_t i = 0; (size_t)i < n; i = next[i]) sym[m++] = sym[i];
  *out_m = m;
  return 0;
}

static int tk_scratch(la_bpe *t, size_t n) {
  if (n <= t->scap) return 0;
  size_t cap = t->scap;
  if (tk_grow(&t->sym, &cap, n, sizeof(int32_t)) < 0) return -1;
  cap = t->scap;
  if (tk_grow(&t->rk, &cap, n, sizeof(int32_t)) < 0) return -1;
  cap = t->scap;
  if (tk_grow(&t->aux, &cap, n, sizeof(int32_t)) < 0) return -1;
  cap = t->scap;
  if (tk_grow(&t->nxt, &cap, n, sizeof(int32_t)) < 0) return -1;
  t->scap = cap;
  return 0;
}

/* Appends the ids of one pre-token. */
static int tk_word(la_bpe *t, const char *w, size_t n, la_ids *out) {
  if (n == 0) return 0;
  if (n == 1) {
    int32_t id = t->byte_id[(unsigned char)w[0]];
    if (id < 0) return la_failn("tokenizer: the vocabulary has no token for byte 0x%02X", (unsigned char)w[0]);
    return tk_push_id(out, id);
  }
  uint64_t h = 0;
  if (n <= TK_CACHE_MAX_WORD) {
    h = tk_hash(w, n);
    int64_t *v = tk_smap_find(&t->cache, w, n, h);
    if (v) {
      size_t off = (size_t)(*v >> 16), cnt = (size_t)(*v & 0xFFFF);
      if (out->n + cnt > out->cap && tk_grow(&out->ids, &out->cap, out->n + cnt, sizeof *out->ids) < 0)
        return -1;
      memcpy(out->ids + out->n, t->cids + off, cnt * sizeof *t->cids);
      out->n += cnt;
      return 0;
    }
  }
  if (n > (size_t)INT32_MAX / 4)
    return la_failn("tokenizer: a pre-token of %zu bytes is too long (the limit is %d)", n, INT32_MAX / 4);
  if (tk_scratch(t, n) < 0) return -1;
  for (size_t i = 0; i < n; i++) {
    int32_t id = t->byte_id[(unsigned char)w[i]];
    if (id < 0) return la_failn("tokenizer: the vocabulary has no token for byte 0x%02X", (unsigned char)w[i]);
    t->sym[i] = id;
  }
  size_t m = n;
  if (t->nmerges) {
    if (n > t->heap_threshold) {
      if (tk_merge_heap(t, n, &m) < 0) return -1;
    } else {
      m = tk_merge_scan(t, n);
    }
  }
  if (out->n + m > out->cap && tk_grow(&out->ids, &out->cap, out->n + m, sizeof *out->ids) < 0) return -1;
  memcpy(out->ids + out->n, t->sym, m * sizeof *t->sym);
  out->n += m;
  if (n <= TK_CACHE_MAX_WORD) {
    if (t->cache.n >= TK_CACHE_MAX_ENTRIES || t->cn + m > TK_CACHE_MAX_IDS) la_bpe_clear_cache(t);
    if (tk_grow(&t->cids, &t->ccap, t->cn + m, sizeof *t->cids) < 0) return -1;
    memcpy(t->cids + t->cn, t->sym, m * sizeof *t->sym);
    if (tk_smap_add(&t->cache, w, n, h, ((int64_t)t->cn << 16) | (int64_t)m) < 0) return -1;
    t->cn += m;
  }
  return 0;
}

/* ---------------------------------------------------------------- pre-tokenisation */

static int tk_pieces(la_bpe *t, const char *text, size_t len, la_bpe_piece_fn fn, void *ctx) {
  size_t off = 0, done = 0;   /* search from off; bytes before done are emitted */
  while (off < len) {
    int rc = t->jit ? pcre2_jit_match(t->re, (PCRE2_SPTR)text, len, off, 0, t->md, NULL)
                    : pcre2_match(t->re, (PCRE2_SPTR)text, len, off, 0, t->md, NULL);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      return la_failn("tokenizer: regex match failed at byte %zu: %s", off, (const char *)msg);
    }
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(t->md);
    size_t s = ov[0], e = ov[1];
    if (e > s) {
      if (s > done && fn(ctx, text + done, s - done) < 0) return -1;
      if (fn(ctx, text + s, e - s) < 0) return -1;
      off = done = e;
    } else {   /* an empty match (not possible with GPT-2's pattern): step over a character */
      int32_t cp;
      off = s + tk_utf8((const unsigned char *)text + s, len - s, &cp);
    }
  }
  if (done < len && fn(ctx, text + done, len - done) < 0) return -1;
  return 0;
}

int la_bpe_pretokenize(la_bpe *t, const char *text, size_t len, la_bpe_piece_fn fn, void *ctx) {
  return tk_pieces(t, text, len, fn, ctx);
}

typedef struct {
  la_bpe *t;
  la_ids *out;
} tk_enc_ctx;

static int tk_piece_encode(void *ctx, const char *p, size_t n) {
  tk_enc_ctx *c = ctx;
  return tk_word(c->t, p, n, c->out);
}

/* One segment free of special tokens. */
static int tk_segment(la_bpe *t, const char *s, size_t n, la_ids *out) {
  if (n == 0) return 0;
  if (t->prefix_space && s[0] != ' ') {
    if (tk_grow(&t->pbuf, &t->pcap, n + 1, 1) < 0) return -1;
    t->pbuf[0] = ' ';
    memcpy(t->pbuf + 1, s, n);
    s = t->pbuf;
    n++;
  }
  if (t->nmerges == 0) {   /* no merges: pre-tokenisation cannot change the ids */
    if (out->n + n > out->cap && tk_grow(&out->ids, &out->cap, out->n + n, sizeof *out->ids) < 0) return -1;
    for (size_t i = 0; i < n; i++) {
      int32_t id = t->byte_id[(unsigned char)s[i]];
      if (id < 0) return la_failn("tokenizer: the vocabulary has no token for byte 0x%02X", (unsigned char)s[i]);
      out->ids[out->n++] = id;
    }
    return 0;
  }
  tk_enc_ctx c = {t, out};
  return tk_pieces(t, s, n, tk_piece_encode, &c);
}

/* First occurrence of pat in s[from, n), or n. */
static size_t tk_find(const char *s, size_t n, size_t from, const char *pat, size_t m) {
  if (m == 0 || m > n) return n;
  const char *p = s + from, *end = s + n - m + 1;
  while (p < end) {
    const char *q = memchr(p, pat[0], (size_t)(end - p));
    if (!q) return n;
    if (memcmp(q, pat, m) == 0) return (size_t)(q - s);
    p = q + 1;
  }
  return n;
}

int la_bpe_encode(la_bpe *t, const char *text, size_t len, bool recognise_special, la_ids *out) {
  if (!recognise_special || t->nspecial == 0) return tk_segment(t, text, len, out);
  size_t ns = t->nspecial;
  size_t stack_next[16];
  size_t *next = ns <= 16 ? stack_next : malloc(ns * sizeof *next);
  if (!next) return la_failn("tokenizer: out of memory");
  int rc = 0;
  for (size_t i = 0; i < ns; i++) {
    const tk_token *k = &t->tok[t->specials[i]];
    next[i] = tk_find(text, len, 0, t->arena + k->boff, k->blen);
  }
  size_t pos = 0;
  for (;;) {
    /* earliest occurrence; the longest special first at the same place */
    size_t best = len, which = 0;
    for (size_t i = 0; i < ns; i++)
      if (next[i] < best) best = next[i], which = i;
    if (best >= len) {
      rc = tk_segment(t, text + pos, len - pos, out);
      break;
    }
    if ((rc = tk_segment(t, text + pos, best - pos, out)) < 0) break;
    int32_t id = t->specials[which];
    if ((rc = tk_push_id(out, id)) < 0) break;
    pos = best + t->tok[id].blen;
    for (size_t i = 0; i < ns; i++) {
      if (next[i] < pos) {
        const tk_token *k = &t->tok[t->specials[i]];
        next[i] = tk_find(text, len, pos, t->arena + k->boff, k->blen);
      }
    }
  }
  if (next != stack_next) free(next);
  return rc;
}

/* ---------------------------------------------------------------- training */

typedef struct {
  int64_t count;
  int32_t a, b;
  int32_t *words;      /* words where the pair occurred (may hold stale ones) */
  int32_t nw, cw;
  int32_t last_word;   /* the last word appended, to skip repeats */
  int32_t stamp;
} tr_pair;

typedef struct {
  int64_t count;
  int32_t a, b, idx;
} tr_hent;

typedef struct {
  size_t off;          /* into the symbol array */
  int32_t len;
  int64_t freq;
} tr_word;

typedef struct {
  tr_pair *pairs;
  size_t np, pcap;
  tk_pmap index;       /* (a, b) -> pair */
  tr_hent *heap;
  size_t hn, hcap;
} tr_state;

static inline bool tr_better(const tr_hent *x, const tr_hent *y) {
  if (x->count != y->count) return x->count > y->count;
  if (x->a != y->a) return x->a < y->a;
  return x->b < y->b;
}

static int tr_hpush(tr_state *s, tr_hent e) {
  if (tk_grow(&s->heap, &s->hcap, s->hn + 1, sizeof *s->heap) < 0) return -1;
  size_t i = s->hn++;
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!tr_better(&e, &s->heap[p])) break;
    s->heap[i] = s->heap[p];
    i = p;
  }
  s->heap[i] = e;
  return 0;
}

static tr_hent tr_hpop(tr_state *s) {
  tr_hent *h = s->heap, top = h[0], last = h[--s->hn];
  size_t i = 0, m = s->hn;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= m) break;
    if (c + 1 < m && tr_better(&h[c + 1], &h[c])) c++;
    if (!tr_better(&h[c], &last)) break;
    h[i] = h[c];
    i = c;
  }
  if (m) h[i] = last;
  return top;
}

/* The pair (a, b), created when absent; -1 on failure. */
static int32_t tr_pair_of(tr_state *s, int32_t a, int32_t b) {
  uint64_t key = tk_pkey(a, b);
  int32_t v = tk_pmap_get(&s->index, key);
  if (v != TK_NONE) return v;
  if (s->np >= INT32_MAX - 1) return la_failn("bpe train: too many pairs");
  if (tk_grow(&s->pairs, &s->pcap, s->np + 1, sizeof *s->pairs) < 0) return -1;
  int32_t idx = (int32_t)s->np++;
  s->pairs[idx] = (tr_pair){.a = a, .b = b, .last_word = -1, .stamp = -1};
  if (tk_pmap_set(&s->index, key, idx) < 0) return -1;
  return idx;
}

static int tr_note_word(tr_pair *p, int32_t w) {
  if (p->last_word == w) return 0;
  if (p->nw == p->cw) {
    size_t cap = (size_t)p->cw;
    if (tk_grow(&p->words, &cap, (size_t)p->nw + 1, sizeof *p->words) < 0) return -1;
    p->cw = (int32_t)cap;
  }
  p->words[p->nw++] = w;
  p->last_word = w;
  return 0;
}

typedef struct {
  tk_smap counts;
  const char *const *specials;
  const size_t *slens;
  size_t nspecials;
} tr_count_ctx;

static int tr_count_piece(void *ctx, const char *p, size_t n) {
  tr_count_ctx *c = ctx;
  if (n == 0) return 0;
  uint64_t h = tk_hash(p, n);
  int64_t *v = tk_smap_find(&c->counts, p, n, h);
  if (v) { ++*v; return 0; }
  return tk_smap_add(&c->counts, p, n, h, 1);
}

/* Counts the pre-tokens of one text, with special tokens cut out. */
static int tr_count_text(la_bpe *t, tr_count_ctx *c, const char *text, size_t len) {
  size_t pos = 0;
  while (pos < len) {
    size_t best = len, blen = 0;
    for (size_t i = 0; i < c->nspecials; i++) {
      size_t f = tk_find(text, len, pos, c->specials[i], c->slens[i]);
      if (f < best || (f == best && f < len && c->slens[i] > blen)) best = f, blen = c->slens[i];
    }
    if (tk_pieces(t, text + pos, best - pos, tr_count_piece, c) < 0) return -1;
    pos = best + blen;
    if (best >= len) break;
  }
  return 0;
}

static void tr_free(tr_state *s) {
  for (size_t i = 0; i < s->np; i++) free(s->pairs[i].words);
  free(s->pairs);
  free(s->index.slots);
  free(s->heap);
}

la_bpe *la_bpe_train(const char *const *texts, const size_t *lens, size_t ntexts,
                     const char *const *specials, const size_t *slens, size_t nspecials,
                     int32_t n_tokens, int64_t min_frequency, const char *pattern) {
  la_bpe *t = la_bpe_new(pattern, false);
  if (!t) return NULL;
  for (int b = 0; b < 256; b++) {
    char sp[4];
    size_t n = tk_put_utf8(sp, tk_b2u[b]);
    if (la_bpe_add_token(t, sp, n) < 0) { la_bpe_free(t); return NULL; }
  }
  if (min_frequency < 1) min_frequency = 1;

  tr_count_ctx cc = {.specials = specials, .slens = slens, .nspecials = nspecials};
  tr_state s = {0};
  tr_word *words = NULL;
  int32_t *syms = NULL, *stamp = NULL, *touched = NULL;
  size_t ntouched = 0, tcap = 0;
  char *spbuf = NULL;
  size_t spcap = 0;
  bool ok = false;

  for (size_t i = 0; i < ntexts; i++)
    if (tr_count_text(t, &cc, texts[i], lens[i]) < 0) goto done;

  /* One symbol per byte for every distinct pre-token. */
  size_t nwords = cc.counts.n;
  words = malloc((nwords ? nwords : 1) * sizeof *words);
  syms = malloc((cc.counts.klen ? cc.counts.klen : 1) * sizeof *syms);
  stamp = malloc((nwords ? nwords : 1) * sizeof *stamp);
  if (!words || !syms || !stamp) { la_fail("bpe train: out of memory"); goto done; }
  for (size_t w = 0; w < nwords; w++) {
    const tk_sent *e = &cc.counts.ent[w];
    if (e->len > INT32_MAX) { la_fail("bpe train: a pre-token is too long"); goto done; }
    words[w] = (tr_word){.off = e->off, .len = (int32_t)e->len, .freq = e->val};
    for (size_t k = 0; k < e->len; k++) syms[e->off + k] = (unsigned char)cc.counts.keys[e->off + k];
    stamp[w] = -1;
  }
  for (size_t w = 0; w < nwords; w++) {
    int32_t *sy = syms + words[w].off;
    for (int32_t k = 0; k + 1 < words[w].len; k++) {
      int32_t p = tr_pair_of(&s, sy[k], sy[k + 1]);
      if (p < 0 || tr_note_word(&s.pairs[p], (int32_t)w) < 0) goto done;
      s.pairs[p].count += words[w].freq;
    }
  }
  for (size_t p = 0; p < s.np; p++)
    if (tr_hpush(&s, (tr_hent){s.pairs[p].count, s.pairs[p].a, s.pairs[p].b, (int32_t)p}) < 0) goto done;

  int32_t round = 0;
  while ((int32_t)t->ntok < n_tokens && s.hn) {
    tr_hent e = tr_hpop(&s);
    tr_pair *best = &s.pairs[e.idx];
    if (e.count != best->count) {   /* stale: re-queue at its current count */
      if (e.count > best->count && best->count > 0 &&
          tr_hpush(&s, (tr_hent){best->count, best->a, best->b, e.idx}) < 0) goto done;
      continue;
    }
    if (best->count < min_frequency || best->count <= 0) break;
    int32_t a = best->a, b = best->b;

    /* The new token: an existing one when the bytes are already known. */
    size_t la_ = t->tok[a].slen, lb_ = t->tok[b].slen;
    if (tk_grow(&spbuf, &spcap, la_ + lb_, 1) < 0) goto done;
    memcpy(spbuf, t->arena + t->tok[a].soff, la_);
    memcpy(spbuf + la_, t->arena + t->tok[b].soff, lb_);
    int32_t c = la_bpe_token_to_id(t, spbuf, la_ + lb_);
    if (c < 0 && (c = la_bpe_add_token(t, spbuf, la_ + lb_)) < 0) goto done;
    if (tk_add_merge_ids(t, a, b, c) < 0) goto done;

    /* Rewrite every word holding (a, b); recount its pairs. */
    ntouched = 0;
    int32_t nw = best->nw;
    for (int32_t wi = 0; wi < nw; wi++) {
      int32_t w = s.pairs[e.idx].words[wi];
      if (stamp[w] == round) continue;
      stamp[w] = round;
      tr_word *wd = &words[w];
      int32_t *sy = syms + wd->off;
      int32_t len = wd->len;
      bool has = false;
      for (int32_t k = 0; k + 1 < len; k++)
        if (sy[k] == a && sy[k + 1] == b) { has = true; break; }
      if (!has) continue;
      for (int32_t k = 0; k + 1 < len; k++) {
        int32_t p = tk_pmap_get(&s.index, tk_pkey(sy[k], sy[k + 1]));
        s.pairs[p].count -= wd->freq;
      }
      int32_t m = 0;
      for (int32_t k = 0; k < len;) {
        if (k + 1 < len && sy[k] == a && sy[k + 1] == b) { sy[m++] = c; k += 2; }
        else sy[m++] = sy[k++];
      }
      wd->len = m;
      for (int32_t k = 0; k + 1 < m; k++) {
        int32_t p = tr_pair_of(&s, sy[k], sy[k + 1]);
        if (p < 0) goto done;
        tr_pair *pp = &s.pairs[p];
        pp->count += wd->freq;
        if (sy[k] == c || sy[k + 1] == c) {
          if (tr_note_word(pp, w) < 0) goto done;
          if (pp->stamp != round) {
            pp->stamp = round;
            if (tk_grow(&touched, &tcap, ntouched + 1, sizeof *touched) < 0) goto done;
            touched[ntouched++] = p;
          }
        }
      }
    }
    s.pairs[e.idx].count = 0;
    for (size_t k = 0; k < ntouched; k++) {
      tr_pair *pp = &s.pairs[touched[k]];
      if (pp->count > 0 && tr_hpush(&s, (tr_hent){pp->count, pp->a, pp->b, touched[k]}) < 0) goto done;
    }
    round++;
  }
  ok = true;

done:
  tr_free(&s);
  tk_smap_free(&cc.counts);
  free(words);
  free(syms);
  free(stamp);
  free(touched);
  free(spbuf);
  if (!ok) {
    la_bpe_free(t);
    return NULL;
  }
  la_bpe_clear_cache(t);
  return t;
}
