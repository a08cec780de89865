// src/pipeline/estimate.cpp — memory / FLOP / time estimates of a run (see estimate.h).
#include "fp4q/pipeline/estimate.h"

#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <vector>

#include "fp4q/core/parallel.h"
#include "fp4q/linalg/blas.h"
#include "fp4q/linalg/buffer.h"
#include "fp4q/model/model.h"
#include "fp4q/pipeline/report.h"

namespace fp4q::pipeline {

namespace {

// Σ over query rows of the keys each attends to in the blocked causal kernel (64-row blocks see
// keys up to the block's last row).
double attention_keys(int64_t T) {
  double s = 0;
  for (int64_t r0 = 0; r0 < T; r0 += 64) {
    const int64_t r1 = std::min<int64_t>(T, r0 + 64);
    s += static_cast<double>(r1 - r0) * static_cast<double>(r1);
  }
  return s;
}

// Efficiencies (achieved FLOP/s over the tiled-SGEMM probe) used by the time estimate, measured
// with `fp4q bench --shape llama3-8b` on the GPU machine's 16 cores at 1, 4 and 16 threads
// (bench/README.md, bench/results/h200-host-16core): forward 0.83-0.85, Hessians 0.77-0.96,
// quantized forward 0.88-0.92, GPTQ factor 0.51-0.58, sweep 0.54-0.56, statistics 0.64-0.72.
constexpr double kEffForward = 0.85, kEffHessian = 0.85, kEffFactor = 0.55, kEffSweep = 0.55,
                 kEffStats = 0.68;
// Seconds per quantized weight on one thread for work that is not FLOP-bound: MSE scale search
// (incl. the NVFP4 global-scale search), rotation, dequantization, packing and writing (same runs:
// 60 ns per weight on 1 thread); it scales as threads^0.56 (2.8x on 4 threads, 4.7x on 16).
constexpr double kSecondsPerWeightThread = 60e-9;
constexpr double kOtherThreadExponent = 0.56;

}  // namespace

namespace {

// MoE layers (every layer shaped like layer 0, which is sparse): the dense-MLP terms above are
// replaced by the router and the routed experts (top_k of n_experts per token, --moe-calib
// routed); experts are solved one group at a time, their Hessians all live through the pass.
//   forward   per token 2·d·E (router) + top_k·2·2·d·Im (gate, up) [+ top_k·2·Im·d (down), quantized pass]
//   Hessians  per token top_k·(d(d+1) + Im(Im+1))
//   GPTQ      per expert: gate/up (2 members, n = d, rows 2·Im), down (n = Im, rows d)
void add_moe_terms(const model::ModelConfig& c, const Plan& plan, int64_t n, int64_t T, bool calibrate,
                   bool gptq, RunEstimate& e) {
  const double d = static_cast<double>(c.hidden), I = static_cast<double>(c.intermediate),
               Im = static_cast<double>(c.moe_intermediate), E = c.n_experts, k = c.n_experts_per_tok;
  const double tokens = static_cast<double>(n) * static_cast<double>(T);
  const int64_t B = std::min<int64_t>(std::max<int64_t>(n, 1), model::batch_sequences(T));
  bool quantized = false;
  for (int x = 0; x < plan.num_experts(0) && !quantized; ++x) {
    const LinearPlan* lp = plan.find_expert(0, x, Proj::kGate);
    quantized = lp && lp->quantize;
  }
  if (calibrate) {
    e.calib_forward += tokens * (2.0 * d * E + k * 4.0 * d * Im - 4.0 * d * I);
    e.quant_forward += tokens * (2.0 * d * E + k * 6.0 * d * Im - 6.0 * d * I);
  }
  const double ew = 3.0 * d * Im;  // weights of one expert
  e.weights += static_cast<int64_t>(4.0 * (E * ew + E * d - 3.0 * d * I));
  if (calibrate) e.forward += static_cast<int64_t>(4.0 * B * T * (E + 2 * d + 2 * Im - 2 * I));
  if (quantized) {
    e.weights_per_layer += E * ew;
    if (calibrate && gptq) {
      e.hessian += tokens * k * (d * (d + 1) + Im * (Im + 1));
      e.hessians += static_cast<int64_t>(4.0 * E * (d * d + Im * Im));
    }
    if (gptq) {
      e.gptq_factor += E * (2 * 2.0 * d * d * d / 3.0 + 2.0 * Im * Im * Im / 3.0);
      e.gptq_sweep += E * (2 * Im * d * d + 2 * Im * d * 128.0 + d * Im * Im + d * Im * 128.0);
      e.stats += E * (2.0 * 2 * Im * d * d + 2.0 * d * Im * Im);
      e.solve = std::max(e.solve, static_cast<int64_t>(4.0 * (2 * d * d + 2 * 2 * Im * d + 2.5 * Im * d)));
    }
  }
  e.total_flop = (e.calib_forward + e.hessian + e.quant_forward + e.gptq_factor + e.gptq_sweep + e.stats) * c.n_layers;
}

}  // namespace

RunEstimate estimate_run(const model::ModelConfig& c, const Plan& plan, int64_t n, int64_t T,
                         bool calibrate, bool gptq) {
  RunEstimate e;
  e.layers = c.n_layers;
  const double d = static_cast<double>(c.hidden), q = static_cast<double>(c.q_dim()),
               kv = static_cast<double>(c.kv_dim()), I = static_cast<double>(c.intermediate);
  const int64_t B = std::min<int64_t>(std::max<int64_t>(n, 1), model::batch_sequences(T));
  const double tokens = static_cast<double>(n) * static_cast<double>(T);
  const double att = 4.0 * q * attention_keys(T) * static_cast<double>(n);  // QKᵀ + PV

  // Input groups that have quantized members (the plan decides per layer; take layer 0's
  // decisions, every layer of these models has the same shapes).
  const double gdim[kNumInputGroups] = {d, q, d, I};
  const double grows[kNumInputGroups] = {q + 2 * kv, d, 2 * I, d};  // output rows of the group
  const double gmax_rows[kNumInputGroups] = {q, d, I, d};           // largest member
  bool gq[kNumInputGroups] = {false, false, false, false};
  for (int g = 0; g < kNumInputGroups; ++g)
    for (int p = 0; p < kNumProj; ++p)
      if (proj_input_group(static_cast<Proj>(p)) == g) {
        const LinearPlan* lp = plan.find(0, static_cast<Proj>(p));
        if (lp && lp->quantize) gq[g] = true;
      }

  const double layer_w = d * (q + 2 * kv) + q * d + 3 * d * I;
  for (int g = 0; g < kNumInputGroups; ++g) {
    if (!gq[g]) continue;
    const double ng = gdim[g];
    e.weights_per_layer += grows[g] * ng;
    if (calibrate && gptq) e.hessian += tokens * ng * (ng + 1);
    if (gptq) {
      const int members = g == 0 ? 3 : g == 2 ? 2 : 1;
      e.gptq_factor += members * 2.0 * ng * ng * ng / 3.0;
      e.gptq_sweep += grows[g] * ng * ng + grows[g] * ng * 128.0;
      e.stats += 2.0 * grows[g] * ng * ng;
    }
  }
  if (calibrate) {
    e.calib_forward = tokens * 2.0 * (d * (q + 2 * kv) + q * d + 2 * d * I) + att;
    e.quant_forward = tokens * 2.0 * layer_w + att;
  }
  e.total_flop = (e.calib_forward + e.hessian + e.quant_forward + e.gptq_factor + e.gptq_sweep +
                  e.stats) * c.n_layers;

  // Memory (bytes).
  e.embeddings = static_cast<int64_t>(4.0 * c.vocab * d * (c.tie_embeddings ? 1 : 2));
  e.weights = static_cast<int64_t>(4.0 * layer_w);  // one layer; solved Linears move in place
  if (calibrate) {
    e.activations = static_cast<int64_t>(4.0 * tokens * d);
    e.batch = static_cast<int64_t>(4.0 * B * T * d);
    e.forward = static_cast<int64_t>(4.0 * B * T * (2 * d + 2 * q + 2 * kv + 2 * I));
    double acc = 0, solve = 0, later = 0;
    for (int g = 0; g < kNumInputGroups; ++g)
      if (gq[g] && gptq) acc += gdim[g] * gdim[g];
    for (int g = 0; g < kNumInputGroups; ++g) {
      if (!gq[g]) continue;
      later = 0;
      for (int h = g + 1; h < kNumInputGroups; ++h)
        if (gq[h] && gptq) later += gdim[h] * gdim[h];
      const double ng = gdim[g];
      // H and U, the solver's working copy / ΔW of the largest member (+ its codes), the codes
      // of every member kept until the group is exported.
      const double sg = (gptq ? 2 * ng * ng : 0) + 2.75 * gmax_rows[g] * ng + 0.25 * grows[g] * ng;
      solve = std::max(solve, sg + later);
    }
    e.hessians = static_cast<int64_t>(4.0 * acc);
    e.solve = static_cast<int64_t>(4.0 * solve);
  } else {
    // Data-free: one group's weights, the solver's copies and (GPTQ from a file) H and U.
    double solve = 0;
    for (int g = 0; g < kNumInputGroups; ++g)
      if (gq[g]) solve = std::max(solve, (gptq ? 2 * gdim[g] * gdim[g] : 0) + grows[g] * gdim[g] +
                                             2.75 * gmax_rows[g] * gdim[g]);
    e.solve = static_cast<int64_t>(4.0 * solve);
    e.weights = 0;
    e.embeddings = 0;
  }
  if (c.is_moe_layer(0)) add_moe_terms(c, plan, n, T, calibrate, gptq, e);
  e.peak = e.activations + e.batch + e.forward + e.weights + e.embeddings + std::max(e.hessians, e.solve);
  return e;
}

double gemm_probe_gflops() {
  const int64_t m = 1024;
  linalg::HugeBuffer<float> a(static_cast<size_t>(m * m)), b(a.size()), c(a.size());
  for (size_t i = 0; i < a.size(); ++i) {
    a[i] = static_cast<float>((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
    b[i] = static_cast<float>((i * 40503u) % 1000) * 1e-3f - 0.5f;
  }
  linalg::sgemm(false, true, m, m, m, 1.0f, a.data(), m, b.data(), m, 0.0f, c.data(), m);  // warm-up
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    linalg::sgemm(false, true, m, m, m, 1.0f, a.data(), m, b.data(), m, 0.0f, c.data(), m);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 2.0 * m * m * m / s / 1e9);
  }
  return best;
}

void add_time_estimate(RunEstimate& e, double probe) {
  e.probe_gflops = probe > 0 ? probe : gemm_probe_gflops();
  const double r = e.probe_gflops * 1e9;
  const double per_layer = e.calib_forward / (r * kEffForward) + e.hessian / (r * kEffHessian) +
                           e.quant_forward / (r * kEffForward) + e.gptq_factor / (r * kEffFactor) +
                           e.gptq_sweep / (r * kEffSweep) + e.stats / (r * kEffStats);
  const int threads = num_threads();
  const double other = e.weights_per_layer * kSecondsPerWeightThread /
                       std::pow(static_cast<double>(std::max(1, threads)), kOtherThreadExponent);
  e.seconds = (per_layer + other) * e.layers;
}

std::string estimate_text(const RunEstimate& e) {
  char b[1024];
  auto gb = [](int64_t v) { return human_bytes(v); };
  std::snprintf(b, sizeof b,
                "planned peak memory %s = activations %s + batch copy %s + forward scratch %s + layer "
                "weights %s + embeddings %s + max(Hessians %s, solve %s)\n"
                "arithmetic per layer (GFLOP): calibration forward %.0f, Hessians %.0f, quantized "
                "forward %.0f, GPTQ factor %.0f, sweep %.0f, stats %.0f; whole model %.1f TFLOP\n",
                gb(e.peak).c_str(), gb(e.activations).c_str(), gb(e.batch).c_str(),
                gb(e.forward).c_str(), gb(e.weights).c_str(), gb(e.embeddings).c_str(),
                gb(e.hessians).c_str(), gb(e.solve).c_str(), e.calib_forward / 1e9, e.hessian / 1e9,
                e.quant_forward / 1e9, e.gptq_factor / 1e9, e.gptq_sweep / 1e9, e.stats / 1e9,
                e.total_flop / 1e12);
  std::string s = b;
  if (e.probe_gflops > 0) {
    const double h = e.seconds / 3600.0;
    std::snprintf(b, sizeof b,
                  "estimated time %.0f s (%.1f h) at the measured %.0f GFLOP/s GEMM rate of this "
                  "machine and thread count\n",
                  e.seconds, h, e.probe_gflops);
    s += b;
  }
  return s;
}

}  // namespace fp4q::pipeline
