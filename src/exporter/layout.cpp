// src/exporter/layout.cpp — shared helpers of the on-disk layouts (see layout.h).
#include "fp4q/exporter/layout.h"

#include <cctype>
#include <cmath>
#include <cstring>

#include "fp4q/core/error.h"
#include "fp4q/core/half.h"
#include "fp4q/core/parallel.h"

namespace fp4q::exporter {

const char* export_kind_name(ExportKind k) {
  switch (k) {
    case ExportKind::kCompressedTensors: return "compressed-tensors";
    case ExportKind::kFpQuantReal: return "fp-quant";
    case ExportKind::kFpQuantPseudo: return "fp-quant-pseudo";
    case ExportKind::kDequant: return "dequant";
  }
  return "?";
}

ExportKind parse_export_kind(const std::string& s) {
  if (s == "compressed-tensors" || s == "ct") return ExportKind::kCompressedTensors;
  if (s == "fp-quant" || s == "fp-quant-real") return ExportKind::kFpQuantReal;
  if (s == "fp-quant-pseudo") return ExportKind::kFpQuantPseudo;
  if (s == "dequant") return ExportKind::kDequant;
  throw Error(ErrorKind::kUsage, "unknown output layout '" + s + "'", "--export",
              "valid layouts: compressed-tensors, fp-quant, fp-quant-pseudo, dequant");
}

const char* activations_name(Activations a) { return a == Activations::kFp4 ? "fp4" : "none"; }

static bool is_pow2(int b) { return b >= 1 && (b & (b - 1)) == 0; }

std::vector<float> sylvester_pm1(int b) {
  if (!is_pow2(b))
    throw Error(ErrorKind::kUsage,
                "Hadamard block size must be a power of two, got " + std::to_string(b));
  std::vector<float> h(static_cast<size_t>(b) * b);
  for (int i = 0; i < b; ++i)
    for (int j = 0; j < b; ++j) h[static_cast<size_t>(i) * b + j] = (__builtin_popcount(i & j) & 1) ? -1.0f : 1.0f;
  return h;
}

std::vector<float> fpquant_matrix(int g, int hadamard) {
  const int h = hadamard <= 1 ? 1 : hadamard;
  if (!is_pow2(h) || g <= 0 || g % h != 0)
    throw Error(ErrorKind::kInternal, "fp-quant matrix: size " + std::to_string(g) +
                                          " is not a multiple of the rotation block " +
                                          std::to_string(h));
  std::vector<float> m(static_cast<size_t>(g) * g, 0.0f);
  const double inv = 1.0 / std::sqrt(static_cast<double>(h));
  const float v = static_cast<float>(inv);
  for (int blk = 0; blk < g / h; ++blk)
    for (int i = 0; i < h; ++i)
      for (int j = 0; j < h; ++j) {
        const float s = (__builtin_popcount(i & j) & 1) ? -v : v;
        m[static_cast<size_t>(blk * h + i) * g + blk * h + j] = s;
      }
  return m;
}

std::vector<std::string> fused_siblings(const std::string& module) {
  static const std::vector<std::vector<std::string>> kGroups = {
      {"q_proj", "k_proj", "v_proj"}, {"gate_proj", "up_proj"}, {"w1", "w3"}};
  const size_t dot = module.rfind('.');
  const std::string prefix = dot == std::string::npos ? "" : module.substr(0, dot + 1);
  const std::string leaf = dot == std::string::npos ? module : module.substr(dot + 1);
  for (const auto& g : kGroups) {
    bool in = false;
    for (const auto& l : g) in = in || l == leaf;
    if (!in) continue;
    std::vector<std::string> out;
    for (const auto& l : g)
      if (l != leaf) out.push_back(prefix + l);
    return out;
  }
  return {};
}

bool is_moe_expert_module(const std::string& module) {
  // "...experts.<digits>.<leaf>" with a non-empty leaf
  size_t pos = 0;
  while ((pos = module.find("experts.", pos)) != std::string::npos) {
    const bool starts = pos == 0 || module[pos - 1] == '.';
    size_t i = pos + 8, d = i;
    while (d < module.size() && module[d] >= '0' && module[d] <= '9') ++d;
    if (starts && d > i && d + 1 < module.size() && module[d] == '.') return true;
    pos = i;
  }
  return false;
}

std::vector<float> scale_values_from_codes(format::FormatId id, const uint16_t* codes, size_t n,
                                           float global_scale) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i)
    v[i] = codes[i] == 0 ? 0.0f : format::scale_value(id, codes[i], global_scale);
  return v;
}

