// fp4q/exporter/exporter.h — streaming writer of quantized models in the on-disk layouts that
// runtimes load (docs/FORMAT.md is the byte-level specification of every layout):
//
//   kCompressedTensors  compressed-tensors (vLLM; default): NVFP4 / MXFP4 "*-pack-quantized",
//                       INT4 "pack-quantized", weight-only or W4A4, online Hadamard declared in
//                       transform_config with per-module "<prefix>.v_input.weight" tensors.
//   kFpQuantReal        transformers "fp_quant" real-quant (qweight / scales / matrices / global
//                       scales); runs on Blackwell with QuTLASS.
//   kFpQuantPseudo      "fp_quant" pseudo-quant (dqweight, pseudoquantization: true); runs on
//                       Hopper through transformers + fp_quant's Triton kernels.
//   kDequant            plain Hugging Face checkpoint: Linear weights = dequantised weights with
//                       the rotation undone (Ŵ·Bᵀ), no quantization_config.
//
// Usage (the caller owns the io::AtomicDir and decides the order of the tensors):
//   Exporter ex;
//   ex.begin(source_dir, info, kind, atomic_dir.path(), options);
//   for each tensor of the source model, in any order:
//     quantized Linear -> ex.add_quantized(q)                 (never pass its ".weight")
//     anything else    -> ex.add_passthrough(name, info, bytes)   (biases, norms, embeddings,
//                                                                  unquantized Linears, ...)
//   ex.finish();  atomic_dir.commit();
//
// Memory: one quantized layer + one tensor at a time; tensor bytes go straight to the shard
// files (io::ShardedWriter). finish() validates the whole model (fused-shard consistency, no
// source ".weight" left for a quantized module), writes the index, config.json (source config +
// quantization_config, plus a top-level "fp4q" provenance object), and copies the small
// non-weight files of the source directory (tokenizer, generation config, ...).
//
// Errors: fp4q::Error naming the module / tensor / field; kUsage for layout/option combinations
// that cannot be written (e.g. fp-quant with INT4, NVFP4 fp-quant without an activation scale).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "fp4q/exporter/layout.h"
#include "fp4q/exporter/quantized.h"
#include "fp4q/io/safetensors.h"

namespace fp4q::exporter {

struct ExportOptions {
  // Shard data-size limit in bytes (0 = a single model.safetensors). HF's default is 5 GB.
  uint64_t max_shard_bytes = 5000000000ull;
  // Floating dtype (F32 / F16 / BF16) of dequantised weights: kDequant's Linear weights (and,
  // for kDequant only, every floating passthrough tensor) and kFpQuantPseudo's dqweight.
  // nullopt = the source dtype (of "<module>.weight" in the source, else config.json's dtype).
  std::optional<io::DType> dtype;
  // Provenance written to __metadata__ and config.json["fp4q"].
  std::string fp4q_version = "0.1.0";
};

class Exporter {
 public:
  Exporter();
  ~Exporter();
  Exporter(const Exporter&) = delete;
  Exporter& operator=(const Exporter&) = delete;

  // source_dir: the Hugging Face model directory the model was quantized from (config.json,
  // *.safetensors, tokenizer files). out_dir: existing, empty directory (AtomicDir::path()).
  // Validates the info/kind/options combination before anything is written.
  void begin(const std::string& source_dir, const QuantizedModelInfo& info, ExportKind kind,
             const std::string& out_dir, const ExportOptions& options = {});

  // Writes the tensors of one quantized Linear (names/dtypes/shapes: docs/FORMAT.md). Checks
  // q against info (format, rotation, shapes, scale codes consistent with values, fused global
  // scales equal across q/k/v and gate/up).
  void add_quantized(const QuantizedLinear& q);

  // Copies a non-quantized tensor byte for byte in its source dtype (kDequant with options.dtype
  // set converts F32/F16/BF16 tensors to that dtype). bytes: info.nbytes little-endian bytes.
  void add_passthrough(const std::string& name, const io::TensorInfo& info, const uint8_t* bytes);

  // Finishes: returns the files written into out_dir (relative names, sorted).
  std::vector<std::string> finish();

  // Module names added so far with add_quantized (in add order).
  const std::vector<std::string>& quantized_modules() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The quantization_config object written into config.json for this model (exactly what
// finish() writes; {} for kDequant). Exposed for tests and `fp4q inspect`-style tools.
nlohmann::json quantization_config_json(const QuantizedModelInfo& info, ExportKind kind,
                                        const std::vector<std::string>& quantized_modules);

// The "ignore" list (compressed-tensors) / "modules_to_not_convert" (fp-quant): "lm_head"
// (unless a module named lm_head is quantized) followed by info.ignored_linears, deduplicated.
std::vector<std::string> ignore_list(const QuantizedModelInfo& info,
                                     const std::vector<std::string>& quantized_modules);

// Drives a whole export from an in-memory list (convenience for tests and small tools; the
// pipeline streams instead): every tensor of `source` that is not "<quantized>.weight" is
// passed through, in sorted name order, then the quantized linears in the given order.
std::vector<std::string> export_model(const io::ModelFiles& source, const QuantizedModelInfo& info,
                                      const std::vector<QuantizedLinear>& linears, ExportKind kind,
                                      const std::string& out_dir,
                                      const ExportOptions& options = {});

}  // namespace fp4q::exporter
