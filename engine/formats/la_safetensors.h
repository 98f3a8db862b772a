/*
** la_safetensors.h -- reading and writing safetensors files, with no Lua.
**
** The format (https://github.com/huggingface/safetensors, "Format"):
**
**   8 bytes    N, the header length, an unsigned little-endian 64-bit integer
**   N bytes    a UTF-8 JSON object: {"name": {"dtype": "F32", "shape": [2, 3],
**              "data_offsets": [begin, end]}, ..., "__metadata__": {"k": "v"}}
**              starting with '{' and possibly padded with spaces
**   the rest   the data: each tensor's bytes, little-endian, row-major, at
**              [begin, end) counted from the first byte after the header
**
** Every function that can fail returns NULL or -1 and leaves a message in
** la_error() that starts with the file's path and names the tensor involved.
** Nothing here aborts, exits or prints; a malformed file is an error, never a
** read out of bounds.
*/
#ifndef LA_SAFETENSORS_H
#define LA_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "la.h"

/* The element types a header may name (the byte-sized ones of the spec). */
typedef enum la_st_dtype {
  LA_ST_BOOL, LA_ST_U8, LA_ST_I8, LA_ST_F8_E5M2, LA_ST_F8_E4M3, LA_ST_I16, LA_ST_U16,
  LA_ST_F16, LA_ST_BF16, LA_ST_I32, LA_ST_U32, LA_ST_F32, LA_ST_F64, LA_ST_I64, LA_ST_U64,
  LA_ST_NDTYPE
} la_st_dtype;

const char *la_st_dtype_name(la_st_dtype dt);      /* "F32", "BF16", ... */
size_t la_st_dtype_size(la_st_dtype dt);           /* bytes per element */
/* The engine dtype a tensor of type dt loads as (F16, BF16 and F64 become
** float32); -1 when lualign cannot load that type. */
int la_st_load_dtype(la_st_dtype dt, la_dtype *out);

/* Headers longer than this are refused before anything is allocated for
** them (the reference implementation's limit: no real header comes close). */
#define LA_ST_MAX_HEADER ((uint64_t)100000000)

typedef struct la_st_entry {
  const char *name;         /* UTF-8, NUL-terminated (NUL is refused inside) */
  size_t name_len;
  la_st_dtype dtype;
  int ndim;
  int64_t shape[LA_MAX_DIM];
  uint64_t begin, end;      /* data_offsets, relative to the start of the data */
} la_st_entry;

typedef struct la_st_pair {
  const char *key, *value;  /* NUL-terminated */
  size_t key_len, value_len;
} la_st_pair;

/* A parsed and validated header: every tensor's bytes lie inside the data,
** the tensors tile it without overlap, hole or trailing byte, and each one's
** byte count is its element count times its element size. */
typedef struct la_st_header {
  size_t n_tensors;
  la_st_entry *tensors;     /* sorted by name (bytewise) */
  size_t n_meta;
  la_st_pair *meta;         /* __metadata__, sorted by key */
  uint64_t header_len;      /* N */
  uint64_t data_len;        /* bytes after the header */
  char *strings_;           /* owns every name, key and value */
} la_st_header;

/* Parses the N header bytes of 'file' (used in messages) whose data section
** holds data_len bytes.  This and la_st_parse are the fuzzing entry points. */
la_st_header *la_st_parse_header(const char *file, const void *json, size_t n, uint64_t data_len);
/* Parses a whole file held in memory (length prefix, header, data). */
la_st_header *la_st_parse(const char *file, const void *bytes, size_t n);
void la_st_header_free(la_st_header *h);
/* The index of the tensor called name, or -1. */
ptrdiff_t la_st_find(const la_st_header *h, const char *name, size_t len);

/* ---------------------------------------------------------------- reading */

typedef struct la_st_file la_st_file;

/* Opens path and reads and validates its header; no tensor data is read. */
la_st_file *la_st_open(const char *path);
const la_st_header *la_st_file_header(const la_st_file *f);
/* Reads tensor i of the header into a new tensor (one reference). */
la_tensor *la_st_read(la_st_file *f, size_t i);
/* Reads tensor i into dst, an existing tensor of the same shape: straight
** into its memory when it is contiguous and of the type the tensor loads as
** (F16/BF16/F64 converted on the way through a small buffer) or a bfloat16
** (float16) tensor read from BF16 (F16) as it is, otherwise read
** and copied across (dst a view, or another dtype).  No autograd checks: the
** caller writes model parameters under no-grad. */
int la_st_read_into(la_st_file *f, size_t i, la_tensor *dst);
void la_st_close(la_st_file *f);

/* ---------------------------------------------------------------- writing */

typedef struct la_st_named {
  const char *name;
  size_t name_len;
  la_tensor *tensor;        /* any dtype; any strides */
  la_st_dtype as;           /* LA_ST_F16 or LA_ST_BF16: a float32 tensor stored in half
                            ** precision (rounded to nearest even); a bfloat16 or float16
                            ** tensor is stored as 'as' when that is F32, F16 or BF16
                            ** (converted through float32 unless it is its own type); any
                            ** other value (zero-initialised included): stored as its own dtype */
} la_st_named;

/* Writes the tensors and the metadata to path atomically: into a temporary
** file in the same directory, flushed to disk, then renamed over path, and
** the directory synced.  On failure path is untouched and the temporary
** file removed.  Header keys are sorted by name; the data is laid out by
** element size, largest first, so that every tensor starts at a multiple of
** its element size. */
int la_st_save(const char *path, size_t n, const la_st_named *tensors, size_t n_meta,
               const la_st_pair *meta);

#endif
