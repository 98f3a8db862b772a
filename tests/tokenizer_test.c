/*
** tokenizer_test.c -- tests of the tokenizer core (engine/tokenizer/)
** alone, with no Lua, so that memory checkers can run on it directly.
**
** Prints one line per test, "ok NAME" or "FAIL NAME: why", and a final
** "N passed, N failed".  tests/tokenizer_c_spec.lua runs it in `make test`.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "la.h"
#include "la_tokenizer.h"

static int passed, failed;
static char why[512];

#define CHECK(cond, ...)                          \
  do {                                            \
    if (!(cond)) {                                \
      snprintf(why, sizeof why, __VA_ARGS__);     \
      goto fail;                                  \
    }                                             \
  } while (0)

static void run(const char *name, int (*fn)(void)) {
  why[0] = 0;
  if (fn()) { passed++; printf("ok %s\n", name); }
  else { failed++; printf("FAIL %s: %s\n", name, why); }
}

/* A tokenizer over the 256 bytes (spelled as GPT-2 spells them). */
static la_bpe *byte_level(void) {
  la_bpe *t = la_bpe_new(NULL, false);
  if (!t) return NULL;
  for (int b = 0; b < 256; b++) {
    char sp[4];
    uint32_t cp = la_bpe_byte_to_unicode((unsigned char)b);
    size_t n;
    if (cp < 0x80) { sp[0] = (char)cp; n = 1; }
    else { sp[0] = (char)(0xC0 | (cp >> 6)); sp[1] = (char)(0x80 | (cp & 0x3F)); n = 2; }
    if (la_bpe_add_token(t, sp, n) != b) { la_bpe_free(t); return NULL; }
  }
  return t;
}

static int same_ids(const la_ids *v, const int32_t *expect, size_t n) {
  if (v->n != n) return 0;
  for (size_t i = 0; i < n; i++)
    if (v->ids[i] != expect[i]) return 0;
  return 1;
}

static int test_byte_table(void) {
  CHECK(la_bpe_byte_to_unicode('!') == '!', "'!' should stand for itself");
  CHECK(la_bpe_byte_to_unicode(' ') == 0x120, "space should be U+0120 (got %u)", la_bpe_byte_to_unicode(' '));
  CHECK(la_bpe_byte_to_unicode(0) == 0x100, "byte 0 should be U+0100");
  CHECK(la_bpe_byte_to_unicode(0xAD) == 0x143, "byte 0xAD should be U+0143 (got %u)", la_bpe_byte_to_unicode(0xAD));
  return 1;
fail:
  return 0;
}

/* Merges by rank, every occurrence from left to right, as encoder.py. */
static int test_merge_order(void) {
  la_ids out = {0};
  la_bpe *t = byte_level();
  CHECK(t, "%s", la_error());
  CHECK(la_bpe_add_token(t, "aa", 2) == 256, "id of aa");
  CHECK(la_bpe_add_token(t, "aaaa", 4) == 257, "id of aaaa");
  CHECK(la_bpe_add_merge(t, "a", 1, "a", 1) == 0, "%s", la_error());
  CHECK(la_bpe_add_merge(t, "aa", 2, "aa", 2) == 0, "%s", la_error());
  for (int pass = 0; pass < 2; pass++) {   /* scan, then heap */
    la_bpe_set_heap_threshold(t, pass == 0 ? 1000 : 0);
    out.n = 0;
    CHECK(la_bpe_encode(t, "aaaaaaa", 7, true, &out) == 0, "%s", la_error());
    const int32_t expect[] = {257, 256, 'a'};
    CHECK(same_ids(&out, expect, 3), "aaaaaaa gave %zu ids (pass %d)", out.n, pass);
  }
  la_ids_free(&out);
  la_bpe_free(t);
  return 1;
fail:
  la_ids_free(&out);
  la_bpe_free(t);
  return 0;
}

