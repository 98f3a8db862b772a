/*
** la_sample.c -- choosing the next token: greedy, or sampling with
** temperature, top-k and top-p (nucleus) from the engine's one generator.
** Rows are processed in order on one thread, so a seed fixes the tokens.
*/
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "la_nn.h"

typedef struct { float logit; int64_t id; } la_cand;

static int la_cand_desc(const void *a, const void *b) {
  const la_cand *x = a, *y = b;
  if (x->logit != y->logit) return x->logit < y->logit ? 1 : -1;
  return x->id < y->id ? -1 : (x->id > y->id);   /* ties: lower id first */
}

/* Samples from the candidates' softmax at temperature tau, after top-k and
** top-p truncation, with the uniform draw u01 in [0, 1).  cand is sorted in place. */
static int64_t la_sample_row(la_cand *cand, int64_t V, double tau, int64_t top_k, double top_p, double u01) {
  qsort(cand, (size_t)V, sizeof *cand, la_cand_desc);
  int64_t keep = top_k > 0 && top_k < V ? top_k : V;
  double m = cand[0].logit, total = 0;
  double *w = malloc((size_t)keep * sizeof(double));
  if (!w) return cand[0].id;
  for (int64_t j = 0; j < keep; j++) {
    w[j] = exp((cand[j].logit - m) / tau);
    total += w[j];
  }
  if (top_p < 1) {   /* smallest prefix whose mass reaches top_p */
    double acc = 0;
    int64_t j = 0;
    while (j < keep && acc < top_p * total) acc += w[j++];
    keep = j > 0 ? j : 1;
    total = acc > 0 ? acc : w[0];
  }
  double u = u01 * total, acc = 0;
  int64_t pick = keep - 1;
  for (int64_t j = 0; j < keep; j++) {
    acc += w[j];
    if (u < acc) { pick = j; break; }
  }
  free(w);
  return cand[pick].id;
}

int la_sample(la_tensor *logits, const la_sample_opts *o, la_tensor *ids, la_tensor *logprobs) {
  char b1[LA_SHAPE_BUF];
  if (logits->dtype != LA_FLOAT32 || logits->ndim != 2)
    return la_failn("sample: logits must be float32 (batch, vocab); got %s %s",
                    la_dtype_name(logits->dtype), la_shape_str(b1, sizeof b1, logits->ndim, logits->shape));
  int64_t B = logits->shape[0], V = logits->shape[1];
  if (V < 1) return la_failn("sample: the vocabulary is empty");
  if (ids->dtype != LA_INT64 || ids->ndim != 1 || ids->shape[0] != B || !la_is_contiguous(ids))
    return la_failn("sample: ids must be a contiguous int64 tensor of shape (%lld,)", (long long)B);
  if (logprobs && (logprobs->dtype != LA_FLOAT32 || logprobs->ndim != 1 || logprobs->shape[0] != B ||
                   !la_is_contiguous(logprobs)))
    return la_failn("sample: logprobs must be a contiguous float32 tensor of shape (%lld,)", (long long)B);
  if (!(o->temperature >= 0) || !(o->top_p > 0 && o->top_p <= 1) || o->top_k < 0)
    return la_failn("sample: temperature must be >= 0, top_p in (0, 1], top_k >= 0 (got %g, %g, %lld)",
                    o->temperature, o->top_p, (long long)o->top_k);
  for (int64_t b = 0; o->uniforms && b < B; b++)
    if (!(o->uniforms[b] >= 0 && o->uniforms[b] < 1))
      return la_failn("sample: uniform draw %lld is %g, outside [0, 1)", (long long)b + 1, o->uniforms[b]);
  la_tensor *x = la_contiguous(logits);
  if (!x) return -1;
  bool greedy = o->temperature == 0;
  la_cand *cand = greedy ? NULL : malloc((size_t)V * sizeof *cand);
  if (!greedy && !cand) { la_release(x); return la_failn("sample: out of memory"); }
  int64_t *out = la_data(ids);
  double tau = greedy ? 1.0 : o->temperature;
  for (int64_t b = 0; b < B; b++) {
    const float *row = la_fdata(x) + b * V;
    int64_t pick = 0;
    if (greedy) {
      for (int64_t j = 1; j < V; j++) if (row[j] > row[pick]) pick = j;
    } else {
      for (int64_t j = 0; j < V; j++) cand[j] = (la_cand){row[j], j};
      double u01 = o->uniforms ? o->uniforms[b] : la_rng_uniform();
      pick = la_sample_row(cand, V, tau, o->top_k, o->top_p, u01);
    }
    out[b] = pick;
    if (logprobs) {   /* under the tempered, untruncated softmax */
      float m = -INFINITY;
      for (int64_t j = 0; j < V; j++) m = fmaxf(m, row[j]);
      double s = 0;
      for (int64_t j = 0; j < V; j++) s += exp((row[j] - m) / tau);
      la_fdata(logprobs)[b] = (float)((row[pick] - m) / tau - log(s));
    }
  }
  free(cand);
  la_release(x);
  ids->storage->version++;
  if (logprobs) logprobs->storage->version++;
  return 0;
}
