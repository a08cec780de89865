// fp4q/pipeline/eval.h — `fp4q eval` (perplexity) and `fp4q dequant`.
//
// eval loads either an original model directory or an fp4q output (compressed-tensors or
// fp-quant realquant): quantized Linears are dequantised in the rotated domain and their inputs
// rotated online (x·B), exactly as a runtime computes (x·B)(Ŵ_rot)ᵀ; with W4A4 (from the
// quantized model's config, or --activations fp4) the rotated inputs are also fake-quantised.
// Perplexity uses non-overlapping windows of `seqlen` tokens of the whole tokenised text
// (WikiText-2 style, one BOS at the start when the tokenizer adds one, remainder dropped) and
// float64 accumulation of the log-likelihood.
#pragma once

#include <cstdint>
#include <string>

namespace fp4q::pipeline {

struct EvalOptions {
  std::string dir;
  std::string text_path, ids_path;
  int64_t seqlen = 2048;
  int64_t max_windows = 0;   // 0 = all
  int activations = -1;      // -1 = as the model says; else exporter::Activations
  int format = 0;            // original model + activations fp4: format::FormatId (0 = nvfp4)
  int hadamard = -1;         // original model + activations fp4: rotation (-1 = format default)
  std::string dump_logits;   // write float32 logits of logits_ids here
  std::string logits_ids;
};

struct EvalResult {
  int64_t windows = 0, tokens = 0;
  double mean_nll = 0, ppl = 0;
};

EvalResult run_eval(const EvalOptions& opt);

// Plain model (rotation undone, no quantization_config) from an fp4q output directory.
void run_dequant(const std::string& quant_dir, const std::string& out_dir, const std::string& dtype,
                 bool force);

}  // namespace fp4q::pipeline
