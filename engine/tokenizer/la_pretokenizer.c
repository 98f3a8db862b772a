/*
** la_pretokenizer.c -- tokenizer.json pre-tokenizers: a list of steps, each
** splitting every piece the previous one made.  Pieces go down the chain
** by recursion (step k calls step k + 1 for each of its pieces), so nothing
** is collected: the last step hands each pre-token to the model at once.
**
** A split first cuts its piece into segments, each a match of its pattern
** or not, then applies a behaviour (Hugging Face's SplitDelimiterBehavior)
** to turn segments into pieces.  Patterns are of two kinds, as there:
**  - a regex (or literal text): every non-empty match is one segment, and
**    so is every stretch between matches;
**  - a character class (digits, punctuation, White_Space, the Metaspace
**    character): every matching character is a segment of its own, and
**    each run of other characters one segment.
** Empty pieces are dropped.
*/
#include <utf8proc.h>

#include "la_tok_parts.h"
#include "la_tok_util.h"
#include "la_tokenizer.h"

typedef struct {
  size_t s, e;
  bool match;
} pt_seg;

typedef struct {
  la_pre_step st;
  char *pattern;      /* owned copy of st.pattern */
  tk_regex re;
  tk_buf text;        /* Metaspace and ByteLevel rewrite their piece here */
  pt_seg *segs;       /* segments, then pieces (match unused) */
  size_t nseg, segcap;
  pt_seg *pieces;
  size_t npiece, piececap;
} pt_step;

struct la_pretok {
  pt_step *steps;
  size_t n, cap;
};

la_pretok *la_pretok_new(void) {
  la_pretok *p = calloc(1, sizeof *p);
  if (!p) return la_fail("tokenizer: out of memory");
  return p;
}

static void pt_step_free(pt_step *s) {
  free(s->pattern);
  tk_regex_free(&s->re);
  tk_buf_free(&s->text);
  free(s->segs);
  free(s->pieces);
}

void la_pretok_free(la_pretok *p) {
  if (!p) return;
  for (size_t i = 0; i < p->n; i++) pt_step_free(&p->steps[i]);
  free(p->steps);
  free(p);
}

/* Whitespace's pattern: \w+|[^\w\s]+ (with \s as White_Space). */
#define PT_WS_CLASS "\\t\\n\\x{0B}\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
static const char pt_whitespace_pattern[] = "\\w+|[^\\w" PT_WS_CLASS "]+";

int la_pretok_add(la_pretok *p, const la_pre_step *step) {
  if (p->n > 0 && p->steps[p->n - 1].st.kind == LA_PRE_BYTELEVEL)
    return la_failn("tokenizer: a ByteLevel pre-tokenizer must be the last one of a Sequence");
  if (tk_grow(&p->steps, &p->cap, p->n + 1, sizeof *p->steps) < 0) return -1;
  pt_step *s = &p->steps[p->n];
  memset(s, 0, sizeof *s);
  s->st = *step;
  if (step->pattern) {
    s->pattern = malloc(step->plen + 1);
    if (!s->pattern) return la_failn("tokenizer: out of memory");
    memcpy(s->pattern, step->pattern, step->plen);
    s->pattern[step->plen] = 0;
    s->st.pattern = s->pattern;
  }
  int rc = 0;
  switch (step->kind) {
    case LA_PRE_SPLIT:
      if (!step->pattern || step->plen == 0) rc = la_failn("tokenizer: the Split pre-tokenizer needs a pattern");
      else rc = tk_regex_compile(&s->re, s->pattern, step->plen, step->literal, "Split pre-tokenizer");
      break;
    case LA_PRE_WHITESPACE:
      rc = tk_regex_compile(&s->re, pt_whitespace_pattern, sizeof pt_whitespace_pattern - 1, false, "Whitespace");
      s->st.behavior = LA_SPLIT_REMOVED;
      s->st.invert = true;
      break;
    case LA_PRE_BYTELEVEL:
      if (step->use_regex)
        rc = tk_regex_compile(&s->re, la_bpe_gpt2_pattern, strlen(la_bpe_gpt2_pattern), false, "ByteLevel");
      break;
    case LA_PRE_METASPACE:
      if (!step->pattern || step->plen == 0) rc = la_failn("tokenizer: the Metaspace pre-tokenizer needs a replacement");
      break;
    default:
      break;
  }
  if (rc < 0) {
    pt_step_free(s);
    return -1;
  }
  p->n++;
  return 0;
}

static int pt_seg_push(pt_seg **v, size_t *n, size_t *cap, size_t s, size_t e, bool match) {
  if (tk_grow(v, cap, *n + 1, sizeof **v) < 0) return -1;
  (*v)[(*n)++] = (pt_seg){s, e, match};
  return 0;
}

