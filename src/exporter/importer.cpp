// src/exporter/importer.cpp — reads compressed-tensors and fp-quant real-quant directories back
// into QuantizedLinear (docs/FORMAT.md is the specification being checked).
#include "fp4q/exporter/importer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "fp4q/core/error.h"
#include "fp4q/core/half.h"

namespace fp4q::exporter {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string o = "[";
  for (size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + "]";
}

// Field accessor with errors naming config.json and the JSON path. Every read checks the JSON
// type first: config.json is outside input, and nlohmann's get<T>() would throw its own
// type_error (or, for get<int>() of a huge float, invoke undefined behaviour).
struct Cfg {
  std::string file;
  [[noreturn]] void fail(const std::string& path, const std::string& what) const {
    throw Error(ErrorKind::kInput, what, file + ": " + path);
  }
  const json& get(const json& j, const std::string& key, const std::string& path) const {
    if (!j.is_object()) fail(path, std::string("expected a JSON object, got ") + j.type_name());
    auto it = j.find(key);
    if (it == j.end()) fail(path + "." + key, "missing field");
    return *it;
  }
  std::string str(const json& j, const std::string& key, const std::string& path) const {
    const json& v = get(j, key, path);
    if (!v.is_string()) fail(path + "." + key, "expected a string, got " + v.dump());
    return v.get<std::string>();
  }
  int integer(const json& j, const std::string& key, const std::string& path) const {
    const json& v = get(j, key, path);
    if (!v.is_number_integer() ||
        (v.is_number_unsigned() ? v.get<uint64_t>() > static_cast<uint64_t>(INT32_MAX)
                                : (v.get<int64_t>() < INT32_MIN || v.get<int64_t>() > INT32_MAX)))
      fail(path + "." + key, "expected an integer in 32-bit range, got " + v.dump());
    return static_cast<int>(v.get<int64_t>());
  }
  // Optional fields: absent (or null) -> def.
  std::string opt_str(const json& j, const std::string& key, const std::string& path,
                      const std::string& def) const {
    if (!j.is_object() || !j.contains(key) || j.at(key).is_null()) return def;
    return str(j, key, path);
  }
  bool opt_bool(const json& j, const std::string& key, const std::string& path, bool def) const {
    if (!j.is_object() || !j.contains(key) || j.at(key).is_null()) return def;
    const json& v = j.at(key);
    if (!v.is_boolean()) fail(path + "." + key, "expected true or false, got " + v.dump());
    return v.get<bool>();
  }
  void expect_int(const json& j, const std::string& key, int want, const std::string& path) const {
    const json& v = get(j, key, path);
    if (!v.is_number_integer() || v.get<int64_t>() != want)
      fail(path + "." + key, "expected " + std::to_string(want) + ", got " + v.dump());
  }
  void expect_bool(const json& j, const std::string& key, bool want, const std::string& path) const {
    const json& v = get(j, key, path);
    if (!v.is_boolean() || v.get<bool>() != want)
      fail(path + "." + key, std::string("expected ") + (want ? "true" : "false") + ", got " + v.dump());
  }
  void expect_str(const json& j, const std::string& key, const std::string& want,
                  const std::string& path) const {
    const json& v = get(j, key, path);
    if (!v.is_string() || v.get<std::string>() != want)
      fail(path + "." + key, "expected " + json(want).dump() + ", got " + v.dump());
  }
  // A list of module names (strings); absent or null -> empty.
  std::vector<std::string> str_list(const json& j, const std::string& key, const std::string& path) const {
    std::vector<std::string> r;
    if (!j.is_object() || !j.contains(key) || j.at(key).is_null()) return r;
    const json& v = j.at(key);
    if (!v.is_array()) fail(path + "." + key, "expected a list of strings, got " + v.dump());
    for (const auto& e : v) {
      if (!e.is_string()) fail(path + "." + key, "expected a list of strings, got element " + e.dump());
      r.push_back(e.get<std::string>());
    }
    return r;
  }
};

const io::TensorInfo& need(const io::ModelFiles& f, const std::string& name, io::DType dt,
                           const std::vector<int64_t>& shape) {
  if (!f.has(name))
    throw Error(ErrorKind::kInput, "tensor missing from the checkpoint", name,
                "the directory is not a complete fp4q export (see docs/FORMAT.md)");
  const auto& ti = f.info(name);
  if (ti.dtype != dt)
    throw Error(ErrorKind::kInput,
                std::string("dtype ") + io::dtype_tag(ti.dtype) + ", expected " + io::dtype_tag(dt),
                name + " (" + f.file_of(name).path() + ")");
  if (ti.shape != shape)
    throw Error(ErrorKind::kInput, "shape " + shape_str(ti.shape) + ", expected " + shape_str(shape),
                name + " (" + f.file_of(name).path() + ")");
  return ti;
}

float read_scalar_f32(const io::ModelFiles& f, const std::string& name) {
  need(f, name, io::DType::kF32, {1});
  float v;
  std::memcpy(&v, f.data(name), 4);
  if (!(std::isfinite(v) && v > 0.0f))
    throw Error(ErrorKind::kInput, "value " + std::to_string(v) + " is not finite and > 0", name);
  return v;
}

std::vector<float> read_matrix_f32(const io::ModelFiles& f, const std::string& name, int64_t g) {
  if (!f.has(name)) throw Error(ErrorKind::kInput, "tensor missing from the checkpoint", name);
  const auto& ti = f.info(name);
  if (!io::is_float_dtype(ti.dtype) || ti.shape != std::vector<int64_t>{g, g})
    throw Error(ErrorKind::kInput,
                std::string("expected a float [") + std::to_string(g) + ", " + std::to_string(g) +
                    "] matrix, got " + io::dtype_tag(ti.dtype) + " " + shape_str(ti.shape),
                name);
  return f.read_f32(name);
}

void check_scale_codes(format::FormatId id, const std::vector<uint16_t>& c, const std::string& where) {
  for (size_t i = 0; i < c.size(); ++i) {
    bool ok = true;
    switch (id) {
      case format::FormatId::kNVFP4: ok = (c[i] & 0x7f) != 0x7f && (c[i] & 0x80) == 0; break;
      case format::FormatId::kMXFP4: ok = c[i] != 0xff; break;
      case format::FormatId::kINT4: ok = c[i] <= 0x7bff; break;
      case format::FormatId::kMXFP4Fit: ok = false; break;  // never written to a readable layout
    }
    if (!ok) {
      std::ostringstream o;
      o << "scale code 0x" << std::hex << c[i] << std::dec << " at index " << i
        << " (row-major [out, in/G]) is NaN, infinite or negative";
      throw Error(ErrorKind::kInput, o.str(), where);
    }
  }
}

// Every group must dequantize to finite float32 values: |element| <= 6 (E2M1) or 8 (INT4) times
// the effective scale (e.g. an E8M0 byte 254 = 2^127 would give 6·2^127 = inf; so would an NVFP4
// weight_global_scale below ~1e-35).
void check_scale_range(format::FormatId id, const std::vector<float>& values,
                       const std::vector<uint16_t>& codes, const std::string& where) {
  const float max_elem = id == format::FormatId::kINT4 ? 8.0f : 6.0f;
  for (size_t i = 0; i < values.size(); ++i)
    if (!std::isfinite(values[i] * max_elem)) {
      std::ostringstream o;
      o << "scale code 0x" << std::hex << codes[i] << std::dec << " at index " << i
        << " (row-major [out, in/G]) has effective value " << values[i]
        << ": the dequantized weights would exceed the float32 range";
      throw Error(ErrorKind::kInput, o.str(), where);
    }
}

// Smallest Sylvester block h (1 = identity) such that m == blockdiag(H_h/sqrt(h)), within the
// tolerance of a bf16-stored matrix; -1 when none.
int detect_block(const std::vector<float>& m, int g) {
  for (int h = 1; h <= g; h <<= 1) {
    const std::vector<float> ref = fpquant_matrix(g, h);
    bool ok = true;
    for (size_t i = 0; i < ref.size() && ok; ++i)
      ok = std::fabs(m[i] - ref[i]) <= 4e-3f * std::fabs(ref[i]) + 1e-6f;
    if (ok) return h == 1 ? 0 : h;
  }
  return -1;
}

}  // namespace

