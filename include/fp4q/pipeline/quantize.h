// fp4q/pipeline/quantize.h — `fp4q quantize`: model directory in, quantized model directory out.
//
// Data flow (one way): safetensors reader -> plan -> [calibration: sequential layer-by-layer
// forward capturing each Linear's input Hessian] -> MR-GPTQ / RTN solve per Linear -> exporter.
// Output goes to a temporary directory next to the destination and is renamed into place only
// when complete; an existing destination is never touched unless --force, and then replaced
// atomically at the end.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fp4q/core/compute_dtype.h"
#include "fp4q/exporter/quantized.h"
#include "fp4q/pipeline/plan.h"
#include "fp4q/pipeline/report.h"

namespace fp4q::pipeline {

struct CalibOptions {
  std::string text_path;   // calibration text (default: the bundled text)
  std::string ids_path;    // pre-tokenised ids instead of text (for unsupported tokenizers)
  int64_t samples = 128;
  int64_t seqlen = 2048;   // clipped to max_position_embeddings
  uint64_t seed = 42;
  std::string windows_path;  // --calib-windows: exact windows from a JSON file (no sampling;
                             // samples/seqlen/seed then come from the file)
  std::string dump_path;     // --dump-calib: write the windows used as JSON (fp4q/calib/windows.h)
};

// MoE expert calibration (Qwen3-MoE, Mixtral).
//   routed (default): each expert's Hessians come from the calibration tokens the router sends
//     to it; an expert that received fewer than min_tokens tokens is quantized with RTN (same
//     scales, no GPTQ), reported on its progress line and in the report ("note"), never silently.
//   all-tokens: for the Hessians only, every expert also runs on every calibration token (as
//     GPTQModel / llm-compressor offer): gate/up share the MoE block input's Hessian, down's comes
//     from the expert's own activations on all tokens (n_experts / top_k times the expert
//     compute of a routed pass); the layer output still follows the routing. No fallback needed.
struct MoeOptions {
  bool all_tokens = false;
  int64_t min_tokens = 128;
};
MoeOptions parse_moe_calib(const std::string& mode, int64_t min_tokens);

struct QuantizeOptions {
  std::string model_dir, out_dir;
  QuantSettings settings;
  exporter::ExportKind export_kind = exporter::ExportKind::kCompressedTensors;
  std::string export_dtype;        // dequant export dtype ("" = source dtype)
  CalibOptions calib;
  std::string hessians_path;       // precomputed Hessians instead of calibration
  bool force = false;
  bool dry_run = false;
  std::string report_path;
  int64_t max_memory = 0;          // bytes; 0 = physical memory
  uint64_t max_shard_bytes = 5ull << 30;
  bool forward_last_layer = false; // also run the quantized forward of the last layer (bench)
  MoeOptions moe;                  // --moe-calib, --moe-min-tokens
  // --resume: continue from the checkpoint of an interrupted run in "<out_dir>.tmp-*" (same
  // settings and input files, else Error(kUsage) naming the first difference; none found: a
  // warning and a fresh start). See "Resuming" below.
  bool resume = false;
  // --compute: arithmetic of the calibration forward's Linear products (Hessian pass and the
  // propagation through quantized layers): kF32 = float32 SGEMM (default, the reference);
  // kBF16 = bf16 inputs, float32 accumulation (model::Model::set_linear_compute). Runs without
  // a calibration forward (rtn without W4A4, --hessians) are unaffected.
  ComputeDtype calib_compute = ComputeDtype::kF32;
};

// Resuming (calibrated runs: GPTQ / MR-GPTQ with calibration, or W4A4 NVFP4): after each decoder
// layer but the last, the run stores a checkpoint in its temporary directory
// "<out_dir>.tmp-XXXXXX/.fp4q-resume" (the calibration activations at the next layer's input and
// the quantized Linears so far; layout, fingerprints and crash consistency:
// src/pipeline/checkpoint.h, docs/FORMAT.md §15). A run that fails with an I/O error (disk full,
// file-size limit) or an unexpected exception after a checkpoint keeps that directory and says
// so (when its input files are unchanged); any other failure removes it as before. A SIGKILLed
// run leaves it behind. With resume the run re-feeds the exporter from the checkpoint and
// continues at the next layer: the output is byte-identical to an uninterrupted run's. Without
// resume a checkpoint found next to OUT is left in place with a hint. Data-free runs (rtn,
// --hessians) are not checkpointed. A finished OUT is never written to (as without resume, it is
// refused unless force).

// Wall-clock seconds of each phase of a run, summed over layers (for logs and `fp4q bench`).
struct PhaseTimes {
  double calib_forward = 0;  // full-precision layer forward of the Hessian pass (hooks excluded)
  double hessian = 0;        // Hessian accumulation (2/N XᵀX folds) inside the Hessian pass
  double act_amax = 0;       // W4A4: amax of rotated inputs for the static activation scale
  double scale_search = 0;   // weight scales (absmax / MSE, NVFP4 global-scale search)
  double rotate = 0;         // Hadamard rotation of weights and Hessians, Hessian copies
  double gptq_factor = 0;    // dead columns, damping, U with H⁻¹ = UᵀU
  double gptq_sweep = 0;     // the GPTQ sweep (or RTN)
  double stats = 0;          // per-Linear error statistics (and the RTN comparison)
  double quant_forward = 0;  // layer forward with quantized weights (hooks excluded)
  double act_quant = 0;      // W4A4 activation rotation + fake quantization in that forward
  double export_ = 0;        // packing and writing the output
  double total = 0;
};

struct QuantizeResult {
  std::vector<TensorRecord> records;
  double seconds = 0;
  PhaseTimes phases;
  int64_t peak_rss_bytes = 0;  // getrusage's maximum resident set size of the process
};

QuantizeResult run_quantize(const QuantizeOptions& opt);

// --dry-run: the plan, then the planned peak memory by component, the arithmetic by phase and
// a time estimate from a quick GEMM probe on the current threads (pipeline/estimate.h). Reads
// config.json and tensor headers only; tokenises nothing (n = --samples, T = --seqlen clipped
// to max_position_embeddings).
std::string dry_run_text(const QuantizeOptions& opt);

// One log line with every phase's seconds.
std::string phase_text(const PhaseTimes& p);

// Plan as text (one line per Linear: quantize or kept and why) for --dry-run and the log.
std::string plan_text(const Plan& plan);

}  // namespace fp4q::pipeline
