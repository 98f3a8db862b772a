/*
** la_reducer.c -- gradients summed across the ranks while the backward pass
** still runs.
**
** The parameters are laid out, in the reverse of the order given (a model
** lists its first layer first; a backward pass finishes the last layer's
** gradients first), into buckets of about bucket_bytes.  Each bucket is one
** float buffer: the gradients of its parameters one after the other, then one
** float per parameter that is 1 when this rank has a gradient for it (so that
** a parameter no rank touched keeps .grad NULL, as it would in one process).
**
** During a hooked backward pass (la_backward_hooked) the engine reports each
** parameter as soon as its gradient is final; the reducer copies it into its
** bucket, and when a bucket is complete starts a non-blocking sum of it
** across the ranks.  Buckets start strictly in order -- bucket k only after
** buckets 0..k-1 -- so every rank issues the same sequence of collectives
** even when their passes finish parameters in different orders.  MPI moves a
** transfer on only inside an MPI call, so every report also tests the
** transfers under way.  When the pass ends, the buckets not yet started (the
** parameters the pass never reached) start, the reducer waits for all of
** them, and copies the sums back into .grad.
**
** A pass that fails half-way leaves transfers that the other ranks finish
** and this one cannot: the reducer is then broken and refuses further use
** (the job must end; the command ends it, see la_dist_abort).
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "la_dist.h"

typedef struct la_rparam {
  la_tensor *t;          /* the parameter (retained) */
  la_tensor *slice;      /* its place in its bucket, shaped like it */
  int bucket;
  int64_t flag;          /* index of its has-a-gradient float in the bucket */
  bool ready;            /* copied into the bucket in this pass */
} la_rparam;

typedef struct la_bucket {
  la_tensor *buf;        /* gradients, then one flag per parameter */
  int64_t numel;         /* floats in buf */
  int pending;           /* parameters not yet copied in this pass */
  int n_params;
  la_dist_request *req;  /* the sum under way, until waited for */
  bool done;             /* the sum has arrived (tested) */
} la_bucket;

struct la_reducer {
  int n;
  la_rparam *p;
  int nb;
  la_bucket *b;
  int next;              /* the next bucket to start */
  la_dist_op how;
  bool in_pass, broken;
  /* parameter lookup: open addressing on the tensor's address */
  int hcap;
  la_tensor **hkey;
  int *hval;
  la_reducer_stats st;
};

static double la_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---------------------------------------------------------------- lookup */

static size_t la_hash_ptr(const void *p, int cap) {
  uint64_t x = (uint64_t)(uintptr_t)p;
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  return (size_t)(x & (uint64_t)(cap - 1));
}

/* Index of t among the parameters, or -1. */
static int la_lookup(const la_reducer *r, const la_tensor *t) {
  for (size_t h = la_hash_ptr(t, r->hcap);; h = (h + 1) & (size_t)(r->hcap - 1)) {
    if (r->hkey[h] == t) return r->hval[h];
    if (!r->hkey[h]) return -1;
  }
}

/* Adds parameter i; fails when the same tensor is listed twice. */
static int la_insert(la_reducer *r, int i) {
  la_tensor *t = r->p[i].t;
  size_t h = la_hash_ptr(t, r->hcap);
  while (r->hkey[h]) {
    if (r->hkey[h] == t)
      return la_failn("Reducer: parameters %d and %d are the same tensor", r->hval[h] + 1, i + 1);
    h = (h + 1) & (size_t)(r->hcap - 1);
  }
  r->hkey[h] = t;
  r->hval[h] = i;
  return 0;
}

/* ---------------------------------------------------------------- building */

static int la_check_param(la_tensor *t, int i) {
  if (t->dtype != LA_FLOAT32)
    return la_failn("Reducer: parameter %d is %s; gradients are float32", i + 1, la_dtype_name(t->dtype));
  if (t->grad_fn || !t->requires_grad)
    return la_failn("Reducer: parameter %d is not a leaf that requires grad", i + 1);
  return 0;
}

/* Places the parameters into buckets, the last parameter first. */
static int la_layout(la_reducer *r, int64_t cap_floats) {
  int nb = 0;
  int64_t used = 0;
  for (int i = r->n - 1; i >= 0; i--) {
    int64_t numel = la_numel(r->p[i].t);
    if (numel >= INT32_MAX / 2)
      return la_failn("Reducer: parameter %d has %lld elements; at most %d fit one transfer", i + 1,
                      (long long)numel, INT32_MAX / 2);
    if (nb == 0 || (used > 0 && used + numel > cap_floats) || used + numel >= INT32_MAX / 2) {
      nb++;
      used = 0;
    }
    r->p[i].bucket = nb - 1;
    used += numel;
  }
  r->nb = nb;
  r->b = calloc((size_t)(nb > 0 ? nb : 1), sizeof *r->b);
  if (!r->b) return la_failn("Reducer: out of memory");
  for (int i = r->n - 1; i >= 0; i--) {
    la_bucket *b = &r->b[r->p[i].bucket];
    b->numel += la_numel(r->p[i].t);
    b->n_params++;
  }
  return 0;
}

