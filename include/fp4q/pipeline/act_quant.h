// fp4q/pipeline/act_quant.h — online input transform of a quantized Linear, as a runtime applies
// it: block-Hadamard rotation of the input (x -> x·B) and, for W4A4, per-token-group absmax FP4
// fake-quantisation of the rotated input (quantize, then dequantize back to the compute dtype).
//
// The runtimes disagree on the activation rule; fp4q emulates each one (docs/FORMAT.md §13 has
// the derivations and the source lines). Notation: groups of G = 16 (NVFP4) / 32 (MXFP4)
// consecutive inputs, amax = max |x| of the group, gs = activation global scale (multiplier),
// fl() = one float32 rounding (RNE), e4m3() = RNE to FP8 E4M3 saturating at 448,
// RNE_E2M1 = round to nearest, ties to even, saturating at 6 (0.25->0, 0.75->1, 1.25->1,
// 1.75->2, 2.5->2, 3.5->4, 5->4); TZ_E2M1 = thresholds strictly greater (ties toward zero:
// 0.25->0, 0.75->0.5, 1.25->1, 1.75->1.5, 2.5->2, 3.5->3, 5->4), saturating at 6.
//
//  kCompressedTensors (compressed-tensors `forward_quantize` with the preset scale dtypes, i.e.
//  what vLLM's NVFP4/MXFP4 W4A4 computes):
//    rotation  x·H_h / sqrt(h)  (f32: the fp4q rotation, multiply by 1/sqrt(h); bf16: the sums
//              divided by fl(sqrt(h)) and the result rounded to bf16, as HadamardTransform does)
//    NVFP4     a6 = fl(amax/6) (bf16: rounded to bf16 too); S = e4m3(min(fl(gs·a6), 448));
//              s = fl(S/gs); x_hat = RNE_E2M1(clamp(fl(x/s), ±6)) · s
//    MXFP4     e = floor(log2 amax) - 2, +1 when amax's mantissa >= 1.75
//              (format::mxfp4_absmax_exponent); x_hat = RNE_E2M1(x/2^e) · 2^e
//  kFpQuant (FP-Quant inference_lib 0.3.2, the Triton pseudo-quantization kernels
//  triton/nvfp4.py and triton/mxfp4.py used by transformers with pseudoquantization: true).
//  Triton lowers float32 `/` to PTX div.full.f32: a/b -> dv(a, b) = fl(a · rcp(b)) (one rounding
//  of the product by the reciprocal, not IEEE division), rcp = the GPU's approximate reciprocal
//  (MUFU.RCP): RN(1/b) except for 20 of the 128 bf16 mantissas, where it is the other float
//  neighbour (triton_rcp below; table measured on an H200, src/pipeline/triton_rcp_table.inc):
//    rotation  x·M with M = blockdiag(H_h · c), c = fl(1/sqrt(h)) (bf16: c rounded to bf16,
//              since transformers casts the buffer), float32 result (never rounded to bf16);
//              f32: tl.dot in IEEE mode = per output acc = fma(x_k, ±c, acc), k = 0..h-1 in order
//    NVFP4     gs in the compute dtype; S = e4m3(min(dv(fl(gs·amax), 6), 448));
//              q = TZ_E2M1(dv(fl(x·gs), S)); x_hat = dv(fl(q·S), gs)
//    MXFP4     E = floor(RN32(log2 amax)) (Triton's float32 log2, then floor: for amax within
//              1 … 44 floats below 2^k, k <= -2 or k >= 3, the rounded log2 is k, so E = k where
//              the exact floor is k - 1; triton_floor_log2 below);
//              s = dv(2^(E - 2), 0.75) (= 2^(E-2)·RN(4/3): the group max maps into [3, 6), or
//              just below 3 in that band; nothing clips); q = TZ_E2M1(dv(x, s)); x_hat = fl(q·s)
//              (the activation global scale is not used)
//  Both: with ComputeDtype::kBF16 x_hat is rounded to bf16 (the runtime's output tensor dtype);
//  all-zero groups give 0.
//
// Invariant: InputTransform{h, q, format, gs} with the defaults (kCompressedTensors, kF32) is the
// transform fp4q has always applied (quantize/calibration use it); it is bit-identical to
// format::choose_scales(kAbsmax) + quantize_rtn + dequantize after transform::hadamard_rows.
// Groups run along the input dimension: group k of a row covers columns [k·G, (k+1)·G).
#pragma once

#include <cstdint>
#include <string>

#include "fp4q/core/compute_dtype.h"
#include "fp4q/format/format.h"

namespace fp4q::pipeline {

enum class ActRuntime : int { kCompressedTensors = 0, kFpQuant = 1 };

const char* act_runtime_name(ActRuntime r);                // "compressed-tensors" | "fp-quant"
ActRuntime parse_act_runtime(const std::string& name);     // throws Error(kUsage) listing both
ComputeDtype parse_compute_dtype(const std::string& name); // "f32"/"fp32"/"float32" | "bf16"/"bfloat16"

struct InputTransform {
  int hadamard = 0;                 // rotation block (0 = none)
  bool quantize = false;            // W4A4: fake-quantise the rotated input
  format::FormatId format = format::FormatId::kNVFP4;
  float global_scale = 1.0f;        // NVFP4 activation global scale (multiplier)
  ActRuntime runtime = ActRuntime::kCompressedTensors;
  ComputeDtype dtype = ComputeDtype::kF32;
};

// x [rows x cols] row-major, in place. With dtype kBF16 the caller passes bf16-exact inputs
// (the runtime's bf16 activations); cols must be a multiple of the rotation block and, when
// quantizing, of the group size.
void apply_input_transform(const InputTransform& t, float* x, int64_t rows, int64_t cols);

// Activation global scale for NVFP4 from the calibration amax of the rotated input:
// bf16_round_down(2688 / amax) (1.0 when amax == 0).
float activation_global_scale(float amax);

// ---- the per-element rules, exposed for tests (docs above) ----
// Magnitude index 0..7 of |v| on the E2M1 grid {0,.5,1,1.5,2,3,4,6}; NaN -> 0.
int e2m1_index_rne(float a);  // ties to even
int e2m1_index_tz(float a);   // ties toward zero (strict thresholds)
// One group of n values (n = G), in place, by the rule of (runtime, format, dtype).
void fake_quantize_group(const InputTransform& t, float* g, int n);
// Triton's float32 reciprocal (the rcp of div.full.f32) as measured on an H200: the table entry
// for a bf16-exact normal b, RN(1/b) otherwise.
float triton_rcp(float b);
// floor(tl.log2(a)) of FP-Quant's MXFP4 kernel for a finite a > 0: floor of the correctly rounded
// float32 log2. Measured on an H200 (issue 10, third run): equal to the GPU's on all 2673 probed
// values 2^k·(1 - j·2^-24) and 2^k·(1 + j·2^-23), j <= 16, k = -40..40 (the whole band where it
// is not the exact floor for |k| <= 32, edges included), of which 724 are not the exact floor;
// on 2^20 log-uniform random values the GPU differs from the exact floor once, as this does.
int triton_floor_log2(float a);

}  // namespace fp4q::pipeline