/* More distinct words than the word cache holds (2^18): the cache starts
** afresh when full, and the words cached after that, short (up to 8 bytes,
** kept in their slots) and long, give their ids again on a second pass. */
static int test_word_cache_restarts(void) {
  enum { NWORDS = 300000 };
  la_ids out = {0};
  char *text = malloc(NWORDS * 16);
  int32_t *expect = malloc(NWORDS * 16 * sizeof *expect);
  size_t n = 0, m = 0;
  la_bpe *t = byte_level();
  CHECK(t && text && expect, "%s", la_error());
  CHECK(la_bpe_add_token(t, "ab", 2) == 256, "id of ab");
  CHECK(la_bpe_add_merge(t, "a", 1, "b", 1) == 0, "%s", la_error());
  for (int i = 0; i < NWORDS; i++) {   /* " ab" and i in base 24 ('c'..'z'), 2 to 9 digits: 5 to 12 bytes */
    char digits[16];
    int k = 0, width = 2 + i % 8;
    for (int v = i; v > 0 || k < width; v /= 24) digits[k++] = (char)('c' + v % 24);
    memcpy(text + n, " ab", 3);
    memcpy(text + n + 3, digits, (size_t)k);
    n += 3 + (size_t)k;
    expect[m++] = ' ';
    expect[m++] = 256;
    for (int j = 0; j < k; j++) expect[m++] = (unsigned char)digits[j];
  }
  for (int pass = 0; pass < 2; pass++) {
    out.n = 0;
    CHECK(la_bpe_encode(t, text, n, true, &out) == 0, "%s", la_error());
    CHECK(same_ids(&out, expect, m), "pass %d gave %zu ids, not the %zu expected (or other ids)", pass + 1, out.n, m);
  }
  la_ids_free(&out);
  la_bpe_free(t);
  free(text);
  free(expect);
  return 1;
fail:
  la_ids_free(&out);
  la_bpe_free(t);
  free(text);
  free(expect);
  return 0;
}

static int test_specials_and_invalid_utf8(void) {
  la_ids out = {0};
  la_bpe *t = byte_level();
  CHECK(t, "%s", la_error());
  int32_t eot = la_bpe_add_special(t, "<|e|>", 5, -1);
  CHECK(eot == 256, "special id %d", eot);
  CHECK(la_bpe_is_special(t, eot), "not special");
  const char text[] = "x<|e|>\xff\xfe<|e|";
  CHECK(la_bpe_encode(t, text, sizeof text - 1, true, &out) == 0, "%s", la_error());
  const int32_t expect[] = {'x', 256, 0xff, 0xfe, '<', '|', 'e', '|'};
  CHECK(same_ids(&out, expect, 8), "got %zu ids", out.n);
  out.n = 0;
  CHECK(la_bpe_encode(t, text, sizeof text - 1, false, &out) == 0, "%s", la_error());
  CHECK(out.n == sizeof text - 1, "split specials: %zu ids", out.n);
  la_ids_free(&out);
  la_bpe_free(t);
  return 1;
fail:
  la_ids_free(&out);
  la_bpe_free(t);
  return 0;
}

static int test_errors(void) {
  la_bpe *t = byte_level();
  CHECK(t, "%s", la_error());
  CHECK(la_bpe_add_merge(t, "a", 1, "b", 1) < 0, "merge to a missing token accepted");
  CHECK(strstr(la_error(), "'ab'"), "message: %s", la_error());
  const char bad[] = "#version: 0.2\na a\nab\n";
  la_bpe_add_token(t, "aa", 2);
  CHECK(la_bpe_add_merges_text(t, bad, sizeof bad - 1, "v.bpe") < 0, "bad line accepted");
  CHECK(strncmp(la_error(), "v.bpe:3:", 8) == 0, "message: %s", la_error());
  CHECK(la_bpe_add_special(t, "<x>", 3, 500) < 0, "a gap in ids accepted");
  CHECK(la_bpe_new("(unclosed", false) == NULL, "a bad regex accepted");
  CHECK(strstr(la_error(), "regex"), "message: %s", la_error());
  la_bpe_free(t);
  return 1;
fail:
  la_bpe_free(t);
  return 0;
}

