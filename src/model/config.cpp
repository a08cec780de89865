#include "fp4q/model/config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "fp4q/core/error.h"

namespace fp4q::model {

namespace {

using nlohmann::json;

const char* kSupportedArchs =
    "supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, "
    "Qwen3MoeForCausalLM, MixtralForCausalLM, Gemma3ForCausalLM, Phi3ForCausalLM";

[[noreturn]] void bad(const std::string& where, const std::string& field, const std::string& what,
                      const std::string& hint = {}) {
  throw Error(ErrorKind::kInput, "field \"" + field + "\": " + what, where, hint);
}

bool present(const json& j, const char* key) { return j.contains(key) && !j.at(key).is_null(); }

int64_t get_int(const json& j, const char* key, const std::string& where, bool required,
                int64_t def = 0) {
  if (!present(j, key)) {
    if (required) bad(where, key, "missing (required)");
    return def;
  }
  const json& v = j.at(key);
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    double d = v.get<double>();
    if (std::floor(d) == d && std::fabs(d) < 9e15) return static_cast<int64_t>(d);
  }
  bad(where, key, "expected an integer, got " + v.dump());
}

double get_num(const json& j, const char* key, const std::string& where, bool required,
               double def = 0.0) {
  if (!present(j, key)) {
    if (required) bad(where, key, "missing (required)");
    return def;
  }
  const json& v = j.at(key);
  if (!v.is_number()) bad(where, key, "expected a number, got " + v.dump());
  return v.get<double>();
}

bool get_bool(const json& j, const char* key, const std::string& where, bool def) {
  if (!present(j, key)) return def;
  const json& v = j.at(key);
  if (!v.is_boolean()) bad(where, key, "expected true/false, got " + v.dump());
  return v.get<bool>();
}

std::string get_str(const json& j, const char* key, const std::string& where,
                    const std::string& def) {
  if (!present(j, key)) return def;
  const json& v = j.at(key);
  if (!v.is_string()) bad(where, key, "expected a string, got " + v.dump());
  return v.get<std::string>();
}

struct ArchName {
  const char* arch;
  const char* model_type;
  Arch id;
};
const ArchName kArchs[] = {
    {"LlamaForCausalLM", "llama", Arch::kLlama},
    {"MistralForCausalLM", "mistral", Arch::kMistral},
    {"Qwen2ForCausalLM", "qwen2", Arch::kQwen2},
    {"Qwen3ForCausalLM", "qwen3", Arch::kQwen3},
    {"Qwen3MoeForCausalLM", "qwen3_moe", Arch::kQwen3Moe},
    {"MixtralForCausalLM", "mixtral", Arch::kMixtral},
    {"Gemma3ForCausalLM", "gemma3_text", Arch::kGemma3},
    {"Phi3ForCausalLM", "phi3", Arch::kPhi3},
};

// Near misses with a specific explanation.
std::string unsupported_hint(const std::string& a) {
  if (a == "Gemma3ForConditionalGeneration")
    return "multimodal Gemma-3 checkpoints (4B and larger) keep the text decoder under "
           "language_model.* next to a vision tower; fp4q reads text-only Gemma3ForCausalLM "
           "checkpoints (gemma-3-1b, or a text-only export of a larger one)";
  if (a == "Qwen2MoeForCausalLM")
    return "Qwen2-MoE has shared experts with a sigmoid gate, which fp4q does not implement; "
           "supported MoE architectures: Qwen3MoeForCausalLM, MixtralForCausalLM";
  if (a == "Gemma2ForCausalLM" || a == "GemmaForCausalLM")
    return std::string(kSupportedArchs) + " (Gemma-3 only among the Gemma families)";
  if (a == "PhiMoEForCausalLM" || a == "PhiForCausalLM" || a == "Phi4MMForCausalLM")
    return std::string(kSupportedArchs) + " (Phi-3 / Phi-4 dense text models only)";
  return kSupportedArchs;
}

Arch parse_arch(const json& j, const std::string& where, std::string* name) {
  std::string a;
  if (present(j, "architectures")) {
    const json& v = j.at("architectures");
    if (!v.is_array() || v.empty() || !v[0].is_string())
      bad(where, "architectures", "expected a non-empty list of strings, got " + v.dump());
    if (v.size() > 1) bad(where, "architectures", "more than one architecture listed: " + v.dump(),
                          kSupportedArchs);
    a = v[0].get<std::string>();
  } else {
    const std::string mt = get_str(j, "model_type", where, "");
    for (const ArchName& n : kArchs)
      if (mt == n.model_type) a = n.arch;
    if (a.empty())
      bad(where, "architectures",
          "missing, and model_type \"" + mt + "\" is not a supported decoder", kSupportedArchs);
  }
  *name = a;
  for (const ArchName& n : kArchs)
    if (a == n.arch) return n.id;
  bad(where, "architectures", "unsupported architecture \"" + a + "\"", unsupported_hint(a));
}

const std::string kSupportedRope =
    "supported rope types: \"default\", \"linear\" (factor), \"llama3\" (factor, low_freq_factor, "
    "high_freq_factor, original_max_position_embeddings) and \"longrope\" (short_factor, "
    "long_factor, original_max_position_embeddings)";

std::vector<double> get_factors(const json& s, const char* key, const std::string& where,
                                const std::string& field, size_t n) {
  if (!present(s, key)) bad(where, field + "." + key, "missing (required for longrope)");
  const json& v = s.at(key);
  std::vector<double> out;
  if (v.is_array())
    for (const auto& e : v) {
      if (!e.is_number()) break;
      out.push_back(e.get<double>());
    }
  if (!v.is_array() || out.size() != v.size() || out.size() != n)
    bad(where, field + "." + key,
        "expected a list of rotary_dim / 2 = " + std::to_string(n) + " numbers, got " +
            v.dump().substr(0, 200));
  for (double d : out)
    if (!(d > 0)) bad(where, field + "." + key, "factors must be > 0");
  return out;
}

// One rope object (rope_scaling / rope_parameters / rope_parameters.full_attention): type and its
// parameters into c (theta is read by the caller). `top` is the whole config.json (fallback for
// original_max_position_embeddings, which Phi-3 keeps at the top level).
void parse_rope_object(const json& s, const json& top, const std::string& where,
                       const std::string& sfield, ModelConfig& c) {
  const std::string type = get_str(s, "rope_type", where, get_str(s, "type", where, "default"));
  const std::string w = where + " (" + sfield + ")";
  if (type == "default") return;
  if (type == "linear") {
    c.rope_type = RopeType::kLinear;
    c.rope_factor = get_num(s, "factor", w, true);
    if (!(c.rope_factor > 0)) bad(where, sfield + ".factor", "must be > 0");
    return;
  }
  if (type == "llama3") {
    c.rope_type = RopeType::kLlama3;
    c.rope_factor = get_num(s, "factor", w, true);
    c.rope_low_freq_factor = get_num(s, "low_freq_factor", w, true);
    c.rope_high_freq_factor = get_num(s, "high_freq_factor", w, true);
    c.rope_original_max_pos = get_int(s, "original_max_position_embeddings", w, true);
    if (!(c.rope_factor > 0) || !(c.rope_low_freq_factor > 0) ||
        !(c.rope_high_freq_factor > c.rope_low_freq_factor) || c.rope_original_max_pos <= 0)
      bad(where, sfield,
          "llama3 parameters out of range (need factor > 0, 0 < low_freq_factor < high_freq_factor, "
          "original_max_position_embeddings > 0): " + s.dump());
    return;
  }
  if (type == "longrope" || type == "su") {
    c.rope_type = RopeType::kLongRope;
    const size_t half = static_cast<size_t>(c.rotary_dim() / 2);
    c.rope_short_factor = get_factors(s, "short_factor", where, sfield, half);
    c.rope_long_factor = get_factors(s, "long_factor", where, sfield, half);
    c.rope_original_max_pos =
        get_int(s, "original_max_position_embeddings", w, false,
                get_int(top, "original_max_position_embeddings", where, false, 0));
    if (c.rope_original_max_pos <= 0)
      bad(where, sfield + ".original_max_position_embeddings",
          "longrope needs original_max_position_embeddings > 0 (in the rope object or config.json)");
    // transformers _compute_longrope_parameters: factor defaults to max_pos / original; the
    // attention factor to sqrt(1 + ln(factor) / ln(original)) when factor > 1.
    double factor = present(s, "factor") ? get_num(s, "factor", w, true)
                                         : (c.max_pos > 0 ? static_cast<double>(c.max_pos) /
                                                                static_cast<double>(c.rope_original_max_pos)
                                                          : 1.0);
    c.rope_factor = factor;
    if (present(s, "attention_factor")) {
      c.rope_attention_factor = get_num(s, "attention_factor", w, true);
    } else {
      c.rope_attention_factor =
          factor <= 1.0 ? 1.0
                        : std::sqrt(1.0 + std::log(factor) /
                                              std::log(static_cast<double>(c.rope_original_max_pos)));
    }
    if (!(c.rope_attention_factor > 0)) bad(where, sfield + ".attention_factor", "must be > 0");
    return;
  }
  bad(where, sfield + ".rope_type", "unsupported rope scaling type \"" + type + "\"", kSupportedRope);
}

// partial_rotary_factor, from the rope object or the top level; only Phi-3 applies it (its
// apply_rotary_pos_emb rotates the first rotary_dim dimensions and passes the rest through).
void parse_partial_rotary(const json& j, const json* rope, const std::string& where, ModelConfig& c) {
  double f = get_num(j, "partial_rotary_factor", where, false, 1.0);
  std::string field = "partial_rotary_factor";
  if (rope && present(*rope, "partial_rotary_factor")) {
    f = get_num(*rope, "partial_rotary_factor", where, false, 1.0);
    field = "rope_parameters.partial_rotary_factor";
  }
  if (f == 1.0) return;
  if (c.arch != Arch::kPhi3)
    bad(where, field, std::string("partial rotary embeddings are not supported for ") + arch_name(c.arch),
        "partial_rotary_factor is supported for Phi3ForCausalLM only");
  if (!(f > 0 && f <= 1.0)) bad(where, field, "must be in (0, 1]");
  c.partial_rotary_factor = f;
  const int d = c.rotary_dim();
  if (d < 2 || d % 2 != 0)
    bad(where, field, "int(head_dim * factor) = " + std::to_string(d) + " must be even and >= 2");
}

// Reads rope_theta and the rope scaling from either generation of config.json.
void parse_rope(const json& j, const std::string& where, ModelConfig& c) {
  const json* scaling = nullptr;
  std::string sfield;
  const json* sliding = nullptr;  // Gemma-3 per-layer-type rope of sliding layers
  if (present(j, "rope_parameters")) {
    const json& rp = j.at("rope_parameters");
    sfield = "rope_parameters";
    if (!rp.is_object()) bad(where, sfield, "expected an object, got " + rp.dump());
    if (rp.contains("full_attention") || rp.contains("sliding_attention")) {
      if (c.arch != Arch::kGemma3)
        bad(where, sfield, "per-layer-type rope parameters are only supported for Gemma3ForCausalLM: " +
                               rp.dump().substr(0, 200),
            "supported: one {\"rope_type\": ..., \"rope_theta\": ...} object");
      if (!present(rp, "full_attention") || !rp.at("full_attention").is_object())
        bad(where, sfield + ".full_attention", "missing or not an object");
      scaling = &rp.at("full_attention");
      sfield += ".full_attention";
      if (present(rp, "sliding_attention")) sliding = &rp.at("sliding_attention");
    } else {
      if (!rp.contains("rope_type") && !rp.contains("rope_theta") && !rp.contains("type"))
        bad(where, sfield, "unrecognised rope parameters: " + rp.dump().substr(0, 200),
            "supported: one {\"rope_type\", \"rope_theta\", ...} object");
      scaling = &rp;
    }
    c.rope_theta = get_num(*scaling, "rope_theta", where + " (" + sfield + ")", false,
                           get_num(j, "rope_theta", where, false, c.rope_theta));
  } else {
    c.rope_theta = get_num(j, "rope_theta", where, false, c.rope_theta);
    if (present(j, "rope_scaling")) {
      scaling = &j.at("rope_scaling");
      sfield = "rope_scaling";
      if (!scaling->is_object()) bad(where, sfield, "expected an object or null, got " + scaling->dump());
    }
  }
  if (!(c.rope_theta > 0)) bad(where, "rope_theta", "must be > 0");
  parse_partial_rotary(j, scaling, where, c);
  if (scaling) parse_rope_object(*scaling, j, where, sfield, c);
  if (c.arch == Arch::kGemma3) {
    // Sliding layers: default RoPE with their own base (legacy: rope_local_base_freq).
    c.sliding_rope_theta = get_num(j, "rope_local_base_freq", where, false, 10000.0);
    if (sliding) {
      const std::string f = "rope_parameters.sliding_attention";
      if (!sliding->is_object()) bad(where, f, "expected an object, got " + sliding->dump());
      const std::string t = get_str(*sliding, "rope_type", where, "default");
      if (t != "default")
        bad(where, f + ".rope_type", "unsupported rope type \"" + t + "\" for sliding-window layers",
            "supported: \"default\" (as every published Gemma-3 uses)");
      c.sliding_rope_theta = get_num(*sliding, "rope_theta", where + " (" + f + ")", false,
                                     c.sliding_rope_theta);
    }
    if (!(c.sliding_rope_theta > 0)) bad(where, "rope_local_base_freq", "must be > 0");
  }
}

void parse_sliding(const json& j, const std::string& where, ModelConfig& c) {
  c.layer_sliding_window.assign(c.n_layers, 0);
  c.layer_sliding.assign(c.n_layers, false);
  int64_t window = get_int(j, "sliding_window", where, false, 0);
  if (c.arch == Arch::kGemma3 && !present(j, "sliding_window")) window = 4096;  // class default
  const json* lt = present(j, "layer_types") ? &j.at("layer_types") : nullptr;
  json derived;
  if (!lt && c.arch == Arch::kGemma3) {
    // Gemma3TextConfig: sliding unless (i + 1) % sliding_window_pattern == 0.
    const int64_t pattern = get_int(j, "sliding_window_pattern", where, false, 6);
    if (pattern <= 0) bad(where, "sliding_window_pattern", "must be > 0");
    derived = json::array();
    for (int l = 0; l < c.n_layers; ++l)
      derived.push_back((l + 1) % pattern ? "sliding_attention" : "full_attention");
    lt = &derived;
  }
  if (lt) {
    if (!lt->is_array() || static_cast<int64_t>(lt->size()) != c.n_layers)
      bad(where, "layer_types", "expected a list of num_hidden_layers = " +
                                    std::to_string(c.n_layers) + " strings, got " + lt->dump());
    for (int l = 0; l < c.n_layers; ++l) {
      std::string t = (*lt)[l].is_string() ? (*lt)[l].get<std::string>() : (*lt)[l].dump();
      if (t == "full_attention") continue;
      if (t != "sliding_attention")
        bad(where, "layer_types", "layer " + std::to_string(l) + " has unsupported type \"" + t + "\"",
            "supported: full_attention, sliding_attention");
      if (window <= 0)
        bad(where, "sliding_window", "layer_types has sliding_attention but sliding_window is " +
                                         (present(j, "sliding_window") ? j.at("sliding_window").dump()
                                                                       : std::string("missing")));
      c.layer_sliding_window[l] = window;
      c.layer_sliding[l] = true;
    }
    return;
  }
  if (window <= 0) return;
  if (c.arch == Arch::kMistral || c.arch == Arch::kMixtral || c.arch == Arch::kPhi3) {
    // transformers applies sliding_window to every layer of these models when it is set.
    c.layer_sliding_window.assign(c.n_layers, window);
    c.layer_sliding.assign(c.n_layers, true);
  } else if (c.arch == Arch::kQwen2 || c.arch == Arch::kQwen3 || c.arch == Arch::kQwen3Moe) {
    if (!get_bool(j, "use_sliding_window", where, false)) return;
    int64_t first = get_int(j, "max_window_layers", where, false, 28);
    for (int l = 0; l < c.n_layers; ++l)
      if (l >= first) {
        c.layer_sliding_window[l] = window;
        c.layer_sliding[l] = true;
      }
  }
  // Llama has no sliding-window attention; transformers ignores the field there.
}

// MoE fields (Qwen3-MoE, Mixtral).
void parse_moe(const json& j, const std::string& where, ModelConfig& c) {
  c.layer_moe.assign(c.n_layers, false);
  if (c.arch == Arch::kMixtral) {
    c.n_experts = static_cast<int>(get_int(j, "num_local_experts", where, false, 8));
    c.n_experts_per_tok = static_cast<int>(get_int(j, "num_experts_per_tok", where, false, 2));
    c.moe_intermediate = c.intermediate;  // MixtralBlockSparseTop2MLP uses intermediate_size
    c.norm_topk_prob = true;              // MixtralTopKRouter always renormalises
    c.layer_moe.assign(c.n_layers, true);
  } else if (c.arch == Arch::kQwen3Moe) {
    // Hub checkpoints (transformers 4.x) say num_experts; transformers 5 writes the same field as
    // num_local_experts when it saves a Qwen3-MoE config (found by the 5.17 goldens).
    c.n_experts = static_cast<int>(
        j.contains("num_experts") ? get_int(j, "num_experts", where, false, 128)
                                  : get_int(j, "num_local_experts", where, false, 128));
    c.n_experts_per_tok = static_cast<int>(get_int(j, "num_experts_per_tok", where, false, 8));
    c.moe_intermediate = get_int(j, "moe_intermediate_size", where, false, 768);
    c.norm_topk_prob = get_bool(j, "norm_topk_prob", where, false);
    const int64_t step = get_int(j, "decoder_sparse_step", where, false, 1);
    if (step <= 0) bad(where, "decoder_sparse_step", "must be > 0");
    std::vector<bool> dense(c.n_layers, false);
    if (present(j, "mlp_only_layers")) {
      const json& v = j.at("mlp_only_layers");
      if (!v.is_array()) bad(where, "mlp_only_layers", "expected a list of layer indices, got " + v.dump());
      for (const auto& e : v) {
        if (!e.is_number_integer() || e.get<int64_t>() < 0 || e.get<int64_t>() >= c.n_layers)
          bad(where, "mlp_only_layers", "expected layer indices in [0, num_hidden_layers), got " + v.dump());
        dense[e.get<int64_t>()] = true;
      }
    }
    // Qwen2MoeDecoderLayer: sparse when not in mlp_only_layers and (layer + 1) % step == 0.
    for (int l = 0; l < c.n_layers; ++l)
      c.layer_moe[l] = !dense[l] && c.n_experts > 0 && (l + 1) % step == 0;
  } else {
    return;
  }
  if (c.n_experts <= 0) bad(where, c.arch == Arch::kMixtral ? "num_local_experts" : "num_experts", "must be > 0");
  if (c.n_experts_per_tok <= 0 || c.n_experts_per_tok > c.n_experts)
    bad(where, "num_experts_per_tok",
        "must be in [1, " + std::to_string(c.n_experts) + "], got " + std::to_string(c.n_experts_per_tok));
  if (c.moe_intermediate <= 0) bad(where, "moe_intermediate_size", "must be > 0");
  if (present(j, "shared_expert_intermediate_size") &&
      get_int(j, "shared_expert_intermediate_size", where, false, 0) > 0)
    bad(where, "shared_expert_intermediate_size", "shared experts are not supported",
        "supported: Qwen3-MoE / Mixtral sparse blocks without shared experts");
}

std::vector<int32_t> parse_ids(const json& j, const char* key, const std::string& where) {
  std::vector<int32_t> out;
  if (!present(j, key)) return out;
  const json& v = j.at(key);
  auto id = [&](const json& e) {  // token ids are non-negative int32 (no silent wrap-around)
    if (!e.is_number_integer() || e.get<int64_t>() < 0 || e.get<int64_t>() > INT32_MAX)
      bad(where, key, "expected token ids (integers 0..2^31-1), got " + v.dump());
    return static_cast<int32_t>(e.get<int64_t>());
  };
  if (v.is_number_integer()) {
    out.push_back(id(v));
  } else if (v.is_array()) {
    for (const auto& e : v) out.push_back(id(e));
  } else {
    bad(where, key, "expected an integer or a list of integers, got " + v.dump());
  }
  return out;
}

}  // namespace

