// fp4q/pipeline/eval.h — `fp4q eval` (perplexity) and `fp4q dequant`.
//
// eval loads either an original model directory or an fp4q output (compressed-tensors or
// fp-quant realquant): quantized Linears are dequantised in the rotated domain and their inputs
// rotated online (x·B), exactly as a runtime computes (x·B)(Ŵ_rot)ᵀ; with W4A4 (from the
// quantized model's config, or --activations fp4) the rotated inputs are also fake-quantised.
// Perplexity uses non-overlapping windows of `seqlen` tokens of the whole tokenised text
// (WikiText-2 style, one BOS at the start when the tokenizer adds one, remainder dropped) and
// float64 accumulation of the log-likelihood.
//
// Runtime emulation (docs/FORMAT.md §13): `runtime` picks whose activation rule the online
// transform follows (act_quant.h: compressed-tensors/vLLM or FP-Quant's fp_quant); the default is
// the runtime of the output's own layout (compressed-tensors layout -> compressed-tensors,
// fp-quant layout -> fp-quant; an original model with --activations fp4 -> compressed-tensors).
// `dtype` kBF16 emulates a bfloat16 runtime (transformers with dtype=torch.bfloat16, eager
// attention): every weight is rounded to bf16 as loaded, and activations are rounded to bf16
// wherever that runtime holds a bf16 tensor (model::Model's compute dtype); matrix products
// accumulate in float32 and round their output. kF32 is fp4q's float32 evaluation, unchanged.
#pragma once

#include <cstdint>
#include <string>

#include "fp4q/core/compute_dtype.h"

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
  int runtime = -1;          // -1 = the layout's own runtime; else pipeline::ActRuntime
  ComputeDtype dtype = ComputeDtype::kF32;
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
