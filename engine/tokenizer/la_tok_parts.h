/*
** la_tok_parts.h -- the parts of a Hugging Face tokenizer.json pipeline
** around the BPE model: normalizers, pre-tokenizers and decoders, each a
** list of steps built one step at a time and run in C.  la_tokenizer.c
** owns them (la_bpe_set_normalizer, ...); their semantics are those of
** Hugging Face's `tokenizers` library, described in docs/tokenizer.md.
**
** Errors follow la.h: -1 (or NULL) with the message in la_error().
*/
#ifndef LA_TOK_PARTS_H
#define LA_TOK_PARTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------- normalizers */

typedef enum {
  LA_NORM_NFC, LA_NORM_NFD, LA_NORM_NFKC, LA_NORM_NFKD, LA_NORM_LOWERCASE,
  LA_NORM_STRIP,      /* a: strip the left, b: strip the right (White_Space) */
  LA_NORM_PREPEND,    /* text: put in front of a non-empty string */
  LA_NORM_REPLACE     /* pattern (regex, or literal when a) -> text */
} la_norm_kind;

typedef struct la_norm la_norm;

la_norm *la_norm_new(void);
void la_norm_free(la_norm *n);
/* Appends a step.  pattern/text may be NULL where the kind has none. */
int la_norm_add(la_norm *n, la_norm_kind kind, const char *pattern, size_t plen, const char *text, size_t tlen,
                bool a, bool b);
/* Normalizes s into *out (malloc'd, *outlen bytes; the caller frees it).
** Bytes that are not valid UTF-8 are kept as they are. */
int la_norm_apply(la_norm *n, const char *s, size_t len, char **out, size_t *outlen);

/* ---------------------------------------------------------------- pre-tokenizers */

/* How a split treats the pieces its pattern matches (Hugging Face's
** SplitDelimiterBehavior). */
typedef enum {
  LA_SPLIT_REMOVED, LA_SPLIT_ISOLATED, LA_SPLIT_MERGED_WITH_PREVIOUS, LA_SPLIT_MERGED_WITH_NEXT,
  LA_SPLIT_CONTIGUOUS
} la_split_behavior;

typedef enum {
  LA_PRE_SPLIT,        /* pattern (regex, or literal when literal), behavior, invert */
  LA_PRE_DIGITS,       /* ASCII digits: each alone (individual) or in runs */
  LA_PRE_PUNCTUATION,  /* ASCII punctuation and Unicode P*, with a behavior */
  LA_PRE_WHITESPACE,   /* keep \w+ and [^\w\s]+, drop the rest */
  LA_PRE_WHITESPACE_SPLIT, /* split on White_Space, dropping it */
  LA_PRE_METASPACE,    /* spaces -> replacement; prepend scheme; split before each replacement */
  LA_PRE_BYTELEVEL     /* add_prefix_space, use_regex (GPT-2's); must be the last step */
} la_pre_kind;

typedef enum { LA_PREPEND_ALWAYS, LA_PREPEND_FIRST, LA_PREPEND_NEVER } la_prepend_scheme;

typedef struct {
  la_pre_kind kind;
  const char *pattern;   /* SPLIT: the pattern; METASPACE: the replacement */
  size_t plen;
  bool literal;          /* SPLIT: pattern is plain text */
  bool invert;           /* SPLIT */
  la_split_behavior behavior;  /* SPLIT, PUNCTUATION */
  bool flag;             /* DIGITS: individual; METASPACE: split; BYTELEVEL: add_prefix_space */
  bool use_regex;        /* BYTELEVEL */
  la_prepend_scheme scheme;    /* METASPACE */
} la_pre_step;

typedef struct la_pretok la_pretok;
/* Called with each pre-token; returns 0 to go on, -1 to stop with an error. */
typedef int (*la_pretok_fn)(void *ctx, const char *piece, size_t len);

la_pretok *la_pretok_new(void);
void la_pretok_free(la_pretok *p);
int la_pretok_add(la_pretok *p, const la_pre_step *step);
/* Splits s into pre-tokens.  at_start: s begins the original text (for
** Metaspace's "first" scheme). */
int la_pretok_run(la_pretok *p, const char *s, size_t len, bool at_start, la_pretok_fn fn, void *ctx);

/* ---------------------------------------------------------------- decoders */

typedef enum {
  LA_DEC_BYTELEVEL,     /* stand-in characters back to bytes, all tokens joined */
  LA_DEC_METASPACE,     /* replacement -> ' ', none in the first token unless scheme is never */
  LA_DEC_BYTEFALLBACK,  /* runs of <0xXX> tokens -> their bytes (U+FFFD each when not UTF-8) */
  LA_DEC_FUSE,          /* all tokens joined into one */
  LA_DEC_STRIP,         /* text[0] = the character; a, b = how many to strip at start, end */
  LA_DEC_REPLACE,       /* pattern (regex, or literal when literal) -> text, in each token */
  LA_DEC_JOIN           /* all tokens joined with spaces (what a tokenizer.json without a decoder does) */
} la_dec_kind;

typedef struct la_decoder la_decoder;

la_decoder *la_decoder_new(void);
void la_decoder_free(la_decoder *d);
int la_decoder_add(la_decoder *d, la_dec_kind kind, const char *pattern, size_t plen, bool literal,
                   const char *text, size_t tlen, int a, int b);
/* Decodes the tokens (n strings, their spellings) into *out (malloc'd). */
int la_decoder_run(la_decoder *d, const char *const *tokens, const size_t *lens, size_t n, char **out,
                   size_t *outlen);

#endif
