// src/exporter/exporter.cpp — streaming writer of the four output layouts (docs/FORMAT.md).
#include "fp4q/exporter/exporter.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "fp4q/core/error.h"
#include "fp4q/core/half.h"
#include "fp4q/core/log.h"
#include "fp4q/io/writer.h"

namespace fp4q::exporter {

namespace fs = std::filesystem;
using nlohmann::json;
using ojson = nlohmann::ordered_json;

namespace {

// The compressed-tensors release whose config layout this mirrors (informative only: no loader
// compares it).
constexpr const char* kCtVersion = "0.20.0";
// Source files larger than this are not copied (they would be weights in another format).
constexpr uint64_t kMaxCopiedFileBytes = 128ull << 20;

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

int norm_hadamard(int h) { return h <= 1 ? 0 : h; }

std::string f2s(float f) {
  std::ostringstream o;
  o.precision(9);
  o << f;
  return o.str();
}

// fp-quant hadamard_group_size for this model: the stored matrix size (see FORMAT.md).
int fpquant_group_size(const QuantizedModelInfo& info) {
  const int h = norm_hadamard(info.hadamard);
  const int gmin = info.format == format::FormatId::kNVFP4 ? 16 : 32;
  const int g = std::max(h, gmin);
  if (g > 128)
    throw Error(ErrorKind::kUsage,
                "the fp-quant layout supports rotation blocks up to 128 (hadamard_group_size in "
                "{16,32,64,128} for nvfp4, {32,64,128} for mxfp4), got " + std::to_string(h),
                "--hadamard", "use --hadamard 128 or smaller, or --export compressed-tensors");
  return g;
}

json ct_weight_args(format::FormatId f) {
  const auto& s = format::spec(f);
  json a = json::object();
  a["num_bits"] = 4;
  a["type"] = f == format::FormatId::kINT4 ? "int" : "float";
  a["symmetric"] = true;
  a["strategy"] = f == format::FormatId::kNVFP4 ? "tensor_group" : "group";
  a["group_size"] = s.group_size;
  a["dynamic"] = false;
  a["actorder"] = nullptr;
  return a;
}

json ct_input_args(format::FormatId f) {
  const auto& s = format::spec(f);
  json a = json::object();
  a["num_bits"] = 4;
  a["type"] = "float";
  a["symmetric"] = true;
  a["strategy"] = f == format::FormatId::kNVFP4 ? "tensor_group" : "group";
  a["group_size"] = s.group_size;
  if (f == format::FormatId::kNVFP4) a["dynamic"] = "local"; else a["dynamic"] = true;
  return a;
}

const char* ct_format_name(format::FormatId f) {
  switch (f) {
    case format::FormatId::kNVFP4: return "nvfp4-pack-quantized";
    case format::FormatId::kMXFP4: return "mxfp4-pack-quantized";
    case format::FormatId::kINT4: return "pack-quantized";
    case format::FormatId::kMXFP4Fit: break;  // refused by check_combination
  }
  return "?";
}

void check_combination(const QuantizedModelInfo& info, ExportKind kind) {
  const bool fpq = kind == ExportKind::kFpQuantReal || kind == ExportKind::kFpQuantPseudo;
  if (info.format == format::FormatId::kMXFP4Fit) {
    if (kind != ExportKind::kDequant)
      throw Error(ErrorKind::kUsage,
                  "mxfp4-fit (MXFP4 with per-tensor fitted scales) has no runtime layout: no runtime reads it",
                  "--export", "use --export dequant (plain weights; evaluate with fp4q eval)");
    if (info.activations == Activations::kFp4)
      throw Error(ErrorKind::kUsage, "mxfp4-fit is weight-only here (its dequant export cannot carry FP4 activations)",
                  "--activations", "use --activations none with mxfp4-fit");
  }
  if (fpq && info.format == format::FormatId::kINT4)
    throw Error(ErrorKind::kUsage, "the fp-quant layout has no INT4 format (nvfp4/mxfp4 only)",
                "--export", "use --export compressed-tensors (pack-quantized) or dequant for int4");
  if (kind == ExportKind::kCompressedTensors && info.format == format::FormatId::kINT4 &&
      info.activations == Activations::kFp4)
    throw Error(ErrorKind::kUsage,
                "compressed-tensors pack-quantized INT4 is weight-only; FP4 activations cannot be "
                "declared for it",
                "--activations", "use --activations none with int4");
  const int h = norm_hadamard(info.hadamard);
  if (h != 0 && (h & (h - 1)) != 0)
    throw Error(ErrorKind::kUsage, "rotation block must be a power of two, got " +
                                       std::to_string(info.hadamard), "--hadamard");
  if (fpq) fpquant_group_size(info);
}

std::vector<uint8_t> f32_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

}  // namespace

std::vector<std::string> ignore_list(const QuantizedModelInfo& info,
                                     const std::vector<std::string>& quantized_modules) {
  std::vector<std::string> out;
  std::set<std::string> seen;
  const bool lm_head_quantized =
      std::find(quantized_modules.begin(), quantized_modules.end(), "lm_head") !=
      quantized_modules.end();
  if (!lm_head_quantized) {
    out.push_back("lm_head");
    seen.insert("lm_head");
  }
  for (const auto& n : info.ignored_linears)
    if (seen.insert(n).second) out.push_back(n);
  return out;
}

nlohmann::json quantization_config_json(const QuantizedModelInfo& info, ExportKind kind,
                                        const std::vector<std::string>& quantized_modules) {
  check_combination(info, kind);
  const auto ignore = ignore_list(info, quantized_modules);
  const int h = norm_hadamard(info.hadamard);
  json qc = json::object();
  if (kind == ExportKind::kDequant) return qc;
  if (kind == ExportKind::kCompressedTensors) {
    const char* fmt = ct_format_name(info.format);
    json group = json::object();
    group["targets"] = json::array({"Linear"});
    group["weights"] = ct_weight_args(info.format);
    group["input_activations"] =
        info.activations == Activations::kFp4 ? ct_input_args(info.format) : json(nullptr);
    group["output_activations"] = nullptr;
    group["format"] = fmt;
    qc["config_groups"] = json{{"group_0", group}};
    qc["format"] = fmt;
    qc["global_compression_ratio"] = nullptr;
    qc["ignore"] = ignore;
    qc["kv_cache_scheme"] = nullptr;
    qc["quant_method"] = "compressed-tensors";
    qc["quantization_status"] = "compressed";
    qc["sparsity_config"] = json::object();
    json tc = json::object();
    if (h != 0) {
      // MoE experts are stored unrotated (layout.h: is_moe_expert_module): the transform skips them.
      json tignore = ignore;
      if (std::any_of(quantized_modules.begin(), quantized_modules.end(), is_moe_expert_module))
        tignore.push_back(kExpertTransformIgnore);
      json apply_in = {{"targets", {"Linear"}}, {"location", "input"}, {"inverse", false},
                       {"ignore", tignore}};
      json apply_w = {{"targets", {"Linear"}}, {"location", "weight_input"}, {"inverse", true},
                      {"ignore", tignore}};
      json v = {{"type", "hadamard"},   {"head_dim", h},
                {"randomize", false},   {"requires_grad", false},
                {"precision", "torch.float32"}, {"apply", json::array({apply_in, apply_w})}};
      tc["config_groups"] = json{{"v", v}};
    }
    qc["transform_config"] = tc;
    qc["version"] = kCtVersion;
    return qc;
  }
  // fp-quant (real or pseudo)
  qc["quant_method"] = "fp_quant";
  qc["forward_dtype"] = info.format == format::FormatId::kNVFP4 ? "nvfp4" : "mxfp4";
  qc["forward_method"] = "abs_max";
  qc["backward_dtype"] = "bf16";
  qc["store_master_weights"] = false;
  qc["hadamard_group_size"] = fpquant_group_size(info);
  qc["pseudoquantization"] = kind == ExportKind::kFpQuantPseudo;
  qc["transform_init"] = h != 0 ? "hadamard" : "identity";
  qc["modules_to_not_convert"] = ignore;
  return qc;
}

// ------------------------------------------------------------------------------------------------

struct Exporter::Impl {
  bool begun = false, finished = false;
  ExportKind kind = ExportKind::kCompressedTensors;
  QuantizedModelInfo info;
  ExportOptions opt;
  std::string source_dir, out_dir;
  std::unique_ptr<io::ModelFiles> source;
  ojson config;
  io::DType model_dtype = io::DType::kF32;
  std::unique_ptr<io::ShardedWriter> writer;
  int h = 0;        // rotation block (0 = none)
  int fpq_g = 0;    // fp-quant stored matrix size
  std::vector<uint8_t> ct_matrix, fpq_matrix;  // F32 bytes, built once
  std::vector<std::string> quantized;
  std::unordered_set<std::string> quantized_set, passthrough_set, ignored_set;
  // fused group key -> (value, first module) for weight / input global scales
  std::unordered_map<std::string, std::pair<float, std::string>> fused_wgs, fused_igs;

