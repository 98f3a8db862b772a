/*
** la_dist.h -- communication between the processes of a data-parallel job.
**
** Three layers, none of which sees a Lua header:
**
**  - the world (la_dist_mpi.c, or la_dist_single.c when lualign is built
**    without MPI): this process's rank and the number of processes, and
**    collectives on plain buffers.  Outside an MPI launch (mpirun)
**    the world is this process alone and every collective is a copy or
**    nothing, so code written for N processes runs unchanged in one;
**  - collectives on tensors (la_collective.c): contiguity, dtypes, and a
**    check that every rank passed the same shape;
**  - the gradient reducer (la_reducer.c): a backward pass whose gradients
**    are summed across the ranks in buckets, each sent as soon as the
**    gradients in it are final (la_backward_hooked), so that sending
**    overlaps the rest of the pass.
**
** Ranks are numbered from 0, as MPI and every launcher number them.  Every
** function that can fail returns -1 (or NULL) with la_error() naming the
** operation and this rank ("all_reduce on rank 1 of 2: ...").  Nothing here
** exits or prints; la_dist_abort ends the whole job and is called only by the
** binding, when the program decides an error on one rank must end them all.
*/
#ifndef LA_DIST_H
#define LA_DIST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "la.h"

typedef enum la_dist_op { LA_DIST_SUM, LA_DIST_MEAN, LA_DIST_MAX, LA_DIST_NOPS } la_dist_op;

/* "sum", "mean", "max"; -1 for another name. */
int la_dist_op_from_name(const char *name, la_dist_op *out);
const char *la_dist_op_name(la_dist_op op);

/* ---------------------------------------------------------------- the world */

/* Whether this build can talk to other processes (compiled with MPI). */
bool la_dist_built_with_mpi(void);
/* The number of processes the environment says an MPI launcher started
** (OMPI_COMM_WORLD_SIZE, PMI_SIZE); 0 when not launched by one. */
int la_dist_launched_size(void);
/* Joins the world (MPI_Init when launched by an MPI launcher); later calls do
** nothing.  A build without MPI started by a launcher with several processes
** fails here, rather than run N copies of one job side by side. */
int la_dist_init(void);
bool la_dist_initialized(void);
/* This process's rank, 0-based, and the number of processes (0 and 1 before
** la_dist_init and outside a launch). */
int la_dist_rank(void);
int la_dist_size(void);
/* Leaves the world (MPI_Finalize) if joined.  Idempotent. */
int la_dist_finalize(void);
/* Ends every process of the job with this exit code (MPI_Abort), for the
** binding when an error on one rank must end the whole job; returns only
** when there is no world to end (not launched). */
void la_dist_abort(int code);

/* Element types of the buffer-level calls: the tensor dtypes, and doubles
** for Lua numbers (metrics, counts). */
typedef enum la_dist_type { LA_DIST_F32, LA_DIST_I32, LA_DIST_I64, LA_DIST_BYTE, LA_DIST_F64 } la_dist_type;
size_t la_dist_type_size(la_dist_type type);

/* Collectives on buffers of count elements; op names the operation in errors. */
int la_dist_barrier(void);
int la_dist_bcast(const char *op, void *buf, int64_t count, la_dist_type type, int root);
/* In place; LA_DIST_MEAN divides by the size after summing. */
int la_dist_allreduce(const char *op, void *buf, int64_t count, la_dist_type type, la_dist_op how);
/* recv holds size * count elements: rank r's at r * count. */
int la_dist_allgather(const char *op, const void *send, void *recv, int64_t count, la_dist_type type);

/* Non-blocking sum of floats, in place: started, then tested (which also
** moves the transfer on: MPI progresses only inside its calls) and waited. */
typedef struct la_dist_request la_dist_request;
int la_dist_isum(const char *op, float *buf, int64_t count, la_dist_request **req);
int la_dist_test(la_dist_request *req, bool *done);
/* Waits for the transfer and frees the request. */
int la_dist_wait(la_dist_request *req);

/* ---------------------------------------------------------------- tensors */

/* Broadcasts root's values into t on every other rank (in place). */
int la_dist_broadcast_tensor(la_tensor *t, int root);
/* Reduces t across the ranks, in place: sum, mean or max (float32, int32,
** int64). */
int la_dist_all_reduce_tensor(la_tensor *t, la_dist_op how);
/* A new tensor of shape (size, t's shape...): row r is rank r's t. */
la_tensor *la_dist_all_gather_tensor(la_tensor *t);

/* ---------------------------------------------------------------- gradients */

/* Sums the gradients of a list of parameters across the ranks in buckets of
** about bucket_bytes, in the reverse of the list's order (the order a
** backward pass finishes them in), and divides them by the number of ranks
** when how is LA_DIST_MEAN. */
typedef struct la_reducer la_reducer;

typedef struct la_reducer_stats {
  int n_params, n_buckets;
  int64_t bucket_bytes;       /* the cap asked for */
  int64_t bytes_per_step;     /* floats all-reduced per step, in bytes */
  int64_t steps;              /* backward passes and syncs done */
  int64_t launched_early;     /* buckets started before their pass ended */
  double pass_s;              /* time inside the hooked backward passes */
  double hook_s;              /* of which: copying gradients, starting transfers */
  double wait_s;              /* time waiting for transfers after the passes */
} la_reducer_stats;

/* params: float32 leaves requiring grad, all distinct.  Every rank must pass
** the same shapes in the same order (checked here, collectively). */
la_reducer *la_reducer_new(la_tensor *const *params, int n, int64_t bucket_bytes, la_dist_op how);
void la_reducer_free(la_reducer *r);
/* root->backward(grad) with the gradients of the parameters summed across the
** ranks as they become final; returns when every sum has arrived and is in
** the parameters' .grad.  A parameter that no rank gave a gradient keeps
** .grad NULL; one that only some ranks did gets the sum. */
int la_reducer_backward(la_reducer *r, la_tensor *root, la_tensor *grad);
/* The same without a backward pass: the parameters' current gradients. */
int la_reducer_sync(la_reducer *r);
la_reducer_stats la_reducer_get_stats(const la_reducer *r);

#endif
