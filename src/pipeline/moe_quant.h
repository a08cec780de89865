// src/pipeline/moe_quant.h — MoE experts in `fp4q quantize` (internal): per-expert Hessians from
// the tokens routed to each expert (or from all tokens, --moe-calib all-tokens), the explicit RTN
// fallback for under-calibrated experts, and the expert solves. Kept apart from quantize.cpp so
// that the dense pipeline is untouched: quantize.cpp only swaps its CaptureHook for
// MoeCaptureHook (identical for dense groups) and calls solve_layer_experts /
// quantize_experts_data_free for layers with experts.
//
// Experts are quantized WITHOUT rotation (hadamard 0) whatever --hadamard says: no MoE runtime
// applies an online transform to expert inputs (vLLM's FusedMoE has no compressed-tensors
// transform support; transformers 5 experts are not nn.Linear modules), so rotated expert
// weights would be wrong there. The rest of MR-GPTQ (MSE scales, act-order GPTQ) applies.
// NVFP4: gate/up of one expert share one global scale (vLLM keeps w13_weight_global_scale[:, 0]);
// W4A4: one activation global scale per layer for all experts' gate/up inputs and one for their
// down inputs (amax over every expert's inputs), so any per-expert reduction a runtime applies
// gives the same value.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "internal.h"

namespace fp4q::pipeline::detail {

// QuantSettings for experts: s without rotation.
QuantSettings expert_settings(const QuantSettings& s);

// Capture-pass hook of one layer: dense groups exactly as CaptureHook; expert inputs into
// per-expert accumulators (gate/up input, down input), routed-token counts, and the expert
// activation amax (unrotated) for W4A4.
struct MoeCaptureHook : CaptureHook {
  MoeCaptureHook(const Plan& plan, int layer, const MoeOptions& opt, bool hessians, bool amax);
  void on_expert_input(int layer, int expert, model::LinearKind kind, float* x, int64_t sequences,
                       int64_t tokens, int64_t in) override;
  void on_routing(int layer, const model::MoeRouting& routing) override;
  bool experts_see_all_tokens(int layer) const override;

  int layer = 0;
  MoeOptions opt;
  bool hessians = false, amax_wanted = false;
  std::vector<bool> expert_quantized;                                  // plan decision per expert
  std::vector<std::unique_ptr<gptq::HessianAccumulator>> gate_acc, down_acc;  // per expert
  std::unique_ptr<gptq::HessianAccumulator> shared_gate;  // all-tokens: the block input's Hessian
  std::vector<int64_t> routed;                            // routed calibration tokens per expert
  int64_t all_tokens = 0;                                 // rows of all routing calls
  float expert_amax[2] = {0.0f, 0.0f};                    // gate/up inputs, down inputs
};

struct ExpertSolveStats {
  int quantized = 0, rtn_fallback = 0;
  int64_t min_tokens = -1, max_tokens = 0;
  double herr_sum = 0, damp_max = 0;
  int herr_n = 0;
};

// Solves every quantized expert of layer l after the capture pass: weights move from w.experts
// into the solver and their dequantized (unrotated) results back; each result goes to emit in
// plan order (expert-major, gate/up/down). th gets the expert groups' input transforms (group 2
// = gate/up input, 3 = down input; W4A4 only). samples = calibration sequences.
ExpertSolveStats solve_layer_experts(const QuantSettings& s, const Plan& plan, int l, model::LayerWeights& w,
                                     MoeCaptureHook& cap, int64_t samples, bool need_hessians,
                                     bool need_act_scale, TransformHook& th, PhaseTimes* ph,
                                     const std::function<void(Solved&&)>& emit);

// Data-free RTN of the experts of layer l (weights read from files one expert at a time).
void quantize_experts_data_free(const QuantSettings& s, const Plan& plan, int l, const io::ModelFiles& files,
                                PhaseTimes* ph, const std::function<void(Solved&&)>& emit);

// One log line for a layer's experts (count, routed-token range, fallbacks).
std::string expert_stats_text(const ExpertSolveStats& st, const MoeOptions& opt);

}  // namespace fp4q::pipeline::detail
