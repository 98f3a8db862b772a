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

#include <stdio.h>
#include <utf8proc.h>

#include "la_tok_parts.h"
#include "la_tok_util.h"

/* ---------------------------------------------------------------- helpers */

static inline uint64_t tk_mix(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

/* The bytes of a string of 1 to 8 bytes in one integer, read without
** going past its end: two overlapping 4-byte loads, or three bytes for
** 1 to 3.  Strings of the same length pack alike only when they are
** equal.  (Reading the tail byte by byte into an integer would stall the
** load that follows on the bytes' stores.) */
static inline uint64_t tk_pack8(const char *p, size_t n) {
  if (n >= 4) {
    uint32_t lo, hi;
    memcpy(&lo, p, 4);
    memcpy(&hi, p + n - 4, 4);
    return (uint64_t)lo | (uint64_t)hi << 32;
  }
  return (uint64_t)(unsigned char)p[0] | (uint64_t)(unsigned char)p[n / 2] << 8 |
         (uint64_t)(unsigned char)p[n - 1] << 16;
}

static inline uint64_t tk_hash_short(uint64_t packed, size_t n) {
  return tk_mix(packed ^ (uint64_t)n * 0x9E3779B97F4A7C15ULL);
}

static inline uint64_t tk_hash(const char *p, size_t n) {
  if (n <= 8) return n ? tk_hash_short(tk_pack8(p, n), n) : 0;
  uint64_t h = 0x9E3779B97F4A7C15ULL ^ (uint64_t)n, v;
  for (size_t i = 0; i + 8 < n; i += 8) {
    memcpy(&v, p + i, 8);
    h = (h ^ v) * 0x100000001b3ULL;
    h ^= h >> 29;
  }
  memcpy(&v, p + n - 8, 8);   /* the last 8 bytes, overlapping the chunk before */
  return tk_mix(h ^ v);
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

int la_bpe_unicode_to_byte(uint32_t cp) {
  tk_init_table();
  return cp < 324 ? tk_u2b[cp] : -1;
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
  size_t moff;            /* an added token: the text matched (normalized when LA_ADDED_NORMALIZED) */
  uint32_t mlen;
  bool special;
  uint8_t added;          /* LA_ADDED_* flags; 0 for a model token */
} tk_token;

typedef struct {
  int32_t a, b, merged;
} tk_merge;

typedef struct {
  int32_t rank, pos, right;
} tk_hent;

/* Added tokens to find in a text, longest first, and the same ids grouped
** by the first byte of their text (bucket b is bids[bstart[b] .. bstart[b+1]),
** longest first), rebuilt after an addition. */
typedef struct {
  int32_t *ids;
  size_t n, cap;
  int32_t *bids;
  uint32_t bstart[257];
  bool dirty;
  size_t nplain;   /* how many are not special */
  int first;       /* the first byte of every text when they share one, else -1 */
} tk_addlist;

#define TK_CACHE_MAX_WORD 256          /* longer pre-tokens are not cached */
#define TK_CACHE_MAX_ENTRIES (1 << 18)
#define TK_CACHE_MAX_IDS (1 << 22)

/* The word cache: pre-token -> its ids, open addressing over 16-byte
** slots.  A word of up to 8 bytes is kept in its slot (packed, tk_pack8),
** and so is a result of one id, so that the common lookup -- a short word
** that is one token -- reads one slot and nothing else: one cache miss
** where a map of entries, keys and ids takes three in a row. */
typedef struct {
  uint64_t key;    /* len <= 8: the word packed; longer: the hash's high half << 32 | the word's offset in keys */
  uint32_t val;    /* nids == 1: the id; otherwise the offset of the ids in ids */
  uint16_t len;    /* the word's length; 0 marks an empty slot */
  uint16_t nids;
} tk_cslot;

typedef struct {
  tk_cslot *slots;
  size_t cap, n;   /* cap: a power of two, or 0 */
  char *keys;      /* the words longer than 8 bytes */
  size_t klen, kcap;
  int32_t *ids;    /* the results of more than one id */
  size_t nids, icap;
} tk_wcache;

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

  tk_addlist raw_added;        /* added tokens matched in the raw text */
  tk_addlist norm_added;       /* added tokens matched after normalization */

  char *pattern;
  tk_regex rx;
  bool prefix_space;
  size_t heap_threshold;

  /* the model (tokenizer.json's BPE options) */
  bool char_level;             /* symbols are characters looked up by spelling, not bytes */
  bool byte_fallback, fuse_unk, ignore_merges;
  int32_t unk_id;              /* -1: none */
  int32_t fallback_id[256];    /* <0xXX> tokens */
  tk_smap bymap;               /* bytes -> id (ignore_merges on a byte-level vocabulary) */
  bool ms_split;               /* long char-level words are merged between U+2581 runs (tk_word_chars) */
  struct { char c[4]; size_t len; } ms_block[32];
  int ms_nblock;

  /* the pipeline around it; NULL parts are skipped (and GPT-2's regex used) */
  la_norm *norm;
  la_pretok *pretok;
  la_decoder *dec;

  tk_wcache cache;             /* pre-token -> ids */

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
  if (tk_regex_compile(&t->rx, pattern, strlen(pattern), false, "pre-tokenisation") < 0) return -1;
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
  t->unk_id = -1;
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
  free(t->raw_added.ids);
  free(t->raw_added.bids);
  free(t->norm_added.ids);
  free(t->norm_added.bids);
  free(t->pattern);
  tk_regex_free(&t->rx);
  tk_smap_free(&t->bymap);
  la_norm_free(t->norm);
  la_pretok_free(t->pretok);
  la_decoder_free(t->dec);
  free(t->cache.slots);
  free(t->cache.keys);
  free(t->cache.ids);
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
  if (t->char_level) return tk_append(t, sp, len, sp, len);
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

/* Appends id to the list, keeping it sorted longest first (among equal
** lengths, in the order added). */
static int tk_addlist_put(la_bpe *t, tk_addlist *l, int32_t id) {
  if (tk_grow(&l->ids, &l->cap, l->n + 1, sizeof *l->ids) < 0) return -1;
  size_t j = l->n++;
  while (j > 0 && t->tok[l->ids[j - 1]].mlen < t->tok[id].mlen) {
    l->ids[j] = l->ids[j - 1];
    j--;
  }
  l->ids[j] = id;
  l->dirty = true;
  if (!t->tok[id].special) l->nplain++;
  return 0;
}

/* The first-byte buckets, by a counting sort that keeps the order. */
static int tk_addlist_index(la_bpe *t, tk_addlist *l) {
  if (!l->dirty) return 0;
  free(l->bids);
  l->bids = malloc((l->n ? l->n : 1) * sizeof *l->bids);
  if (!l->bids) return la_failn("tokenizer: out of memory");
  uint32_t count[257] = {0};
  for (size_t i = 0; i < l->n; i++) count[(unsigned char)t->arena[t->tok[l->ids[i]].moff] + 1]++;
  l->bstart[0] = 0;
  for (int b = 1; b <= 256; b++) l->bstart[b] = l->bstart[b - 1] + count[b];
  uint32_t fill[256];
  memcpy(fill, l->bstart, sizeof fill);
  for (size_t i = 0; i < l->n; i++) l->bids[fill[(unsigned char)t->arena[t->tok[l->ids[i]].moff]]++] = l->ids[i];
  l->first = -1;
  for (int b = 0; b < 256; b++) {
    if (l->bstart[b + 1] == l->bstart[b]) continue;
    l->first = l->first == -1 ? b : -2;
  }
  if (l->first < 0) l->first = -1;
  l->dirty = false;
  return 0;
}

int32_t la_bpe_add_special(la_bpe *t, const char *text, size_t len, int32_t id) {
  return la_bpe_add_added(t, text, len, id, LA_ADDED_SPECIAL);
}

int32_t la_bpe_add_added(la_bpe *t, const char *text, size_t len, int32_t id, unsigned flags) {
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
  tk_token *k = &t->tok[id];
  if (flags & LA_ADDED_SPECIAL) k->special = true;
  if (!k->added) {
    bool normalized = (flags & LA_ADDED_NORMALIZED) && t->norm;
    k->moff = k->boff;
    k->mlen = k->blen;
    if (normalized) {   /* matched in normalized text: match its normalized form */
      char *nt;
      size_t nl;
      if (la_norm_apply(t->norm, text, len, &nt, &nl) < 0) return -1;
      int err = 0;
      size_t off = nl ? tk_arena_put(t, nt, nl, &err) : 0;
      free(nt);
      if (err) return -1;
      k = &t->tok[id];
      if (nl == 0 || nl > UINT32_MAX) return la_failn("tokenizer: added token '%s' normalizes to nothing",
                                                      tk_show(text, len, show, sizeof show));
      k->moff = off;
      k->mlen = (uint32_t)nl;
    }
    if (tk_addlist_put(t, normalized ? &t->norm_added : &t->raw_added, id) < 0) return -1;
  }
  k->added = (uint8_t)(flags | LA_ADDED_ANY | (k->special ? LA_ADDED_SPECIAL : 0));
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
  tk_wcache *c = &t->cache;
  if (c->n) memset(c->slots, 0, c->cap * sizeof *c->slots);
  c->n = c->klen = c->nids = 0;
}

/* ---------------------------------------------------------------- the word cache */

static inline bool tk_wcache_holds(const tk_wcache *c, const tk_cslot *s, const char *w, size_t n, uint64_t packed,
                                   uint64_t h) {
  if (n <= 8) return s->key == packed;
  return (uint32_t)(s->key >> 32) == (uint32_t)(h >> 32) && memcmp(c->keys + (uint32_t)s->key, w, n) == 0;
}

/* The slot of word w (1 to TK_CACHE_MAX_WORD bytes), or NULL; its hash in *hash. */
static inline const tk_cslot *tk_wcache_find(const tk_wcache *c, const char *w, size_t n, uint64_t *hash) {
  uint64_t packed = n <= 8 ? tk_pack8(w, n) : 0;
  uint64_t h = n <= 8 ? tk_hash_short(packed, n) : tk_hash(w, n);
  *hash = h;
  if (!c->cap) return NULL;
  size_t mask = c->cap - 1;
  for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
    const tk_cslot *s = &c->slots[i];
    if (s->len == n && tk_wcache_holds(c, s, w, n, packed, h)) return s;
    if (s->len == 0) return NULL;
  }
}

/* Appends the ids of a cached word. */
static inline int tk_wcache_emit(const tk_wcache *c, const tk_cslot *s, la_ids *out) {
  if (s->nids == 1) return tk_push_id(out, (int32_t)s->val);
  size_t m = s->nids;
  if (out->n + m > out->cap && tk_grow(&out->ids, &out->cap, out->n + m, sizeof *out->ids) < 0) return -1;
  if (m) memcpy(out->ids + out->n, c->ids + s->val, m * sizeof *out->ids);
  out->n += m;
  return 0;
}

static inline size_t tk_wcache_home(const tk_wcache *c, const tk_cslot *s) {
  uint64_t h = s->len <= 8 ? tk_hash_short(s->key, s->len) : tk_hash(c->keys + (uint32_t)s->key, s->len);
  return (size_t)h & (c->cap - 1);
}

static int tk_wcache_rehash(tk_wcache *c, size_t ncap) {
  tk_cslot *ns = calloc(ncap, sizeof *ns), *old = c->slots;
  if (!ns) return la_failn("tokenizer: out of memory");
  size_t ocap = c->cap;
  c->slots = ns;
  c->cap = ncap;
  for (size_t j = 0; j < ocap; j++) {
    if (!old[j].len) continue;
    size_t i = tk_wcache_home(c, &old[j]);
    while (ns[i].len) i = (i + 1) & (ncap - 1);
    ns[i] = old[j];
  }
  free(old);
  return 0;
}

/* Caches word w (absent; h its hash) as ids[0 .. m); starts the cache
** afresh when it is full. */
static int tk_wcache_put(tk_wcache *c, const char *w, size_t n, uint64_t h, const int32_t *ids, size_t m) {
  if (c->n >= TK_CACHE_MAX_ENTRIES || c->nids + m > TK_CACHE_MAX_IDS) {
    memset(c->slots, 0, c->cap * sizeof *c->slots);
    c->n = c->klen = c->nids = 0;
  }
  if ((c->n + 1) * 2 > c->cap && tk_wcache_rehash(c, c->cap ? c->cap * 2 : 1024) < 0) return -1;
  tk_cslot e = {.len = (uint16_t)n, .nids = (uint16_t)m};
  if (n <= 8) {
    e.key = tk_pack8(w, n);
  } else {
    if (tk_grow(&c->keys, &c->kcap, c->klen + n, 1) < 0) return -1;
    memcpy(c->keys + c->klen, w, n);
    e.key = (h >> 32) << 32 | (uint64_t)c->klen;
    c->klen += n;
  }
  if (m == 1) {
    e.val = (uint32_t)ids[0];
  } else {
    if (tk_grow(&c->ids, &c->icap, c->nids + m, sizeof *c->ids) < 0) return -1;
    if (m) memcpy(c->ids + c->nids, ids, m * sizeof *ids);
    e.val = (uint32_t)c->nids;
    c->nids += m;
  }
  size_t mask = c->cap - 1, i = (size_t)h & mask;
  while (c->slots[i].len) i = (i + 1) & mask;
  c->slots[i] = e;
  c->n++;
  return 0;
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

/* The initial symbols of a word in t->sym, one per byte (byte-level), or
** one per character found by its spelling, else its <0xXX> byte tokens
** (byte_fallback), else the unknown token (one for a run when fuse_unk),
** else nothing (as Hugging Face's BPE does).  Returns the count, or -1. */
static ptrdiff_t tk_symbols(la_bpe *t, const char *w, size_t n) {
  if (!t->char_level) {
    for (size_t i = 0; i < n; i++) {
      int32_t id = t->byte_id[(unsigned char)w[i]];
      if (id < 0) return la_failn("tokenizer: the vocabulary has no token for byte 0x%02X", (unsigned char)w[i]);
      t->sym[i] = id;
    }
    return (ptrdiff_t)n;
  }
  size_t m = 0;
  bool last_unk = false;
  for (size_t i = 0; i < n;) {
    int32_t cp;
    size_t k = tk_utf8((const unsigned char *)w + i, n - i, &cp);
    int64_t *v = tk_smap_find(&t->vocab, w + i, k, tk_hash(w + i, k));
    bool fallback = !v && t->byte_fallback;
    for (size_t j = 0; fallback && j < k; j++)
      if (t->fallback_id[(unsigned char)w[i + j]] < 0) fallback = false;
    if (v) {
      t->sym[m++] = (int32_t)*v;
      last_unk = false;
    } else if (fallback) {
      for (size_t j = 0; j < k; j++) t->sym[m++] = t->fallback_id[(unsigned char)w[i + j]];
      last_unk = false;
    } else if (t->unk_id >= 0) {
      if (!(t->fuse_unk && last_unk)) t->sym[m++] = t->unk_id;
      last_unk = true;
    }
    i += k;
  }
  return (ptrdiff_t)m;
}

/* The whole word as one token (ignore_merges), or -1. */
static int32_t tk_whole_word(la_bpe *t, const char *w, size_t n) {
  const tk_smap *m = t->char_level ? &t->vocab : &t->bymap;
  int64_t *v = tk_smap_find(m, w, n, tk_hash(w, n));
  return v ? (int32_t)*v : -1;
}

/* A pre-token not in the cache: the whole word as one token (when
** ignore_merges), else its symbols merged; appended to out and cached
** (h: its hash when short enough to cache). */
static int tk_word_merge(la_bpe *t, const char *w, size_t n, uint64_t h, la_ids *out) {
  if (n > (size_t)INT32_MAX / 4)
    return la_failn("tokenizer: a pre-token of %zu bytes is too long (the limit is %d)", n, INT32_MAX / 4);
  if (tk_scratch(t, n) < 0) return -1;
  int32_t whole = t->ignore_merges ? tk_whole_word(t, w, n) : -1;
  ptrdiff_t ns = 1;
  if (whole >= 0) t->sym[0] = whole;
  else ns = tk_symbols(t, w, n);
  if (ns < 0) return -1;
  size_t m = (size_t)ns;
  if (whole < 0 && t->nmerges && m > 1) {
    if (m > t->heap_threshold) {
      if (tk_merge_heap(t, m, &m) < 0) return -1;
    } else {
      m = tk_merge_scan(t, m);
    }
  }
  if (out->n + m > out->cap && tk_grow(&out->ids, &out->cap, out->n + m, sizeof *out->ids) < 0) return -1;
  memcpy(out->ids + out->n, t->sym, m * sizeof *t->sym);
  out->n += m;
  if (n <= TK_CACHE_MAX_WORD) return tk_wcache_put(&t->cache, w, n, h, t->sym, m);
  return 0;
}

/* Appends the ids of one pre-token: a byte, or a word in the cache, here
** (inlined into the pre-tokenizers' callbacks: this is the hot path), the
** rest in tk_word_merge. */
static inline int tk_word(la_bpe *t, const char *w, size_t n, la_ids *out) {
  if (n == 0) return 0;
  if (n == 1 && !t->char_level) {
    int32_t id = t->byte_id[(unsigned char)w[0]];
    if (id < 0) return la_failn("tokenizer: the vocabulary has no token for byte 0x%02X", (unsigned char)w[0]);
    return tk_push_id(out, id);
  }
  uint64_t h = 0;
  if (n <= TK_CACHE_MAX_WORD) {
    const tk_cslot *s = tk_wcache_find(&t->cache, w, n, &h);
    if (s) return tk_wcache_emit(&t->cache, s, out);
  }
  return tk_word_merge(t, w, n, h, out);
}

/* ---------------------------------------------------------------- pre-tokenisation */

/* GPT-2's way: each regex match is a pre-token, and so is each stretch
** between two matches (bytes that are not valid UTF-8, which match nothing). */
static inline int tk_pieces(la_bpe *t, const char *text, size_t len, la_bpe_piece_fn fn, void *ctx) {
  size_t off = 0;
  for (;;) {
    size_t s = 0, e = 0;
    int rc = tk_regex_next(&t->rx, text, len, off, &s, &e);
    if (rc < 0) return -1;
    if (rc == 0) break;
    if (s > off && fn(ctx, text + off, s - off) < 0) return -1;
    if (fn(ctx, text + s, e - s) < 0) return -1;
    off = e;
  }
  if (off < len && fn(ctx, text + off, len - off) < 0) return -1;
  return 0;
}

int la_bpe_pretokenize(la_bpe *t, const char *text, size_t len, la_bpe_piece_fn fn, void *ctx) {
  if (t->pretok) return la_pretok_run(t->pretok, text, len, true, fn, ctx);
  if (t->char_level) return len ? fn(ctx, text, len) : 0;
  return tk_pieces(t, text, len, fn, ctx);
}

typedef struct {
  la_bpe *t;
  la_ids *out;
} tk_enc_ctx;

/* SentencePiece-style vocabularies mark word starts with U+2581 and their
** tokens hold it only at the start (or in runs of it): no token holds a
** character X followed by it, for most X.  A merge can then never join the
** symbols on the two sides of the place where a run of U+2581 follows such
** an X, so a long pre-token (a whole text, when there is no pre-tokenizer)
** is merged piece by piece between those places -- the same result, with
** short pieces the word cache can hold.  t->ms_split says whether the
** vocabulary allows it; t->ms_block lists the X that do occur before it. */
#define TK_MS "\xE2\x96\x81"
#define TK_MS_LEN 3
#define TK_MS_BLOCK_MAX 32

static bool tk_ms_blocked(const la_bpe *t, const char *w, size_t end) {
  size_t st = end - 1;   /* the start of the character before end */
  while (st > 0 && ((unsigned char)w[st] & 0xC0) == 0x80 && end - st < 4) st--;
  for (int i = 0; i < t->ms_nblock; i++)
    if (t->ms_block[i].len == end - st && memcmp(t->ms_block[i].c, w + st, end - st) == 0) return true;
  return false;
}

/* Merges a char-level word piece by piece (see above) or whole. */
static int tk_word_chars(la_bpe *t, const char *w, size_t n, la_ids *out) {
  if (!t->ms_split || n <= TK_CACHE_MAX_WORD) return tk_word(t, w, n, out);
  size_t start = 0;
  for (size_t i = 1; i + TK_MS_LEN <= n; i++) {
    if (memcmp(w + i, TK_MS, TK_MS_LEN) != 0) continue;
    bool after_ms = i >= TK_MS_LEN && memcmp(w + i - TK_MS_LEN, TK_MS, TK_MS_LEN) == 0;
    if (after_ms || tk_ms_blocked(t, w, i)) continue;
    if (tk_word(t, w + start, i - start, out) < 0) return -1;
    start = i;
  }
  return tk_word(t, w + start, n - start, out);
}

static int tk_piece_encode(void *ctx, const char *p, size_t n) {
  tk_enc_ctx *c = ctx;
  if (c->t->char_level) return tk_word_chars(c->t, p, n, c->out);
  return tk_word(c->t, p, n, c->out);
}

/* GPT-2's path (tk_segment): byte-level words only. */
static int tk_piece_encode_bytes(void *ctx, const char *p, size_t n) {
  tk_enc_ctx *c = ctx;
  return tk_word(c->t, p, n, c->out);
}

/* One stretch free of added tokens, GPT-2's way: the prefix space, then
** the regex. */
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
  return tk_pieces(t, s, n, tk_piece_encode_bytes, &c);
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

/* What runs on the stretches between added tokens. */
typedef int (*tk_gap_fn)(la_bpe *t, const char *s, size_t n, bool at_start, bool recognise, la_ids *out);

/* Word characters for single_word added tokens: letters, digits, '_'. */
static bool tk_word_char(const char *s, size_t n, bool last) {
  if (n == 0) return false;
  size_t i = 0;
  if (last) {
    i = n - 1;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80 && n - i < 4) i--;
  }
  int32_t cp;
  tk_utf8((const unsigned char *)s + i, n - i, &cp);
  if (cp == '_') return true;
  if (cp < 0) return false;
  utf8proc_category_t c = utf8proc_category(cp);
  return c == UTF8PROC_CATEGORY_LU || c == UTF8PROC_CATEGORY_LL || c == UTF8PROC_CATEGORY_LT ||
         c == UTF8PROC_CATEGORY_LM || c == UTF8PROC_CATEGORY_LO || c == UTF8PROC_CATEGORY_ND ||
         c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
}

/* Skips White_Space forward from i (dir > 0) or backward to i (dir < 0). */
static size_t tk_skip_ws(const char *s, size_t n, size_t i, int dir) {
  if (dir > 0) {
    while (i < n) {
      int32_t cp;
      size_t k = tk_utf8((const unsigned char *)s + i, n - i, &cp);
      if (cp < 0 || !tk_is_ws(cp)) break;
      i += k;
    }
    return i;
  }
  while (i > 0) {
    size_t st = i - 1;
    while (st > 0 && ((unsigned char)s[st] & 0xC0) == 0x80 && i - st < 4) st--;
    int32_t cp;
    size_t k = tk_utf8((const unsigned char *)s + st, i - st, &cp);
    if (cp < 0 || st + k != i || !tk_is_ws(cp)) break;
    i = st;
  }
  return i;
}

/* The leftmost added token of l in s at or after from, the longest there:
** its list entry in *which and position, or n. */
static size_t tk_added_next(la_bpe *t, tk_addlist *l, const char *s, size_t n, size_t from, int32_t *which) {
  for (size_t p = from; p < n; p++) {
    if (l->first >= 0) {   /* one first byte (GPT-2's, Qwen's, Llama's "<"): memchr to it */
      const char *q = memchr(s + p, l->first, n - p);
      if (!q) return n;
      p = (size_t)(q - s);
    }
    unsigned char b = (unsigned char)s[p];
    for (uint32_t j = l->bstart[b]; j < l->bstart[b + 1]; j++) {
      const tk_token *k = &t->tok[l->bids[j]];
      if (k->mlen <= n - p && memcmp(s + p, t->arena + k->moff, k->mlen) == 0) {
        *which = l->bids[j];
        return p;
      }
    }
  }
  return n;
}

/* Cuts the added tokens of l out of s (as Hugging Face's AddedVocabulary:
** leftmost-longest matches; single_word, lstrip, rstrip honoured; special
** ones skipped unless recognise) and runs gap on the stretches between. */
static int tk_split_added(la_bpe *t, tk_addlist *l, const char *s, size_t n, bool at_start, bool recognise,
                          tk_gap_fn gap, la_ids *out) {
  if (l->n == 0 || (!recognise && l->nplain == 0)) return gap(t, s, n, at_start, recognise, out);
  if (tk_addlist_index(t, l) < 0) return -1;
  size_t search = 0, done = 0;
  for (;;) {
    int32_t id = -1;
    size_t ms = tk_added_next(t, l, s, n, search, &id);
    if (ms >= n) break;
    const tk_token *k = &t->tok[id];
    size_t me = ms + k->mlen, start = ms, stop = me;
    search = me;
    if (k->special && !recognise) continue;
    if (k->added & LA_ADDED_SINGLE_WORD) {
      bool space_before = ms == 0 || !tk_word_char(s, ms, true);
      bool space_after = me == n || !tk_word_char(s + me, n - me, false);
      if (!space_before || !space_after) continue;
    }
    if (k->added & LA_ADDED_LSTRIP) {
      start = tk_skip_ws(s, ms, ms, -1);
      if (start < done) start = done;
    }
    if (k->added & LA_ADDED_RSTRIP) stop = tk_skip_ws(s, n, me, 1);
    if (done < start && gap(t, s + done, start - done, at_start && done == 0, recognise, out) < 0) return -1;
    if (tk_push_id(out, id) < 0) return -1;
    done = stop;
  }
  if (done < n) return gap(t, s + done, n - done, at_start && done == 0, recognise, out);
  return 0;
}

/* A stretch of normalized text free of added tokens: pre-tokens, then the model. */
static int tk_gap_pretok(la_bpe *t, const char *s, size_t n, bool at_start, bool recognise, la_ids *out) {
  (void)recognise;
  if (n == 0) return 0;
  if (t->pretok) {
    tk_enc_ctx c = {t, out};
    return la_pretok_run(t->pretok, s, n, at_start, tk_piece_encode, &c);
  }
  if (t->char_level) return tk_word_chars(t, s, n, out);   /* no pre-tokenizer: one word */
  return tk_segment(t, s, n, out);
}

/* A stretch of raw text free of raw-matched added tokens: normalized, then
** split on the normalized added tokens. */
static int tk_gap_raw(la_bpe *t, const char *s, size_t n, bool at_start, bool recognise, la_ids *out) {
  if (!t->norm) return tk_gap_pretok(t, s, n, at_start, recognise, out);
  char *ns;
  size_t nn;
  if (la_norm_apply(t->norm, s, n, &ns, &nn) < 0) return -1;
  int rc = tk_split_added(t, &t->norm_added, ns, nn, at_start, recognise, tk_gap_pretok, out);
  free(ns);
  return rc;
}

int la_bpe_encode(la_bpe *t, const char *text, size_t len, bool recognise_special, la_ids *out) {
  return tk_split_added(t, &t->raw_added, text, len, true, recognise_special, tk_gap_raw, out);
}

/* ---------------------------------------------------------------- the pipeline and the model's options */

static int tk_fresh(la_bpe *t, const char *what) {
  if (t->raw_added.n || t->norm_added.n)
    return la_failn("tokenizer: set the %s before adding special tokens", what);
  return 0;
}

int la_bpe_set_normalizer(la_bpe *t, la_norm *n) {
  if (tk_fresh(t, "normalizer") < 0) return -1;
  la_norm_free(t->norm);
  t->norm = n;
  la_bpe_clear_cache(t);
  return 0;
}

void la_bpe_set_pretokenizer(la_bpe *t, la_pretok *p) {
  la_pretok_free(t->pretok);
  t->pretok = p;
  la_bpe_clear_cache(t);
}

void la_bpe_set_decoder(la_bpe *t, la_decoder *d) {
  la_decoder_free(t->dec);
  t->dec = d;
}

/* Whether the vocabulary allows tk_word_chars's split: U+2581 is a token,
** and at most TK_MS_BLOCK_MAX characters X occur in a token as X + U+2581
** (X not U+2581 itself); those are kept in ms_block. */
static void tk_ms_check(la_bpe *t) {
  t->ms_split = false;
  t->ms_nblock = 0;
  if (!t->char_level || la_bpe_token_to_id(t, TK_MS, TK_MS_LEN) < 0) return;
  for (size_t id = 0; id < t->ntok; id++) {
    const tk_token *k = &t->tok[id];
    const char *sp = t->arena + k->soff;
    for (size_t i = 1; i + TK_MS_LEN <= k->slen; i++) {
      if (memcmp(sp + i, TK_MS, TK_MS_LEN) != 0) continue;
      if (i >= TK_MS_LEN && memcmp(sp + i - TK_MS_LEN, TK_MS, TK_MS_LEN) == 0) continue;
      size_t st = i - 1;
      while (st > 0 && ((unsigned char)sp[st] & 0xC0) == 0x80 && i - st < 4) st--;
      if (tk_ms_blocked(t, sp, i)) continue;
      if (t->ms_nblock == TK_MS_BLOCK_MAX) return;   /* too many: merge whole words */
      memcpy(t->ms_block[t->ms_nblock].c, sp + st, i - st);
      t->ms_block[t->ms_nblock++].len = i - st;
    }
  }
  t->ms_split = true;
}

int la_bpe_set_char_level(la_bpe *t) {
  if (t->ntok) return la_failn("tokenizer: a character-level vocabulary must be chosen before adding tokens");
  t->char_level = true;
  return 0;
}

int la_bpe_set_model(la_bpe *t, bool byte_fallback, int32_t unk_id, bool fuse_unk, bool ignore_merges) {
  if (unk_id >= 0 && (size_t)unk_id >= t->ntok)
    return la_failn("tokenizer: the unknown token's id %d is not in the vocabulary", (int)unk_id);
  t->byte_fallback = byte_fallback;
  t->unk_id = unk_id;
  t->fuse_unk = fuse_unk;
  t->ignore_merges = ignore_merges;
  for (int b = 0; b < 256; b++) {
    char sp[8];
    snprintf(sp, sizeof sp, "<0x%02X>", b);
    t->fallback_id[b] = byte_fallback ? la_bpe_token_to_id(t, sp, 6) : -1;
  }
  tk_ms_check(t);
  tk_smap_free(&t->bymap);
  if (ignore_merges && !t->char_level) {
    for (size_t id = 0; id < t->ntok; id++) {
      const tk_token *k = &t->tok[id];
      const char *b = t->arena + k->boff;
      uint64_t h = tk_hash(b, k->blen);
      if (!tk_smap_find(&t->bymap, b, k->blen, h) && tk_smap_add(&t->bymap, b, k->blen, h, (int64_t)id) < 0)
        return -1;
    }
  }
  la_bpe_clear_cache(t);
  return 0;
}

int la_bpe_decode(la_bpe *t, const int32_t *ids, size_t n, bool skip_special, char **out, size_t *outlen) {
  const char **toks = malloc((n ? n : 1) * sizeof *toks);
  size_t *lens = malloc((n ? n : 1) * sizeof *lens);
  if (!toks || !lens) {
    free(toks);
    free(lens);
    return la_failn("tokenizer: out of memory");
  }
  size_t m = 0;
  for (size_t i = 0; i < n; i++) {
    if (ids[i] < 0 || (size_t)ids[i] >= t->ntok) {
      free(toks);
      free(lens);
      return la_failn("decode: id %d at position %zu is out of range (the vocabulary has %d tokens, ids 0..%d)",
                      (int)ids[i], i + 1, (int)t->ntok, (int)t->ntok - 1);
    }
    const tk_token *k = &t->tok[ids[i]];
    if (skip_special && k->special) continue;
    if (t->dec) {
      toks[m] = t->arena + k->soff;
      lens[m++] = k->slen;
    } else {
      toks[m] = t->arena + k->boff;
      lens[m++] = k->blen;
    }
  }
  int rc = 0;
  if (t->dec) {
    rc = la_decoder_run(t->dec, toks, lens, m, out, outlen);
  } else {
    tk_buf b = {0};
    for (size_t i = 0; i < m && rc == 0; i++) rc = tk_buf_put(&b, toks[i], lens[i]);
    if (rc == 0) rc = tk_buf_put(&b, "", 0);
    if (rc == 0) {
      *out = b.p;
      *outlen = b.n;
    } else {
      tk_buf_free(&b);
    }
  }
  free(toks);
  free(lens);
  return rc;
}

bool la_bpe_has_decoder(const la_bpe *t) { return t->dec != NULL; }

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
