/*
** la_dist_mpi.c -- the world of a data-parallel job, on MPI.
**
** The only file that calls MPI.  MPI is joined only when an MPI launcher
** started this process (la_dist_launched_size): a program that merely links
** MPI and runs alone never pays for MPI_Init, nor needs its daemons.  Errors
** are returned, not fatal (MPI_ERRORS_RETURN), and become errors naming the
** operation and the rank.  Only the thread that joined calls MPI
** (MPI_THREAD_FUNNELED): the kernels' OpenMP threads never do.
**
** In a world of one (not launched, or launched alone) no MPI call is made:
** every collective is then the identity, or a copy.
**
** MPI counts are ints, so buffers of more than 2^30 elements go in pieces;
** a non-blocking sum (one gradient bucket) must fit in one.
*/
#include <limits.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "la_dist.h"

static bool la_joined;      /* MPI_Init done by us */
static bool la_ready;       /* la_dist_init done (with or without MPI) */
static int la_rank = 0, la_size = 1;

#define LA_DIST_CHUNK ((int64_t)1 << 30)

bool la_dist_built_with_mpi(void) { return true; }
bool la_dist_initialized(void) { return la_ready; }
int la_dist_rank(void) { return la_rank; }
int la_dist_size(void) { return la_size; }

/* Fails with MPI's own words for code. */
static int la_mpi_fail(const char *op, int code) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, msg, &len) != MPI_SUCCESS) len = 0;
  msg[len] = 0;
  return la_failn("%s on rank %d of %d: MPI error %d: %s", op, la_rank, la_size, code,
                  len ? msg : "(no description)");
}

static void la_dist_at_exit(void) { la_dist_finalize(); }

