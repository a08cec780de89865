// fp4q/pipeline/plan.h — which Linear layers get quantized, and how.
//
// The plan is resolved from tensor names and shapes alone (no forward pass), printed before any
// work starts (--dry-run stops there), and is the single place that decides "quantize or keep":
//  * targets: model.layers.<L>.self_attn.{q,k,v,o}_proj and model.layers.<L>.mlp.{gate,up,down}_proj
//    (2-D ".weight" tensors); embeddings, norms and lm_head always stay as they are;
//  * a target is kept unquantized when it matches an --ignore regex, or when in_features is not
//    divisible by the format's group size or by the rotation block; the reason is recorded;
//  * fused groups (q/k/v, gate/up) must share one decision because vLLM fuses them into one
//    GEMM with one scheme: if any member is kept, all members are kept.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fp4q/exporter/quantized.h"
#include "fp4q/format/format.h"
#include "fp4q/io/safetensors.h"

namespace fp4q::pipeline {

// Index into the 7 standard linears of a decoder layer, in HF module order.
enum class Proj : int { kQ = 0, kK, kV, kO, kGate, kUp, kDown };
constexpr int kNumProj = 7;
const char* proj_suffix(Proj p);            // "self_attn.q_proj", ...
// Input-sharing groups: 0 = q/k/v, 1 = o, 2 = gate/up, 3 = down.
int proj_input_group(Proj p);
constexpr int kNumInputGroups = 4;

enum class Method : int { kRtn = 1, kGptq = 2, kMrGptq = 3 };
Method parse_method(const std::string& s);
const char* method_name(Method m);

struct QuantSettings {
  format::FormatId format = format::FormatId::kNVFP4;
  Method method = Method::kMrGptq;
  format::ScaleMethod scales = format::ScaleMethod::kMse;
  int hadamard = 16;
  bool act_order = true;
  double damp = 0.01;
  exporter::Activations activations = exporter::Activations::kNone;
  std::vector<std::string> ignore;  // ECMAScript regexes, searched in the module name
};

// Fills the method-dependent defaults: rtn/gptq -> no rotation, absmax scales;
// mr-gptq -> the format's default rotation block, mse scales. Explicit values (>= 0 hadamard,
// non-empty scales string) override.
QuantSettings resolve_settings(format::FormatId fmt, Method m, int hadamard /* -1 = default */,
                               const std::string& scales /* "" = default */, bool act_order,
                               double damp, exporter::Activations acts,
                               std::vector<std::string> ignore);

struct LinearPlan {
  std::string name;       // module name, e.g. model.layers.0.self_attn.q_proj
  int layer = 0;
  Proj proj = Proj::kQ;
  int64_t out = 0, in = 0;
  io::DType dtype = io::DType::kF32;
  bool quantize = false;
  std::string skip_reason;  // when !quantize
};

struct Plan {
  QuantSettings settings;
  int num_layers = 0;
  std::vector<LinearPlan> linears;  // layer-major, Proj order; only linears that exist
  const LinearPlan* find(int layer, Proj p) const;
  int64_t num_quantized() const;
  std::vector<std::string> ignored_names() const;
};

Plan make_plan(const io::ModelFiles& files, const QuantSettings& settings);

// Bytes of one quantized weight [out x in] in the given format (codes + scales + global scale).
int64_t quantized_bytes(format::FormatId fmt, int64_t out, int64_t in);

}  // namespace fp4q::pipeline
