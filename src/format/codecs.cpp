// src/format/codecs.cpp — element and scale codecs (E2M1, FP8 E4M3fn, E8M0, INT4) and
// quantize_value. Bit layouts:
//   E2M1 nibble : bit 3 sign, bits 2..0 magnitude index into {0,.5,1,1.5,2,3,4,6}.
//   E4M3fn byte : bit 7 sign, bits 6..3 exponent (bias 7), bits 2..0 mantissa.
//                 exp 0 = subnormal m * 2^-9; exp 1..15 = (1 + m/8) * 2^(exp-7);
//                 0x7f / 0xff = NaN (no infinities); max finite 0x7e = 448.
//   E8M0 byte   : unsigned biased exponent, value 2^(byte-127); 0xff = NaN.
//   INT4 nibble : two's complement, value in [-8, 7].
#include <cmath>
#include <limits>
#include <string>

#include "detail.h"
#include "fp4q/core/error.h"
#include "fp4q/core/half.h"
#include "fp4q/format/format.h"

namespace fp4q::format {

uint8_t e2m1_encode(float x) {
  int idx = detail::e2m1_index(std::fabs(x));
  return static_cast<uint8_t>((std::signbit(x) ? 8 : 0) | idx);
}

float e2m1_decode(uint8_t code) {
  float m = detail::kE2M1Magnitude[code & 7];
  return (code & 8) ? -m : m;
}

uint8_t e4m3_encode(float x) {
  const uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  const float a = std::fabs(x);
  if (!(a < 448.0f)) return sign | 0x7e;  // saturate (also Inf; NaN is excluded by contract)
  if (a < 0.015625f) {                    // below 2^-6: subnormal grid, step 2^-9
    float q = detail::rne_small(a * 512.0f);  // exact scaling; q in 0..8 (8 = min normal 0x08)
    return sign | static_cast<uint8_t>(q);
  }
  // a normal, in [2^-6, 448): a = (1 + m/2^23) * 2^e with e = floor(log2 a) in [-6, 8]. The
  // code is ((e + 7) << 3) + RNE(m / 2^20): the 3-bit mantissa rounded to nearest, ties to even,
  // on the bits (a carry of 8 moves into the exponent field, as it should).
  const uint32_t bits = float_to_bits(a);
  const int e = static_cast<int>(bits >> 23) - 127;
  const uint32_t m = bits & 0x7fffffu;
  const uint32_t k = (m + 0x7ffffu + ((m >> 20) & 1u)) >> 20;  // 0..8
  int code = ((e + 7) << 3) + static_cast<int>(k);
  if (code > 0x7e) code = 0x7e;  // 448 < a < 464 cannot happen here (a < 448), kept for safety
  return sign | static_cast<uint8_t>(code);
}

float e4m3_decode(uint8_t byte) {
  const int exp = (byte >> 3) & 0xF, man = byte & 7;
  if (exp == 15 && man == 7) return std::numeric_limits<float>::quiet_NaN();
  float v = (exp == 0) ? std::ldexp(static_cast<float>(man), -9)
                       : std::ldexp(1.0f + static_cast<float>(man) / 8.0f, exp - 7);
  return (byte & 0x80) ? -v : v;
}

uint8_t e8m0_encode_exponent(int e) {
  if (e < -127 || e > 127)
    throw Error(ErrorKind::kInternal,
                "E8M0 exponent out of range: expected -127..127, got " + std::to_string(e));
  return static_cast<uint8_t>(e + 127);
}

float e8m0_decode(uint8_t byte) {
  if (byte == 0xff) return std::numeric_limits<float>::quiet_NaN();
  return std::ldexp(1.0f, static_cast<int>(byte) - 127);  // byte 0 -> 2^-127 (fp32 subnormal)
}

uint8_t int4_encode(float x) { return static_cast<uint8_t>(detail::int4_round(x) & 0xF); }

float int4_decode(uint8_t code) {
  int v = code & 0xF;
  return static_cast<float>(v >= 8 ? v - 16 : v);
}

float element_decode(FormatId id, uint8_t code) {
  return id == FormatId::kINT4 ? int4_decode(code) : e2m1_decode(code);
}

uint8_t quantize_value(FormatId id, float x, float s, float* deq) {
  float d = 0.0f;
  uint8_t code = 0;
  if (!std::isfinite(x))
    throw Error(ErrorKind::kNumeric, "non-finite value " + std::to_string(x) + " to quantize", {},
                "check the weights / GPTQ damping");
  if (s > 0.0f) {
    code = (id == FormatId::kINT4) ? detail::int4_quant(x, s, &d) : detail::e2m1_quant(x, s, &d);
  } else if (s != 0.0f) {
    throw Error(ErrorKind::kInternal, "quantize_value: scale must be >= 0, got " + std::to_string(s));
  }
  if (deq) *deq = d;
  return code;
}

float scale_value(FormatId id, uint16_t code, float global_scale) {
  switch (id) {
    case FormatId::kNVFP4: return e4m3_decode(static_cast<uint8_t>(code)) / global_scale;
    case FormatId::kMXFP4: return e8m0_decode(static_cast<uint8_t>(code));
    case FormatId::kINT4: return f16_to_float(code);
    case FormatId::kMXFP4Fit:
      throw Error(ErrorKind::kInternal, "mxfp4-fit scale values depend on the tensor's grid: use fit_scale_value");
  }
  throw Error(ErrorKind::kInternal, "unknown format id " + std::to_string(static_cast<int>(id)));
}

float fit_scale_value(uint16_t code, int fit_beta, int fit_steps) {
  if (code == 0) return 0.0f;
  if (code > 255 || fit_steps < 1)
    throw Error(ErrorKind::kInternal, "mxfp4-fit scale code " + std::to_string(code) + " / steps " +
                                          std::to_string(fit_steps) + " out of range");
  // (code-1)/steps is exact in double for a multiple of steps, so powers of two are exact.
  const double e = static_cast<double>(fit_beta) + static_cast<double>(code - 1) / fit_steps;
  return static_cast<float>(std::exp2(e));
}

int mxfp4_absmax_exponent(float amax) {
  // compressed-tensors quantization/utils/mxfp_utils.py (round_to_power_2 + generate_mx_scales):
  //   VAL_TO_ADD = 1 << (23 - 1 - 1); masked = (bits + VAL_TO_ADD) & 0xff800000;
  //   byte = clamp(127 + floor(log2(masked)) - 2, 0, 255)
  // (amax >= 0 so the sign bit is 0). A zero exponent field (amax subnormal, or 0) gives
  // masked == 0 -> log2 = -inf -> byte 0, i.e. e = -127.
  uint32_t bits = float_to_bits(std::fabs(amax));
  uint32_t field = ((bits + (1u << 21)) >> 23) & 0xffu;
  if (field == 0) return -127;
  int e = static_cast<int>(field) - 127 - 2;
  if (e < -127) e = -127;
  if (e > 127) e = 127;
  return e;
}

}  // namespace fp4q::format