ImportedModel ImportedModel::open(const std::string& dir) {
  const std::string cfg_path = (fs::path(dir) / "config.json").string();
  json cfg;
  {
    std::ifstream f(cfg_path);
    if (!f) throw Error(ErrorKind::kInput, "config.json not found", cfg_path,
                        "QUANT_DIR must be a directory written by `fp4q quantize`");
    try {
      cfg = json::parse(f);
    } catch (const std::exception& e) {
      throw Error(ErrorKind::kInput, std::string("not valid JSON: ") + e.what(), cfg_path);
    }
  }
  ImportedModel m(io::ModelFiles::open(dir));
  m.dir_ = dir;
  m.config_ = cfg;
  auto qit = cfg.find("quantization_config");
  if (qit == cfg.end() || !qit->is_object())
    throw Error(ErrorKind::kInput, "no quantization_config: this is not a quantized model",
                cfg_path + ": quantization_config",
                "pass the directory written by `fp4q quantize` (a dequant output is a plain model)");
  const json& qc = *qit;
  const Cfg c{cfg_path};
  const std::string qm = c.opt_str(qc, "quant_method", "quantization_config", "");
  try {
    if (qm == "compressed-tensors") {
      m.kind_ = ExportKind::kCompressedTensors;
      m.open_compressed_tensors(qc);
    } else if (qm == "fp_quant") {
      m.open_fp_quant_checked(qc);
    } else {
      throw Error(ErrorKind::kInput, "unsupported quant_method '" + qm + "'",
                  cfg_path + ": quantization_config.quant_method",
                  "fp4q reads compressed-tensors and fp_quant (real-quant) directories");
    }
  } catch (const json::exception& e) {
    // A field of an unexpected JSON type that the typed reads above did not anticipate.
    throw Error(ErrorKind::kInput, std::string("unexpected JSON structure: ") + e.what(),
                cfg_path + ": quantization_config");
  }
  // provenance (optional)
  auto pit = cfg.find("fp4q");
  if (pit != cfg.end() && pit->is_object()) {
    m.info_.method = c.opt_str(*pit, "method", "fp4q", "");
    m.info_.scales = c.opt_str(*pit, "scales", "fp4q", "");
  }
  m.finish_open(cfg);
  return m;
}

