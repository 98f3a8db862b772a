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

/* y = x W^T + b for x (..., in), W (out, in), b (out) or NULL.  W may be a
** frozen bfloat16 or float16 weight (products in float32, see la_gemm). */
la_tensor *la_linear(la_tensor *x, la_tensor *w, la_tensor *b);
/* A linear layer with a LoRA update in one op: x W^T + b + scale (xd A^T) B^T
** for A (r, in), B (out, r), xd the input after the adapter's dropout (or
** NULL: x itself).  Gradients for every input that needs one. */
la_tensor *la_lora_linear(la_tensor *x, la_tensor *w, la_tensor *b, la_tensor *a, la_tensor *bm,
                          double scale, la_tensor *xd);
/* Normalise over the last dim; w and b (C) may be NULL. */
la_tensor *la_layer_norm(la_tensor *x, la_tensor *w, la_tensor *b, double eps);
la_tensor *la_rms_norm(la_tensor *x, la_tensor *w, double eps);
/* Zeroes each element with probability p and scales the rest by 1/(1-p). */
la_tensor *la_dropout(la_tensor *x, double p);
/* silu(gate) * up for two tensors of one shape (the Llama-family MLP). */
la_tensor *la_swiglu(la_tensor *gate, la_tensor *up);
/* swiglu(gate, up) W^T + b (b may be NULL) as one op that keeps gate, up and
** W for its backward pass, not the product (made again there). */
la_tensor *la_swiglu_linear(la_tensor *gate, la_tensor *up, la_tensor *w, la_tensor *b);

/* ---------------------------------------------------------------- la_rope.c */

/* cos and sin of p * inv_freq[i] for positions p < length: a contiguous
** (2, length, half) float32 table, computed in double precision. */
la_tensor *la_rope_table(const double *inv_freq, int64_t half, int64_t length);
/* Rotary position embedding, rotate-half convention, applied in place to x
** (B, T, H, D) (unit stride along D) at positions (B, T) (integers indexing
** the table's rows).  Returns x's storage under a new header that carries the
** gradient (the inverse rotation); x must not be a leaf that requires grad. */
la_tensor *la_rope_(la_tensor *x, la_tensor *positions, la_tensor *table);

/* ---------------------------------------------------------------- la_attention.c */

typedef struct la_attn_opts {
  bool causal;
  int64_t causal_offset;   /* query i sits at key position i + offset (KV cache) */
  double scale;            /* 0: 1/sqrt(head_dim) */
  la_tensor *key_mask;     /* (B, S): zero/false keys are never attended; or NULL */
  la_tensor *segments;     /* (B, S) integer ids: attend only within a segment (packing); or NULL */
  int64_t window;          /* > 0: a sliding window; query i sees only keys j > i + offset - window */
} la_attn_opts;

/* softmax(q k^T * scale + masks) v for q (B, H, T, D), k and v (B, Hkv, S, D)
** with H a multiple of Hkv (grouped-query attention: query head h uses
** key/value head h / (H / Hkv), never copied), any strides with unit stride
** along D.  Returns (B, H, T, D) (a view of a (B, T, H, D) buffer, so
** transposing back to (B, T, H*D) is free). */
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
  const double *uniforms;  /* NULL: draw from the engine's generator; else row b's draw in [0, 1) */
} la_sample_opts;

/* One token per row of logits (B, V); writes ids (int64) and, if logprobs is
** not NULL, the log-probability of each chosen token under the softmax of
** logits / temperature before top-k/top-p truncation (temperature 1 when
** greedy) -- the policy PPO later evaluates -- as float32.  With o->uniforms,
** row b samples with the uniform draw uniforms[b] instead of one from the
** generator, so that its caller can give each row a random stream of its own. */
int la_sample(la_tensor *logits, const la_sample_opts *o, la_tensor *ids, la_tensor *logprobs);

/* ---------------------------------------------------------------- la_logprobs.c */

/* How per-token values reduce over the last leading dim (the time axis). */
typedef enum la_lp_reduce {
  LA_LP_TOKEN = 0,   /* (..., T): mask * value per token */
  LA_LP_SUM,         /* (...): sum over T of mask * value */
  LA_LP_MEAN         /* (...): that sum divided by the mask's sum (0 when it is 0) */
} la_lp_reduce;

/* log softmax(logits / temperature)[target] for logits (..., T, V), 0-based
** targets (..., T) and a mask (..., T) (any dtype, read as float weights; NULL
** means all ones), fused: no (..., V) tensor is stored, the backward pass
** writes (onehot - softmax) * upstream / temperature.  Rows whose mask is 0
** are skipped and their targets never read. */
la_tensor *la_logprobs(la_tensor *logits, la_tensor *targets, la_tensor *mask, la_lp_reduce reduce,
                       double temperature);
