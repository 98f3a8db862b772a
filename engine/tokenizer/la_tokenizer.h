/*
** la_tokenizer.h -- byte-level BPE (GPT-2's scheme) in plain C: the
** vocabulary, merges by rank, pre-tokenisation with PCRE2, a word cache,
** special tokens, and a trainer for small vocabularies.  No Lua here; the
** binding is lua_tokenizer.c.
**
** Vocabulary entries have two forms:
**  - the *spelling*, as written in encoder.json / tokenizer.json: each byte
**    replaced by GPT-2's printable stand-in character ("Ġthe" for " the");
**  - the *bytes* the token stands for (what decode writes).
** A spelling that is not made only of stand-in characters (a special token
** such as "<|user|> " with a real space) stands for its own UTF-8 bytes.
**
** Errors follow la.h: NULL or -1 with the message in la_error().
*/
#ifndef LA_TOKENIZER_H
#define LA_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "la_tok_parts.h"

typedef struct la_bpe la_bpe;

/* A growable list of token ids. */
typedef struct la_ids {
  int32_t *ids;
  size_t n, cap;
} la_ids;

void la_ids_free(la_ids *v);

/* GPT-2's pre-tokenisation pattern, written for PCRE2 with \s spelled out as
** Unicode's White_Space property (what Python's `regex` module, used by
** OpenAI's encoder.py, means by \s). */
extern const char la_bpe_gpt2_pattern[];

/* A tokenizer with no tokens yet.  pattern: the pre-tokenisation regex
** (NULL: GPT-2's).  add_prefix_space: put a space before text that does not
** start with one (Hugging Face's ByteLevel option). */
la_bpe *la_bpe_new(const char *pattern, bool add_prefix_space);
void la_bpe_free(la_bpe *t);

/* Appends a vocabulary entry by its spelling; its id is the number of
** tokens before it.  Returns the id, or -1. */
int32_t la_bpe_add_token(la_bpe *t, const char *spelling, size_t len);
/* Adds or marks a special token with this exact text.  id < 0: reuse the
** token whose spelling and bytes are both `text`, or append a new one.
** id >= 0: that id (an existing one is renamed to `text`, or the next free
** id).  Returns the id, or -1. */
int32_t la_bpe_add_special(la_bpe *t, const char *text, size_t len, int32_t id);

/* Flags of an added token (Hugging Face's AddedToken). */
enum {
  LA_ADDED_SPECIAL = 1,      /* special: skipped by decode(skip_special), by encode when not recognised */
  LA_ADDED_LSTRIP = 2,       /* the match takes the White_Space before it */
  LA_ADDED_RSTRIP = 4,       /* ... and after it */
  LA_ADDED_SINGLE_WORD = 8,  /* only where no word character touches it */
  LA_ADDED_NORMALIZED = 16,  /* matched in the normalized text (its normalized form) */
  LA_ADDED_ANY = 32          /* set on every added token */
};
/* Adds an added token as la_bpe_add_special does, with these flags. */
int32_t la_bpe_add_added(la_bpe *t, const char *text, size_t len, int32_t id, unsigned flags);

/* Appends merges.  By spellings: the pair and its concatenation must be in
** the vocabulary.  The rank is the order of addition; a pair given twice
** keeps its last rank (as Python's dict in GPT-2's encoder.py). */
int la_bpe_add_merge(la_bpe *t, const char *a, size_t alen, const char *b, size_t blen);
/* Parses vocab.bpe text: an optional "#version" first line, then one
** "a b" pair per line.  `name` is used in error messages ("name:LINE: ..."). */
int la_bpe_add_merges_text(la_bpe *t, const char *text, size_t len, const char *name);

