/*
** la_collective.c -- collectives on tensors, over the buffer-level world of
** la_dist_mpi.c (or la_dist_single.c), and what both worlds share.
**
** MPI moves bytes: handed buffers of different lengths on different ranks it
** reads past one or waits forever.  So every tensor collective first gathers
** each rank's dtype and shape and compares them with rank 0's; all ranks see
** the same table and so fail together, with a message naming the ranks and
** shapes that differ.  That costs one small all-gather per call -- nothing
** next to a tensor worth sending -- and the gradient reducer, which checks its
** parameter lists once when it is made, does without it.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "la_dist.h"

static const char *const la_dist_op_names[LA_DIST_NOPS] = {"sum", "mean", "max"};

int la_dist_op_from_name(const char *name, la_dist_op *out) {
  for (int i = 0; i < LA_DIST_NOPS; i++)
    if (strcmp(name, la_dist_op_names[i]) == 0) {
      *out = (la_dist_op)i;
      return 0;
    }
  return -1;
}

const char *la_dist_op_name(la_dist_op op) {
  return op >= 0 && op < LA_DIST_NOPS ? la_dist_op_names[op] : "?";
}

size_t la_dist_type_size(la_dist_type type) {
  static const size_t sizes[] = {4, 4, 8, 1, 8};
  return sizes[type];
}

/* The launchers' variables: Open MPI's mpirun, and the PMI of MPICH's and
** Intel MPI's (so that a build without MPI notices those too). */
int la_dist_launched_size(void) {
  static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"};
  for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
    const char *v = getenv(vars[i]);
    if (v && *v) {
      long n = strtol(v, NULL, 10);
      if (n > 0 && n < 1 << 30) return (int)n;
    }
  }
  return 0;
}

/* ---------------------------------------------------------------- checks */

static int la_dist_type_of(const char *op, la_dtype dt, la_dist_type *out) {
  switch (dt) {
    case LA_FLOAT32: *out = LA_DIST_F32; return 0;
    case LA_INT32: *out = LA_DIST_I32; return 0;
    case LA_INT64: *out = LA_DIST_I64; return 0;
    case LA_BOOL: *out = LA_DIST_BYTE; return 0;
    default: return la_failn("%s: unsupported dtype", op);
  }
}

#define LA_DESC (LA_MAX_DIM + 2)

static void la_describe(const la_tensor *t, int64_t *d) {
  memset(d, 0, LA_DESC * sizeof *d);
  d[0] = t->dtype;
  d[1] = t->ndim;
  for (int i = 0; i < t->ndim; i++) d[2 + i] = t->shape[i];
}

static void la_desc_str(char *buf, size_t n, const int64_t *d) {
  char shape[LA_SHAPE_BUF];
  la_dtype dt = (la_dtype)d[0];
  snprintf(buf, n, "%s %s", la_shape_str(shape, sizeof shape, (int)d[1], d + 2),
           dt >= 0 && dt < LA_NDTYPE ? la_dtype_name(dt) : "?");
}

/* Fails on every rank alike when some rank's tensor differs from rank 0's in
** dtype or shape. */
static int la_check_same(const char *op, const la_tensor *t) {
  int size = la_dist_size();
  if (size == 1) return 0;
  int64_t mine[LA_DESC];
  la_describe(t, mine);
  int64_t *all = malloc((size_t)size * LA_DESC * sizeof *all);
  if (!all) return la_failn("%s on rank %d of %d: out of memory", op, la_dist_rank(), size);
  int rc = la_dist_allgather(op, mine, all, LA_DESC, LA_DIST_I64);
  for (int r = 1; rc == 0 && r < size; r++) {
    if (memcmp(all + (size_t)r * LA_DESC, all, LA_DESC * sizeof *all) == 0) continue;
    char a[LA_SHAPE_BUF + 16], b[LA_SHAPE_BUF + 16];
    la_desc_str(a, sizeof a, all);
    la_desc_str(b, sizeof b, all + (size_t)r * LA_DESC);
    rc = la_failn("%s on rank %d of %d: the ranks passed different tensors: rank 0 has %s, "
                  "rank %d has %s (every rank must pass the same shape and dtype)",
                  op, la_dist_rank(), size, a, r, b);
  }
  free(all);
  return rc;
}

