/*
** la_autograd.c -- the graph recorded by differentiable ops, and the reverse
** pass that walks it.
**
** Every op that sees an input tracking gradients makes a node: the op's name,
** its backward function, one edge per input (to the input's producer node, or
** to the input itself when it is a leaf) and the tensors its backward needs.
** backward() orders the nodes reachable from the root topologically (Kahn's
** algorithm over consumer counts), calls each backward function once with the
** summed gradient of the node's output, and routes the input gradients along
** the edges.  Saved tensors and edges are dropped as each node finishes unless
** the graph is retained, so a training step's activations die with the step.
**
** A hooked pass (la_backward_hooked) also tells its caller when each leaf's
** gradient is final.  Collecting the graph counts the edges that end at each
** leaf (in the leaf's grad_pending); routing a gradient along such an edge,
** or finding that the node gives that input none, counts one down, and at
** zero no node still to run can reach the leaf: its .grad is complete for
** this pass.  In Kahn's order the leaves nearest the loss (the last layers'
** weights) finish first, long before the pass ends.
*/
#include <stdlib.h>
#include <string.h>

#include "la.h"

static bool la_grad_on = true;

bool la_is_grad_enabled(void) { return la_grad_on; }

bool la_set_grad_enabled(bool on) {
  bool prev = la_grad_on;
  la_grad_on = on;
  return prev;
}

bool la_needs_record(int n, la_tensor *const *inputs) {
  if (!la_grad_on) return false;
  for (int i = 0; i < n; i++)
    if (inputs[i] && la_tracks_grad(inputs[i])) return true;
  return false;
}

/* ---------------------------------------------------------------- nodes */

/* Serial numbers of nodes, and the first one a recomputation may consume
** (0: no recomputation running). */
static uint64_t la_next_serial = 1, la_recompute_floor;

uint64_t la_begin_recompute(void) {
  uint64_t previous = la_recompute_floor;
  la_recompute_floor = la_next_serial;
  return previous;
}

void la_end_recompute(uint64_t previous) { la_recompute_floor = previous; }

la_node *la_node_new(const char *op, la_backward_fn fn, int n_in, la_tensor *const *in,
                     int n_saved) {
  for (int i = 0; la_recompute_floor && i < n_in; i++)
    if (in[i] && in[i]->grad_fn && in[i]->grad_fn->serial < la_recompute_floor)
      return la_fail("%s: an input carries gradient history from outside the checkpointed "
                     "function; pass such tensors to the function as arguments", op);
  size_t size = sizeof(la_node) + (size_t)n_in * sizeof(la_edge) +
                (size_t)n_saved * (sizeof(la_tensor *) + sizeof(unsigned));
  la_node *n = calloc(1, size);
  if (!n) return la_fail("%s: out of memory recording the autograd graph", op);
  n->refcount = 1;
  n->serial = la_next_serial++;
  n->op = op;
  n->backward = fn;
  n->n_in = n_in;
  n->in = (la_edge *)(n + 1);
  n->n_saved = n_saved;
  n->saved = (la_tensor **)(n->in + n_in);
  n->saved_version = (unsigned *)(n->saved + n_saved);
  for (int i = 0; i < n_in; i++) {
    la_edge *e = &n->in[i];
    la_tensor *t = in[i];
    if (!t) continue;
    e->dtype = t->dtype;
    e->ndim = t->ndim;
    memcpy(e->shape, t->shape, sizeof e->shape);
    if (t->grad_fn) {
      e->fn = t->grad_fn;
      e->fn->refcount++;
    } else if (t->requires_grad) {
      e->leaf = la_retain(t);
    }
  }
  return n;
}

int la_node_save(la_node *n, int slot, la_tensor *t) {
  la_tensor *a = la_alias(t);
  if (!a) return -1;
  n->saved[slot] = a;
  n->saved_version[slot] = t->storage->version;
  return 0;
}

