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
//  * checkpoint-fused Linears (Phi-3 self_attn.qkv_proj, mlp.gate_up_proj) are ONE target each,
//    with proj kQ / kGate: quantized as the fused tensor with one NVFP4 global scale, which is
//    what vLLM loads (QKVParallelLinear / MergedColumnParallelLinear fill every shard's scale
//    slot from the single on-disk scale).
//  * MoE experts (model.layers.L.mlp.experts.E.{gate,up,down}_proj, Mixtral's
//    block_sparse_moe.experts.E.{w1,w3,w2}) are targets with expert = E and proj kGate / kUp /
//    kDown; ALL experts of one layer share one decision (vLLM runs a layer's experts as one
//    FusedMoE with one scheme). Experts are never rotated (hadamard 0: no MoE runtime applies an
//    online transform to expert inputs), so only the group size constrains them.
//  * MoE routers (mlp.gate / block_sparse_moe.gate) are listed as kept: they stay in 16 bit.
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
  int expert = -1;        // MoE expert index (-1: a dense Linear or the router)
  bool router = false;    // MoE router (always kept)
  int64_t out = 0, in = 0;
  io::DType dtype = io::DType::kF32;
  bool quantize = false;
  std::string skip_reason;  // when !quantize
};

struct Plan {
  QuantSettings settings;
  int num_layers = 0;
  // layer-major; per layer the dense Linears in Proj order, then the router, then the experts
  // (expert-major, gate/up/down); only linears that exist
  std::vector<LinearPlan> linears;
  // The dense Linear (not an expert or router) of `layer` with proj p, or nullptr.
  const LinearPlan* find(int layer, Proj p) const;
  // The Linear of expert e in `layer` with proj p (kGate/kUp/kDown), or nullptr.
  const LinearPlan* find_expert(int layer, int e, Proj p) const;
  // Number of experts with Linears in `layer` (0 for dense layers).
  int num_experts(int layer) const;
  int64_t num_quantized() const;
  std::vector<std::string> ignored_names() const;
};

Plan make_plan(const io::ModelFiles& files, const QuantSettings& settings);

// Bytes of one quantized weight [out x in] in the given format (codes + scales + global scale).
int64_t quantized_bytes(format::FormatId fmt, int64_t out, int64_t in);

}  // namespace fp4q::pipeline
