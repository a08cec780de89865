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
// With a reference model (kl_reference, like llama.cpp's perplexity --kl-divergence) both models run
// on the same windows, one window batch at a time (no whole-text logits are kept); the evaluated
// model's perplexity is bit-identical to a run without the reference. Vocabulary sizes must agree
// (and, for --text, both tokenizers must give the same ids): else Error(kInput).
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
  // Reference model directory (--kl-reference): evaluated on the same windows in the same run, as
  // stored (activations/runtime/format/hadamard above apply to `dir` only), in the same dtype.
  std::string kl_reference;
  // With kl_reference: write one line per scored token here (TSV with the header
  // "window<TAB>nll<TAB>ref_nll<TAB>kl<TAB>ent<TAB>ref_ent"; window = index of its evaluation window,
  // ent / ref_ent = entropy of the model's / the reference's next-token distribution), so two
  // models scored on the same ids can be compared token by token (tools/paired_compare.py).
  std::string dump_tokens;
  // With kl_reference: both models' logits are divided by this before the softmax (temperature
  // scaling, e.g. the temperature at which the reference is calibrated on the text; every score,
  // the perplexities included, is then of the scaled distributions). 1 = off, bit-identical.
  double temperature = 1.0;
};

// Scores of the evaluated model against the reference, per scored token (natural log):
// KL(P_ref || P_model) of the next-token distributions (log-softmax and sums in double), its mean,
// standard error of the mean (tokens taken as independent, as llama.cpp reports it) and quantiles;
// the fraction of tokens whose argmax agrees (ties: lowest id); and the mean per-token NLL
// difference model - reference (= ln(PPL / PPL_ref)) with its standard error.
struct KlStats {
  bool computed = false;
  double ref_mean_nll = 0, ref_ppl = 0;
  double kl_mean = 0, kl_se = 0, kl_median = 0, kl_p90 = 0, kl_p99 = 0, kl_max = 0;
  double top1 = 0, top1_se = 0;
  double dnll_mean = 0, dnll_se = 0;
};

struct EvalResult {
  int64_t windows = 0, tokens = 0;
  double mean_nll = 0, ppl = 0;
  KlStats kl;  // with EvalOptions::kl_reference
};

EvalResult run_eval(const EvalOptions& opt);

// Plain model (rotation undone, no quantization_config) from an fp4q output directory.
void run_dequant(const std::string& quant_dir, const std::string& out_dir, const std::string& dtype,
                 bool force);

}  // namespace fp4q::pipeline