static int la_check_root(const char *op, int root) {
  if (root < 0 || root >= la_dist_size())
    return la_failn("%s: root %d is not a rank of this world of %d (ranks are 0 to %d)", op, root,
                    la_dist_size(), la_dist_size() - 1);
  return 0;
}

/* Writes back the values received into packed, t's contiguous form (t
** itself, retained, when it was contiguous already). */
static int la_unpack(la_tensor *t, la_tensor *packed) {
  if (packed == t) {
    t->storage->version++;
    return 0;
  }
  return la_copy_(t, packed);
}

/* ---------------------------------------------------------------- collectives */

int la_dist_broadcast_tensor(la_tensor *t, int root) {
  const char *op = "broadcast";
  la_dist_type type = LA_DIST_F32;
  if (la_check_root(op, root) < 0 || la_dist_type_of(op, t->dtype, &type) < 0) return -1;
  if (la_dist_rank() != root && la_check_inplace(op, t) < 0) return -1;
  if (la_check_same(op, t) < 0) return -1;
  if (la_dist_size() == 1) return 0;
  la_tensor *p = la_contiguous(t);
  if (!p) return -1;
  int rc = la_dist_bcast(op, la_data(p), la_numel(p), type, root);
  if (rc == 0 && la_dist_rank() != root) rc = la_unpack(t, p);
  la_release(p);
  return rc;
}

int la_dist_all_reduce_tensor(la_tensor *t, la_dist_op how) {
  const char *op = "all_reduce";
  la_dist_type type = LA_DIST_F32;
  if (la_dist_type_of(op, t->dtype, &type) < 0) return -1;
  if (t->dtype == LA_BOOL)
    return la_failn("%s: bool tensors cannot be reduced (convert to int32 first)", op);
  if (how == LA_DIST_MEAN && t->dtype != LA_FLOAT32)
    return la_failn("%s: 'mean' needs a float32 tensor (this one is %s; use 'sum')", op,
                    la_dtype_name(t->dtype));
  if (la_check_inplace(op, t) < 0 || la_check_same(op, t) < 0) return -1;
  if (la_dist_size() == 1) return 0;
  la_tensor *p = la_contiguous(t);
  if (!p) return -1;
  int rc = la_dist_allreduce(op, la_data(p), la_numel(p), type, how);
  if (rc == 0) rc = la_unpack(t, p);
  la_release(p);
  return rc;
}

la_tensor *la_dist_all_gather_tensor(la_tensor *t) {
  const char *op = "all_gather";
  la_dist_type type = LA_DIST_F32;
  if (la_dist_type_of(op, t->dtype, &type) < 0) return NULL;
  if (t->ndim == LA_MAX_DIM)
    return la_fail("%s: the tensor already has %d dims, the most a tensor can have, so the "
                   "ranks' dim cannot be added", op, LA_MAX_DIM);
  if (la_check_same(op, t) < 0) return NULL;
  int64_t shape[LA_MAX_DIM];
  shape[0] = la_dist_size();
  memcpy(shape + 1, t->shape, (size_t)t->ndim * sizeof *shape);
  la_tensor *out = la_empty(t->dtype, t->ndim + 1, shape);
  la_tensor *p = out ? la_contiguous(t) : NULL;
  if (!p) {
    la_release(out);
    return NULL;
  }
  int rc = la_dist_allgather(op, la_data(p), la_data(out), la_numel(p), type);
  la_release(p);
  if (rc < 0) {
    la_release(out);
    return NULL;
  }
  return out;
}
