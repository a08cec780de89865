#include "fp4q/pipeline/plan.h"

#include <algorithm>
#include <map>
#include <regex>
#include <tuple>

#include "fp4q/core/error.h"
#include "fp4q/transform/hadamard.h"

namespace fp4q::pipeline {

namespace {
constexpr const char* kSuffix[kNumProj] = {"self_attn.q_proj", "self_attn.k_proj",
                                           "self_attn.v_proj", "self_attn.o_proj",
                                           "mlp.gate_proj",    "mlp.up_proj",
                                           "mlp.down_proj"};
constexpr int kGroup[kNumProj] = {0, 0, 0, 1, 2, 2, 3};
}  // namespace

const char* proj_suffix(Proj p) { return kSuffix[static_cast<int>(p)]; }
int proj_input_group(Proj p) { return kGroup[static_cast<int>(p)]; }

Method parse_method(const std::string& s) {
  if (s == "rtn") return Method::kRtn;
  if (s == "gptq") return Method::kGptq;
  if (s == "mr-gptq") return Method::kMrGptq;
  throw Error(ErrorKind::kUsage, "unknown method '" + s + "'", "--method",
              "choose one of: rtn, gptq, mr-gptq");
}

const char* method_name(Method m) {
  switch (m) {
    case Method::kRtn: return "rtn";
    case Method::kGptq: return "gptq";
    case Method::kMrGptq: return "mr-gptq";
  }
  return "?";
}

QuantSettings resolve_settings(format::FormatId fmt, Method m, int hadamard,
                               const std::string& scales, bool act_order, double damp,
                               exporter::Activations acts, std::vector<std::string> ignore) {
  QuantSettings s;
  s.format = fmt;
  s.method = m;
  // MR-GPTQ rotates by the format's block (16 NVFP4, 32 MXFP4) as in the paper, except NVFP4 with
  // FP4 activations: there the rotation costs accuracy, measured on both evaluation models by KL
  // to the unquantized model (docs/issue9-notes.md §8; FP-Quant's own MR-GPTQ shows the same), so
  // that default is no rotation. An explicit --hadamard always wins.
  s.hadamard = hadamard >= 0 ? hadamard
               : m != Method::kMrGptq ? 0
               : (fmt == format::FormatId::kNVFP4 && acts == exporter::Activations::kFp4)
                   ? 0
                   : format::spec(fmt).default_hadamard;
  s.scales = !scales.empty() ? format::parse_scale_method(scales)
             : m == Method::kMrGptq ? format::ScaleMethod::kMse
                                    : format::ScaleMethod::kAbsmax;
  s.act_order = act_order;
  s.damp = damp;
  s.activations = acts;
  s.ignore = std::move(ignore);
  if (s.hadamard != 0 && (s.hadamard < 2 || !transform::is_power_of_two(s.hadamard)))
    throw Error(ErrorKind::kUsage,
                "rotation block must be 0 or a power of two >= 2, got " + std::to_string(s.hadamard),
                "--hadamard", "MR-GPTQ uses 16 for weight-only nvfp4 and 32 for mxfp4");
  if (!(damp > 0 && damp < 10))
    throw Error(ErrorKind::kUsage, "damping must be in (0, 10), got " + std::to_string(damp), "--damp");
  return s;
}

const LinearPlan* Plan::find(int layer, Proj p) const {
  for (const auto& l : linears)
    if (l.layer == layer && l.proj == p && l.expert < 0 && !l.router) return &l;
  return nullptr;
}

const LinearPlan* Plan::find_expert(int layer, int e, Proj p) const {
  for (const auto& l : linears)
    if (l.layer == layer && l.expert == e && l.proj == p) return &l;
  return nullptr;
}

int Plan::num_experts(int layer) const {
  int n = 0;
  for (const auto& l : linears)
    if (l.layer == layer && l.expert >= 0) n = std::max(n, l.expert + 1);
  return n;
}

int64_t Plan::num_quantized() const {
  return std::count_if(linears.begin(), linears.end(), [](const LinearPlan& l) { return l.quantize; });
}

std::vector<std::string> Plan::ignored_names() const {
  std::vector<std::string> out;
  for (const auto& l : linears)
    if (!l.quantize) out.push_back(l.name);
  return out;
}

Plan make_plan(const io::ModelFiles& files, const QuantSettings& settings) {
  Plan plan;
  plan.settings = settings;
  std::vector<std::regex> ignore;
  for (const auto& r : settings.ignore) {
    try {
      ignore.emplace_back(r, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      throw Error(ErrorKind::kUsage, "invalid regular expression '" + r + "': " + e.what(),
                  "--ignore");
    }
  }
  static const std::regex kName(
      R"(^model\.layers\.(\d+)\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj|self_attn\.qkv_proj|mlp\.gate_up_proj)\.weight$)");
  // MoE experts: Qwen3-MoE mlp.experts.E.{gate,up,down}_proj, Mixtral block_sparse_moe.experts.E.{w1,w3,w2}.
  static const std::regex kExpert(
      R"(^model\.layers\.(\d+)\.((?:mlp|block_sparse_moe)\.experts\.(\d+)\.(gate_proj|up_proj|down_proj|w1|w3|w2))\.weight$)");
  static const std::regex kRouter(R"(^model\.layers\.(\d+)\.(mlp\.gate|block_sparse_moe\.gate)\.weight$)");
  std::map<std::pair<int, int>, LinearPlan> found;
  std::map<std::tuple<int, int, int>, LinearPlan> experts;  // (layer, expert, proj)
  std::map<int, LinearPlan> routers;
  int max_layer = -1;
  for (const auto& name : files.names()) {
    std::smatch m;
    const bool dense = std::regex_match(name, m, kName);
    const bool expert = !dense && std::regex_match(name, m, kExpert);
    const bool router = !dense && !expert && std::regex_match(name, m, kRouter);
    if (!dense && !expert && !router) continue;
    LinearPlan lp;
    lp.layer = std::stoi(m[1].str());
    const std::string suffix = m[2].str();
    int p = 0;
    if (dense) {
      if (suffix == "self_attn.qkv_proj") {
        p = static_cast<int>(Proj::kQ);  // Phi-3: one fused Linear in the q/k/v slot
      } else if (suffix == "mlp.gate_up_proj") {
        p = static_cast<int>(Proj::kGate);  // Phi-3: one fused Linear in the gate/up slot
      } else {
        while (p < kNumProj && suffix != kSuffix[p]) ++p;
      }
    } else if (expert) {
      lp.expert = std::stoi(m[3].str());
      const std::string leaf = m[4].str();
      p = static_cast<int>(leaf == "gate_proj" || leaf == "w1" ? Proj::kGate
                           : leaf == "up_proj" || leaf == "w3" ? Proj::kUp
                                                               : Proj::kDown);
    } else {
      lp.router = true;
      p = static_cast<int>(Proj::kGate);
    }
    FP4Q_ASSERT(p < kNumProj);
    lp.proj = static_cast<Proj>(p);
    lp.name = "model.layers." + m[1].str() + "." + suffix;
    const auto& info = files.info(name);
    if (info.shape.size() != 2)
      throw Error(ErrorKind::kInput, "expected a 2-D weight, got " + std::to_string(info.shape.size()) + " dimensions", name);
    lp.out = info.shape[0];
    lp.in = info.shape[1];
    lp.dtype = info.dtype;
    if (!io::is_float_dtype(info.dtype))
      throw Error(ErrorKind::kInput, std::string("weight dtype ") + io::dtype_tag(info.dtype) +
                  " cannot be quantized (expected F32, F16 or BF16)", name,
                  "is this model already quantized?");
    const int G = format::spec(settings.format).group_size;
    if (router) {
      lp.skip_reason = "MoE router (kept in 16 bit, as vLLM expects)";
    } else if (std::any_of(ignore.begin(), ignore.end(),
                    [&](const std::regex& r) { return std::regex_search(lp.name, r); })) {
      lp.skip_reason = "matches --ignore";
    } else if (lp.in % G != 0) {
      lp.skip_reason = "in_features " + std::to_string(lp.in) + " not divisible by group size " + std::to_string(G);
    } else if (!expert && settings.hadamard > 0 && lp.in % settings.hadamard != 0) {
      lp.skip_reason = "in_features " + std::to_string(lp.in) + " not divisible by rotation block " +
                       std::to_string(settings.hadamard);
    } else {
      lp.quantize = true;
    }
    max_layer = std::max(max_layer, lp.layer);
    if (dense) found[{lp.layer, p}] = lp;
    else if (expert) experts[std::make_tuple(lp.layer, lp.expert, p)] = lp;
    else routers[lp.layer] = lp;
  }
  // All experts of a layer share one decision (one FusedMoE scheme per layer in vLLM).
  for (int l = 0; l <= max_layer; ++l) {
    std::string skipped;
    for (auto& [key, lp] : experts)
      if (std::get<0>(key) == l && !lp.quantize && skipped.empty()) skipped = lp.name + " (" + lp.skip_reason + ")";
    if (skipped.empty()) continue;
    for (auto& [key, lp] : experts)
      if (std::get<0>(key) == l && lp.quantize) {
        lp.quantize = false;
        lp.skip_reason = "experts of one MoE layer share one scheme and " + skipped + " stays unquantized";
      }
  }
  // Fused groups share one decision.
  for (int l = 0; l <= max_layer; ++l) {
    for (auto group : {std::vector<int>{0, 1, 2}, std::vector<int>{4, 5}}) {
      std::string skipped;
      for (int p : group) {
        auto it = found.find({l, p});
        if (it != found.end() && !it->second.quantize) skipped = it->second.name;
      }
      if (skipped.empty()) continue;
      for (int p : group) {
        auto it = found.find({l, p});
        if (it != found.end() && it->second.quantize) {
          it->second.quantize = false;
          it->second.skip_reason = "fused with " + skipped + ", which stays unquantized";
        }
      }
    }
  }
  for (int l = 0; l <= max_layer; ++l) {
    for (auto& kv : found)
      if (kv.first.first == l) plan.linears.push_back(kv.second);
    if (routers.count(l)) plan.linears.push_back(routers[l]);
    for (auto& [key, lp] : experts)
      if (std::get<0>(key) == l) plan.linears.push_back(lp);
  }
  plan.num_layers = max_layer + 1;
  if (plan.linears.empty())
    throw Error(ErrorKind::kInput, "no decoder Linear weights found (expected names like "
                "model.layers.0.self_attn.q_proj.weight)", files.dir(),
                "is this a Hugging Face Llama/Mistral/Qwen checkpoint?");
  return plan;
}

int64_t quantized_bytes(format::FormatId fmt, int64_t out, int64_t in) {
  const auto& s = format::spec(fmt);
  const int64_t groups = out * (in / s.group_size);
  const int64_t scale_bytes = s.scale == format::ScaleType::kF16 ? 2 : 1;
  return out * in / 2 + groups * scale_bytes + (s.has_global_scale ? 4 : 0);
}

}  // namespace fp4q::pipeline