void ImportedModel::open_fp_quant_checked(const json& qc) {
  const std::string cfg_path = (fs::path(dir_) / "config.json").string();
  {
    const Cfg c{cfg_path};
    if (c.opt_bool(qc, "pseudoquantization", "quantization_config", false))
      throw Error(ErrorKind::kInput,
                  "fp-quant pseudo-quant checkpoints hold dequantised weights (dqweight), not "
                  "codes and scales; they cannot be read back as a quantized model",
                  cfg_path + ": quantization_config.pseudoquantization",
                  "use the compressed-tensors or fp-quant (real) output of the same run");
  }
  kind_ = ExportKind::kFpQuantReal;
  open_fp_quant(qc);
}

void ImportedModel::finish_open(const json& cfg) {
  // model dtype
  if (auto d = config_dtype(cfg)) {
    model_dtype_ = *d;
  } else {
    std::map<io::DType, uint64_t> bytes;
    for (const auto& n : passthrough_) {
      const auto& ti = files_.info(n);
      if (io::is_float_dtype(ti.dtype)) bytes[ti.dtype] += ti.nbytes;
    }
    uint64_t best = 0;
    for (const auto& [d2, b] : bytes)
      if (b > best) { best = b; model_dtype_ = d2; }
  }
}

bool ImportedModel::is_quantized(const std::string& module) const {
  return std::binary_search(modules_.begin(), modules_.end(), module);
}

