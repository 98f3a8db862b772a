/*
** la_safetensors.c -- safetensors files: a strict header parser, a loader
** that reads each tensor straight into its own storage, and an atomic
** writer.  See la_safetensors.h for the format and the API.
**
** The header parser is written for hostile input (it is a fuzzing target):
** it never reads past the n bytes it is given, every integer is checked for
** overflow before it is used, and it does not recurse.  It parses the one
** shape the format allows -- an object of tensor entries, each an object of
** three known fields, plus a "__metadata__" object of strings -- rather than
** arbitrary JSON, so nesting is at most three levels deep by construction,
** and anything else (an unknown field, a number where a list belongs) is
** refused with a message that says where and what.
*/
#define _FILE_OFFSET_BITS 64   /* 64-bit off_t for large files on 32-bit hosts */

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "la_safetensors.h"

/* Names are cut to this many bytes in messages. */
#define ST_NAME_SHOWN 200
#define NAMEF "'%.*s'"
#define NAMEA(s, len) (int)((len) > ST_NAME_SHOWN ? ST_NAME_SHOWN : (len)), (s)

/* ---------------------------------------------------------------- dtypes */

static const struct { const char *name; size_t size; } st_dtypes[LA_ST_NDTYPE] = {
  [LA_ST_BOOL] = {"BOOL", 1}, [LA_ST_U8] = {"U8", 1}, [LA_ST_I8] = {"I8", 1},
  [LA_ST_F8_E5M2] = {"F8_E5M2", 1}, [LA_ST_F8_E4M3] = {"F8_E4M3", 1},
  [LA_ST_I16] = {"I16", 2}, [LA_ST_U16] = {"U16", 2}, [LA_ST_F16] = {"F16", 2},
  [LA_ST_BF16] = {"BF16", 2}, [LA_ST_I32] = {"I32", 4}, [LA_ST_U32] = {"U32", 4},
  [LA_ST_F32] = {"F32", 4}, [LA_ST_F64] = {"F64", 8}, [LA_ST_I64] = {"I64", 8},
  [LA_ST_U64] = {"U64", 8},
};

const char *la_st_dtype_name(la_st_dtype dt) { return st_dtypes[dt].name; }
size_t la_st_dtype_size(la_st_dtype dt) { return st_dtypes[dt].size; }

int la_st_load_dtype(la_st_dtype dt, la_dtype *out) {
  switch (dt) {
    case LA_ST_F32: case LA_ST_F16: case LA_ST_BF16: case LA_ST_F64: *out = LA_FLOAT32; return 0;
    case LA_ST_I32: *out = LA_INT32; return 0;
    case LA_ST_I64: *out = LA_INT64; return 0;
    case LA_ST_BOOL: *out = LA_BOOL; return 0;
    default: return -1;
  }
}

static int st_dtype_lookup(const char *s, size_t len, la_st_dtype *out) {
  for (int i = 0; i < LA_ST_NDTYPE; i++)
    if (strlen(st_dtypes[i].name) == len && memcmp(st_dtypes[i].name, s, len) == 0) {
      *out = (la_st_dtype)i;
      return 0;
    }
  return -1;
}

/* The format is little-endian; so is every host lualign is built for, and
** the loader and writer move bytes without swapping.  A big-endian host gets
** an error instead of wrong numbers. */
static bool st_host_little_endian(void) {
  const uint16_t one = 1;
  unsigned char b;
  memcpy(&b, &one, 1);
  return b == 1;
}

static uint64_t st_le64(const unsigned char *b) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | b[i];
  return v;
}

/* ---------------------------------------------------------------- UTF-8 */

/* Length of the valid UTF-8 sequence starting at s (whose first byte is
** >= 0x80), or 0 if it is invalid: overlong forms, surrogates and code
** points past U+10FFFF are refused, as RFC 3629 requires. */
static size_t st_utf8_seq(const unsigned char *s, size_t avail) {
  unsigned c = s[0], lo = 0x80, hi = 0xBF;
  size_t m;
  if (c >= 0xC2 && c <= 0xDF) m = 2;
  else if (c >= 0xE0 && c <= 0xEF) {
    m = 3;
    if (c == 0xE0) lo = 0xA0;
    else if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    m = 4;
    if (c == 0xF0) lo = 0x90;
    else if (c == 0xF4) hi = 0x8F;
  } else return 0;
  if (avail < m || s[1] < lo || s[1] > hi) return 0;
  for (size_t j = 2; j < m; j++)
    if ((s[j] & 0xC0) != 0x80) return 0;
  return m;
}

/* Valid UTF-8 with no NUL: what the reader accepts in a name or a string. */
static bool st_valid_text(const char *s, size_t len) {
  const unsigned char *u = (const unsigned char *)s;
  for (size_t i = 0; i < len;) {
    if (u[i] == 0) return false;
    if (u[i] < 0x80) { i++; continue; }
    size_t m = st_utf8_seq(u + i, len - i);
    if (!m) return false;
    i += m;
  }
  return true;
}

