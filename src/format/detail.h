// src/format/detail.h — private inline kernels shared by the format sources (not installed).
//
// The E2M1 magnitude table lives here and nowhere else; codecs.cpp exposes it through
// e2m1_encode/e2m1_decode, scales.cpp and quantize.cpp use the inline kernels below in their
// hot loops. Every kernel here is the *definition* of the rounding used everywhere in fp4q.
#pragma once

#include <cmath>
#include <cstdint>

#include "fp4q/core/parallel.h"
#include "fp4q/format/format.h"

namespace fp4q::format::detail {

// E2M1 magnitude of index 0..7 (code = sign<<3 | index).
inline constexpr float kE2M1Magnitude[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};

// E2M1 rounding thresholds on |v| (midpoints of the grid). Ties go to the even mantissa
// (FP-Quant cast_to_fp4 / compressed-tensors / PTX cvt.rn.satfinite.e2m1x2): 0.25->0, 0.75->1,
// 1.25->1, 1.75->2, 2.5->2, 3.5->4, 5->4; hence ">" at the ties that round down (even indices
// 0, 2, 4, 6 of this array) and ">=" at the ties that round up (odd indices 1, 3, 5).
inline constexpr float kE2M1Mid[7] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f};

// Index of RNE(a) on the E2M1 grid for a = |v| >= 0, saturating at 6 (index 7). NaN gives 0
// (callers reject non-finite input before).
inline int e2m1_index(float a) {
  return static_cast<int>(a > kE2M1Mid[0]) + static_cast<int>(a >= kE2M1Mid[1]) +
         static_cast<int>(a > kE2M1Mid[2]) + static_cast<int>(a >= kE2M1Mid[3]) +
         static_cast<int>(a > kE2M1Mid[4]) + static_cast<int>(a >= kE2M1Mid[5]) +
         static_cast<int>(a > kE2M1Mid[6]);
}

// kE2M1Magnitude[e2m1_index(a)] without a table lookup (so loops vectorize): the same
// comparisons weighted by the grid increments 0.5, 0.5, 0.5, 0.5, 1, 1, 2 (exact sums).
inline float e2m1_magnitude(float a) {
  return 0.5f * static_cast<float>((a > kE2M1Mid[0]) + (a >= kE2M1Mid[1]) + (a > kE2M1Mid[2]) +
                                   (a >= kE2M1Mid[3])) +
         static_cast<float>((a > kE2M1Mid[4]) + (a >= kE2M1Mid[5])) +
         2.0f * static_cast<float>(a > kE2M1Mid[6]);
}

// Round half to even of |v| < 2^22 without depending on the floating-point environment.
inline float rne_small(float v) {
  const float kMagic = 12582912.0f;  // 1.5 * 2^23
  return (v >= 0.0f) ? (v + kMagic) - kMagic : -((-v + kMagic) - kMagic);
}

// INT4 value RNE(v) clamped to [-8, 7] (clamp first: the bounds are integers, so identical).
inline int int4_round(float v) {
  float c = v < -8.0f ? -8.0f : (v > 7.0f ? 7.0f : v);
  return static_cast<int>(rne_small(c));
}

// Quantize x with scale s > 0 to an E2M1 code; *deq = decoded value * s.
inline uint8_t e2m1_quant(float x, float s, float* deq) {
  int idx = e2m1_index(std::fabs(x / s));
  bool neg = std::signbit(x);
  float m = kE2M1Magnitude[idx] * s;
  *deq = neg ? -m : m;
  return static_cast<uint8_t>((neg ? 8 : 0) | idx);
}

// Quantize x with scale s > 0 to an INT4 code (two's complement nibble); *deq = q * s.
inline uint8_t int4_quant(float x, float s, float* deq) {
  int q = int4_round(x / s);
  *deq = static_cast<float>(q) * s;
  return static_cast<uint8_t>(q & 0xF);
}

}  // namespace fp4q::format::detail

#include <string>

namespace fp4q::format::detail {
// Throws fp4q::Error(kNumeric) naming `where` and the first (lowest row, then lowest column)
// non-finite element of W [rows x cols] row-major. Independent of the thread count.
void check_finite(const float* w, int64_t rows, int64_t cols, const std::string& where);
// Throws fp4q::Error(kInput) unless rows, cols >= 0 and cols % group_size == 0.
void check_shape(FormatId id, int64_t rows, int64_t cols, const std::string& where);

// f(r) for every row r of a [rows x cols] matrix: fp4q::parallel_for over rows, or a plain loop
// when the matrix is small (< 64K elements; OpenMP region start-up costs more than the work).
// Either way each row is processed independently, so results do not depend on threads.
template <class F>
void for_rows(int64_t rows, int64_t cols, F&& f) {
  if (rows * cols < (int64_t{1} << 16)) {
    for (int64_t r = 0; r < rows; ++r) f(r);
  } else {
    parallel_for(static_cast<long>(rows), [&](long r) { f(static_cast<int64_t>(r)); });
  }
}
}  // namespace fp4q::format::detail
