/*
** la.h -- the lualign engine core: tensors, kernels and reverse-mode autograd.
**
** This header and the la_*.c files are plain C99 with no Lua dependency; the
** Lua binding lives in lua_*.c.  Conventions used throughout:
**
**  - Every function that can fail returns NULL (or -1) and leaves a message in
**    la_error(); the message names the op and the shapes or values involved.
**    Nothing here aborts, exits or prints.
**  - Dimensions are 0-based inside the engine.  The binding converts Lua's
**    1-based positions (and negative "from the end" positions) at the border.
**  - Tensors are reference counted.  A function returning a la_tensor* hands
**    the caller one reference; arguments are borrowed.
*/
#ifndef LA_H
#define LA_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#define LA_MAX_DIM 8

/* ---------------------------------------------------------------- dtypes */

typedef struct la_tensor la_tensor;

typedef enum la_dtype {
  LA_FLOAT32 = 0,
  LA_INT32,
  LA_INT64,
  LA_BOOL,      /* one byte per element, 0 or 1 */
  /* 16-bit floats are storage types: frozen weights kept in half the memory.
  ** Views, copies and conversions take them, and so do the products that
  ** read a weight (la_gemm's b, linear, lora_linear, the hidden-state
  ** log-prob kernels, index_select for embeddings), which convert a block
  ** at a time to float32 and compute in float32.  Every other op refuses
  ** them with an error naming the op and the dtype (la_check_compute). */
  LA_BFLOAT16,
  LA_FLOAT16,
  LA_NDTYPE
} la_dtype;

size_t la_dtype_size(la_dtype dt);
const char *la_dtype_name(la_dtype dt);
int la_dtype_from_name(const char *name, la_dtype *out);   /* 0 ok, -1 unknown */
bool la_dtype_is_float(la_dtype dt);   /* float32 or a 16-bit float */
bool la_dtype_is_half(la_dtype dt);   /* bfloat16 or float16 */
/* -1 with "op: <dtype> tensors are storage only ..." when t is a 16-bit float. */
int la_check_compute(const char *op, const la_tensor *t);

/* Float to integer conversion: truncation toward zero as in C and PyTorch,
** but saturating out-of-range values and mapping NaN to 0, where a bare C
** cast would be undefined behaviour. */
static inline int32_t la_to_i32(double v) {
  if (!(v == v)) return 0;
  if (v >= 2147483647.0) return INT32_MAX;
  if (v <= -2147483648.0) return INT32_MIN;
  return (int32_t)v;
}
static inline int64_t la_to_i64(double v) {
  if (!(v == v)) return 0;
  if (v >= 9223372036854775807.0) return INT64_MAX;
  if (v <= -9223372036854775808.0) return INT64_MIN;
  return (int64_t)v;
}

/* ---------------------------------------------------------------- 16-bit floats (la_half.c) */

/* IEEE half (F16) and bfloat16 (BF16) to and from float32.  Narrowing rounds
** to nearest even; NaN stays NaN; out-of-range values become infinities. */
float la_f16_to_f32(uint16_t h);
float la_bf16_to_f32(uint16_t b);
uint16_t la_f32_to_f16(float f);
uint16_t la_f32_to_bf16(float f);
/* The same over n values; bf16 picks the format. */
void la_f32_to_half_n(const float *src, uint16_t *dst, size_t n, bool bf16);
void la_half_to_f32_n(const uint16_t *src, float *dst, size_t n, bool bf16);
/* Rows [r0, r1) x columns [c0, c1) of a row-major 16-bit matrix with ld
** elements per row, widened into a dense float32 block (r1 - r0, c1 - c0). */
void la_half_block_to_f32(const uint16_t *src, int64_t ld, int64_t r0, int64_t r1, int64_t c0,
                          int64_t c1, float *dst, bool bf16);

/* One element of any dtype at p, as a double, and back (the general path of
** element access, copies and the non-float32 kernels). */
static inline double la_load_elem(la_dtype dt, const void *p) {
  switch (dt) {
    case LA_FLOAT32: return *(const float *)p;
    case LA_INT32: return *(const int32_t *)p;
    case LA_INT64: return (double)*(const int64_t *)p;
    case LA_BOOL: return *(const uint8_t *)p;
    case LA_BFLOAT16: return la_bf16_to_f32(*(const uint16_t *)p);
    case LA_FLOAT16: return la_f16_to_f32(*(const uint16_t *)p);
    default: return 0;
  }
}

