// fp4q/exporter/layout.h — small shared pieces of the on-disk layouts (docs/FORMAT.md): names of
// the layouts, Hadamard matrices as stored, fused-shard groups, scale values from stored codes,
// the model dtype, and the exact "undo the rotation" used by the dequant outputs.
//
// Invariants:
//  * sylvester_pm1(b)[i*b + j] = (-1)^popcount(i & j): the unnormalised Sylvester (natural
//    order) Hadamard matrix, symmetric, H·H = b·I. It equals scipy.linalg.hadamard(b) and
//    compressed-tensors' deterministic_hadamard_matrix(b).
//  * scale_values_from_codes reproduces format::GroupScales::values bit for bit (code 0 is the
//    zero group, value 0, for every format; otherwise format::scale_value).
//  * unrotate_rows is deterministic and independent of the thread count.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fp4q/exporter/quantized.h"
#include "fp4q/format/format.h"
#include "fp4q/io/dtype.h"

namespace fp4q::exporter {

// "compressed-tensors" | "fp-quant" | "fp-quant-pseudo" | "dequant".
const char* export_kind_name(ExportKind k);
// Parses the names above (also "ct" and "fp-quant-real"); Error(kUsage) listing valid names.
ExportKind parse_export_kind(const std::string& s);
// "none" | "fp4".
const char* activations_name(Activations a);

// Unnormalised Sylvester Hadamard matrix [b x b] of +-1, row-major; b a power of two >= 1.
// Error(kUsage) otherwise.
std::vector<float> sylvester_pm1(int b);

// Stored matrix M [g x g] of the fp-quant layout for rotation block `hadamard` (0 = none):
// blockdiag(H_h / sqrt(h), ..., H_h / sqrt(h)) with g / h copies (identity when hadamard <= 1),
// entries computed in double and rounded to float32 once. g % hadamard == 0 required.
std::vector<float> fpquant_matrix(int g, int hadamard);

// Fused-shard groups vLLM loads into one GEMM: q_proj/k_proj/v_proj, gate_proj/up_proj, w1/w3.
// Returns the names of the OTHER members of `module`'s group (same parent prefix), or {} when the
// leaf name is not in a fused group.
std::vector<std::string> fused_siblings(const std::string& module);

// True for an MoE expert Linear ("...experts.<E>.<leaf>", e.g. model.layers.0.mlp.experts.3.up_proj
// or model.layers.0.block_sparse_moe.experts.3.w1). Experts are stored unrotated in every layout
// (no MoE runtime applies an online input transform to them): their QuantizedLinear::hadamard is
// 0 whatever the model's rotation, compressed-tensors' transform_config ignores them
// ("re:.*\.experts\..*"), and the fp-quant layouts refuse them (fp_quant replaces nn.Linear
// modules only; transformers 5 experts are fused 3-D parameters).
bool is_moe_expert_module(const std::string& module);
// The transform_config ignore pattern of the experts.
constexpr const char* kExpertTransformIgnore = "re:.*\\.experts\\..*";

// GroupScales::values from stored codes [rows * groups] (see the invariant above).
std::vector<float> scale_values_from_codes(format::FormatId id, const uint16_t* codes, size_t n,
                                           float global_scale);

// Model dtype from config.json ("torch_dtype" or transformers-5 "dtype": "float32",
// "bfloat16", "float16"); nullopt when absent or not one of those.
std::optional<io::DType> config_dtype(const nlohmann::json& config);
// io::DType from "f32"/"float32", "f16"/"float16"/"half", "bf16"/"bfloat16" (Error(kUsage)).
io::DType parse_float_dtype(const std::string& s);
// "float32" / "float16" / "bfloat16" (the config.json spelling) for F32/F16/BF16.
const char* torch_dtype_name(io::DType d);

// Undo the input rotation of a dequantised weight: out = W·Bᵀ with B = blockdiag(H_h/sqrt(h))
// (B symmetric, so out = W·B). W, out: [rows x cols] row-major float32 (may alias); cols % h == 0.
// Exact definition (docs/FORMAT.md "dequant"): per row and block of h columns,
//   S_j = sum_i W[i] * H[i][j]   in double (butterfly; exact whenever the block's values span
//                                 < 2^22 in magnitude — any summation order gives the same S_j),
//   out_j = float( S_j / sqrt(double(h)) )    (one IEEE division, one rounding to float32).
// hadamard <= 1 copies.
void unrotate_rows(const float* w, float* out, int64_t rows, int64_t cols, int hadamard);
// Same result computed naively (explicit H, double dot products); for tests.
void unrotate_rows_ref(const float* w, float* out, int64_t rows, int64_t cols, int hadamard);

// True when f is exactly representable in bfloat16.
bool is_bf16_exact(float f);

}  // namespace fp4q::exporter
