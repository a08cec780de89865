// src/format/table.cpp — the one table of quantization formats (see format.h).
#include <string>

#include "fp4q/core/error.h"
#include "fp4q/format/format.h"

namespace fp4q::format {

const std::vector<FormatSpec>& all_formats() {
  static const std::vector<FormatSpec> kTable = {
      {FormatId::kNVFP4, "nvfp4",
       "NVFP4: E2M1 elements, FP8 E4M3 scale per 16, fp32 per-tensor global scale",
       ElementType::kE2M1, ScaleType::kE4M3, 16, true, 16, 4.0 + 8.0 / 16.0, 6.0f},
      {FormatId::kMXFP4, "mxfp4", "MXFP4 (OCP MX): E2M1 elements, E8M0 power-of-two scale per 32",
       ElementType::kE2M1, ScaleType::kE8M0, 32, false, 32, 4.0 + 8.0 / 32.0, 6.0f},
      {FormatId::kINT4, "int4", "INT4: symmetric int4 elements, FP16 scale per 32",
       ElementType::kInt4, ScaleType::kF16, 32, false, 0, 4.0 + 16.0 / 32.0, 8.0f},
      {FormatId::kMXFP4Fit, "mxfp4-fit",
       "MXFP4 with fitted scales (MXFP4\u2020, paper App. H): E2M1, 8-bit log2-grid code per 32; dequant export only",
       ElementType::kE2M1, ScaleType::kLog8, 32, false, 32, 4.0 + 8.0 / 32.0, 6.0f},
  };
  return kTable;
}

const FormatSpec& spec(FormatId id) {
  for (const auto& f : all_formats())
    if (f.id == id) return f;
  throw Error(ErrorKind::kInternal, "unknown format id " + std::to_string(static_cast<int>(id)));
}

FormatId parse_format(const std::string& name) {
  std::string valid;
  for (const auto& f : all_formats()) {
    if (name == f.name) return f.id;
    valid += (valid.empty() ? "" : ", ") + std::string(f.name);
  }
  throw Error(ErrorKind::kUsage, "unknown format '" + name + "'", "format name",
              "valid formats: " + valid);
}

ScaleMethod parse_scale_method(const std::string& name) {
  if (name == "absmax") return ScaleMethod::kAbsmax;
  if (name == "mse") return ScaleMethod::kMse;
  if (name == "mse-absgs") return ScaleMethod::kMseAbsGs;
  if (name == "fpquant") return ScaleMethod::kFpQuant;
  if (name == "mse-hess") return ScaleMethod::kMseHess;
  if (name == "mse-gptq") return ScaleMethod::kMseGptq;
  throw Error(ErrorKind::kUsage, "unknown scale method '" + name + "'", "scale method",
              "valid methods: absmax, mse (and for ablations: mse-absgs, fpquant, mse-hess, mse-gptq)");
}

const char* scale_method_name(ScaleMethod m) {
  switch (m) {
    case ScaleMethod::kAbsmax: return "absmax";
    case ScaleMethod::kMse: return "mse";
    case ScaleMethod::kMseAbsGs: return "mse-absgs";
    case ScaleMethod::kFpQuant: return "fpquant";
    case ScaleMethod::kMseHess: return "mse-hess";
    case ScaleMethod::kMseGptq: return "mse-gptq";
  }
  return "unknown";
}

}  // namespace fp4q::format