std::optional<io::DType> config_dtype(const nlohmann::json& config) {
  for (const char* key : {"torch_dtype", "dtype"}) {
    auto it = config.find(key);
    if (it == config.end() || !it->is_string()) continue;
    const std::string s = it->get<std::string>();
    if (s == "float32") return io::DType::kF32;
    if (s == "bfloat16") return io::DType::kBF16;
    if (s == "float16") return io::DType::kF16;
  }
  return std::nullopt;
}

io::DType parse_float_dtype(const std::string& name) {
  std::string s = name;  // case-insensitive: "BF16" (the safetensors tag) works too
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (s == "f32" || s == "float32" || s == "fp32") return io::DType::kF32;
  if (s == "f16" || s == "float16" || s == "fp16" || s == "half") return io::DType::kF16;
  if (s == "bf16" || s == "bfloat16") return io::DType::kBF16;
  throw Error(ErrorKind::kUsage, "unknown floating dtype '" + name + "'", "--dtype",
              "valid: bf16, f16, f32");
}

const char* torch_dtype_name(io::DType d) {
  switch (d) {
    case io::DType::kF32: return "float32";
    case io::DType::kF16: return "float16";
    case io::DType::kBF16: return "bfloat16";
    default: break;
  }
  throw Error(ErrorKind::kInternal, std::string("not a floating model dtype: ") + io::dtype_tag(d));
}

static void check_rot(int64_t cols, int h) {
  if (!is_pow2(h) || cols % h != 0)
    throw Error(ErrorKind::kInput, "cannot undo a rotation of block " + std::to_string(h) +
                                       " on " + std::to_string(cols) + " columns");
}

void unrotate_rows(const float* w, float* out, int64_t rows, int64_t cols, int hadamard) {
  if (hadamard <= 1) {
    if (out != w) std::memmove(out, w, sizeof(float) * static_cast<size_t>(rows * cols));
    return;
  }
  const int h = hadamard;
  check_rot(cols, h);
  const double inv_div = std::sqrt(static_cast<double>(h));
  parallel_for(rows, [&](long r) {
    std::vector<double> buf(static_cast<size_t>(h));
    for (int64_t b0 = 0; b0 < cols; b0 += h) {
      const float* x = w + r * cols + b0;
      for (int i = 0; i < h; ++i) buf[i] = x[i];
      // In-place Walsh–Hadamard butterfly in natural (Sylvester) order: buf <- buf · H_h.
      for (int len = 1; len < h; len <<= 1)
        for (int i = 0; i < h; i += 2 * len)
          for (int j = i; j < i + len; ++j) {
            const double a = buf[j], b = buf[j + len];
            buf[j] = a + b;
            buf[j + len] = a - b;
          }
      float* y = out + r * cols + b0;
      for (int i = 0; i < h; ++i) y[i] = static_cast<float>(buf[i] / inv_div);
    }
  });
}

void unrotate_rows_ref(const float* w, float* out, int64_t rows, int64_t cols, int hadamard) {
  if (hadamard <= 1) {
    std::memmove(out, w, sizeof(float) * static_cast<size_t>(rows * cols));
    return;
  }
  const int h = hadamard;
  check_rot(cols, h);
  const std::vector<float> H = sylvester_pm1(h);
  std::vector<float> tmp(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b0 = 0; b0 < cols; b0 += h)
      for (int j = 0; j < h; ++j) {
        double s = 0.0;
        for (int i = 0; i < h; ++i) s += static_cast<double>(w[r * cols + b0 + i]) * H[static_cast<size_t>(i) * h + j];
        tmp[b0 + j] = static_cast<float>(s / std::sqrt(static_cast<double>(h)));
      }
    std::memcpy(out + r * cols, tmp.data(), sizeof(float) * static_cast<size_t>(cols));
  }
}

bool is_bf16_exact(float f) { return (float_to_bits(f) & 0xffffu) == 0; }

}  // namespace fp4q::exporter
