#include "fp4q/pipeline/report.h"

#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>

#include "fp4q/core/error.h"

namespace fp4q::pipeline {

std::string human_bytes(int64_t n) {
  char buf[64];
  const double v = static_cast<double>(n);
  if (n < 1024) std::snprintf(buf, sizeof buf, "%lld B", static_cast<long long>(n));
  else if (n < 1024 * 1024) std::snprintf(buf, sizeof buf, "%.1f KiB", v / 1024);
  else if (n < (1ll << 30)) std::snprintf(buf, sizeof buf, "%.1f MiB", v / (1 << 20));
  else std::snprintf(buf, sizeof buf, "%.2f GiB", v / (1ll << 30));
  return buf;
}

namespace {
nlohmann::json num_or_null(double v) { return (v < 0 || std::isnan(v)) ? nlohmann::json() : nlohmann::json(v); }
std::string fmt_err(double v) {
  if (v < 0 || std::isnan(v)) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3e", v);
  return buf;
}
}  // namespace

nlohmann::json to_json(const TensorRecord& r) {
  nlohmann::json j;
  j["name"] = r.name;
  j["shape"] = {r.out, r.in};
  j["dtype"] = r.dtype;
  j["format"] = r.format;
  j["method"] = r.method;
  if (!r.skip_reason.empty()) j["skip_reason"] = r.skip_reason;
  j["hadamard"] = r.hadamard;
  j["rel_weight_err"] = r.format == "keep" ? nlohmann::json() : nlohmann::json(r.rel_weight_err);
  j["hessian_err"] = num_or_null(r.hessian_err);
  j["rtn_rel_weight_err"] = num_or_null(r.rtn_rel_weight_err);
  j["rtn_hessian_err"] = num_or_null(r.rtn_hessian_err);
  j["damp"] = r.damp;
  j["damp_tries"] = r.damp_tries;
  j["samples"] = r.samples;
  if (r.tokens >= 0) j["tokens"] = r.tokens;
  if (!r.note.empty()) j["note"] = r.note;
  j["bytes_before"] = r.bytes_before;
  j["bytes_after"] = r.bytes_after;
  j["seconds"] = r.seconds;
  return j;
}

nlohmann::json report_json(const std::vector<TensorRecord>& records, const nlohmann::json& run_info) {
  nlohmann::json j;
  j["run"] = run_info;
  j["tensors"] = nlohmann::json::array();
  int64_t before = 0, after = 0;
  for (const auto& r : records) {
    j["tensors"].push_back(to_json(r));
    before += r.bytes_before;
    after += r.bytes_after;
  }
  j["totals"] = {{"bytes_before", before}, {"bytes_after", after}, {"tensors", records.size()}};
  return j;
}

std::string progress_line(const TensorRecord& r, int index, int total) {
  char head[256];
  std::snprintf(head, sizeof head, "[%*d/%d] %s [%lldx%lld] %s -> ", total >= 100 ? 3 : 2, index,
                total, r.name.c_str(), static_cast<long long>(r.out), static_cast<long long>(r.in),
                r.dtype.c_str());
  std::ostringstream s;
  s << head;
  if (r.format == "keep") {
    s << "kept (" << r.skip_reason << ")";
    return s.str();
  }
  s << r.format << " " << r.method;
  if (r.hadamard) s << " had" << r.hadamard;
  s << "  w_err " << fmt_err(r.rel_weight_err);
  if (r.hessian_err >= 0) {
    s << "  h_err " << fmt_err(r.hessian_err);
    if (r.rtn_hessian_err >= 0) s << " (rtn " << fmt_err(r.rtn_hessian_err) << ")";
  }
  if (r.damp_tries > 1) s << "  damp " << r.damp << " after " << r.damp_tries << " tries";
  if (r.tokens >= 0) s << "  tokens " << r.tokens;
  if (!r.note.empty()) s << "  [" << r.note << "]";
  char tail[128];
  std::snprintf(tail, sizeof tail, "  %s -> %s  %.2f s", human_bytes(r.bytes_before).c_str(),
                human_bytes(r.bytes_after).c_str(), r.seconds);
  s << tail;
  return s.str();
}

std::string summary_text(const std::vector<TensorRecord>& records, double seconds) {
  struct Agg { int n = 0; int64_t before = 0, after = 0; double werr = 0, herr = 0; int nh = 0; };
  std::map<std::string, Agg> by;
  int64_t before = 0, after = 0;
  for (const auto& r : records) {
    auto& a = by[r.format == "keep" ? "kept" : r.format + " " + r.method];
    ++a.n;
    a.before += r.bytes_before;
    a.after += r.bytes_after;
    if (r.format != "keep") {
      a.werr += r.rel_weight_err;
      if (r.hessian_err >= 0) { a.herr += r.hessian_err; ++a.nh; }
    }
    before += r.bytes_before;
    after += r.bytes_after;
  }
  std::ostringstream s;
  char line[256];
  std::snprintf(line, sizeof line, "%-20s %7s %12s %12s %12s %12s", "group", "linears", "before",
                "after", "mean w_err", "mean h_err");
  s << line << "\n";
  for (const auto& [k, a] : by) {
    std::snprintf(line, sizeof line, "%-20s %7d %12s %12s %12s %12s", k.c_str(), a.n,
                  human_bytes(a.before).c_str(), human_bytes(a.after).c_str(),
                  k == "kept" ? "-" : fmt_err(a.werr / a.n).c_str(),
                  a.nh ? fmt_err(a.herr / a.nh).c_str() : "-");
    s << line << "\n";
  }
  std::snprintf(line, sizeof line, "linear weights: %s -> %s (%.2fx smaller), %.1f s",
                human_bytes(before).c_str(), human_bytes(after).c_str(),
                after > 0 ? static_cast<double>(before) / after : 0.0, seconds);
  s << line;
  return s.str();
}

TableFormat parse_table_format(const std::string& s) {
  if (s == "text" || s == "table") return TableFormat::kText;
  if (s == "tsv") return TableFormat::kTsv;
  if (s == "csv") return TableFormat::kCsv;
  if (s == "json") return TableFormat::kJson;
  throw Error(ErrorKind::kUsage, "unknown table format '" + s + "'", "--format",
              "choose one of: text, tsv, csv, json");
}

std::string records_table(const std::vector<TensorRecord>& records, TableFormat f) {
  if (f == TableFormat::kJson) {
    nlohmann::json j = nlohmann::json::array();
    for (const auto& r : records) j.push_back(to_json(r));
    return j.dump(2) + "\n";
  }
  const std::vector<std::string> cols = {"name", "shape", "format", "method", "hadamard",
                                         "w_err", "h_err", "rtn_w_err", "rtn_h_err", "damp"};
  std::vector<std::vector<std::string>> rows;
  for (const auto& r : records) {
    rows.push_back({r.name, std::to_string(r.out) + "x" + std::to_string(r.in), r.format,
                    r.method, std::to_string(r.hadamard),
                    r.format == "keep" ? "-" : fmt_err(r.rel_weight_err), fmt_err(r.hessian_err),
                    fmt_err(r.rtn_rel_weight_err), fmt_err(r.rtn_hessian_err),
                    r.format == "keep" ? "-" : std::to_string(r.damp)});
  }
  std::ostringstream s;
  if (f == TableFormat::kTsv || f == TableFormat::kCsv) {
    const char sep = f == TableFormat::kTsv ? '\t' : ',';
    auto emit = [&](const std::vector<std::string>& row) {
      for (size_t i = 0; i < row.size(); ++i) s << (i ? std::string(1, sep) : "") << row[i];
      s << "\n";
    };
    emit(cols);
    for (const auto& r : rows) emit(r);
    return s.str();
  }
  std::vector<size_t> w(cols.size());
  for (size_t i = 0; i < cols.size(); ++i) w[i] = cols[i].size();
  for (const auto& r : rows)
    for (size_t i = 0; i < r.size(); ++i) w[i] = std::max(w[i], r[i].size());
  auto emit = [&](const std::vector<std::string>& row) {
    for (size_t i = 0; i < row.size(); ++i) {
      s << row[i];
      if (i + 1 < row.size()) s << std::string(w[i] - row[i].size() + 2, ' ');
    }
    s << "\n";
  };
  emit(cols);
  for (const auto& r : rows) emit(r);
  return s.str();
}

}  // namespace fp4q::pipeline
