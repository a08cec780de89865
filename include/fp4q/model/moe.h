// fp4q/model/moe.h — the sparse mixture-of-experts block of Qwen3-MoE and Mixtral: router, top-k
// routing and the per-expert SwiGLU, exactly in transformers' eager order.
//
// transformers 5 (MixtralTopKRouter / Qwen2MoeTopKRouter + MixtralExperts, which Qwen3-MoE reuses):
//   logits  = x · W_routerᵀ                          [tokens x E], float32 (router never quantized)
//   p       = softmax(logits) in float32              (softmax first, over all E experts)
//   top-k   = torch.topk(p, k)                        (selected in descending probability)
//   w       = p_top / Σ p_top   when renormalising (Mixtral always; Qwen3-MoE: norm_topk_prob),
//             p_top otherwise                         (float32)
//   out     = 0; for every expert e = 0..E-1 with routed tokens (ascending e):
//               y_e = down_e(act(gate_e(x_r)) * up_e(x_r)) for its rows r (ascending token order)
//               out[r] += y_e[r] * w[r, e]            (float32 product, then float32 add)
// so each token's output is the sum of its experts' weighted outputs in ascending expert order,
// starting from 0 — reproduced bit-for-bit in the accumulation order here (the Linear products
// themselves are float32 GEMMs like any other layer).
//
// Selection: fp4q ranks the experts of a token by their router logit (softmax is monotone, so
// this is the order of p), ties broken towards the lower expert id. transformers ranks the
// rounded float32 probabilities; the two can differ only when two probabilities round to the
// same float32 value, which the routing-decision tests check does not happen on the goldens.
#pragma once

#include <cstdint>
#include <vector>

#include "fp4q/model/config.h"

namespace fp4q::model {

// Routing decisions of one MoE block for `tokens` rows.
struct MoeRouting {
  int64_t tokens = 0;
  int k = 0, n_experts = 0;
  std::vector<int32_t> ids;      // [tokens x k] selected experts, highest probability first
  std::vector<float> weights;    // [tokens x k] their routing weights (float32)
  // Rows routed to each expert, ascending (CSR): expert e owns entries offsets[e]..offsets[e+1]-1
  // of row_ids (the token row) and row_weight (that row's weight for e).
  std::vector<int64_t> offsets;  // [n_experts + 1]
  std::vector<int64_t> row_ids;  // [tokens * k]
  std::vector<float> row_weight; // [tokens * k]
  int64_t count(int e) const { return offsets[e + 1] - offsets[e]; }
};

// Routing from router logits [tokens x n_experts] row-major (float32), see the header comment.
// Probabilities: p = exp(l - max) / Σ exp(l - max) with float32 exp and a double sum rounded to
// float32; renormalised weights p / (float32 sum of the k selected p, in selection order).
// Deterministic and independent of the thread count.
MoeRouting route_topk(const float* logits, int64_t tokens, int n_experts, int k, bool renormalize);
// Reference: double-precision softmax and renormalisation, selection by a stable sort of the
// double probabilities (descending, ties to the lower id); weights rounded to float32 once.
MoeRouting route_topk_ref(const float* logits, int64_t tokens, int n_experts, int k,
                          bool renormalize);

// Fills offsets / row_ids / row_weight of r from ids / weights.
void build_expert_rows(MoeRouting& r);

}  // namespace fp4q::model