/* The same from hidden states (..., T, C) and an LM-head weight (V, C),
** without materialising the logits: rows go through in chunks of chunk_rows
** (0: about 64 MiB of scratch logits), recomputed in the backward pass.
** Gradients for hidden and weight. */
la_tensor *la_logprobs_hidden(la_tensor *hidden, la_tensor *weight, la_tensor *targets,
                              la_tensor *mask, la_lp_reduce reduce, double temperature,
                              int64_t chunk_rows);
/* Entropy -sum p log p of softmax(logits / temperature) per row, masked and
** reduced as above; and the same from hidden states and weight. */
la_tensor *la_entropy(la_tensor *logits, la_tensor *mask, la_lp_reduce reduce, double temperature);
la_tensor *la_entropy_hidden(la_tensor *hidden, la_tensor *weight, la_tensor *mask,
                             la_lp_reduce reduce, double temperature, int64_t chunk_rows);

/* ---------------------------------------------------------------- la_pref.c */

/* Pairwise preference losses (docs/losses.md, "Preference losses") over per-sequence
** log-probs (B,): policy chosen/rejected, reference chosen/rejected (the
** references may be NULL: reference-free).  p (B,) soft labels in [0, 1] or
** NULL (then p = 1 - label_smoothing); p < 0.5 flips a pair for the losses
** that take a hard label (dpo, rdpo, ipo, hinge).  Returns the mean loss;
** fills the metrics (means over the batch, in the label's orientation). */
typedef enum la_pref_kind {
  LA_PREF_DPO = 0, LA_PREF_CDPO, LA_PREF_RDPO, LA_PREF_IPO, LA_PREF_HINGE, LA_PREF_GDPO,
  LA_PREF_GIPO, LA_PREF_N
} la_pref_kind;

typedef struct la_pref_opts {
  double beta;              /* > 0 */
  double eps;               /* rDPO's flip rate, in [0, 0.5) */
  double label_smoothing;   /* p = 1 - label_smoothing when p is NULL */
} la_pref_opts;

typedef struct la_pref_metrics {
  double reward_chosen, reward_rejected, accuracy, margin, logp_chosen, logp_rejected;
} la_pref_metrics;

const char *la_pref_name(la_pref_kind k);
la_tensor *la_pref_loss(la_pref_kind kind, la_tensor *pc, la_tensor *pr, la_tensor *rc,
                        la_tensor *rr, la_tensor *p, const la_pref_opts *o, la_pref_metrics *m);

/* Bradley-Terry loss of a reward model over rewards (B,) of the chosen and
** rejected sequences: mean of -log sigmoid(r1 - r2 - margin), or with soft
** labels p (B,) -p log sigmoid(z) - (1 - p) log sigmoid(-z), z = r1 - r2 -
** margin; plus center * mean((r1 + r2)^2).  margin: a (B,) tensor, or NULL
** and margin_value. */
typedef struct la_bt_metrics {
  double accuracy, margin, reward_chosen, reward_rejected;
} la_bt_metrics;

la_tensor *la_bradley_terry(la_tensor *r1, la_tensor *r2, la_tensor *p, la_tensor *margin,
                            double margin_value, double center, la_bt_metrics *m);

/* ---------------------------------------------------------------- la_ppo.c */

typedef struct la_ppo_metrics {
  double clipfrac;    /* share of counted tokens where the clipped term won */
  double approxkl;    /* 0.5 * mean (logp - old_logp)^2 (policy loss only) */
  double ratio;       /* mean ratio (policy loss only) */
  double count;       /* sum of the mask */
} la_ppo_metrics;

/* Masked mean over tokens of max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)),
** r = exp(logp - old_logp).  Gradient for logp only. */
la_tensor *la_ppo_policy_loss(la_tensor *logp, la_tensor *old_logp, la_tensor *adv, la_tensor *mask,
                              double clip_low, double clip_high, la_ppo_metrics *m);
/* Masked mean of 0.5 max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2).
** Gradient for values only. */
la_tensor *la_ppo_value_loss(la_tensor *values, la_tensor *old_values, la_tensor *returns,
                             la_tensor *mask, double clip, la_ppo_metrics *m);
/* Generalised advantage estimation over (B, T) rewards and values; masked
** positions are skipped (the next real token follows; after the last one the
** value is 0) and get 0.  Returns advantages and returns = advantages +
** values as new tensors with no history. */
int la_gae(la_tensor *rewards, la_tensor *values, la_tensor *mask, double gamma, double lam,
           la_tensor **adv, la_tensor **ret);

#endif
