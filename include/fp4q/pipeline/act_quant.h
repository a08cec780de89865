// fp4q/pipeline/act_quant.h — online input transform of a quantized Linear, as a runtime applies
// it: block-Hadamard rotation of the input (x -> x·B) and, for W4A4, per-token-group absmax FP4
// fake-quantisation of the rotated input.
//
//  NVFP4: S = e4m3(min(amax_g/6 · gs_a, 448)), x_hat = e2m1(x·gs_a/S)·S/gs_a with the static
//         activation global scale gs_a (compressed-tensors `input_global_scale`, multiplier
//         2688/amax over calibration, bf16-exact) — the scheme vLLM's NVFP4 W4A4 path computes.
//  MXFP4: the compressed-tensors rule (format::mxfp4_absmax_exponent: floor(log2 amax_g) - 2,
//         plus one when the mantissa of amax_g is >= 1.75), x_hat = e2m1(x/2^e)·2^e, saturating.
// Groups run along the input dimension: group k of a row covers columns [k·G, (k+1)·G).
#pragma once

#include <cstdint>

#include "fp4q/format/format.h"

namespace fp4q::pipeline {

struct InputTransform {
  int hadamard = 0;                 // rotation block (0 = none)
  bool quantize = false;            // W4A4: fake-quantise the rotated input
  format::FormatId format = format::FormatId::kNVFP4;
  float global_scale = 1.0f;        // NVFP4 activation global scale
};

// x [rows x cols] row-major, in place.
void apply_input_transform(const InputTransform& t, float* x, int64_t rows, int64_t cols);

// Activation global scale for NVFP4 from the calibration amax of the rotated input:
// bf16_round_down(2688 / amax) (1.0 when amax == 0).
float activation_global_scale(float amax);

}  // namespace fp4q::pipeline