/* The tokenizer.json pipeline.  The tokenizer takes ownership of the part
** (NULL removes it).  Without a pre-tokenizer, a byte-level vocabulary uses
** the regex given to la_bpe_new and a character-level one takes each
** stretch between added tokens as one word.  The normalizer must be set
** before added tokens are (those marked normalized are matched in its
** output). */
int la_bpe_set_normalizer(la_bpe *t, la_norm *n);
void la_bpe_set_pretokenizer(la_bpe *t, la_pretok *p);
void la_bpe_set_decoder(la_bpe *t, la_decoder *d);
bool la_bpe_has_decoder(const la_bpe *t);
/* A character-level vocabulary (SentencePiece-style BPE: spellings are the
** tokens' text, no byte stand-ins); call before adding tokens. */
int la_bpe_set_char_level(la_bpe *t);
/* The BPE model's options (call after the vocabulary is loaded):
** byte_fallback (<0xXX> tokens for characters not in the vocabulary),
** unk_id (-1: none), fuse_unk, ignore_merges (a pre-token that is a whole
** token is not merged). */
int la_bpe_set_model(la_bpe *t, bool byte_fallback, int32_t unk_id, bool fuse_unk, bool ignore_merges);

/* Encodes text.  recognise_special: special tokens in the text become their
** ids (never split); false treats them as ordinary text. */
int la_bpe_encode(la_bpe *t, const char *text, size_t len, bool recognise_special, la_ids *out);

/* Calls fn on each pre-token of text (no special-token handling, no
** normalization; the pre-tokenizer when one is set).  Bytes
** that are not valid UTF-8 never match the regex: each maximal run of them
** is a pre-token of its own.  fn returns 0 to go on, -1 to stop with error. */
typedef int (*la_bpe_piece_fn)(void *ctx, const char *piece, size_t len);
int la_bpe_pretokenize(la_bpe *t, const char *text, size_t len, la_bpe_piece_fn fn, void *ctx);

int32_t la_bpe_vocab_size(const la_bpe *t);
int32_t la_bpe_num_merges(const la_bpe *t);
/* Bytes and spelling of a token (NULL when id is out of range). */
const char *la_bpe_token_bytes(const la_bpe *t, int32_t id, size_t *len);
const char *la_bpe_token_spelling(const la_bpe *t, int32_t id, size_t *len);
bool la_bpe_is_special(const la_bpe *t, int32_t id);
/* Id of a spelling, -1 when absent. */
int32_t la_bpe_token_to_id(const la_bpe *t, const char *spelling, size_t len);
/* Merge of rank r as token ids (a, b) -> merged; -1 when out of range. */
int la_bpe_merge_at(const la_bpe *t, int32_t rank, int32_t *a, int32_t *b, int32_t *merged);
const char *la_bpe_pattern(const la_bpe *t);
bool la_bpe_prefix_space(const la_bpe *t);

/* Words longer than this (in bytes) use the heap-based merge loop; shorter
** ones a linear scan.  Both give the same result; tests lower it. */
void la_bpe_set_heap_threshold(la_bpe *t, size_t nbytes);
void la_bpe_clear_cache(la_bpe *t);

/* Learns merges from texts until the vocabulary holds n_tokens tokens (or
** no pair occurs min_frequency times), and returns a new tokenizer whose ids
** 0..255 are the bytes 0..255, followed by one token per learned merge (a
** merge whose bytes are already a token reuses it).  Special token strings
** in `specials` are cut out of the texts, never learned from; they are not
** added.  The most frequent pair is merged first; ties go to the smaller
** (left id, right id).  Deterministic.  pattern: NULL for GPT-2's. */
la_bpe *la_bpe_train(const char *const *texts, const size_t *lens, size_t ntexts,
                     const char *const *specials, const size_t *slens, size_t nspecials,
                     int32_t n_tokens, int64_t min_frequency, const char *pattern);

/* Decodes ids to a malloc'd string (*out, *outlen; NUL-terminated): the
** tokens' bytes joined, or through the decoder when one is set.
** skip_special leaves special tokens out. */
int la_bpe_decode(la_bpe *t, const int32_t *ids, size_t n, bool skip_special, char **out, size_t *outlen);

/* GPT-2's byte <-> stand-in character table (-1: not a stand-in). */
uint32_t la_bpe_byte_to_unicode(unsigned char b);
int la_bpe_unicode_to_byte(uint32_t cp);

#endif
