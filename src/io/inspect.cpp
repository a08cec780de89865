// fp4q/io/inspect.cpp — summary of a safetensors file / model directory for `fp4q inspect`.
#include "fp4q/io/inspect.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "fp4q/core/error.h"
#include "fp4q/io/safetensors.h"

namespace fp4q::io {

namespace fs = std::filesystem;
using nlohmann::json;

json inspect(const std::string& path) {
  ModelFiles mf = ModelFiles::open(path);
  json j;
  j["path"] = path;
  j["dir"] = mf.dir();
  j["index"] = mf.index_path().empty() ? json(nullptr) : json(mf.index_path());

  json files = json::array();
  for (const auto& f : mf.files()) {
    files.push_back({{"file", fs::path(f->path()).filename().string()},
                     {"bytes", f->file_size()},
                     {"tensors", f->tensors().size()},
                     {"metadata", f->metadata()}});
  }
  j["files"] = files;

  json tensors = json::array();
  std::map<std::string, std::pair<uint64_t, uint64_t>> by_dtype;  // tag -> (count, bytes)
  uint64_t total = 0;
  for (const std::string& name : mf.names()) {
    const TensorInfo& t = mf.info(name);
    tensors.push_back({{"name", name},
                       {"dtype", dtype_tag(t.dtype)},
                       {"shape", t.shape},
                       {"numel", t.numel()},
                       {"bytes", t.nbytes},
                       {"file", fs::path(mf.file_of(name).path()).filename().string()}});
    auto& d = by_dtype[dtype_tag(t.dtype)];
    d.first += 1;
    d.second += t.nbytes;
    total += t.nbytes;
  }
  j["num_tensors"] = tensors.size();
  j["total_tensor_bytes"] = total;
  json dt = json::object();
  for (const auto& kv : by_dtype) dt[kv.first] = {{"tensors", kv.second.first}, {"bytes", kv.second.second}};
  j["dtypes"] = dt;
  j["tensors"] = tensors;

  j["config"] = nullptr;
  j["quantization_config"] = nullptr;
  const fs::path cfg_path = fs::path(mf.dir()) / "config.json";
  std::error_code ec;
  if (fs::exists(cfg_path, ec)) {
    std::ifstream in(cfg_path);
    if (!in) throw Error(ErrorKind::kIo, "cannot open file", cfg_path.string());
    json cfg;
    try {
      cfg = json::parse(in);
    } catch (const json::exception& e) {
      throw Error(ErrorKind::kInput, std::string("config.json is not valid JSON: ") + e.what(),
                  cfg_path.string());
    }
    if (cfg.is_object()) {
      json c = json::object();
      for (const char* k : {"model_type", "architectures", "torch_dtype", "dtype"})
        if (cfg.contains(k)) c[k] = cfg[k];
      j["config"] = c;
      if (cfg.contains("quantization_config")) j["quantization_config"] = cfg["quantization_config"];
    }
  }
  return j;
}

namespace {

std::string human_bytes(uint64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  char buf[32];
  if (u == 0)
    std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(b));
  else
    std::snprintf(buf, sizeof buf, "%.2f %s", v, units[u]);
  return buf;
}

std::string shape_text(const json& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + s[i].dump();
  return r + "]";
}

// Renders rows as columns separated by two spaces; numeric columns (right_align) right-aligned.
std::string table(const std::vector<std::vector<std::string>>& rows,
                  const std::vector<bool>& right_align, const std::string& indent) {
  std::vector<size_t> w(right_align.size(), 0);
  for (const auto& r : rows)
    for (size_t c = 0; c < r.size(); ++c) w[c] = std::max(w[c], r[c].size());
  std::string out;
  for (const auto& r : rows) {
    std::string line = indent;
    for (size_t c = 0; c < r.size(); ++c) {
      const size_t pad = w[c] - r[c].size();
      if (c) line += "  ";
      if (right_align[c]) line += std::string(pad, ' ') + r[c];
      else line += r[c] + (c + 1 < r.size() ? std::string(pad, ' ') : std::string());
    }
    out += line + "\n";
  }
  return out;
}

}  // namespace

std::string inspect_text(const json& j) {
  std::ostringstream o;
  o << "Model: " << j.value("dir", std::string()) << "\n";
  if (j.contains("index") && j["index"].is_string()) o << "Index: " << j["index"].get<std::string>() << "\n";
  o << "Tensors: " << j.value("num_tensors", 0) << ", "
    << human_bytes(j.value("total_tensor_bytes", uint64_t{0})) << " of tensor data\n";
  if (j.contains("config") && j["config"].is_object() && !j["config"].empty())
    o << "Config: " << j["config"].dump() << "\n";

  o << "\nFiles:\n";
  std::vector<std::vector<std::string>> rows = {{"FILE", "BYTES", "TENSORS", "METADATA"}};
  const json files = j.value("files", json::array());
  const json dtypes = j.value("dtypes", json::object());
  const json tensors = j.value("tensors", json::array());
  for (const auto& f : files)
    rows.push_back({f.value("file", std::string()), std::to_string(f.value("bytes", uint64_t{0})),
                    std::to_string(f.value("tensors", 0)),
                    f.contains("metadata") ? f["metadata"].dump() : "{}"});
  o << table(rows, {false, true, true, false}, "  ");

  o << "\nDTypes:\n";
  rows = {{"DTYPE", "TENSORS", "BYTES"}};
  for (const auto& kv : dtypes.items())
    rows.push_back({kv.key(), std::to_string(kv.value().value("tensors", 0)),
                    std::to_string(kv.value().value("bytes", uint64_t{0}))});
  o << table(rows, {false, true, true}, "  ");

  o << "\nQuantization config: ";
  if (j.contains("quantization_config") && !j["quantization_config"].is_null())
    o << "\n" << j["quantization_config"].dump(2) << "\n";
  else
    o << "none\n";

  o << "\nTensors:\n";
  rows = {{"NAME", "DTYPE", "SHAPE", "BYTES", "FILE"}};
  for (const auto& t : tensors)
    rows.push_back({t.value("name", std::string()), t.value("dtype", std::string()),
                    shape_text(t.value("shape", json::array())),
                    std::to_string(t.value("bytes", uint64_t{0})), t.value("file", std::string())});
  o << table(rows, {false, false, false, true, false}, "  ");
  return o.str();
}

}  // namespace fp4q::io