static int test_train(void) {
  const char *texts[] = {"ba ab"};
  size_t lens[] = {5};
  la_bpe *t = la_bpe_train(texts, lens, 1, NULL, NULL, 0, 259, 1, NULL);
  CHECK(t, "%s", la_error());
  CHECK(la_bpe_vocab_size(t) == 259, "vocab %d", la_bpe_vocab_size(t));
  size_t n;
  const char *b = la_bpe_token_bytes(t, 256, &n);
  CHECK(n == 2 && memcmp(b, " a", 2) == 0, "first merge should be ' a'");
  b = la_bpe_token_bytes(t, 258, &n);
  CHECK(n == 3 && memcmp(b, " ab", 3) == 0, "third merge should be ' ab'");
  la_bpe_free(t);
  return 1;
fail:
  la_bpe_free(t);
  return 0;
}

/* ---------------------------------------------------------------- pipeline parts */

#define MS "\xE2\x96\x81"   /* U+2581, SentencePiece's word mark */

/* The normalizer steps in order, on text with a ligature, a dotted capital I
** and an invalid byte (kept as it is). */
static int test_normalizers(void) {
  char *out = NULL;
  size_t len = 0;
  la_norm *n = la_norm_new();
  CHECK(n, "%s", la_error());
  CHECK(la_norm_add(n, LA_NORM_NFKC, NULL, 0, NULL, 0, false, false) == 0, "%s", la_error());
  CHECK(la_norm_add(n, LA_NORM_LOWERCASE, NULL, 0, NULL, 0, false, false) == 0, "%s", la_error());
  CHECK(la_norm_add(n, LA_NORM_STRIP, NULL, 0, NULL, 0, true, true) == 0, "%s", la_error());
  CHECK(la_norm_add(n, LA_NORM_REPLACE, " ", 1, MS, 3, true, false) == 0, "%s", la_error());
  CHECK(la_norm_add(n, LA_NORM_PREPEND, NULL, 0, MS, 3, false, false) == 0, "%s", la_error());
  static const char in[] = "  \xEF\xAC\x81 \xC4\xB0 A\xFF ";   /* "  <fi ligature> <I dot> A\xff " */
  static const char want[] = MS "fi" MS "i\xCC\x87" MS "a\xFF";
  CHECK(la_norm_apply(n, in, sizeof in - 1, &out, &len) == 0, "%s", la_error());
  CHECK(len == sizeof want - 1 && memcmp(out, want, len) == 0, "normalized to %zu bytes '%.*s'", len, (int)len, out);
  CHECK(la_norm_add(n, LA_NORM_REPLACE, "(", 1, "", 0, false, false) < 0, "a bad regex accepted");
  CHECK(strstr(la_error(), "Replace normalizer"), "message: %s", la_error());
  free(out);
  la_norm_free(n);
  return 1;
fail:
  free(out);
  la_norm_free(n);
  return 0;
}

typedef struct {
  char buf[256];
  size_t n;
} pieces;

/* Collects pre-tokens as "a|b|c". */
static int collect(void *ctx, const char *p, size_t len) {
  pieces *c = ctx;
  if (c->n + len + 2 > sizeof c->buf) return -1;
  if (c->n) c->buf[c->n++] = '|';
  memcpy(c->buf + c->n, p, len);
  c->n += len;
  c->buf[c->n] = 0;
  return 0;
}

/* The pieces of text under one pre-tokenizer step. */
static const char *pretok_one(const la_pre_step *st, const char *text, bool at_start, pieces *c) {
  memset(c, 0, sizeof *c);
  la_pretok *p = la_pretok_new();
  if (!p) return "(no pretok)";
  int rc = la_pretok_add(p, st);
  if (rc == 0) rc = la_pretok_run(p, text, strlen(text), at_start, collect, c);
  la_pretok_free(p);
  return rc == 0 ? c->buf : "(failed)";
}