void la_node_attach(la_node *n, la_tensor *out) {
  out->grad_fn = n;
  n->out_ndim = out->ndim;
  memcpy(n->out_shape, out->shape, sizeof n->out_shape);
}

/* Drops what a node holds for the backward pass: saved values and edges. */
static void la_node_free_graph(la_node *n, la_node **work) {
  for (int i = 0; i < n->n_saved; i++) la_release_p(&n->saved[i]);
  for (int i = 0; i < n->n_in; i++) {
    la_edge *e = &n->in[i];
    if (e->fn && --e->fn->refcount == 0) {
      e->fn->link = *work;
      *work = e->fn;
    }
    e->fn = NULL;
    la_release_p(&e->leaf);
  }
  n->released = true;
}

/* Iterative, so that freeing a chain of thousands of ops cannot overflow the
** C stack. */
static void la_node_free_list(la_node *work) {
  while (work) {
    la_node *cur = work;
    work = cur->link;
    la_node_free_graph(cur, &work);
    la_release_p(&cur->grad_acc);
    if (cur->ctx_free) cur->ctx_free(cur->ctx);
    free(cur->xarg);
    free(cur);
  }
}

void la_node_release(la_node *n) {
  if (!n || --n->refcount > 0) return;
  n->link = NULL;
  la_node_free_list(n);
}

la_tensor *la_record(la_tensor *out, const char *op, la_backward_fn fn, int n_in,
                     la_tensor *const *in, int n_saved, la_node **node) {
  *node = NULL;
  if (!out || !la_needs_record(n_in, in)) return out;
  if (la_is_anomaly_enabled() && la_anomaly_check_forward(op, out, n_in, in) < 0) {
    la_release(out);
    return NULL;
  }
  la_node *n = la_node_new(op, fn, n_in, in, n_saved);
  if (!n) { la_release(out); return NULL; }
  la_node_attach(n, out);
  *node = n;
  return out;
}

/* ---------------------------------------------------------------- gradients */

/* A tensor that nobody else can see, so it may be added to in place. */
static bool la_exclusive(const la_tensor *t) {
  return t->refcount == 1 && t->storage->refcount == 1 && la_is_contiguous(t) &&
         t->offset == 0;
}

/* *acc += g, in place when *acc is exclusively ours. */
static int la_add_into(la_tensor **acc, la_tensor *g) {
  if (!*acc) {
    *acc = la_retain(g);
    return 0;
  }
  if (la_exclusive(*acc)) return la_axpy_(*acc, 1.0, g);
  la_tensor *sum = la_binary(LA_ADD, *acc, g);
  if (!sum) return -1;
  la_release(*acc);
  *acc = sum;
  return 0;
}

int la_accumulate_grad(la_tensor *t, la_tensor *g) {
  if (t->grad) return la_axpy_(t->grad, 1.0, g);
  if (la_exclusive(g)) {
    t->grad = la_retain(g);
    return 0;
  }
  /* A fresh copy, so that .grad never aliases another tensor's storage. */
  la_tensor *c = la_clone(g);
  if (!c) return -1;
  t->grad = c;
  return 0;
}

/* ---------------------------------------------------------------- backward */

typedef struct la_nodelist {
  la_node **v;
  size_t n, cap;
} la_nodelist;

static int la_list_push(la_nodelist *l, la_node *n) {
  if (l->n == l->cap) {
    size_t cap = l->cap ? 2 * l->cap : 64;
    la_node **v = realloc(l->v, cap * sizeof *v);
    if (!v) return la_failn("backward: out of memory ordering the graph");
    l->v = v;
    l->cap = cap;
  }
  l->v[l->n++] = n;
  return 0;
}

static unsigned la_visit_mark;

/* A pass's settings: whether the graph is kept, and the hook told when a
** leaf's gradient is final (NULL for none). */
typedef struct la_pass {
  bool retain;
  la_grad_ready_fn ready;
  void *ctx;
} la_pass;