void ImportedModel::open_compressed_tensors(const json& qc) {
  Cfg c{(fs::path(dir_) / "config.json").string()};
  const std::string root = "quantization_config";
  const json& groups = c.get(qc, "config_groups", root);
  if (!groups.is_object() || groups.size() != 1)
    c.fail(root + ".config_groups", "expected exactly one config group (fp4q writes group_0), got " +
                                        std::to_string(groups.size()));
  const std::string gname = groups.begin().key();
  const json& g = groups.begin().value();
  const std::string gp = root + ".config_groups." + gname;
  const json& w = c.get(g, "weights", gp);
  const std::string wp = gp + ".weights";
  c.expect_int(w, "num_bits", 4, wp);
  c.expect_bool(w, "symmetric", true, wp);
  const std::string type = c.str(w, "type", wp);
  const std::string strategy = c.str(w, "strategy", wp);
  const int gs = c.integer(w, "group_size", wp);
  format::FormatId fid;
  std::string want_fmt;
  if (type == "float" && strategy == "tensor_group" && gs == 16) {
    fid = format::FormatId::kNVFP4; want_fmt = "nvfp4-pack-quantized";
  } else if (type == "float" && strategy == "group" && gs == 32) {
    fid = format::FormatId::kMXFP4; want_fmt = "mxfp4-pack-quantized";
  } else if (type == "int" && strategy == "group" && gs == format::spec(format::FormatId::kINT4).group_size) {
    fid = format::FormatId::kINT4; want_fmt = "pack-quantized";
  } else {
    c.fail(wp, "unsupported weight scheme type=" + type + " strategy=" + strategy +
                   " group_size=" + std::to_string(gs) +
                   " (fp4q reads NVFP4 float/tensor_group/16, MXFP4 float/group/32, INT4 int/group/" +
                   std::to_string(format::spec(format::FormatId::kINT4).group_size) + ")");
  }
  std::string fmt = c.opt_str(qc, "format", root, "");
  if (g.contains("format") && g["format"].is_string()) fmt = g["format"].get<std::string>();
  if (fmt != want_fmt) c.fail(gp + ".format", "expected '" + want_fmt + "', got '" + fmt + "'");
  const std::string status = c.opt_str(qc, "quantization_status", root, "");
  if (status != "compressed")
    c.fail(root + ".quantization_status", "expected 'compressed', got '" + status + "'");
  info_.format = fid;
  info_.activations = Activations::kNone;
  if (g.contains("input_activations") && !g["input_activations"].is_null()) {
    const json& a = g["input_activations"];
    const std::string ap = gp + ".input_activations";
    if (fid == format::FormatId::kINT4) c.fail(ap, "INT4 with input activations is not supported");
    c.expect_int(a, "num_bits", 4, ap);
    c.expect_str(a, "type", "float", ap);
    c.expect_int(a, "group_size", gs, ap);
    info_.activations = Activations::kFp4;
  }
  // ignore list
  std::set<std::string> ignored;
  for (const std::string& s : c.str_list(qc, "ignore", root)) {
    if (s != "lm_head" && s.rfind("re:", 0) != 0) info_.ignored_linears.push_back(s);
    ignored.insert(s);
  }
  // transform
  info_.hadamard = 0;
  if (qc.contains("transform_config") && qc["transform_config"].is_object() &&
      qc["transform_config"].contains("config_groups")) {
    const json& tg = qc["transform_config"]["config_groups"];
    const std::string tp = root + ".transform_config.config_groups";
    if (!tg.is_object() || tg.size() > 1)
      c.fail(tp, "expected at most one transform scheme, got " + std::to_string(tg.size()));
    if (tg.size() == 1) {
      transform_scheme_ = tg.begin().key();
      const json& s = tg.begin().value();
      const std::string sp = tp + "." + transform_scheme_;
      c.expect_str(s, "type", "hadamard", sp);
      const int hd = c.integer(s, "head_dim", sp);
      if (hd < 2 || (hd & (hd - 1)) != 0) c.fail(sp + ".head_dim", "expected a power of two >= 2");
      bool has_input = false;
      const json& apply = c.get(s, "apply", sp);
      if (!apply.is_array()) c.fail(sp + ".apply", "expected a list, got " + apply.dump());
      for (const auto& ap : apply) {
        const std::string loc = c.opt_str(ap, "location", sp + ".apply[]", "");
        if (loc == "input") has_input = true;
        else if (loc != "weight_input")
          c.fail(sp + ".apply", "unsupported transform location '" + loc + "' (fp4q reads input/weight_input)");
      }
      if (!has_input) c.fail(sp + ".apply", "no online 'input' transform");
      info_.hadamard = hd;
    }
  }
  // modules: every "<m>.weight_packed"
  std::set<std::string> owned;
  static const char* kSuffixes[] = {".weight_packed", ".weight_scale", ".weight_global_scale",
                                    ".input_global_scale", ".weight_shape"};
  for (const auto& n : files_.names())
    if (ends_with(n, ".weight_packed")) modules_.push_back(n.substr(0, n.size() - 14));
  std::sort(modules_.begin(), modules_.end());
  for (const auto& m : modules_) {
    if (ignored.count(m))
      throw Error(ErrorKind::kInput, "module is in the ignore list but has quantized tensors",
                  m + ".weight_packed");
    for (const char* s : kSuffixes) owned.insert(m + s);
    if (!transform_scheme_.empty()) owned.insert(m + "." + transform_scheme_ + "_input.weight");
    if (files_.has(m + ".weight"))
      throw Error(ErrorKind::kInput, "quantized module also has an unquantized .weight", m + ".weight");
  }
  for (const auto& n : files_.names())
    if (!owned.count(n)) passthrough_.push_back(n);
  info_.method.clear();
  if (modules_.empty())
    throw Error(ErrorKind::kInput, "no quantized module (no *.weight_packed tensor)", dir_);
}