/* Hugging Face's split behaviours, Digits, Metaspace's prepend schemes. */
static int test_pretokenizers(void) {
  pieces c;
  const char *got;
  la_pre_step sp = {.kind = LA_PRE_SPLIT, .pattern = " ", .plen = 1, .literal = true,
                    .behavior = LA_SPLIT_MERGED_WITH_PREVIOUS};
  CHECK(strcmp(got = pretok_one(&sp, "a  b", true, &c), "a | |b") == 0, "MergedWithPrevious: %s", got);
  sp.behavior = LA_SPLIT_MERGED_WITH_NEXT;
  CHECK(strcmp(got = pretok_one(&sp, "a  b", true, &c), "a| | b") == 0, "MergedWithNext: %s", got);
  sp.behavior = LA_SPLIT_CONTIGUOUS;
  CHECK(strcmp(got = pretok_one(&sp, "a  b", true, &c), "a|  |b") == 0, "Contiguous: %s", got);
  la_pre_step inv = {.kind = LA_PRE_SPLIT, .pattern = "\\d+", .plen = 3, .behavior = LA_SPLIT_REMOVED, .invert = true};
  CHECK(strcmp(got = pretok_one(&inv, "ab12cd3", true, &c), "12|3") == 0, "Removed, inverted: %s", got);
  la_pre_step dig = {.kind = LA_PRE_DIGITS, .flag = false};
  CHECK(strcmp(got = pretok_one(&dig, "a12b3", true, &c), "a|12|b|3") == 0, "Digits: %s", got);
  dig.flag = true;
  CHECK(strcmp(got = pretok_one(&dig, "a12b3", true, &c), "a|1|2|b|3") == 0, "Digits, individual: %s", got);
  la_pre_step ms = {.kind = LA_PRE_METASPACE, .pattern = MS, .plen = 3, .flag = true, .scheme = LA_PREPEND_FIRST};
  CHECK(strcmp(got = pretok_one(&ms, "hi there", true, &c), MS "hi|" MS "there") == 0, "Metaspace first: %s", got);
  CHECK(strcmp(got = pretok_one(&ms, "hi there", false, &c), "hi|" MS "there") == 0, "Metaspace later: %s", got);
  la_pretok *p = la_pretok_new();
  la_pre_step bl = {.kind = LA_PRE_BYTELEVEL};
  CHECK(p && la_pretok_add(p, &bl) == 0, "%s", la_error());
  int rc = la_pretok_add(p, &dig);
  la_pretok_free(p);
  CHECK(rc < 0 && strstr(la_error(), "ByteLevel pre-tokenizer must be the last"), "message: %s", la_error());
  return 1;
fail:
  return 0;
}

/* The lengths of a text's pre-tokens, in order (they cover the text). */
typedef struct {
  size_t len[64];
  size_t n;
} piece_lens;

static int collect_len(void *ctx, const char *p, size_t len) {
  (void)p;
  piece_lens *c = ctx;
  if (c->n == 64) return -1;
  c->len[c->n++] = len;
  return 0;
}

static bool same_split(la_bpe *a, la_bpe *b, const char *text, size_t n) {
  piece_lens x = {.n = 0}, y = {.n = 0};
  if (la_bpe_pretokenize(a, text, n, collect_len, &x) < 0 || la_bpe_pretokenize(b, text, n, collect_len, &y) < 0)
    return false;
  return x.n == y.n && memcmp(x.len, y.len, x.n * sizeof x.len[0]) == 0;
}

