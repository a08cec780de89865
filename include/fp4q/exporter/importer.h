// fp4q/exporter/importer.h — reads a quantized model directory written by fp4q (or any writer
// following docs/FORMAT.md) back into QuantizedModelInfo + one QuantizedLinear per module, with
// the other tensors reachable through io::ModelFiles. Used by `fp4q eval QUANT_DIR` and
// `fp4q dequant QUANT_DIR OUT_DIR`.
//
// Supported: compressed-tensors (NVFP4 / MXFP4 *-pack-quantized, INT4 pack-quantized, with or
// without input_activations and the "v" Hadamard transform) and fp-quant real-quant (NVFP4, and
// MXFP4 with weight_global_scale 1.0 — fp4q's exact convention; FP-Quant's own MXFP4 checkpoints
// use 3.0, i.e. a per-group scale 2^E/3 that fp4q's MXFP4 cannot hold, and are refused).
// fp-quant pseudo-quant and dequant outputs hold no codes and are refused with a hint.
//
// Validation (all at open() except per-module tensor contents, checked by load()): every error
// names the file / tensor / field and says expected vs actual: quant_method / format / args
// fields, group sizes, tensor dtypes and shapes, scale bytes (no NaN E4M3 0x7f/0xff, no E8M0
// 0xff), Hadamard matrices equal to the declared rotation, global scales finite and > 0.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fp4q/exporter/layout.h"
#include "fp4q/exporter/quantized.h"
#include "fp4q/io/safetensors.h"

namespace fp4q::exporter {

class ImportedModel {
 public:
  // Opens and validates dir (config.json + safetensors). Error(kInput) naming what is wrong.
  static ImportedModel open(const std::string& dir);

  ExportKind kind() const { return kind_; }  // kCompressedTensors or kFpQuantReal
  const QuantizedModelInfo& info() const { return info_; }
  const nlohmann::json& config() const { return config_; }  // the whole config.json
  const io::ModelFiles& files() const { return files_; }
  const std::string& dir() const { return dir_; }
  // Floating dtype of the unquantized model (config dtype, else the most common floating
  // tensor dtype, else F32).
  io::DType model_dtype() const { return model_dtype_; }

  // Quantized module names, sorted.
  const std::vector<std::string>& quantized_modules() const { return modules_; }
  bool is_quantized(const std::string& module) const;
  // Tensors that are not part of a quantized module's layout (embeddings, norms, biases,
  // unquantized Linears, ...), sorted. These are what a dequant/eval passes through unchanged.
  const std::vector<std::string>& passthrough_tensors() const { return passthrough_; }

  // Reads, unpacks and validates one module (Error(kInput) naming tensor and field).
  QuantizedLinear load(const std::string& module) const;

 private:
  ImportedModel(io::ModelFiles files) : files_(std::move(files)) {}
  void open_compressed_tensors(const nlohmann::json& qc);
  void open_fp_quant(const nlohmann::json& qc);
  void open_fp_quant_checked(const nlohmann::json& qc);  // refuses pseudo-quant, then open_fp_quant
  void finish_open(const nlohmann::json& cfg);           // model dtype
  QuantizedLinear load_ct(const std::string& m) const;
  QuantizedLinear load_fpq(const std::string& m) const;

  io::ModelFiles files_;
  std::string dir_;
  ExportKind kind_ = ExportKind::kCompressedTensors;
  QuantizedModelInfo info_;
  nlohmann::json config_;
  io::DType model_dtype_ = io::DType::kF32;
  std::vector<std::string> modules_, passthrough_;
  int fpq_matrix_size_ = 0;       // fp-quant: hadamard_group_size
  std::string transform_scheme_;  // compressed-tensors: transform scheme name ("v") or ""
};

}  // namespace fp4q::exporter