void ImportedModel::open_fp_quant(const json& qc) {
  Cfg c{(fs::path(dir_) / "config.json").string()};
  const std::string root = "quantization_config";
  const std::string fd = c.str(qc, "forward_dtype", root);
  if (fd == "nvfp4") info_.format = format::FormatId::kNVFP4;
  else if (fd == "mxfp4") info_.format = format::FormatId::kMXFP4;
  else c.fail(root + ".forward_dtype", "expected 'nvfp4' or 'mxfp4', got '" + fd + "'");
  if (c.opt_bool(qc, "store_master_weights", root, false))
    c.fail(root + ".store_master_weights", "master-weight checkpoints are not supported");
  fpq_matrix_size_ = c.integer(qc, "hadamard_group_size", root);
  if (fpq_matrix_size_ < 1 || (fpq_matrix_size_ & (fpq_matrix_size_ - 1)) != 0)
    c.fail(root + ".hadamard_group_size", "expected a power of two");
  info_.activations = Activations::kFp4;  // the fp_quant runtime always quantizes activations
  std::set<std::string> ignored;
  for (const std::string& s : c.str_list(qc, "modules_to_not_convert", root)) {
    if (s != "lm_head") info_.ignored_linears.push_back(s);
    ignored.insert(s);
  }
  for (const auto& n : files_.names())
    if (ends_with(n, ".qweight")) modules_.push_back(n.substr(0, n.size() - 8));
  std::sort(modules_.begin(), modules_.end());
  if (modules_.empty())
    throw Error(ErrorKind::kInput, "no quantized module (no *.qweight tensor)", dir_);
  std::set<std::string> owned;
  static const char* kSuffixes[] = {".qweight", ".scales", ".weight_global_scale",
                                    ".act_global_scale", ".forward_hadamard_matrix",
                                    ".backward_hadamard_matrix"};
  for (const auto& m : modules_)
    for (const char* s : kSuffixes) owned.insert(m + s);
  for (const auto& n : files_.names())
    if (!owned.count(n)) passthrough_.push_back(n);
  // the rotation: read from the first module's matrix, every module must match (checked in load)
  const std::string mname = modules_.front() + ".forward_hadamard_matrix";
  const auto mat = read_matrix_f32(files_, mname, fpq_matrix_size_);
  const int h = detect_block(mat, fpq_matrix_size_);
  if (h < 0)
    throw Error(ErrorKind::kInput,
                "matrix is not a block-diagonal normalised Sylvester Hadamard matrix (nor identity)",
                mname, "fp4q reads only the rotations it writes");
  info_.hadamard = h;
  info_.method.clear();
}