/* Allocates the buckets' buffers and each parameter's view of its place. */
static int la_make_buffers(la_reducer *r) {
  int64_t *grads_at = calloc((size_t)r->nb, sizeof *grads_at);
  int64_t *flags_at = calloc((size_t)r->nb, sizeof *flags_at);
  int rc = (grads_at && flags_at) ? 0 : la_failn("Reducer: out of memory");
  for (int k = 0; rc == 0 && k < r->nb; k++) {
    la_bucket *b = &r->b[k];
    flags_at[k] = b->numel;
    b->numel += b->n_params;
    r->st.bytes_per_step += b->numel * (int64_t)sizeof(float);
    if (!(b->buf = la_empty(LA_FLOAT32, 1, &b->numel))) rc = -1;
  }
  for (int i = r->n - 1; rc == 0 && i >= 0; i--) {
    la_rparam *p = &r->p[i];
    int k = p->bucket;
    int64_t numel = la_numel(p->t);
    la_tensor *flat = la_narrow(r->b[k].buf, 0, grads_at[k], numel);
    p->slice = flat ? la_view(flat, p->t->ndim, p->t->shape) : NULL;
    la_release(flat);
    if (!p->slice) rc = -1;
    p->flag = flags_at[k]++;
    grads_at[k] += numel;
  }
  free(grads_at);
  free(flags_at);
  return rc;
}

/* Every rank must have laid out the same buckets: compares the counts and a
** hash of the shapes, all ranks failing alike. */
static int la_check_layout(la_reducer *r) {
  uint64_t h = 1469598103934665603ULL;
  for (int i = 0; i < r->n; i++) {
    la_tensor *t = r->p[i].t;
    h = (h ^ (uint64_t)t->ndim) * 1099511628211ULL;
    for (int d = 0; d < t->ndim; d++) h = (h ^ (uint64_t)t->shape[d]) * 1099511628211ULL;
  }
  int64_t mine[3] = {r->n, r->st.bytes_per_step, (int64_t)(h >> 2)};
  int64_t v[6];
  for (int i = 0; i < 3; i++) v[i] = mine[i], v[3 + i] = -mine[i];
  if (la_dist_allreduce("Reducer", v, 6, LA_DIST_I64, LA_DIST_MAX) < 0) return -1;
  for (int i = 0; i < 3; i++)
    if (v[i] != -v[3 + i])
      return la_failn("Reducer on rank %d of %d: the ranks' parameter lists differ (this rank: %d "
                      "parameters, %lld bytes of gradients; every rank must pass the same model's "
                      "parameters in the same order)", la_dist_rank(), la_dist_size(), r->n,
                      (long long)(r->st.bytes_per_step - r->n * (int64_t)sizeof(float)));
  return 0;
}

la_reducer *la_reducer_new(la_tensor *const *params, int n, int64_t bucket_bytes, la_dist_op how) {
  if (n < 1) return la_fail("Reducer: no parameters given");
  if (bucket_bytes < (int64_t)sizeof(float))
    return la_fail("Reducer: bucket size %lld bytes is too small", (long long)bucket_bytes);
  if (how != LA_DIST_SUM && how != LA_DIST_MEAN)
    return la_fail("Reducer: gradients are combined by 'sum' or 'mean', not '%s'", la_dist_op_name(how));
  la_reducer *r = calloc(1, sizeof *r);
  if (!r) return la_fail("Reducer: out of memory");
  r->how = how;
  r->hcap = 16;
  while (r->hcap < 2 * n) r->hcap *= 2;
  r->p = calloc((size_t)n, sizeof *r->p);
  r->hkey = calloc((size_t)r->hcap, sizeof *r->hkey);
  r->hval = calloc((size_t)r->hcap, sizeof *r->hval);
  int rc = (r->p && r->hkey && r->hval) ? 0 : la_failn("Reducer: out of memory");
  for (int i = 0; rc == 0 && i < n; i++) {
    if ((rc = la_check_param(params[i], i)) < 0) break;
    r->p[i].t = la_retain(params[i]);
    r->n = i + 1;
    rc = la_insert(r, i);
  }
  if (rc == 0) rc = la_layout(r, bucket_bytes / (int64_t)sizeof(float));
  if (rc == 0) rc = la_make_buffers(r);
  if (rc == 0) rc = la_check_layout(r);
  if (rc < 0) {
    la_reducer_free(r);
    return NULL;
  }
  r->st.n_params = r->n;
  r->st.n_buckets = r->nb;
  r->st.bucket_bytes = bucket_bytes;
  return r;
}

void la_reducer_free(la_reducer *r) {
  if (!r) return;
  for (int i = 0; i < r->n; i++) {
    la_release(r->p[i].slice);
    la_release(r->p[i].t);
  }
  for (int k = 0; r->b && k < r->nb; k++) {
    /* A transfer still under way belongs to a broken reducer, whose job is
    ** ending: the other ranks may never finish it, so it is not waited for. */
    if (r->b[k].req && !r->broken) la_dist_wait(r->b[k].req);
    la_release(r->b[k].buf);
  }
  free(r->b);
  free(r->p);
  free(r->hkey);
  free(r->hval);
  free(r);
}

