/*
** la_nn.h -- fused kernels for neural networks: linear layers, norms,
** dropout, attention, cross-entropy, optimizer steps and token sampling.
** Each differentiable kernel records its own node, with forward and backward
** next to each other in its source file.
*/
#ifndef LA_NN_H
#define LA_NN_H

#include "la.h"

/* ---------------------------------------------------------------- la_nn.c */

/* y = x W^T + b for x (..., in), W (out, in), b (out) or NULL. */
la_tensor *la_linear(la_tensor *x, la_tensor *w, la_tensor *b);
/* Normalise over the last dim; w and b (C) may be NULL. */
la_tensor *la_layer_norm(la_tensor *x, la_tensor *w, la_tensor *b, double eps);
la_tensor *la_rms_norm(la_tensor *x, la_tensor *w, double eps);
/* Zeroes each element with probability p and scales the rest by 1/(1-p). */
la_tensor *la_dropout(la_tensor *x, double p);

/* ---------------------------------------------------------------- la_attention.c */

typedef struct la_attn_opts {
  bool causal;
  int64_t causal_offset;   /* query i sits at key position i + offset (KV cache) */
  double scale;            /* 0: 1/sqrt(head_dim) */
  la_tensor *key_mask;     /* (B, S): zero/false keys are never attended; or NULL */
  la_tensor *segments;     /* (B, S) integer ids: attend only within a segment (packing); or NULL */
} la_attn_opts;

/* softmax(q k^T * scale + masks) v for q (B, H, T, D), k and v (B, H, S, D),
** any strides with unit stride along D.  Returns (B, H, T, D) (a view of a
** (B, T, H, D) buffer, so transposing back to (B, T, H*D) is free). */
la_tensor *la_attention(la_tensor *q, la_tensor *k, la_tensor *v, const la_attn_opts *o);
/* The same from a fused projection qkv (B, T, 3*H*D); returns (B, T, H*D).
** Its gradient is written straight into one (B, T, 3*H*D) buffer. */
la_tensor *la_attention_qkv(la_tensor *qkv, int n_head, const la_attn_opts *o);

/* ---------------------------------------------------------------- la_loss.c */

/* Mean over counted rows of -log softmax(logits)[target] for logits (N, V)
** and 0-based targets (N,); rows whose target is ignore_index do not count.
** label_smoothing in [0, 1).  *count (may be NULL) receives the counted rows. */
la_tensor *la_cross_entropy(la_tensor *logits, la_tensor *targets, int64_t ignore_index,
                            double label_smoothing, int64_t *count);

/* ---------------------------------------------------------------- la_optim.c */

typedef struct la_adamw_opts {
  double lr, beta1, beta2, eps;
  int64_t step;            /* 1-based step, for bias correction */
} la_adamw_opts;

/* One AdamW step over n parameters, in place: m, v are the moment buffers,
** wd[i] each parameter's decoupled weight decay.  Skips params without grad. */
int la_adamw_step(la_tensor **params, la_tensor **m, la_tensor **v, const double *wd, int n,
                  const la_adamw_opts *o);
/* SGD with momentum (buf may be NULL entries when momentum is 0). */
int la_sgd_step(la_tensor **params, la_tensor **buf, const double *wd, int n, double lr,
                double momentum, double dampening, bool nesterov);
/* Global L2 norm of the gradients into *norm (before clipping; NaN or Inf
** if a gradient is not finite); scales them so it is at most max_norm when
** max_norm > 0 and the norm is finite. */
int la_clip_grad_norm(la_tensor **params, int n, double max_norm, double *norm);

/* ---------------------------------------------------------------- la_sample.c */

typedef struct la_sample_opts {
  double temperature;      /* 0: greedy */
  int64_t top_k;           /* 0: off */
  double top_p;            /* 1: off */
} la_sample_opts;

/* One token per row of logits (B, V); writes ids (int64) and, if logprobs is
** not NULL, the log-probability of each chosen token under the softmax of
** logits / temperature before top-k/top-p truncation (temperature 1 when
** greedy) -- the policy PPO later evaluates -- as float32. */
int la_sample(la_tensor *logits, const la_sample_opts *o, la_tensor *ids, la_tensor *logprobs);

#endif
