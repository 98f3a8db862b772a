/*
** la_math.h -- scalar math written so that loops calling it vectorise.
**
** libm's expf is a function call per element, which stops the compiler from
** vectorising the loop around it: exp over 16M floats ran at a tenth of the
** speed of an add.  la_expf is branch-free straight-line code that GCC turns
** into AVX2 / AVX-512 instructions inside such loops.
*/
#ifndef LA_MATH_H
#define LA_MATH_H

#include <math.h>
#include <stdint.h>

/* e^x for float32, within about 2 ulp of the exact value.
**
** x = k ln2 + r with k = round(x / ln2) and |r| <= ln2 / 2; ln2 is split
** into a high part with trailing zero bits (so k * ln2_hi is exact for every
** k that matters) and a low part, which keeps r accurate.  e^r comes from its
** Taylor series to degree 7: the first term left out, r^8 / 8!, is below
** 6e-9 relative, a tenth of an ulp.  2^k is built directly in the exponent
** bits; k = 128 (x just below the overflow threshold) is done as 2^127 * 2.
** Results below FLT_MIN flush to zero, above FLT_MAX give +inf, and NaN
** stays NaN. */
static inline float la_expf(float x) {
  const float log2e = 1.44269504088896341f;
  const float ln2_hi = 0.693145751953125f;
  const float ln2_lo = 1.42860682030941723212e-6f;
  /* Clamped so that k stays in [-126, 128] (NaN goes to the low end here and
  ** is put back at the end).  Ternaries, not fminf/fmaxf: those have NaN
  ** rules that stop GCC from vectorising them. */
  float xc = !(x >= -87.5f) ? -87.5f : x;
  xc = xc > 88.75f ? 88.75f : xc;
  /* round to nearest by adding and taking away 1.5 * 2^23 (floorf does not
  ** vectorise without -fno-trapping-math) */
  const float round_magic = 12582912.0f;
  float kf = (xc * log2e + round_magic) - round_magic;
  float r = (xc - kf * ln2_hi) - kf * ln2_lo;
  float p = 1.0f + r * (1.0f + r * (1.0f / 2 + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 +
            r * (1.0f / 720 + r * (1.0f / 5040)))))));
  int32_t k = (int32_t)kf;
  float twice = k > 127 ? 2.0f : 1.0f;
  k = k > 127 ? 127 : k;
  union { uint32_t u; float f; } scale = {(uint32_t)(k + 127) << 23};   /* 2^k */
  float y = p * scale.f * twice;
  y = x > 88.72283935546875f ? INFINITY : y;      /* ln(FLT_MAX) */
  y = x < -87.33654022216797f ? 0.0f : y;         /* ln(FLT_MIN) */
  return x != x ? x : y;
}

#endif
