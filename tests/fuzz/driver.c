/*
** tests/fuzz/driver.c -- replays inputs through a harness without libFuzzer:
** `harness FILE|DIR ...` runs every file named, and every file in every
** directory named, once.  Exit status 0 when all ran (a broken contract or a
** crash aborts).  Used by `make test` (tests/fuzz_spec.lua) to keep the seed
** corpora and the regression inputs passing with any compiler.
*/
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc; (void)argv;
  return 0;
}

static int run_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) { fprintf(stderr, "cannot open %s\n", path); return -1; }
  size_t cap = 4096, n = 0;
  unsigned char *buf = malloc(cap);
  size_t got;
  while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
    n += got;
    if (n == cap) {
      unsigned char *b = realloc(buf, cap *= 2);
      if (!b) { free(buf); buf = NULL; }
      else buf = b;
    }
  }
  fclose(f);
  if (!buf) { fprintf(stderr, "out of memory reading %s\n", path); return -1; }
  /* A copy of exactly n bytes, so that reading past the input is caught. */
  unsigned char *exact = malloc(n ? n : 1);
  if (!exact) { free(buf); return -1; }
  memcpy(exact, buf, n);
  free(buf);
  LLVMFuzzerTestOneInput(exact, n);
  free(exact);
  return 0;
}

static int cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int main(int argc, char **argv) {
  LLVMFuzzerInitialize(&argc, &argv);
  int files = 0, rc = 0;
  for (int i = 1; i < argc; i++) {
    struct stat st;
    if (stat(argv[i], &st) != 0) { fprintf(stderr, "no such file: %s\n", argv[i]); rc = 1; continue; }
    if (!S_ISDIR(st.st_mode)) {
      if (run_file(argv[i]) < 0) rc = 1;
      files++;
      continue;
    }
    DIR *d = opendir(argv[i]);
    if (!d) { rc = 1; continue; }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
      if (e->d_name[0] == '.') continue;
      if (n == cap) {
        cap = cap ? 2 * cap : 64;
        char **nn = realloc(names, cap * sizeof *names);
        if (!nn) break;
        names = nn;
      }
      size_t len = strlen(argv[i]) + strlen(e->d_name) + 2;
      names[n] = malloc(len);
      if (!names[n]) break;
      snprintf(names[n++], len, "%s/%s", argv[i], e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp);
    for (size_t k = 0; k < n; k++) {
      if (run_file(names[k]) < 0) rc = 1;
      files++;
      free(names[k]);
    }
    free(names);
  }
  printf("%s: %d inputs replayed\n", argv[0], files);
  return rc;
}