/* Counts one more edge of this pass ending at leaf (a hooked pass only). */
static void la_count_leaf_edge(la_tensor *leaf, unsigned mark) {
  if (leaf->grad_visit != mark) {
    leaf->grad_visit = mark;
    leaf->grad_pending = 0;
  }
  leaf->grad_pending++;
}

/* Finds every node reachable from root, holding a reference to each, and
** counts how many consumers in this graph each node has (and, when
** count_leaves, how many edges end at each leaf). */
static int la_collect(la_node *root, la_nodelist *all, bool count_leaves) {
  la_nodelist stack = {0};
  unsigned mark = ++la_visit_mark;
  int rc = 0;
  root->visit = mark;
  root->pending = 0;
  if (la_list_push(&stack, root) < 0) return -1;
  while (stack.n > 0) {
    la_node *n = stack.v[--stack.n];
    n->refcount++;
    if ((rc = la_list_push(all, n)) < 0) { n->refcount--; break; }
    for (int i = 0; i < n->n_in; i++) {
      if (count_leaves && n->in[i].leaf) la_count_leaf_edge(n->in[i].leaf, mark);
      la_node *m = n->in[i].fn;
      if (!m) continue;
      if (m->visit != mark) {
        m->visit = mark;
        m->pending = 0;
        if ((rc = la_list_push(&stack, m)) < 0) break;
      }
      m->pending++;
    }
    if (rc < 0) break;
  }
  free(stack.v);
  return rc;
}

static int la_check_saved(la_node *n) {
  for (int i = 0; i < n->n_saved; i++) {
    la_tensor *s = n->saved[i];
    if (s && s->storage->version != n->saved_version[i])
      return la_failn("backward: a tensor that '%s' saved for its gradient was modified in "
                      "place afterwards (version %u, saved at %u); clone it before writing "
                      "to it", n->op, s->storage->version, n->saved_version[i]);
  }
  return 0;
}

/* Whether the backward pass of n may write over saved value i: this is the
** graph's last backward, and nothing else (no view, no Lua handle) holds the
** value's storage, so no one can read it again. */
bool la_node_saved_is_free(const la_node *n, int i) {
  const la_tensor *t = n->saved[i];
  return n->last_use && t->refcount == 1 && t->storage->refcount == 1 && !t->storage->release &&
         t->offset == 0 && la_is_contiguous(t);
}

/* Runs one node: its gradients go to the nodes and leaves behind it. */
static int la_run_node(la_node *n, la_nodelist *todo, const la_pass *pass) {
  bool retain = pass->retain;
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF];
  la_tensor *gout = n->grad_acc;
  n->grad_acc = NULL;
  int rc = 0;
  la_tensor *gin_small[4] = {0}, **gin = gin_small;
  if (n->n_in > 4 && !(gin = calloc((size_t)n->n_in, sizeof *gin))) {
    la_release(gout);
    return la_failn("backward: out of memory");
  }
  if (gout) {
    n->last_use = !retain;
    if (n->released) {
      rc = la_failn("backward: the graph through '%s' was already freed by an earlier "
                    "backward(); call the first backward with retain_graph = true to "
                    "run backward twice", n->op);
    } else if ((rc = la_check_saved(n)) == 0 && (rc = n->backward(n, gout, gin)) < 0) {
      la_error_prefix("backward of '%s': ", n->op);
    }
    for (int i = 0; rc == 0 && la_is_anomaly_enabled() && i < n->n_in; i++)
      if (gin[i] && LA_NEEDS_GRAD(n, i)) rc = la_anomaly_check_backward(n->op, i, n->n_in, gin[i], gout);
  }
  for (int i = 0; i < n->n_in; i++) {
    la_edge *e = &n->in[i];
    la_tensor *g = gin[i];
    if (rc == 0 && g && (e->fn || e->leaf)) {
      if (g->ndim != e->ndim || memcmp(g->shape, e->shape, (size_t)e->ndim * sizeof(int64_t)))
        rc = la_failn("backward of '%s': gradient for input %d has shape %s, expected %s",
                      n->op, i + 1, la_shape_str(b1, sizeof b1, g->ndim, g->shape),
                      la_shape_str(b2, sizeof b2, e->ndim, e->shape));
      else if (e->fn) rc = la_add_into(&e->fn->grad_acc, g);
      else rc = la_accumulate_grad(e->leaf, g);
    }
    la_release(g);
    if (pass->ready && e->leaf && --e->leaf->grad_pending == 0 && rc == 0)
      rc = pass->ready(pass->ctx, e->leaf);
    if (e->fn && --e->fn->pending == 0 && rc == 0) rc = la_list_push(todo, e->fn);
  }
  if (gin != gin_small) free(gin);
  la_release(gout);
  if (rc == 0 && !retain && !n->released) {
    la_node *work = NULL;
    la_node_free_graph(n, &work);   /* collection holds a reference: work stays empty */
    la_node_free_list(work);
  }
  return rc;
}