  io::DType dequant_dtype_for(const std::string& module) const {
    if (opt.dtype) return *opt.dtype;
    const std::string w = module + ".weight";
    if (source && source->has(w)) {
      io::DType d = source->info(w).dtype;
      if (io::is_float_dtype(d)) return d;
    }
    return model_dtype;
  }

  std::string fused_key(const std::string& module) const {
    auto sib = fused_siblings(module);
    if (sib.empty()) return {};
    std::vector<std::string> all = sib;
    all.push_back(module);
    std::sort(all.begin(), all.end());
    return all.front();  // stable key for the whole group
  }

  void check_fused_equal(std::unordered_map<std::string, std::pair<float, std::string>>& map,
                         const std::string& module, float v, const char* field) {
    const std::string key = fused_key(module);
    if (key.empty()) return;
    auto it = map.find(key);
    if (it == map.end()) {
      map.emplace(key, std::make_pair(v, module));
      return;
    }
    if (float_to_bits(it->second.first) != float_to_bits(v))
      throw Error(ErrorKind::kInput,
                  std::string(field) + " " + f2s(v) + " differs from " + f2s(it->second.first) +
                      " of fused shard " + it->second.second +
                      " (vLLM fuses q/k/v and gate/up into one GEMM with ONE global scale)",
                  module,
                  "quantize fused shards with a shared global scale (the pipeline passes the "
                  "group's minimum to format::choose_scales)");
  }

