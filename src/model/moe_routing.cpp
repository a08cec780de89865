// src/model/moe_routing.cpp — top-k routing of the sparse MoE block (see moe.h).
#include <algorithm>
#include <cmath>
#include <numeric>

#include "fp4q/core/error.h"
#include "fp4q/model/moe.h"
#include "par.h"

namespace fp4q::model {

void build_expert_rows(MoeRouting& r) {
  const int E = r.n_experts, k = r.k;
  r.offsets.assign(static_cast<size_t>(E) + 1, 0);
  for (int64_t t = 0; t < r.tokens; ++t)
    for (int j = 0; j < k; ++j) ++r.offsets[r.ids[t * k + j] + 1];
  for (int e = 0; e < E; ++e) r.offsets[e + 1] += r.offsets[e];
  r.row_ids.assign(static_cast<size_t>(r.tokens * k), 0);
  r.row_weight.assign(static_cast<size_t>(r.tokens * k), 0.0f);
  std::vector<int64_t> fill(r.offsets.begin(), r.offsets.end() - 1);
  for (int64_t t = 0; t < r.tokens; ++t)  // ascending t: each expert's rows come out ascending
    for (int j = 0; j < k; ++j) {
      const int e = r.ids[t * k + j];
      r.row_ids[fill[e]] = t;
      r.row_weight[fill[e]] = r.weights[t * k + j];
      ++fill[e];
    }
}

namespace {
void check_args(int64_t tokens, int n_experts, int k) {
  if (tokens < 0 || n_experts <= 0 || k <= 0 || k > n_experts)
    throw Error(ErrorKind::kInternal, "route_topk: tokens " + std::to_string(tokens) + ", experts " +
                                          std::to_string(n_experts) + ", k " + std::to_string(k));
}
}  // namespace

MoeRouting route_topk(const float* logits, int64_t tokens, int n_experts, int k, bool renormalize) {
  check_args(tokens, n_experts, k);
  MoeRouting r;
  r.tokens = tokens;
  r.k = k;
  r.n_experts = n_experts;
  r.ids.assign(static_cast<size_t>(tokens * k), 0);
  r.weights.assign(static_cast<size_t>(tokens * k), 0.0f);
  detail::par_for(static_cast<long>(tokens), 30.0 * n_experts, [&](long t) {
    const float* l = logits + t * n_experts;
    thread_local std::vector<float> p;
    thread_local std::vector<int> order;
    p.resize(n_experts);
    float m = -INFINITY;
    for (int e = 0; e < n_experts; ++e) m = std::max(m, l[e]);
    double sum = 0.0;
    for (int e = 0; e < n_experts; ++e) {
      p[e] = std::exp(l[e] - m);
      sum += p[e];
    }
    const float s = static_cast<float>(sum);
    for (int e = 0; e < n_experts; ++e) p[e] = p[e] / s;
    // Top k by logit (descending), ties to the lower id: a partial selection sort, k is small.
    order.resize(n_experts);
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int a, int b) {
      return l[a] > l[b] || (l[a] == l[b] && a < b);
    });
    float wsum = 0.0f;
    for (int j = 0; j < k; ++j) wsum += p[order[j]];  // torch sums the k values in topk order
    for (int j = 0; j < k; ++j) {
      r.ids[t * k + j] = order[j];
      r.weights[t * k + j] = renormalize ? p[order[j]] / wsum : p[order[j]];
    }
  });
  build_expert_rows(r);
  return r;
}

MoeRouting route_topk_ref(const float* logits, int64_t tokens, int n_experts, int k,
                          bool renormalize) {
  check_args(tokens, n_experts, k);
  MoeRouting r;
  r.tokens = tokens;
  r.k = k;
  r.n_experts = n_experts;
  r.ids.resize(static_cast<size_t>(tokens * k));
  r.weights.resize(static_cast<size_t>(tokens * k));
  std::vector<double> p(n_experts);
  std::vector<int> order(n_experts);
  for (int64_t t = 0; t < tokens; ++t) {
    const float* l = logits + t * n_experts;
    double m = -INFINITY;
    for (int e = 0; e < n_experts; ++e) m = std::max(m, static_cast<double>(l[e]));
    double sum = 0.0;
    for (int e = 0; e < n_experts; ++e) sum += std::exp(static_cast<double>(l[e]) - m);
    for (int e = 0; e < n_experts; ++e) p[e] = std::exp(static_cast<double>(l[e]) - m) / sum;
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
    double top = 0.0;
    for (int j = 0; j < k; ++j) top += p[order[j]];
    for (int j = 0; j < k; ++j) {
      r.ids[t * k + j] = order[j];
      r.weights[t * k + j] = static_cast<float>(renormalize ? p[order[j]] / top : p[order[j]]);
    }
  }
  build_expert_rows(r);
  return r;
}

}  // namespace fp4q::model