static int la_check_root_grad(la_tensor *root, la_tensor *grad) {
  char b1[LA_SHAPE_BUF], b2[LA_SHAPE_BUF];
  if (grad->dtype != LA_FLOAT32)
    return la_failn("backward: gradient must be float32 (got %s)", la_dtype_name(grad->dtype));
  if (!la_same_shape(root, grad))
    return la_failn("backward: gradient has shape %s but the tensor has shape %s",
                    la_shape_str(b1, sizeof b1, grad->ndim, grad->shape),
                    la_shape_str(b2, sizeof b2, root->ndim, root->shape));
  return 0;
}

int la_backward(la_tensor *root, la_tensor *grad, bool retain) {
  return la_backward_hooked(root, grad, retain, NULL, NULL);
}

int la_backward_hooked(la_tensor *root, la_tensor *grad, bool retain, la_grad_ready_fn ready,
                       void *ctx) {
  char b1[LA_SHAPE_BUF];
  la_pass pass = {retain, ready, ctx};
  if (!la_tracks_grad(root))
    return la_failn("backward: the tensor does not require grad and has no grad_fn (call "
                    ":requires_grad() on the leaves, outside no_grad)");
  la_tensor *g;
  if (grad) {
    if (la_check_root_grad(root, grad) < 0) return -1;
    if (la_is_anomaly_enabled() && !la_all_finite(grad))
      return la_failn("detect_anomaly: the gradient passed to backward() is not finite");
    g = la_retain(grad);
  } else {
    if (la_numel(root) != 1)
      return la_failn("backward: the gradient can be implied only for a one-element tensor; "
                      "this one has shape %s, so pass a gradient of that shape",
                      la_shape_str(b1, sizeof b1, root->ndim, root->shape));
    g = la_full(LA_FLOAT32, root->ndim, root->shape, 1.0);
    if (!g) return -1;
  }
  bool prev = la_set_grad_enabled(false);
  int rc = 0;
  if (!root->grad_fn) {
    rc = la_accumulate_grad(root, g);
    la_release(g);
    la_set_grad_enabled(prev);
    if (rc == 0 && ready) rc = ready(ctx, root);
    return rc;
  }
  la_nodelist all = {0}, todo = {0};
  rc = la_collect(root->grad_fn, &all, ready != NULL);
  if (rc == 0) {
    root->grad_fn->grad_acc = g;
    g = NULL;
    rc = la_list_push(&todo, root->grad_fn);
  }
  while (rc == 0 && todo.n > 0) rc = la_run_node(todo.v[--todo.n], &todo, &pass);
  /* On success every grad_acc was consumed; after an error some remain. */
  la_release(g);
  for (size_t i = 0; i < all.n; i++) {
    la_release_p(&all.v[i]->grad_acc);
    all.v[i]->pending = 0;
  }
  for (size_t i = 0; i < all.n; i++) la_node_release(all.v[i]);
  free(all.v);
  free(todo.v);
  la_set_grad_enabled(prev);
  return rc;
}