int la_dist_init(void) {
  if (la_ready) return 0;
  if (la_dist_launched_size() == 0) {
    la_ready = true;
    return 0;
  }
  int already = 0, provided = 0, code;
  MPI_Initialized(&already);
  if (!already) {
    code = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
    if (code != MPI_SUCCESS) return la_mpi_fail("init", code);
    if (provided < MPI_THREAD_FUNNELED)
      return la_failn("init: the MPI library gives no thread support (level %d); lualign needs "
                      "MPI_THREAD_FUNNELED", provided);
    la_joined = true;
    atexit(la_dist_at_exit);
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  if ((code = MPI_Comm_rank(MPI_COMM_WORLD, &la_rank)) != MPI_SUCCESS ||
      (code = MPI_Comm_size(MPI_COMM_WORLD, &la_size)) != MPI_SUCCESS)
    return la_mpi_fail("init", code);
  la_ready = true;
  return 0;
}

int la_dist_finalize(void) {
  int done = 0;
  if (!la_joined) return 0;
  MPI_Finalized(&done);
  la_joined = false;
  if (done) return 0;
  int code = MPI_Finalize();
  return code == MPI_SUCCESS ? 0 : la_mpi_fail("finalize", code);
}

void la_dist_abort(int code) {
  int done = 0;
  if (!la_joined) return;
  MPI_Finalized(&done);
  if (!done) MPI_Abort(MPI_COMM_WORLD, code);
}

/* ---------------------------------------------------------------- buffers */

static MPI_Datatype la_mpi_type(la_dist_type type) {
  switch (type) {
    case LA_DIST_F32: return MPI_FLOAT;
    case LA_DIST_I32: return MPI_INT32_T;
    case LA_DIST_I64: return MPI_INT64_T;
    case LA_DIST_F64: return MPI_DOUBLE;
    default: return MPI_BYTE;
  }
}

int la_dist_barrier(void) {
  if (la_size == 1) return 0;
  int code = MPI_Barrier(MPI_COMM_WORLD);
  return code == MPI_SUCCESS ? 0 : la_mpi_fail("barrier", code);
}

int la_dist_bcast(const char *op, void *buf, int64_t count, la_dist_type type, int root) {
  if (root < 0 || root >= la_size)
    return la_failn("%s: root %d is not a rank of this world of %d", op, root, la_size);
  if (la_size == 1) return 0;
  for (int64_t at = 0; at < count; at += LA_DIST_CHUNK) {
    int64_t n = count - at < LA_DIST_CHUNK ? count - at : LA_DIST_CHUNK;
    int code = MPI_Bcast((char *)buf + (size_t)at * la_dist_type_size(type), (int)n, la_mpi_type(type), root,
                         MPI_COMM_WORLD);
    if (code != MPI_SUCCESS) return la_mpi_fail(op, code);
  }
  return 0;
}

/* buf /= size, for a mean. */
static void la_divide(void *buf, int64_t count, la_dist_type type, int size) {
  if (type == LA_DIST_F32) {
    float *f = buf, s = 1.0f / (float)size;
    for (int64_t i = 0; i < count; i++) f[i] *= s;
  } else if (type == LA_DIST_F64) {
    double *d = buf;
    for (int64_t i = 0; i < count; i++) d[i] /= size;
  }
}

int la_dist_allreduce(const char *op, void *buf, int64_t count, la_dist_type type, la_dist_op how) {
  if (type == LA_DIST_BYTE) return la_failn("%s: bytes cannot be reduced", op);
  if (la_size == 1) return 0;
  MPI_Op mop = how == LA_DIST_MAX ? MPI_MAX : MPI_SUM;
  for (int64_t at = 0; at < count; at += LA_DIST_CHUNK) {
    int64_t n = count - at < LA_DIST_CHUNK ? count - at : LA_DIST_CHUNK;
    int code = MPI_Allreduce(MPI_IN_PLACE, (char *)buf + (size_t)at * la_dist_type_size(type), (int)n,
                             la_mpi_type(type), mop, MPI_COMM_WORLD);
    if (code != MPI_SUCCESS) return la_mpi_fail(op, code);
  }
  if (how == LA_DIST_MEAN) la_divide(buf, count, type, la_size);
  return 0;
}

int la_dist_allgather(const char *op, const void *send, void *recv, int64_t count, la_dist_type type) {
  if (count > INT_MAX)
    return la_failn("%s on rank %d of %d: %lld elements per rank; at most %d can be gathered at once",
                    op, la_rank, la_size, (long long)count, INT_MAX);
  if (la_size == 1) {
    memcpy(recv, send, (size_t)count * la_dist_type_size(type));
    return 0;
  }
  int code = MPI_Allgather(send, (int)count, la_mpi_type(type), recv, (int)count, la_mpi_type(type),
                           MPI_COMM_WORLD);
  return code == MPI_SUCCESS ? 0 : la_mpi_fail(op, code);
}

/* ---------------------------------------------------------------- non-blocking */

struct la_dist_request {
  MPI_Request req;           /* MPI_REQUEST_NULL in a world of one */
  const char *op;
};

int la_dist_isum(const char *op, float *buf, int64_t count, la_dist_request **out) {
  *out = NULL;
  if (count > INT_MAX)
    return la_failn("%s on rank %d of %d: %lld floats in one transfer; at most %d", op, la_rank,
                    la_size, (long long)count, INT_MAX);
  la_dist_request *r = malloc(sizeof *r);
  if (!r) return la_failn("%s on rank %d of %d: out of memory", op, la_rank, la_size);
  r->op = op;
  r->req = MPI_REQUEST_NULL;
  if (la_size == 1) {
    *out = r;
    return 0;
  }
  int code = MPI_Iallreduce(MPI_IN_PLACE, buf, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &r->req);
  if (code != MPI_SUCCESS) {
    free(r);
    return la_mpi_fail(op, code);
  }
  *out = r;
  return 0;
}

int la_dist_test(la_dist_request *r, bool *done) {
  *done = true;
  if (r->req == MPI_REQUEST_NULL) return 0;
  int flag = 0;
  int code = MPI_Test(&r->req, &flag, MPI_STATUS_IGNORE);
  *done = flag != 0;
  return code == MPI_SUCCESS ? 0 : la_mpi_fail(r->op, code);
}

int la_dist_wait(la_dist_request *r) {
  int code = r->req == MPI_REQUEST_NULL ? MPI_SUCCESS : MPI_Wait(&r->req, MPI_STATUS_IGNORE);
  const char *op = r->op;
  free(r);
  return code == MPI_SUCCESS ? 0 : la_mpi_fail(op, code);
}