static inline void la_store_elem(la_dtype dt, void *p, double v) {
  switch (dt) {
    case LA_FLOAT32: *(float *)p = (float)v; break;
    case LA_INT32: *(int32_t *)p = la_to_i32(v); break;
    case LA_INT64: *(int64_t *)p = la_to_i64(v); break;
    case LA_BOOL: *(uint8_t *)p = v != 0; break;
    case LA_BFLOAT16: *(uint16_t *)p = la_f32_to_bf16((float)v); break;
    case LA_FLOAT16: *(uint16_t *)p = la_f32_to_f16((float)v); break;
    default: break;
  }
}

/* ---------------------------------------------------------------- errors */

/* The last error message of this thread (empty when none). */
const char *la_error(void);
/* Record an error; always returns NULL so callers can 'return la_fail(...)'. */
void *la_fail(const char *fmt, ...);
/* Same, returning -1. */
int la_failn(const char *fmt, ...);
/* Prefix the current error with "op: " context (used by backward passes). */
void la_error_prefix(const char *fmt, ...);

/* Formats a shape as "(2, 3)" into buf; returns buf. */
char *la_shape_str(char *buf, size_t n, int ndim, const int64_t *shape);
#define LA_SHAPE_BUF 128

/* ---------------------------------------------------------------- memory */

typedef struct la_storage {
  int refcount;
  unsigned version;       /* bumped by every in-place write */
  size_t nbytes;
  void *data;
  /* Non-NULL for storages whose bytes belong to someone else (an mmap'd
  ** file, say): called instead of free() when the last reference goes. */
  void (*release)(void *ctx, void *data, size_t nbytes);
  void *release_ctx;
} la_storage;

typedef struct la_memstats {
  size_t live_bytes;      /* bytes of tensor storage alive now */
  size_t peak_bytes;      /* highest live_bytes seen since the last reset */
  size_t limit_bytes;     /* 0: no limit */
  uint64_t allocations;   /* storages allocated so far */
  uint64_t oom_retries;   /* allocations that needed the out-of-memory handler */
  size_t cached_bytes;    /* freed blocks kept for reuse (not live) */
} la_memstats;

/* Called when an allocation fails (or would pass the limit), before one
** retry.  The Lua binding runs a full garbage collection here. */
typedef void (*la_oom_handler)(void *ctx);
void la_set_oom_handler(la_oom_handler fn, void *ctx);
void la_set_memory_limit(size_t bytes);
la_memstats la_memory_stats(void);
void la_reset_peak(void);
void la_empty_cache(void);   /* returns cached free blocks to the system */

la_storage *la_storage_new(size_t nbytes);          /* contents undefined */
la_storage *la_storage_wrap(void *data, size_t nbytes,
                            void (*release)(void *, void *, size_t), void *ctx);
void la_storage_retain(la_storage *s);
void la_storage_release(la_storage *s);

/* ---------------------------------------------------------------- tensors */

typedef struct la_node la_node;

struct la_tensor {
  int refcount;
  la_dtype dtype;
  int ndim;
  int64_t shape[LA_MAX_DIM];
  int64_t stride[LA_MAX_DIM];   /* in elements; 0 for expanded dims */
  int64_t offset;               /* in elements, into storage */
  la_storage *storage;
  /* autograd */
  bool requires_grad;           /* leaves only: accumulate into grad */
  struct la_tensor *grad;       /* accumulated gradient of a leaf */
  la_node *grad_fn;             /* the op that produced it (NULL for leaves) */
  /* scratch state of a hooked backward pass (la_backward_hooked) */
  int grad_pending;             /* edges of the pass still to deliver to this leaf */
  unsigned grad_visit;
};

la_tensor *la_retain(la_tensor *t);
void la_release(la_tensor *t);
static inline void la_release_p(la_tensor **t) { if (*t) { la_release(*t); *t = NULL; } }

int64_t la_numel(const la_tensor *t);
bool la_is_contiguous(const la_tensor *t);
static inline void *la_data(const la_tensor *t) {
  return (char *)t->storage->data + (size_t)t->offset * la_dtype_size(t->dtype);
}
static inline float *la_fdata(const la_tensor *t) { return (float *)la_data(t); }
bool la_same_shape(const la_tensor *a, const la_tensor *b);
bool la_tracks_grad(const la_tensor *t);   /* requires_grad leaf or has grad_fn */

/* Shape checks shared by the binding and the ops. */
int la_check_shape(const char *op, int ndim, const int64_t *shape);
int la_norm_dim(const char *op, int dim, int ndim);   /* -1 on error */