/* Segments of s by the step's regex. */
static int pt_find_regex(pt_step *st, const char *s, size_t len) {
  size_t off = 0;
  for (;;) {
    size_t ms = 0, me = 0;
    int rc = tk_regex_next(&st->re, s, len, off, &ms, &me);
    if (rc < 0) return -1;
    if (rc == 0) break;
    if (ms > off && pt_seg_push(&st->segs, &st->nseg, &st->segcap, off, ms, false) < 0) return -1;
    if (pt_seg_push(&st->segs, &st->nseg, &st->segcap, ms, me, true) < 0) return -1;
    off = me;
  }
  if (off < len && pt_seg_push(&st->segs, &st->nseg, &st->segcap, off, len, false) < 0) return -1;
  return 0;
}

static bool pt_is_punct(int32_t c) {
  if (c < 0) return false;
  if (c < 0x80) return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
                       (c >= 0x7B && c <= 0x7E);
  switch (utf8proc_category(c)) {
    case UTF8PROC_CATEGORY_PC: case UTF8PROC_CATEGORY_PD: case UTF8PROC_CATEGORY_PS: case UTF8PROC_CATEGORY_PE:
    case UTF8PROC_CATEGORY_PI: case UTF8PROC_CATEGORY_PF: case UTF8PROC_CATEGORY_PO:
      return true;
    default:
      return false;
  }
}

/* Segments of s by a character class: each matching character alone. */
static int pt_find_chars(pt_step *st, const char *s, size_t len) {
  size_t last = 0;
  const char *rep = st->st.pattern;
  size_t rlen = st->st.plen;
  for (size_t i = 0; i < len;) {
    int32_t cp;
    size_t k = tk_utf8((const unsigned char *)s + i, len - i, &cp);
    bool m;
    switch (st->st.kind) {
      case LA_PRE_DIGITS: m = cp >= '0' && cp <= '9'; break;
      case LA_PRE_PUNCTUATION: m = pt_is_punct(cp); break;
      case LA_PRE_WHITESPACE_SPLIT: m = cp >= 0 && tk_is_ws(cp); break;
      default:   /* METASPACE: the replacement text */
        m = len - i >= rlen && memcmp(s + i, rep, rlen) == 0;
        if (m) k = rlen;
        break;
    }
    if (m) {
      if (last < i && pt_seg_push(&st->segs, &st->nseg, &st->segcap, last, i, false) < 0) return -1;
      if (pt_seg_push(&st->segs, &st->nseg, &st->segcap, i, i + k, true) < 0) return -1;
      last = i + k;
    }
    i += k;
  }
  if (last < len && pt_seg_push(&st->segs, &st->nseg, &st->segcap, last, len, false) < 0) return -1;
  return 0;
}

/* Segments -> pieces, by the behavior (as SplitDelimiterBehavior). */
static int pt_behave(pt_step *st, la_split_behavior how, bool invert) {
  st->npiece = 0;
  pt_seg *g = st->segs;
  size_t n = st->nseg;
  if (invert)
    for (size_t i = 0; i < n; i++) g[i].match = !g[i].match;
  bool prev = false;
  switch (how) {
    case LA_SPLIT_REMOVED:
      for (size_t i = 0; i < n; i++)
        if (!g[i].match && pt_seg_push(&st->pieces, &st->npiece, &st->piececap, g[i].s, g[i].e, false) < 0) return -1;
      return 0;
    case LA_SPLIT_ISOLATED:
      for (size_t i = 0; i < n; i++)
        if (pt_seg_push(&st->pieces, &st->npiece, &st->piececap, g[i].s, g[i].e, false) < 0) return -1;
      return 0;
    case LA_SPLIT_CONTIGUOUS:
      for (size_t i = 0; i < n; i++) {
        if (i > 0 && g[i].match == prev) st->pieces[st->npiece - 1].e = g[i].e;
        else if (pt_seg_push(&st->pieces, &st->npiece, &st->piececap, g[i].s, g[i].e, false) < 0) return -1;
        prev = g[i].match;
      }
      return 0;
    case LA_SPLIT_MERGED_WITH_PREVIOUS:
      for (size_t i = 0; i < n; i++) {
        if (g[i].match && !prev && st->npiece > 0) st->pieces[st->npiece - 1].e = g[i].e;
        else if (pt_seg_push(&st->pieces, &st->npiece, &st->piececap, g[i].s, g[i].e, false) < 0) return -1;
        prev = g[i].match;
      }
      return 0;
    case LA_SPLIT_MERGED_WITH_NEXT:
      /* from the right: a match joins the piece after it */
      for (size_t i = n; i-- > 0;) {
        if (g[i].match && !prev && st->npiece > 0) st->pieces[st->npiece - 1].s = g[i].s;
        else if (pt_seg_push(&st->pieces, &st->npiece, &st->piececap, g[i].s, g[i].e, false) < 0) return -1;
        prev = g[i].match;
      }
      for (size_t i = 0, j = st->npiece; i + 1 < j; i++, j--) {
        pt_seg t = st->pieces[i];
        st->pieces[i] = st->pieces[j - 1];
        st->pieces[j - 1] = t;
      }
      return 0;
  }
  return la_failn("tokenizer: unknown split behaviour %d", (int)how);
}

