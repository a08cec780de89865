// fp4q/exporter/quantized.h — the in-memory result of quantization that every exporter consumes
// and every importer (eval, dequant) produces.
//
// Invariants:
//  * QuantizedLinear::q holds the codes and scales of the ROTATED weight W·B (B = blockdiag of
//    normalised Sylvester Hadamard blocks of size `hadamard`, 0 = no rotation), in the original
//    column order (static act-order leaves no trace).
//  * Dequantized rotated weight: format::dequantize(q). Original-domain weight: that times Bᵀ
//    (= B, symmetric): transform::hadamard_rows(w, out, in, hadamard).
//  * input_global_scale > 0 only for NVFP4 W4A4 (activation global scale, multiplier convention
//    2688 / amax(rotated calibration inputs), bf16-exact).
#pragma once

#include <string>
#include <vector>

#include "fp4q/format/format.h"

namespace fp4q::exporter {

enum class Activations : int { kNone = 0, kFp4 = 1 };   // weight-only (W4A16) or W4A4
enum class ExportKind : int { kCompressedTensors = 1, kFpQuantReal = 2, kFpQuantPseudo = 3, kDequant = 4 };

struct QuantizedLinear {
  std::string name;               // HF module name, e.g. "model.layers.0.self_attn.q_proj"
  format::QuantizedMatrix q;      // rows = out_features, cols = in_features (rotated domain)
  int hadamard = 0;               // rotation block size, 0 = none
  float input_global_scale = 0;   // NVFP4 W4A4 only; 0 otherwise
};

// Settings shared by every quantized linear of one output model.
struct QuantizedModelInfo {
  format::FormatId format = format::FormatId::kNVFP4;
  int hadamard = 0;
  Activations activations = Activations::kNone;
  std::string method;             // "rtn" | "gptq" | "mr-gptq" (provenance only)
  std::string scales;             // "absmax" | "mse" (provenance only)
  std::vector<std::string> ignored_linears;  // HF module names of Linears left unquantized
};

}  // namespace fp4q::exporter
