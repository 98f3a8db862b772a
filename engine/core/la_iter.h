/*
** la_iter.h -- walking several strided operands of one shape together.
**
** Elementwise kernels see an iteration space as rows: the innermost
** dimension, after adjacent dimensions that are laid out back to back in
** every operand have been merged.  A row function gets the row length, one
** byte pointer per operand and the operands' byte strides along the row, so
** it can pick a tight loop when the strides are unit.  Large spaces are split
** into equal ranges of elements across the OpenMP threads.
*/
#ifndef LA_ITER_H
#define LA_ITER_H

#include "la.h"

#define LA_ITER_MAX_OPS 4

typedef struct la_iter {
  int ndim;                                   /* >= 1 after merging */
  int nops;
  int64_t shape[LA_MAX_DIM];
  int64_t stride[LA_ITER_MAX_OPS][LA_MAX_DIM];   /* bytes */
  char *base[LA_ITER_MAX_OPS];
  int64_t numel;
} la_iter;

typedef void (*la_row_fn)(void *ctx, int64_t n, char *const *p, const int64_t *s);

/* ops[i] must all have 'ndim'/'shape' (broadcast strides already applied:
** pass the element strides of each operand viewed in that shape). */
void la_iter_init(la_iter *it, int ndim, const int64_t *shape, int nops,
                  char *const *base, const int64_t *const *elem_strides,
                  const size_t *elem_sizes);
void la_iter_run(const la_iter *it, la_row_fn fn, void *ctx);
/* Same, on the calling thread only. */
void la_iter_run_serial(const la_iter *it, la_row_fn fn, void *ctx);

/* Element strides of t seen in a broadcast shape of ndim dims (0 where t has
** size 1 or no dimension). */
void la_broadcast_strides(const la_tensor *t, int ndim, const int64_t *shape, int64_t *out);

#endif
