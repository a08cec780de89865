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
};

struct QuantizeResult {
  std::vector<TensorRecord> records;
  double seconds = 0;
};

QuantizeResult run_quantize(const QuantizeOptions& opt);

// Plan as text (one line per Linear: quantize or kept and why) for --dry-run and the log.
std::string plan_text(const Plan& plan);

}  // namespace fp4q::pipeline