static int pt_run(la_pretok *p, size_t k, const char *s, size_t len, bool at_start, la_pretok_fn fn, void *ctx);

/* Runs the next step on each piece of step k (pieces index into s). */
static int pt_each_piece(la_pretok *p, size_t k, const char *s, bool at_start, la_pretok_fn fn, void *ctx) {
  pt_step *st = &p->steps[k];
  for (size_t i = 0; i < st->npiece; i++) {
    /* the list may move if a deeper step is this one again: it is not */
    size_t a = st->pieces[i].s, b = st->pieces[i].e;
    if (b > a && pt_run(p, k + 1, s + a, b - a, at_start && a == 0, fn, ctx) < 0) return -1;
  }
  return 0;
}

static int pt_bytelevel(la_pretok *p, size_t k, const char *s, size_t len, bool at_start, la_pretok_fn fn,
                        void *ctx) {
  pt_step *st = &p->steps[k];
  if (st->st.flag && s[0] != ' ') {
    st->text.n = 0;
    if (tk_buf_put(&st->text, " ", 1) < 0 || tk_buf_put(&st->text, s, len) < 0) return -1;
    s = st->text.p;
    len = st->text.n;
  }
  if (!st->st.use_regex) return pt_run(p, k + 1, s, len, at_start, fn, ctx);
  st->nseg = 0;
  if (pt_find_regex(st, s, len) < 0 || pt_behave(st, LA_SPLIT_ISOLATED, false) < 0) return -1;
  return pt_each_piece(p, k, s, at_start, fn, ctx);
}

static int pt_metaspace(la_pretok *p, size_t k, const char *s, size_t len, bool at_start, la_pretok_fn fn,
                        void *ctx) {
  pt_step *st = &p->steps[k];
  const char *rep = st->st.pattern;
  size_t rlen = st->st.plen;
  tk_buf *t = &st->text;
  t->n = 0;
  bool starts = len >= rlen && memcmp(s, rep, rlen) == 0;
  if (!starts && len > 0 && s[0] == ' ') starts = true;   /* the space becomes the replacement */
  bool prepend = (st->st.scheme == LA_PREPEND_ALWAYS || (st->st.scheme == LA_PREPEND_FIRST && at_start)) && !starts;
  if (prepend && tk_buf_put(t, rep, rlen) < 0) return -1;
  size_t from = 0;
  for (size_t i = 0; i < len; i++) {
    if (s[i] != ' ') continue;
    if (tk_buf_put(t, s + from, i - from) < 0 || tk_buf_put(t, rep, rlen) < 0) return -1;
    from = i + 1;
  }
  if (tk_buf_put(t, s + from, len - from) < 0) return -1;
  if (!st->st.flag) return pt_run(p, k + 1, t->p, t->n, at_start, fn, ctx);
  st->nseg = 0;
  if (pt_find_chars(st, t->p, t->n) < 0 || pt_behave(st, LA_SPLIT_MERGED_WITH_NEXT, false) < 0) return -1;
  return pt_each_piece(p, k, t->p, at_start, fn, ctx);
}

static int pt_run(la_pretok *p, size_t k, const char *s, size_t len, bool at_start, la_pretok_fn fn, void *ctx) {
  if (len == 0) return 0;
  if (k == p->n) return fn(ctx, s, len);
  pt_step *st = &p->steps[k];
  st->nseg = 0;
  switch (st->st.kind) {
    case LA_PRE_BYTELEVEL: return pt_bytelevel(p, k, s, len, at_start, fn, ctx);
    case LA_PRE_METASPACE: return pt_metaspace(p, k, s, len, at_start, fn, ctx);
    case LA_PRE_SPLIT:
    case LA_PRE_WHITESPACE:
      if (pt_find_regex(st, s, len) < 0 || pt_behave(st, st->st.behavior, st->st.invert) < 0) return -1;
      break;
    case LA_PRE_DIGITS:
      if (pt_find_chars(st, s, len) < 0 ||
          pt_behave(st, st->st.flag ? LA_SPLIT_ISOLATED : LA_SPLIT_CONTIGUOUS, false) < 0) return -1;
      break;
    case LA_PRE_PUNCTUATION:
      if (pt_find_chars(st, s, len) < 0 || pt_behave(st, st->st.behavior, false) < 0) return -1;
      break;
    case LA_PRE_WHITESPACE_SPLIT:
      if (pt_find_chars(st, s, len) < 0 || pt_behave(st, LA_SPLIT_REMOVED, false) < 0) return -1;
      break;
  }
  return pt_each_piece(p, k, s, at_start, fn, ctx);
}

int la_pretok_run(la_pretok *p, const char *s, size_t len, bool at_start, la_pretok_fn fn, void *ctx) {
  return pt_run(p, 0, s, len, at_start, fn, ctx);
}