/* Creation.  Contents of la_empty are undefined. */
la_tensor *la_empty(la_dtype dt, int ndim, const int64_t *shape);
la_tensor *la_full(la_dtype dt, int ndim, const int64_t *shape, double value);
la_tensor *la_arange(la_dtype dt, double start, double stop, double step);
la_tensor *la_rand(int ndim, const int64_t *shape);             /* U[0, 1) */
la_tensor *la_randn(int ndim, const int64_t *shape);            /* N(0, 1) */
la_tensor *la_randint(la_dtype dt, int64_t low, int64_t high, int ndim, const int64_t *shape);
la_tensor *la_scalar(la_dtype dt, double v);                     /* 0-d tensor */
/* A new header over the same storage, with no autograd history. */
la_tensor *la_alias(const la_tensor *t);

/* Element access (any dtype, converted through double). */
double la_get(const la_tensor *t, const int64_t *index);
void la_set(la_tensor *t, const int64_t *index, double v);
double la_item(const la_tensor *t);   /* requires numel == 1; check first */

/* ---------------------------------------------------------------- RNG */

void la_manual_seed(uint64_t seed);
/* The generator's whole state, for checkpoints that resume bit for bit. */
typedef struct la_rng_state {
  uint64_t s[4];
  bool have_spare;
  double spare;
} la_rng_state;
la_rng_state la_get_rng_state(void);
void la_set_rng_state(const la_rng_state *st);
uint64_t la_rng_next(void);          /* 64 random bits */
double la_rng_uniform(void);         /* [0, 1) with 53 bits */
double la_rng_normal(void);

/* ---------------------------------------------------------------- threads */

void la_set_num_threads(int n);
int la_get_num_threads(void);
/* Below this many elements a kernel runs on one thread. */
#define LA_PARALLEL_GRAIN 32768

/* Calls fn(ctx, lo, hi) on ranges covering [0, n): one contiguous range per
** thread when 'parallel' is true and there is more than one thread, else
** fn(ctx, 0, n) on the calling thread.  Kernels use this rather than
** "#pragma omp parallel for if (...)": an OpenMP region entered with a false
** if-clause still goes through libgomp's team start, which costs about 3 us
** once a pool of threads exists (futex calls to dock the idle threads), more
** than the whole of a small op. */
typedef void (*la_range_fn)(void *ctx, int64_t lo, int64_t hi);
void la_parallel_range(int64_t n, bool parallel, la_range_fn fn, void *ctx);

/* ---------------------------------------------------------------- views */
/* All views share storage with their input and are differentiable. */

la_tensor *la_view(la_tensor *t, int ndim, const int64_t *shape);    /* one -1 allowed */
la_tensor *la_reshape(la_tensor *t, int ndim, const int64_t *shape); /* copies if needed */
la_tensor *la_transpose(la_tensor *t, int d0, int d1);
la_tensor *la_permute(la_tensor *t, const int *perm);
la_tensor *la_narrow(la_tensor *t, int dim, int64_t start, int64_t length);
la_tensor *la_select(la_tensor *t, int dim, int64_t index);
la_tensor *la_expand(la_tensor *t, int ndim, const int64_t *shape);  /* -1 keeps */
la_tensor *la_squeeze(la_tensor *t, int dim);    /* dim < 0: all size-1 dims */
la_tensor *la_unsqueeze(la_tensor *t, int dim);
la_tensor *la_flatten(la_tensor *t, int start, int end);

/* ---------------------------------------------------------------- copies */

la_tensor *la_contiguous(la_tensor *t);          /* t itself (retained) if already */
la_tensor *la_clone(la_tensor *t);
la_tensor *la_to_dtype(la_tensor *t, la_dtype dt);   /* t itself if same dtype */
la_tensor *la_detach(la_tensor *t);
int la_copy_(la_tensor *dst, la_tensor *src);    /* broadcasts src, converts dtype */
int la_fill_(la_tensor *t, double v);
la_tensor *la_cat(la_tensor **ts, int n, int dim);
la_tensor *la_stack(la_tensor **ts, int n, int dim);
la_tensor *la_index_select(la_tensor *t, int dim, la_tensor *index);
la_tensor *la_gather(la_tensor *t, int dim, la_tensor *index);
/* Adds src into dst along dim at index (used by backward passes). */
int la_index_add_(la_tensor *dst, int dim, la_tensor *index, la_tensor *src);
int la_scatter_add_(la_tensor *dst, int dim, la_tensor *index, la_tensor *src);
/* Checks that a tensor may be written in place (autograd rules). */
int la_check_inplace(const char *op, la_tensor *t);

/* ---------------------------------------------------------------- pointwise */

