// fp4q/core/half.h — IEEE binary16 (F16) and bfloat16 (BF16) <-> float32 conversions.
//
// float -> half/bf16 round to nearest, ties to even (what PyTorch's .to(dtype) does); NaN stays
// NaN (quiet), overflow goes to +-Inf for F16 (like PyTorch). Decoding is exact.
#pragma once

#include <cstdint>
#include <cstring>

namespace fp4q {

inline float bits_to_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t float_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float bf16_to_float(uint16_t h) { return bits_to_float(static_cast<uint32_t>(h) << 16); }

inline uint16_t float_to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(u >> 16);
}

// Largest bf16 value <= f (f finite, >= 0 assumed by callers that need "round down").
inline float bf16_round_down(float f) {
  uint16_t h = static_cast<uint16_t>(float_to_bits(f) >> 16);  // truncation = toward zero
  return bf16_to_float(h);
}

inline float f16_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0) {
    if (man == 0) return bits_to_float(sign);
    float v = static_cast<float>(man) * (1.0f / 16777216.0f);  // man * 2^-24
    return (sign ? -v : v);
  }
  if (exp == 31) return bits_to_float(sign | 0x7f800000u | (man << 13));
  return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
}

inline uint16_t float_to_f16(float f) {
  uint32_t u = float_to_bits(f);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u;                 // NaN
  if (a >= 0x477ff000u) return sign | 0x7c00u;                // >= 65520 rounds to Inf
  if (a < 0x38800000u) {                                      // subnormal or zero in f16
    // value = a_float; f16 subnormal unit = 2^-24. Round half to even via float arithmetic.
    float af = bits_to_float(a);
    float scaled = af * 16777216.0f;                          // exact (power of two)
    uint32_t m = static_cast<uint32_t>(scaled);
    float rem = scaled - static_cast<float>(m);
    if (rem > 0.5f || (rem == 0.5f && (m & 1u))) ++m;
    return sign | static_cast<uint16_t>(m);
  }
  uint32_t r = a + 0xfffu + ((a >> 13) & 1u);                 // round mantissa to 10 bits
  return sign | static_cast<uint16_t>(((r >> 13) - (112u << 10)) & 0x7fffu);
}

}  // namespace fp4q