  void add(io::OutTensor t) { writer->add(std::move(t)); }
  void add_raw(const std::string& name, io::DType d, std::vector<int64_t> shape,
               const void* bytes, uint64_t n) {
    writer->add_raw(name, d, shape, bytes, n);
  }
  void add_scalar_f32(const std::string& name, float v) {
    add_raw(name, io::DType::kF32, {1}, &v, 4);
  }

  void validate(const QuantizedLinear& ql) const;
  void write_ct(const QuantizedLinear& ql);
  void write_fpq(const QuantizedLinear& ql, bool pseudo);
  void write_dequant(const QuantizedLinear& ql);
};

Exporter::Exporter() : impl_(std::make_unique<Impl>()) {}
Exporter::~Exporter() = default;

const std::vector<std::string>& Exporter::quantized_modules() const { return impl_->quantized; }

void Exporter::begin(const std::string& source_dir, const QuantizedModelInfo& info,
                     ExportKind kind, const std::string& out_dir, const ExportOptions& options) {
  Impl& m = *impl_;
  if (m.begun) throw Error(ErrorKind::kInternal, "Exporter::begin called twice");
  check_combination(info, kind);
  if (options.dtype && !io::is_float_dtype(*options.dtype))
    throw Error(ErrorKind::kUsage,
                std::string("dequantised weights must be F32, F16 or BF16, got ") +
                    io::dtype_tag(*options.dtype), "--dtype");
  if (!fs::is_directory(out_dir))
    throw Error(ErrorKind::kIo, "output directory does not exist", out_dir);
  m.kind = kind;
  m.info = info;
  m.info.hadamard = norm_hadamard(info.hadamard);
  m.h = m.info.hadamard;
  m.opt = options;
  m.source_dir = source_dir;
  m.out_dir = out_dir;
  for (const auto& n : info.ignored_linears) m.ignored_set.insert(n);

  const std::string cfg_path = (fs::path(source_dir) / "config.json").string();
  {
    std::ifstream f(cfg_path);
    if (!f) throw Error(ErrorKind::kInput, "config.json not found in the source model", cfg_path);
    try {
      m.config = ojson::parse(f);
    } catch (const std::exception& e) {
      throw Error(ErrorKind::kInput, std::string("config.json is not valid JSON: ") + e.what(),
                  cfg_path);
    }
    if (!m.config.is_object())
      throw Error(ErrorKind::kInput, "config.json is not a JSON object", cfg_path);
  }
  m.source = std::make_unique<io::ModelFiles>(io::ModelFiles::open(source_dir));
  {
    json plain = json::parse(m.config.dump());
    auto d = config_dtype(plain);
    if (d) {
      m.model_dtype = *d;
    } else {  // most common floating dtype of the source tensors
      std::map<io::DType, uint64_t> bytes;
      for (const auto& n : m.source->names()) {
        const auto& ti = m.source->info(n);
        if (io::is_float_dtype(ti.dtype)) bytes[ti.dtype] += ti.nbytes;
      }
      uint64_t best = 0;
      for (const auto& [d2, b] : bytes)
        if (b > best) { best = b; m.model_dtype = d2; }
    }
  }

  if (m.h != 0) {
    if (kind == ExportKind::kCompressedTensors) m.ct_matrix = f32_bytes(sylvester_pm1(m.h));
  }
  if (kind == ExportKind::kFpQuantReal || kind == ExportKind::kFpQuantPseudo) {
    m.fpq_g = fpquant_group_size(m.info);
    m.fpq_matrix = f32_bytes(fpquant_matrix(m.fpq_g, m.h));
    if (info.activations == Activations::kNone)
      spdlog::warn("fp-quant layout: the fp_quant runtime always quantizes activations to {} "
                   "(W4A4); this weight-only model will run as W4A4 there",
                   info.format == format::FormatId::kNVFP4 ? "NVFP4" : "MXFP4");
  }

  json meta = json::object();
  meta["format"] = "pt";
  meta["fp4q_version"] = options.fp4q_version;
  meta["fp4q_layout"] = export_kind_name(kind);
  meta["fp4q_format"] = format::spec(info.format).name;
  meta["fp4q_method"] = info.method;
  meta["fp4q_scales"] = info.scales;
  meta["fp4q_hadamard"] = std::to_string(m.h);
  meta["fp4q_activations"] = activations_name(info.activations);
  m.writer = std::make_unique<io::ShardedWriter>(out_dir, options.max_shard_bytes, meta);
  m.begun = true;
}

void Exporter::Impl::validate(const QuantizedLinear& ql) const {
  const std::string& n = ql.name;
  const auto& q = ql.q;
  const auto& sp = format::spec(info.format);
  auto fail = [&](const std::string& what) { throw Error(ErrorKind::kInput, what, n); };
  if (n.empty()) throw Error(ErrorKind::kInput, "quantized linear with an empty module name");
  if (q.format != info.format || q.scales.format != info.format)
    fail(std::string("format ") + format::spec(q.format).name + " differs from the model's " +
         sp.name);
  const bool expert = is_moe_expert_module(n);
  if ((kind == ExportKind::kFpQuantReal || kind == ExportKind::kFpQuantPseudo) && expert)
    throw Error(ErrorKind::kUsage,
                "the fp-quant layouts cannot hold MoE experts (fp_quant converts nn.Linear modules; "
                "transformers 5 stores experts as fused 3-D parameters)",
                n, "use --export compressed-tensors (vLLM's fused-MoE loaders) or --export dequant");
  const int want_h = expert ? 0 : h;  // experts are never rotated (layout.h)
  if (norm_hadamard(ql.hadamard) != want_h)
    fail("rotation block " + std::to_string(ql.hadamard) + " differs from the model's " +
         std::to_string(want_h) + (expert ? " (MoE experts are stored unrotated)" : ""));
  if (q.rows <= 0 || q.cols <= 0 || q.cols % sp.group_size != 0)
    fail("shape [" + std::to_string(q.rows) + " x " + std::to_string(q.cols) +
         "]: in_features must be a positive multiple of the group size " +
         std::to_string(sp.group_size));
  if (want_h != 0 && q.cols % want_h != 0)
    fail("in_features " + std::to_string(q.cols) + " is not a multiple of the rotation block " +
         std::to_string(want_h));
  if ((kind == ExportKind::kFpQuantReal || kind == ExportKind::kFpQuantPseudo) &&
      q.cols % fpq_g != 0)
    fail("in_features " + std::to_string(q.cols) + " is not a multiple of hadamard_group_size " +
         std::to_string(fpq_g));
  const int64_t groups = q.cols / sp.group_size;
  if (static_cast<int64_t>(q.codes.size()) != q.rows * q.cols)
    fail("codes has " + std::to_string(q.codes.size()) + " entries, expected rows*cols = " +
         std::to_string(q.rows * q.cols));
  if (q.scales.rows != q.rows || q.scales.groups != groups ||
      static_cast<int64_t>(q.scales.codes.size()) != q.rows * groups ||
      static_cast<int64_t>(q.scales.values.size()) != q.rows * groups)
    fail("scales are [" + std::to_string(q.scales.rows) + " x " + std::to_string(q.scales.groups) +
         "] with " + std::to_string(q.scales.codes.size()) + " codes, expected [" +
         std::to_string(q.rows) + " x " + std::to_string(groups) + "]");
  for (size_t i = 0; i < q.codes.size(); ++i)
    if (q.codes[i] > 15) fail("element code " + std::to_string(q.codes[i]) + " > 15 at index " + std::to_string(i));
  for (size_t i = 0; i < q.scales.codes.size(); ++i) {
    const uint16_t c = q.scales.codes[i];
    bool ok = true;
    switch (info.format) {
      case format::FormatId::kNVFP4: ok = c <= 0x7e; break;   // finite, non-negative E4M3
      case format::FormatId::kMXFP4: ok = c <= 0xfe; break;   // E8M0, 0xff = NaN
      case format::FormatId::kINT4: ok = c <= 0x7bff; break;  // finite, non-negative F16
      case format::FormatId::kMXFP4Fit: ok = c <= 0xff; break;  // 8-bit code of the tensor's grid
    }
    if (!ok) fail("scale code 0x" + [&] { std::ostringstream o; o << std::hex << c; return o.str(); }() +
                  " at group " + std::to_string(i) + " is NaN, infinite or negative");
  }
  const float gs = info.format == format::FormatId::kNVFP4 ? q.scales.global_scale : 1.0f;
  if (info.format == format::FormatId::kNVFP4 && !(std::isfinite(gs) && gs > 0.0f))
    fail("weight global scale " + f2s(gs) + " is not finite and > 0");
  std::vector<float> vals;
  if (info.format == format::FormatId::kMXFP4Fit) {
    if (q.scales.fit_steps < 1) fail("mxfp4-fit scales without a fitted grid (fit_steps < 1)");
    for (uint16_t c : q.scales.codes) vals.push_back(format::fit_scale_value(c, q.scales.fit_beta, q.scales.fit_steps));
  } else {
    vals = scale_values_from_codes(info.format, q.scales.codes.data(), q.scales.codes.size(), gs);
  }
  for (size_t i = 0; i < vals.size(); ++i)
    if (float_to_bits(vals[i]) != float_to_bits(q.scales.values[i]))
      throw Error(ErrorKind::kInternal,
                  "scale value " + f2s(q.scales.values[i]) + " at group " + std::to_string(i) +
                      " is not what its stored code decodes to (" + f2s(vals[i]) + ")",
                  n);
}

void Exporter::add_quantized(const QuantizedLinear& ql) {
  Impl& m = *impl_;
  if (!m.begun || m.finished)
    throw Error(ErrorKind::kInternal, "Exporter::add_quantized outside begin()/finish()");
  m.validate(ql);
  const std::string& n = ql.name;
  if (m.quantized_set.count(n))
    throw Error(ErrorKind::kInput, "module quantized twice", n);
  if (m.ignored_set.count(n))
    throw Error(ErrorKind::kInput, "module is listed in ignored_linears but was quantized", n);
  if (m.passthrough_set.count(n + ".weight"))
    throw Error(ErrorKind::kInput,
                "the unquantized weight of this quantized module was also passed through", n + ".weight");
  const bool nv = m.info.format == format::FormatId::kNVFP4;
  const bool fpq = m.kind == ExportKind::kFpQuantReal || m.kind == ExportKind::kFpQuantPseudo;
  if (nv) {
    m.check_fused_equal(m.fused_wgs, n, ql.q.scales.global_scale, "weight_global_scale");
    if (fpq && !is_bf16_exact(ql.q.scales.global_scale))
      throw Error(ErrorKind::kInput,
                  "weight global scale " + f2s(ql.q.scales.global_scale) +
                      " is not exactly representable in bfloat16 (transformers casts fp-quant "
                      "buffers to bf16 on load, which would change every dequantised weight)",
                  n, "quantize with format::choose_scales, which rounds the global scale down to bf16");
    const bool need_act = fpq || m.info.activations == Activations::kFp4;
    if (need_act) {
      const float a = ql.input_global_scale;
      if (!(std::isfinite(a) && a > 0.0f))
        throw Error(ErrorKind::kUsage,
                    std::string("NVFP4 ") + (fpq ? "fp-quant" : "W4A4") +
                        " export needs a calibrated activation global scale "
                        "(input_global_scale = 2688 / amax of the rotated inputs); got " + f2s(a),
                    n, "calibrate with --activations fp4");
      if (fpq && !is_bf16_exact(a))
        throw Error(ErrorKind::kInput,
                    "activation global scale " + f2s(a) +
                        " is not exactly representable in bfloat16 (transformers casts it to bf16)",
                    n, "round the calibrated scale down to a bf16 value");
      m.check_fused_equal(m.fused_igs, n, a, "input_global_scale");
    }
  }
  switch (m.kind) {
    case ExportKind::kCompressedTensors: m.write_ct(ql); break;
    case ExportKind::kFpQuantReal: m.write_fpq(ql, false); break;
    case ExportKind::kFpQuantPseudo: m.write_fpq(ql, true); break;
    case ExportKind::kDequant: m.write_dequant(ql); break;
  }
  m.quantized.push_back(n);
  m.quantized_set.insert(n);
}

void Exporter::Impl::write_ct(const QuantizedLinear& ql) {
  const auto& q = ql.q;
  const std::string& n = ql.name;
  const int64_t groups = q.scales.groups;
  switch (info.format) {
    case format::FormatId::kNVFP4:
    case format::FormatId::kMXFP4: {
      auto packed = format::pack_nibbles(q.codes.data(), q.rows, q.cols);
      add_raw(n + ".weight_packed", io::DType::kU8, {q.rows, q.cols / 2}, packed.data(),
              packed.size());
      std::vector<uint8_t> sc(q.scales.codes.size());
      for (size_t i = 0; i < sc.size(); ++i) sc[i] = static_cast<uint8_t>(q.scales.codes[i]);
      const bool nv = info.format == format::FormatId::kNVFP4;
      add_raw(n + ".weight_scale", nv ? io::DType::kF8_E4M3 : io::DType::kU8, {q.rows, groups},
              sc.data(), sc.size());
      if (nv) {
        add_scalar_f32(n + ".weight_global_scale", q.scales.global_scale);
        if (info.activations == Activations::kFp4)
          add_scalar_f32(n + ".input_global_scale", ql.input_global_scale);
      }
      break;
    }
    case format::FormatId::kINT4: {
      // Offset binary (value + 8) nibbles, element 8j+k at bits [4k, 4k+4) of int32 word j,
      // little-endian: byte-for-byte the FP4 nibble packing of the codes XOR 8.
      std::vector<uint8_t> ob(q.codes.size());
      for (size_t i = 0; i < ob.size(); ++i) ob[i] = static_cast<uint8_t>((q.codes[i] & 0xF) ^ 0x8);
      auto packed = format::pack_nibbles(ob.data(), q.rows, q.cols);
      add_raw(n + ".weight_packed", io::DType::kI32, {q.rows, q.cols / 8}, packed.data(),
              packed.size());
      std::vector<uint8_t> sc(q.scales.codes.size() * 2);
      for (size_t i = 0; i < q.scales.codes.size(); ++i) {
        sc[2 * i] = static_cast<uint8_t>(q.scales.codes[i] & 0xff);
        sc[2 * i + 1] = static_cast<uint8_t>(q.scales.codes[i] >> 8);
      }
      add_raw(n + ".weight_scale", io::DType::kF16, {q.rows, groups}, sc.data(), sc.size());
      const int64_t shape[2] = {q.rows, q.cols};
      add_raw(n + ".weight_shape", io::DType::kI64, {2}, shape, sizeof(shape));
      break;
    }
    case format::FormatId::kMXFP4Fit:
      throw Error(ErrorKind::kInternal, "mxfp4-fit reached the compressed-tensors writer", n);
  }
  if (h != 0 && norm_hadamard(ql.hadamard) != 0)
    add_raw(n + ".v_input.weight", io::DType::kF32, {h, h}, ct_matrix.data(), ct_matrix.size());
}

void Exporter::Impl::write_fpq(const QuantizedLinear& ql, bool pseudo) {
  const auto& q = ql.q;
  const std::string& n = ql.name;
  const bool nv = info.format == format::FormatId::kNVFP4;
  if (pseudo) {
    std::vector<float> w(static_cast<size_t>(q.rows * q.cols));
    format::dequantize(q, w.data());
    add(io::make_tensor_from_f32(n + ".dqweight", {q.rows, q.cols}, w.data(), dequant_dtype_for(n)));
  } else {
    auto packed = format::pack_nibbles(q.codes.data(), q.rows, q.cols);
    add_raw(n + ".qweight", io::DType::kU8, {q.rows, q.cols / 2}, packed.data(), packed.size());
    std::vector<uint8_t> sc(q.scales.codes.size());
    for (size_t i = 0; i < sc.size(); ++i) sc[i] = static_cast<uint8_t>(q.scales.codes[i]);
    add_raw(n + ".scales", io::DType::kU8, {q.rows, q.scales.groups}, sc.data(), sc.size());
  }
  // MXFP4: fp4q's value is code * 2^(byte-127) exactly; the fp_quant runtime computes
  // code * 2^(byte-127) / weight_global_scale, so 1.0 is the exact conversion.
  add_scalar_f32(n + ".weight_global_scale", nv ? q.scales.global_scale : 1.0f);
  add_scalar_f32(n + ".act_global_scale", nv ? ql.input_global_scale : 3.0f);
  const int64_t g = fpq_g;
  add_raw(n + ".forward_hadamard_matrix", io::DType::kF32, {g, g}, fpq_matrix.data(), fpq_matrix.size());
  add_raw(n + ".backward_hadamard_matrix", io::DType::kF32, {g, g}, fpq_matrix.data(), fpq_matrix.size());
}

void Exporter::Impl::write_dequant(const QuantizedLinear& ql) {
  const auto& q = ql.q;
  std::vector<float> w(static_cast<size_t>(q.rows * q.cols));
  format::dequantize(q, w.data());
  unrotate_rows(w.data(), w.data(), q.rows, q.cols, norm_hadamard(ql.hadamard));
  add(io::make_tensor_from_f32(ql.name + ".weight", {q.rows, q.cols}, w.data(),
                               dequant_dtype_for(ql.name)));
}

void Exporter::add_passthrough(const std::string& name, const io::TensorInfo& info,
                               const uint8_t* bytes) {
  Impl& m = *impl_;
  if (!m.begun || m.finished)
    throw Error(ErrorKind::kInternal, "Exporter::add_passthrough outside begin()/finish()");
  if (ends_with(name, ".weight") && m.quantized_set.count(name.substr(0, name.size() - 7)))
    throw Error(ErrorKind::kInput,
                "the unquantized weight of a quantized module was passed through", name);
  m.passthrough_set.insert(name);
  if (m.kind == ExportKind::kDequant && m.opt.dtype && io::is_float_dtype(info.dtype) &&
      info.dtype != *m.opt.dtype) {
    std::vector<float> v(static_cast<size_t>(info.numel()));
    io::convert_to_f32(info.dtype, bytes, info.numel(), v.data(), name);
    m.add(io::make_tensor_from_f32(name, info.shape, v.data(), *m.opt.dtype));
    return;
  }
  m.writer->add_raw(name, info.dtype, info.shape, bytes, info.nbytes);
}

std::vector<std::string> Exporter::finish() {
  Impl& m = *impl_;
  if (!m.begun || m.finished) throw Error(ErrorKind::kInternal, "Exporter::finish called twice or before begin()");
  // ---- whole-model validation ----
  for (const auto& q : m.quantized)
    for (const auto& s : fused_siblings(q)) {
      if (m.ignored_set.count(s))
        throw Error(ErrorKind::kInput,
                    "fused shards disagree: " + q + " is quantized but " + s +
                        " is in ignored_linears (vLLM fuses q/k/v and gate/up and needs one "
                        "scheme for all shards)",
                    q, "ignore all shards of the group or none");
      if (m.passthrough_set.count(s + ".weight"))
        throw Error(ErrorKind::kInput,
                    "fused shards disagree: " + q + " is quantized but " + s +
                        ".weight was passed through unquantized and is not in ignored_linears",
                    s, "quantize all shards of the group or ignore all of them");
    }
  if (m.quantized.empty()) spdlog::warn("export: no quantized linear was added");
  m.finished = true;
  std::vector<std::string> files = m.writer->finish();
  m.writer.reset();

  // ---- config.json ----
  ojson cfg = m.config;
  cfg.erase("quantization_config");
  cfg.erase("compression_config");
  if (m.kind != ExportKind::kDequant) {
    json qc = quantization_config_json(m.info, m.kind, m.quantized);
    cfg["quantization_config"] = ojson::parse(qc.dump());
  }
  if (m.kind == ExportKind::kDequant && m.opt.dtype) {
    const char* dn = torch_dtype_name(*m.opt.dtype);
    bool set = false;
    for (const char* k : {"torch_dtype", "dtype"})
      if (cfg.contains(k)) { cfg[k] = dn; set = true; }
    if (!set) cfg["torch_dtype"] = dn;
  }
  ojson prov = ojson::object();
  prov["version"] = m.opt.fp4q_version;
  prov["layout"] = export_kind_name(m.kind);
  prov["format"] = format::spec(m.info.format).name;
  prov["method"] = m.info.method;
  prov["scales"] = m.info.scales;
  prov["hadamard"] = m.h;
  prov["activations"] = activations_name(m.info.activations);
  prov["quantized_linears"] = m.quantized.size();
  prov["ignored_linears"] = m.info.ignored_linears;
  cfg["fp4q"] = prov;
  io::write_file_atomic((fs::path(m.out_dir) / "config.json").string(), cfg.dump(2) + "\n");
  files.push_back("config.json");

  // ---- small non-weight files of the source directory ----
  std::vector<fs::path> entries;
  for (const auto& e : fs::directory_iterator(m.source_dir)) entries.push_back(e.path());
  std::sort(entries.begin(), entries.end());
  for (const auto& p : entries) {
    const std::string fn = p.filename().string();
    std::error_code ec;
    if (!fs::is_regular_file(p, ec) || fn.empty() || fn[0] == '.') continue;
    if (fn == "config.json" || ends_with(fn, ".safetensors") || ends_with(fn, ".safetensors.index.json") ||
        ends_with(fn, ".bin") || ends_with(fn, ".bin.index.json") || ends_with(fn, ".pt") ||
        ends_with(fn, ".pth") || ends_with(fn, ".ckpt") || ends_with(fn, ".gguf") ||
        ends_with(fn, ".h5") || ends_with(fn, ".msgpack") || ends_with(fn, ".onnx") ||
        ends_with(fn, ".part"))
      continue;
    if (std::find(files.begin(), files.end(), fn) != files.end()) continue;
    const auto size = fs::file_size(p, ec);
    if (ec || size > kMaxCopiedFileBytes) {
      spdlog::warn("export: not copying {} ({} bytes; larger than {} MiB)", p.string(), size,
                   kMaxCopiedFileBytes >> 20);
      continue;
    }
    io::copy_file(p.string(), (fs::path(m.out_dir) / fn).string());
    files.push_back(fn);
  }
  std::sort(files.begin(), files.end());
  spdlog::info("export ({}): {} quantized linears, {} passthrough tensors, {} files",
               export_kind_name(m.kind), m.quantized.size(), m.passthrough_set.size(), files.size());
  return files;
}

std::vector<std::string> export_model(const io::ModelFiles& source, const QuantizedModelInfo& info,
                                      const std::vector<QuantizedLinear>& linears, ExportKind kind,
                                      const std::string& out_dir, const ExportOptions& options) {
  Exporter ex;
  ex.begin(source.dir(), info, kind, out_dir, options);
  std::unordered_set<std::string> qw;
  for (const auto& l : linears) qw.insert(l.name + ".weight");
  for (const auto& n : source.names()) {
    if (qw.count(n)) continue;
    const auto& ti = source.info(n);
    ex.add_passthrough(n, ti, source.data(n));
  }
  for (const auto& l : linears) ex.add_quantized(l);
  return ex.finish();
}

}  // namespace fp4q::exporter
