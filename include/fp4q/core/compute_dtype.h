// fp4q/core/compute_dtype.h — the floating-point type a runtime holds its tensors in, and the
// rounding that emulates it on float32 data.
//
// fp4q computes in float32. To predict what a bfloat16 runtime (transformers with
// dtype=torch.bfloat16) computes, values are rounded to bf16 at the points where that runtime
// stores a bf16 tensor (after every Linear, norm, attention, residual add, ...): the value stays a
// float32 whose low 16 bits are zero. Rounding is IEEE round to nearest, ties to even mantissa —
// what PyTorch's .to(torch.bfloat16) and every bf16 kernel epilogue do (NaN stays NaN, values
// above the largest bf16 round to +-Inf).
//
// Invariant: with ComputeDtype::kF32 every function here is the identity, so code that threads a
// ComputeDtype through stays bit-identical to plain float32 code.
#pragma once

#include <cstdint>
#include <string>

#include "fp4q/core/half.h"

namespace fp4q {

enum class ComputeDtype : int { kF32 = 0, kBF16 = 1 };

inline const char* compute_dtype_name(ComputeDtype d) { return d == ComputeDtype::kBF16 ? "bf16" : "f32"; }

// float -> nearest bf16 (RNE) -> float.
inline float round_bf16(float x) { return bf16_to_float(float_to_bf16(x)); }

// x rounded to the compute dtype (identity for kF32).
inline float round_to(ComputeDtype d, float x) { return d == ComputeDtype::kBF16 ? round_bf16(x) : x; }

// In place over n floats (no-op for kF32).
inline void round_to(ComputeDtype d, float* x, int64_t n) {
  if (d != ComputeDtype::kBF16) return;
  for (int64_t i = 0; i < n; ++i) x[i] = round_bf16(x[i]);
}

}  // namespace fp4q