typedef enum la_unary_op {
  LA_NEG, LA_EXP, LA_LOG, LA_SQRT, LA_TANH, LA_SIGMOID, LA_RELU,
  LA_GELU, LA_GELU_EXACT, LA_SILU, LA_ABS, LA_SIN, LA_COS, LA_RSQRT,
  LA_SQUARE, LA_LOG1P, LA_EXPM1, LA_SOFTPLUS, LA_LOGSIGMOID,
  LA_NUNARY
} la_unary_op;

typedef enum la_binary_op {
  LA_ADD, LA_SUB, LA_MUL, LA_DIV, LA_POW, LA_MAXIMUM, LA_MINIMUM,
  LA_FLOORDIV, LA_MOD,                                 /* no gradient */
  LA_EQ, LA_NE, LA_LT, LA_LE, LA_GT, LA_GE,            /* bool result, no gradient */
  LA_NBINARY
} la_binary_op;

const char *la_unary_name(la_unary_op op);
const char *la_binary_name(la_binary_op op);

la_tensor *la_unary(la_unary_op op, la_tensor *a);
la_tensor *la_binary(la_binary_op op, la_tensor *a, la_tensor *b);
/* b is a number: the result dtype follows a (ints stay ints for integral b). */
la_tensor *la_binary_scalar(la_binary_op op, la_tensor *a, double b, bool scalar_first);
la_tensor *la_clamp(la_tensor *a, double lo, double hi);        /* use +-INFINITY */
la_tensor *la_where(la_tensor *cond, la_tensor *a, la_tensor *b);
/* In place: dst = dst op src (broadcast src).  No autograd; see la_check_inplace. */
int la_binary_(la_binary_op op, la_tensor *dst, la_tensor *src);
int la_binary_scalar_(la_binary_op op, la_tensor *dst, double s);
/* dst += alpha * src, in place, same shapes after broadcasting src. */
int la_axpy_(la_tensor *dst, double alpha, la_tensor *src);
/* Output shape of NumPy broadcasting; -1 with an error naming op on mismatch. */
int la_broadcast_shape(const char *op, const la_tensor *a, const la_tensor *b,
                       int *ndim, int64_t *shape);

/* ---------------------------------------------------------------- reductions */

la_tensor *la_sum(la_tensor *t, int dim, bool keepdim);        /* dim < 0: all */
la_tensor *la_mean(la_tensor *t, int dim, bool keepdim);
la_tensor *la_max(la_tensor *t, int dim, bool keepdim, la_tensor **indices);
la_tensor *la_min(la_tensor *t, int dim, bool keepdim, la_tensor **indices);
la_tensor *la_logsumexp(la_tensor *t, int dim, bool keepdim);
la_tensor *la_softmax(la_tensor *t, int dim);
la_tensor *la_log_softmax(la_tensor *t, int dim);
/* Sums t down to a shape it was broadcast from. */
la_tensor *la_sum_to(la_tensor *t, int ndim, const int64_t *shape);

/* ---------------------------------------------------------------- matmul */

la_tensor *la_matmul(la_tensor *a, la_tensor *b);
/* C = alpha * op(A) op(B) + beta * C for 2-D float32 views (strides allowed
** where BLAS can express them; others are copied).  Threads split rows or
** columns; BLAS itself always runs on the calling thread. */
int la_gemm(bool ta, bool tb, float alpha, la_tensor *a, la_tensor *b, float beta, la_tensor *c);

/* ---------------------------------------------------------------- autograd */

/* A backward function receives the gradient of the node's output and fills
** gin[i] (new references, or NULL for "no gradient") for each input i where
** LA_NEEDS_GRAD(n, i).  Returns 0, or -1 with an error. */
typedef int (*la_backward_fn)(la_node *n, la_tensor *gout, la_tensor **gin);

/* Where the gradient of one input goes: into the node that produced it, or
** into the .grad of a leaf.  Edges hold nodes rather than input tensors so an
** input's storage can be freed as soon as nothing but the graph refers to it;
** its shape is kept to check and reduce gradients. */
typedef struct la_edge {
  la_node *fn;               /* producer of a non-leaf input */
  la_tensor *leaf;           /* a leaf input with requires_grad */
  la_dtype dtype;
  int ndim;
  int64_t shape[LA_MAX_DIM];
} la_edge;

#define LA_NEEDS_GRAD(n, i) ((n)->in[i].fn != NULL || (n)->in[i].leaf != NULL)