static size_t st_utf8_put(char *dst, uint32_t cp) {
  if (cp < 0x80) { dst[0] = (char)cp; return 1; }
  if (cp < 0x800) {
    dst[0] = (char)(0xC0 | (cp >> 6));
    dst[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    dst[0] = (char)(0xE0 | (cp >> 12));
    dst[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    dst[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  dst[0] = (char)(0xF0 | (cp >> 18));
  dst[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  dst[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
  dst[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/* ---------------------------------------------------------------- the parser */

typedef struct st_parser {
  const char *file;
  const unsigned char *s;
  size_t n, i;              /* the header bytes and the read position */
  char *arena;              /* decoded strings; n + 1 bytes always suffice */
  size_t used;
  la_st_entry *tensors;
  size_t n_tensors, cap_tensors;
  la_st_pair *meta;
  size_t n_meta, cap_meta;
  bool seen_meta;
} st_parser;

/* A syntax error at the read position, saying what was found there. */
static int st_syntax(st_parser *p, const char *expected) {
  if (p->i >= p->n)
    return la_failn("%s: malformed JSON in the header at byte %zu: expected %s, but the header "
                    "ends there", p->file, p->i, expected);
  unsigned c = p->s[p->i];
  if (c >= 0x20 && c < 0x7F)
    return la_failn("%s: malformed JSON in the header at byte %zu: expected %s, found '%c'",
                    p->file, p->i, expected, (int)c);
  return la_failn("%s: malformed JSON in the header at byte %zu: expected %s, found byte 0x%02X",
                  p->file, p->i, expected, c);
}

static int st_bad_string(st_parser *p, const char *what) {
  return la_failn("%s: malformed JSON in the header at byte %zu: %s", p->file, p->i, what);
}

static void st_ws(st_parser *p) {
  while (p->i < p->n) {
    unsigned c = p->s[p->i];
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
    p->i++;
  }
}

static int st_peek(const st_parser *p) { return p->i < p->n ? p->s[p->i] : -1; }

static int st_expect(st_parser *p, char c, const char *expected) {
  st_ws(p);
  if (st_peek(p) != (unsigned char)c) return st_syntax(p, expected);
  p->i++;
  return 0;
}

/* What kind of JSON value starts at the read position, for messages; NULL
** when nothing valid can start there. */
static const char *st_kind(const st_parser *p) {
  switch (st_peek(p)) {
    case '"': return "a string";
    case '{': return "an object";
    case '[': return "a list";
    case 't': case 'f': return "a boolean";
    case 'n': return "null";
    case '-': case '0': case '1': case '2': case '3': case '4':
    case '5': case '6': case '7': case '8': case '9': return "a number";
    default: return NULL;
  }
}

static int st_hex4(st_parser *p, size_t at, uint32_t *out) {
  if (at > p->n || p->n - at < 4) return -1;
  uint32_t v = 0;
  for (size_t k = 0; k < 4; k++) {
    unsigned c = p->s[at + k];
    uint32_t d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
    else return -1;
    v = (v << 4) | d;
  }
  *out = v;
  return 0;
}

/* Reads a JSON string into the arena.  A string of q bytes in the header
** (quotes included) decodes to at most q - 2 bytes, since no escape grows,
** so with its NUL every string fits in the q bytes it occupies, and the
** arena never needs more than n bytes. */
static int st_string(st_parser *p, const char **out, size_t *len) {
  if (st_peek(p) != '"') return st_syntax(p, "a string");
  size_t open = p->i++;
  char *dst = p->arena + p->used;
  size_t k = 0;
  for (;;) {
    if (p->i >= p->n) {
      p->i = open;
      return st_bad_string(p, "unterminated string");
    }
    unsigned c = p->s[p->i];
    if (c == '"') { p->i++; break; }
    if (c < 0x20) return st_bad_string(p, "control character in a string (it must be escaped)");
    if (c >= 0x80) {
      size_t m = st_utf8_seq(p->s + p->i, p->n - p->i);
      if (!m) return st_bad_string(p, "invalid UTF-8 in a string");
      memcpy(dst + k, p->s + p->i, m);
      k += m;
      p->i += m;
      continue;
    }
    if (c != '\\') { dst[k++] = (char)c; p->i++; continue; }
    if (p->i + 1 >= p->n) return st_bad_string(p, "unterminated escape in a string");
    unsigned e = p->s[p->i + 1];
    switch (e) {
      case '"': case '\\': case '/': dst[k++] = (char)e; p->i += 2; continue;
      case 'b': dst[k++] = '\b'; p->i += 2; continue;
      case 'f': dst[k++] = '\f'; p->i += 2; continue;
      case 'n': dst[k++] = '\n'; p->i += 2; continue;
      case 'r': dst[k++] = '\r'; p->i += 2; continue;
      case 't': dst[k++] = '\t'; p->i += 2; continue;
      case 'u': break;
      default: return st_bad_string(p, "invalid escape in a string");
    }
    uint32_t cp, lo;
    if (st_hex4(p, p->i + 2, &cp) < 0) return st_bad_string(p, "\\u must be followed by 4 hex digits");
    if (cp >= 0xDC00 && cp <= 0xDFFF) return st_bad_string(p, "unpaired UTF-16 surrogate in a \\u escape");
    if (cp >= 0xD800 && cp <= 0xDBFF) {
      size_t at = p->i + 6;
      if (at + 1 >= p->n || p->s[at] != '\\' || p->s[at + 1] != 'u' || st_hex4(p, at + 2, &lo) < 0 ||
          lo < 0xDC00 || lo > 0xDFFF)
        return st_bad_string(p, "unpaired UTF-16 surrogate in a \\u escape");
      cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
      p->i += 6;
    }
    if (cp == 0) return st_bad_string(p, "\\u0000 (NUL) is not allowed in names and metadata");
    k += st_utf8_put(dst + k, cp);
    p->i += 6;
  }
  dst[k] = 0;
  p->used += k + 1;
  *out = dst;
  *len = k;
  return 0;
}

typedef enum { ST_NUM_UINT, ST_NUM_OTHER, ST_NUM_BIG } st_numkind;

/* Scans a JSON number (RFC 8259 grammar) and says whether it is an integer
** in 0..INT64_MAX written without sign, fraction or exponent: the only
** numbers a header needs.  -1 on a syntax error. */
static int st_number(st_parser *p, uint64_t *value, st_numkind *kind) {
  const unsigned char *s = p->s;
  size_t i = p->i, n = p->n;
  bool sign = false, frac = false, expo = false, big = false;
  uint64_t v = 0;
  if (i < n && s[i] == '-') { sign = true; i++; }
  if (i >= n || s[i] < '0' || s[i] > '9') { p->i = i; return st_syntax(p, "a digit"); }
  if (s[i] == '0') {
    i++;
    if (i < n && s[i] >= '0' && s[i] <= '9') { p->i = i; return st_bad_string(p, "numbers may not have leading zeros"); }
  } else {
    for (; i < n && s[i] >= '0' && s[i] <= '9'; i++) {
      uint64_t d = s[i] - '0';
      if (v > ((uint64_t)INT64_MAX - d) / 10) big = true;
      else v = v * 10 + d;
    }
  }
  if (i < n && s[i] == '.') {
    frac = true;
    i++;
    if (i >= n || s[i] < '0' || s[i] > '9') { p->i = i; return st_syntax(p, "a digit after the decimal point"); }
    while (i < n && s[i] >= '0' && s[i] <= '9') i++;
  }
  if (i < n && (s[i] == 'e' || s[i] == 'E')) {
    expo = true;
    i++;
    if (i < n && (s[i] == '+' || s[i] == '-')) i++;
    if (i >= n || s[i] < '0' || s[i] > '9') { p->i = i; return st_syntax(p, "a digit in the exponent"); }
    while (i < n && s[i] >= '0' && s[i] <= '9') i++;
  }
  p->i = i;
  *value = v;
  *kind = (sign || frac || expo) ? ST_NUM_OTHER : big ? ST_NUM_BIG : ST_NUM_UINT;
  return 0;
}

/* Consumes true, false or null (used only to skip an allowed null). */
static bool st_literal(st_parser *p, const char *word) {
  size_t len = strlen(word);
  if (p->n - p->i < len || memcmp(p->s + p->i, word, len) != 0) return false;
  p->i += len;
  return true;
}

static int st_field_error(st_parser *p, const la_st_entry *e, const char *field, const char *what,
                          const char *found) {
  return la_failn("%s: tensor " NAMEF ": \"%s\" %s (found %s)", p->file, NAMEA(e->name, e->name_len),
                  field, what, found);
}

/* A list of integers in 0..INT64_MAX, at most max of them. */
static int st_uint_list(st_parser *p, const la_st_entry *e, const char *field, const char *what,
                        uint64_t *out, int max, int *count) {
  const char *kind = st_kind(p);
  if (!kind) return st_syntax(p, "a value");
  if (st_peek(p) != '[') return st_field_error(p, e, field, what, kind);
  p->i++;
  int k = 0;
  st_ws(p);
  if (st_peek(p) == ']') { p->i++; *count = 0; return 0; }
  for (;;) {
    st_ws(p);
    kind = st_kind(p);
    if (!kind) return st_syntax(p, "a value");
    char found[64];
    if (strcmp(kind, "a number") != 0) {
      snprintf(found, sizeof found, "%s at position %d", kind, k + 1);
      return st_field_error(p, e, field, what, found);
    }
    uint64_t v = 0;
    st_numkind nk = ST_NUM_OTHER;
    if (st_number(p, &v, &nk) < 0) return -1;
    if (nk != ST_NUM_UINT) {
      snprintf(found, sizeof found, "%s at position %d",
               nk == ST_NUM_BIG ? "a number too large" : "a number that is not a non-negative integer",
               k + 1);
      return st_field_error(p, e, field, what, found);
    }
    if (k == max) {
      snprintf(found, sizeof found, "more than %d entries", max);
      return st_field_error(p, e, field, what, found);
    }
    out[k++] = v;
    st_ws(p);
    int c = st_peek(p);
    if (c == ']') { p->i++; break; }
    if (c != ',') return st_syntax(p, "',' or ']'");
    p->i++;
  }
  *count = k;
  return 0;
}

static bool st_key_is(const char *key, size_t len, const char *word) {
  return strlen(word) == len && memcmp(key, word, len) == 0;
}

/* One tensor entry: {"dtype": ..., "shape": [...], "data_offsets": [b, e]},
** checked against itself and the size of the data. */
static int st_entry(st_parser *p, la_st_entry *e, uint64_t data_len) {
  bool have_dtype = false, have_shape = false, have_offsets = false;
  p->i++;   /* '{' */
  st_ws(p);
  if (st_peek(p) == '}') p->i++;
  else for (;;) {
    const char *key;
    size_t klen;
    st_ws(p);
    if (st_string(p, &key, &klen) < 0) return -1;
    if (st_expect(p, ':', "':'") < 0) return -1;
    st_ws(p);
    const char *kind = st_kind(p);
    if (!kind) return st_syntax(p, "a value");
    if (st_key_is(key, klen, "dtype")) {
      if (have_dtype) return la_failn("%s: tensor " NAMEF " has two \"dtype\" fields", p->file, NAMEA(e->name, e->name_len));
      if (st_peek(p) != '"') return st_field_error(p, e, "dtype", "must be a string such as \"F32\"", kind);
      const char *dt;
      size_t dlen;
      if (st_string(p, &dt, &dlen) < 0) return -1;
      if (st_dtype_lookup(dt, dlen, &e->dtype) < 0)
        return la_failn("%s: tensor " NAMEF " has unknown dtype \"%.*s\" (safetensors dtypes are BOOL, "
                        "U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64)",
                        p->file, NAMEA(e->name, e->name_len), NAMEA(dt, dlen));
      have_dtype = true;
    } else if (st_key_is(key, klen, "shape")) {
      if (have_shape) return la_failn("%s: tensor " NAMEF " has two \"shape\" fields", p->file, NAMEA(e->name, e->name_len));
      uint64_t dims[LA_MAX_DIM];
      char what[80];
      snprintf(what, sizeof what, "must be a list of at most %d non-negative integers", LA_MAX_DIM);
      if (st_uint_list(p, e, "shape", what, dims, LA_MAX_DIM, &e->ndim) < 0) return -1;
      for (int d = 0; d < e->ndim; d++) e->shape[d] = (int64_t)dims[d];
      have_shape = true;
    } else if (st_key_is(key, klen, "data_offsets")) {
      if (have_offsets)
        return la_failn("%s: tensor " NAMEF " has two \"data_offsets\" fields", p->file, NAMEA(e->name, e->name_len));
      uint64_t off[2];
      int count = 0;
      const char *what = "must be a list of two non-negative integers [begin, end]";
      if (st_uint_list(p, e, "data_offsets", what, off, 2, &count) < 0) return -1;
      if (count != 2) {
        char found[32];
        snprintf(found, sizeof found, "%d entr%s", count, count == 1 ? "y" : "ies");
        return st_field_error(p, e, "data_offsets", what, found);
      }
      e->begin = off[0];
      e->end = off[1];
      have_offsets = true;
    } else {
      return la_failn("%s: tensor " NAMEF " has an unknown field \"%.*s\" (a tensor has exactly "
                      "\"dtype\", \"shape\" and \"data_offsets\")",
                      p->file, NAMEA(e->name, e->name_len), NAMEA(key, klen));
    }
    st_ws(p);
    int c = st_peek(p);
    if (c == '}') { p->i++; break; }
    if (c != ',') return st_syntax(p, "',' or '}'");
    p->i++;
  }
  const char *missing = !have_dtype ? "dtype" : !have_shape ? "shape" : !have_offsets ? "data_offsets" : NULL;
  if (missing)
    return la_failn("%s: tensor " NAMEF " has no \"%s\" field", p->file, NAMEA(e->name, e->name_len), missing);

  char shape[LA_SHAPE_BUF];
  la_shape_str(shape, sizeof shape, e->ndim, e->shape);
  if (e->begin > e->end)
    return la_failn("%s: tensor " NAMEF ": data_offsets [%llu, %llu] end before they begin", p->file,
                    NAMEA(e->name, e->name_len), (unsigned long long)e->begin, (unsigned long long)e->end);
  /* The engine's own bound: element count times 8 fits in int64. */
  uint64_t count = 1;
  for (int d = 0; d < e->ndim; d++) {
    uint64_t s = (uint64_t)e->shape[d];
    if (s && count > (uint64_t)INT64_MAX / 8 / s)
      return la_failn("%s: tensor " NAMEF ": shape %s is too large", p->file, NAMEA(e->name, e->name_len), shape);
    count *= s;
  }
  uint64_t need = count * la_st_dtype_size(e->dtype);
  if (e->end - e->begin != need)
    return la_failn("%s: tensor " NAMEF ": shape %s of %s needs %llu bytes, but data_offsets [%llu, %llu] "
                    "hold %llu", p->file, NAMEA(e->name, e->name_len), shape, la_st_dtype_name(e->dtype),
                    (unsigned long long)need, (unsigned long long)e->begin, (unsigned long long)e->end,
                    (unsigned long long)(e->end - e->begin));
  if (e->end > data_len)
    return la_failn("%s: tensor " NAMEF ": data_offsets [%llu, %llu] run past the end of the file (it "
                    "holds %llu bytes of data after the header)", p->file, NAMEA(e->name, e->name_len),
                    (unsigned long long)e->begin, (unsigned long long)e->end, (unsigned long long)data_len);
  return 0;
}

static int st_metadata(st_parser *p) {
  p->i++;   /* '{' */
  st_ws(p);
  if (st_peek(p) == '}') { p->i++; return 0; }
  for (;;) {
    la_st_pair pair;
    st_ws(p);
    if (st_string(p, &pair.key, &pair.key_len) < 0) return -1;
    if (st_expect(p, ':', "':'") < 0) return -1;
    st_ws(p);
    const char *kind = st_kind(p);
    if (!kind) return st_syntax(p, "a value");
    if (st_peek(p) != '"')
      return la_failn("%s: __metadata__ value for key " NAMEF " must be a string (found %s)", p->file,
                      NAMEA(pair.key, pair.key_len), kind);
    if (st_string(p, &pair.value, &pair.value_len) < 0) return -1;
    if (p->n_meta == p->cap_meta) {
      size_t cap = p->cap_meta ? p->cap_meta * 2 : 8;
      la_st_pair *m = cap <= SIZE_MAX / sizeof *m ? realloc(p->meta, cap * sizeof *m) : NULL;
      if (!m) return la_failn("%s: out of memory reading the header", p->file);
      p->meta = m;
      p->cap_meta = cap;
    }
    p->meta[p->n_meta++] = pair;
    st_ws(p);
    int c = st_peek(p);
    if (c == '}') { p->i++; return 0; }
    if (c != ',') return st_syntax(p, "',' or '}'");
    p->i++;
  }
}

static int st_top(st_parser *p, uint64_t data_len) {
  if (p->n == 0 || p->s[0] != '{') return st_syntax(p, "'{' (a header starts with '{')");
  p->i = 1;
  st_ws(p);
  if (st_peek(p) == '}') p->i++;
  else for (;;) {
    const char *key;
    size_t klen;
    st_ws(p);
    if (st_string(p, &key, &klen) < 0) return -1;
    if (st_expect(p, ':', "':'") < 0) return -1;
    st_ws(p);
    const char *kind = st_kind(p);
    if (!kind) return st_syntax(p, "a value");
    if (st_key_is(key, klen, "__metadata__")) {
      if (p->seen_meta) return la_failn("%s: the header has two \"__metadata__\" entries", p->file);
      p->seen_meta = true;
      if (st_peek(p) == '{') {
        if (st_metadata(p) < 0) return -1;
      } else if (!st_literal(p, "null")) {   /* null: no metadata */
        return la_failn("%s: __metadata__ must be an object of strings (found %s)", p->file, kind);
      }
    } else {
      la_st_entry e = {.name = key, .name_len = klen};
      if (st_peek(p) != '{')
        return la_failn("%s: tensor " NAMEF ": expected an object with dtype, shape and data_offsets "
                        "(found %s)", p->file, NAMEA(key, klen), kind);
      if (st_entry(p, &e, data_len) < 0) return -1;
      if (p->n_tensors == p->cap_tensors) {
        size_t cap = p->cap_tensors ? p->cap_tensors * 2 : 16;
        la_st_entry *t = cap <= SIZE_MAX / sizeof *t ? realloc(p->tensors, cap * sizeof *t) : NULL;
        if (!t) return la_failn("%s: out of memory reading the header", p->file);
        p->tensors = t;
        p->cap_tensors = cap;
      }
      p->tensors[p->n_tensors++] = e;
    }
    st_ws(p);
    int c = st_peek(p);
    if (c == '}') { p->i++; break; }
    if (c != ',') return st_syntax(p, "',' or '}'");
    p->i++;
  }
  st_ws(p);   /* the padding the format allows */
  if (p->i != p->n) return st_syntax(p, "the end of the header (only spaces may follow the object)");
  return 0;
}

/* ---------------------------------------------------------------- validation */

static int st_cmp_bytes(const char *a, size_t alen, const char *b, size_t blen) {
  int c = memcmp(a, b, alen < blen ? alen : blen);
  if (c) return c;
  return alen < blen ? -1 : alen > blen;
}

static int st_cmp_entry_name(const void *x, const void *y) {
  const la_st_entry *a = x, *b = y;
  return st_cmp_bytes(a->name, a->name_len, b->name, b->name_len);
}

static int st_cmp_pair_key(const void *x, const void *y) {
  const la_st_pair *a = x, *b = y;
  return st_cmp_bytes(a->key, a->key_len, b->key, b->key_len);
}

static int st_cmp_entry_offsets(const void *x, const void *y) {
  const la_st_entry *a = *(const la_st_entry *const *)x, *b = *(const la_st_entry *const *)y;
  if (a->begin != b->begin) return a->begin < b->begin ? -1 : 1;
  if (a->end != b->end) return a->end < b->end ? -1 : 1;
  return st_cmp_entry_name(a, b);
}

/* The spec: "The byte buffer needs to be entirely indexed, and cannot
** contain holes."  So the tensors, in offset order, must tile the data
** exactly: each starts where the previous one ended, and the last ends at
** the end of the file.  This also rules out overlapping tensors (two names
** for the same bytes) and data after the last tensor. */
static int st_check_layout(const char *file, la_st_entry *tensors, size_t n, uint64_t data_len) {
  if (n == 0) {
    if (data_len)
      return la_failn("%s: the file has %llu bytes of data after the header but no tensors (the "
                      "format forbids bytes that belong to no tensor)", file, (unsigned long long)data_len);
    return 0;
  }
  const la_st_entry **order = malloc(n * sizeof *order);
  if (!order) return la_failn("%s: out of memory reading the header", file);
  for (size_t i = 0; i < n; i++) order[i] = &tensors[i];
  qsort(order, n, sizeof *order, st_cmp_entry_offsets);
  uint64_t pos = 0;
  const la_st_entry *last = NULL;
  int rc = 0;
  for (size_t i = 0; i < n && rc == 0; i++) {
    const la_st_entry *e = order[i];
    if (e->begin < pos)
      rc = la_failn("%s: tensors " NAMEF " (bytes [%llu, %llu)) and " NAMEF " (bytes [%llu, %llu)) "
                    "overlap", file, NAMEA(last->name, last->name_len), (unsigned long long)last->begin,
                    (unsigned long long)last->end, NAMEA(e->name, e->name_len),
                    (unsigned long long)e->begin, (unsigned long long)e->end);
    else if (e->begin > pos)
      rc = la_failn("%s: bytes [%llu, %llu) of the data, before tensor " NAMEF ", belong to no tensor "
                    "(the format forbids holes)", file, (unsigned long long)pos,
                    (unsigned long long)e->begin, NAMEA(e->name, e->name_len));
    else if (e->end > pos || !last) {
      pos = e->end;
      last = e;
    }
  }
  if (rc == 0 && pos != data_len)
    rc = la_failn("%s: %llu bytes after the last tensor (" NAMEF ", which ends at byte %llu of the "
                  "data) belong to no tensor (the format forbids trailing data)", file,
                  (unsigned long long)(data_len - pos), NAMEA(last->name, last->name_len),
                  (unsigned long long)pos);
  free(order);
  return rc;
}

void la_st_header_free(la_st_header *h) {
  if (!h) return;
  free(h->tensors);
  free(h->meta);
  free(h->strings_);
  free(h);
}

la_st_header *la_st_parse_header(const char *file, const void *json, size_t n, uint64_t data_len) {
  if (!file) file = "(safetensors)";
  if ((uint64_t)n > LA_ST_MAX_HEADER)
    return la_fail("%s: header length %zu is larger than the limit of %llu bytes", file, n,
                   (unsigned long long)LA_ST_MAX_HEADER);
  st_parser p = {.file = file, .s = json, .n = n};
  p.arena = malloc(n + 1);
  if (!p.arena) return la_fail("%s: out of memory reading the header", file);
  int rc = st_top(&p, data_len);
  if (rc == 0 && p.n_tensors > 1) {
    qsort(p.tensors, p.n_tensors, sizeof *p.tensors, st_cmp_entry_name);
    for (size_t i = 1; i < p.n_tensors && rc == 0; i++)
      if (st_cmp_entry_name(&p.tensors[i - 1], &p.tensors[i]) == 0)
        rc = la_failn("%s: tensor name " NAMEF " appears twice in the header", file,
                      NAMEA(p.tensors[i].name, p.tensors[i].name_len));
  }
  if (rc == 0 && p.n_meta > 1) {
    qsort(p.meta, p.n_meta, sizeof *p.meta, st_cmp_pair_key);
    for (size_t i = 1; i < p.n_meta && rc == 0; i++)
      if (st_cmp_pair_key(&p.meta[i - 1], &p.meta[i]) == 0)
        rc = la_failn("%s: __metadata__ key " NAMEF " appears twice in the header", file,
                      NAMEA(p.meta[i].key, p.meta[i].key_len));
  }
  if (rc == 0) rc = st_check_layout(file, p.tensors, p.n_tensors, data_len);
  la_st_header *h = rc == 0 ? malloc(sizeof *h) : NULL;
  if (!h) {
    if (rc == 0) la_fail("%s: out of memory reading the header", file);
    free(p.tensors);
    free(p.meta);
    free(p.arena);
    return NULL;
  }
  h->n_tensors = p.n_tensors;
  h->tensors = p.tensors;
  h->n_meta = p.n_meta;
  h->meta = p.meta;
  h->header_len = n;
  h->data_len = data_len;
  h->strings_ = p.arena;
  return h;
}

/* The checks on the length prefix, shared by files and in-memory buffers. */
static int st_check_prefix(const char *file, uint64_t file_size, uint64_t header_len) {
  if (header_len > LA_ST_MAX_HEADER)
    return la_failn("%s: the header length in the first 8 bytes is %llu, larger than the limit of "
                    "%llu bytes (is this a safetensors file?)", file, (unsigned long long)header_len,
                    (unsigned long long)LA_ST_MAX_HEADER);
  if (header_len > file_size - 8)
    return la_failn("%s: the header length in the first 8 bytes is %llu, which runs past the end "
                    "of the file (%llu bytes; is it truncated?)", file, (unsigned long long)header_len,
                    (unsigned long long)file_size);
  return 0;
}

static void *st_too_short(const char *file, uint64_t size) {
  return la_fail("%s: not a safetensors file: it has %llu byte%s, fewer than the 8 that give the "
                 "header length", file, (unsigned long long)size, size == 1 ? "" : "s");
}

la_st_header *la_st_parse(const char *file, const void *bytes, size_t n) {
  if (!file) file = "(safetensors)";
  if (n < 8) return st_too_short(file, n);
  uint64_t len = st_le64(bytes);
  if (st_check_prefix(file, n, len) < 0) return NULL;
  return la_st_parse_header(file, (const char *)bytes + 8, (size_t)len, (uint64_t)n - 8 - len);
}

ptrdiff_t la_st_find(const la_st_header *h, const char *name, size_t len) {
  size_t lo = 0, hi = h->n_tensors;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = st_cmp_bytes(h->tensors[mid].name, h->tensors[mid].name_len, name, len);
    if (c == 0) return (ptrdiff_t)mid;
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  return -1;
}

/* ---------------------------------------------------------------- reading */

/* Loading reads each tensor with pread() straight into the storage of a new
** tensor: one copy from the page cache, no whole-file buffer, and peak memory
** is the tensors themselves plus a 64 KiB buffer for the types converted to
** float32.  Mapping the file (la_storage_wrap over an mmap) would avoid that
** copy, but a mapped tensor dies with SIGBUS if another program truncates the
** file while it is in use, data offsets need not be aligned for the element
** type, F16/BF16/F64 need converting anyway, and the weights a trainer loads
** are written in place by its optimizer, which would copy the pages anyway. */
struct la_st_file {
  int fd;
  char *path;
  la_st_header *h;
};

/* Reads n bytes at offset; the message (no path) says why it could not. */
static int st_read_at(int fd, void *dst, size_t n, uint64_t offset) {
  char *p = dst;
  while (n > 0) {
    size_t chunk = n > ((size_t)1 << 30) ? (size_t)1 << 30 : n;
    ssize_t got = pread(fd, p, chunk, (off_t)offset);
    if (got < 0) {
      if (errno == EINTR) continue;
      return la_failn("read error: %s", strerror(errno));
    }
    if (got == 0) return la_failn("the file ended early (was it truncated while being read?)");
    p += got;
    n -= (size_t)got;
    offset += (uint64_t)got;
  }
  return 0;
}

la_st_file *la_st_open(const char *path) {
  if (!st_host_little_endian())
    return la_fail("%s: safetensors files are little-endian and this host is not", path);
  la_st_file *f = calloc(1, sizeof *f);
  if (!f) return la_fail("%s: out of memory", path);
  f->fd = -1;
  f->path = strdup(path);
  if (!f->path) { free(f); return la_fail("%s: out of memory", path); }
  char *json = NULL;
  struct stat st;
  f->fd = open(path, O_RDONLY | O_CLOEXEC);
  if (f->fd < 0) { la_fail("%s: cannot open: %s", path, strerror(errno)); goto fail; }
  if (fstat(f->fd, &st) < 0) { la_fail("%s: cannot stat: %s", path, strerror(errno)); goto fail; }
  if (S_ISDIR(st.st_mode)) { la_fail("%s: is a directory, not a safetensors file", path); goto fail; }
  if (!S_ISREG(st.st_mode)) { la_fail("%s: is not a regular file", path); goto fail; }
  uint64_t size = (uint64_t)st.st_size;
  if (size < 8) { st_too_short(path, size); goto fail; }
  unsigned char prefix[8];
  if (st_read_at(f->fd, prefix, 8, 0) < 0) { la_error_prefix("%s: ", path); goto fail; }
  uint64_t len = st_le64(prefix);
  if (st_check_prefix(path, size, len) < 0) goto fail;
  json = malloc(len ? (size_t)len : 1);
  if (!json) { la_fail("%s: out of memory reading a header of %llu bytes", path, (unsigned long long)len); goto fail; }
  if (st_read_at(f->fd, json, (size_t)len, 8) < 0) { la_error_prefix("%s: ", path); goto fail; }
  f->h = la_st_parse_header(path, json, (size_t)len, size - 8 - len);
  free(json);
  json = NULL;
  if (!f->h) goto fail;
  return f;
fail:
  free(json);
  la_st_close(f);
  return NULL;
}

const la_st_header *la_st_file_header(const la_st_file *f) { return f->h; }

void la_st_close(la_st_file *f) {
  if (!f) return;
  if (f->fd >= 0) close(f->fd);
  la_st_header_free(f->h);
  free(f->path);
  free(f);
}

/* Round to nearest as the hardware does, saturating to infinity explicitly
** so that no out-of-range conversion is left to the compiler. */
static float st_f64(double d) {
  if (d != d) return (float)d;
  if (d >= 0x1.ffffffp127) return FLT_MAX * 2.0f;   /* rounds to +inf */
  if (d <= -0x1.ffffffp127) return -FLT_MAX * 2.0f;
  if (d > FLT_MAX) return FLT_MAX;
  if (d < -FLT_MAX) return -FLT_MAX;
  return (float)d;
}

#define ST_BOUNCE ((size_t)1 << 16)   /* a multiple of every element size */

static int st_read_converted(la_st_file *f, const la_st_entry *e, float *out, uint64_t offset) {
  size_t esize = la_st_dtype_size(e->dtype), total = (size_t)(e->end - e->begin);
  unsigned char *buf = malloc(ST_BOUNCE);
  if (!buf) return la_failn("out of memory");
  int rc = 0;
  for (size_t done = 0; done < total && rc == 0;) {
    size_t chunk = total - done < ST_BOUNCE ? total - done : ST_BOUNCE;
    rc = st_read_at(f->fd, buf, chunk, offset + done);
    size_t n = chunk / esize;
    if (rc == 0 && e->dtype == LA_ST_F64) {
      for (size_t k = 0; k < n; k++) {
        double d;
        memcpy(&d, buf + k * esize, sizeof d);
        out[k] = st_f64(d);
      }
    } else if (rc == 0) {   /* the buffer is malloc's, aligned for uint16_t */
      la_half_to_f32_n((const uint16_t *)(void *)buf, out, n, e->dtype == LA_ST_BF16);
    }
    out += n;
    done += chunk;
  }
  free(buf);
  return rc;
}

la_tensor *la_st_read(la_st_file *f, size_t i) {
  if (i >= f->h->n_tensors) return la_fail("%s: no tensor number %zu", f->path, i + 1);
  const la_st_entry *e = &f->h->tensors[i];
  la_dtype dt;
  if (la_st_load_dtype(e->dtype, &dt) < 0)
    return la_fail("%s: tensor " NAMEF " has dtype %s, which lualign cannot load (it loads F32, I32, "
                   "I64 and BOOL, and F16, BF16 and F64 as float32)", f->path, NAMEA(e->name, e->name_len),
                   la_st_dtype_name(e->dtype));
  la_tensor *t = la_empty(dt, e->ndim, e->shape);
  if (!t) {
    la_error_prefix("%s: tensor " NAMEF ": ", f->path, NAMEA(e->name, e->name_len));
    return NULL;
  }
  uint64_t offset = 8 + f->h->header_len + e->begin;
  size_t nbytes = (size_t)(e->end - e->begin);
  int rc;
  if (e->dtype == LA_ST_F16 || e->dtype == LA_ST_BF16 || e->dtype == LA_ST_F64) {
    rc = st_read_converted(f, e, la_fdata(t), offset);
  } else {
    rc = st_read_at(f->fd, la_data(t), nbytes, offset);
    if (rc == 0 && e->dtype == LA_ST_BOOL) {   /* the engine's bools are 0 or 1 */
      unsigned char *b = la_data(t);
      for (size_t k = 0; k < nbytes; k++) b[k] = b[k] != 0;
    }
  }
  if (rc < 0) {
    la_release(t);
    la_error_prefix("%s: tensor " NAMEF ": ", f->path, NAMEA(e->name, e->name_len));
    return NULL;
  }
  return t;
}

int la_st_read_into(la_st_file *f, size_t i, la_tensor *dst) {
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF];
  if (i >= f->h->n_tensors) return la_failn("%s: no tensor number %zu", f->path, i + 1);
  const la_st_entry *e = &f->h->tensors[i];
  bool same = dst->ndim == e->ndim;
  for (int d = 0; same && d < e->ndim; d++) same = dst->shape[d] == e->shape[d];
  if (!same)
    return la_failn("%s: tensor " NAMEF " has shape %s in the file and %s in the model", f->path,
                    NAMEA(e->name, e->name_len), la_shape_str(b1, sizeof b1, e->ndim, e->shape),
                    la_shape_str(b2, sizeof b2, dst->ndim, dst->shape));
  la_dtype dt;
  if (((dst->dtype == LA_BFLOAT16 && e->dtype == LA_ST_BF16) || (dst->dtype == LA_FLOAT16 && e->dtype == LA_ST_F16)) &&
      la_is_contiguous(dst)) {
    /* A 16-bit weight kept in its file's format: the bytes as they are. */
    int rc = st_read_at(f->fd, la_data(dst), (size_t)(e->end - e->begin), 8 + f->h->header_len + e->begin);
    if (rc < 0) la_error_prefix("%s: tensor " NAMEF ": ", f->path, NAMEA(e->name, e->name_len));
    else dst->storage->version++;
    return rc;
  }
  if (la_st_load_dtype(e->dtype, &dt) == 0 && dt == dst->dtype && la_is_contiguous(dst)) {
    /* Straight into the destination's memory: no temporary tensor. */
    uint64_t offset = 8 + f->h->header_len + e->begin;
    int rc = dt == LA_FLOAT32 && e->dtype != LA_ST_F32
                 ? st_read_converted(f, e, la_fdata(dst), offset)
                 : st_read_at(f->fd, la_data(dst), (size_t)(e->end - e->begin), offset);
    if (rc == 0 && e->dtype == LA_ST_BOOL) {
      unsigned char *b = la_data(dst);
      for (size_t k = 0; k < (size_t)(e->end - e->begin); k++) b[k] = b[k] != 0;
    }
    if (rc < 0) la_error_prefix("%s: tensor " NAMEF ": ", f->path, NAMEA(e->name, e->name_len));
    if (rc == 0) dst->storage->version++;
    return rc;
  }
  /* A view (a transposed weight) or another dtype: read, then copy across. */
  la_tensor *t = la_st_read(f, i);
  if (!t) return -1;
  int rc = la_copy_(dst, t);
  la_release(t);
  if (rc < 0) la_error_prefix("%s: tensor " NAMEF ": ", f->path, NAMEA(e->name, e->name_len));
  return rc;
}

/* ---------------------------------------------------------------- writing */

typedef struct st_buf {
  char *p;
  size_t len, cap;
  bool oom;
} st_buf;

static void sb_put(st_buf *b, const char *s, size_t n) {
  if (b->oom) return;
  if (n > SIZE_MAX / 2 - b->len) { b->oom = true; return; }
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n) cap *= 2;
    char *q = realloc(b->p, cap);
    if (!q) { b->oom = true; return; }
    b->p = q;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
}

static void sb_cstr(st_buf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_u64(st_buf *b, uint64_t v) {
  char num[24];
  int k = snprintf(num, sizeof num, "%llu", (unsigned long long)v);
  sb_put(b, num, (size_t)k);
}

/* A JSON string: quotes, backslashes and control characters escaped,
** everything else (valid UTF-8, checked before) as it is. */
static void sb_json(st_buf *b, const char *s, size_t n) {
  sb_put(b, "\"", 1);
  size_t run = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    sb_put(b, s + run, i - run);
    run = i + 1;
    char esc[8];
    switch (c) {
      case '"': sb_put(b, "\\\"", 2); break;
      case '\\': sb_put(b, "\\\\", 2); break;
      case '\n': sb_put(b, "\\n", 2); break;
      case '\r': sb_put(b, "\\r", 2); break;
      case '\t': sb_put(b, "\\t", 2); break;
      case '\b': sb_put(b, "\\b", 2); break;
      case '\f': sb_put(b, "\\f", 2); break;
      default:
        snprintf(esc, sizeof esc, "\\u%04x", c);
        sb_put(b, esc, 6);
    }
  }
  sb_put(b, s + run, n - run);
  sb_put(b, "\"", 1);
}

static bool st_is_half(la_st_dtype dt) { return dt == LA_ST_F16 || dt == LA_ST_BF16; }

typedef struct st_out {
  const la_st_named *src;
  la_st_dtype dtype;
  uint64_t nbytes, begin;
} st_out;

static int st_cmp_named(const void *x, const void *y) {
  const st_out *a = x, *b = y;
  return st_cmp_bytes(a->src->name, a->src->name_len, b->src->name, b->src->name_len);
}

/* Data order: element size, largest first, then name. */
static int st_cmp_layout(const void *x, const void *y) {
  const st_out *a = *(const st_out *const *)x, *b = *(const st_out *const *)y;
  size_t sa = la_st_dtype_size(a->dtype), sb = la_st_dtype_size(b->dtype);
  if (sa != sb) return sa > sb ? -1 : 1;
  return st_cmp_named(a, b);
}

static int st_write_all(int fd, const void *data, size_t n) {
  const char *p = data;
  while (n > 0) {
    size_t chunk = n > ((size_t)1 << 30) ? (size_t)1 << 30 : n;
    ssize_t w = write(fd, p, chunk);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (w == 0) { errno = EIO; return -1; }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Writes n float32 values as F16 or BF16, converted through a bounce buffer
** so that no half-precision copy of the whole tensor is ever made. */
static int st_write_half(int fd, const float *src, size_t n, bool bf16) {
  uint16_t buf[ST_BOUNCE / sizeof(uint16_t)];
  size_t per = sizeof buf / sizeof buf[0];
  for (size_t done = 0; done < n; done += per) {
    size_t k = n - done < per ? n - done : per;
    la_f32_to_half_n(src + done, buf, k, bf16);
    if (st_write_all(fd, buf, k * sizeof(uint16_t)) < 0) return -1;
  }
  return 0;
}

/* Writes n 16-bit floats (bf16 when src_bf16, else f16) as out: F32, or the
** other 16-bit type, converted through float32 in bounce buffers. */
static int st_write_widened(int fd, const uint16_t *src, size_t n, bool src_bf16, la_st_dtype out) {
  float wide[ST_BOUNCE / sizeof(float)];
  uint16_t narrow[ST_BOUNCE / sizeof(float)];
  size_t per = sizeof wide / sizeof wide[0];
  for (size_t done = 0; done < n; done += per) {
    size_t k = n - done < per ? n - done : per;
    la_half_to_f32_n(src + done, wide, k, src_bf16);
    int rc;
    if (out == LA_ST_F32) {
      rc = st_write_all(fd, wide, k * sizeof(float));
    } else {
      la_f32_to_half_n(wide, narrow, k, out == LA_ST_BF16);
      rc = st_write_all(fd, narrow, k * sizeof(uint16_t));
    }
    if (rc < 0) return -1;
  }
  return 0;
}

/* Builds and checks the header: returns it (padded so that the data starts
** at a multiple of 8 bytes from the start of the file) or NULL. */
static char *st_build_header(const char *path, size_t n, const la_st_named *tensors, size_t n_meta,
                             const la_st_pair *meta, st_out *outs, size_t *header_len) {
  for (size_t i = 0; i < n; i++) {
    const la_st_named *t = &tensors[i];
    if (!t->name || !st_valid_text(t->name, t->name_len))
      return la_fail("%s: tensor names must be UTF-8 text without NUL bytes (name number %zu is not)", path, i + 1);
    if (st_key_is(t->name, t->name_len, "__metadata__"))
      return la_fail("%s: \"__metadata__\" cannot be a tensor name (the format reserves it)", path);
    if (!t->tensor) return la_fail("%s: tensor " NAMEF " is missing", path, NAMEA(t->name, t->name_len));
    outs[i].src = t;
    switch (t->tensor->dtype) {
      case LA_FLOAT32: outs[i].dtype = st_is_half(t->as) ? t->as : LA_ST_F32; break;
      case LA_BFLOAT16: case LA_FLOAT16:
        outs[i].dtype = st_is_half(t->as) || t->as == LA_ST_F32 ? t->as
                        : t->tensor->dtype == LA_BFLOAT16 ? LA_ST_BF16 : LA_ST_F16;
        break;
      case LA_INT32: outs[i].dtype = LA_ST_I32; break;
      case LA_INT64: outs[i].dtype = LA_ST_I64; break;
      case LA_BOOL: outs[i].dtype = LA_ST_BOOL; break;
      default: return la_fail("%s: tensor " NAMEF " has a dtype safetensors cannot hold", path, NAMEA(t->name, t->name_len));
    }
    outs[i].nbytes = (uint64_t)la_numel(t->tensor) * la_st_dtype_size(outs[i].dtype);
  }
  qsort(outs, n, sizeof *outs, st_cmp_named);
  for (size_t i = 1; i < n; i++)
    if (st_cmp_named(&outs[i - 1], &outs[i]) == 0)
      return la_fail("%s: tensor name " NAMEF " is given twice", path, NAMEA(outs[i].src->name, outs[i].src->name_len));
  for (size_t i = 0; i < n_meta; i++) {
    if (!meta[i].key || !st_valid_text(meta[i].key, meta[i].key_len))
      return la_fail("%s: metadata keys must be UTF-8 text without NUL bytes (key number %zu is not)", path, i + 1);
    if (!meta[i].value || !st_valid_text(meta[i].value, meta[i].value_len))
      return la_fail("%s: metadata value for key " NAMEF " must be UTF-8 text without NUL bytes", path,
                     NAMEA(meta[i].key, meta[i].key_len));
  }

  /* Offsets, in data order. */
  st_out **order = malloc((n ? n : 1) * sizeof *order);
  if (!order) return la_fail("%s: out of memory", path);
  for (size_t i = 0; i < n; i++) order[i] = &outs[i];
  qsort(order, n, sizeof *order, st_cmp_layout);
  uint64_t pos = 0;
  for (size_t i = 0; i < n; i++) {
    order[i]->begin = pos;
    pos += order[i]->nbytes;
  }
  free(order);

  /* Metadata first, as the reference writer does, then the tensors by name;
  ** metadata keys sorted too, so equal inputs give equal files. */
  la_st_pair *mo = malloc((n_meta ? n_meta : 1) * sizeof *mo);
  if (!mo) return la_fail("%s: out of memory", path);
  if (n_meta) memcpy(mo, meta, n_meta * sizeof *mo);
  qsort(mo, n_meta, sizeof *mo, st_cmp_pair_key);
  for (size_t i = 1; i < n_meta; i++)
    if (st_cmp_pair_key(&mo[i - 1], &mo[i]) == 0) {
      la_fail("%s: metadata key " NAMEF " is given twice", path, NAMEA(mo[i].key, mo[i].key_len));
      free(mo);
      return NULL;
    }
  st_buf b = {0};
  sb_cstr(&b, "{");
  if (n_meta) {
    sb_cstr(&b, "\"__metadata__\":{");
    for (size_t i = 0; i < n_meta; i++) {
      if (i) sb_cstr(&b, ",");
      sb_json(&b, mo[i].key, mo[i].key_len);
      sb_cstr(&b, ":");
      sb_json(&b, mo[i].value, mo[i].value_len);
    }
    sb_cstr(&b, "}");
  }
  free(mo);
  for (size_t i = 0; i < n; i++) {
    const st_out *o = &outs[i];
    const la_tensor *t = o->src->tensor;
    if (i || n_meta) sb_cstr(&b, ",");
    sb_json(&b, o->src->name, o->src->name_len);
    sb_cstr(&b, ":{\"dtype\":\"");
    sb_cstr(&b, la_st_dtype_name(o->dtype));
    sb_cstr(&b, "\",\"shape\":[");
    for (int d = 0; d < t->ndim; d++) {
      if (d) sb_cstr(&b, ",");
      sb_u64(&b, (uint64_t)t->shape[d]);
    }
    sb_cstr(&b, "],\"data_offsets\":[");
    sb_u64(&b, o->begin);
    sb_cstr(&b, ",");
    sb_u64(&b, o->begin + o->nbytes);
    sb_cstr(&b, "]}");
  }
  sb_cstr(&b, "}");
  while (!b.oom && (8 + b.len) % 8) sb_put(&b, " ", 1);
  if (b.oom) {
    free(b.p);
    return la_fail("%s: out of memory building the header", path);
  }
  if ((uint64_t)b.len > LA_ST_MAX_HEADER) {
    free(b.p);
    return la_fail("%s: the header would take %zu bytes, more than the %llu that readers accept", path,
                   b.len, (unsigned long long)LA_ST_MAX_HEADER);
  }
  *header_len = b.len;
  return b.p;
}

/* ".NAME.tmp-PID-NANOS-COUNT" beside path: same directory, so the rename is
** atomic; hidden, so a crash leaves no file that looks like a checkpoint. */
static char *st_temp_path(const char *path, unsigned attempt) {
  static _Thread_local unsigned counter;
  const char *slash = strrchr(path, '/');
  size_t dirlen = slash ? (size_t)(slash - path) + 1 : 0;
  size_t size = strlen(path) + 80;
  char *tmp = malloc(size);
  if (!tmp) return NULL;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  snprintf(tmp, size, "%.*s.%s.tmp-%ld-%ld-%u", (int)dirlen, path, path + dirlen, (long)getpid(),
           (long)ts.tv_nsec, counter++ + attempt);
  return tmp;
}

static int st_sync_dir(const char *path) {
  const char *slash = strrchr(path, '/');
  char *dir;
  if (!slash) dir = strdup(".");
  else if (slash == path) dir = strdup("/");
  else dir = strndup(path, (size_t)(slash - path));
  if (!dir) return la_failn("%s: out of memory", path);
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int rc = 0;
  /* A directory that cannot be opened for reading, or a file system that
  ** cannot sync directories (EINVAL), gets the rename's own durability. */
  if (fd >= 0) {
    if (fsync(fd) < 0 && errno != EINVAL && errno != EROFS)
      rc = la_failn("%s: written, but syncing its directory %s failed: %s", path, dir, strerror(errno));
    close(fd);
  }
  free(dir);
  return rc;
}

int la_st_save(const char *path, size_t n, const la_st_named *tensors, size_t n_meta,
               const la_st_pair *meta) {
  if (!path || !*path) return la_failn("the path is empty");
  size_t plen = strlen(path);
  if (path[plen - 1] == '/') return la_failn("%s: names a directory, not a file", path);
  if (!st_host_little_endian())
    return la_failn("%s: safetensors files are little-endian and this host is not", path);
  if (n > SIZE_MAX / sizeof(st_out)) return la_failn("%s: too many tensors", path);
  st_out *outs = malloc((n ? n : 1) * sizeof *outs);
  if (!outs) return la_failn("%s: out of memory", path);
  size_t hlen = 0;
  char *header = st_build_header(path, n, tensors, n_meta, meta, outs, &hlen);
  if (!header) { free(outs); return -1; }

  char *tmp = NULL;
  int fd = -1;
  for (unsigned attempt = 0; attempt < 100 && fd < 0; attempt++) {
    free(tmp);
    tmp = st_temp_path(path, attempt);
    if (!tmp) { la_failn("%s: out of memory", path); goto fail; }
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && errno != EEXIST) break;
  }
  if (fd < 0) {
    la_failn("%s: cannot create a temporary file beside it: %s", path, strerror(errno));
    free(tmp);
    tmp = NULL;   /* nothing was created */
    goto fail;
  }

  unsigned char prefix[8];
  for (int k = 0; k < 8; k++) prefix[k] = (unsigned char)((uint64_t)hlen >> (8 * k));
  if (st_write_all(fd, prefix, 8) < 0 || st_write_all(fd, header, hlen) < 0) {
    la_failn("%s: cannot write: %s", path, strerror(errno));
    goto fail;
  }
  /* The data, in the order the offsets were given out. */
  st_out **order = malloc((n ? n : 1) * sizeof *order);
  if (!order) { la_failn("%s: out of memory", path); goto fail; }
  for (size_t i = 0; i < n; i++) order[i] = &outs[i];
  qsort(order, n, sizeof *order, st_cmp_layout);
  for (size_t i = 0; i < n; i++) {
    const la_st_named *src = order[i]->src;
    /* An alias has no autograd history, so making it contiguous records
    ** nothing; a non-contiguous tensor is copied here, one at a time. */
    la_tensor *alias = la_alias(src->tensor), *c = alias ? la_contiguous(alias) : NULL;
    la_release_p(&alias);
    if (!c) {
      la_error_prefix("%s: tensor " NAMEF ": ", path, NAMEA(src->name, src->name_len));
      free(order);
      goto fail;
    }
    la_st_dtype own = c->dtype == LA_BFLOAT16 ? LA_ST_BF16 : c->dtype == LA_FLOAT16 ? LA_ST_F16 : LA_ST_NDTYPE;
    int rc;
    if (la_dtype_is_half(c->dtype) && order[i]->dtype != own)
      rc = st_write_widened(fd, la_data(c), (size_t)la_numel(c), c->dtype == LA_BFLOAT16, order[i]->dtype);
    else if (c->dtype == LA_FLOAT32 && st_is_half(order[i]->dtype))
      rc = st_write_half(fd, la_fdata(c), (size_t)la_numel(c), order[i]->dtype == LA_ST_BF16);
    else
      rc = st_write_all(fd, la_data(c), (size_t)order[i]->nbytes);
    la_release(c);
    if (rc < 0) {
      la_failn("%s: cannot write tensor " NAMEF ": %s", path, NAMEA(src->name, src->name_len), strerror(errno));
      free(order);
      goto fail;
    }
  }
  free(order);
  if (fsync(fd) < 0) { la_failn("%s: cannot flush to disk: %s", path, strerror(errno)); goto fail; }
  int rc = close(fd);
  fd = -1;
  if (rc < 0) { la_failn("%s: cannot write: %s", path, strerror(errno)); goto fail; }
  if (rename(tmp, path) < 0) {
    la_failn("%s: cannot replace it with the new file: %s", path, strerror(errno));
    goto fail;
  }
  free(tmp);
  free(header);
  free(outs);
  return st_sync_dir(path);

fail:
  if (fd >= 0) close(fd);
  if (tmp) {
    unlink(tmp);
    free(tmp);
  }
  free(header);
  free(outs);
  return -1;
}
