/*
** tokenizer_test.c -- tests of the tokenizer core (engine/tokenizer/la_tokenizer.c)
** alone, with no Lua, so that memory checkers can run on it directly.
**
** Prints one line per test, "ok NAME" or "FAIL NAME: why", and a final
** "N passed, N failed".  tests/tokenizer_c_spec.lua runs it in `make test`.
*/
#include <stdio.h>
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

int main(void) {
  run("tokenizer_byte_table", test_byte_table);
  run("tokenizer_merge_order", test_merge_order);
  run("tokenizer_specials_and_invalid_utf8", test_specials_and_invalid_utf8);
  run("tokenizer_errors", test_errors);
  run("tokenizer_train", test_train);
  printf("%d passed, %d failed\n", passed, failed);
  return failed != 0;
}