QuantizedLinear ImportedModel::load(const std::string& module) const {
  if (!is_quantized(module))
    throw Error(ErrorKind::kInput, "not a quantized module of this checkpoint", module);
  return kind_ == ExportKind::kCompressedTensors ? load_ct(module) : load_fpq(module);
}

QuantizedLinear ImportedModel::load_ct(const std::string& m) const {
  const auto fid = info_.format;
  const auto& sp = format::spec(fid);
  const std::string pk = m + ".weight_packed";
  if (!files_.has(pk)) throw Error(ErrorKind::kInput, "tensor missing", pk);
  const auto& pti = files_.info(pk);
  if (pti.shape.size() != 2)
    throw Error(ErrorKind::kInput, "expected a 2-D tensor, got shape " + shape_str(pti.shape), pk);
  const int64_t rows = pti.shape[0];
  const bool is_int = fid == format::FormatId::kINT4;
  const int64_t cols = pti.shape[1] * (is_int ? 8 : 2);
  if (rows <= 0 || cols <= 0 || cols % sp.group_size != 0)
    throw Error(ErrorKind::kInput,
                "shape " + shape_str(pti.shape) + " gives in_features " + std::to_string(cols) +
                    ", not a positive multiple of the group size " + std::to_string(sp.group_size),
                pk);
  const int64_t groups = cols / sp.group_size;
  need(files_, pk, is_int ? io::DType::kI32 : io::DType::kU8, {rows, cols / (is_int ? 8 : 2)});
  QuantizedLinear ql;
  ql.name = m;
  ql.hadamard = is_moe_expert_module(m) ? 0 : info_.hadamard;  // experts are stored unrotated
  auto& q = ql.q;
  q.format = fid;
  q.rows = rows;
  q.cols = cols;
  q.codes = format::unpack_nibbles(files_.data(pk), rows, cols);
  if (is_int)
    for (auto& c : q.codes) c = static_cast<uint8_t>(c ^ 0x8);  // offset binary -> two's complement
  q.scales.format = fid;
  q.scales.rows = rows;
  q.scales.groups = groups;
  q.scales.codes.resize(static_cast<size_t>(rows * groups));
  const std::string sn = m + ".weight_scale";
  if (is_int) {
    need(files_, sn, io::DType::kF16, {rows, groups});
    const uint8_t* b = files_.data(sn);
    for (size_t i = 0; i < q.scales.codes.size(); ++i)
      q.scales.codes[i] = static_cast<uint16_t>(b[2 * i] | (b[2 * i + 1] << 8));
    const std::string shn = m + ".weight_shape";
    need(files_, shn, io::DType::kI64, {2});
    int64_t shp[2];
    std::memcpy(shp, files_.data(shn), sizeof(shp));
    if (shp[0] != rows || shp[1] != cols)
      throw Error(ErrorKind::kInput,
                  "weight_shape [" + std::to_string(shp[0]) + ", " + std::to_string(shp[1]) +
                      "] disagrees with weight_packed (expected [" + std::to_string(rows) + ", " +
                      std::to_string(cols) + "])",
                  shn);
  } else {
    need(files_, sn, fid == format::FormatId::kNVFP4 ? io::DType::kF8_E4M3 : io::DType::kU8,
         {rows, groups});
    const uint8_t* b = files_.data(sn);
    for (size_t i = 0; i < q.scales.codes.size(); ++i) q.scales.codes[i] = b[i];
  }
  check_scale_codes(fid, q.scales.codes, sn);
  q.scales.global_scale = 1.0f;
  if (fid == format::FormatId::kNVFP4)
    q.scales.global_scale = read_scalar_f32(files_, m + ".weight_global_scale");
  q.scales.values = scale_values_from_codes(fid, q.scales.codes.data(), q.scales.codes.size(),
                                            q.scales.global_scale);
  check_scale_range(fid, q.scales.values, q.scales.codes, sn);
  if (fid == format::FormatId::kNVFP4 && info_.activations == Activations::kFp4)
    ql.input_global_scale = read_scalar_f32(files_, m + ".input_global_scale");
  if (ql.hadamard != 0) {
    const std::string tn = m + "." + transform_scheme_ + "_input.weight";
    const auto mat = read_matrix_f32(files_, tn, info_.hadamard);
    const auto ref = sylvester_pm1(info_.hadamard);
    for (size_t i = 0; i < ref.size(); ++i)
      if (mat[i] != ref[i])
        throw Error(ErrorKind::kInput,
                    "entry " + std::to_string(i) + " is " + std::to_string(mat[i]) +
                        ", expected the unnormalised Sylvester Hadamard value " +
                        std::to_string(ref[i]),
                    tn);
    if (cols % info_.hadamard != 0)
      throw Error(ErrorKind::kInput, "in_features " + std::to_string(cols) +
                                         " is not a multiple of head_dim " +
                                         std::to_string(info_.hadamard), pk);
  }
  return ql;
}