const char* arch_name(Arch a) {
  switch (a) {
    case Arch::kLlama: return "LlamaForCausalLM";
    case Arch::kMistral: return "MistralForCausalLM";
    case Arch::kQwen2: return "Qwen2ForCausalLM";
    case Arch::kQwen3: return "Qwen3ForCausalLM";
    case Arch::kQwen3Moe: return "Qwen3MoeForCausalLM";
    case Arch::kMixtral: return "MixtralForCausalLM";
    case Arch::kGemma3: return "Gemma3ForCausalLM";
    case Arch::kPhi3: return "Phi3ForCausalLM";
  }
  return "?";
}

int ModelConfig::rotary_dim() const {
  // transformers: dim = int(head_dim * partial_rotary_factor)
  return static_cast<int>(static_cast<double>(head_dim) * partial_rotary_factor);
}

double ModelConfig::attention_scale() const {
  // transformers: self.scaling = head_dim**-0.5 (Gemma-3: query_pre_attn_scalar**-0.5), a python
  // float multiplied into float32 scores.
  return attn_scale > 0 ? attn_scale : std::pow(static_cast<double>(head_dim), -0.5);
}

ModelConfig ModelConfig::from_json(const json& j, const std::string& where, bool allow_quantized) {
  if (!j.is_object()) throw Error(ErrorKind::kInput, "expected a JSON object", where);
  ModelConfig c;
  c.arch = parse_arch(j, where, &c.arch_string);

  if (!allow_quantized && present(j, "quantization_config"))
    bad(where, "quantization_config",
        "the model is already quantized (" + j.at("quantization_config").dump().substr(0, 120) + ")",
        "fp4q needs the original bf16/fp16/fp32 checkpoint as input");

  c.hidden = get_int(j, "hidden_size", where, true);
  c.intermediate = get_int(j, "intermediate_size", where, true);
  // Counts become int and size per-layer / per-head tables: an absurd value in a small hostile
  // config.json must be an input error, not a multi-GB allocation or a silent int truncation
  // (fuzz finding tests/data/fuzz_regressions/config/num_hidden_layers_huge_allocates_gigabytes).
  auto count = [&](const char* field, bool required, int64_t dflt, int64_t limit) {
    const int64_t v = get_int(j, field, where, required, dflt);
    if (v > limit)
      bad(where, field, "implausibly large: " + std::to_string(v) + " (fp4q accepts at most " +
                            std::to_string(limit) + ")");
    return static_cast<int>(v);
  };
  c.n_layers = count("num_hidden_layers", true, 0, 1 << 16);
  c.n_heads = count("num_attention_heads", true, 0, 1 << 20);
  c.n_kv_heads = count("num_key_value_heads", false, c.n_heads, 1 << 20);
  c.vocab = get_int(j, "vocab_size", where, true);
  if (c.hidden <= 0) bad(where, "hidden_size", "must be > 0");
  if (c.intermediate <= 0) bad(where, "intermediate_size", "must be > 0");
  if (c.n_layers <= 0) bad(where, "num_hidden_layers", "must be > 0");
  if (c.n_heads <= 0) bad(where, "num_attention_heads", "must be > 0");
  if (c.vocab <= 0) bad(where, "vocab_size", "must be > 0");
  if (c.n_kv_heads <= 0 || c.n_heads % c.n_kv_heads != 0)
    bad(where, "num_key_value_heads",
        "must be > 0 and divide num_attention_heads = " + std::to_string(c.n_heads) + ", got " +
            std::to_string(c.n_kv_heads));
  if (present(j, "head_dim")) {
    c.head_dim = static_cast<int>(get_int(j, "head_dim", where, true));
  } else if (c.arch == Arch::kGemma3) {
    c.head_dim = 256;  // Gemma3TextConfig default
  } else {
    if (c.hidden % c.n_heads != 0)
      bad(where, "head_dim", "missing and hidden_size " + std::to_string(c.hidden) +
                                 " is not divisible by num_attention_heads " + std::to_string(c.n_heads));
    c.head_dim = static_cast<int>(c.hidden / c.n_heads);
  }
  if (c.head_dim <= 0 || c.head_dim % 2 != 0)
    bad(where, "head_dim", "must be a positive even number, got " + std::to_string(c.head_dim));
  c.rms_eps = get_num(j, "rms_norm_eps", where, false, 1e-6);
  if (!(c.rms_eps >= 0)) bad(where, "rms_norm_eps", "must be >= 0");
  c.max_pos = get_int(j, "max_position_embeddings", where, false, 0);
  const bool gemma = c.arch == Arch::kGemma3;
  c.tie_embeddings = get_bool(j, "tie_word_embeddings", where, gemma);  // Gemma3TextConfig: True

  if (gemma) {
    // Gemma3MLP uses hidden_activation (ACT2FN["gelu_pytorch_tanh"] = GELU, tanh approximation).
    const std::string act = get_str(j, "hidden_activation", where, "gelu_pytorch_tanh");
    if (act != "gelu_pytorch_tanh")
      bad(where, "hidden_activation", "unsupported activation \"" + act + "\"",
          "supported for Gemma3ForCausalLM: \"gelu_pytorch_tanh\"");
    c.act = Activation::kGeluTanh;
    c.norm_plus_one = true;
    c.sandwich_norms = true;
    c.scale_embeddings = true;
    const double qpas = get_num(j, "query_pre_attn_scalar", where, false, 256.0);
    if (!(qpas > 0)) bad(where, "query_pre_attn_scalar", "must be > 0");
    c.attn_scale = std::pow(qpas, -0.5);
    // attn_logit_softcapping is read but has no effect: transformers' Gemma3Attention.forward does
    // not pass it to the attention function (Gemma-2's does), so fp4q does not apply it either.
    // final_logit_softcapping IS applied (Gemma2ForCausalLM.forward, which Gemma-3 inherits).
    if (get_num(j, "attn_logit_softcapping", where, false, 0.0) < 0)
      bad(where, "attn_logit_softcapping", "must be > 0 or null");
    c.attn_softcap = 0.0;
    c.final_softcap = get_num(j, "final_logit_softcapping", where, false, 0.0);
    if (c.final_softcap < 0) bad(where, "final_logit_softcapping", "must be > 0 or null");
    if (present(j, "use_bidirectional_attention") && !j.at("use_bidirectional_attention").is_boolean())
      bad(where, "use_bidirectional_attention", "unsupported value " + j.at("use_bidirectional_attention").dump(),
          "supported: false/absent (causal decoder)");
    if (get_bool(j, "use_bidirectional_attention", where, false))
      bad(where, "use_bidirectional_attention", "bidirectional attention (true) is not supported",
          "supported: false/absent (causal decoder)");
    c.rope_theta = 1000000.0;  // Gemma3TextConfig default when rope_theta is absent
  } else {
    std::string act = get_str(j, "hidden_act", where, "silu");
    if (act != "silu")
      bad(where, "hidden_act", "unsupported activation \"" + act + "\"", "supported: \"silu\" (SwiGLU MLP)");
  }
  for (const char* k : {"attn_logit_softcapping", "final_logit_softcapping"})
    if (!gemma && present(j, k))
      bad(where, k, std::string("logit soft-capping is only implemented for Gemma3ForCausalLM, not ") +
                        arch_name(c.arch));
  if (get_bool(j, "mlp_bias", where, false))
    bad(where, "mlp_bias", "MLP biases (true) are not supported", "supported: mlp_bias false/absent");
  bool attention_bias = get_bool(j, "attention_bias", where, false);
  if (c.arch == Arch::kQwen2) {
    c.qkv_bias = true;  // Qwen2Attention: q/k/v_proj bias=True, o_proj bias=False, always
  } else if (attention_bias) {
    bad(where, "attention_bias",
        std::string("attention biases (true) are not supported for ") + arch_name(c.arch),
        "supported: attention_bias false/absent (q/k/v biases only for Qwen2ForCausalLM)");
  }
  c.qk_norm = c.arch == Arch::kQwen3 || c.arch == Arch::kQwen3Moe || gemma;
  c.fused_qkv = c.fused_gate_up = c.arch == Arch::kPhi3;

  parse_rope(j, where, c);
  parse_sliding(j, where, c);
  parse_moe(j, where, c);

  auto bos = parse_ids(j, "bos_token_id", where);
  c.bos_id = bos.empty() ? -1 : bos[0];
  c.eos_ids = parse_ids(j, "eos_token_id", where);
  return c;
}

ModelConfig ModelConfig::parse(const std::string& text, const std::string& where,
                               bool allow_quantized) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(ErrorKind::kInput, std::string("invalid JSON: ") + e.what(), where);
  }
  return from_json(j, where, allow_quantized);
}

ModelConfig ModelConfig::load(const std::string& dir, bool allow_quantized) {
  std::string path = dir + "/config.json";
  std::ifstream f(path);
  if (!f) throw Error(ErrorKind::kIo, "cannot open file", path, "is this a Hugging Face model directory?");
  std::stringstream ss;
  ss << f.rdbuf();
  return parse(ss.str(), path, allow_quantized);
}

}  // namespace fp4q::model
