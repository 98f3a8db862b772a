/*
** la_dist_single.c -- the world of one process, for builds without MPI.
**
** Every collective over one rank is the identity (or a copy), so data-parallel
** code runs unchanged.  The one thing this build cannot do is join a job:
** started by an MPI launcher with several processes, la_dist_init fails, so
** that N copies of a run never train side by side unaware of each other.
*/
#include <stdlib.h>
#include <string.h>

#include "la_dist.h"

static bool la_ready;

bool la_dist_built_with_mpi(void) { return false; }
bool la_dist_initialized(void) { return la_ready; }
int la_dist_rank(void) { return 0; }
int la_dist_size(void) { return 1; }

int la_dist_init(void) {
  if (la_ready) return 0;
  int n = la_dist_launched_size();
  if (n > 1)
    return la_failn("init: an MPI launcher started %d processes, but lualign was built without "
                    "MPI, so each would train alone; install Open MPI (Debian: apt-get install "
                    "libopenmpi-dev openmpi-bin) and rebuild (make MPI=1), or run one process",
                    n);
  la_ready = true;
  return 0;
}

int la_dist_finalize(void) { return 0; }
void la_dist_abort(int code) { (void)code; }

int la_dist_barrier(void) { return 0; }

int la_dist_bcast(const char *op, void *buf, int64_t count, la_dist_type type, int root) {
  (void)buf; (void)count; (void)type;
  if (root != 0) return la_failn("%s: root %d is not a rank of this world of 1", op, root);
  return 0;
}

int la_dist_allreduce(const char *op, void *buf, int64_t count, la_dist_type type, la_dist_op how) {
  (void)buf; (void)count; (void)how;
  if (type == LA_DIST_BYTE) return la_failn("%s: bytes cannot be reduced", op);
  return 0;
}

int la_dist_allgather(const char *op, const void *send, void *recv, int64_t count, la_dist_type type) {
  (void)op;
  memcpy(recv, send, (size_t)count * la_dist_type_size(type));
  return 0;
}

struct la_dist_request {
  int unused;
};

int la_dist_isum(const char *op, float *buf, int64_t count, la_dist_request **out) {
  (void)buf; (void)count;
  *out = malloc(sizeof **out);
  return *out ? 0 : la_failn("%s: out of memory", op);
}

int la_dist_test(la_dist_request *req, bool *done) {
  (void)req;
  *done = true;
  return 0;
}

int la_dist_wait(la_dist_request *req) {
  free(req);
  return 0;
}
