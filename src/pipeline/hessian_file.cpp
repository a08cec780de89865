#include "fp4q/pipeline/hessian_file.h"

#include <cmath>
#include <cstring>

#include "fp4q/core/error.h"

namespace fp4q::pipeline {

namespace {
bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}
}  // namespace

std::string hessian_key_module(const std::string& module) {
  // Phi-3's fused qkv_proj / gate_up_proj read the Hessian of their input group too.
  for (const char* from : {"self_attn.k_proj", "self_attn.v_proj", "self_attn.qkv_proj"})
    if (ends_with(module, from)) return module.substr(0, module.size() - std::strlen(from)) + "self_attn.q_proj";
  for (const char* from : {"mlp.up_proj", "mlp.gate_up_proj"})
    if (ends_with(module, from)) return module.substr(0, module.size() - std::strlen(from)) + "mlp.gate_proj";
  return module;
}

HessianFile HessianFile::open(const std::string& path) {
  return from_safetensors(io::SafetensorsFile::open(path));
}

HessianFile HessianFile::from_safetensors(io::SafetensorsFile f) {
  const auto& md = f.metadata();
  if (!md.contains("format") || md["format"] != "fp4q-hessians")
    throw Error(ErrorKind::kInput, "not an fp4q Hessian file (__metadata__.format != \"fp4q-hessians\")",
                f.path(), "create one with `fp4q hessians MODEL OUT.safetensors`");
  return HessianFile(std::move(f));
}

std::vector<float> HessianFile::read(const std::string& module, int64_t in, int64_t* samples) const {
  const std::string key = hessian_key_module(module);
  const auto* h = f_.find(key + ".hessian");
  const auto* n = f_.find(key + ".hessian_samples");
  if (!h || !n)
    throw Error(ErrorKind::kInput, "no Hessian for " + module + " (looked for " + key + ".hessian)",
                f_.path(), "was the file made for this model?");
  if (h->dtype != io::DType::kF32 || h->shape != std::vector<int64_t>{in, in})
    throw Error(ErrorKind::kInput,
                "expected F32 [" + std::to_string(in) + ", " + std::to_string(in) + "]", f_.path() + ": " + h->name);
  if (n->dtype != io::DType::kI64 || n->numel() != 1)
    throw Error(ErrorKind::kInput, "expected I64 [1]", f_.path() + ": " + n->name);
  int64_t cnt;
  std::memcpy(&cnt, f_.data(*n), 8);
  if (cnt <= 0)
    throw Error(ErrorKind::kInput, "sample count is " + std::to_string(cnt) + ", expected >= 1",
                f_.path() + ": " + n->name, "the file is corrupt; recreate it with `fp4q hessians`");
  if (samples) *samples = cnt;
  std::vector<float> H = f_.read_f32(*h);
  // H = 2/N · Σ x xᵀ: finite, with a non-negative diagonal. Anything else is a corrupt file,
  // reported here by name rather than as a numerical failure of the layer's solve.
  for (int64_t i = 0; i < in; ++i)
    for (int64_t j = 0; j < in; ++j) {
      const float v = H[static_cast<size_t>(i * in + j)];
      if (!std::isfinite(v) || (i == j && v < 0.0f))
        throw Error(ErrorKind::kInput,
                    "entry [" + std::to_string(i) + ", " + std::to_string(j) + "] is " +
                        std::to_string(v) + (i == j ? " (a diagonal entry must be finite and >= 0)"
                                                    : " (must be finite)"),
                    f_.path() + ": " + h->name,
                    "the file is corrupt; recreate it with `fp4q hessians`");
    }
  return H;
}

}  // namespace fp4q::pipeline