QuantizedLinear ImportedModel::load_fpq(const std::string& m) const {
  const auto fid = info_.format;
  const auto& sp = format::spec(fid);
  const std::string pk = m + ".qweight";
  const auto& pti = files_.info(pk);
  if (pti.shape.size() != 2)
    throw Error(ErrorKind::kInput, "expected a 2-D tensor, got shape " + shape_str(pti.shape), pk);
  const int64_t rows = pti.shape[0], cols = pti.shape[1] * 2;
  if (rows <= 0 || cols <= 0 || cols % sp.group_size != 0 || cols % fpq_matrix_size_ != 0)
    throw Error(ErrorKind::kInput,
                "shape " + shape_str(pti.shape) + " gives in_features " + std::to_string(cols) +
                    ", not a positive multiple of the group size and of hadamard_group_size",
                pk);
  const int64_t groups = cols / sp.group_size;
  need(files_, pk, io::DType::kU8, {rows, cols / 2});
  QuantizedLinear ql;
  ql.name = m;
  ql.hadamard = info_.hadamard;
  auto& q = ql.q;
  q.format = fid;
  q.rows = rows;
  q.cols = cols;
  q.codes = format::unpack_nibbles(files_.data(pk), rows, cols);
  q.scales.format = fid;
  q.scales.rows = rows;
  q.scales.groups = groups;
  const std::string sn = m + ".scales";
  need(files_, sn, io::DType::kU8, {rows, groups});
  const uint8_t* b = files_.data(sn);
  q.scales.codes.assign(b, b + rows * groups);
  check_scale_codes(fid, q.scales.codes, sn);
  const float wgs = read_scalar_f32(files_, m + ".weight_global_scale");
  const float ags = read_scalar_f32(files_, m + ".act_global_scale");
  if (fid == format::FormatId::kNVFP4) {
    q.scales.global_scale = wgs;
    ql.input_global_scale = ags;
  } else {
    if (wgs != 1.0f)
      throw Error(ErrorKind::kInput,
                  "MXFP4 weight_global_scale is " + std::to_string(wgs) +
                      "; fp4q reads only 1.0 (dequant = code * 2^(byte-127) exactly). FP-Quant's "
                      "own checkpoints use 3.0 (group scale 2^E/3), which fp4q's MXFP4 cannot hold",
                  m + ".weight_global_scale");
    if (ags != 3.0f)
      throw Error(ErrorKind::kInput, "MXFP4 act_global_scale is " + std::to_string(ags) + ", expected 3.0",
                  m + ".act_global_scale");
    q.scales.global_scale = 1.0f;
  }
  q.scales.values = scale_values_from_codes(fid, q.scales.codes.data(), q.scales.codes.size(),
                                            q.scales.global_scale);
  check_scale_range(fid, q.scales.values, q.scales.codes, sn);
  for (const char* mat_name : {".forward_hadamard_matrix", ".backward_hadamard_matrix"}) {
    const std::string tn = m + mat_name;
    const auto mat = read_matrix_f32(files_, tn, fpq_matrix_size_);
    if (detect_block(mat, fpq_matrix_size_) != info_.hadamard)
      throw Error(ErrorKind::kInput,
                  "rotation differs from the model's (block " + std::to_string(info_.hadamard) +
                      ", read from " + modules_.front() + ".forward_hadamard_matrix)",
                  tn);
  }
  return ql;
}

}  // namespace fp4q::exporter
