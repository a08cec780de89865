// fp4q/pipeline/report.h — per-tensor results of a quantization run: one progress line each on
// stderr while running, a summary at the end, and the same records as JSON (--report FILE) or as
// an aligned table / TSV / CSV (fp4q report) on stdout.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace fp4q::pipeline {

struct TensorRecord {
  std::string name;          // module name
  int64_t out = 0, in = 0;
  std::string dtype;         // source dtype tag
  std::string format;        // "nvfp4" ... or "keep"
  std::string method;        // "rtn" | "gptq" | "mr-gptq" | "" (kept)
  std::string skip_reason;   // non-empty when kept unquantized
  int hadamard = 0;
  double rel_weight_err = 0;      // ||W_hat - W|| / ||W||
  double hessian_err = -1;        // tr(dW H dW^T) / tr(W H W^T); -1 when no Hessian
  double rtn_rel_weight_err = -1; // same scales, round to nearest (for comparison)
  double rtn_hessian_err = -1;
  double damp = 0;                // relative damping actually used (GPTQ)
  int damp_tries = 0;
  int64_t samples = 0;            // calibration sequences behind the Hessian
  int64_t tokens = -1;            // MoE expert: calibration tokens behind its Hessian (routed,
                                  // or all with --moe-calib all-tokens); -1 otherwise
  std::string note;               // e.g. an MoE expert's RTN fallback and why (never silent)
  int64_t bytes_before = 0, bytes_after = 0;
  double seconds = 0;
};

nlohmann::json to_json(const TensorRecord& r);
nlohmann::json report_json(const std::vector<TensorRecord>& records, const nlohmann::json& run_info);

// One progress line, e.g.
// [ 3/35] model.layers.0.self_attn.v_proj [32x64] F32 -> nvfp4 mr-gptq  w_err 1.1e-01  h_err 2.3e-03 (rtn 4.1e-03)  damp 0.01  8.0 KiB -> 1.1 KiB  0.01 s
std::string progress_line(const TensorRecord& r, int index, int total);
// The end-of-run summary (totals by format, size before/after, kept layers and why).
std::string summary_text(const std::vector<TensorRecord>& records, double seconds);

enum class TableFormat { kText, kTsv, kCsv, kJson };
TableFormat parse_table_format(const std::string& s);
// Per-tensor table of (name, shape, format, method, errors) for fp4q report.
std::string records_table(const std::vector<TensorRecord>& records, TableFormat f);

std::string human_bytes(int64_t n);

}  // namespace fp4q::pipeline
