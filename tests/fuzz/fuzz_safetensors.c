/*
** tests/fuzz/fuzz_safetensors.c -- the safetensors reader on arbitrary bytes.
**
** The input is a whole file.  la_st_parse (length prefix, header, layout)
** must either accept it or fail with a message naming the file; the same
** bytes are also given to la_st_parse_header as a bare header.  An accepted
** file is then read from disk tensor by tensor (la_st_open, la_st_read),
** written back with la_st_save, and the copy must parse to the same names,
** dtypes and shapes.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "la_safetensors.h"
#include "fuzz.h"

#define FILE_NAME "fuzz.safetensors"

static void check_message(const char *what) {
  const char *e = la_error();
  if (!e || strncmp(e, FILE_NAME, strlen(FILE_NAME)) != 0)
    fz_fail("%s: the error does not start with the file name: '%s'", what, e ? e : "(null)");
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc; (void)argv;
  la_set_num_threads(1);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  la_st_header *bare = la_st_parse_header(FILE_NAME, data, size, 64);
  if (bare) la_st_header_free(bare);
  else check_message("la_st_parse_header");

  la_st_header *h = la_st_parse(FILE_NAME, data, size);
  if (!h) {
    check_message("la_st_parse");
    return 0;
  }
  /* Accepted: read every tensor from a file holding these bytes. */
  const char *path = fz_write(FILE_NAME, data, size);
  la_st_file *f = la_st_open(path);
  if (!f) fz_fail("parsed in memory but la_st_open failed: %s", la_error());
  size_t n = la_st_file_header(f)->n_tensors;
  la_st_named *named = calloc(n ? n : 1, sizeof *named);
  size_t loaded = 0;
  for (size_t i = 0; i < n; i++) {
    const la_st_entry *e = &la_st_file_header(f)->tensors[i];
    la_tensor *t = la_st_read(f, i);
    if (!t) {
      la_dtype dt;
      /* Only types lualign does not load, or sizes beyond memory, may fail. */
      if (la_st_load_dtype(e->dtype, &dt) == 0 && !strstr(la_error(), "out of memory"))
        fz_fail("tensor %zu of an accepted file did not load: %s", i, la_error());
      continue;
    }
    named[loaded].name = e->name;
    named[loaded].name_len = e->name_len;
    named[loaded].tensor = t;
    loaded++;
  }
  /* Write what loaded and parse the copy. */
  char out[512];
  snprintf(out, sizeof out, "%s/copy.safetensors", fz_tmpdir());
  const la_st_header *fh = la_st_file_header(f);
  la_st_pair *meta = calloc(fh->n_meta ? fh->n_meta : 1, sizeof *meta);
  for (size_t i = 0; i < fh->n_meta; i++) meta[i] = fh->meta[i];
  if (la_st_save(out, loaded, named, fh->n_meta, meta) < 0)
    fz_fail("writing back an accepted file failed: %s", la_error());
  la_st_file *g = la_st_open(out);
  if (!g) fz_fail("the copy does not parse: %s", la_error());
  const la_st_header *gh = la_st_file_header(g);
  if (gh->n_tensors != loaded || gh->n_meta != fh->n_meta) fz_fail("the copy has other entries");
  for (size_t i = 0; i < loaded; i++) {
    ptrdiff_t k = la_st_find(gh, named[i].name, named[i].name_len);
    if (k < 0) fz_fail("tensor %zu is missing from the copy", i);
    const la_st_entry *e = &gh->tensors[k];
    la_tensor *t = named[i].tensor;
    if (e->ndim != t->ndim || memcmp(e->shape, t->shape, (size_t)t->ndim * sizeof(int64_t)))
      fz_fail("tensor %zu has another shape in the copy", i);
    la_tensor *back = la_st_read(g, (size_t)k);
    if (!back) fz_fail("tensor %zu of the copy does not load: %s", i, la_error());
    size_t bytes = (size_t)la_numel(t) * la_dtype_size(t->dtype);
    if (back->dtype != t->dtype || memcmp(la_data(back), la_data(t), bytes) != 0)
      fz_fail("tensor %zu changed in the copy", i);
    la_release(back);
  }
  la_st_close(g);
  for (size_t i = 0; i < loaded; i++) la_release(named[i].tensor);
  free(named);
  free(meta);
  la_st_close(f);
  la_st_header_free(h);
  return 0;
}
