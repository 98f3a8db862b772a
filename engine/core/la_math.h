/*
** la_math.h -- float32 exp, tanh and sigmoid written so that the compiler
** can vectorise loops calling them (libm's expf/tanhf are opaque calls that
** run one element at a time, and were the largest cost of a GPT step).
**
** exp: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, then a degree-6
** polynomial for e^r (the classic Cephes coefficients) and 2^n built in the
** exponent bits.  Within 2 ulp of expf on [-87.3, 88.72]; 0 below, +inf
** above (as expf gives), NaN stays NaN.
** tanh: the odd Taylor series up to x^9 for |x| < 0.3 (truncation below 2e-8
** relative), else 1 - 2 / (e^{2|x|} + 1) with the sign restored.
*/
#ifndef LA_MATH_H
#define LA_MATH_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

/* e^x = 2^n e^r for a finite x in [-87.3, 88.73]: sets *n = round(x / ln2)
** and returns e^r.  The shared core of la_expf and of the log-prob kernels'
** exp (engine/core/la_logprobs.c), which differ in how they clamp x and build 2^n. */
static inline float la_exp_reduce(float x, float *n) {
  /* n by the add-and-subtract-1.5*2^23 trick; r = x - n ln2 in two parts */
  float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  *n = k;
  return p * r * r + r + 1.0f;
}

static inline float la_expf(float x) {
  /* NaN goes through the arithmetic as 0 (the result is NaN again at the
  ** end): converting NaN to an integer, and shifting what that gives, would
  ** be undefined behaviour. */
  float xc = x < -87.3f ? -87.3f : (x > 88.7228f ? 88.7228f : (x != x ? 0.0f : x));
  float n, p = la_exp_reduce(xc, &n);
  /* 2^n in the exponent bits; n = 128 (x near ln FLT_MAX) as 2^127 * 2 */
  int32_t ni = (int32_t)n;
  float twice = ni > 127 ? 2.0f : 1.0f;
  ni = ni > 127 ? 127 : ni;
  int32_t bits = (ni + 127) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  float y = p * scale * twice;
  y = x < -87.3f ? 0.0f : y;
  y = x > 88.7228f ? __builtin_inff() : y;
  return x != x ? x : y;
}

static inline float la_tanhf(float x) {
  float a = x < 0 ? -x : x;
  float x2 = x * x;
  /* small |x|: x - x^3/3 + 2x^5/15 - 17x^7/315 + 62x^9/2835 */
  float s = 62.0f / 2835.0f;
  s = s * x2 - 17.0f / 315.0f;
  s = s * x2 + 2.0f / 15.0f;
  s = s * x2 - 1.0f / 3.0f;
  s = s * x2 * x + x;
  float e = la_expf(2.0f * a);
  float big = 1.0f - 2.0f / (e + 1.0f);
  big = x < 0 ? -big : big;
  float y = a < 0.3f ? s : big;
  return x != x ? x : y;
}

static inline float la_sigmoidf_fast(float x) {
  return 1.0f / (1.0f + la_expf(-x));
}

/* sum_j exp(x[j] - m) for contiguous x: sixteen float partial sums per block
** of 1024 (a loop the compiler vectorises), blocks added in double. */
static inline double la_sum_exp(const float *x, int64_t n, float m) {
  double total = 0;
  for (int64_t b = 0; b < n; b += 1024) {
    int64_t e = b + 1024 < n ? b + 1024 : n;
    float acc[16] = {0};
    int64_t j = b;
    for (; j + 16 <= e; j += 16)
      for (int k = 0; k < 16; k++) acc[k] += la_expf(x[j + k] - m);
    for (; j < e; j++) acc[0] += la_expf(x[j] - m);
    double s = 0;
    for (int k = 0; k < 16; k++) s += acc[k];
    total += s;
  }
  return total;
}

/* Largest element of contiguous x (NaN if any is NaN); -inf when n == 0. */
static inline float la_max_of(const float *x, int64_t n) {
  float acc[16];
  for (int k = 0; k < 16; k++) acc[k] = -__builtin_inff();
  int64_t j = 0;
  bool nan = false;
  for (; j + 16 <= n; j += 16)
    for (int k = 0; k < 16; k++) {
      acc[k] = x[j + k] > acc[k] ? x[j + k] : acc[k];
      nan |= x[j + k] != x[j + k];
    }
  float m = -__builtin_inff();
  for (; j < n; j++) { m = x[j] > m ? x[j] : m; nan |= x[j] != x[j]; }
  for (int k = 0; k < 16; k++) m = acc[k] > m ? acc[k] : m;
  return nan ? __builtin_nanf("") : m;
}

#endif
