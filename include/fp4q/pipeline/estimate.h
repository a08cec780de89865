// fp4q/pipeline/estimate.h — what a quantization run will cost before it starts: peak memory
// (by component) and arithmetic (by phase), plus a time estimate from a quick GEMM probe.
//
// Memory model of a calibrated run (float32 everywhere; n samples of T tokens, B = sequences per
// batch = model::batch_sequences(T), d = hidden, q/kv = q_proj/k_proj outputs, I = intermediate):
//   activations   n·T·d                       the input of the current layer for every sample
//   batch copy    B·T·d                       the Hessian pass works on a copy (it adds residuals)
//   forward       B·T·(2d + 2q + 2kv + 2I)    layer_forward scratch (normed x, q, k, v, ctx, gate, up)
//   Hessians      Σ_g n_g²                    one accumulator per quantized input group, pass 1
//   solve         n_g² (H) + n_g² (U) + 2.75·maxrows_g·n_g (the solver's working copy, ΔW and
//                 codes of the largest member) + 0.25·rows_g·n_g (codes of every member), largest
//                 group g, with the accumulators of later groups still alive
//   weights       one layer in float32 (solved Linears move into the solver and back)
//   embeddings    vocab·d (+ lm_head when untied)
// The peak is activations + batch + forward + weights + embeddings + max(Hessians, solve).
//
// Arithmetic per layer (a multiply-add counts 2):
//   calibration forward  per token 2·(d·(q + 2kv) + q·d + 2·d·I) (no down_proj: not needed)
//                        + causal attention 4·q·keys per query (keys summed per 64-row block)
//   Hessians             per token Σ_g n_g·(n_g + 1)       (lower triangle of XᵀX)
//   quantized forward    per token 2·(d·(q + 2kv) + q·d + 3·d·I) + attention
//   GPTQ factor          per group 2n³/3;  sweep rows·n² + rows·n·128;  stats 2·rows·n²
#pragma once

#include <cstdint>
#include <string>

#include "fp4q/model/config.h"
#include "fp4q/pipeline/plan.h"

namespace fp4q::pipeline {

struct RunEstimate {
  // Bytes at the peak of a calibrated run, by component (see above).
  int64_t activations = 0, batch = 0, forward = 0, hessians = 0, solve = 0, weights = 0,
          embeddings = 0, peak = 0;
  // FLOP of ONE decoder layer, by phase (all quantized groups of that layer).
  double calib_forward = 0, hessian = 0, quant_forward = 0, gptq_factor = 0, gptq_sweep = 0,
         stats = 0;
  double weights_per_layer = 0;  // quantized weights per layer (scale search / export work)
  int layers = 0;
  double total_flop = 0;         // whole model
  // Filled by add_time_estimate.
  double probe_gflops = 0;       // measured GEMM rate on the current threads
  double seconds = 0;            // estimated wall time of the whole run
};

// Peak memory and FLOP of quantizing `cfg` with `plan` on n samples of T tokens. calibrate:
// whether a calibration pass runs; gptq: whether GPTQ solves run (else RTN); w4a4: activation
// quantization in the forward. Layers and groups the plan keeps unquantized cost nothing.
RunEstimate estimate_run(const model::ModelConfig& cfg, const Plan& plan, int64_t n, int64_t T,
                         bool calibrate, bool gptq);

// GFLOP/s of linalg::sgemm (the tiled product every fp4q GEMM goes through) on the current
// threads, from a ~0.1-1 s probe of 1024x1024x1024 products.
double gemm_probe_gflops();

// Fills probe_gflops (runs the probe when probe <= 0) and seconds = Σ phase FLOP / (probe ·
// efficiency of that phase) + per-weight costs (scale search, sweep bookkeeping, export). The
// efficiencies are the ratios `fp4q bench` measured (bench/README.md).
void add_time_estimate(RunEstimate& e, double probe = 0);

// Multi-line human-readable summary (memory breakdown, FLOP, time estimate).
std::string estimate_text(const RunEstimate& e);

}  // namespace fp4q::pipeline