la_reducer_stats la_reducer_get_stats(const la_reducer *r) { return r->st; }

/* ---------------------------------------------------------------- a pass */

static void la_reset(la_reducer *r) {
  for (int i = 0; i < r->n; i++) r->p[i].ready = false;
  for (int k = 0; k < r->nb; k++) {
    r->b[k].pending = r->b[k].n_params;
    r->b[k].req = NULL;
    r->b[k].done = false;
  }
  r->next = 0;
}

/* Copies parameter i's gradient (or zeros) into its bucket. */
static int la_fill(la_reducer *r, int i) {
  la_rparam *p = &r->p[i];
  if (p->ready) return la_failn("Reducer: parameter %d was reported twice in one pass", i + 1);
  p->ready = true;
  la_bucket *b = &r->b[p->bucket];
  float *flag = la_fdata(b->buf) + p->flag;
  int rc;
  if (p->t->grad) {
    rc = la_copy_(p->slice, p->t->grad);
    *flag = 1.0f;
  } else {
    rc = la_fill_(p->slice, 0.0);
    *flag = 0.0f;
  }
  b->pending--;
  return rc;
}

/* Starts, in order, every bucket that is complete and whose predecessors
** have started; then lets the transfers under way move on. */
static int la_launch_ready(la_reducer *r) {
  while (r->next < r->nb && r->b[r->next].pending == 0) {
    la_bucket *b = &r->b[r->next];
    if (la_dist_isum("gradient all_reduce", la_fdata(b->buf), b->numel, &b->req) < 0) return -1;
    if (r->in_pass) r->st.launched_early++;
    r->next++;
  }
  for (int k = 0; k < r->next; k++) {
    la_bucket *b = &r->b[k];
    if (!b->done && la_dist_test(b->req, &b->done) < 0) return -1;
  }
  return 0;
}

/* The engine's report that leaf's gradient is final. */
static int la_on_ready(void *ctx, la_tensor *leaf) {
  la_reducer *r = ctx;
  int i = la_lookup(r, leaf);
  if (i < 0) return 0;          /* a leaf that is not one of the parameters */
  double t0 = la_now();
  int rc = la_fill(r, i);
  if (rc == 0) rc = la_launch_ready(r);
  r->st.hook_s += la_now() - t0;
  return rc;
}

/* Copies parameter i's sum back into its gradient (a mean: divided by the
** number of ranks), when some rank had one. */
static int la_unpack(la_reducer *r, int i, float scale) {
  la_rparam *p = &r->p[i];
  if (la_fdata(r->b[p->bucket].buf)[p->flag] == 0.0f) return 0;
  if (p->t->grad) {
    if (la_copy_(p->t->grad, p->slice) < 0) return -1;
  } else if (!(p->t->grad = la_clone(p->slice))) {
    return -1;
  }
  if (scale != 1.0f) return la_binary_scalar_(LA_MUL, p->t->grad, scale);
  return 0;
}

/* Starts what is left, waits for every bucket and writes the sums back. */
static int la_complete(la_reducer *r) {
  int rc = 0;
  for (int i = r->n - 1; rc == 0 && i >= 0; i--)
    if (!r->p[i].ready) rc = la_fill(r, i);
  if (rc == 0) rc = la_launch_ready(r);
  double t0 = la_now();
  for (int k = 0; k < r->nb; k++) {
    if (!r->b[k].req) continue;
    int w = la_dist_wait(r->b[k].req);
    r->b[k].req = NULL;
    if (rc == 0) rc = w;
  }
  r->st.wait_s += la_now() - t0;
  float scale = r->how == LA_DIST_MEAN ? 1.0f / (float)la_dist_size() : 1.0f;
  for (int i = 0; rc == 0 && i < r->n; i++) rc = la_unpack(r, i, scale);
  if (rc < 0) r->broken = true;
  r->st.steps++;
  return rc;
}

static int la_check_usable(const la_reducer *r, const char *what) {
  if (r->broken)
    return la_failn("Reducer:%s an earlier exchange of gradients failed on this rank, so the ranks "
                    "are out of step; the job cannot go on", what);
  return 0;
}

int la_reducer_backward(la_reducer *r, la_tensor *root, la_tensor *grad) {
  if (la_check_usable(r, "backward:") < 0) return -1;
  la_reset(r);
  r->in_pass = true;
  double t0 = la_now();
  int rc = la_backward_hooked(root, grad, false, la_on_ready, r);
  r->st.pass_s += la_now() - t0;
  r->in_pass = false;
  if (rc < 0) {
    r->broken = r->next > 0;
    return -1;
  }
  return la_complete(r);
}

int la_reducer_sync(la_reducer *r) {
  if (la_check_usable(r, "sync:") < 0) return -1;
  la_reset(r);
  return la_complete(r);
}