struct la_node {
  int refcount;
  const char *op;            /* "mul", "matmul", ... for messages and printing */
  la_backward_fn backward;
  int n_in;
  la_edge *in;
  int n_saved;
  la_tensor **saved;         /* values the backward pass needs (detached aliases) */
  unsigned *saved_version;   /* their storage versions when saved */
  int64_t iarg[2 * LA_MAX_DIM + 4];   /* op parameters: dims, shapes, flags */
  double farg[4];
  int64_t *xarg;             /* extra integer parameters (cat sizes), owned */
  int out_ndim;              /* shape of the output, to check incoming gradients */
  int64_t out_shape[LA_MAX_DIM];
  void *ctx;                 /* state of a backward supplied from outside the engine */
  void (*ctx_free)(void *ctx);   /* called on ctx when the node is freed */
  uint64_t serial;           /* creation order (see la_begin_recompute) */
  bool released;             /* saved values already freed by a backward() */
  bool last_use;             /* set while its backward runs on a graph not retained */
  /* scratch state of the backward engine */
  la_tensor *grad_acc;
  int pending;
  unsigned visit;
  la_node *link;             /* worklist link while freeing */
};

bool la_is_grad_enabled(void);
bool la_set_grad_enabled(bool on);    /* returns the previous setting */

/* Whether an op on these inputs must record a node. */
bool la_needs_record(int n, la_tensor *const *inputs);
/* Makes a node for an op with n_in inputs and room for n_saved tensors.
** Returns NULL on no memory. */
la_node *la_node_new(const char *op, la_backward_fn fn, int n_in, la_tensor *const *in,
                     int n_saved);
/* Saves t for the backward pass as a detached alias (so a node never keeps
** its own output's history alive), remembering its storage version. */
int la_node_save(la_node *n, int slot, la_tensor *t);
/* Whether n's backward may overwrite saved value i (see la_autograd.c). */
bool la_node_saved_is_free(const la_node *n, int i);
/* out->grad_fn = n, taking over the caller's reference to n. */
void la_node_attach(la_node *n, la_tensor *out);
void la_node_release(la_node *n);
/* Records node(op) over inputs for out when autograd needs it; on failure
** releases out and returns NULL.  Saves are made by the caller afterwards
** through *node (NULL when nothing was recorded). */
la_tensor *la_record(la_tensor *out, const char *op, la_backward_fn fn, int n_in,
                     la_tensor *const *in, int n_saved, la_node **node);

/* Anomaly detection (la_anomaly.c).  When on, la_record checks the float
** output of every op that records a node (views excepted) and backward()
** checks every gradient a node gives its inputs: the first NaN or inf is an
** error naming the op, what was found and the shapes. */
bool la_is_anomaly_enabled(void);
bool la_set_anomaly_enabled(bool on);   /* returns the previous setting */
int la_anomaly_check_forward(const char *op, la_tensor *out, int n_in, la_tensor *const *in);
int la_anomaly_check_backward(const char *op, int input, int n_in, la_tensor *g, const la_tensor *gout);
/* Whether every element is finite (always true for non-float dtypes), and
** how many are NaN and how many +-inf.  Any strides. */
bool la_all_finite(const la_tensor *t);
void la_count_nonfinite(const la_tensor *t, int64_t *nan, int64_t *inf);

/* Recomputation inside a backward pass (activation checkpointing): between
** la_begin_recompute and la_end_recompute, an op whose input was produced by
** a node made before the recomputation began fails, naming the op: such a
** tensor would route gradients into the outer graph while it is being walked.
** la_begin_recompute returns the setting to restore. */
uint64_t la_begin_recompute(void);
void la_end_recompute(uint64_t previous);

/* Runs the backward pass from root.  grad may be NULL for a one-element root.
** A backward function may run another backward pass on a graph of its own
** (a checkpointed block recomputed). */
int la_backward(la_tensor *root, la_tensor *grad, bool retain_graph);
/* A leaf's gradient is final: no node still to run in this pass can add to
** leaf->grad (which is NULL when nothing in the pass gave it one).  Returns 0,
** or -1 with an error, which stops the pass. */
typedef int (*la_grad_ready_fn)(void *ctx, la_tensor *leaf);
/* la_backward that calls ready(ctx, leaf) once for every leaf requiring grad
** in the graph, as soon as its gradient is final -- while the nodes nearer
** the inputs still run -- so that work on finished gradients (sending them to
** other processes, say) overlaps the rest of the pass. */
int la_backward_hooked(la_tensor *root, la_tensor *grad, bool retain_graph,
                       la_grad_ready_fn ready, void *ctx);
/* Adds g into t->grad (t a leaf); takes no reference from g. */
int la_accumulate_grad(la_tensor *t, la_tensor *g);

#endif
