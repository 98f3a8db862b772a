/*
** la_half.c -- conversions between float32 and the two 16-bit float formats
** checkpoints use: IEEE half (F16: 1 sign, 5 exponent, 10 mantissa bits) and
** bfloat16 (BF16: float32's top 16 bits).  Narrowing rounds to nearest, ties
** to even, as PyTorch's .to(torch.float16 / torch.bfloat16) does; NaN stays
** NaN and values past the format's range become infinities.
*/
#include <string.h>

#include "la.h"

static uint32_t la_f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static float la_bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

float la_bf16_to_f32(uint16_t b) { return la_bits_f32((uint32_t)b << 16); }

uint16_t la_f32_to_bf16(float f) {
  uint32_t u = la_f32_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x0040u);   /* quiet NaN */
  u += 0x7FFFu + ((u >> 16) & 1u);   /* round to nearest even; overflow carries into inf */
  return (uint16_t)(u >> 16);
}

float la_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
  if (exp == 0) {                         /* zero or subnormal: man * 2^-24, exact in float32 */
    float v = (float)man * 0x1p-24f;
    return sign ? -v : v;
  }
  if (exp == 31) return la_bits_f32(sign | 0x7F800000u | (man << 13));   /* inf, NaN */
  return la_bits_f32(sign | ((exp + 112) << 23) | (man << 13));          /* rebias 15 -> 127 */
}

uint16_t la_f32_to_f16(float f) {
  uint32_t u = la_f32_bits(f), sign = (u >> 16) & 0x8000u, abs = u & 0x7FFFFFFFu;
  if (abs > 0x7F800000u) return (uint16_t)(sign | 0x7E00u);             /* NaN */
  if (abs >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u);            /* rounds past 65504: inf */
  if (abs < 0x38800000u) {                /* below 2^-14: a subnormal half (or zero) */
    /* The value in units of 2^-24, rounded to nearest even: adding 0.5 in
    ** float32 arithmetic does exactly that, since the sum stays below 2^23. */
    float scaled = la_bits_f32(abs) * 0x1p24f;
    uint32_t m = (uint32_t)scaled;
    float rest = scaled - (float)m;
    if (rest > 0.5f || (rest == 0.5f && (m & 1u))) m++;
    return (uint16_t)(sign | m);          /* m = 1024 becomes the smallest normal, as it should */
  }
  uint32_t r = abs + 0xFFFu + ((abs >> 13) & 1u);   /* round the 13 dropped bits to even */
  return (uint16_t)(sign | ((r - 0x38000000u) >> 13));   /* rebias 127 -> 15 */
}

void la_f32_to_half_n(const float *src, uint16_t *dst, size_t n, bool bf16) {
  if (bf16) for (size_t i = 0; i < n; i++) dst[i] = la_f32_to_bf16(src[i]);
  else for (size_t i = 0; i < n; i++) dst[i] = la_f32_to_f16(src[i]);
}

void la_half_to_f32_n(const uint16_t *src, float *dst, size_t n, bool bf16) {
  if (bf16) {
    /* A shift per value, written out here so that the compiler makes it a
    ** vector loop (loading a BF16 model is mostly this loop). */
    for (size_t i = 0; i < n; i++) {
      uint32_t bits = (uint32_t)src[i] << 16;
      memcpy(dst + i, &bits, sizeof bits);
    }
  } else {
    for (size_t i = 0; i < n; i++) dst[i] = la_f16_to_f32(src[i]);
  }
}

void la_half_block_to_f32(const uint16_t *src, int64_t ld, int64_t r0, int64_t r1, int64_t c0,
                          int64_t c1, float *dst, bool bf16) {
  int64_t w = c1 - c0;
  for (int64_t r = r0; r < r1; r++)
    la_half_to_f32_n(src + r * ld + c0, dst + (r - r0) * w, (size_t)w, bf16);
}