/* GPT-2's pattern is matched over ASCII without PCRE2; the same pattern in
** other words ("(?:...)") is matched by PCRE2 alone.  Both must split
** alike: texts mixing the cases the pattern tells apart (contractions,
** runs of spaces before a word or at the end, White_Space beyond ASCII,
** letters and digits beyond ASCII, bytes that are not UTF-8). */
static int test_gpt2_pattern_without_pcre2(void) {
  static const char *const parts[] = {
    "a", "Zq", "0", "97", " ", "  ", "\t", "\n", "\r\n", "\v", "\f", "'", "'s", "'t", "'re", "'ve", "'m", "'ll",
    "'d", "'S", "'r", "'l", "'v", "!", ".,", "\0", "\x1c", "\x7f", "_", "\xc3\xa9", "\xc2\xa0", "\xe3\x80\x80",
    "\xc2\x85", "\xe2\x80\xa8", "\xc2\xb2", "\xd9\xa3", "\xff", "\xc3", "\x80", "\xef\xbb\xbf", "\xe2\x80\x94",
    "\xe6\x97\xa5"};
  const size_t nparts = sizeof parts / sizeof parts[0];
  char pattern[512];
  snprintf(pattern, sizeof pattern, "(?:%s)", la_bpe_gpt2_pattern);
  la_bpe *fast = la_bpe_new(NULL, false), *pcre = la_bpe_new(pattern, false);
  CHECK(fast && pcre, "%s", la_error());
  static const char hello[] = "Hello, world! It's 42    x\n\ny  ";
  piece_lens c = {.n = 0};
  CHECK(la_bpe_pretokenize(fast, hello, sizeof hello - 1, collect_len, &c) == 0, "%s", la_error());
  static const size_t want[] = {5, 1, 6, 1, 3, 2, 3, 3, 2, 1, 1, 1, 2};   /* Hello , _world ! _It 's _42 ___ _x \n \n y __ */
  CHECK(c.n == 13 && memcmp(c.len, want, sizeof want) == 0, "'%s' split into %zu pieces", hello, c.n);
  uint32_t seed = 12345;
  char text[128];
  for (int k = 0; k < 40000; k++) {
    size_t n = 0;
    seed = seed * 1664525u + 1013904223u;
    int count = 1 + (int)(seed >> 28);   /* 1..16 parts */
    for (int i = 0; i < count; i++) {
      seed = seed * 1664525u + 1013904223u;
      const char *part = parts[(seed >> 8) % nparts];
      size_t len = part[0] ? strlen(part) : 1;   /* "\0" is one NUL byte */
      memcpy(text + n, part, len);
      n += len;
    }
    CHECK(same_split(fast, pcre, text, n), "text %d splits otherwise than PCRE2 splits it", k);
  }
  la_bpe_free(fast);
  la_bpe_free(pcre);
  return 1;
fail:
  la_bpe_free(fast);
  la_bpe_free(pcre);
  return 0;
}

/* ByteFallback's bytes (U+FFFD for each byte that is not UTF-8), Replace,
** Fuse, Strip. */
static int test_decoders(void) {
  char *out = NULL;
  size_t len = 0;
  la_decoder *d = la_decoder_new();
  CHECK(d, "%s", la_error());
  CHECK(la_decoder_add(d, LA_DEC_REPLACE, MS, 3, true, " ", 1, 0, 0) == 0, "%s", la_error());
  CHECK(la_decoder_add(d, LA_DEC_BYTEFALLBACK, NULL, 0, false, NULL, 0, 0, 0) == 0, "%s", la_error());
  CHECK(la_decoder_add(d, LA_DEC_FUSE, NULL, 0, false, NULL, 0, 0, 0) == 0, "%s", la_error());
  CHECK(la_decoder_add(d, LA_DEC_STRIP, NULL, 0, false, " ", 1, 1, 0) == 0, "%s", la_error());
  const char *toks[] = {MS "a", "<0xE4>", "<0xBD>", "<0xA0>", MS "x", "<0xFF>", "y"};
  size_t lens[7];
  for (int i = 0; i < 7; i++) lens[i] = strlen(toks[i]);
  static const char want[] = "a\xE4\xBD\xA0 x\xEF\xBF\xBDy";
  CHECK(la_decoder_run(d, toks, lens, 7, &out, &len) == 0, "%s", la_error());
  CHECK(len == sizeof want - 1 && memcmp(out, want, len) == 0, "decoded to '%.*s'", (int)len, out);
  CHECK(la_decoder_add(d, LA_DEC_STRIP, NULL, 0, false, NULL, 0, 1, 0) < 0, "Strip without a character accepted");
  free(out);
  la_decoder_free(d);
  return 1;
fail:
  free(out);
  la_decoder_free(d);
  return 0;
}

int main(void) {
  run("tokenizer_byte_table", test_byte_table);
  run("tokenizer_merge_order", test_merge_order);
  run("tokenizer_word_cache_restarts", test_word_cache_restarts);
  run("tokenizer_specials_and_invalid_utf8", test_specials_and_invalid_utf8);
  run("tokenizer_errors", test_errors);
  run("tokenizer_train", test_train);
  run("tokenizer_normalizers", test_normalizers);
  run("tokenizer_pretokenizers", test_pretokenizers);
  run("tokenizer_gpt2_pattern_without_pcre2", test_gpt2_pattern_without_pcre2);
  run("tokenizer_decoders", test_decoders);
  printf("%d passed, %d failed\n", passed, failed);
  return failed != 0;
}
